"""The round's exchange with the neighbours, without secure aggregation: sending this round's
contribution to each live neighbour (step 4), waiting for theirs (step 5: synchronous, or async
with or without a bounded lead), and counting who missed the round (liveness).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import trio

from gossipfl.gossip.codes import RUNNING, AckCode, AckReason, NodeStatus
from gossipfl.gossip.membership import SILENT_INTERVALS
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Ack, Contribution
from gossipfl.node.compression import to_packed
from gossipfl.node.estimates import OwnEstimate
from gossipfl.node.links import drop_neighbour
from gossipfl.node.state import NeighbourState, Node
from gossipfl.node.streams import close_streams

log = logging.getLogger("gossipfl.round")


def finite(value: float, default: float | None = None) -> float | None:
    return value if math.isfinite(value) else default


def send_targets(node: Node) -> list[str]:
    """Whom a round's contribution goes to: the neighbours not done. Also a done one still
    heartbeating (it lingers, linger.py; it is not waited for either way) after this node
    reopened, since a model that moved may reopen it too, and, whether or not this node ever
    finished, one whose link holds none of our estimates yet (linked again since it finished:
    a member back from a cut, whose final estimate it sent us; one round lets its reopening
    rule see that our model is another, else it would never hear it, and we would mix its
    frozen estimate to our round limit). A neighbour linked lately counts as heard: a member
    back from a cut is linked again before its first heartbeat arrives, and rounds can take
    no time at all, so waiting for that heartbeat could leave two reopened nodes each mixing
    with the other's final estimate to their round limit."""
    now, interval = trio.current_time(), node.protocol.heartbeat_interval

    def lingers(peer: str) -> bool:
        heard = max(node.heard_at.get(peer, -math.inf), node.neighbours[peer].linked_at)
        return heard > -math.inf and not gone_silent(heard, now, interval)

    def told(peer: str) -> bool:  # why a lingering done neighbour is sent our round
        return bool(node.settle.reopened) or node.neighbours[peer].peer_holds < 0

    return [p for p in node.neighbours
            if not (p in node.estimates.peers and node.estimates.peers[p].done)
            or (told(p) and lingers(p))]


async def send_to_neighbours(node: Node, r: int, *, done: bool) -> None:
    """Send round ``r`` to every target (:func:`send_targets`). A round's contribution
    (``done`` False, the node running) returns once each frame is written (or its send has
    failed): the acks are read in the node's nursery while the round goes on to wait for the
    neighbours' contributions, so a round does not also wait for each neighbour to open, check
    and apply ours before it starts waiting for theirs. The next send to a neighbour waits for
    the last one's ack (``NeighbourState.send_lock``): its delta is taken against what that
    ack said the neighbour holds, and a neighbour that stopped answering holds the next round
    (up to the send's limit) while a stream opened to it meanwhile, or the next send's, finds
    a relayed link that forwards nothing (``PeerNet._new_stream``). The final send (``done``)
    waits for every ack."""
    targets = send_targets(node)
    if done or node.background is None:
        async with trio.open_nursery() as nursery:
            for peer in targets:
                nursery.start_soon(send_contribution, node, peer, r, done)
        return
    written = [trio.Event() for _ in targets]
    for peer, event in zip(targets, written, strict=True):
        node.background.start_soon(send_contribution, node, peer, r, done, event)
    for event in written:
        await event.wait()


async def send_contribution(node: Node, peer: str, r: int, done: bool,
                            written: trio.Event | None = None) -> None:
    """Send our round-r estimate (delta or full) to one neighbour and read its ack
    (``written`` is set once the frame is written, or the send failed).

    Uses the neighbour's open stream; a broken stream (the peer restarted, or closed it as
    idle) is replaced by a new one once before the neighbour counts as unreachable.
    """
    try:
        state = node.neighbours.get(peer)
        if state is None:  # dropped since the round chose its targets
            return
        state.sent_round = max(state.sent_round, r)
        # round r's estimate and fields, taken now: the round waits until the frame is written,
        # but a resend (a broken stream, NEED_FULL) may come after it went on
        snapshot = Snapshot.take(node)
        async with state.send_lock:
            if not done and state.peer_holds >= r:  # a hand-over sent it meanwhile
                return
            await _send(node, state, peer, r, done, snapshot, written)
    finally:
        if written is not None:
            written.set()


