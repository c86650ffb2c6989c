"""Async mode's round logic with a bounded lead, deterministic under trio's MockClock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.config import NodeConfig, ProtocolConfig
from gossipfl.gossip.wire import Contribution
from gossipfl.learning.train import TrainConfig
from gossipfl.node.estimates import OwnEstimate, PeerEstimates
from gossipfl.node.exchange import wait_async
from gossipfl.node.round import aggregate, async_joins_late, async_local_epochs
from gossipfl.node.runtime import NeighbourState, Node

SIZE = 2


def _config(mode: str = "async", max_lead: int = 1, **protocol: Any) -> NodeConfig:
    return NodeConfig(
        train=TrainConfig(local_epochs=4),
        protocol=ProtocolConfig(mode=mode, max_lead=max_lead, round_timeout=5.0, **protocol),
    )


@dataclass
class FakeNode:
    """The parts of a Node that async waiting, pacing and mixing read."""

    neighbours: dict[str, NeighbourState]
    config: NodeConfig = field(default_factory=_config)
    estimates: PeerEstimates = field(default_factory=lambda: PeerEstimates.empty(SIZE))
    own: OwnEstimate = field(default_factory=lambda: OwnEstimate(np.zeros(SIZE, np.float32)))
    changed: trio.Event = field(default_factory=trio.Event)
    async_seen: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "training"
    round: int = -1
    timeouts: int = 0
    reported_examples: int = 0  # unweighted mixing

    @property
    def protocol(self) -> ProtocolConfig:
        return self.config.protocol

    def notify(self) -> None:
        event, self.changed = self.changed, trio.Event()
        event.set()

    wait_for = Node.wait_for  # the real waiting logic, on this fake's event

    def deliver(self, peer: str, r: int, *, value: float = 0.0, training: bool = True) -> None:
        message = Contribution("f", r, peer, "me", 2, "full", -1, 0.5, False, (),
                               training=training)
        self.estimates.apply(message, np.full(SIZE, value, np.float32))
        self.notify()


def _node(*peers: str, **config: Any) -> FakeNode:
    return FakeNode(neighbours={p: NeighbourState() for p in peers}, config=_config(**config))


def _run(fn) -> None:
    trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_training_round_waits_only_for_neighbours_further_behind_than_the_lead() -> None:
    async def main() -> None:
        node = _node("a", "b", "c", "d")
        node.deliver("a", 4)  # one round behind round 5: within a lead of 1
        node.deliver("b", 3)  # two behind: waited for
        node.deliver("c", 9)  # ahead
        # d has not been heard from: a neighbour whose first round is slow is not waited for
        node.estimates.clock = 5
        start = trio.current_time()

        async def deliveries() -> None:
            await trio.sleep(1.0)
            node.deliver("b", 4)

        record: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliveries)
            missing = await wait_async(node, True, start + 5.0, record)
        assert missing == []
        assert trio.current_time() == pytest.approx(start + 1.0)
        assert record["held"] is True

    _run(main)


@pytest.mark.parametrize(
    ("held_a", "missing", "waited", "held"),
    [
        (1, ["a"], 5.0, True),  # still too far behind at the timeout: missing
        (4, [], 0.0, False),  # within the lead (one behind): no wait at all
    ],
)
def test_a_training_round_waits_only_for_neighbours_behind_the_lead(
        held_a: int, missing: list[str], waited: float, held: bool) -> None:
    async def main() -> None:
        node = _node("a", "b")
        node.deliver("a", held_a)
        node.deliver("b", 6)
        node.estimates.clock = 5
        start = trio.current_time()
        record: dict[str, Any] = {}
        assert await wait_async(node, True, start + 5.0, record) == missing
        assert trio.current_time() == pytest.approx(start + waited)
        assert record["held"] is held

    _run(main)


def test_a_consensus_round_waits_as_in_sync_and_for_a_neighbour_not_heard_from() -> None:
    async def main() -> None:
        node = _node("a", "b", "c")
        node.deliver("a", 30)
        node.deliver("b", 29)  # one round behind: waited for in a consensus round
        # c has not been heard from: waited for (the fast must not spin through their
        # consensus rounds before a late joiner has joined), but never counted missing
        node.estimates.clock = 30
        start = trio.current_time()
        missing = await wait_async(node, False, start + 5.0, {})
        assert trio.current_time() == pytest.approx(start + 5.0)
        assert missing == ["b"]

        async def deliveries() -> None:
            await trio.sleep(1.0)
            node.deliver("b", 30)
            await trio.sleep(1.0)
            node.deliver("c", 0)  # c joined: heard from, and far behind
            await trio.sleep(1.0)
            node.deliver("c", 30)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(deliveries)
            missing = await wait_async(node, False, start + 5.0, {})
        assert missing == []
        assert trio.current_time() == pytest.approx(start + 3.0)

    _run(main)


def test_a_late_joiner_skips_to_the_round_its_neighbours_are_in() -> None:
    node = _node("a", "b", "c")
    node.estimates.clock = 0
    node.deliver("a", 19)
    node.deliver("b", 17)
    node.deliver("c", 40, training=False)  # in its consensus rounds: does not count
    node.estimates.clock = 0
    assert node.estimates.peers["a"].arrived == 0
    skipped = [r for r in range(1, 30) if async_joins_late(node, r)]
    assert skipped == list(range(1, 18))  # on at round 18 = 19 − lead: a waits for it
    assert node.round == 17
    # the skipped rounds do not age what it holds
    assert all(e.arrived == 17 for e in node.estimates.peers.values())
    # a neighbour at the bound (our last round + lead + 1) is no reason to skip
    node = _node("a")
    node.deliver("a", 6)
    assert not async_joins_late(node, 5)


def test_a_late_joiner_takes_up_its_neighbours_mean_plus_its_own_last_update() -> None:
    node = _node("a", "b")
    node.estimates.clock = 0  # its round 0 (slow) is over: it published its first update
    node.own.publish(np.array([1.0, 3.0], np.float32), 0)  # from 0: last_delta = [1, 3]
    node.model = np.array([9.0, 9.0], np.float32)
    node.deliver("a", 12, value=2.0)
    node.deliver("b", 10, value=4.0)
    assert async_joins_late(node, 1)
    np.testing.assert_array_equal(node.model, [4.0, 6.0])  # mean [3, 3] + [1, 3]
    node.model = np.zeros(SIZE, np.float32)
    assert async_joins_late(node, 2)  # later skipped rounds leave the model alone
    np.testing.assert_array_equal(node.model, [0.0, 0.0])


@pytest.mark.parametrize("config", [{"mode": "sync"}, {"max_lead": -1}])
def test_no_skipping_in_sync_mode_or_without_a_bounded_lead(config: dict) -> None:
    node = _node("a", **config)
    node.deliver("a", 25)
    assert not any(async_joins_late(node, r) for r in range(1, 30))


def _round(r: int, epochs: float, *, work: float, length: float, held: bool = False) -> dict:
    return {"round": r, "phase": "train", "local_epochs": epochs, "work_seconds": work,
            "round_seconds": length, "held": held}


def test_the_pace_halves_the_work_of_a_node_its_neighbours_wait_for() -> None:
    node = _node("a", "b")
    assert async_local_epochs(node, 0, {}) == 4.0  # nothing measured yet: the configured work
    node.history = [_round(1, 4.0, work=0.3, length=0.4), _round(2, 4.0, work=0.3, length=0.4)]
    node.deliver("a", 4)  # the lead is 1: a at round 4 waits for our round 3
    node.deliver("b", 2)
    record: dict[str, Any] = {}
    assert async_local_epochs(node, 3, record) == 2.0
    assert record["lag"] == 2
    # level again (a at our last round + 1): a step back up
    node.history.append(_round(3, 2.0, work=0.15, length=0.25))
    assert async_local_epochs(node, 4, record) == 3.0
    assert record["lag"] == 1


def test_with_no_lead_a_neighbour_one_round_ahead_is_already_waiting() -> None:
    node = _node("a", max_lead=0)
    node.history = [_round(1, 4.0, work=0.3, length=0.4)]
    node.deliver("a", 2)  # level: a at our last round
    assert async_local_epochs(node, 3, {}) == 4.0
    node.deliver("a", 3)  # a sent round 3 and waits for ours
    assert async_local_epochs(node, 3, {}) == 2.0


def test_the_pace_keeps_the_work_of_a_node_held_up_or_slow_for_another_reason() -> None:
    node = _node("a")
    node.deliver("a", 4)
    node.history = [_round(1, 2.0, work=0.3, length=0.4, held=True)]
    assert async_local_epochs(node, 3, {}) == 3.0  # it waited for a slower neighbour itself
    node.history = [_round(1, 4.0, work=0.05, length=0.4)]
    assert async_local_epochs(node, 3, {}) == 4.0  # its work is a small part of its round


@pytest.mark.parametrize("config", [{"mode": "sync"}, {"pace": False}])
def test_no_pace_in_sync_mode_or_when_turned_off(config: dict) -> None:
    node = _node("a", **config)
    node.deliver("a", 9)
    node.history = [_round(1, 4.0, work=0.3, length=0.4)]
    assert async_local_epochs(node, 3, {}) is None


def test_with_a_bounded_lead_staleness_counts_rounds_and_consensus_mixes_as_in_sync() -> None:
    node = _node("a", "b", staleness_decay=0.5)
    node.deliver("a", 3, value=1.0)  # two rounds older than round 5
    node.deliver("b", 5, value=1.0)
    half = np.zeros(SIZE, np.float32)
    # Metropolis weights 1/3 each (degree 2 everywhere); a's is halved twice
    np.testing.assert_allclose(aggregate(node, half, 5), np.full(SIZE, 1 / 12 + 1 / 3))
    node.status = "consensus"
    np.testing.assert_allclose(aggregate(node, half, 5), np.full(SIZE, 2 / 3))
