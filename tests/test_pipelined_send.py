"""A round's send returns once its frames are written; the acks are read in the background, and
the next send to a neighbour waits for the last one's ack (exchange.py). A neighbour's
heartbeats share one kept-open stream, and a node that becomes done heartbeats every member
(membership_loop.py)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing
from fake_ends import AnsweringNet, NoNet, QuietEnd, meet, small_node

from gossipfl.gossip.codes import AckCode, NodeStatus
from gossipfl.gossip.wire import Ack, Contribution
from gossipfl.node.exchange import close_channels, send_to_neighbours
from gossipfl.node.membership_loop import (
    DONE_FANOUT,
    HEARTBEAT_EXTRA,
    heartbeat_loop,
    heartbeat_targets,
    send_heartbeat,
)
from gossipfl.node.runtime import NeighbourState, Node


def _node(tmp_path: Path, rng: random.Random | None = None) -> Node:
    return small_node(tmp_path, rng=rng)


class _SlowAcks(QuietEnd):
    """A neighbour's end of our contribution stream that acks a frame only when told to."""

    def __init__(self, remote: str) -> None:
        self.remote = remote
        self.sent: list[Contribution] = []
        self.release: list[trio.Event] = []

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        self.sent.append(message)
        self.release.append(trio.Event())

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        index = len(self.sent) - 1
        await self.release[index].wait()
        return Ack("fed", self.sent[index].round, self.remote, AckCode.OK, "")

_Net = NoNet


def _started(nursery: trio.Nursery, node: Node, r: int, *, done: bool) -> trio.Event:
    """Start round ``r``'s send in ``nursery``; the event is set when it returns."""
    returned = trio.Event()

    async def send() -> None:
        await send_to_neighbours(node, r, done=done)
        returned.set()

    nursery.start_soon(send)
    return returned