def needs_hand_over(node: Node, peer: str) -> bool:
    """Whether a neighbour was never sent this node's current public estimate: it was linked
    after this round's send (a member that finished joining late, a link made again after a
    cut). :func:`hand_over` sends it at once; else each of the two could wait out the round
    timeout for the other: a neighbour that finished round r and sent round r + 1 to the others
    waits for our round r + 1, while we wait for its round r, which it will never send."""
    state = node.neighbours.get(peer)
    return (state is not None and node.status in (NodeStatus.TRAINING, NodeStatus.CONSENSUS)
            and not node.config.secagg.enabled and node.own.round >= 0
            and state.sent_round < node.own.round and state.peer_holds < node.own.round)


async def hand_over(node: Node, peer: str) -> None:
    """Send a neighbour linked after this round's send our current estimate (its round), as
    the round would have (:func:`needs_hand_over` says when); the round's own send, should
    it come after, finds the neighbour holding it and sends nothing."""
    if needs_hand_over(node, peer):
        log.info("sending round %d to %s, linked after that round's send", node.own.round, peer)
        await send_contribution(node, peer, node.own.round, done=False)


@dataclass(frozen=True)
class Snapshot:
    """What a send of round r carries, as of round r: the public estimate (its vector, last
    delta and base; a publish replaces these arrays, never writes to them) and the fields
    the termination rule reads."""

    own: OwnEstimate
    fields: dict[str, Any]

    @classmethod
    def take(cls, node: Node) -> Snapshot:
        return cls(dataclasses.replace(node.own), dict(
            degree=len(node.neighbours), disagreement=finite(node.disagreement, default=1e9),
            training=node.status == NodeStatus.TRAINING, depth=node.settle.depth,
            horizon=node.settle.horizon, waiting=node.settle.waiting,
            examples=node.reported_examples))


async def _send(node: Node, state: NeighbourState, peer: str, r: int, done: bool,
                snapshot: Snapshot, written: trio.Event | None) -> None:
    # a frozen or overloaded neighbour may hold the stream open without answering: never let
    # one send hold the round longer than the round itself may last
    limit = min(node.protocol.request_timeout, node.protocol.round_timeout)
    with trio.move_on_after(limit) as scope:
        for attempt in (1, 2):
            try:
                ack = await _exchange(node, peer, r, done, snapshot, written)
                break
            except Exception as error:
                if state.channel is not None:
                    await state.channel.reset()
                    state.channel = None
                if attempt == 2:
                    state.unreachable_round = r
                    log.warning("could not send round %d to %s: %s: %s", r, peer,
                                type(error).__name__, error)
                    node.notify()
                    return
        node.role.acked(peer, r, ack.status == AckCode.OK)
        if ack.status == AckCode.OK:
            state.peer_holds = r
        elif AckReason.of(ack.reason) is AckReason.NOT_NEIGHBOUR:
            # it dropped us (we were cut off or paused): stop waiting for it; the re-link loop
            # asks it back
            log.warning("%s no longer counts us as a neighbour (round %d); re-linking", peer, r)
            await drop_neighbour(node, peer, r, "it dropped this node")
            return
        else:
            log.warning("%s did not take our round %d: %s %s", peer, r, ack.status, ack.reason)
    if scope.cancelled_caught:
        node.timeouts += 1
        state.unreachable_round = r
        if state.channel is not None:
            await state.channel.reset()
            state.channel = None
        log.warning("sending round %d to %s timed out", r, peer)
        node.notify()


