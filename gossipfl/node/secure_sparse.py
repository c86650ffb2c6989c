"""Compressed secure aggregation (issue 10): random-k or quantised CHOCO deltas summed under
masks.

With ``[secagg] enabled`` and ``[compression] kind = "randk"``, ``"int8"`` or ``"int4"``, rounds
are of two kinds, fixed
by the round number (and each (aggregator, round) still gets exactly one masked input per
member, under one set of pair seeds), but that an aggregator whose running sum is exact may
waive a round full by ``full_every`` alone, two rounds ahead (:func:`waiver`; its members then
send it deltas):

- **full** (every ``secagg.full_every``-th round, round 0 first; every consensus round with
  random-k or ``secagg.consensus_deltas`` off: :func:`gossipfl.node.compression.full_round`):
  as without compression, each
  member j masks ``w_ij · x̂_j``; aggregator i's unmasked sum becomes its running sum
  ``S_i = Σ_{j∈V} w_ij x̂_j`` over the survivors V, its *base*, with ``W_i = Σ_{j∈V} w_ij``.
- **sparse** (the others): every member publishes its delta ``x½ − x̂`` on the round's
  coordinate set, which the whole federation shares
  (:func:`gossipfl.crypto.secagg_sparse.round_coordinates`), adds exactly that to its x̂, and
  masks the ``k`` weighted values (``k``-word masks: pair masks cancel, dropout recovery
  rebuilds ``k`` words). Aggregator i sums the inputs of its base members only (anyone else
  is a dropout for the masks), and adds the sum into ``S_i`` at those coordinates. With no
  base (a restart; any refused or failed sum drops it) it refuses sparse rounds until the
  next full one. With int8/int4 a sparse round covers every coordinate instead: the delta is
  rounded stochastically to levels ``L_j`` of the public step ``s = secagg.delta_clip /
  levels`` (127 levels for int8, 7 for int4; x̂ adds exactly ``s L_j``, so clipping and
  rounding are error feedback), member j masks ``c_ij L_j`` (``w_ij = c_ij / K_i`` exactly) as
  words of the narrowest ring that cannot wrap (:func:`ring`: 6 bits for int4 on a degree-4
  graph, 12 for int8), and the aggregator decodes ``Σ_j w_ij s L_j`` exactly
  (:func:`gossipfl.crypto.secagg_sparse.decode_ring_sum`). A consensus round's deltas take
  :data:`~gossipfl.crypto.secagg_sparse.CONSENSUS_LEVELS` levels of the same clip (12-bit
  words at degree 4), the rounding noise of int4's step being larger than the tolerance.

Either way the model moves by CHOCO's consensus step
``x_i = x½_i + γ (S_i − W_i x̂_i) = x½_i + γ Σ_j w_ij (x̂_j − x̂_i)``
(:func:`gossipfl.crypto.secagg_sparse.choco_mix`, γ = ``protocol.gamma`` in training rounds, 1 in
consensus rounds; a full round publishes x̂ = x½, uncompressed, as it sends the whole estimate
anyway); in a consensus delta round it moves to the neighbourhood's mean of public estimates
instead (:func:`gossipfl.crypto.secagg_sparse.consensus_mix`: stable when a delta is clipped,
where CHOCO's additive step is not), and the norm bound
checks the neighbourhood mean ``S_i / W_i`` against the model, as for full sums. A base member
that drops out of a sparse round leaves its delta out of ``S_i`` (its x̂ moved, ``S_i`` did not):
``S_i`` then holds a slightly stale x̂_j for it until the next full round re-bases.

What the aggregator learns is still sums: a sparse round's sum is the difference of two full
sums over the same set, on public coordinates. The survivor-set rules (consistency, the
differencing window) apply unchanged.
"""

from __future__ import annotations

import logging
from fractions import Fraction
from typing import Any

import numpy as np

