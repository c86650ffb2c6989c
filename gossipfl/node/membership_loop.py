"""Membership gossip: the heartbeat loop and handler, revocation lists, whom to dial, and
joining (waiting until the federation's membership is known).

Every heartbeat carries the sender's signed liveness stamp, its member list (hearsay, capped in
``gossip/membership.py``), its certificate and the newest revocation list it holds. The member
list is a delta: what changed in the sender's table since the receiver last said it held it
(its ack), a heartbeat's worth to a neighbour (or anyone while joining), the freshest
``EXTRA_WINDOW`` changes to anyone else; to a peer that holds none of it, the freshest changes
and a digest of what the sender holds, which the answer then leaves out (see
:func:`heartbeat`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import trio

from gossipfl.crypto import liveness
from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.membership import JOINING_CHECKS, MAX_STAMP_CHECKS
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Heartbeat, WireError, decode_digest
from gossipfl.node.extras import HEARTBEAT_EXTRA, HEARTBEAT_FANOUT, Extras, Held, draw
from gossipfl.node.links import (
    drop_neighbour,
    federation_running,
    known_members,
    note_peer_round,
)
from gossipfl.node.resume import saved_neighbours
from gossipfl.node.security import MAX_HEARSAY_CHECKS, RevocationUpdate
from gossipfl.node.state import Node, NodeError
from gossipfl.node.streams import close_streams, request

if TYPE_CHECKING:
    from gossipfl.gossip.peers import Channel

log = logging.getLogger("gossipfl.node")

PROTO_MEMBERSHIP = "/gossipfl/membership/1.0.0"
HEARSAY_DIALS = 3  # admission off: dials of an id only heard of, until it is heard from
LOOKS_A_HEARTBEAT = 4  # joining: how often an interval the members known are counted again
#: a node that has just become done heartbeats this many members at most (all of them in a
#: federation of up to as many): each then records its done at once, so that a lingering
#: member waits for no regular cycle that may never come (linger.py)
DONE_FANOUT = 64
#: a neighbour's heartbeat answered within this many intervals stands for ours. A cycle lasts
#: an interval plus the wait for its answers: when the neighbour's stop, ours goes out within
#: this span and one cycle of ours, and its answer comes before the neighbour has been unheard
#: for ``SILENT_INTERVALS`` (3), at which it would be taken for silent
ANSWERED_COVERS = 1.5
CLOSE_SECONDS = 0.5  # at most this long closing the kept streams as the loop ends


def heartbeat(node: Node, peer: str = "", held: frozenset[int] | None = None) -> Heartbeat:
    """This node's heartbeat to ``peer`` now: who it is, where, its round and status, the
    changes to the members it vouches for that ``peer`` does not hold yet (``held``: the
    digest of the heartbeat it answers; see ``Membership.outgoing``), its certificate, the
    newest revocation list it holds, its stamp, and how much of ``peer``'s table it holds."""
    table = node.membership
    members, versions, have = table.outgoing(
        trio.current_time(), peer, wide=node.topology is None or peer in node.neighbours,
        held=held,
        certificate=node.security.certificate_bytes if node.security.enabled else None,
        known=lambda member: node.cert_holders.holds(peer, member),
        current=lambda member, stamp: node.cert_holders.current(peer, member, stamp))
    return Heartbeat(
        federation=node.config.federation, sender=node.peer_id, addrs=tuple(node.addrs),
        members=members, round=node.round,
        degree=len(node.neighbours), status=node.status.advertised,
        # left out where the peer holds it (it answered us in its table's current epoch)
        certificate=b"" if node.cert_holders.holds(peer, node.peer_id)
        else node.security.own_certificate,
        revocations=node.security.revocation_bytes, stamp=node.own_stamp,
        table=versions, ack=table.ack_for(peer), have=have,
    )


def renew_stamp(node: Node) -> bytes:
    """Sign this cycle's liveness stamp (once per heartbeat cycle): the next sequence
    number of this run, at the addresses this node listens on (its heartbeats give them
    beside it; members it has not met dial it only there)."""
    node.stamp_seq += 1
    node.own_stamp = liveness.sign_stamp(node.config.federation, node.peer_id,
                                         node.stamp_epoch, node.stamp_seq, node.stamp_key,
                                         tuple(node.addrs))
    return node.own_stamp


