"""The termination and hold rules of :mod:`gossipfl.node.termination`, applied to a node: what
it reports of itself, whether it holds its round, and whether it may finish.

The node keeps a :class:`~gossipfl.node.termination.SettleState`; the round code calls
:func:`hold` before each round and :func:`judge` after each consensus round.
"""

from __future__ import annotations

import enum
import logging
import math
from typing import TYPE_CHECKING

import trio

from gossipfl.gossip.codes import NodeStatus
from gossipfl.node import termination
from gossipfl.node.termination import Hold, PeerSettle

if TYPE_CHECKING:
    from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.round")

__all__ = ["Verdict", "await_again", "awaited", "gone_seconds", "hold", "judge", "missing",
           "note_extra_link", "note_topology", "pace", "reports", "round_limit"]

EXTRA_LINK_HOPS = 2
"""How much a link outside the founding topology (a late joiner, a replacement) can lengthen
the paths between members: the horizon grows by this much for each one a node takes."""


class Verdict(enum.Enum):
    """What the end of a consensus round says."""

    GO_ON = "go on"  # not settled, or settled but the federation is not known to be
    AWAIT = "await"  # a wanted neighbour is missing (not gone for good) here or next door
    FINISH = "finish"  # the depth reached the horizon: the federation holds one model


def gone_seconds(node: Node) -> float:
    """How long a wanted neighbour may be missing before it counts as gone for good."""
    protocol = node.protocol
    return protocol.gone_seconds or 3 * protocol.member_timeout


def round_limit(node: Node) -> int:
    """The round a node stops at if it has not finished: the training rounds (or the round it
    last reopened at, linger.py) plus ``max_consensus_rounds``, plus the rounds spent awaiting
    a missing member (free of the limit)."""
    state = node.settle
    return (max(node.config.rounds, state.reopened_at) + node.protocol.max_consensus_rounds
            + state.waiting_rounds)


def note_topology(node: Node, members: int) -> None:
    """Set the horizon from the node's topology over ``members`` members (link formation)."""
    state = node.settle
    state.members = max(state.members, members)
    if node.topology is not None:
        state.horizon = min(state.members, termination.horizon(node.topology, node.peer_id))


def note_extra_link(node: Node) -> None:
    """A link outside the founding topology (a late joiner's, a replacement's) can lengthen
    paths: grow the horizon by :data:`EXTRA_LINK_HOPS` (never past the member count)."""
    state = node.settle
    state.members = max(state.members, len(node.membership.ids()) + 1)
    state.horizon = min(state.members, state.horizon + EXTRA_LINK_HOPS)


def reports(node: Node) -> dict[str, PeerSettle | None]:
    """What each linked neighbour last reported of itself (None: nothing yet)."""
    out: dict[str, PeerSettle | None] = {}
    for peer in node.neighbours:
        if node.config.secagg.enabled:
            status = node.secagg.peer_status.get(peer)
            out[peer] = None if status is None else PeerSettle(*status[1:6])
        else:
            estimate = node.estimates.peers.get(peer)
            out[peer] = None if estimate is None else PeerSettle(
                estimate.disagreement, estimate.done, estimate.depth, estimate.horizon,
                estimate.waiting)
    return out


def _wanted(node: Node) -> set[str]:
    finished_members = {p for p, (_, status) in node.member_state.items()
                        if status == NodeStatus.DONE}
    return node.wanted - finished_members  # a finished member refuses links: not awaited


def awaited(node: Node, now: float) -> list[str]:
    """The wanted neighbours not linked and not yet gone for good (missing for at most
    ``gone_seconds`` since they were dropped or first seen missing; one not yet tracked is
    missing since now). Reads the node's state, changes nothing (:func:`missing` does)."""
    waiting, _ = termination.waiting_for(_wanted(node), node.neighbours,
                                         node.settle.missing_since, now, gone_seconds(node))
    return waiting


def missing(node: Node, r: int, now: float) -> list[str]:
    """Track the wanted neighbours that are not linked: returns those still awaited; those
    missing for more than ``gone_seconds`` go to ``settle.gone`` (logged once each)."""
    state = node.settle
    wanted = _wanted(node)
    for peer in list(state.missing_since):
        if peer in node.neighbours or peer not in wanted:
            del state.missing_since[peer]
    for peer in wanted - set(node.neighbours):
        state.missing_since.setdefault(peer, now)
    # one taken for gone that proved itself alive since (a healed cut) is awaited again
    alive = {p: (node.membership.live_at(p) or -math.inf) > state.gone_at.get(p, math.inf)
             for p in state.gone}
    await_again(node, termination.back_from_gone(state.gone, node.neighbours, alive,
                                                 state.revivals, node.protocol.max_reopen),
                r, now, "is alive again")
    awaited, gone = termination.waiting_for(wanted, node.neighbours, state.missing_since, now,
                                            gone_seconds(node))
    for peer in gone:
        if peer not in state.gone:
            state.gone.append(peer)
            state.gone_at[peer] = now
            log.warning("round %d: wanted neighbour %s missing for %.0f s: gone for good; "
                        "this node may finish without it", r, peer, gone_seconds(node))
    # one taken for gone that is linked again is back: this node does not finish without it
    state.gone = [p for p in state.gone if p not in node.neighbours]
    return awaited


