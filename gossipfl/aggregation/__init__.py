"""Aggregation: gossip mixing weights, model averaging and communication topologies."""

from gossipfl.aggregation.mixing import (
    WEIGHT_SUM_TOLERANCE,
    choco_step,
    consensus_distance,
    metropolis_weight,
    mix,
    neighbour_weights,
    relative_disagreement,
)
from gossipfl.aggregation.topology import (
    KINDS,
    REGULAR_MAX_ATTEMPTS,
    Topology,
    build_topology,
)

__all__ = [
    "KINDS",
    "REGULAR_MAX_ATTEMPTS",
    "WEIGHT_SUM_TOLERANCE",
    "Topology",
    "build_topology",
    "choco_step",
    "consensus_distance",
    "metropolis_weight",
    "mix",
    "neighbour_weights",
    "relative_disagreement",
]