async def _exchange(node: Node, peer: str, r: int, done: bool, snapshot: Snapshot,
                    written: trio.Event | None = None) -> Ack:
    assert node.net is not None
    state = node.neighbours[peer]
    own = snapshot.own

    def frame(kind: str, base: int, array: np.ndarray) -> Contribution:
        # the delta we published goes out compressed as published; anything else as float32
        encoded = own.last_encoded if array is own.last_delta else None
        packed = None if encoded is None or kind != "delta" else to_packed(encoded)
        node.own.note_sent(array.size, None if packed is None else packed.nbytes)
        return Contribution(
            federation=node.config.federation, round=r, sender=node.peer_id, receiver=peer,
            kind=kind, base_round=base, done=done,
            # views of the estimate, not copies: a published estimate is replaced, never
            # written to
            tensors=() if packed else node.layout.to_tensors(array, copy=False), packed=packed,
            origin=own.origin if kind == "delta" and base == -1 else b"", **snapshot.fields,
        )

    if state.channel is None:
        state.channel = await node.net.open(peer, node.addrs_of(peer),
                                            node.contribution_protocol)
    channel = state.channel
    kind, base, array = own.payload_for(state.peer_holds)
    # an adversary's role may send something else (gossipfl.adversary); the honest one doesn't
    kind, base, array = await node.role.payload(node, peer, r, kind, base, array)
    await node.send_payload(channel, frame(kind, base, array))
    if written is not None:
        written.set()  # the round may go on; the ack is read here
    ack = await channel.receive(Ack, MAX_CONTROL_BYTES)
    if ack.status == AckCode.NEED_FULL and kind == "delta":
        await node.send_payload(channel, frame("full", -1, own.vector))
        ack = await channel.receive(Ack, MAX_CONTROL_BYTES)
    if ack.round != r or ack.sender != peer:
        raise ConnectionError(f"ack for round {ack.round} from {ack.sender}, expected {r}")
    return ack


async def close_channels(node: Node) -> None:
    """Close our contribution and request streams to every neighbour. Over a copy of the
    neighbours: each close awaits, and a re-link (relink.py) may add or drop one meanwhile."""
    for state in list(node.neighbours.values()):
        if state.channel is not None:
            await state.channel.close()
            state.channel = None
        await close_streams(state)


def gone_silent(heard_at: float | None, now: float, interval: float) -> bool:
    """Whether a neighbour we heard from directly has not heartbeat us for
    ``SILENT_INTERVALS`` intervals (killed, paused, cut off). One never heard from directly is
    not judged."""
    return heard_at is not None and now - heard_at > SILENT_INTERVALS * interval


async def wait_for_neighbours(node: Node, r: int, deadline: float) -> list[str]:
    """Wait until every live neighbour delivered round r (or is done); returns those missing.

    A neighbour that has gone silent (no heartbeat for a few intervals: killed, paused, cut
    off) is not waited for: its neighbours go on at once instead of spending the round timeout
    on it, which in the synchronous protocol its neighbours' neighbours would wait out too. The
    heartbeat loop wakes the wait every interval so that silence is noticed. Its contribution,
    if it comes later, is mixed in a later round."""
    interval = node.protocol.heartbeat_interval

    def pending() -> list[str]:
        if node.behind is not None:  # the neighbours went on without us: catch up instead
            return []
        now = trio.current_time()
        return [
            p for p, state in node.neighbours.items()
            if node.estimates.holds(p) < r
            and not (p in node.estimates.peers and node.estimates.peers[p].done)
            and state.unreachable_round != r
            and state.bad_round < r  # it sent a bad estimate: it is not coming
            and not gone_silent(heard(p, state), now, interval)
        ]

    def heard(peer: str, state: NeighbourState) -> float | None:
        # a link made lately counts as news: a member heard from while it joined and linked
        # only now (heartbeats then go to a few of 1,000 members at a time) is not silent
        at = node.heard_at.get(peer)
        return at if at is None else max(at, state.linked_at)

    waiting = await node.wait_for(pending, deadline)
    if waiting:
        node.timeouts += 1
        log.warning("round %d: no contribution from %s within %.1f s", r, ", ".join(waiting),
                    node.protocol.round_timeout)
    return sorted(
        p for p in node.neighbours
        if node.estimates.holds(p) < r
        and not (p in node.estimates.peers and node.estimates.peers[p].done)
    )