NAMED_MEMBERS = 64
"""Up to this many members in the table, each new one is logged by name; beyond, a count."""


def absorb(node: Node, beat: Heartbeat) -> None:
    """Take an admitted member's heartbeat: it is heard directly; its member list is
    hearsay (with admission on, only certified members are taken; see ``membership.py``
    for the caps that keep one reporter from filling the table)."""
    now = trio.current_time()
    if node.membership.heard_from(beat.sender, beat.addrs, now, beat.stamp):
        log.info("new member %s (heard directly)", beat.sender)
    if beat.addrs:
        node.addr_book[beat.sender] = beat.addrs
    before = node.member_state.get(beat.sender)
    node.member_state[beat.sender] = (beat.round, beat.status)
    if before is None or before[1] != beat.status:
        node.notify()  # a lingering node waits for every member's done (linger.py)
    node.heard_at[beat.sender] = now
    if beat.sender in node.wanted and beat.sender not in node.neighbours:
        node.relink_now.set()  # a lost neighbour is back (a healed partition): ask it now
    note_peer_round(node, beat.sender, beat.round, beat.status)
    node.membership.acked(beat.sender, beat.ack)
    if node.security.enabled:  # it lists only members whose certificates it holds
        node.cert_holders.note(beat.sender, beat.table[0],
                               ((m.peer_id, m.stamp) for m in beat.members))
    # joining, a heartbeat may cost a whole member list's checks (membership.JOINING_CHECKS)
    joining = node.topology is None
    hearsay = node.security.hearsay(
        beat.members, checks=JOINING_CHECKS if joining else MAX_HEARSAY_CHECKS)
    new = list(node.membership.merge(hearsay, now, reporter=beat.sender,
                                     vouched=node.security.enabled,
                                     checks=JOINING_CHECKS if joining else MAX_STAMP_CHECKS))
    if len(node.membership) <= NAMED_MEMBERS:
        for peer in new:
            log.info("new member %s (via %s)", peer, beat.sender)
    elif new:  # a line each for 1,000 members, at 1,000 simulated nodes: 7 % of their join
        log.info("%d new member(s) via %s (%d in the table)", len(new), beat.sender,
                 len(node.membership))
    # held through its table's version only if nothing was left to a later heartbeat
    complete = not (node.security.hearsay_deferred or node.membership.deferred)
    node.membership.took_table(beat.sender, beat.table, complete)
    for reporter, peer, reason in node.membership.take_forged():
        node.reject(reporter, "liveness stamp", "bad_stamp", f"stamp of {peer}: {reason}")


def take_revocations(node: Node, peer: str, data: bytes) -> frozenset[str]:
    """A revocation list a peer sent: a newer valid one is honoured at once (the revoked
    leave membership, the topology and the neighbours); a forged or older one is refused
    with a log line. Returns the newly revoked peers (their links are then dropped)."""
    return revocations_judged(node, peer, *node.security.take_revocations(data))


def revocations_judged(node: Node, peer: str, verdict: RevocationUpdate, newly: frozenset[str],
                       detail: str) -> frozenset[str]:
    if verdict is RevocationUpdate.INVALID:
        node.reject(peer, "revocation list", "bad_revocations", detail)
    elif verdict is RevocationUpdate.OLDER:
        # a member that has not had the newer list yet (our reply carries it): log once
        serial = node.security.revocations.serial if node.security.revocations else 0
        if node.stale_revocations_logged.get(peer) != serial:
            node.stale_revocations_logged[peer] = serial
            log.info("refused an older revocation list from %s (%s)", peer, detail)
    elif verdict is RevocationUpdate.NEWER:
        log.warning("revocation list %s from %s: %d peer(s) revoked now", detail, peer,
                    len(newly))
    for revoked in sorted(newly):
        log.warning("member %s revoked: no longer a member", revoked)
        if revoked == node.peer_id:
            log.error("this node is on the federation's revocation list: members will "
                      "refuse it")
        node.membership.forget(revoked)
        node.hearsay_dialled.pop(revoked, None)
        node.wanted.discard(revoked)
        node.member_state.pop(revoked, None)
    return newly


async def drop_revoked(node: Node, revoked: frozenset[str]) -> None:
    for peer in sorted(revoked):
        await drop_neighbour(node, peer, node.round, "revoked")


