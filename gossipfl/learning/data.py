"""Dataset loading for simulations and real deployments.

Every loader returns a :class:`Dataset` whose feature arrays are always 2-D
``(num_examples, num_features)`` float32 and whose labels are 1-D int32. The
natural per-example shape (used by convolutional models) is recorded separately
in :attr:`Dataset.input_shape`.

Preprocessing is fixed per dataset:

* ``"digits"``: scikit-learn's 8x8 digits, pixel values divided by 16 (to [0, 1]);
  ``input_shape == (8, 8, 1)``.
* ``"wine"``, ``"breast_cancer"``, ``"iris"``: scikit-learn bundled tabular sets,
  standardised per feature with the mean and standard deviation of the training
  split (a constant feature keeps its centred value, its std is taken as 1);
  ``input_shape == (num_features,)``.
* ``"mnist1d"``: generated locally with ``mnist1d.data.make_dataset`` using the
  fixed arguments of ``get_dataset_args()`` except ``seed``; its own 80/20
  train/test split is used; standardised per feature like the tabular sets;
  ``input_shape == (40, 1)``.
* ``"teacher"``: generated here from the seed (:mod:`gossipfl.learning.teacher`): 16
  standard normal features, labels from a fixed random teacher network, the last
  ``test_fraction`` of the drawn order held out; ``input_shape == (16,)``.
* ``"npz"``: a user file, left as given apart from the cast to float32 and the
  flattening of each example to 1-D; ``input_shape`` is the per-example shape
  stored in the file. With ``test_path``, the test set is read from that file
  (``x_test``, ``y_test``) and the user file holds training arrays only.

In a simulation every node loads the same full dataset and then selects its own
partition (see :mod:`gossipfl.learning.partition`), so standardising with
statistics of the full training split is deterministic and identical everywhere.
"""

from __future__ import annotations

import importlib.util
import math
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gossipfl.learning.teacher import CLASSES, FEATURES, teacher_split

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "wine", "breast_cancer", "iris", "mnist1d",
                                     "teacher")
"""Names accepted by :func:`load_dataset` besides ``"npz"``."""

# scikit-learn's bundled data files, read straight from the installed package: importing
# scikit-learn itself costs each node process about 1.2 s and 120 MB, a third of its memory.
_SKLEARN_FILES: dict[str, str] = {
    "digits": "digits.csv.gz",
    "wine": "wine_data.csv",
    "breast_cancer": "breast_cancer.csv",
    "iris": "iris.csv",
}

_MAX_SEED = 2**32 - 1