from gossipfl.aggregation.bounds import mean_within, sum_bound
from gossipfl.aggregation.compress import Codec, CompressionKind
from gossipfl.aggregation.mixing import relative_disagreement
from gossipfl.crypto.secagg_sparse import (
    CONSENSUS_LEVELS,
    NARROW_LEVELS,
    QUANTISED_LEVELS,
    add_at,
    choco_mix,
    consensus_mix,
    delta_step,
    integer_weights,
    quantise_levels,
    ring_width,
    round_coordinates,
    round_levels,
)
from gossipfl.gossip.wire import MaskedInput
from gossipfl.node.compression import full_round, waivable
from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.secagg")


def compressed(node: Node) -> bool:
    """Whether this node runs compressed secure aggregation."""
    return (node.config.secagg.enabled
            and CompressionKind(node.config.compression.kind) is not CompressionKind.NONE)


def levels(node: Node, r: int | None = None) -> int:
    """The quantised kinds' levels each side of zero (int8 127, int4 7; in round ``r``
    :func:`~gossipfl.crypto.secagg_sparse.round_levels`, ``secagg.delta_levels`` heeded);
    0 for random-k."""
    kind = node.config.compression.kind
    if r is None:
        return QUANTISED_LEVELS.get(kind, 0)
    secagg = node.config.secagg
    return round_levels(kind, node.config.rounds, r, secagg.delta_levels,
                        secagg.coarse_consensus)


def step(node: Node, r: int) -> float:
    """The public quantisation step of round ``r``'s deltas, ``secagg.delta_clip / levels``."""
    return delta_step(node.config.secagg.delta_clip, levels(node, r))


def metropolis(node: Node, aggregator: str, contributor: str) -> Fraction:
    """The Metropolis–Hastings weight ``1 / (1 + max(d_i, d_j))`` from the topology's degrees,
    exactly (both ends know it in advance)."""
    assert node.topology is not None
    degree_i = len(node.topology.get(aggregator, frozenset()))
    degree_j = len(node.topology.get(contributor, frozenset()))
    return Fraction(1, 1 + max(degree_i, degree_j))


def ring(node: Node, aggregator: str, r: int) -> tuple[dict[str, int], int, int]:
    """Aggregator's ``(c_ij per member, K, width)`` for a quantised delta round ``r``: integer
    weights ``w_ij = c_ij / K`` and the narrowest ring width whose signed range holds
    ``levels · Σ_j c_ij`` (:func:`sum_levels`; ValueError where even 32 bits could wrap)."""
    assert node.topology is not None
    members = node.topology.get(aggregator, frozenset())
    counts, denominator = integer_weights({j: metropolis(node, aggregator, j) for j in members})
    return counts, denominator, ring_width(sum_levels(node, aggregator, r),
                                           sum(counts.values()))


def sum_levels(node: Node, aggregator: str, r: int) -> int:
    """The levels each side of zero a member's input to ``aggregator``'s sum of round ``r``
    holds: the round's (:func:`levels`), or fewer where the aggregator narrowed it
    (:func:`narrowing`)."""
    narrowed = (node.secagg.narrowed.get(r) if aggregator == node.peer_id
                else node.secagg.narrowings.get((aggregator, r)))
    return narrowed or levels(node, r)


def can_narrow(node: Node, aggregator: str, r: int) -> bool:
    """Whether ``aggregator``'s sum of round ``r`` takes consensus deltas
    (:data:`CONSENSUS_LEVELS` levels: a consensus delta round, or a full one it waived)."""
    return sparse_for(node, aggregator, r) and levels(node, r) == CONSENSUS_LEVELS


NARROW_SHRUNK = 16
"""An aggregator narrows a consensus delta round once its last sum's largest coordinate is
within this many times a narrowed sum's range (:func:`narrowing`). 16 against 4, simulated on
``secagg_int4.toml`` at seeds 0-11: 5 % fewer bytes, the lowest node alike (0.9498 against
0.9505 on average, a quarter of a test example): what it clips reaches x̂ a round or two later."""


NARROW_SETTLED = 30
"""An aggregator narrows only while its own disagreement with its neighbourhood's mean is within
this many consensus tolerances: a narrowed sum is clipped, so a small one does not show that
the moves were small, and narrowing on it alone held two of six simulated runs near a level a
round (74 and 88 rounds where 40 sufficed); a clipped consensus keeps its disagreement up.
Simulated (``secagg_int4.toml``, seeds 0-5): 10.22-10.23 MB in 40 rounds each with 30,
10.50-10.76 MB in 41 with 10."""


