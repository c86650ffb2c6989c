"""Links made late, on two real nodes over the in-memory transport under a MockClock: a
neighbour linked after a round's send is handed the current estimate at once
(``exchange.hand_over``), and link formation waits for a wanted member still joining; and
how a large federation's joining members are logged.

Without it the two wait for each other: a member that finished joining last links with a
neighbour already past its round-0 send (in round 1, having sent round 1 to the others); the
member sends its round 0 and waits for the neighbour's round 0, which is never sent again,
while the neighbour waits for the member's round 1: both sit out the round timeout (at 1,000
simulated members, a minute of virtual time that costs most of an hour of wall)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from fake_ends import small_node

from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.memory import MemoryNetwork
from gossipfl.gossip.wire import Heartbeat, MemberInfo
from gossipfl.node.exchange import needs_hand_over, send_contribution
from gossipfl.node.links import form_links, links_settled, request_link
from gossipfl.node.membership_loop import NAMED_MEMBERS, absorb
from gossipfl.node.runtime import Node


def _nodes(tmp_path: Path, count: int) -> list[Node]:
    network = MemoryNetwork()
    nodes = [small_node(tmp_path / f"n{i}", node_index=i) for i in range(count)]
    for node in nodes:
        node.network = network
    return nodes


def _pair(tmp_path: Path) -> tuple[Node, Node, MemoryNetwork]:
    first, second = _nodes(tmp_path, 2)
    assert first.network is not None
    return first, second, first.network  # type: ignore[return-value]


def _run(a: Node, b: Node, body: Callable[[], Awaitable[None]]) -> None:
    _run_all([a, b], body)


def _run_all(nodes: list[Node], body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                node.net = node.make_transport()
                await nursery.start(_serve, node)
            with trio.fail_after(300):  # virtual seconds
                await body()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def _serve(node: Node, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                 ) -> None:
    assert node.net is not None
    async with node.net.running() as addrs, trio.open_nursery() as nursery:
        node.background = nursery
        node.addrs = addrs
        node.serve_protocols(node.net)
        task_status.started()
        await trio.sleep_forever()


def _ready(node: Node, peer: Node, rounds: int) -> None:
    """``node`` formed its links, ran ``rounds`` rounds (published its estimate of each and
    sent it to its other neighbours) and wants ``peer`` as a neighbour."""
    node.topology = {node.peer_id: frozenset({peer.peer_id})}
    node.wanted = {peer.peer_id}
    node.addr_book[peer.peer_id] = (f"/memory/{peer.peer_id}",)
    node.status = NodeStatus.TRAINING
    for r in range(rounds):
        node.own.publish(node.model + np.float32(r + 1), r)


def test_a_member_that_links_after_its_neighbours_round_0_send_gets_that_round(
        tmp_path: Path) -> None:
    late, early, _ = _pair(tmp_path)
    _ready(early, late, 2)  # finished round 0; round 1 published and sent to the others
    _ready(late, early, 0)  # still joining: nothing published yet
    late.status = NodeStatus.JOINING

    async def body() -> None:
        await request_link(late, early.peer_id, set(), joining=True)
        await trio.testing.wait_all_tasks_blocked()
        assert early.peer_id in late.neighbours and late.peer_id in early.neighbours
        # nothing published by the joiner; the neighbour hands over only once the link is
        # known at both ends (the joiner's first contribution says so)
        assert late.estimates.holds(early.peer_id) == -1
        assert early.traffic.messages_sent == 1  # the link reply

        late.status = NodeStatus.TRAINING
        late.own.publish(late.model + np.float32(5.0), 0)  # the joiner's round 0
        await send_contribution(late, early.peer_id, 0, done=False)
        await trio.testing.wait_all_tasks_blocked()
        assert early.estimates.holds(late.peer_id) == 0
        # handed over: the neighbour's round 1, which the joiner's round-0 wait accepts
        assert late.estimates.holds(early.peer_id) == 1
        np.testing.assert_array_equal(late.estimates.peers[early.peer_id].vector,
                                      early.own.vector)
        assert early.neighbours[late.peer_id].peer_holds == 1
        assert not needs_hand_over(early, late.peer_id)

        # the neighbour's round-1 send, should it come now, finds it held and sends nothing
        sent = early.traffic.messages_sent
        await send_contribution(early, late.peer_id, 1, done=False)
        assert early.traffic.messages_sent == sent

    _run(late, early, body)


def test_a_link_made_again_mid_round_hands_over_both_ways(tmp_path: Path) -> None:
    """Both ends past round 3's send when they link again (after a cut): the one that asked
    sends its round 3 once the link is accepted, the other answers with its own."""
    asker, other, _ = _pair(tmp_path)
    _ready(asker, other, 4)
    _ready(other, asker, 4)

    async def body() -> None:
        await request_link(asker, other.peer_id, set(), repair=True)
        await trio.testing.wait_all_tasks_blocked()
        assert other.estimates.holds(asker.peer_id) == 3
        assert asker.estimates.holds(other.peer_id) == 3
        for node, peer in ((asker, other), (other, asker)):
            np.testing.assert_array_equal(node.estimates.peers[peer.peer_id].vector,
                                          peer.own.vector)
            assert node.neighbours[peer.peer_id].sent_round == 3

    _run(asker, other, body)


def test_no_hand_over_before_anything_is_published_or_under_secure_aggregation(
        tmp_path: Path) -> None:
    node, peer, _ = _pair(tmp_path)
    _ready(node, peer, 0)
    from gossipfl.node.state import NeighbourState

    node.neighbours[peer.peer_id] = NeighbourState()
    assert not needs_hand_over(node, peer.peer_id)  # nothing published
    node.own.publish(node.model, 0)
    assert needs_hand_over(node, peer.peer_id)
    node.status = NodeStatus.DONE  # its final send goes to every neighbour anyway
    assert not needs_hand_over(node, peer.peer_id)
    node.status = NodeStatus.CONSENSUS
    node.neighbours[peer.peer_id].sent_round = 0  # the round's send to it started
    assert not needs_hand_over(node, peer.peer_id)
    node.neighbours[peer.peer_id].sent_round = -1
    object.__setattr__(node.config.secagg, "enabled", True)  # masked inputs only
    assert not needs_hand_over(node, peer.peer_id)
    assert not needs_hand_over(node, "stranger")


def test_a_wanted_member_still_joining_says_so_and_formation_waits_for_it(
        tmp_path: Path) -> None:
    asker, joiner, _ = _pair(tmp_path)
    _ready(asker, joiner, 0)
    asker.status = NodeStatus.JOINING
    joiner.status = NodeStatus.JOINING  # no topology yet: it answers NOT_READY

    async def body() -> None:
        refused: set[str] = set()
        joining: dict[str, float] = {}
        await request_link(asker, joiner.peer_id, refused, not_ready=joining)
        assert joining == {joiner.peer_id: trio.current_time()}
        assert not refused and joiner.peer_id not in asker.neighbours
        # three links made, none new for settle_seconds: go on without it, unless it
        # answered within them
        assert not links_settled(3, 3.0, stop_waiting=3.0, joining=[0.0])
        assert links_settled(3, 3.0, stop_waiting=3.0, joining=[3.0])

        joiner.topology = {joiner.peer_id: frozenset({asker.peer_id})}
        joiner.wanted = {asker.peer_id}
        await request_link(asker, joiner.peer_id, refused, not_ready=joining)
        assert joiner.peer_id in asker.neighbours and asker.peer_id in joiner.neighbours

    _run(asker, joiner, body)


def test_new_members_are_named_in_a_small_federation_and_counted_in_a_large_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = small_node(tmp_path)
    node.membership.heard_from("reporter", ("/memory/reporter",), 0.0)

    def beat(names: list[str]) -> Heartbeat:
        members = tuple(MemberInfo(name, (f"/memory/{name}",), 0.0) for name in names)
        return Heartbeat("fed", "reporter", ("/memory/reporter",), members, 0, len(members),
                         "joining")

    async def main() -> None:
        with caplog.at_level(logging.INFO, logger="gossipfl.node"):
            absorb(node, beat([f"a{i}" for i in range(3)]))
            named = [r.getMessage() for r in caplog.records]
            assert [m for m in named if m.startswith("new member a")] == [
                f"new member a{i} (via reporter)" for i in range(3)]
            caplog.clear()
            absorb(node, beat([f"b{i}" for i in range(NAMED_MEMBERS + 10)]))
            lines = [r.getMessage() for r in caplog.records]
        assert not any(m.startswith("new member") for m in lines)
        assert f"{NAMED_MEMBERS + 10} new member(s) via reporter ({len(node.membership)} in " \
               "the table)" in lines
        assert len(node.membership) == 1 + 3 + NAMED_MEMBERS + 10

    trio.run(main, clock=trio.testing.MockClock())


def test_a_member_that_never_stops_answering_still_joining_holds_formation_only_join_timeout(
        tmp_path: Path) -> None:
    """A deviating member of the topology answers "still joining" to every link request: its
    neighbour waits for it (no new link for settle_seconds is not enough to give up), but for
    at most join_timeout, then goes on with the links it has."""
    asker, good, stubborn = _nodes(tmp_path, 3)
    stubborn.status = NodeStatus.JOINING  # never gets a topology: NOT_READY to everyone
    for peer in (good, stubborn):
        asker.membership.heard_from(peer.peer_id, (f"/memory/{peer.peer_id}",), 0.0)
        asker.addr_book[peer.peer_id] = (f"/memory/{peer.peer_id}",)
    _ready(good, asker, 0)

    async def body() -> None:
        start = trio.current_time()
        await form_links(asker)
        waited = trio.current_time() - start
        assert asker.wanted == {good.peer_id, stubborn.peer_id}  # both in its topology
        assert set(asker.neighbours) == {good.peer_id}
        timeout = asker.protocol.join_timeout
        assert asker.config.settle_seconds < timeout  # it waited past settle_seconds...
        assert timeout <= waited <= timeout + 1.0  # ...but not past join_timeout

    _run_all([asker, good, stubborn], body)
