"""Secure aggregation, the contributor's side: what node j sends aggregator k each round.

For each neighbour k (as aggregator of its own neighbourhood U_k) the contributor takes its
public estimate x̂_j, or what its role puts in its place (a Byzantine member's crafted vector,
:meth:`gossipfl.adversary.role.Role.masked_estimate`), range-checks it (an honest node only:
:func:`check_input`), quantises ``w_kj · x̂_j`` into Z_{2^32} inside [-clip, clip], masks it and
Shamir-shares its self seed among U_k (:func:`masked_input`). The aggregator's side, and the
protocol as a whole, are in :mod:`gossipfl.node.secure_round`.

The range check (issue 9). Masking hides each input, so nothing downstream can tell a sound
input from a broken one; the aggregator can only bound the sum. An honest contributor therefore
checks what it is about to quantise, before masking:

- not finite (NaN or inf): nothing can be quantised; it does not contribute that round (its
  aggregators see a dropout), logged as an error.
- ``‖x̂_j‖`` beyond the norm bound of its own model (``robust.norm_ratio``, as a receiver would
  judge it: :func:`gossipfl.aggregation.bounds.norm_bound`): an estimate that far off its own
  model is broken, and mixed in it would move every neighbour by ``w`` times it; it does not
  contribute that round either (fail closed: a dropout costs a round's mixing, a wrong input
  costs its neighbours' models), logged as an error.
- coordinates of ``w_kj · x̂_j`` outside [-clip, clip]: the quantiser sets them to the edge
  (it clips; it never wraps, see :func:`gossipfl.crypto.secagg.quantise`), so the sum is
  biased but valid; it is sent clipped and logged as a warning naming how many coordinates.

A Byzantine member skips all of this (its role's ``checks_inputs`` is false); what then stands
is the quantiser's clip (each coordinate of its input within ±clip, whatever it crafts) and the
aggregator's check of the sum (:func:`gossipfl.node.round.secure_exchange`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
from dataclasses import dataclass

import numpy as np
import trio

from gossipfl.aggregation.bounds import norm_bound
from gossipfl.crypto import secagg
from gossipfl.crypto.pair_keys import PairKeys
from gossipfl.crypto.secagg_sparse import mask_modulus, pack_words, to_ring
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import MaskedInput
from gossipfl.node import secure_early, secure_sparse, streams
from gossipfl.node.secagg_state import compute
from gossipfl.node.secure_talk import Answerer, UnmaskRefused, send_input_and_answer
from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.secagg")

PROTO_MASKED = "/gossipfl/secagg/input/1.0.0"


def neighbourhood(node: Node, aggregator: str) -> frozenset[str]:
    assert node.topology is not None
    return node.topology.get(aggregator, frozenset())


def weight(node: Node, aggregator: str, contributor: str) -> float:
    """Metropolis–Hastings weight from the topology's degrees, known to both ends in advance
    (:func:`gossipfl.node.secure_sparse.metropolis`)."""
    return float(secure_sparse.metropolis(node, aggregator, contributor))


def x25519_public(node: Node, peer: str) -> bytes:
    return node.security.certificate_of(peer).x25519_public


def my_private(node: Node) -> bytes:
    return bytes(node.security.x25519_private)


def pair_keys(node: Node) -> PairKeys:
    """This node's X25519 agreements with the other members, each made once."""
    if node.secagg.keys is None:
        node.secagg.keys = PairKeys(my_private(node))
    return node.secagg.keys


# -- the range check --------------------------------------------------------------------------


class InputCheck(enum.Enum):
    """What an honest contributor's range check found (the most severe finding)."""

    OK = "ok"
    CLIPPED = "clipped"  # coordinates of w·x̂ past ±clip: quantised at the edge, sent
    OVER_BOUND = "over_bound"  # ‖x̂‖ beyond the norm bound of its own model: not sent
    NOT_FINITE = "not_finite"  # NaN or inf: not sent

    @property
    def sends(self) -> bool:
        return self in (InputCheck.OK, InputCheck.CLIPPED)


@dataclass(frozen=True)
class RangeCheck:
    verdict: InputCheck
    clipped: int  # coordinates of w·x̂ outside [-clip, clip]
    norm: float  # ‖x̂‖ (inf when not finite)
    bound: float  # the norm bound it was held to (inf: off)


def check_input(estimate: np.ndarray, w: float, clip: float, bound: float) -> RangeCheck:
    """Range-check the estimate ``x̂`` a contributor is about to quantise as ``w · x̂``.

    >>> check_input(np.array([1.0, -2.0], np.float32), 0.5, 8.0, 10.0).verdict
    <InputCheck.OK: 'ok'>
    >>> check_input(np.array([20.0, -1.0], np.float32), 0.5, 8.0, 100.0).clipped
    1
    >>> check_input(np.array([30.0, 40.0], np.float32), 0.5, 8.0, 10.0).verdict
    <InputCheck.OVER_BOUND: 'over_bound'>
    >>> check_input(np.array([np.nan], np.float32), 0.5, 8.0, 10.0).verdict
    <InputCheck.NOT_FINITE: 'not_finite'>
    """
    values = np.asarray(estimate, np.float64)
    if not np.isfinite(values).all():
        return RangeCheck(InputCheck.NOT_FINITE, 0, float("inf"), bound)
    norm = float(np.linalg.norm(values))
    clipped = int(np.count_nonzero(np.abs(w * values) > clip))
    if norm > bound:
        verdict = InputCheck.OVER_BOUND
    else:
        verdict = InputCheck.CLIPPED if clipped else InputCheck.OK
    return RangeCheck(verdict, clipped, norm, bound)