def admitted(node: Node, channel: Channel, what: str, beat: Heartbeat) -> bool:
    """Origin checks, then the membership certificate (when admission is on)."""
    if not node.check_origin(channel, what, beat.federation, beat.sender):
        return False
    reason = node.security.admit(beat.sender, beat.certificate)
    if reason is not None and not beat.certificate and node.security.enabled:
        # it left its certificate out, thinking we hold it (we restarted, or forgot it): not
        # a fault; its stream is reset and its next heartbeat carries it (cert_holders.py)
        log.info("%s from %s without its certificate, which this node does not hold: "
                 "refused until it sends it", what, beat.sender)
        return False
    if reason is not None:
        node.reject(beat.sender, what, "not_member", reason)
        return False
    return True


async def on_heartbeat(node: Node, channel: Channel) -> bool:
    """Answer one heartbeat on ``channel``: served as a request stream (streams.py), so a
    neighbour heartbeats on one stream, cycle after cycle, and anyone else on a stream of
    its own. Returns False when it refused (the stream is reset: no further heartbeat on it)."""
    beat = await channel.receive(Heartbeat, MAX_CONTROL_BYTES)
    # a list signed by the federation key counts whoever carries it (checked first, so that
    # a revoked sender's own heartbeat is refused below)
    revoked = take_revocations(node, channel.remote, beat.revocations)
    if not admitted(node, channel, "heartbeat", beat):
        await channel.reset()
        # no certificate, no connection; one that left its certificate out (it thought we
        # held it: we restarted) gets its stream reset only, and sends it next time
        if node.security.enabled and node.net is not None and beat.certificate:
            await node.net.disconnect(channel.remote)
        await drop_revoked(node, revoked)
        return False
    absorb(node, beat)
    held = decode_digest(beat.have) if beat.have else None
    status = node.status.advertised
    await channel.send(heartbeat(node, beat.sender, held), MAX_CONTROL_BYTES)
    if (state := node.neighbours.get(beat.sender)) is not None:
        state.answered_at, state.answered_status = trio.current_time(), status
    await drop_revoked(node, revoked)
    return True


def may_dial(node: Node, peer: str) -> bool:
    """Whether a member heard of may be dialled at the addresses we were told: with
    admission on, only certified, unrevoked ids (an id someone made up has no certificate,
    so its addresses, which its inventor chose, are never dialled). With admission off, an
    id only heard of is dialled (the only way to meet a member of an open federation), at
    most ``HEARSAY_DIALS`` times until it is heard from directly."""
    if node.security.enabled:
        return node.security.is_certified(peer)
    return (node.membership.is_direct(peer)
            or node.hearsay_dialled.get(peer, 0) < HEARSAY_DIALS)


def heartbeat_targets(node: Node, *, done: bool = False, extras: Extras | None = None,
                      ) -> dict[str, tuple[str, ...]]:
    """Whom to heartbeat now: everyone while joining (at most ``HEARTBEAT_FANOUT`` a cycle,
    drawn afresh: membership spreads fastest so, and a partner met again is sent only what
    changed since its ack); then the neighbours and a few others; with ``done`` (the first
    cycle after this node became done), every member (at most ``DONE_FANOUT``), so that each
    hears of it directly and each answer tells it whether that member is done.

    Each heartbeat is a libp2p stream, which costs CPU in every process; once links are
    formed, neighbours plus ``HEARTBEAT_EXTRA`` random members keep membership fresh (ages
    travel with the member lists, so hearsay covers the rest), drawn afresh each call, or kept
    for a few cycles by ``extras`` (:mod:`gossipfl.node.extras`). One exchange a cycle serves a
    link both ways, so a neighbour that heartbeats us is not heartbeated back
    (:func:`answered_lately`).
    """
    def dialable(peer: str) -> bool:
        return may_dial(node, peer) and bool(node.addrs_of(peer))

    ids = node.membership.ids()
    if done:
        chosen = draw(node.rng, ids, DONE_FANOUT, dialable)
    elif node.topology is None:
        chosen = draw(node.rng, ids, HEARTBEAT_FANOUT, dialable)
    else:
        def other(peer: str) -> bool:
            return peer not in node.neighbours and dialable(peer)

        chosen = sorted(p for p in node.neighbours if p in node.membership and dialable(p)
                        and not answered_lately(node, p))
        chosen += (extras.pick(node.rng, ids, other) if extras is not None
                   else draw(node.rng, ids, HEARTBEAT_EXTRA, other))
    targets = {p: node.addrs_of(p) for p in chosen}
    for peer in chosen:
        if not node.membership.is_direct(peer):
            node.hearsay_dialled[peer] = node.hearsay_dialled.get(peer, 0) + 1
    for peer, addr in node.bootstrap:
        if (peer not in node.membership and peer != node.peer_id
                and peer not in node.security.revoked):
            targets[peer] = (addr,)
    return targets


