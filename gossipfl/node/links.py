"""Neighbour links: forming them (from the topology, or as a late joiner), the link protocol's
handler, re-linking lost neighbours, replacing departed ones, and dropping a neighbour.

The topology is the federation's from its start (build_topology over the members found, saved
so that a restart finds the same neighbours); a late joiner, or a node whose neighbours left for
good, asks running members for an extra link instead. A dropped neighbour stays wanted: the
re-link loop asks it back. A fixed graph (``topology.kind = "edges"``, :mod:`.graph`) has no
extra links: a node links with its listed neighbours only, whenever they come.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from typing import TYPE_CHECKING

import trio

from gossipfl.config import Mode
from gossipfl.gossip.codes import RUNNING, LinkCode, NodeStatus
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, LinkReply, LinkRequest
from gossipfl.node import settle
from gossipfl.node.graph import is_fixed, listed_neighbours, may_link, topology_over
from gossipfl.node.resume import save_topology, saved_members, saved_neighbours
from gossipfl.node.state import NeighbourState, Node, NodeError
from gossipfl.node.streams import close_streams

if TYPE_CHECKING:
    from gossipfl.gossip.peers import Channel

log = logging.getLogger("gossipfl.node")

PROTO_LINK = "/gossipfl/link/1.0.0"
BACKOFF_CAP = 4  # a lost neighbour that does not answer is asked at most every 4 intervals


def topology_digest(node: Node) -> str:
    members = sorted(node.topology or {})
    return hashlib.blake2b("\n".join(members).encode(), digest_size=8).hexdigest()


def known_members(node: Node, *, heard_of: bool = False) -> list[str]:
    """Members to build the topology over. With admission on: those admitted (certificate
    presented, not revoked), and with ``heard_of`` also those only heard of whose relayed
    certificate verified and whose own signed liveness stamp we hold (the federation's first
    topology: in a federation of hundreds a node hears from each member directly only after
    many heartbeat intervals; the stamp is the member's own signature for this federation, so
    a relay cannot make it up, and a stale one replayed makes no progress and is pruned after
    ``member_timeout``). With admission off: those heard from directly (an id only heard of
    may have been made up)."""
    if node.security.enabled:
        table = node.membership
        return node.security.admitted_among(
            table.ids(), (lambda p: table.stamp_key(p) is not None) if heard_of else None)
    return [p for p in node.membership.ids() if node.membership.is_direct(p)]


def federation_running(node: Node) -> bool:
    """Some member we heard from directly is already past link formation (we are late)."""
    return any((status in RUNNING or status == NodeStatus.DONE) and round_ >= 0
               for round_, status in node.member_state.values())


def running_members(node: Node) -> list[str]:
    """Members heard to be training or in consensus, in an order of this node's own (a hash
    of both ids), so that nodes asking for links at once spread over different members."""
    return sorted(
        (p for p in known_members(node)
         if node.member_state.get(p, (-1, None))[1] in RUNNING),
        key=lambda p: hashlib.blake2b(f"{node.peer_id}/{p}".encode()).digest(),
    )


async def form_links(node: Node) -> None:
    # The topology is the federation's from its start: a node that restarts reuses the member
    # set and the neighbours it saved then, so it finds the same neighbours, who still have
    # it in theirs.
    saved = saved_members(node)
    if saved is None and federation_running(node):
        await join_late(node)
        return
    members = saved or [node.peer_id, *known_members(node, heard_of=True)]
    node.topology = topology_over(node, members)
    kept = saved_neighbours(node) if saved else None
    node.wanted = set(kept or node.topology[node.peer_id])
    node.degree_target = len(node.topology[node.peer_id])
    node.link_cap = node.degree_target + node.protocol.extra_links
    save_topology(node, members)
    settle.note_topology(node, len(members))
    wanted = set(node.wanted)
    log.info("topology %s over %d members: %d neighbour(s) wanted",
             node.config.topology.kind, len(members), len(wanted))
    if not wanted and is_fixed(node):
        log.warning("none of this node's listed neighbours (topology.edges: %s) is among the "
                    "%d members: it holds its rounds until one links (or gone_seconds pass)",
                    ", ".join(sorted(listed_neighbours(node))), len(members))
        return
    refused: set[str] = set()
    joining: dict[str, float] = {}  # wanted members that answered "still joining", and when
    last_change, linked = trio.current_time(), 0
    with trio.move_on_after(node.protocol.join_timeout):
        while wanted - set(node.neighbours) - refused:
            # one still joining is asked again a heartbeat later, not every tenth of a second:
            # it asks us itself once it has its topology
            now = trio.current_time()
            ask = [p for p in sorted(wanted - set(node.neighbours) - refused)
                   if now - joining.get(p, -math.inf) >= node.protocol.heartbeat_interval]
            async with trio.open_nursery() as nursery:
                for peer in ask:
                    nursery.start_soon(functools.partial(request_link, node, peer, refused,
                                                         not_ready=joining))
            now = trio.current_time()
            if len(node.neighbours) != linked:
                last_change, linked = now, len(node.neighbours)
            if links_settled(linked, now - last_change, stop_waiting=node.config.settle_seconds,
                             joining=[now - at for p, at in joining.items()
                                      if p not in node.neighbours]):
                break
            if wanted - set(node.neighbours) - refused:
                await trio.sleep(0.1)
    missing = wanted - set(node.neighbours)
    if missing:
        log.warning("links not confirmed with %s", ", ".join(sorted(missing)))
    if not node.neighbours:
        raise NodeError("no neighbour confirmed a link; refusing to train alone")
    log.info("neighbours: %s", ", ".join(sorted(node.neighbours)))


def links_settled(linked: int, quiet: float, *, stop_waiting: float,
                  joining: list[float]) -> bool:
    """Whether link formation goes on with the ``linked`` links it has, none new for
    ``quiet`` seconds: the wanted members still unlinked are taken for gone (one that left)
    after ``stop_waiting`` seconds, rather than waiting out the join timeout; but not while
    one of them answered "still joining" within the last ``stop_waiting`` seconds
    (``joining``: how long ago each did). Such a member is alive and links in moments; rounds
    begun without it run ahead of it, and it then waits a round timeout or more for them.

    >>> links_settled(3, 3.0, stop_waiting=3.0, joining=[])
    True
    >>> links_settled(3, 3.0, stop_waiting=3.0, joining=[0.5, 4.0])
    False
    >>> links_settled(0, 9.0, stop_waiting=3.0, joining=[])  # none yet: wait on
    False
    """
    answering = any(ago < stop_waiting for ago in joining)
    return linked > 0 and quiet >= stop_waiting and not answering


def late_degree(node: Node) -> int:
    """How many neighbours a late joiner looks for: its degree in a topology of the same
    kind over the members it found."""
    topology = topology_over(node, [node.peer_id, *known_members(node)])
    return max(1, len(topology[node.peer_id]))


async def join_late(node: Node) -> None:
    """Join a federation already training: ask members (in an order of our own, so joiners
    spread out) to take us as an extra neighbour, until we have our degree of them."""
    if node.config.secagg.enabled:
        raise NodeError("the federation is already training and secure aggregation needs "
                        "the topology fixed at formation: a late joiner cannot take part")
    node.joined_late = True
    degree = late_degree(node)
    everyone = running_members(node)
    running = [p for p in everyone if may_link(node, p)]  # a fixed graph: listed ones only
    # first our own neighbours in the topology over every member we know: a founding member
    # that settled moments after the others is in theirs (they kept its place), and it
    # may know of only a few running members yet; the running ones in our order after them
    known = known_members(node, heard_of=True)
    own = sorted(p for p in topology_over(node, [node.peer_id, *known])[node.peer_id]
                 if may_link(node, p))
    log.warning("joining late: the federation is already training; asking up to %d of %d "
                "running member(s) (after %d of this node's own) for a link", degree,
                len(running), len(own))
    node.topology = {node.peer_id: frozenset()}
    refused: set[str] = set()
    with trio.move_on_after(node.protocol.join_timeout):
        queue = own + [p for p in running if p not in own]
        while queue and len(node.neighbours) < degree:
            need = degree - len(node.neighbours)
            batch, queue = queue[:need], queue[need:]
            async with trio.open_nursery() as nursery:
                for peer in batch:
                    nursery.start_soon(functools.partial(
                        request_link, node, peer, refused, joining=True))
    if not node.neighbours and is_fixed(node):
        log.warning("joining late: none of this node's listed neighbours (topology.edges) took "
                    "it: it holds its rounds until one links (or gone_seconds pass)")
    elif not node.neighbours:
        raise NodeError(f"joining late: none of the {len(running)} running member(s) took "
                        "this node as a neighbour; refusing to train alone")
    # a fixed graph: the listed neighbours running are wanted, those that did not answer yet too
    node.wanted = set(node.neighbours) | (set(running) if is_fixed(node) else set())
    node.degree_target = degree
    node.link_cap = len(node.wanted) + node.protocol.extra_links
    # the horizon: a fixed graph's over the members running, else the joiner's own links
    node.topology = topology_over(node, [node.peer_id, *everyone]) if is_fixed(node) \
        else {node.peer_id: frozenset(node.wanted)}
    save_topology(node, [node.peer_id, *everyone])
    # the member count bounds the horizon (and the neighbours' it takes on): every member
    # known, not the running ones alone (at 1,000 simulated members a joiner that had heard of
    # one running member finished at depth 2, and its neighbours' depths never reached theirs)
    settle.note_topology(node, len(set(known) | set(everyone)) + 1)
    log.info("neighbours: %s", ", ".join(sorted(node.neighbours)))


async def request_link(node: Node, peer: str, refused: set[str], *, joining: bool = False,
                       repair: bool = False, not_ready: dict[str, float] | None = None) -> None:
    """Ask ``peer`` for a link; a refusal goes into ``refused``, a "still joining" answer's
    time into ``not_ready`` (when given)."""
    rejoin = node.resumed_from is not None or repair
    if node.security.enabled and not node.security.presented(peer):
        # known only by hearsay: it may not have our certificate either, and a link stream
        # from a peer it cannot admit is reset unread; a heartbeat exchange admits both ways
        await node.greet(peer)
    request = LinkRequest(node.config.federation, node.peer_id, topology_digest(node),
                          node.round, rejoin=rejoin, joining=joining)
    with trio.move_on_after(node.protocol.request_timeout):
        try:
            async with node.channel_to(peer, PROTO_LINK) as channel:
                await channel.send(request, MAX_CONTROL_BYTES)
                reply = await channel.receive(LinkReply, MAX_CONTROL_BYTES)
        except Exception as error:
            log.debug("link request to %s failed: %s", peer, error)
            return
        if not node.check_origin(channel, "link reply", reply.federation, reply.sender):
            return
        if reply.status == LinkCode.ACCEPTED:
            if joining or repair:
                await reset_link(node, peer)
            else:
                node.neighbours.setdefault(peer, NeighbourState(linked_at=trio.current_time()))
            # linked after our round's send: it gets our estimate now (it registered the link
            # before it answered); the other end sends its own once ours arrives
            node.hand_over(peer)
            if repair:
                node.relinks += 1
                log.warning("re-linked with neighbour %s (it is at round %d, this node at "
                            "%d)", peer, reply.round, node.round)
                note_peer_round(node, peer, reply.round, NodeStatus.TRAINING)
        elif reply.status == LinkCode.NOT_READY and not_ready is not None:
            not_ready[peer] = trio.current_time()
        elif reply.status == LinkCode.REJECTED:
            log.log(logging.INFO if repair or joining else logging.WARNING,
                    "%s refused a link: %s", peer, reply.reason)
            refused.add(peer)


async def reset_link(node: Node, peer: str) -> None:
    """Start a link afresh: each end forgets what it held of the other (a restart, a
    repair after an outage, a late joiner), so the next contributions are full estimates.
    A link reset moments ago (both ends asked at once) is kept as it is."""
    now = trio.current_time()
    if peer in node.neighbours and now - node.linked_at.get(peer, -math.inf) < \
            node.protocol.relink_interval:
        return
    # the new link in place before anything awaits: the peer is never missing from the
    # neighbours meanwhile (a round's liveness check or a send would take it for dropped)
    old = node.neighbours.get(peer)
    node.neighbours[peer] = NeighbourState(linked_at=now)
    node.estimates.forget(peer)
    node.linked_at[peer] = now
    node.notify()
    if old is not None and old.channel is not None:
        await old.channel.reset()
    if old is not None:
        await close_streams(old, reset=True)


async def relink(node: Node, peer: str) -> None:
    """A neighbour restarted or comes back after an outage: it lost our estimate (or we
    dropped it) and we drop the one we held of it."""
    await reset_link(node, peer)
    node.rejoins_served += 1
    log.warning("neighbour %s rejoined after a restart or an outage", peer)


async def relink_loop(node: Node) -> None:
    """Ask lost neighbours back: a neighbour dropped for missed rounds (it paused, or a
    partition cut it off) that answers again is linked afresh. Each ask is one stream under
    the request timeout; one that refused is left alone for a while. One the membership
    forgot (silent for ``member_timeout``) may be gone for good, or behind a partition that
    will heal, so it is still asked (a node that gave up on it would leave a healed partition
    apart), with backoff: after each unanswered ask the wait doubles, up to four intervals, and
    it is asked at once when it shows a sign of life (a heartbeat straight from it wakes this
    loop: a healed partition is re-linked within a heartbeat). While such neighbours
    leave this node short of its degree, it links with other members too
    (``replace_departed``). A done node that lingers (linger.py) asks its lost neighbours back
    too, finished ones included (they may linger as well), and takes no replacement."""
    interval = node.protocol.relink_interval
    while True:
        with trio.move_on_after(interval):
            await node.relink_now.wait()  # set when a lost neighbour heartbeats us again
        node.relink_now = trio.Event()
        lingering = node.settle.lingering  # done, and serving: asks its lost neighbours too
        if not node.status.running and not lingering:
            continue
        now = trio.current_time()
        lost = [p for p in sorted(node.wanted - set(node.neighbours))
                if node.relink_refused.get(p, -math.inf) <= now
                and (lingering or node.member_state.get(p, (-1, None))[1] != NodeStatus.DONE)
                and relink_due(node, p, now)]
        if lost:
            refused: set[str] = set()
            async with trio.open_nursery() as nursery:
                for peer in lost:
                    nursery.start_soon(functools.partial(request_link, node, peer,
                                                         refused, repair=True))
            for peer in refused:
                node.relink_refused[peer] = now + 10 * interval
            for peer in lost:
                failures = node.relink_failures.get(peer, (0, now))[0]
                if peer in node.neighbours or peer in refused:
                    node.relink_failures.pop(peer, None)
                else:  # no answer: back off (it may be gone, or behind a cut)
                    node.relink_failures[peer] = (failures + 1, now)
        for peer in [p for p in node.relink_failures if p in node.neighbours]:
            del node.relink_failures[peer]
        if not node.config.secagg.enabled and not lingering:
            await replace_departed(node, now)


def relink_delay(failures: int, interval: float, cap: int = BACKOFF_CAP) -> float:
    """Seconds to wait before asking a lost neighbour back after ``failures`` asks in a row
    that got no answer: the interval, doubled each time, at most ``cap`` intervals.

    >>> [relink_delay(n, 2.0) for n in range(6)]
    [0.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    """
    if failures <= 0:
        return 0.0
    return interval * min(2 ** (failures - 1), cap)


def relink_due(node: Node, peer: str, now: float) -> bool:
    """Whether to ask ``peer`` back now: its backoff has passed, or it has shown a sign of
    life (a heartbeat, a newer liveness stamp) since the last ask went unanswered."""
    failures, last = node.relink_failures.get(peer, (0, -math.inf))
    if failures == 0:
        return True
    alive_at = node.membership.live_at(peer)
    if alive_at is not None and alive_at > last:
        return True
    return now - last >= relink_delay(failures, node.protocol.relink_interval)


def replacement_candidates(node: Node, now: float) -> list[str]:
    """Running members we are not linked with, leaving out those that refused lately."""
    return [p for p in running_members(node)
            if p not in node.wanted and node.extra_refused.get(p, -math.inf) <= now]


async def replace_departed(node: Node, now: float) -> None:
    """Neighbours gone for good (the membership forgot them: silent for
    ``member_timeout``) that leave this node short of its degree are replaced: it asks other
    running members for an extra link, as a late joiner does, one per missing neighbour. A
    departed neighbour stays wanted; if it comes back it is linked again, above the degree
    (up to the link cap). A fixed graph has no replacement: its listed links are all there is."""
    if is_fixed(node):
        return
    gone = sorted(p for p in node.wanted - set(node.neighbours) if p not in node.membership)
    need = min(len(gone), node.degree_target - len(node.neighbours))
    if need <= 0:
        return
    candidates = replacement_candidates(node, now)[:need]
    if not candidates:
        return
    before = set(node.neighbours)
    refused: set[str] = set()
    async with trio.open_nursery() as nursery:
        for peer in candidates:
            nursery.start_soon(functools.partial(request_link, node, peer, refused,
                                                 joining=True))
    for peer in refused:
        node.extra_refused[peer] = now + 10 * node.protocol.relink_interval
    new = sorted(set(node.neighbours) - before - node.wanted)
    if not new:
        return
    node.wanted.update(new)
    save_topology(node, saved_members(node) or [node.peer_id, *node.wanted])
    for peer in new:
        node.replacements.append({"peer_id": peer, "round": node.round, "replacing": gone})
        settle.note_extra_link(node)
    log.warning("round %d: neighbour(s) %s gone for good; linked with %s instead",
                node.round, ", ".join(gone), ", ".join(new))


def note_peer_round(node: Node, peer: str, round_: int, status: NodeStatus) -> None:
    """A neighbour told us its round. In the synchronous protocol a neighbour can be more
    than a round or two ahead only if it stopped waiting for us (we were cut off, paused or
    dropped): then pulling its state beats dragging the average back."""
    if (node.protocol.mode is not Mode.SYNC or peer not in node.neighbours
            or status not in RUNNING or not node.status.running):
        return
    ahead = round_ - node.round > node.protocol.catch_up_rounds
    if ahead and (node.behind is None or round_ > node.behind):
        node.behind = round_
        node.notify()


async def drop_neighbour(node: Node, peer: str, r: int, reason: str) -> None:
    """Stop waiting for ``peer`` (it stays wanted: the re-link loop asks it back)."""
    state = node.neighbours.pop(peer, None)
    if state is None:
        return
    node.estimates.forget(peer)
    node.linked_at.pop(peer, None)
    node.settle.missing_since[peer] = trio.current_time()  # gone_seconds count from now
    node.dropped.append({"peer_id": peer, "round": r, "reason": reason})
    node.notify()
    if state.channel is not None:
        await state.channel.reset()
    await close_streams(state, reset=True)
    if node.net is not None:
        # a connection that went silent (a partition that drops packets, a frozen peer)
        # would carry the next re-link request into the void: start from a fresh dial
        with trio.move_on_after(node.protocol.request_timeout):
            await node.net.disconnect(peer)
    if not node.neighbours:
        log.error("no neighbours left: this node holds its round and re-links until one "
                  "comes back%s", " (allow_alone: it trains alone meanwhile)"
                  if node.protocol.allow_alone else "")


async def on_link(node: Node, channel: Channel) -> None:
    request = await channel.receive(LinkRequest, MAX_CONTROL_BYTES)
    if not node.check_origin(channel, "link request", request.federation, request.sender):
        return
    if not node.security.is_member(request.sender):
        node.reject(request.sender, "link request", "not_member", "no valid certificate")
        status, reason = LinkCode.REJECTED, "no valid certificate seen"
    elif node.topology is None:
        status, reason = LinkCode.NOT_READY, "still joining"
    elif node.status == NodeStatus.DONE and not (node.settle.lingering
                                                 and request.sender in node.wanted):
        status, reason = LinkCode.REJECTED, "finished"  # a lingering node takes its own back
    elif request.sender in node.wanted:
        status, reason = LinkCode.ACCEPTED, ""
        if request.rejoin:
            await relink(node, request.sender)
        else:
            node.neighbours.setdefault(request.sender,
                                            NeighbourState(linked_at=trio.current_time()))
    elif is_fixed(node) and may_link(node, request.sender) and not node.config.secagg.enabled:
        status, reason = LinkCode.ACCEPTED, ""
        take_listed(node, request.sender)
        await reset_link(node, request.sender)
    elif request.joining:
        status, reason = take_joiner(node, request.sender)
        if status == LinkCode.ACCEPTED:
            await reset_link(node, request.sender)
    else:
        status, reason = LinkCode.REJECTED, "not a neighbour in my topology"
    await channel.send(
        LinkReply(node.config.federation, node.peer_id, status, reason, node.round),
        MAX_CONTROL_BYTES
    )
    if status == LinkCode.ACCEPTED:
        note_peer_round(node, request.sender, request.round, NodeStatus.TRAINING)


def take_joiner(node: Node, peer: str) -> tuple[LinkCode, str]:
    """A late joiner asks to be our neighbour: yes while we have room (degree + extra)."""
    if node.config.secagg.enabled:
        return LinkCode.REJECTED, "secure aggregation: the topology is fixed at formation"
    if is_fixed(node):
        return LinkCode.REJECTED, "not a link of the fixed graph (topology.edges)"
    if len(node.neighbours) >= node.link_cap:
        return LinkCode.REJECTED, f"no room: {len(node.neighbours)} neighbours already"
    node.wanted.add(peer)
    save_topology(node, saved_members(node) or [node.peer_id, *node.wanted])
    settle.note_extra_link(node)
    log.warning("took %s as an extra neighbour, a late joiner or one replacing a departed "
                "neighbour (%d neighbours now)", peer, len(node.neighbours) + 1)
    return LinkCode.ACCEPTED, ""


def take_listed(node: Node, peer: str) -> None:
    """A fixed graph's listed neighbour outside this node's topology so far (a late joiner, or
    one it did not know of at formation) asks for its link: it is a neighbour like the others,
    and the topology (hence the horizon) is the listed graph over the members with it."""
    node.wanted.add(peer)
    node.topology = topology_over(node, [*(node.topology or {}), node.peer_id, peer])
    save_topology(node, sorted(node.topology))
    settle.note_topology(node, len(node.topology))
    log.warning("took %s, a listed neighbour (topology.edges) not linked at formation "
                "(%d neighbours now)", peer, len(node.neighbours) + 1)