def narrowing(node: Node, r: int) -> tuple[int, int]:
    """The round this aggregator narrows in its round-``r`` unmask requests, and to how many
    levels each side ((0, 0): none): round r + 2, when its sum takes consensus deltas and this
    node's last sum (round r's where the early shares gave it before the requests went out,
    else round r − 1's: :func:`note_sum`) had no coordinate
    past ``NARROW_SHRUNK`` times what a sum of the fewest :data:`NARROW_LEVELS` that can holds
    (``levels · Σc``): the consensus has settled to moves a few levels wide, and holding each
    member to them narrows the words (at degree 4: 9-value, 6- or 8-bit instead of 12-bit),
    what it clips staying in x½ − x̂ for the next rounds. Recorded as narrowed. What it tells
    its members is a bound on that sum."""
    state, ahead = node.secagg, r + 2
    last_round, largest = state.last_sum
    if (last_round not in (r, r - 1) or not can_narrow(node, node.peer_id, ahead)
            or node.topology is None or node.disagreement
            > NARROW_SETTLED * node.protocol.consensus_tolerance):
        return 0, 0
    counts, _, _ = ring(node, node.peer_id, last_round)
    weight_sum = sum(counts.values())
    for narrow in NARROW_LEVELS:
        if largest <= NARROW_SHRUNK * narrow * weight_sum:
            state.narrowed[ahead] = narrow
            return ahead, narrow
    return 0, 0


def note_sum(node: Node, r: int, total: np.ndarray) -> None:
    """Keep the largest ``|Σ_j c_j L_j|`` of this aggregator's round-``r`` sum ``total`` (its
    decoded ``Σ_j w_j s L_j``) where it takes consensus deltas: :func:`narrowing` reads it."""
    if can_narrow(node, node.peer_id, r):
        _, denominator, _ = ring(node, node.peer_id, r)
        largest = float(np.abs(total).max()) if np.size(total) else 0.0
        node.secagg.last_sum = (r, round(largest * denominator / step(node, r)))


def note_narrowing(node: Node, aggregator: str, r: int, narrows: int, narrow: int) -> None:
    """A member takes ``aggregator``'s round-``r`` request's narrowing: only of round r + 2,
    only of a round whose sum takes consensus deltas (a waiver in the same request counted),
    only to one of :data:`NARROW_LEVELS` (anything else is ignored), and only while this
    member's own disagreement is within :data:`NARROW_SETTLED` tolerances, the test an
    aggregator applies to itself: a deviating aggregator that narrows every round to one level
    would otherwise hold its members to a level a round (simulated, ``secagg_int4.toml`` with
    node 0 doing so, seeds 0-3: 90 rounds, the limit, lowest node 0.9389-0.95, against 40-41);
    with this test they send it wide words it must refuse, as it could refuse them anyway
    (56-57 rounds; an aggregator refusing every consensus input: 66)."""
    if (narrows and narrows == r + 2 and narrow in NARROW_LEVELS
            and can_narrow(node, aggregator, narrows)
            and node.disagreement <= NARROW_SETTLED * node.protocol.consensus_tolerance):
        node.secagg.narrowings[(aggregator, narrows)] = narrow


def narrowed_levels_fit(node: Node, aggregator: str, r: int, values: np.ndarray) -> bool:
    """Whether levels ``values`` fit ``aggregator``'s ring of round ``r`` (they may not where it
    narrowed a round after this member published: then nothing is sent, a dropout, rather
    than words that would wrap)."""
    bound = sum_levels(node, aggregator, r)
    return not values.size or int(np.abs(values.astype(np.int64)).max()) <= bound


def width(node: Node, aggregator: str, r: int) -> int:
    """The bits of each masked word in ``aggregator``'s sum of round ``r``: 32 but in a
    quantised delta round."""
    return ring(node, aggregator, r)[2] if sparse_for(node, aggregator, r) and levels(node) else 32


def sparse_round(node: Node, r: int) -> bool:
    """Whether round ``r`` sends random-k deltas (else full estimates): public, by round."""
    return compressed(node) and not full_round(node.config.secagg, node.config.rounds, r,
                                               CompressionKind(node.config.compression.kind))