def test_a_round_goes_on_before_the_ack_and_the_next_send_waits_for_it(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.status = NodeStatus.TRAINING
    peer = _SlowAcks("a")
    node.neighbours["a"] = NeighbourState(channel=peer)  # type: ignore[arg-type]
    node.net = _Net()  # type: ignore[assignment]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node.background = nursery
            node.own.publish(node.model, 0)
            with trio.fail_after(5):
                await send_to_neighbours(node, 0, done=False)  # returns, its ack unread
            assert [(m.round, m.base_round) for m in peer.sent] == [(0, -1)]
            assert node.neighbours["a"].peer_holds == -1

            # round 1 publishes and sends while round 0's ack is still outstanding: its frame
            # is not written before that ack says what the neighbour holds (and so a
            # neighbour that stopped answering holds our next round, as a silent relayed link
            # must for it to be found: writing on without the ack was measured to gain nothing
            # and to leave tests/test_e2e_relay_faults.py's sites with two models; README)
            node.own.publish(node.model + 1.0, 1)
            round1 = _started(nursery, node, 1, done=False)
            await trio.testing.wait_all_tasks_blocked()
            assert not round1.is_set() and len(peer.sent) == 1
            peer.release[0].set()
            with trio.fail_after(5):
                await round1.wait()
            assert node.neighbours["a"].peer_holds == 0
            # taken against what the ack said: a delta on round 0's estimate
            assert (peer.sent[1].round, peer.sent[1].kind, peer.sent[1].base_round) \
                == (1, "delta", 0)

            # the final send waits for every ack
            peer.release[1].set()
            node.own.publish(node.model + 1.0, 2)
            done = _started(nursery, node, 2, done=True)
            await trio.testing.wait_all_tasks_blocked()
            assert len(peer.sent) == 3 and not done.is_set()
            peer.release[2].set()
            with trio.fail_after(5):
                await done.wait()
            assert node.neighbours["a"].peer_holds == 2
            nursery.cancel_scope.cancel()

    trio.run(main)


class _Breaks(_SlowAcks):
    """A stream that breaks while we wait for the ack of its first frame."""

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        await self.release[0].wait()
        raise ConnectionError("stream reset")


class _Reopens(_Net):
    def __init__(self, fresh: _SlowAcks) -> None:
        self.fresh = fresh

    async def open(self, peer: str, addrs: tuple[str, ...], protocol: str) -> _SlowAcks:
        return self.fresh


def test_a_resend_after_the_round_went_on_carries_that_rounds_estimate(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.status = NodeStatus.TRAINING
    broken, fresh = _Breaks("a"), _SlowAcks("a")
    node.neighbours["a"] = NeighbourState(channel=broken)  # type: ignore[arg-type]
    node.net = _Reopens(fresh)  # type: ignore[assignment]
    node.addrs_of = lambda peer: ()  # type: ignore[method-assign]

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node.background = nursery
            round0 = node.own.publish(node.model + 0.5, 0).copy()
            estimate0 = node.own.vector.copy()
            with trio.fail_after(5):
                await send_to_neighbours(node, 0, done=False)
            node.own.publish(node.model + 3.0, 1)  # the round went on
            broken.release[0].set()  # round 0's stream breaks before its ack
            await trio.testing.wait_all_tasks_blocked()
            # sent again on a fresh stream: round 0's delta on the same base, not round 1's
            (again,) = fresh.sent
            assert (again.round, again.base_round) == (0, -1)
            sent = node.layout.from_tensors(again.tensors)
            np.testing.assert_array_equal(sent, round0)
            assert not np.array_equal(sent, node.own.last_delta)
            fresh.release[0].set()
            await trio.testing.wait_all_tasks_blocked()
            assert node.neighbours["a"].peer_holds == 0
            assert not np.array_equal(estimate0, node.own.vector)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_send_to_a_neighbour_dropped_meanwhile_ends_quietly(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.status = NodeStatus.TRAINING
    node.net = _Net()  # type: ignore[assignment]
    node.own.publish(node.model, 0)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            node.background = nursery
            node.neighbours["a"] = NeighbourState(channel=_SlowAcks("a"))  # type: ignore[arg-type]
            # the target list is taken, then the neighbour goes before its send task starts
            from gossipfl.node import exchange

            real = exchange.send_targets
            try:
                exchange.send_targets = lambda n: ["a", "gone"]  # type: ignore[assignment]
                with trio.fail_after(5):
                    await send_to_neighbours(node, 0, done=False)
            finally:
                exchange.send_targets = real
            nursery.cancel_scope.cancel()

    trio.run(main)  # no KeyError escapes into the node's nursery


_meet = meet


def test_a_node_that_becomes_done_heartbeats_every_member(tmp_path: Path) -> None:
    node = _node(tmp_path, rng=random.Random(3))
    peers = _meet(node, 12)
    node.topology = {node.peer_id: frozenset(peers)}  # links formed: the regular cycle
    for peer in peers[:4]:
        node.neighbours[peer] = NeighbourState()
    regular = set(heartbeat_targets(node))
    assert regular >= set(peers[:4]) and len(regular) == 4 + HEARTBEAT_EXTRA
    assert set(heartbeat_targets(node, done=True)) == set(peers)


def test_the_done_heartbeat_is_capped_in_a_large_federation(tmp_path: Path) -> None:
    node = _node(tmp_path, rng=random.Random(3))
    peers = _meet(node, DONE_FANOUT + 40)
    node.topology = {node.peer_id: frozenset(peers)}
    chosen = set(heartbeat_targets(node, done=True))
    assert len(chosen) == DONE_FANOUT and chosen <= set(peers)


class _Unreachable:
    """A transport that notes when each stream is opened, and refuses it."""

    def __init__(self) -> None:
        self.opened: list[tuple[float, str]] = []

    async def open(self, peer: str, addrs: tuple[str, ...], protocol: str) -> Any:
        self.opened.append((trio.current_time(), peer))
        raise OSError("unreachable")

    async def disconnect(self, peer: str) -> None:
        pass


def test_the_done_heartbeats_are_spread_over_the_interval(tmp_path: Path) -> None:
    """A federation that finishes at one instant (simulated, every member at once) must not
    hold every member's DONE_FANOUT exchanges in flight together: one node's done heartbeats
    leave one at a time across its interval, the regular cycle after them all at once."""
    node = _node(tmp_path, rng=random.Random(3))
    peers = _meet(node, 12)
    node.topology = {node.peer_id: frozenset(peers)}
    node.status = NodeStatus.DONE
    net = _Unreachable()
    node.net = net  # type: ignore[assignment]
    interval = node.protocol.heartbeat_interval

    async def main() -> None:
        with trio.move_on_after(interval * 2.5):  # the done cycle, then one regular
            await heartbeat_loop(node)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    told = [t for t, _ in net.opened if t < interval]
    assert sorted(p for t, p in net.opened if t < interval) == sorted(peers)  # every member
    assert len(set(told)) == len(peers)  # no two at one instant
    assert max(told) - min(told) >= interval * (len(peers) - 1) / len(peers) - 1e-9
    regular = [t for t, _ in net.opened if t >= interval]
    assert len(regular) == HEARTBEAT_EXTRA and len(set(regular)) == 1  # then at once


def test_a_neighbours_heartbeats_share_one_kept_open_stream(tmp_path: Path) -> None:
    node, neighbour, other = (_node(tmp_path / name) for name in ("a", "b", "c"))
    net = AnsweringNet({neighbour.peer_id: neighbour, other.peer_id: other}, node)
    node.net = net  # type: ignore[assignment]
    node.neighbours[neighbour.peer_id] = NeighbourState()

    async def main() -> None:
        for _ in range(3):
            await send_heartbeat(node, neighbour.peer_id, ())
            await send_heartbeat(node, other.peer_id, ())

    trio.run(main)
    kept = [c for c in net.opened if c.remote == neighbour.peer_id]
    fresh = [c for c in net.opened if c.remote == other.peer_id]
    # one stream to the neighbour, three heartbeats on it, still open; one a heartbeat to
    # the member that is no neighbour, each closed after its answer
    assert len(kept) == 1 and kept[0].heard == 3 and not kept[0].closed
    assert len(fresh) == 3 and all(c.heard == 1 and c.closed for c in fresh)
    # every answer was taken: both are members heard from directly
    assert node.membership.is_direct(neighbour.peer_id) and node.membership.is_direct(
        other.peer_id)


class _RelinkOnClose(QuietEnd):
    """Our stream to a neighbour whose close lets another task re-link a neighbour (as the
    re-link loop may while a finishing node closes its streams)."""

    def __init__(self, node: Node, newcomer: str) -> None:
        self.node, self.newcomer, self.closed = node, newcomer, False

    async def close(self) -> None:
        await trio.sleep(0)
        self.node.neighbours[self.newcomer] = NeighbourState()
        self.closed = True


def test_closing_the_streams_survives_a_relink_meanwhile(tmp_path: Path) -> None:
    # found in CI: "dictionary changed size during iteration" as a finishing node closed its
    # streams and a neighbour was re-linked in the same instant; the node then exited 1
    node = _node(tmp_path)
    ends = {}
    for peer in ("peer-a", "peer-b"):
        ends[peer] = _RelinkOnClose(node, f"new-{peer}")
        node.neighbours[peer] = NeighbourState(channel=ends[peer])  # type: ignore[arg-type]

    trio.run(close_channels, node)
    assert all(end.closed for end in ends.values())
    assert all(node.neighbours[p].channel is None for p in ends)
    assert {"new-peer-a", "new-peer-b"} <= set(node.neighbours)