def await_again(node: Node, peers: list[str], r: int, now: float, why: str) -> None:
    """Await ``peers`` again, each for ``gone_seconds`` from now, though they were taken for
    gone for good (:func:`~gossipfl.node.termination.back_from_gone` says which): a wanted
    neighbour back from a cut is re-linked before this node settles without it. Consensus
    rounds can take no time at all (no training, a fast network): without this, a node
    reopened by a healed partition could spend its whole round limit before its re-link
    loop asked the member back."""
    state = node.settle
    for peer in peers:
        state.gone.remove(peer)
        state.gone_at.pop(peer, None)
        state.missing_since[peer] = now
        state.revivals[peer] = state.revivals.get(peer, 0) + 1
        log.warning("round %d: wanted neighbour %s, taken for gone, %s: awaiting it again "
                    "(%.0f s at most; %d of %d times)", r, peer, why, gone_seconds(node),
                    state.revivals[peer], node.protocol.max_reopen)
    if peers:
        node.relink_now.set()


def judge(node: Node, r: int) -> Verdict:
    """After consensus round ``r``: update the node's depth and say whether it may finish
    (:class:`Verdict`)."""
    state = node.settle
    now = trio.current_time()
    absent = state.awaited = missing(node, r, now)
    heard = reports(node)
    settled = termination.locally_settled(node.disagreement, heard, absent,
                                          node.protocol.consensus_tolerance)
    known = [h for h in heard.values() if h is not None]
    # a horizon is the topology's: a neighbour that counts further (it took a late joiner)
    # raises ours, never past the member count
    state.horizon = min(max(state.members, 1),
                        max([state.horizon, *(h.horizon for h in known)]))
    state.depth = termination.settled_depth(settled, known, state.horizon)
    if state.depth >= state.horizon:
        state.waiting, state.waiting_since = 0, None
        return Verdict.FINISH
    # waiting spreads within a horizon: a node near one that waits for a missing member waits
    # with it (its rounds are paced, and free of the limit), for at most twice gone_seconds in
    # a row (by then the missing member is back or gone for good; a neighbour that says it
    # waits forever cannot hold this node longer)
    state.waiting = termination.waiting_hops(
        bool(absent), [h.waiting for h in known if not h.done], state.horizon)
    if not state.waiting:
        state.waiting_since = None
        return Verdict.GO_ON
    if state.waiting_since is None:
        state.waiting_since = now
    if now - state.waiting_since > 2 * gone_seconds(node):
        return Verdict.GO_ON
    state.waiting_rounds += 1
    return Verdict.AWAIT


async def pace(node: Node) -> None:
    """After a round that waits for a missing member (here or next door): no point spinning
    rounds until it is back (the neighbours wait for this node's next round; it is alive, so
    they count no miss). The next round starts a heartbeat later, sooner if a link comes or
    goes."""
    linked = set(node.neighbours)
    await node.wait_for(lambda: [] if set(node.neighbours) != linked else ["link"],
                        trio.current_time() + node.protocol.heartbeat_interval)


async def hold(node: Node, r: int) -> Hold:
    """Before round ``r``: hold the round while the node has fewer live neighbours than it
    needs, re-linking meanwhile (the re-link loop asks its lost neighbours back, with backoff);
    returns GO once it has them, PACE after a heartbeat's wait when it has some but fewer than
    it needs, ALONE (allow_alone: train without them, logged), or GIVE_UP after
    ``gone_seconds`` with none (the neighbours are gone for good: it finishes)."""
    protocol = node.protocol
    degree = max(1, node.degree_target)
    needed = min(protocol.min_neighbours or degree, degree)  # 0: its whole degree
    start = trio.current_time()
    logged = False
    while True:
        now = trio.current_time()
        held_for = now - start
        decision = termination.hold_decision(
            len(node.neighbours), needed, awaited=len(awaited(node, now)),
            allow_alone=protocol.allow_alone, held_for=held_for, gone_seconds=gone_seconds(node))
        if decision is Hold.HOLD and not logged:
            log.warning("round %d: %d live neighbour(s), %d needed: holding this round and "
                        "re-linking (wanted: %s)", r, len(node.neighbours), needed,
                        ", ".join(sorted(node.wanted)) or "none")
            node.settle.holds += 1
            logged = True
        if decision is Hold.PACE:
            node.settle.held_seconds += held_for  # held until one came back, then paced
            node.settle.paced += 1
            log.info("round %d: %d live neighbour(s), %d needed: paced a heartbeat apart",
                     r, len(node.neighbours), needed)
            await pace(node)
            return decision
        if decision is not Hold.HOLD:
            node.settle.held_seconds += held_for
            if decision is Hold.ALONE:
                log.warning("round %d: %d live neighbour(s): training alone (allow_alone)", r,
                            len(node.neighbours))
            elif decision is Hold.GIVE_UP:
                gone = sorted(node.wanted - set(node.neighbours))
                for peer in gone:
                    if peer not in node.settle.gone:
                        node.settle.gone.append(peer)
                        node.settle.gone_at[peer] = now
                log.error("round %d: no live neighbour for %.0f s: its neighbours (%s) are "
                          "gone for good; finishing alone", r, held_for, ", ".join(gone))
            elif logged:
                log.warning("round %d: a neighbour is back after %.1f s; going on", r, held_for)
            return decision
        with trio.move_on_after(protocol.heartbeat_interval):
            await node.changed.wait()