def can_waive(node: Node, r: int) -> bool:
    """Whether round ``r`` is a full round an aggregator may waive
    (:func:`gossipfl.node.compression.waivable`)."""
    return compressed(node) and waivable(node.config.secagg, node.config.rounds, r,
                                          CompressionKind(node.config.compression.kind))


def waived(node: Node, aggregator: str, r: int) -> bool:
    """Whether ``aggregator`` waived its full sum of round ``r``: as the aggregator, this node
    announced so two rounds before (:func:`waiver`); as a member, it was told so then."""
    if aggregator == node.peer_id:
        return r in node.secagg.waived
    return (aggregator, r) in node.secagg.waivers


def sparse_for(node: Node, aggregator: str, r: int) -> bool:
    """Whether ``aggregator``'s sum of round ``r`` takes deltas: a sparse round, or a full
    one it waived."""
    return sparse_round(node, r) or (can_waive(node, r) and waived(node, aggregator, r))


def waiver(node: Node, r: int, survivors: frozenset[str]) -> int:
    """The round this aggregator waives in its round-``r`` unmask requests (0: none): round
    r + 2, when it is a full round by ``full_every`` alone and the running sum is exact (held,
    and every base member among round r's survivors); recorded as waived. A sum of round r or
    r + 1 that fails after it leaves the aggregator without a base until the next full round."""
    state, ahead = node.secagg, r + 2
    if not can_waive(node, ahead) or state.running is None or not state.base <= survivors:
        return 0
    state.waived.add(ahead)
    return ahead


def note_waiver(node: Node, aggregator: str, r: int, waives: int) -> None:
    """A member takes ``aggregator``'s round-``r`` request's waiver: only of round r + 2 and
    only of a round full by ``full_every`` alone (anything else is ignored)."""
    if waives and waives == r + 2 and can_waive(node, waives):
        node.secagg.waivers.add((aggregator, waives))


def coordinates(node: Node, r: int) -> np.ndarray:
    return round_coordinates(node.config.federation, r, node.layout.size,
                             node.config.compression.ratio)


def words(node: Node, aggregator: str, r: int) -> int:
    """How many masked words a member's input to ``aggregator`` for round ``r`` holds."""
    if sparse_for(node, aggregator, r) and not levels(node):
        return int(coordinates(node, r).size)
    return node.layout.size


def input_for(node: Node, aggregator: str, r: int, vector: np.ndarray,
              estimate: np.ndarray) -> tuple[np.ndarray, bool] | None:
    """What this member masks for round ``r`` (before the weight): ``vector`` (its x̂, or what
    its role put in its place) in a full round; in a sparse round the delta its x̂ moved by on
    the shared coordinates, or (int8/int4) its levels at the public step (a role's crafted
    vector: as a delta on the x̂ its neighbours hold). None when it published no such delta
    for ``r`` (it then sends nothing: a dropout)."""
    if not sparse_for(node, aggregator, r):
        return vector, False
    own, quantised = node.own, levels(node) > 0
    encoded = own.last_encoded
    if quantised:
        indices = None
        fitting = (encoded is not None and encoded.codec is Codec.INT8
                   and encoded.scale == step(node, r) and encoded.size == node.layout.size)
    else:
        indices = coordinates(node, r)
        fitting = (encoded is not None and encoded.codec is Codec.SPARSE
                   and encoded.indices is not None and np.array_equal(encoded.indices, indices))
    if own.round != r or encoded is None or not fitting:
        log.warning("round %d: no %s delta to send", r,
                    "quantised" if quantised else "random-k")
        return None
    if quantised and not narrowed_levels_fit(node, aggregator, r, encoded.values):
        log.warning("round %d: %s narrowed the round after our delta was published; its "
                    "levels do not fit, so nothing is sent to it", r, aggregator)
        return None
    if r == 0 and not (own.origin and own.base_round == -1):  # resumed: x̂ is not x₀
        log.warning("round 0: this node's estimate did not start as the initial model; no "
                    "delta from it to send")
        return None
    if vector is estimate:
        return (encoded.values.astype(np.int16) if quantised else encoded.values), True
    assert own.last_delta is not None
    delta = np.asarray(vector, np.float32) - (own.vector - own.last_delta)  # on the held x̂
    if quantised:
        rng = np.random.default_rng()
        return quantise_levels(delta, node.config.secagg.delta_clip, levels(node, r), rng,
                               sum_levels(node, aggregator, r)), True
    assert indices is not None
    return delta[indices.astype(np.int64)], True


