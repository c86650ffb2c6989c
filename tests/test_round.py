"""Round timing and liveness, deterministic under trio's MockClock (no real waiting)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.config import ProtocolConfig
from gossipfl.gossip.wire import Contribution
from gossipfl.node.estimates import PeerEstimates
from gossipfl.node.exchange import (
    gone_silent,
    still_working,
    update_liveness,
    wait_for_neighbours,
)
from gossipfl.node.links import drop_neighbour, reset_link
from gossipfl.node.runtime import NeighbourState, Node
from gossipfl.node.termination import SettleState

SIZE = 4


@dataclass
class FakeNode:
    """The parts of a Node that the round's waiting and liveness logic reads."""

    neighbours: dict[str, NeighbourState]
    protocol: ProtocolConfig = field(default_factory=lambda: ProtocolConfig(
        round_timeout=5.0, max_missed_rounds=2, consensus_tolerance=1e-3))
    estimates: PeerEstimates = field(default_factory=lambda: PeerEstimates.empty(SIZE))
    changed: trio.Event = field(default_factory=trio.Event)
    timeouts: int = 0
    disagreement: float = 1.0
    dropped: list = field(default_factory=list)
    behind: int | None = None
    net: None = None  # no network: nothing to disconnect
    linked_at: dict = field(default_factory=dict)
    member_state: dict = field(default_factory=dict)  # (round, status) from heartbeats
    heard_at: dict = field(default_factory=dict)
    settle: SettleState = field(default_factory=SettleState)

    def notify(self) -> None:
        event, self.changed = self.changed, trio.Event()
        event.set()

    wait_for = Node.wait_for  # the real waiting logic, on this fake's event

    def deliver(self, peer: str, r: int, *, done: bool = False,
                disagreement: float = 0.5) -> None:
        message = Contribution("f", r, peer, "me", 2, "full", -1, disagreement, done, ())
        self.estimates.apply(message, np.full(SIZE, r, np.float32))
        self.notify()


def _node(*peers: str) -> FakeNode:
    return FakeNode(neighbours={p: NeighbourState() for p in peers})


def _run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_wait_gives_up_at_the_round_deadline_and_names_the_missing() -> None:
    async def main() -> None:
        node = _node("a", "b")
        start = trio.current_time()
        missing = await wait_for_neighbours(node, 0, start + 5.0)
        assert missing == ["a", "b"]
        assert trio.current_time() == pytest.approx(start + 5.0)
        assert node.timeouts == 1

    _run(main)


def test_wait_returns_as_soon_as_every_neighbour_delivered() -> None:
    async def main() -> None:
        node = _node("a", "b")
        start = trio.current_time()

        async def deliveries() -> None:
            await trio.sleep(1.0)
            node.deliver("a", 0)
            await trio.sleep(1.0)
            node.deliver("b", 0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliveries)
            missing = await wait_for_neighbours(node, 0, start + 5.0)
        assert missing == []
        assert trio.current_time() == pytest.approx(start + 2.0)
        assert node.timeouts == 0

    _run(main)


def test_unreachable_and_finished_neighbours_are_not_waited_for() -> None:
    async def main() -> None:
        node = _node("a", "b", "c")
        node.neighbours["a"].unreachable_round = 3  # sending to it failed this round
        node.deliver("b", 2, done=True)  # finished: its last estimate stays in the mix
        node.deliver("c", 3)
        start = trio.current_time()
        missing = await wait_for_neighbours(node, 3, start + 5.0)
        assert trio.current_time() == start  # nothing to wait for
        assert missing == ["a"]  # still reported missing (it did not deliver)

    _run(main)


