"""Distance filtering: mix only the neighbours whose estimate lies near the neighbourhood's
robust centre (issue 9). Pure: arrays in, a new float32 array out.

The centre is the coordinate-wise median of the node's own vector and its neighbours'; each
input's distance to it is measured, and a neighbour farther than ``ratio`` times the median
of those distances is left out of this round's mix, its weight staying with the node
(Metropolis–Hastings weights for the rest, as :func:`~gossipfl.aggregation.mixing.mix`).

Who it stops: with an honest majority among the node and its neighbours, the centre lies in
the honest range of every coordinate and the median distance is an honest one, so an estimate
sent from far outside the honest spread (a scaled model, sign flipping, ALIE with a large
z, Gaussian noise) is discarded outright and moves the node not at all; unlike a clipping
radius measured from the node itself, nothing here grows when an attacker drags the node, so
a persistent attacker cannot feed its own bound. What it does not stop: an attacker inside
``ratio`` median distances (ALIE with a small z) still gets its full weight, bounded by that
distance; with a Byzantine majority around a node (ClippedGossip's node 0 with 3 of 5
neighbours) the centre is theirs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gossipfl.aggregation.mixing import mix


def distance_filter(own: np.ndarray, neighbours: Mapping[str, np.ndarray],
                    weights: Mapping[str, float], ratio: float = 3.0
                    ) -> tuple[np.ndarray, list[str]]:
    """``(model, discarded peers)``: the weighted mix of the own vector and the neighbours
    within ``ratio`` median distances of the coordinate-wise median (see the module).

    >>> model, out = distance_filter(np.zeros(1), {"a": np.ones(1), "b": np.full(1, 50.0)},
    ...                              {"a": 0.25, "b": 0.25})
    >>> model.tolist(), out
    ([0.25], ['b'])
    """
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a positive number, got {ratio}")
    if set(weights) != set(neighbours):
        raise ValueError("weights and neighbours must name the same peers")
    peers = sorted(neighbours)
    base = np.asarray(own, np.float64)
    rows = [base]
    for peer in peers:
        row = np.asarray(neighbours[peer], np.float64)
        if row.shape != base.shape:
            raise ValueError(f"{peer}: shape {row.shape} != {base.shape}")
        if not np.isfinite(row).all():
            raise ValueError(f"{peer}: non-finite estimate")
        rows.append(row)
    stacked = np.stack(rows)
    centre = np.median(stacked, axis=0)
    distance = np.linalg.norm(stacked - centre, axis=1)
    limit = ratio * float(np.median(distance))
    kept = [p for k, p in enumerate(peers, start=1) if distance[k] <= limit]
    discarded = [p for p in peers if p not in kept]
    kept_weights = {p: float(weights[p]) for p in kept}
    self_weight = 1.0 - math.fsum(float(w) for w in weights.values()) \
        + math.fsum(float(weights[p]) for p in discarded)
    model = mix(base, {p: neighbours[p] for p in kept}, kept_weights, self_weight)
    return np.asarray(model, np.float32), discarded