def eligible(node: Node, r: int,
             inputs: dict[str, MaskedInput]) -> dict[str, MaskedInput] | None:
    """The inputs aggregator ``node`` may sum in round ``r``: all in a full round; in a sparse
    round those of its base members (None: no base to add deltas to, refuse the round)."""
    if not sparse_for(node, node.peer_id, r):
        return inputs
    if r == 0 and node.secagg.running is None:
        origin_base(node)
    if node.secagg.running is None:
        return None
    return {p: m for p, m in inputs.items() if p in node.secagg.base}


def origin(node: Node, r: int) -> bytes:
    """The digest of the initial model a delta input of round ``r`` is taken from: round 0's
    deltas are from the federation's initial model (:func:`origin_base`), which an input names
    as contributions on base round -1 do (``wire_contribution.origin_digest``); empty in any
    other round, and for a node whose x̂ did not start as that model (resumed)."""
    return node.estimates.origin if r == 0 and sparse_round(node, r) else b""


def origin_base(node: Node) -> None:
    """The running sum an aggregator starts round 0 from: its neighbours' x̂ before any round
    is the initial model, the same for the whole federation (its seed decides it), so the sum
    is ``Σ_j w_ij x₀`` over them all, exact with no full round; an input whose origin differs is
    refused (``secure_round.accept_masked``). No base for a node that did not start from it."""
    initial, state = node.estimates.initial, node.secagg
    if initial is None or not node.estimates.origin or node.topology is None:
        return
    members = node.topology.get(node.peer_id, frozenset())
    total = sum(metropolis(node, node.peer_id, j) for j in members)
    state.running_weight = float(total)
    state.running = (np.asarray(initial, np.float64) * state.running_weight).astype(np.float32)
    state.base = frozenset(members)


def mix(node: Node, r: int, half_step: np.ndarray,
        result: tuple[np.ndarray, float, list[str]], record: dict[str, Any],
        missing: list[str]) -> list[str]:
    """Take a compressed round's unmasked sum into the running sum and make CHOCO's consensus
    step; returns ``missing``. A sum past the norm bound is not mixed in, and the running sum
    is dropped (sparse rounds are refused until the next full round re-bases)."""
    total, weights, survivors = result
    state = node.secagg
    sparse = sparse_for(node, node.peer_id, r)
    if sparse and levels(node):
        assert state.running is not None
        running, weight = (state.running + total).astype(np.float32), state.running_weight
    elif sparse:
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
    elif levels(node, r) == CONSENSUS_LEVELS:
        record["narrowed"] = state.narrowed.get(r, 0)
    kind = node.config.compression.kind.replace("randk", "random-k") if sparse else "full"
    if sparse and r >= node.config.rounds:
        kind = "consensus deltas"
    record["secure_aggregation"] = f"{len(survivors)} contributors ({kind})"
    # γ in full training rounds too: with γ = 1 there, x̂ (= x½) would lag the mixed x by the
    # whole disagreement, and the sparse rounds after would push x past the mean (measured:
    # diverges); a full consensus round (x̂ = x½) takes the exact step, γ = 1, and a consensus
    # round with consensus deltas the neighbourhood's mean of public estimates (consensus_mix;
    # the same step where x̂ = x½; where another aggregator waived the round, x̂ is x½'s delta)
    if r >= node.config.rounds and (sparse or (levels(node)
                                               and node.config.secagg.consensus_deltas)):
        node.model = consensus_mix(node.own.vector, running, weight)
    else:
        gamma = 1.0 if r >= node.config.rounds else node.protocol.gamma
        node.model = choco_mix(half_step, node.own.vector, running, weight, gamma)
    node.disagreement = relative_disagreement(node.model, [running / weight])
    return missing