@dataclass(frozen=True, eq=False)
class Dataset:
    """An in-memory train/test dataset.

    Attributes:
        x_train: Training features, shape ``(n_train, num_features)``, float32.
        y_train: Training labels, shape ``(n_train,)``, int32 in ``[0, num_classes)``.
        x_test: Test features, shape ``(n_test, num_features)``, float32.
        y_test: Test labels, shape ``(n_test,)``, int32 in ``[0, num_classes)``.
        num_classes: Number of classes.
        input_shape: Natural shape of one example; its product equals ``num_features``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        """Check the invariants documented on the class.

        Raises:
            ValueError: If shapes, dtypes, labels or ``input_shape`` are inconsistent.
        """
        num_features = math.prod(self.input_shape)
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != num_features:
                raise ValueError(
                    f"x_{split} must be float32 of shape (n, {num_features}), "
                    f"got {x.dtype} {x.shape}"
                )
            if y.dtype != np.int32 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"y_{split} must be int32 of shape ({x.shape[0]},), got {y.dtype} {y.shape}"
                )
            if y.size and (y.min() < 0 or y.max() >= self.num_classes):
                raise ValueError(
                    f"y_{split} labels must lie in [0, {self.num_classes}), "
                    f"got range [{y.min()}, {y.max()}]"
                )

    @property
    def num_features(self) -> int:
        """Number of features per example (the width of ``x_train``)."""
        return int(self.x_train.shape[1])


def load_dataset(
    name: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    path: str | None = None,
    samples: int | None = None,
    test_path: str | None = None,
) -> Dataset:
    """Load a dataset by name, deterministically.

    Args:
        name: One of ``"digits"``, ``"wine"``, ``"breast_cancer"``, ``"iris"``,
            ``"mnist1d"`` or ``"npz"``.
        seed: Seed of the stratified train/test split (scikit-learn sets and an
            ``npz`` file without test arrays) or of the generator (``mnist1d``).
        test_fraction: Fraction of examples held out for testing, in ``(0, 1)``.
            Ignored by ``mnist1d`` (fixed 80/20 split) and by ``npz`` files that
            contain ``x_test`` and ``y_test``.
        path: Path to the ``.npz`` file; required for ``"npz"`` and rejected otherwise.
        samples: ``mnist1d`` and ``teacher`` only: how many examples to generate (train +
            test, split 80/20); ``None``: the generator's default (5,000; 10,000).
            Rejected for other datasets.
        test_path: ``npz`` only: a file holding ``x_test`` and ``y_test``, the test set (a
            federation's shared one); the ``path`` file must then hold no test arrays.

    Returns:
        The loaded, preprocessed :class:`Dataset`. Same arguments give identical arrays.

    Raises:
        ValueError: For an unknown name, a bad seed or ``test_fraction``, a missing
            or unexpected ``path``, or an invalid ``npz`` file.
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must lie in [0, {_MAX_SEED}], got {seed}")
    if not isinstance(test_fraction, float | int) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    if samples is not None:
        if name not in ("mnist1d", "teacher"):
            raise ValueError(f"samples is only used with datasets 'mnist1d' and 'teacher', "
                             f"got {name!r}")
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 10:
            raise ValueError(f"samples must be an int >= 10, got {samples!r}")
    if name == "npz":
        if path is None:
            raise ValueError("dataset 'npz' requires path=<file.npz>")
        return _load_npz(path, seed=int(seed), test_fraction=float(test_fraction),
                         test_path=test_path)
    if test_path is not None:
        raise ValueError(f"test_path is only used with dataset 'npz', got {name!r}")
    if path is not None:
        raise ValueError(f"path is only used with dataset 'npz', got path={path!r} for {name!r}")
    if name in _SKLEARN_FILES:
        return _load_sklearn(name, seed=int(seed), test_fraction=float(test_fraction))
    if name == "mnist1d":
        return _load_mnist1d(seed=int(seed), samples=None if samples is None else int(samples))
    if name == "teacher":
        x_train, y_train, x_test, y_test = teacher_split(
            int(seed), None if samples is None else int(samples), float(test_fraction))
        return Dataset(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                       num_classes=CLASSES, input_shape=(FEATURES,))
    known = ", ".join(repr(n) for n in (*BUILTIN_DATASETS, "npz"))
    raise ValueError(f"unknown dataset {name!r}; expected one of {known}")


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both splits per feature with the training split's statistics.

    Args:
        x_train: Training features, 2-D.
        x_test: Test features, 2-D.

    Returns:
        The standardised ``(x_train, x_test)`` as float32.
    """
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std = np.where(std > 0.0, std, 1.0)
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _split(
    x: np.ndarray, y: np.ndarray, *, seed: int, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split into train and test, stratified by label when the class counts allow it.

    Args:
        x: Features, first axis indexes examples.
        y: Labels, 1-D.
        seed: ``random_state`` of ``train_test_split``.
        test_fraction: Fraction of examples held out.

    Returns:
        ``(x_train, x_test, y_train, y_test)``.

    Raises:
        ValueError: If either side of the split would be empty.
    """
    n = len(y)
    n_test = math.ceil(test_fraction * n)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(
            f"test_fraction={test_fraction} leaves an empty train or test split of {n} examples"
        )
    _, counts = np.unique(y, return_counts=True)
    stratify = (
        y if counts.min() >= 2 and n_test >= len(counts) and n - n_test >= len(counts) else None
    )
    rng = np.random.default_rng(seed)
    if stratify is None:
        order = rng.permutation(n)
        test_idx, train_idx = order[:n_test], order[n_test:]
    else:
        test_idx, train_idx = _stratified_indices(y, n_test, rng)
    x_train, x_test, y_train, y_test = x[train_idx], x[test_idx], y[train_idx], y[test_idx]
    return x_train, x_test, y_train, y_test


def _stratified_indices(
    y: np.ndarray, n_test: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Test and train indices with each class split in proportion (largest remainders)."""
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * (n_test / len(y))
    take = np.floor(exact).astype(np.int64)
    for c in np.argsort(-(exact - take), kind="stable")[: n_test - int(take.sum())]:
        take[c] += 1
    test_parts, train_parts = [], []
    for label, k in zip(classes, take, strict=True):
        members = rng.permutation(np.flatnonzero(y == label))
        test_parts.append(members[:k])
        train_parts.append(members[k:])
    return rng.permutation(np.concatenate(test_parts)), rng.permutation(np.concatenate(train_parts))


def _read_bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Features (float64) and labels (int32) from scikit-learn's bundled CSV file for ``name``."""
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"dataset {name!r} needs scikit-learn installed (its bundled data)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    path = path / _SKLEARN_FILES[name]
    # digits has no header line; the others start with "n_samples,n_features,names..."
    table = np.loadtxt(path, delimiter=",", skiprows=0 if name == "digits" else 1)
    return table[:, :-1].astype(np.float64), table[:, -1].astype(np.int32)


def _load_sklearn(name: str, *, seed: int, test_fraction: float) -> Dataset:
    """Load one of scikit-learn's bundled datasets (no network access).

    Args:
        name: Key of ``_SKLEARN_FILES``.
        seed: Split seed.
        test_fraction: Held-out fraction.

    Returns:
        The preprocessed dataset.
    """
    x, y = _read_bundled(name)
    x_train, x_test, y_train, y_test = _split(x, y, seed=seed, test_fraction=test_fraction)
    if name == "digits":
        x_train = (x_train / 16.0).astype(np.float32)
        x_test = (x_test / 16.0).astype(np.float32)
        input_shape: tuple[int, ...] = (8, 8, 1)
    else:
        x_train, x_test = _standardise(x_train, x_test)
        input_shape = (x.shape[1],)
    return Dataset(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test),
        num_classes=int(y.max()) + 1,
        input_shape=input_shape,
    )


def _load_mnist1d(*, seed: int, samples: int | None = None) -> Dataset:
    """Generate MNIST-1D locally (never downloads).

    ``make_dataset`` reseeds Python's and NumPy's global generators; their states
    are saved and restored so that loading has no side effect on the caller.

    Args:
        seed: Generator seed (replaces the default ``seed`` of ``get_dataset_args()``).
        samples: ``num_samples`` of the generator (train + test); ``None``: its default.

    Returns:
        The preprocessed dataset with ``input_shape == (40, 1)``.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    if samples is not None:
        args.num_samples = samples
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x_train, x_test = _standardise(
        np.asarray(raw["x"], dtype=np.float64), np.asarray(raw["x_test"], dtype=np.float64)
    )
    y_train = np.asarray(raw["y"], dtype=np.int32)
    y_test = np.asarray(raw["y_test"], dtype=np.int32)
    return Dataset(
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=int(max(y_train.max(), y_test.max())) + 1,
        input_shape=(int(x_train.shape[1]), 1),
    )


def _check_features(name: str, x: np.ndarray) -> None:
    """Validate a feature array read from an ``npz`` file.

    Args:
        name: Key in the file, for error messages.
        x: The array.

    Raises:
        ValueError: If ``x`` is not numeric, has fewer than 2 dims, is empty or non-finite.
    """
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n, features...), got {x.shape}")
    if x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise ValueError(f"{name} must be non-empty, got shape {x.shape}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_labels(name: str, y: np.ndarray, n: int) -> None:
    """Validate a label array read from an ``npz`` file.

    Args:
        name: Key in the file, for error messages.
        y: The array.
        n: Expected number of labels.

    Raises:
        ValueError: If ``y`` is not 1-D integer of length ``n`` with values in int32 range, >= 0.
    """
    if y.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the features, got {y.shape}")
    if y.min() < 0:
        raise ValueError(f"{name} labels must be >= 0, got {y.min()}")
    if y.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{name} labels must fit in int32, got {y.max()}")


def read_npz(path: str) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path`` (no pickled objects).

    Raises:
        ValueError: If the file is missing or unreadable, is not an ``.npz`` archive, or
            holds object arrays.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"npz file {path!r} does not exist") from None
    except ValueError:  # no numpy format at all: numpy takes it for a pickle
        raise ValueError(f"{path!r} is not an .npz archive (write one with numpy.savez)"
                         ) from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"cannot read npz file {path!r}: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} is a single .npy array, not an .npz archive "
                         "(write one with numpy.savez)")
    try:
        with archive:
            return {key: np.asarray(archive[key]) for key in archive.files}
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:  # object arrays...
        raise ValueError(f"cannot read npz file {path!r}: {err}") from None


def _load_npz(path: str, *, seed: int, test_fraction: float,
              test_path: str | None = None) -> Dataset:
    """Load and validate a user-supplied ``.npz`` file.

    Args:
        path: File path. Required keys ``x_train``, ``y_train``; optional ``x_test``
            and ``y_test`` (both or neither; neither with ``test_path``).
        seed: Split seed when the file has no test arrays.
        test_fraction: Held-out fraction when the file has no test arrays.
        test_path: A file holding ``x_test`` and ``y_test``: the test set.

    Returns:
        The dataset, features cast to float32 and flattened to 2-D.

    Raises:
        ValueError: If keys are missing or arrays are invalid or inconsistent.
    """
    arrays = read_npz(path)
    if test_path is not None:
        if "x_test" in arrays or "y_test" in arrays:
            raise ValueError(f"npz file {path!r} holds test arrays, but the test set is "
                             f"test_path {test_path!r}: a node file holds x_train and y_train "
                             "only")
        shared = read_npz(test_path)
        for key in ("x_test", "y_test"):
            if key not in shared:
                raise ValueError(f"test file {test_path!r} lacks required array {key!r}")
        arrays["x_test"], arrays["y_test"] = shared["x_test"], shared["y_test"]
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise ValueError(f"npz file {path!r} lacks required array {key!r}")
    has_x_test, has_y_test = "x_test" in arrays, "y_test" in arrays
    if has_x_test != has_y_test:
        missing = "y_test" if has_x_test else "x_test"
        raise ValueError(f"npz file {path!r} has only one of x_test/y_test; {missing!r} missing")

    x_train, y_train = arrays["x_train"], arrays["y_train"]
    _check_features("x_train", x_train)
    _check_labels("y_train", y_train, x_train.shape[0])
    input_shape = tuple(int(d) for d in x_train.shape[1:])
    if has_x_test:
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        _check_features("x_test", x_test)
        if x_test.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"x_test examples have shape {x_test.shape[1:]}, "
                f"but x_train examples have shape {x_train.shape[1:]}"
            )
        _check_labels("y_test", y_test, x_test.shape[0])
    else:
        x_train, x_test, y_train, y_test = _split(
            x_train, y_train, seed=seed, test_fraction=test_fraction
        )

    def to_features(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(x.shape[0], -1), dtype=np.float32)

    x_train_f, x_test_f = to_features(x_train), to_features(x_test)
    for key, x in (("x_train", x_train_f), ("x_test", x_test_f)):
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{key} overflows float32 (non-finite after the cast)")
    return Dataset(
        x_train=x_train_f,
        y_train=np.ascontiguousarray(y_train, dtype=np.int32),
        x_test=x_test_f,
        y_test=np.ascontiguousarray(y_test, dtype=np.int32),
        num_classes=int(max(y_train.max(), y_test.max())) + 1,
        input_shape=input_shape,
    )
