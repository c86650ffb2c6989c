"""Generated data sets kept in the machine's cache folder (mnist1d and the teacher task).

mnist1d is generated here, never downloaded, at about 0.4 ms an example on a 2-core machine
(``private.toml``'s 90,000: some 36 s of CPU) after importing SciPy's interpolation (about
1.8 s). What it generates depends only on the generator's version, the seed and the count, so a
process that has a cache folder (the compiled steps', :func:`gossipfl.node.compile_cache.
cache_folder`) writes the preprocessed arrays there once and later processes read them back:
the launcher, the runner's centralised baseline and a node started by hand.

The folder must be owner-only, as for compiled steps (an entry decides what every node trains
on): one another user owns or others may write to is not used. An entry is read without
pickles and checked (names, dtypes, shapes, finite features, labels within the classes); one
that fails is logged, generated again and replaced. Files are written 0600, by rename.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from gossipfl.learning.data import Dataset, load_dataset

log = logging.getLogger("gossipfl.data")

FORMAT = 1  # the entry's layout and the preprocessing it holds
ARRAYS = ("x_train", "y_train", "x_test", "y_test", "input_shape", "num_classes")


class EntryError(ValueError):
    """A kept entry that cannot be trusted."""


def mnist1d_key(seed: int, samples: int | None) -> str:
    """What the generated arrays depend on, as a hex digest."""
    try:
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = "absent"
    text = json.dumps({"format": FORMAT, "mnist1d": version, "numpy": np.__version__,
                       "seed": seed, "samples": samples}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def teacher_key(seed: int, samples: int | None, test_fraction: float) -> str:
    """What the teacher task's arrays depend on (:data:`~gossipfl.learning.teacher.GENERATOR`
    names the generator's own version), as a hex digest."""
    from gossipfl.learning.teacher import GENERATOR

    text = json.dumps({"format": FORMAT, "teacher": GENERATOR, "numpy": np.__version__,
                       "seed": seed, "samples": samples, "test_fraction": test_fraction},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read_entry(path: Path) -> Dataset:
    """The data set an entry holds; :class:`EntryError` when it is not a sound one."""
    try:
        with np.load(path, allow_pickle=False) as entry:
            if sorted(entry.files) != sorted(ARRAYS):
                raise EntryError(f"arrays {sorted(entry.files)}")
            arrays = {name: entry[name] for name in ARRAYS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise EntryError(str(error)) from None
    x_train, y_train, x_test, y_test = (arrays[n] for n in ARRAYS[:4])
    shape, classes = arrays["input_shape"], arrays["num_classes"]
    if shape.dtype != np.int64 or shape.ndim != 1 or classes.shape != () \
            or classes.dtype != np.int64:
        raise EntryError("input_shape or num_classes malformed")
    for x, y in ((x_train, y_train), (x_test, y_test)):
        if x.dtype != np.float32 or y.dtype != np.int32 or x.ndim != 2 or y.ndim != 1 \
                or len(x) != len(y) or len(x) == 0 or x.shape[1] != int(np.prod(shape)):
            raise EntryError(f"features {x.dtype}{x.shape} and labels {y.dtype}{y.shape}")
        if not np.isfinite(x).all() or y.min() < 0 or y.max() >= int(classes):
            raise EntryError("non-finite features or labels outside the classes")
    return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=int(classes), input_shape=tuple(int(d) for d in shape))


def write_entry(path: Path, dataset: Dataset) -> None:
    """Write ``dataset`` to ``path`` (0600, by rename)."""
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, x_train=dataset.x_train, y_train=dataset.y_train,
                     x_test=dataset.x_test, y_test=dataset.y_test,
                     input_shape=np.asarray(dataset.input_shape, np.int64),
                     num_classes=np.asarray(dataset.num_classes, np.int64))
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def kept(folder: str | None, name: str, key: str,
         generate: Callable[[], Dataset]) -> Dataset:
    """``generate()``'s data set, read from ``folder`` when an earlier process kept it under
    ``name`` and ``key``, else generated and kept there (``folder`` None: generated)."""
    if folder is None:
        return generate()
    from gossipfl.learning.executables import usable_folder

    where = Path(folder)
    refused = usable_folder(where)
    if refused:
        log.warning("generated data not kept: %s", refused)
        return generate()
    path = where / f"gossipfl-{name}-{key}.npz"
    try:
        return read_entry(path)
    except EntryError as error:
        if path.exists():
            log.warning("generating %s again: the kept copy %s is unsound (%s)", name, path,
                        error)
    dataset = generate()
    try:
        write_entry(path, dataset)
    except OSError as error:
        log.warning("could not keep the generated %s in %s: %s", name, path, error)
    return dataset


def load_kept(name: str, *, cache: str | None, seed: int = 0, test_fraction: float = 0.2,
              path: str | None = None, samples: int | None = None,
              test_path: str | None = None) -> Dataset:
    """:func:`~gossipfl.learning.data.load_dataset`, with a generated data set (mnist1d, and
    the teacher task: a million examples take it some 16 s) kept in ``cache`` (None: generated
    every time, as the others are read every time)."""
    def load() -> Dataset:
        return load_dataset(name, seed=seed, test_fraction=test_fraction, path=path,
                            samples=samples, test_path=test_path)

    if cache is None:
        return load()
    if name == "mnist1d":
        return kept(cache, name, mnist1d_key(seed, samples), load)
    if name == "teacher":
        return kept(cache, name, teacher_key(seed, samples, float(test_fraction)), load)
    return load()


__all__ = ["EntryError", "kept", "load_kept", "mnist1d_key", "read_entry", "teacher_key",
           "write_entry"]