def test_a_neighbour_linked_lately_is_waited_for_though_heard_from_long_ago() -> None:
    # at 1,000 members a joining member heartbeats a few others at a time: its neighbours may
    # last have heard it while it joined, seconds before it linked; the link is news of it
    async def main() -> None:
        node = _node("late", "gone")
        node.protocol = ProtocolConfig(round_timeout=5.0, heartbeat_interval=0.5)
        start = trio.current_time()
        node.heard_at.update(late=start - 10.0, gone=start - 10.0)
        node.neighbours["late"].linked_at = start - 0.5
        node.neighbours["gone"].linked_at = start - 10.0

        async def delivery() -> None:
            await trio.sleep(0.75)
            node.deliver("late", 0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(delivery)
            missing = await wait_for_neighbours(node, 0, start + 5.0)
        assert trio.current_time() == pytest.approx(start + 0.75)  # waited for it, not for gone
        assert missing == ["gone"]

        # silent for a few intervals since the link too: no longer waited for
        node.neighbours["late"].linked_at = start - 2.0
        missing = await wait_for_neighbours(node, 1, trio.current_time() + 5.0)
        assert missing == ["gone", "late"]
        assert trio.current_time() == pytest.approx(start + 0.75)

    _run(main)


def test_a_neighbour_gone_silent_is_not_waited_for_the_rest_of_the_round() -> None:
    # heartbeats every 0.5 s (the loop also wakes the wait); a stops at t0, b keeps going and
    # delivers at t0 + 4: the round ends then, not at the 5 s timeout, and names a missing
    async def main() -> None:
        node = _node("a", "b")
        node.protocol = ProtocolConfig(round_timeout=5.0, heartbeat_interval=0.5)
        start = trio.current_time()
        node.heard_at.update(a=start, b=start)

        async def heartbeats() -> None:
            for _ in range(8):
                await trio.sleep(0.5)
                node.heard_at["b"] = trio.current_time()
                node.notify()
            node.deliver("b", 0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeats)
            missing = await wait_for_neighbours(node, 0, start + 5.0)
            ended = trio.current_time()
        assert missing == ["a"]
        assert ended == pytest.approx(start + 4.0)
        assert node.timeouts == 0

    _run(main)


def test_a_silent_neighbour_alone_ends_the_wait_once_silence_is_noticed() -> None:
    async def main() -> None:
        node = _node("a")
        node.protocol = ProtocolConfig(round_timeout=5.0, heartbeat_interval=0.5)
        start = trio.current_time()
        node.heard_at["a"] = start - 1.0  # last heard 1 s ago: silent just after start + 0.5,
        # noticed at the next wake-up

        async def ticks() -> None:  # the heartbeat loop's wake-ups
            for _ in range(4):
                await trio.sleep(0.5)
                node.notify()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticks)
            missing = await wait_for_neighbours(node, 0, start + 5.0)
            ended = trio.current_time()
            nursery.cancel_scope.cancel()
        assert missing == ["a"]
        assert ended == pytest.approx(start + 1.0)

    _run(main)


def test_gone_silent_after_three_heartbeat_intervals_and_never_for_the_unheard() -> None:
    assert not gone_silent(8.5, 10.0, 0.5)  # exactly three intervals
    assert gone_silent(8.4, 10.0, 0.5)
    assert not gone_silent(None, 10.0, 0.5)


def test_a_neighbour_is_dropped_after_max_missed_rounds_in_a_row() -> None:
    async def main() -> None:
        node = _node("a", "b")
        await update_liveness(node, 0, ["a"])
        assert node.neighbours["a"].missed == 1
        await update_liveness(node, 1, [])  # delivered again: the count restarts
        assert node.neighbours["a"].missed == 0
        await update_liveness(node, 2, ["a"])
        await update_liveness(node, 3, ["a"])
        assert "a" not in node.neighbours and "b" in node.neighbours
        assert node.dropped == [{"peer_id": "a", "round": 3, "reason": "missed rounds"}]

    _run(main)


