"""The loss screen (issue 9): before a robust rule mixes, the neighbours whose estimates fit the
node's own training data worst, up to a share of its mixing weight, are left out that round,
their weight staying on the node (``[robust] screen``).

A performance check in the manner of UBAR (Guo et al., "Towards Byzantine-resilient learning
in decentralized systems", 2021), whose second stage keeps the neighbours whose models do no
worse than the node's own on its training data. Distances alone cannot tell an attacker that
sits as far from the node as its honest neighbours do (the dissensus attack on ClippedGossip's
ring: node 0's three attackers at the distance of its two honest neighbours), and clipping gives
such an attacker at least the honest pull; the loss on the node's data can. Here the screen is
a rank, not a threshold: a node's own model fits its data far better than any honest
neighbour's (it trained on it), so "no worse than mine" would leave out every neighbour.

Pure: weights and losses in, the kept weights and the ids left out; deterministic (ties by peer
id), inputs never mutated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gossipfl.aggregation.mixing import WEIGHT_SUM_TOLERANCE

__all__ = ["loss_screen"]


def loss_screen(weights: Mapping[str, float], losses: Mapping[str, float],
                share: float) -> tuple[dict[str, float], tuple[str, ...]]:
    """Leave out the neighbours of highest loss while their weights add up to at most ``share``.

    Neighbours are taken highest loss first (a non-finite loss counts as the highest; ties by
    peer id) and left out while the running sum of their weights stays within ``share``; the
    first that would pass it, and all after it, are kept. The neighbour of lowest loss is always
    kept, so a node with neighbours never screens them all out.

    Args:
        weights: Mixing weight per neighbour.
        losses: Each neighbour's estimate's loss on the node's training data; the same peers.
        share: The most mixing weight left out, ``0 <= share < 1``.

    Returns:
        ``(kept, left_out)``: the kept neighbours' weights (as given) and the ids left out, in
        id order.

    Raises:
        ValueError: If the peers differ or ``share`` is outside ``[0, 1)``.

    Example:
        >>> kept, out = loss_screen({"a": 0.2, "b": 0.2, "c": 0.2, "d": 0.2},
        ...                         {"a": 0.3, "b": 2.0, "c": 0.4, "d": 1.5}, share=0.5)
        >>> sorted(kept), out
        (['a', 'c'], ('b', 'd'))
    """
    if set(weights) != set(losses):
        raise ValueError(f"weights and losses name different peers: {sorted(weights)} != "
                         f"{sorted(losses)}")
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share}")

    def badness(peer: str) -> tuple[float, str]:
        loss = float(losses[peer])
        return (-(loss if math.isfinite(loss) else math.inf), peer)

    order = sorted(weights, key=badness)  # highest loss first
    left_out: list[str] = []
    total = 0.0
    for peer in order[:-1]:  # the best neighbour always stays
        total += float(weights[peer])
        if total > share + WEIGHT_SUM_TOLERANCE:
            break
        left_out.append(peer)
    kept = {p: float(w) for p, w in weights.items() if p not in left_out}
    return kept, tuple(sorted(left_out))
