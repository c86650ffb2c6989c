"""Local learning: datasets, partitioning, JAX models, parameter codecs, training."""

from gossipfl.learning.data import Dataset, load_dataset
from gossipfl.learning.models import Model, build_model
from gossipfl.learning.params import (
    Params,
    flatten_params,
    from_named_arrays,
    named_arrays,
    param_count,
    unflatten_params,
)
from gossipfl.learning.partition import node_partition, partition_indices
from gossipfl.learning.train import TrainConfig, Trainer, train_centralised

__all__ = [
    "Dataset",
    "Model",
    "Params",
    "TrainConfig",
    "Trainer",
    "build_model",
    "flatten_params",
    "from_named_arrays",
    "load_dataset",
    "named_arrays",
    "node_partition",
    "param_count",
    "partition_indices",
    "train_centralised",
    "unflatten_params",
]
