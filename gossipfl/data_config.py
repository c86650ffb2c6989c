"""The ``[data]`` and ``[model]`` sections of a node's or a scenario's configuration."""

from __future__ import annotations

from dataclasses import dataclass

from gossipfl.config_io import ConfigError

DATASETS = ("digits", "wine", "breast_cancer", "iris", "mnist1d", "teacher", "npz")
PARTITIONS = ("iid", "dirichlet", "shards", "none")
MODELS = ("logreg", "mlp", "cnn")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "digits"
    path: str | None = None  # the user's .npz, for dataset = "npz"
    partition: str = "dirichlet"
    alpha: float = 0.5
    shards_per_node: int = 2
    test_fraction: float = 0.2
    seed: int = 0
    samples: int | None = None  # mnist1d, teacher: examples generated (train + test, 80/20)
    # npz: the shared test set (x_test, y_test); the path file then holds training data only
    test_path: str | None = None
    # a scenario's per-node files (gossipfl.scenario.datafiles): node i reads paths[i], or the
    # i-th file of folder by name; each node is given its own as path
    paths: tuple[str, ...] = ()
    folder: str | None = None
    # the nodes that hold training data: the partition is cut among them only, in this order,
    # and every other node holds none (it trains nothing and only mixes); () for every node
    holders: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(self.dataset in DATASETS, f"data.dataset must be one of {DATASETS}")
        _require(self.samples is None or self.dataset in ("mnist1d", "teacher"),
                 "data.samples applies only to datasets mnist1d and teacher (it sets how many "
                 "are generated)")
        _require(self.samples is None or self.samples >= 10, "data.samples must be at least 10")
        files = bool(self.paths) or self.folder is not None
        _require(self.dataset == "npz" or not (files or self.test_path),
                 "data.paths, data.folder and data.test_path are for dataset = \"npz\"")
        _require(sum((bool(self.path), bool(self.paths), self.folder is not None)) <= 1,
                 "data: give one of path (one file, partitioned), paths (a file per node) "
                 "and folder (a folder of node files)")
        _require(not files or bool(self.test_path),
                 "data.paths and data.folder need data.test_path, the shared test set (a .npz "
                 "file with x_test and y_test): every node and the centralised baseline are "
                 "evaluated on it")
        _require(self.dataset != "npz" or bool(self.path) or files,
                 "data.path is required for npz data (or paths / folder in a scenario)")
        _require(self.partition in PARTITIONS, f"data.partition must be one of {PARTITIONS}")
        _require(self.alpha > 0, "data.alpha must be positive")
        _require(self.shards_per_node >= 1, "data.shards_per_node must be at least 1")
        _require(0 < self.test_fraction < 1, "data.test_fraction must be in (0, 1)")
        _require(not self.holders or (self.partition != "none" and not files),
                 "data.holders cuts the partition among the nodes listed: it needs a partition "
                 "(iid, dirichlet, shards), not none or per-node files")
        _require(all(h >= 0 for h in self.holders)
                 and len(set(self.holders)) == len(self.holders),
                 "data.holders lists node indices >= 0, each once")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"
    hidden: tuple[int, ...] = (64, 64)

    def __post_init__(self) -> None:
        _require(self.name in MODELS, f"model.name must be one of {MODELS}")
        _require(all(h > 0 for h in self.hidden), "model.hidden sizes must be positive")
