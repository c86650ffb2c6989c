"""Distance filtering: mix only the neighbours whose estimate lies near the neighbourhood's
robust centre (issue 9). Pure: arrays in, a new float32 array out.

The centre is the coordinate-wise median of the node's own vector and its neighbours'; each
input's distance to it is measured, and a neighbour farther than ``ratio`` times the median
of those distances (or than ``ratio · floor`` times the centre's norm, whichever is larger)
is left out of this round's mix, its weight staying with the node
(Metropolis–Hastings weights for the rest, as :func:`~gossipfl.aggregation.mixing.mix`).

Who it stops: with an honest majority among the node and its neighbours, the centre lies in
the honest range of every coordinate and the median distance is an honest one, so an estimate
sent from far outside the honest spread (a scaled model, sign flipping, ALIE with a large
z, Gaussian noise) is discarded outright and moves the node not at all; unlike a clipping
radius measured from the node itself, nothing here grows when an attacker drags the node, so
a persistent attacker cannot feed its own bound. What it does not stop: an attacker inside
``ratio`` median distances (ALIE with a small z) still gets its full weight, bounded by that
distance, nor one within ``ratio · floor`` of the centre's norm (3% by default: near
consensus, that is what an attacker can still move a node per round); with a Byzantine
majority around a node (ClippedGossip's node 0, with 3 of its 5 neighbours) the centre is
theirs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gossipfl.aggregation.mixing import mix


def distance_filter(own: np.ndarray, neighbours: Mapping[str, np.ndarray],
                    weights: Mapping[str, float], ratio: float = 3.0, floor: float = 0.01,
                    distrusted: frozenset[str] = frozenset(), least: float = 0.0
                    ) -> tuple[np.ndarray, list[str]]:
    """``(model, discarded peers)``: the weighted mix of the own vector and the neighbours
    within ``ratio · max(median distance, floor · ||centre||)`` of the coordinate-wise median
    (see the module). The floor keeps a neighbourhood that nearly agrees from leaving out the
    rest for ever: without it, a group of nodes that agree among themselves has a median
    distance near 0 and would discard every neighbour outside it, and consensus would stall.
    ``distrusted`` neighbours (:func:`distrusted`) are left out wherever they lie. ``least``
    is a scale the limit never goes under (``ratio · least``): the node's own training step
    (see :mod:`gossipfl.node.robust_step`). Without it two Byzantine neighbours that send a
    node its own estimate back (an echo: what ALIE degenerates to when the attackers know
    only their target) make, with the node itself, a majority at distance 0, and every honest
    neighbour is left out: the node is cut off and learns alone.

    >>> model, out = distance_filter(np.zeros(1), {"a": np.ones(1), "b": np.full(1, 50.0)},
    ...                              {"a": 0.25, "b": 0.25})
    >>> model.tolist(), out
    ([0.25], ['b'])
    """
    if not ratio > 0 or not math.isfinite(ratio):
        raise ValueError(f"ratio must be a positive number, got {ratio}")
    if not 0 <= floor < 1:
        raise ValueError(f"floor must be in [0, 1), got {floor}")
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
    if not least >= 0 or not math.isfinite(least):
        raise ValueError(f"least must be a finite number >= 0, got {least}")
    limit = ratio * max(float(np.median(distance)), floor * float(np.linalg.norm(centre)),
                        least)
    kept = [p for k, p in enumerate(peers, start=1)
            if distance[k] <= limit and p not in distrusted]
    discarded = [p for p in peers if p not in kept]
    kept_weights = {p: float(weights[p]) for p in kept}
    self_weight = 1.0 - math.fsum(float(w) for w in weights.values()) \
        + math.fsum(float(weights[p]) for p in discarded)
    model = mix(base, {p: neighbours[p] for p in kept}, kept_weights, self_weight)
    return np.asarray(model, np.float32), discarded


def distrusted(counts: Mapping[str, tuple[int, int]], share: float = 0.5,
               least: int = 3) -> frozenset[str]:
    """The neighbours the filter left out in at least ``share`` of the rounds it saw them
    (``counts``: per peer, (rounds left out, rounds filtered)), once it saw them in at least
    ``least`` rounds.

    Why: an attacker far outside the honest spread while the nodes train (ALIE's z standard
    deviations) comes within the floor as consensus nears and the spread shrinks, and could
    then push every consensus round; one that was an outlier in most rounds stays out. An
    honest neighbour is left out rarely (a round after its own restart, say), so it stays in,
    and one left out for a while is trusted again once its good rounds outnumber the rest.

    >>> sorted(distrusted({"a": (2, 3), "b": (1, 3), "c": (1, 1)}))
    ['a']
    """
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return frozenset(p for p, (out, seen) in counts.items()
                     if seen >= least and out >= share * seen)
