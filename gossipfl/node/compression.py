"""The node's side of delta compression (issue 10): ``[compression]`` to a compressor for
:meth:`gossipfl.node.estimates.OwnEstimate.publish`, and between the compressors' :class:`Encoded`
and the wire's :class:`Packed`. The maths is in :mod:`gossipfl.aggregation.compress`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np

from gossipfl.aggregation.compress import (
    Codec,
    CompressionKind,
    Encoded,
    compress,
    decode,
    shared_seed,
)
from gossipfl.aggregation.momentum import mixing_step_limit
from gossipfl.config import CompressionConfig, SecAggConfig, TrainConfig
from gossipfl.gossip.wire import PACKED_CODECS, Contribution, Packed
from gossipfl.node.layout import Layout, LayoutError

if TYPE_CHECKING:
    from gossipfl.node.state import Node


def gamma_warning(kind: str, gamma: float) -> str | None:
    """What to warn of when a lossy compression runs with CHOCO's consensus step at 1: its
    rounding or dropped coordinates then go into the neighbours' copies of x̂ undamped, and the
    federation can diverge (``peer_task_int4.toml`` did so in some runs at γ = 1). None when
    there is nothing to say (no compression, fp16's rounding, or γ below 1).

    >>> gamma_warning("int4", 1.0) is not None, gamma_warning("int4", 0.7)
    (True, None)
    >>> gamma_warning("none", 1.0), gamma_warning("fp16", 1.0)
    (None, None)
    """
    if CompressionKind(kind) in (CompressionKind.NONE, CompressionKind.FP16) or gamma < 1.0:
        return None
    return (f"compression {kind} with protocol.gamma = {gamma:g}: CHOCO with a lossy "
            f"compressor needs a consensus step below 1 (0.7 for int4, 0.3 for random-k at "
            f"0.25), else the federation may diverge")


class Graph(Protocol):
    """A topology's kind and degree (a node's :class:`~gossipfl.config.TopologyConfig` or a
    scenario's)."""

    @property
    def kind(self) -> str: ...

    @property
    def degree(self) -> int: ...


def momentum_warning(train: TrainConfig, gamma: float, topology: Graph) -> str | None:
    """What to warn of when outer momentum with CHOCO's step ``gamma`` can let the nodes'
    disagreement grow on the mixing's most negative mode (aggregation/momentum.py): when
    ``gamma · 2d / (d + 1)`` (d: the graph's largest degree, 2 for a ring; only regular graphs
    and rings are judged) reaches :func:`~gossipfl.aggregation.momentum.mixing_step_limit`.

    >>> from gossipfl.config import TopologyConfig as T, TrainConfig as R
    >>> nesterov = R(outer_momentum=0.9, outer_nesterov=True)
    >>> momentum_warning(nesterov, 1.0, T()) is not None, momentum_warning(nesterov, 0.7, T())
    (True, None)
    >>> momentum_warning(R(outer_momentum=0.9), 1.0, T()), momentum_warning(R(), 1.0, T())
    (None, None)
    """
    degree = {"regular": topology.degree, "ring": 2}.get(topology.kind)
    if not train.outer_momentum or degree is None:
        return None
    reach = gamma * 2 * degree / (degree + 1)
    limit = mixing_step_limit(train.outer_momentum, nesterov=train.outer_nesterov)
    if reach < limit:
        return None
    return (f"train.outer_momentum = {train.outer_momentum:g}"
            f"{' (Nesterov)' if train.outer_nesterov else ''} with protocol.gamma = {gamma:g} on "
            f"a graph of degree {degree}: the mixing's steps reach {reach:.2f}, past the "
            f"{limit:.2f} momentum keeps stable, and the nodes' disagreement may grow on some "
            f"graphs; gamma below {limit * (degree + 1) / (2 * degree):.2f} is safe")


def mixing_warnings(kind: str, gamma: float, train: TrainConfig,
                    topology: Graph) -> list[str]:
    """What a node (in its log) and ``gossipfl run`` (on stderr) warn of before a run:
    :func:`gamma_warning` and :func:`momentum_warning`."""
    return [w for w in (gamma_warning(kind, gamma), momentum_warning(train, gamma, topology))
            if w is not None]


def compressor(config: CompressionConfig, federation: str, sender: str, round_: int,
               secagg: SecAggConfig | None = None, training_rounds: int = 0, *,
               waived: bool = False,
               bound: int | None = None) -> Callable[[np.ndarray], Encoded | None] | None:
    """What compresses this round's delta (None: no compression). Its randomness (int8 rounding,
    random-k's index set) is drawn from a seed of (federation, sender, round). With ``secagg``
    enabled (:mod:`gossipfl.node.secure_sparse`): random-k on the coordinate set the whole
    federation shares for the round (:func:`gossipfl.crypto.secagg_sparse.round_coordinates`),
    or int8/int4 levels at the public step ``secagg.delta_clip / levels``
    (:func:`gossipfl.crypto.secagg_sparse.public_quantised`; the levels of the round:
    :func:`gossipfl.crypto.secagg_sparse.round_levels`), so masked deltas sum; none in its full
    rounds (:func:`full_round`), which send the whole estimate anyway, unless an aggregator of
    ours ``waived`` a :func:`waivable` one (then the others take ``w · x̂`` after this delta);
    ``bound``: int8/int4 levels held to ±bound (an aggregator of ours narrowed the round)."""
    kind = CompressionKind(config.kind)
    if kind is CompressionKind.NONE:
        return None
    rng = np.random.default_rng(shared_seed(federation, sender, round_, kind.value))
    if secagg is not None and secagg.enabled and kind is not CompressionKind.NONE:
        if full_round(secagg, training_rounds, round_, kind) and not (
                waived and waivable(secagg, training_rounds, round_, kind)):
            return None
        # loaded only with secure aggregation on (a plain node loads no crypto.secagg)
        from gossipfl.crypto.secagg_sparse import (
            public_quantised,
            round_coordinates,
            round_levels,
            sparse_delta,
        )
        if kind is CompressionKind.RANDK:
            return lambda q: sparse_delta(q, round_coordinates(federation, round_, q.size,
                                                               config.ratio))
        # int8, int4 (config refuses the others); finer in consensus rounds
        levels = round_levels(kind.value, training_rounds, round_, secagg.delta_levels,
                              secagg.coarse_consensus)
        clip = secagg.delta_clip
        return lambda q: public_quantised(q, clip, levels, rng, bound)
    return lambda q: compress(kind, q, config.ratio, rng)


def full_round(secagg: SecAggConfig, training_rounds: int, round_: int,
               kind: CompressionKind = CompressionKind.RANDK) -> bool:
    """Compressed secure aggregation: whether round ``round_`` sends full estimates (else
    deltas): every ``secagg.full_every``-th round, but round 0 with ``secagg.first_deltas``
    (every member's x̂ starts as the federation's initial model, so an aggregator's running sum
    starts exact and round 0's deltas are from that model:
    :func:`gossipfl.node.secure_sparse.origin_base`); and from round ``training_rounds`` on (the
    consensus rounds) every round with random-k (with no training left, masked full sums reach
    the consensus tolerance in a few rounds where random-k deltas need the round limit), and
    with int8/int4 unless ``secagg.consensus_deltas`` (then deltas of
    :data:`gossipfl.crypto.secagg_sparse.CONSENSUS_LEVELS` levels, the first consensus round
    too: a running sum is exact after any number of delta rounds, and a full round there cost
    bytes, and in two runs of six more rounds; see the README).

    >>> from gossipfl.config import SecAggConfig
    >>> on = SecAggConfig(full_every=10, consensus_deltas=True, first_deltas=True)
    >>> [full_round(on, 30, r, CompressionKind.INT4) for r in (0, 9, 10, 29, 30, 31, 40)]
    [False, False, True, False, False, False, True]
    >>> full_round(on, 30, 0), full_round(SecAggConfig(full_every=10), 30, 0)
    (False, True)
    >>> full_round(on, 31, 31, CompressionKind.INT4), full_round(on, 31, 31), full_round(
    ...     SecAggConfig(full_every=10), 31, 31, CompressionKind.INT4)
    (False, True, True)
    """
    return (_scheduled(secagg, training_rounds, round_, kind)
            or _by_rule(secagg, training_rounds, round_, kind))


def _deltas_in_consensus(secagg: SecAggConfig, kind: CompressionKind) -> bool:
    return kind in (CompressionKind.INT8, CompressionKind.INT4) and secagg.consensus_deltas


def _scheduled(secagg: SecAggConfig, training_rounds: int, round_: int,
               kind: CompressionKind) -> bool:
    """Full by ``full_every``: its multiples, but round 0 with first-round deltas and the
    first consensus round with consensus deltas."""
    return round_ % secagg.full_every == 0 and not (
        _deltas_in_consensus(secagg, kind) and round_ == training_rounds > 0) and not (
        round_ == 0 and secagg.first_deltas)


def _by_rule(secagg: SecAggConfig, training_rounds: int, round_: int,
             kind: CompressionKind) -> bool:
    """Full as a consensus round whose kind sends no deltas there."""
    return 0 < training_rounds <= round_ and not _deltas_in_consensus(secagg, kind)


def waivable(secagg: SecAggConfig, training_rounds: int, round_: int,
             kind: CompressionKind = CompressionKind.RANDK) -> bool:
    """Whether round ``round_`` is full by ``secagg.full_every`` alone (a later multiple, not
    full by the consensus rounds' rules): an aggregator whose running sum is exact may waive it
    (:mod:`gossipfl.node.secure_sparse`), and its members then send it deltas as in any other
    round.

    >>> from gossipfl.config import SecAggConfig
    >>> on = SecAggConfig(full_every=10, consensus_deltas=True)
    >>> [waivable(on, 30, r, CompressionKind.INT4) for r in (0, 10, 20, 30, 40)]
    [False, True, True, False, True]
    >>> waivable(on, 30, 40), waivable(SecAggConfig(full_every=10), 30, 20, CompressionKind.INT4)
    (False, True)
    """
    return (round_ > 0 and _scheduled(secagg, training_rounds, round_, kind)
            and not _by_rule(secagg, training_rounds, round_, kind))


def round_compressor(node: Node, round_: int) -> Callable[[np.ndarray], Encoded | None] | None:
    """What compresses the delta ``node`` publishes for round ``round_`` (:func:`compressor`):
    a delta in a full round one of its aggregators waived, levels held to the fewest any of
    them narrowed the round to (:mod:`gossipfl.node.secure_sparse`: ``narrowing``). The
    final delta (``done``) too: the last consensus round's move, within the consensus
    tolerance of the model; compressed, the neighbours' copy of the final model is off by its
    rounding alone, where a float32 delta cost each neighbour 36 KB on ``peer_task`` (1.0 of
    int4's 9.5 MB)."""
    state, config = node.secagg, node.config
    bound = min((n for k, n in state.narrowings.items() if k[1] == round_), default=None)
    return compressor(config.compression, config.federation, node.peer_id, round_,
                      config.secagg, config.rounds,
                      waived=any(k[1] == round_ for k in state.waivers), bound=bound)


def to_packed(encoded: Encoded) -> Packed:
    dtype = PACKED_CODECS[encoded.codec.value]
    if encoded.scales is not None:  # int4: the block scales take the fifth slot
        indices = encoded.scales.astype("<f4").tobytes()
    else:
        indices = b"" if encoded.indices is None else encoded.indices.astype("<u4").tobytes()
    return Packed(encoded.codec.value, encoded.size, float(encoded.scale),
                  np.ascontiguousarray(encoded.values, dtype).tobytes(), indices)


def from_packed(packed: Packed) -> np.ndarray:
    """The float32 delta a (wire-validated) :class:`Packed` stands for."""
    codec = Codec(packed.codec)
    indices = packed.indices_array() if codec is Codec.SPARSE else None
    scales = packed.scales_array() if codec is Codec.INT4 else None
    return decode(Encoded(codec, packed.size, packed.values_array(), indices, packed.scale,
                          scales))


def vector_of(layout: Layout, message: Contribution) -> np.ndarray:
    """The flat array a contribution carries, compressed or not; LayoutError if it does not
    fit the model."""
    if message.packed is None:
        return layout.from_tensors(message.tensors)
    if message.packed.size != layout.size:
        raise LayoutError(f"packed delta of {message.packed.size} parameters, the model has "
                          f"{layout.size}")
    return from_packed(message.packed)