def answered_lately(node: Node, peer: str) -> bool:
    """Whether our heartbeat to neighbour ``peer`` can be left out this cycle: the link's
    heartbeats are the smaller id's to the larger one, whose answer carries the larger id's
    news (an exchange carries both ends' stamps, table changes, acks, rounds and statuses), so
    the larger id leaves out its own while the smaller one's came within ``ANSWERED_COVERS``
    intervals and our status is still the one that answer carried. It heartbeats again at
    once when its status changes, or when the smaller id's stop (killed, paused, cut off, or
    the link not in its topology): it hears the peer as often as before, from the peer's
    cycle, and a silent peer is judged silent as before (``gone_silent``: by when we last
    heard from it)."""
    state = node.neighbours.get(peer)
    if state is None or state.answered_status is None or node.peer_id < peer:
        return False
    return (state.answered_status is node.status.advertised and trio.current_time()
            - state.answered_at < ANSWERED_COVERS * node.protocol.heartbeat_interval)


async def heartbeat_loop(node: Node) -> None:
    """Heartbeat every interval (while joining, one after another across it). Each cycle
    waits for its heartbeats' answers (so the rate
    stays one cycle per interval plus a round trip: each heartbeat is a libp2p stream, which
    costs CPU in every process), but at most one interval: a peer that does not answer (cut
    off, paused) keeps its heartbeat in flight under the request timeout and is skipped
    until it ends, so it delays no one else's. The neighbours that are alive keep hearing
    from us every cycle, which their liveness counting relies on."""
    in_flight: set[str] = set()
    extras = Extras()

    async def send(peer: str, addrs: tuple[str, ...], done: trio.Event, delay: float) -> None:
        try:
            await trio.sleep(delay)
            kept = extras.holder(peer) if peer in extras.chosen else None
            if not await send_heartbeat(node, peer, addrs, kept):
                extras.drop(peer)
        finally:
            in_flight.discard(peer)
            done.set()

    interval = node.protocol.heartbeat_interval
    told_done = False  # this node's done was sent to every member (again after a reopening)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                renew_stamp(node)
                answers = []
                done = node.status is NodeStatus.DONE
                telling = done and not told_done
                targets = heartbeat_targets(node, done=telling, extras=extras)
                told_done = done
                for held in extras.released():  # the members drawn before: their streams go
                    nursery.start_soon(close_streams, held)
                # joining: spread over the interval, so that each exchange's digest holds what
                # the ones before it brought (all at once, they would pull the same entries);
                # telling done: so that a federation finishing together (a simulated one, all
                # at one instant) does not hold DONE_FANOUT exchanges a member in flight at once
                spread = (interval / len(targets)
                          if (node.topology is None or telling) and targets else 0.0)
                for i, (peer, addrs) in enumerate(targets.items()):
                    if peer not in in_flight:
                        in_flight.add(peer)
                        answers.append(trio.Event())
                        nursery.start_soon(send, peer, addrs, answers[-1], i * spread)
                cycle = node.stamp_seq
                with trio.move_on_after(interval):
                    for answer in answers:
                        await answer.wait()
                node.beaten_seq = cycle
                # the configured list file, re-read when its holder writes a newer one
                await drop_revoked(node, revocations_judged(
                    node, "the revocations file", *node.security.poll_revocations_file()))
                for peer in node.membership.prune(trio.current_time()):
                    node.hearsay_dialled.pop(peer, None)
                    log.warning("forgot member %s: silent for %.1f s", peer,
                                node.protocol.member_timeout)
                node.notify()  # a round waiting on a neighbour notices it went silent
                with trio.move_on_after(interval):  # or at once when this node's status changed
                    await node.beat_now.wait()
                node.beat_now = trio.Event()
    finally:  # the streams kept to the members drawn: closed, not reset, as the node ends
        with trio.move_on_after(CLOSE_SECONDS) as scope:
            scope.shield = True
            for held in extras.held.values():
                await close_streams(held)


