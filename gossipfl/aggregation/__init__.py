"""Aggregation: gossip mixing weights, model averaging, robust mixing and topologies."""

from gossipfl.aggregation.mixing import (
    WEIGHT_SUM_TOLERANCE,
    choco_step,
    clippedgossip_share,
    consensus_distance,
    metropolis_weight,
    mix,
    neighbour_weights,
    relative_disagreement,
    shared_weights,
)
from gossipfl.aggregation.robust import (
    SELF_ID,
    RobustResult,
    RobustRule,
    clipped_gossip,
    clipping_radius,
    coordinate_median,
    multi_krum,
    robust_mix,
    trimmed_mean,
)
from gossipfl.aggregation.topology import (
    GENERATED_KINDS,
    KINDS,
    REGULAR_MAX_ATTEMPTS,
    Topology,
    build_topology,
)

__all__ = [
    "GENERATED_KINDS",
    "KINDS",
    "REGULAR_MAX_ATTEMPTS",
    "SELF_ID",
    "WEIGHT_SUM_TOLERANCE",
    "RobustResult",
    "RobustRule",
    "Topology",
    "build_topology",
    "choco_step",
    "clipped_gossip",
    "clippedgossip_share",
    "clipping_radius",
    "consensus_distance",
    "coordinate_median",
    "metropolis_weight",
    "mix",
    "multi_krum",
    "neighbour_weights",
    "relative_disagreement",
    "robust_mix",
    "shared_weights",
    "trimmed_mean",
]
