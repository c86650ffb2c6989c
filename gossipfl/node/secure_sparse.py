"""Compressed secure aggregation (issue 10): random-k CHOCO deltas summed under masks.

With ``[secagg] enabled`` and ``[compression] kind = "randk"``, rounds are of two kinds, fixed
by the round number alone (so no aggregator chooses, and each (aggregator, round) still gets
exactly one masked input per member, under one set of pair seeds):

- **full** (every ``secagg.full_every``-th training round, round 0 first, and every consensus
  round: :func:`gossipfl.node.compression.full_round`): as without compression, each
  member j masks ``w_ij · x̂_j``; aggregator i's unmasked sum becomes its running sum
  ``S_i = Σ_{j∈V} w_ij x̂_j`` over the survivors V, its *base*, with ``W_i = Σ_{j∈V} w_ij``.
- **sparse** (the others): every member publishes its delta ``x½ − x̂`` on the round's
  coordinate set, which the whole federation shares
  (:func:`gossipfl.crypto.secagg_sparse.round_coordinates`), adds exactly that to its x̂, and
  masks the ``k`` weighted values (``k``-word masks: pair masks cancel, dropout recovery
  rebuilds ``k`` words). Aggregator i sums the inputs of its base members only (anyone else
  is a dropout for the masks), and adds the sum into ``S_i`` at those coordinates. With no
  base (a restart; any refused or failed sum drops it) it refuses sparse rounds until the
  next full one.

Either way the model moves by CHOCO's consensus step
``x_i = x½_i + γ (S_i − W_i x̂_i) = x½_i + γ Σ_j w_ij (x̂_j − x̂_i)``
(:func:`gossipfl.crypto.secagg_sparse.choco_mix`, γ = ``protocol.gamma`` in training rounds, 1 in
consensus rounds; a full round publishes x̂ = x½, uncompressed, as it sends the whole estimate
anyway), and the norm bound
checks the neighbourhood mean ``S_i / W_i`` against the model, as for full sums. A base member
that drops out of a sparse round leaves its delta out of ``S_i`` (its x̂ moved, ``S_i`` did not):
``S_i`` then holds a slightly stale x̂_j for it until the next full round re-bases.

What the aggregator learns is still sums: a sparse round's sum is the difference of two full
sums over the same set, on public coordinates. The survivor-set rules (consistency, the
differencing window) apply unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from gossipfl.aggregation.bounds import mean_within, sum_bound
from gossipfl.aggregation.compress import Codec, CompressionKind
from gossipfl.aggregation.mixing import relative_disagreement
from gossipfl.crypto.secagg_sparse import add_at, choco_mix, round_coordinates
from gossipfl.gossip.wire import MaskedInput
from gossipfl.node.compression import full_round
from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.secagg")


def compressed(node: Node) -> bool:
    """Whether this node runs compressed secure aggregation."""
    return (node.config.secagg.enabled
            and CompressionKind(node.config.compression.kind) is CompressionKind.RANDK)


def sparse_round(node: Node, r: int) -> bool:
    """Whether round ``r`` sends random-k deltas (else full estimates): public, by round."""
    return compressed(node) and not full_round(node.config.secagg, node.config.rounds, r)


def coordinates(node: Node, r: int) -> np.ndarray:
    return round_coordinates(node.config.federation, r, node.layout.size,
                             node.config.compression.ratio)


def words(node: Node, r: int) -> int:
    """How many masked uint32 words a member's input for round ``r`` holds."""
    return int(coordinates(node, r).size) if sparse_round(node, r) else node.layout.size


def input_for(node: Node, r: int, vector: np.ndarray,
              estimate: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """What this member masks for round ``r`` (before the weight): ``vector`` (its x̂, or what
    its role put in its place) in a full round; in a sparse round the delta its x̂ moved by on
    the shared coordinates (a role's crafted vector: as a delta on the x̂ its neighbours hold).
    None when it published no such delta for ``r`` (it then sends nothing: a dropout)."""
    if not sparse_round(node, r):
        return vector, False
    own, indices = node.own, coordinates(node, r)
    encoded = own.last_encoded
    if (own.round != r or encoded is None or encoded.codec is not Codec.SPARSE
            or encoded.indices is None or not np.array_equal(encoded.indices, indices)):
        log.warning("round %d: no random-k delta on the round's coordinates to send", r)
        return None
    if vector is estimate:
        return encoded.values, True
    assert own.last_delta is not None
    held = own.vector - own.last_delta  # the x̂ the neighbours held before this round
    return (np.asarray(vector, np.float32) - held)[indices.astype(np.int64)], True


def eligible(node: Node, r: int,
             inputs: dict[str, MaskedInput]) -> dict[str, MaskedInput] | None:
    """The inputs aggregator ``node`` may sum in round ``r``: all in a full round; in a sparse
    round those of its base members (None: no base to add deltas to, refuse the round)."""
    if not sparse_round(node, r):
        return inputs
    if node.secagg.running is None:
        return None
    return {p: m for p, m in inputs.items() if p in node.secagg.base}


def mix(node: Node, r: int, half_step: np.ndarray,
        result: tuple[np.ndarray, float, list[str]], record: dict[str, Any],
        missing: list[str]) -> list[str]:
    """Take a compressed round's unmasked sum into the running sum and make CHOCO's consensus
    step; returns ``missing``. A sum past the norm bound is not mixed in, and the running sum
    is dropped (sparse rounds are refused until the next full round re-bases)."""
    total, weights, survivors = result
    state = node.secagg
    sparse = sparse_round(node, r)
    if sparse:
        assert state.running is not None
        running, weight = add_at(state.running, coordinates(node, r), total), state.running_weight
    else:
        running, weight = np.asarray(total, np.float32), weights
    bound = sum_bound(half_step, node.config.robust.norm_ratio, len(survivors))
    if not mean_within(running / weight, half_step, bound):
        node.rejections["norm_sum"] += 1
        log.warning("round %d: the running secure sum's neighbourhood mean lies farther than "
                    "%.3g from our model (robust.norm_ratio): not mixed in; sparse rounds "
                    "wait for the next full one", r, bound)
        record["secure_aggregation"] = "refused: norm bound"
        state.running, state.base = None, frozenset()
        node.model = half_step.copy()
        return missing
    state.running, state.running_weight = running, weight
    if not sparse:
        state.base = frozenset(survivors)
    kind = "random-k" if sparse else "full"
    record["secure_aggregation"] = f"{len(survivors)} contributors ({kind})"
    # γ in full training rounds too: with γ = 1 there, x̂ (= x½) would lag the mixed x by the
    # whole disagreement, and the sparse rounds after would push x past the mean (measured:
    # diverges); consensus rounds are all full (x̂ = x½ each round): the exact step, γ = 1
    gamma = 1.0 if r >= node.config.rounds else node.protocol.gamma
    node.model = choco_mix(half_step, node.own.vector, running, weight, gamma)
    node.disagreement = relative_disagreement(node.model, [running / weight])
    return missing
