"""One heartbeat exchange a cycle per link (membership_loop.answered_lately): the smaller id
heartbeats, the larger one answers and leaves its own heartbeat out while its answers keep
coming, its status unchanged. Its heartbeat comes back as soon as they stop or its status
changes, and no live neighbour is taken for silent because of it (a simulation whose rounds
last several heartbeat intervals)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import trio
import trio.testing
from fake_ends import AnsweringNet, small_node
from sim_scenarios import node_log, scenario_text, simulated

from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.wire import Heartbeat, decode_frame, encode_frame
from gossipfl.node.extras import EXTRA_TURNS, HEARTBEAT_EXTRA, Extras, draw
from gossipfl.node.learner import LearnerPool
from gossipfl.node.membership_loop import (
    ANSWERED_COVERS,
    heartbeat,
    heartbeat_targets,
    on_heartbeat,
    send_heartbeat,
)
from gossipfl.node.runtime import NeighbourState, Node
from gossipfl.node.streams import close_streams


class _Incoming:
    """A membership stream carrying one heartbeat to the node; keeps its answer."""

    def __init__(self, sender: Node, to: Node) -> None:
        self.remote = sender.peer_id
        self.incoming = heartbeat(sender, to.peer_id)
        self.sent: list[Heartbeat] = []

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Heartbeat:
        return decode_frame(encode_frame(self.incoming, max_bytes), expected, max_bytes)

    async def send(self, message: Heartbeat, max_bytes: int, known: Any = None) -> None:
        self.sent.append(message)

    async def reset(self) -> None:
        raise AssertionError("the heartbeat was refused")


def _linked(tmp_path: Path) -> tuple[Node, Node, Node]:
    """Three nodes, each having met the others; the smaller and the larger of the first two
    are neighbours, the third is a member only."""
    nodes = sorted((small_node(tmp_path / name) for name in "abc"), key=lambda n: n.peer_id)
    for node in nodes:
        for i, other in enumerate(nodes):
            if other is not node:
                node.membership.heard_from(other.peer_id, (f"/ip4/127.0.0.1/tcp/{4000 + i}",),
                                           0.0)
        node.status = NodeStatus.TRAINING
    small, large, member = nodes[0], nodes[2], nodes[1]
    small.neighbours[large.peer_id] = NeighbourState()
    large.neighbours[small.peer_id] = NeighbourState()
    for node in nodes:
        node.topology = {node.peer_id: frozenset(node.neighbours)}
    return small, large, member


def test_the_larger_end_answers_instead_of_heartbeating_while_the_smaller_one_does(
        tmp_path: Path) -> None:
    small, large, member = _linked(tmp_path)
    interval = large.protocol.heartbeat_interval
    clock = trio.testing.MockClock()

    async def scenario() -> None:
        # nothing answered yet: each end heartbeats the other
        assert small.peer_id in heartbeat_targets(large)
        assert large.peer_id in heartbeat_targets(small)
        # the smaller end's heartbeat comes and is answered: the larger leaves its own out
        channel = _Incoming(small, large)
        assert await on_heartbeat(large, channel)
        assert len(channel.sent) == 1 and channel.sent[0].sender == large.peer_id
        assert small.peer_id not in heartbeat_targets(large)
        # the smaller end heartbeats every cycle, whatever it answered
        assert await on_heartbeat(small, _Incoming(large, small))
        assert large.peer_id in heartbeat_targets(small)
        # a member that is no neighbour: answering it changes nothing
        assert await on_heartbeat(large, _Incoming(member, large))
        assert member.peer_id not in large.neighbours
        # the smaller end's heartbeats stop: within the covered span, then no longer
        clock.jump(ANSWERED_COVERS * interval * 0.9)
        assert small.peer_id not in heartbeat_targets(large)
        clock.jump(ANSWERED_COVERS * interval * 0.2)
        assert small.peer_id in heartbeat_targets(large)
        # answered again, then the larger end's status changes: it tells at once
        assert await on_heartbeat(large, _Incoming(small, large))
        assert small.peer_id not in heartbeat_targets(large)
        large.status = NodeStatus.CONSENSUS
        assert small.peer_id in heartbeat_targets(large)
        large.status = NodeStatus.DONE  # done: every member, the neighbour among them
        assert small.peer_id in heartbeat_targets(large, done=True)

    trio.run(scenario, clock=clock)


def test_the_members_beyond_the_neighbours_are_kept_for_turns_on_open_streams(
        tmp_path: Path) -> None:
    node = small_node(tmp_path / "me", rng=random.Random(4))
    others = [small_node(tmp_path / f"m{i}") for i in range(6)]
    for i, other in enumerate(others):
        node.membership.heard_from(other.peer_id, (f"/ip4/127.0.0.1/tcp/{4100 + i}",), 0.0)
    node.topology = {node.peer_id: frozenset()}  # links formed; no neighbour here
    net = AnsweringNet({o.peer_id: o for o in others}, node)
    node.net = net  # type: ignore[assignment]
    extras = Extras()

    async def cycles() -> list[tuple[str, ...]]:
        drawn = []
        for _ in range(3 * EXTRA_TURNS):
            targets = heartbeat_targets(node, extras=extras)
            drawn.append(tuple(sorted(targets)))
            for peer, addrs in targets.items():
                assert await send_heartbeat(node, peer, addrs, extras.holder(peer))
            for held in extras.released():
                await close_streams(held)
        return drawn

    drawn = trio.run(cycles)
    turns = [drawn[i:i + EXTRA_TURNS] for i in range(0, len(drawn), EXTRA_TURNS)]
    assert all(len(set(turn)) == 1 and len(turn[0]) == HEARTBEAT_EXTRA for turn in turns)
    assert len({turn[0] for turn in turns}) > 1  # drawn again after each turn
    # a stream a member a turn at most, every heartbeat of the turn on it
    assert len(net.opened) <= 3 * HEARTBEAT_EXTRA
    assert sum(c.heard for c in net.opened) == 3 * EXTRA_TURNS * HEARTBEAT_EXTRA
    assert all(c.heard % EXTRA_TURNS == 0 for c in net.opened)
    # those no longer drawn had their streams closed; the last turn's are still open
    open_now = [c for c in net.opened if not c.closed]
    assert sorted(c.remote for c in open_now) == sorted(drawn[-1])


def test_a_member_beyond_the_neighbours_that_fails_is_replaced_at_once() -> None:
    extras, rng = Extras(), random.Random(0)
    members = [f"m{i}" for i in range(10)]
    first = extras.pick(rng, members, lambda _: True)
    extras.drop(first[0])
    second = extras.pick(rng, members, lambda _: True)
    assert extras.turns == EXTRA_TURNS - 1 and second is not first
    extras.drop("someone else")  # not drawn: no effect
    assert extras.pick(rng, members, lambda _: True) is second


def test_a_draw_asks_about_a_handful_of_members_not_the_whole_table() -> None:
    members = [f"m{i:04d}" for i in range(1000)]
    asked: list[str] = []

    def ok(peer: str) -> bool:
        asked.append(peer)
        return peer != "m0000"

    picked = draw(random.Random(1), members, 4, ok)
    assert len(set(picked)) == 4 and "m0000" not in picked
    assert len(asked) <= 2 * 4 + 8  # a cycle's cost does not grow with the table


def test_a_draw_is_uniform_over_the_members_that_pass_and_finds_rare_ones() -> None:
    rng = random.Random(2)
    members = [f"m{i}" for i in range(30)]
    passing = set(members[5:11])
    counts = Counter(p for _ in range(3000)
                     for p in draw(rng, members, 2, lambda p: p in passing))
    assert set(counts) == passing
    # 6,000 picks over 6 members: 1,000 each; a bias of a tenth is far outside chance
    assert all(abs(n - 1000) < 100 for n in counts.values())
    # one passing member among 1,000: the bounded tries give up and the scan finds it
    rare = [f"r{i}" for i in range(1000)]
    assert draw(rng, rare, 2, lambda p: p == "r777") == ["r777"]


def test_rounds_longer_than_the_silence_span_take_no_live_neighbour_for_silent(
        tmp_path: Path, pool: LearnerPool) -> None:
    # an epoch of training costs 4 heartbeat intervals here, longer than the 3 that make a
    # neighbour silent: every neighbour must still be heard through the answers alone
    text = scenario_text(name="answers", nodes=6, rounds=6, topology="regular", degree=4,
                         round_timeout=6.0)
    report = simulated(tmp_path, text, pool, epoch_seconds=2.0)
    nodes = report["nodes"]
    assert [n["status"] for n in nodes] == ["done"] * 6
    assert all(not n["dropped_neighbours"] for n in nodes)
    assert all(n["timeouts"] == 0 for n in nodes)
    for i in range(6):
        assert "no contribution from" not in node_log(tmp_path, i)
        assert "missing 0" in node_log(tmp_path, i)
    assert all(n["rounds_completed"] >= 6 for n in nodes)