def _report(node: Node, r: int, checks: dict[str, RangeCheck]) -> None:
    """One log line per round for what the range check found (nothing when all was well)."""
    unsent = {p: c for p, c in checks.items() if not c.verdict.sends}
    if unsent:
        first = next(iter(unsent.values()))
        log.error("round %d: own estimate %s (norm %.3g, bound %.3g): not contributed to %s "
                  "(they see a dropout)", r, first.verdict.value, first.norm, first.bound,
                  ", ".join(sorted(unsent)))
    clipped = {p: c.clipped for p, c in checks.items() if c.verdict is InputCheck.CLIPPED}
    if clipped:
        log.warning("round %d: coordinates of w·x̂ past the quantiser's range ±%g, sent at the "
                    "edge: %s", r, node.config.secagg.clip,
                    ", ".join(f"{p}: {n}" for p, n in sorted(clipped.items())))


# -- building and sending ---------------------------------------------------------------------


def masked_input(node: Node, aggregator: str, r: int, estimate: np.ndarray,
                 done: bool, sparse: bool = False) -> MaskedInput:
    """Quantise, mask and share: this node's input to ``aggregator``'s sum for round ``r``
    (``sparse``: ``estimate`` is the round's random-k delta, the masks expanded to its length,
    or its int8/int4 levels, masked as ``c_ij · L`` in words of the round's ring:
    :mod:`gossipfl.node.secure_sparse`)."""
    config = node.config.secagg
    members = neighbourhood(node, aggregator)
    context = secagg.seed_context(node.config.federation, aggregator, r)
    me = node.peer_id
    w = weight(node, aggregator, me)
    if sparse and secure_sparse.levels(node):
        counts, _, bits = secure_sparse.ring(node, aggregator, r)
        q = to_ring(counts[me] * np.asarray(estimate, np.int64), bits)
    else:
        q = secagg.quantise(w * estimate, config.clip, config.scale)
        bits = 8 * q.dtype.itemsize
    keys = pair_keys(node)
    public_of = {other: x25519_public(node, other) for other in members if other != me}
    pairs = {other: keys.agree_seed(public, context=context)
             for other, public in public_of.items()}
    if config.presign:  # seeds dealt a round ahead (gossipfl.node.secure_early)
        seed, predealt = secure_early.seeds_for(node, keys, aggregator, r, members, public_of)
    else:
        seed, predealt = secure_early.split_and_seal(
            node, keys, aggregator, r, members, secagg.fresh_self_seed(), public_of), False
    y = secagg.mask_input(q, my_id=me, self_seed=seed.seed, pair_seeds=pairs,
                          modulus=mask_modulus(bits))
    node.secagg.my_shares[(aggregator, r)] = seed.own_share
    following = node.secagg.dealing.get((aggregator, r + 1))
    data = pack_words(y, bits)
    # the report's compression ratios: these words against a float32 vector of the model
    node.own.note_sent(node.layout.size, data.nbytes)
    return MaskedInput(
        federation=node.config.federation, round=r, sender=me, aggregator=aggregator, weight=w,
        disagreement=float(min(node.disagreement, 1e9)), done=done,
        # the masked words' own memory (a fresh array no one else holds), not two copies of it;
        # 6-bit words packed four to three bytes
        data=memoryview(data).toreadonly(),
        shares=seed.sealed,
        depth=node.settle.depth, horizon=node.settle.horizon, waiting=node.settle.waiting,
        sparse=sparse, width=bits, origin=secure_sparse.origin(node, r) if sparse else b"",
        next_shares=following.sealed if config.presign and following is not None else (),
        predealt=predealt,
        early=secure_early.early_shares(node, keys, aggregator, r, members, seed.own_share,
                                        public_of) if predealt else (),
        presign=node.secagg.presign_out.pop((aggregator, r), b""),
    )


def finish_input(node: Node, message: MaskedInput) -> MaskedInput:
    """``message`` with what it may carry by the time it is sent (its stream's last reply
    read): the early shares and the presign the aggregator's light request of the round before
    brought, when it came after the input was built (:mod:`gossipfl.node.secure_early`); and
    without its self seed's shares when the seed is the one dealt with our input of the round
    before and the aggregator took that input (it holds them: ``accept_masked`` puts them
    back), 4 of a degree-4 neighbourhood's 13 sealed shares and peer ids an input carries."""
    aggregator, r = message.aggregator, message.round
    if message.predealt and message.shares and (aggregator, r - 1) in node.secagg.taken:
        message = dataclasses.replace(message, shares=())
    presign = message.presign or node.secagg.presign_out.pop((aggregator, r), b"")
    early = message.early
    if message.predealt and not early and (aggregator, r) in node.secagg.my_shares:
        members = neighbourhood(node, aggregator)
        public_of = {p: x25519_public(node, p) for p in members if p != node.peer_id}
        early = secure_early.early_shares(node, pair_keys(node), aggregator, r, members,
                                          node.secagg.my_shares[(aggregator, r)], public_of)
    if presign == message.presign and early == message.early:
        return message
    return dataclasses.replace(message, presign=presign, early=early)


