"""Per-node data files in a scenario: ``[data] dataset = "npz"`` with ``paths`` (node i reads
``paths[i]``) or ``folder`` (its ``.npz`` files sorted by name, one per node), and
``test_path``, the one test set every node and the centralised baseline are evaluated on.

A node file holds ``x_train`` and ``y_train`` only (a test split in it is refused: the test
set is the shared one, so that the report's accuracies compare); ``test.npz`` holds ``x_test``
and ``y_test``. The files are checked once, before a run starts anything: every file readable,
the count equal to the nodes, the same example shape everywhere, every training label one the
test set has and every test label one some node has (so that every node builds the same
model), no NaN. Each node is then given its own file as ``data.path`` (partition ``none``).

:func:`write_split` writes a scenario's own partition (the exact examples each node computes
from its dataset, partition, alpha and seed) as such files: ``gossipfl data split``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gossipfl.config import ConfigError, DataConfig
from gossipfl.learning.data import Dataset, load_dataset, read_npz
from gossipfl.learning.generated import load_kept
from gossipfl.learning.partition import node_partition


class ScenarioConfig(Protocol):
    """What of a scenario (:class:`gossipfl.scenario.config.ScenarioConfig`) this module reads;
    named here so that the scenario's config, which resolves its file names here, is not
    imported back."""

    @property
    def data(self) -> DataConfig: ...

    @property
    def nodes(self) -> int: ...

#: The keys of ``[data]`` that name files, resolved against the scenario file's folder.
FILE_KEYS = ("path", "test_path", "folder")
SPLIT_HINT = ("gossipfl data split SCENARIO.toml FOLDER writes a scenario's partition as such "
              "files")


def resolve_data_section(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """The scenario's raw TOML with the file names of ``[data]`` made absolute against
    ``base`` (the scenario file's folder); a ``partition`` given with per-node files is
    refused (each file is its node's partition)."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return raw
    data = dict(data)
    if (data.get("paths") or "folder" in data) and data.get("partition", "none") != "none":
        raise ConfigError("data.partition: with data.paths or data.folder each node's file is "
                          "its partition; leave partition out (or set it to \"none\")")
    if data.get("paths") or "folder" in data:
        data["partition"] = "none"
    for key in FILE_KEYS:
        if isinstance(data.get(key), str):
            data[key] = str((base / data[key]).resolve())
    if isinstance(data.get("paths"), list):
        data["paths"] = [str((base / p).resolve()) if isinstance(p, str) else p
                         for p in data["paths"]]
    return {**raw, "data": data}


def uses_files(spec: DataConfig) -> bool:
    """Whether ``spec`` names a file per node (``paths`` or ``folder``)."""
    return bool(spec.paths) or spec.folder is not None


def node_files(spec: DataConfig, nodes: int) -> list[str]:
    """Node i's file, for every node: ``paths``, or ``folder``'s ``.npz`` files by name
    (the test file left out if it lies there). ConfigError: a missing folder, a wrong count."""
    if spec.paths:
        files = list(spec.paths)
        where = "data.paths lists"
    else:
        folder = Path(str(spec.folder))
        if not folder.is_dir():
            raise ConfigError(f"data.folder {folder} does not exist or is not a folder "
                              f"({SPLIT_HINT})")
        test = Path(str(spec.test_path)).resolve()
        files = [str(p) for p in sorted(folder.glob("*.npz"))
                 if p.is_file() and not p.name.startswith(".") and p.resolve() != test]
        where = f"data.folder {folder} holds"
    if len(files) != nodes:
        raise ConfigError(f"{where} {len(files)} node file(s); the scenario has {nodes} nodes "
                          "(one file per node)")
    return files


def _load(path: str, test_path: str, label: str) -> Dataset:
    try:
        return load_dataset("npz", path=path, test_path=test_path)
    except ValueError as error:
        raise ConfigError(f"data: {label}: {error}") from None


def check_files(spec: DataConfig, nodes: int) -> list[Dataset]:
    """Every node's dataset (its file, and the shared test set), checked across files."""
    files = node_files(spec, nodes)
    test_path = str(spec.test_path)
    try:
        test = read_npz(test_path)
    except ValueError as error:
        raise ConfigError(f"data.test_path: {error}") from None
    missing = [k for k in ("x_test", "y_test") if k not in test]
    if missing:
        raise ConfigError(f"data.test_path {test_path} lacks {missing[0]!r} (a test file holds "
                          "x_test and y_test)")
    test_shape = tuple(np.shape(test["x_test"])[1:])
    for index, path in enumerate(files):
        arrays = read_npz_or_refuse(path, f"node {index}'s file")
        if "x_train" in arrays and tuple(arrays["x_train"].shape[1:]) != test_shape:
            raise ConfigError(f"data: node {index}'s file {path} has examples of shape "
                              f"{tuple(arrays['x_train'].shape[1:])}, the test set "
                              f"{test_path} of shape {test_shape}: every file must hold "
                              "examples of one shape")
    datasets = [_load(path, test_path, f"node {i}'s file") for i, path in enumerate(files)]
    test_labels = set(np.unique(datasets[0].y_test).tolist())
    seen: set[int] = set()
    for index, (path, dataset) in enumerate(zip(files, datasets, strict=True)):
        labels = set(np.unique(dataset.y_train).tolist())
        extra = sorted(labels - test_labels)
        if extra:
            raise ConfigError(f"data: node {index}'s file {path} has labels {extra} that the "
                              f"test set {test_path} lacks (its labels: "
                              f"{sorted(test_labels)}): the files' label sets differ")
        seen |= labels
    unseen = sorted(test_labels - seen)
    if unseen:
        raise ConfigError(f"data: the test set {test_path} has labels {unseen} that no node's "
                          "file has: the files' label sets differ")
    return datasets


def read_npz_or_refuse(path: str, label: str) -> dict[str, np.ndarray]:
    """The arrays of ``path``, or a ConfigError naming ``label``."""
    try:
        return read_npz(path)
    except ValueError as error:
        raise ConfigError(f"data: {label}: {error}") from None


def node_data(scenario: ScenarioConfig) -> list[DataConfig]:
    """Each node's ``[data]``: the scenario's own, or with per-node files node i's file as
    ``path`` (partition ``none``), once every file is checked."""
    spec = scenario.data
    if not uses_files(spec):
        return [spec] * scenario.nodes
    check_files(spec, scenario.nodes)
    return [replace(spec, path=path, paths=(), folder=None, partition="none")
            for path in node_files(spec, scenario.nodes)]


def pooled_dataset(spec: DataConfig, nodes: int) -> Dataset:
    """Every node's training examples pooled (in node order), with the shared test set: what
    the centralised baseline trains and is evaluated on."""
    datasets = check_files(spec, nodes)
    first = datasets[0]
    y_train = np.concatenate([d.y_train for d in datasets])
    return Dataset(
        x_train=np.concatenate([d.x_train for d in datasets]),
        y_train=y_train,
        x_test=first.x_test,
        y_test=first.y_test,
        num_classes=int(max(y_train.max(), first.y_test.max())) + 1,
        input_shape=first.input_shape,
    )


def scenario_dataset(spec: DataConfig, nodes: int, cache: str | None = None) -> Dataset:
    """The scenario's whole dataset: the pooled node files, or the one dataset all nodes
    partition (a generated one kept in ``cache``, :mod:`gossipfl.learning.generated`)."""
    if uses_files(spec):
        return pooled_dataset(spec, nodes)
    return load_kept(spec.dataset, cache=cache, seed=spec.seed,
                     test_fraction=spec.test_fraction, path=spec.path, samples=spec.samples,
                     test_path=spec.test_path)


def partition_of(spec: DataConfig, dataset: Dataset, index: int, nodes: int) -> np.ndarray:
    """Node ``index``'s training indices, as a node computes them
    (:func:`gossipfl.node.learner.partition_indices`)."""
    if spec.partition == "none":
        return np.arange(len(dataset.y_train))
    return node_partition(dataset.y_train, index, nodes, scheme=spec.partition, seed=spec.seed,
                          alpha=spec.alpha, shards_per_node=spec.shards_per_node,
                          holders=spec.holders)


def write_split(scenario: ScenarioConfig, out: str | Path) -> list[Path]:
    """Write the scenario's partition as files: ``node-NN.npz`` for each node (``x_train`` in
    the dataset's natural example shape, ``y_train``) and ``test.npz`` (``x_test``,
    ``y_test``), all float32 / int32 as the nodes hold them. Returns the node files.

    Raises:
        ConfigError: If the scenario already reads per-node files, its data cannot be loaded,
            or ``out`` already holds ``.npz`` files.
    """
    spec = scenario.data
    if uses_files(spec):
        raise ConfigError("this scenario already reads a file per node (data.paths or "
                          "data.folder): there is nothing to split")
    if spec.holders:
        raise ConfigError("data.holders leaves some nodes no data, and a node's file cannot be "
                          "empty: split a scenario without holders")
    folder = Path(out)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.glob("*.npz")):
        raise ConfigError(f"{folder} already holds .npz files; choose another folder (or "
                          "remove them): a folder of node files is read whole")
    try:
        dataset = scenario_dataset(spec, scenario.nodes)
    except ValueError as error:
        raise ConfigError(f"data: {error}") from None
    folder.mkdir(parents=True, exist_ok=True)
    shape = dataset.input_shape
    written = []
    for index in range(scenario.nodes):
        rows = partition_of(spec, dataset, index, scenario.nodes)
        path = folder / f"node-{index:02d}.npz"
        x = dataset.x_train[rows]
        np.savez_compressed(path, x_train=x.reshape(len(x), *shape), y_train=dataset.y_train[rows])
        written.append(path)
    np.savez_compressed(folder / "test.npz",
                        x_test=dataset.x_test.reshape(len(dataset.x_test), *shape),
                        y_test=dataset.y_test)
    return written


__all__ = ["check_files", "node_data", "node_files", "pooled_dataset", "resolve_data_section",
           "scenario_dataset", "uses_files", "write_split"]
