"""After done: a node lingers, answering, and reopens if a member comes back with another model.

A done node used to stop at once, so the halves of a partition that outlasted ``gone_seconds``
each finished with a model of their own, and a member that came back found nobody to reconcile
with. Now, after announcing done, a node keeps serving for a while (:func:`linger`; how long:
:func:`~gossipfl.node.termination.linger_time`): it heartbeats, answers links from its wanted
neighbours and asks its lost ones back (links.py), serves its state, takes contributions, and
sends its final estimate (marked done) to each neighbour linked again since, so that a member
back from a cut can mix with it. A contribution from a wanted neighbour that came back (missing
at this node's finish, or seen done and now sending rounds again) with an estimate further from
this node's model than the consensus tolerance reopens it (:func:`reopen`; the rule is
:func:`~gossipfl.node.termination.reopen_decision`): its status goes back to consensus and the
round code (round.py) runs consensus rounds again until the node is settled, announces done and
lingers again, ``protocol.max_reopen`` times at most. A reopened node sends its rounds to its
done neighbours that still linger as well, and a running one sends a round to a lingering
neighbour whose link holds none of its estimates (linked again after a cut: exchange.py), so
the news spreads until the federation holds one model again.

Not under secure aggregation (its masked rounds cannot be reopened one node at a time): there
a done node stops at once, as before.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from gossipfl.aggregation.mixing import relative_disagreement
from gossipfl.gossip.codes import NodeStatus
from gossipfl.node import settle, termination
from gossipfl.node.estimates import PeerEstimate
from gossipfl.node.exchange import send_contribution
from gossipfl.node.state import NeighbourState
from gossipfl.node.termination import Reopen

if TYPE_CHECKING:
    from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.round")

__all__ = ["Watch", "absent_members", "await_live", "linger", "look", "reopen"]


@dataclass
class Watch:
    """What a lingering node compares against: the neighbours as they were at its finish."""

    missing: set[str]  # wanted neighbours not linked at the finish (until they are back)
    seen: dict[str, PeerEstimate | None]  # each neighbour's estimate last looked at
    links: dict[str, NeighbourState]  # the links at the finish (a new object: linked again)
    seen_done: set[str] = field(default_factory=set)  # neighbours seen done since
    back: set[str] = field(default_factory=set)  # missing at the finish, linked again since
    told: dict[str, float] = field(default_factory=dict)  # when each was last sent ours
    spent_logged: set[str] = field(default_factory=set)
    pending: list[str] = field(default_factory=list)  # members last found not done ...
    checked: int = 0  # ... and how many of them have been seen done since (nobody_left)

    @classmethod
    def at_finish(cls, node: Node) -> Watch:
        seen = {p: node.estimates.peers.get(p) for p in node.neighbours}
        done = {p for p, e in seen.items() if e is not None and e.done}
        return cls(missing=set(node.wanted) - set(node.neighbours), seen=seen,
                   links=dict(node.neighbours), seen_done=done)


def absent_members(node: Node) -> list[str]:
    """The members this node knew (its founding topology's, its wanted neighbours) that are
    absent now: gone for good in its judgement, or forgotten by its membership (silent for
    ``member_timeout``) without having told it they were done."""
    known = (set(node.topology or ()) | node.wanted) - {node.peer_id}
    return sorted(p for p in known if p in node.settle.gone or (
        p not in node.membership
        and node.member_state.get(p, (-1, None))[1] != NodeStatus.DONE))


async def linger(node: Node) -> bool:
    """After the node announced done: serve for the linger time; returns True if a member came
    back with another model and the node reopened (its status is consensus again, and
    ``node.round`` the round before the next), False when the time is up (the node stops)."""
    protocol = node.protocol
    state = node.settle
    if protocol.linger_seconds <= 0 or node.config.secagg.enabled:
        return False
    absent = absent_members(node)
    seconds = termination.linger_time(protocol.linger_seconds, len(absent),
                                      protocol.heartbeat_interval)
    if absent:
        log.warning("done with %d member(s) absent (%s): lingering %.1f s, answering, in case "
                    "one comes back with another model", len(absent), ", ".join(absent),
                    seconds)
    else:
        log.info("done: lingering %.1f s, answering", seconds)
    watch = Watch.at_finish(node)
    start = trio.current_time()
    deadline = start + seconds
    state.lingering = True
    node.relink_now.set()  # ask the lost neighbours back now
    try:
        while True:
            found = look(node, watch)
            if found is not None:
                reopen(node, *found)
                return True
            now = trio.current_time()
            if now >= deadline:
                break
            if nobody_left(node, watch, whole=not absent):
                log.info("lingered %.2f s: every member is done and has heard this node is; "
                         "stopping", now - start)
                return False
            await tell_final(node, watch)
            with trio.move_on_after(min(protocol.heartbeat_interval, deadline - now)):
                await node.changed.wait()
    finally:
        state.lingering = False
        state.lingered_seconds += trio.current_time() - start
    not_done, told = not_heard_done(node), node.beaten_seq >= node.settle.done_beat
    log.info("lingered %.1f s: no member came back with another model; stopping (%d member(s) "
             "not heard done%s)", seconds, len(not_done),
             "" if told else ", this node's done not yet answered")
    return False


def look(node: Node, watch: Watch) -> tuple[str, float, int] | None:
    """Judge what the neighbours sent since the last look; returns (peer, distance, its round)
    for one that reopens this node, else None."""
    protocol = node.protocol
    state = node.settle
    found = None
    for peer in sorted(watch.missing - watch.back):
        if peer in node.neighbours and node.neighbours[peer] is not watch.links.get(peer):
            watch.back.add(peer)  # linked again: not finished without (unless it disagrees)
            if peer in state.gone:
                state.gone.remove(peer)
            log.info("lingering: %s is back (linked again)", peer)
    for peer in sorted(node.neighbours):
        estimate = node.estimates.peers.get(peer)
        said_done = node.member_state.get(peer, (-1, None))[1] == NodeStatus.DONE
        if estimate is None or estimate is watch.seen.get(peer):
            if said_done:
                watch.seen_done.add(peer)
            continue
        watch.seen[peer] = estimate
        distance = relative_disagreement(node.model, [estimate.vector])
        decision = termination.reopen_decision(
            wanted=peer in node.wanted, missing_at_finish=peer in watch.missing,
            seen_done=peer in watch.seen_done, done_now=estimate.done, distance=distance,
            tolerance=protocol.consensus_tolerance, reopened=state.reopened,
            max_reopen=protocol.max_reopen)
        if estimate.done or said_done:
            watch.seen_done.add(peer)
        if decision is Reopen.REOPEN and found is None:
            found = (peer, distance, estimate.round)
        elif decision is Reopen.SPENT and peer not in watch.spent_logged:
            watch.spent_logged.add(peer)
            if peer in watch.missing and peer not in state.gone:
                state.gone.append(peer)  # back, but not reconciled: the report names it
            log.warning("not reopening for %s (its model %.1e away): %d reopening(s) spent "
                        "(protocol.max_reopen)", peer, distance, state.reopened)
    return found


def owed(node: Node, watch: Watch, now: float | None = None) -> list[str]:
    """The neighbours that do not hold this node's final estimate and need it: one linked
    again since the finish (a member back from a cut: each end forgot the other's estimate),
    or one that sends rounds without holding it. With ``now``, only those not told within a
    re-link interval."""
    r = node.own.round

    def needs(peer: str, link: NeighbourState) -> bool:
        estimate = node.estimates.peers.get(peer)
        return (link.peer_holds < r
                and (link is not watch.links.get(peer) or (estimate is not None
                                                           and not estimate.done))
                and (now is None or now - watch.told.get(peer, -math.inf)
                     >= node.protocol.relink_interval))

    return [p for p, link in node.neighbours.items() if needs(p, link)]


def known_to_linger(node: Node) -> set[str]:
    """The members whose done a lingering node waits for."""
    return (set(node.membership.ids()) | set(node.topology or ()) | node.wanted) - {node.peer_id}


def not_heard_done(node: Node) -> list[str]:
    """Those of them not heard (directly) to be done."""
    return sorted(p for p in known_to_linger(node)
                  if node.member_state.get(p, (-1, None))[1] != NodeStatus.DONE)


def nobody_left(node: Node, watch: Watch, whole: bool) -> bool:
    """Whether the linger can end early (:func:`~gossipfl.node.termination.linger_over`).

    It is asked on every message a lingering node takes, so it walks the members found not
    done last time (``watch.pending``) before it reads every member's status again: at 1,000
    simulated members, each lingering node listing every member on every message took 165 s
    of a run for 2 virtual seconds of lingering. Only a full reading ends the linger (a member
    may have reopened, or been met, since)."""
    told = node.beaten_seq >= node.settle.done_beat
    if not (whole and told) or owed(node, watch):
        return False  # what linger_over would say whatever the statuses
    while watch.checked < len(watch.pending):
        peer = watch.pending[watch.checked]
        if (node.member_state.get(peer, (-1, None))[1] != NodeStatus.DONE
                and (peer in node.membership or peer in (node.topology or ())
                     or peer in node.wanted)):
            return False
        watch.checked += 1
    statuses = [node.member_state[p][1] if p in node.member_state else None
                for p in known_to_linger(node)]
    if termination.linger_over(whole=whole, statuses=statuses, told_cycle=told, owed=False):
        return True
    watch.pending, watch.checked = not_heard_done(node), 0
    return False


async def tell_final(node: Node, watch: Watch) -> None:
    """Send the final estimate (marked done) to each neighbour that does not hold it
    (:func:`owed`), each at most once a re-link interval."""
    now = trio.current_time()
    r = node.own.round
    targets = owed(node, watch, now)
    if not targets:
        return
    async with trio.open_nursery() as nursery:
        for peer in targets:
            watch.told[peer] = now
            nursery.start_soon(send_contribution, node, peer, r, True)


def reopen(node: Node, peer: str, distance: float, peer_round: int) -> None:
    """Go back to consensus rounds: from the later of this node's next round and the
    round ``peer`` sent (so the two keep step), with a fresh round limit from there."""
    state = node.settle
    r = termination.reopen_round(node.own.round, peer_round)
    state.reopened += 1
    state.reopened_at = r
    state.reopens.append({"peer_id": peer, "round": r, "distance": distance,
                          "at": trio.current_time()})
    state.gone = [p for p in state.gone if p not in node.neighbours]
    # a wanted neighbour known to the membership again (back from the cut that reopens this
    # node) is awaited again: the reopened rounds may take no time at all, and must not end
    # before the re-link loop asked it back
    known = {p: p in node.membership for p in state.gone}
    settle.await_again(node, termination.back_from_gone(state.gone, node.neighbours, known,
                                                        state.revivals,
                                                        node.protocol.max_reopen),
                       r, trio.current_time(), "is a member again")
    state.depth, state.waiting, state.waiting_since = 0, 0, None
    node.disagreement = distance
    node.round = r - 1
    node.status = NodeStatus.CONSENSUS
    log.warning("reopening: %s came back with a model %.1e away (tolerance %.0e); consensus "
                "rounds again from round %d (reopening %d of at most %d)", peer, distance,
                node.protocol.consensus_tolerance, r, state.reopened, node.protocol.max_reopen)


async def await_live(node: Node) -> None:
    """After a round of a reopened node whose neighbours all hold done estimates: wait a
    heartbeat at most for one to send a round again (the member that reopened it, or one it
    reopened), rather than spin rounds mixing only fixed estimates."""
    def all_done() -> list[str]:
        peers = node.estimates.peers
        if any(p not in peers or not peers[p].done for p in node.neighbours):
            return []
        return ["all done"]

    await node.wait_for(all_done, trio.current_time() + node.protocol.heartbeat_interval)