async def send_masked_inputs(node: Node, r: int, *, done: bool,
                             answer: Answerer | None = None) -> dict[str, str]:
    """Send this round's masked input to every neighbour (as aggregator), concurrently; an
    aggregator that answers it with its round's unmask request gets ``answer``'s reply on the
    same stream (:mod:`gossipfl.node.secure_talk`; None: refused).

    A round's inputs (``done`` False, the node running) return once each frame is written (or
    its send has failed): the replies (an ack, or the unmask request answered there) are read
    in the node's nursery while the round goes on to aggregate its own neighbourhood, as
    contributions' acks are (:mod:`gossipfl.node.exchange`); the next input to an aggregator
    waits for the last one's reply (its stream's lock). The final inputs (``done``) wait for
    every ack.

    Returns what the range check found, per aggregator where it found something (its
    :class:`InputCheck` value); empty when every input went as computed."""
    estimate = node.own.vector
    checks: dict[str, RangeCheck] = {}
    targets = [peer for peer in node.neighbours
               # an aggregator short of contributors will refuse: sending only costs bandwidth
               if len(neighbourhood(node, peer)) >= node.config.secagg.min_contributors]
    if done or node.background is None:
        async with trio.open_nursery() as nursery:
            for peer in targets:
                nursery.start_soon(_send_masked, node, peer, r, estimate, done, checks,
                                   answer)
    else:
        written = [trio.Event() for _ in targets]
        for peer, event in zip(targets, written, strict=True):
            node.background.start_soon(_send_masked, node, peer, r, estimate, done, checks,
                                       answer, event)
        for event in written:
            await event.wait()
    _report(node, r, checks)
    return {p: c.verdict.value for p, c in sorted(checks.items())
            if c.verdict is not InputCheck.OK}


async def _send_masked(node: Node, peer: str, r: int, estimate: np.ndarray, done: bool,
                       checks: dict[str, RangeCheck], answer: Answerer | None,
                       written: trio.Event | None = None) -> None:
    """Check, build and send one masked input, then read its ack or answer the unmask request
    in its place (``written`` is set once its frame is written, or once it is known that none
    will be)."""
    try:
        await _send_masked_to(node, peer, r, estimate, done, checks, answer, written)
    finally:
        if written is not None:
            written.set()


async def _send_masked_to(node: Node, peer: str, r: int, estimate: np.ndarray, done: bool,
                          checks: dict[str, RangeCheck], answer: Answerer | None,
                          written: trio.Event | None) -> None:
    state = node.neighbours.get(peer)
    # a frozen or overloaded neighbour may hold the stream open without answering: never let
    # one send hold the round longer than the round itself may last
    limit = min(node.protocol.request_timeout, node.protocol.round_timeout)
    with trio.move_on_after(limit) as scope:
        # an adversary's role may mask something else (gossipfl.adversary); the honest one
        # masks its estimate, after the range check
        vector = await node.role.masked_estimate(node, peer, r, estimate)
        if node.role.checks_inputs:
            check = check_input(vector, weight(node, peer, node.peer_id),
                                node.config.secagg.clip,
                                norm_bound(node.model, node.config.robust.norm_ratio))
            checks[peer] = check
            if not check.verdict.sends:
                return
        chosen = secure_sparse.input_for(node, peer, r, vector, estimate)  # random-k: the delta
        if chosen is None:
            return
        try:
            build = functools.partial(masked_input, sparse=True) if chosen[1] else masked_input
            message = await compute(node, int(np.size(chosen[0])), build, node, peer, r,
                                    chosen[0], done)
            ack = await streams.request(node, peer, PROTO_MASKED, functools.partial(
                send_input_and_answer, node, message=message, peer=peer, r=r, answer=answer,
                written=written, finish=functools.partial(finish_input, node)))
        except UnmaskRefused:
            return  # judged and logged by the answerer
        except Exception as error:
            if state is not None:
                state.unreachable_round = r
            log.warning("could not send masked round %d to %s: %s: %s", r, peer,
                        type(error).__name__, error)
            node.notify()  # a round waiting for that neighbour's input stops waiting
            return
        node.role.acked(peer, r, ack.status == AckCode.OK)
        if ack.status != AckCode.OK:
            log.warning("%s refused our masked round %d: %s", peer, r, ack.reason)
    if scope.cancelled_caught:
        node.timeouts += 1
        log.warning("sending masked round %d to %s timed out", r, peer)
