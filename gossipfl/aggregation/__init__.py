"""Aggregation: gossip mixing weights, model averaging and communication topologies."""

from gossipfl.aggregation.mixing import (
    WEIGHT_SUM_TOLERANCE,
    choco_step,
    consensus_distance,
    metropolis_matrix,
    metropolis_weight,
    mix,
    neighbour_weights,
    relative_disagreement,
    spectral_gap,
)
from gossipfl.aggregation.topology import (
    KINDS,
    REGULAR_MAX_ATTEMPTS,
    Topology,
    adjacency_matrix,
    build_topology,
    is_connected,
    max_degree,
)

__all__ = [
    "KINDS",
    "REGULAR_MAX_ATTEMPTS",
    "WEIGHT_SUM_TOLERANCE",
    "Topology",
    "adjacency_matrix",
    "build_topology",
    "choco_step",
    "consensus_distance",
    "is_connected",
    "max_degree",
    "metropolis_matrix",
    "metropolis_weight",
    "mix",
    "neighbour_weights",
    "relative_disagreement",
    "spectral_gap",
]