async def wait_async(node: Node, training: bool, deadline: float,
                     record: dict[str, Any]) -> list[str]:
    """Async mode: no barrier while training. With ``protocol.max_lead`` = L (not None), a
    training round r waits only for the neighbours more than L rounds behind (until each has
    delivered round r − L: bounded staleness); with no bound it waits for news from half of its
    live neighbours (the faster ones: a slow neighbour's estimate is mixed, staleness-weighted,
    whenever it comes).
    A consensus round waits for every neighbour's round r with a bounded lead, for news from each
    without. All under the round timeout. Returns the
    neighbours that could not be reached this round, and with a bounded lead those still too far
    behind at the timeout (liveness counts only those). ``record["held"]``: whether the round
    waited for a neighbour behind the bound."""
    lead = node.config.protocol.max_lead
    if lead is not None:
        # consensus rounds wait as in sync (rounds keep within the bound of each other)
        r = node.estimates.clock
        least = r - lead if training else r
        return await wait_bounded(node, least, deadline, record, unheard=not training)
    seen = node.async_seen

    def pending() -> list[str]:
        live = [p for p in node.neighbours
                if not (p in node.estimates.peers and node.estimates.peers[p].done)]
        fresh = [p for p in live if node.estimates.holds(p) > seen.get(p, -1)]
        # consensus rounds (no training left to wait for) wait for every live neighbour, so the
        # fast cannot spin through the round limit before the slow have joined
        quorum = max(1, math.ceil(len(live) / 2)) if training else len(live)
        return [] if len(fresh) >= quorum or not live else [p for p in live if p not in fresh]

    await node.wait_for(pending, deadline)
    node.async_seen = {p: node.estimates.holds(p) for p in node.neighbours}
    return sorted(p for p, state in node.neighbours.items()
                  if state.unreachable_round == node.estimates.clock)


async def wait_bounded(node: Node, least: int, deadline: float, record: dict[str, Any], *,
                       unheard: bool) -> list[str]:
    """Wait until every live neighbour has delivered round ``least`` (or is done, or could not be
    reached this round); returns those still behind at the deadline, and the unreachable.
    ``record["held"]``: whether there was anyone to wait for.

    A neighbour not heard from yet is waited for only if ``unheard`` (consensus rounds, so that
    the fast cannot spin through the round limit before a late joiner has joined), and never
    counted missing: one whose first round is slow joins late (async_joins_late). In training
    rounds a node only ever waits for neighbours behind it, so no two wait for each other."""
    r = node.estimates.clock

    def behind() -> list[str]:
        return [p for p, state in node.neighbours.items()
                if p in node.estimates.peers and node.estimates.holds(p) < least
                and not node.estimates.peers[p].done and state.unreachable_round != r]

    def pending() -> list[str]:
        silent = [p for p, state in node.neighbours.items()
                  if unheard and p not in node.estimates.peers and state.unreachable_round != r]
        return sorted(behind() + silent)

    record["held"] = bool(pending())
    await node.wait_for(pending, deadline)
    node.async_seen = {p: node.estimates.holds(p) for p in node.neighbours}
    return sorted(set(behind()) | {p for p, state in node.neighbours.items()
                                   if state.unreachable_round == r})


def still_working(heard_at: float | None, beat_round: int, status: NodeStatus | None,
                  now: float, r: int, interval: float) -> bool:
    """Whether a neighbour that missed round ``r`` is alive and keeping up: it heartbeat us
    directly within the last three heartbeat intervals, while training or in consensus, having
    finished round r − 2 or later (a heartbeat carries the last round finished: it is working on
    our round or the one before). Such a neighbour is itself waiting for a neighbour of its own that
    is gone (a cascade of timeouts, as on one side of a partition): it is not counted missing.
    A neighbour that is silent, stopped, or further behind is."""
    return (heard_at is not None and not gone_silent(heard_at, now, interval)
            and status in RUNNING and beat_round >= r - 2)


async def update_liveness(node: Node, r: int, missing: list[str]) -> None:
    """Count missed rounds; drop a neighbour that missed too many in a row. A neighbour that
    could be reached this round and is alive and keeping up (``still_working``) is not counted."""
    now = trio.current_time()
    links = dict(node.neighbours)
    for peer, state in links.items():
        # a drop below awaits (a disconnect): a link dropped meanwhile, or made afresh (a
        # re-link served, links.reset_link), is not this round's to judge
        if node.neighbours.get(peer) is not state:
            continue
        if peer not in missing:
            state.missed = 0
            continue
        beat_round, status = node.member_state.get(peer, (-1, None))
        if state.unreachable_round != r and still_working(
                node.heard_at.get(peer), beat_round, status, now, r,
                node.protocol.heartbeat_interval):
            log.info("round %d: no contribution from %s, but it is alive and keeping up "
                     "(its last round %d); the miss is not counted", r, peer, beat_round)
            continue
        state.missed += 1
        if state.missed >= node.protocol.max_missed_rounds:
            log.warning("dropping neighbour %s: no contribution for %d rounds", peer,
                        state.missed)
            await drop_neighbour(node, peer, r, "missed rounds")