class _SlowChannel:
    """An open stream whose reset takes a while (a peer behind a cut)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def reset(self) -> None:
        await trio.sleep(self.seconds)


class _SlowNet:
    async def disconnect(self, peer: str) -> None:
        await trio.sleep(1.0)


def test_a_link_made_afresh_while_a_round_drops_another_is_neither_lost_nor_judged() -> None:
    # the flake of test_e2e_netcut.py[reset]: a node served a re-link (links.reset_link) while
    # its round's liveness check was dropping another neighbour (drop_neighbour awaits a
    # disconnect); the reset took the peer out of the neighbours while it reset the old
    # stream, the check reached it then, and KeyError ended the node (exit 1)
    async def main() -> None:
        node = _node("a", "b")
        node.net = _SlowNet()  # type: ignore[assignment]
        node.protocol = ProtocolConfig(round_timeout=5.0, max_missed_rounds=2,
                                       relink_interval=0.5)
        for peer in ("a", "b"):
            node.neighbours[peer].missed = 1
        node.neighbours["b"].channel = _SlowChannel(3.0)  # type: ignore[assignment]
        relinked: dict[str, NeighbourState] = {}

        async def relink_b() -> None:
            await trio.sleep(0.2)  # while a's drop awaits its disconnect
            await reset_link(node, "b")  # type: ignore[arg-type]
            relinked["b"] = node.neighbours["b"]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(relink_b)
            await update_liveness(node, 5, ["a", "b"])  # type: ignore[arg-type]
            assert "b" in node.neighbours  # never missing while its old stream is reset
            fresh = node.neighbours["b"]
        assert relinked["b"] is fresh and fresh.missed == 0  # a new link: not this round's
        assert "a" not in node.neighbours
        assert node.dropped == [{"peer_id": "a", "round": 5, "reason": "missed rounds"}]

    _run(main)


def test_a_neighbour_alive_and_waiting_on_its_own_neighbours_is_not_counted_missing() -> None:
    # a cascade of timeouts: b is stuck in the round before ours, waiting for a neighbour of its
    # own that is gone; it heartbeats us all the while, so it is not dropped. a is silent.
    async def main() -> None:
        node = _node("a", "b")
        for r in range(4):
            now = trio.current_time()
            node.member_state["b"] = (r - 2, "training")  # working on round r - 1
            node.heard_at["b"] = now - 0.2
            await update_liveness(node, r, ["a", "b"])
            await trio.sleep(1.0)
        assert "a" not in node.neighbours and "b" in node.neighbours
        assert node.neighbours["b"].missed == 0
        # once it falls further behind, or goes quiet, its misses count again
        node.member_state["b"] = (1, "training")
        node.heard_at["b"] = trio.current_time()
        await update_liveness(node, 4, ["b"])
        assert node.neighbours["b"].missed == 1

    _run(main)


def test_still_working_needs_a_recent_direct_heartbeat_a_close_round_and_a_running_status() -> None:
    interval = 0.5
    assert still_working(9.0, 8, "training", 10.0, 10, interval)
    assert still_working(9.0, 9, "consensus", 10.0, 10, interval)
    assert not still_working(None, 9, "training", 10.0, 10, interval)  # never heard directly
    assert not still_working(8.4, 9, "training", 10.0, 10, interval)  # silent for 1.6 s > 1.5 s
    assert not still_working(9.9, 7, "training", 10.0, 10, interval)  # three rounds behind
    assert not still_working(9.9, 9, "done", 10.0, 10, interval)
    assert not still_working(9.9, 9, "joining", 10.0, 10, interval)


def test_an_unreachable_neighbour_counts_missing_even_if_it_heartbeats() -> None:
    async def main() -> None:
        node = _node("a")
        node.member_state["a"] = (4, "training")
        node.heard_at["a"] = trio.current_time()
        node.neighbours["a"].unreachable_round = 5
        await update_liveness(node, 5, ["a"])
        assert node.neighbours["a"].missed == 1

    _run(main)


def test_wait_ends_early_when_the_neighbours_went_on_without_us() -> None:
    """A neighbour far ahead (we were cut off or paused) ends the wait: catching up beats
    waiting out the round for neighbours that stopped waiting for us."""
    async def main() -> None:
        node = _node("a", "b")
        start = trio.current_time()

        async def news() -> None:
            await trio.sleep(1.0)
            node.behind = 12
            node.notify()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(news)
            missing = await wait_for_neighbours(node, 3, start + 5.0)
        assert trio.current_time() == pytest.approx(start + 1.0)
        assert missing == ["a", "b"]

    _run(main)


def test_a_dropped_neighbour_is_remembered_and_its_estimate_forgotten() -> None:
    async def main() -> None:
        node = _node("a", "b")
        node.deliver("a", 0)
        await drop_neighbour(node, "a", 4, "missed rounds")
        assert list(node.neighbours) == ["b"]
        assert "a" not in node.estimates.peers
        assert node.dropped == [{"peer_id": "a", "round": 4, "reason": "missed rounds"}]
        await drop_neighbour(node, "a", 5, "again")  # already gone: nothing happens
        assert len(node.dropped) == 1

    _run(main)