async def send_heartbeat(node: Node, peer: str, addrs: tuple[str, ...],
                         held: Held | None = None) -> bool:
    """Heartbeat ``peer`` and take its answer: on the stream kept open to a neighbour (opening
    one costs every process CPU, each cycle) or kept in ``held`` (a member drawn beyond the
    neighbours), else on a stream of its own. Returns whether it answered."""
    async def exchange(channel: Channel) -> tuple[Channel, Heartbeat]:
        await channel.send(heartbeat(node, peer), MAX_CONTROL_BYTES)
        return channel, await channel.receive(Heartbeat, MAX_CONTROL_BYTES)

    with trio.move_on_after(node.protocol.request_timeout):
        try:
            if peer in node.neighbours or held is not None:
                channel, reply = await request(node, peer, PROTO_MEMBERSHIP, exchange,
                                               None if peer in node.neighbours else held)
            else:
                async with node.channel_to(peer, PROTO_MEMBERSHIP, addrs) as channel:
                    channel, reply = await exchange(channel)
        except WireError as error:
            node.reject(peer, "heartbeat reply", "malformed", str(error))
            return False
        except Exception as error:
            log.debug("heartbeat to %s failed: %s", peer, error)
            node.cert_holders.forget(peer)  # the next one carries our certificate
            return False
        revoked = take_revocations(node, peer, reply.revocations)
        answered = admitted(node, channel, "heartbeat reply", reply)
        if answered:
            absorb(node, reply)
            # it answered: it admitted us, so it holds our certificate (until it restarts)
            node.cert_holders.note(peer, reply.table[0], [(node.peer_id, b"")])
        await drop_revoked(node, revoked)
        return answered
    return False


async def join(node: Node) -> None:
    """Wait until the federation's membership is known (expected count, or stable)."""
    expected = node.config.expected_members
    settle = node.config.settle_seconds
    last_count, stable_since = -1, trio.current_time()
    # A node that restarts needs its own neighbours back, not the whole federation (which may
    # have lost members for good since it started).
    saved = saved_neighbours(node) if node.resumed_from is not None else None
    wanted = set(saved) if saved else None
    seen: tuple[int, ...] = ()
    known: set[str] = set()
    count, running, next_look = 1, False, -math.inf
    with trio.move_on_after(node.protocol.join_timeout):
        while True:
            now = trio.current_time()
            # counted again when the table or the certificates held changed, at most
            # LOOKS_A_HEARTBEAT times an interval (each look costs the table's size); while the
            # table holds fewer than the expected members, its size is the count (known
            # members are among them): the expected count is not reached yet
            state = (node.membership.version, len(node.membership),
                     len(node.security.certificates), len(node.security.hearsay_certificates))
            look = now >= next_look
            if look:
                next_look = now + node.protocol.heartbeat_interval / LOOKS_A_HEARTBEAT
                running = federation_running(node)
            if look and state != seen:
                seen = state
                if expected and wanted is None and len(node.membership) + 1 < expected:
                    count = len(node.membership) + 1
                else:
                    known = set(known_members(node, heard_of=wanted is None))
                    count = len(known) + 1
            if count != last_count:
                last_count, stable_since = count, now
            settled = now - stable_since >= settle
            if wanted is not None:
                done = wanted <= known or bool(wanted & known and settled)
            elif running:
                # joining late: the member lists we were sent name whoever is there now
                done = count > 1 and now - stable_since >= min(settle, 1.0)
            elif expected:
                done = count >= expected
            else:
                done = count > 1 and settled
            if done:
                break
            await trio.sleep(0.05)
    count = len(known_members(node, heard_of=wanted is None)) + 1
    if count < 2:
        raise NodeError(
            f"no other member found within {node.protocol.join_timeout:.0f} s "
            f"(bootstrap: {len(node.bootstrap)} address(es)); refusing to train alone"
        )
    if expected and count < expected:
        log.warning("joining with %d of %d expected members", count, expected)
    log.info("membership: %d members", count)
