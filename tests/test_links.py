"""Links that change during a run, on real node objects without a network: neighbours far ahead
(catch up), late joiners taken while there is room, links reset afresh, the saved topology."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from fake_ends import QuietEnd, meet, small_node

from gossipfl.config import DataConfig, ModelConfig, NodeConfig, ProtocolConfig, SecAggConfig
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.codes import LinkCode, NodeStatus
from gossipfl.gossip.wire import Contribution, LinkReply, LinkRequest
from gossipfl.node import state_sync
from gossipfl.node.estimates import PeerEstimate
from gossipfl.node.graph import topology_over
from gossipfl.node.learner import LocalLearner
from gossipfl.node.links import (
    drop_neighbour,
    federation_running,
    join_late,
    note_peer_round,
    reset_link,
    take_joiner,
)
from gossipfl.node.resume import saved_neighbours
from gossipfl.node.runtime import NeighbourState, Node
from gossipfl.node.settle import Verdict, judge
from gossipfl.node.state_sync import catch_up_now, consensus_round


def _node(tmp_path: Path, *, mode: str = "sync", extra_links: int = 2,
          secagg: bool = False) -> Node:
    key_file = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key_file)
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path),
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        protocol=ProtocolConfig(mode=mode, extra_links=extra_links, relink_interval=2.0),
    )
    node = Node(config, identity, LocalLearner(config))
    if secagg:  # only the flag is read here; a full secagg set-up needs admission keys
        node.config = replace(config, secagg=SecAggConfig())
        object.__setattr__(node.config.secagg, "enabled", True)
    node.status = "training"
    return node


def test_a_neighbour_far_ahead_means_this_node_fell_behind(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.neighbours["a"] = NeighbourState()
    node.round = 10
    note_peer_round(node, "a", 12, "training")  # one or two ahead: normal in sync rounds
    assert node.behind is None
    note_peer_round(node, "b", 20, "training")  # not a neighbour: its round says nothing
    note_peer_round(node, "a", 20, "done")  # finished: it is not waiting for anyone
    assert node.behind is None
    note_peer_round(node, "a", 13, "training")
    assert node.behind == 13
    note_peer_round(node, "a", 12, "consensus")  # an older report never lowers the target
    assert node.behind == 13


def test_async_nodes_drift_apart_by_design_and_never_jump(tmp_path: Path) -> None:
    node = _node(tmp_path, mode="async")
    node.neighbours["a"] = NeighbourState()
    node.round = 3
    note_peer_round(node, "a", 30, "training")
    assert node.behind is None


def test_late_joiners_are_taken_while_there_is_room(tmp_path: Path) -> None:
    node = _node(tmp_path, extra_links=1)
    node.topology = {node.peer_id: frozenset({"a", "b"})}
    node.wanted = {"a", "b"}
    node.link_cap = 3
    node.neighbours = {"a": NeighbourState(), "b": NeighbourState()}
    assert take_joiner(node, "late1") == ("accepted", "")
    assert "late1" in node.wanted
    node.neighbours["late1"] = NeighbourState()
    status, reason = take_joiner(node, "late2")
    assert status == "rejected" and "no room" in reason
    assert "late2" not in node.wanted
    # the joiner is saved with the topology, so a restart links with it again
    saved = json.loads((tmp_path / "topology.json").read_text())
    assert saved["neighbours"] == sorted(["a", "b", "late1"])
    assert sorted(saved_neighbours(node) or []) == ["a", "b", "late1"]


def test_secure_aggregation_takes_no_late_joiner(tmp_path: Path) -> None:
    node = _node(tmp_path, secagg=True)
    node.topology, node.link_cap = {node.peer_id: frozenset()}, 4
    status, reason = take_joiner(node, "late")
    assert status == "rejected" and "secure aggregation" in reason


def test_saved_neighbours_fall_back_to_the_saved_member_set(tmp_path: Path) -> None:
    node = _node(tmp_path)
    members = [node.peer_id, "p1", "p2", "p3", "p4"]
    (tmp_path / "topology.json").write_text(json.dumps({"members": members}))
    neighbours = saved_neighbours(node)
    assert neighbours is not None and 1 <= len(neighbours) <= 4
    assert set(neighbours) <= set(members) - {node.peer_id}
    (tmp_path / "topology.json").write_text("{not json")
    assert saved_neighbours(node) is None


def test_the_federation_is_running_once_a_member_reports_a_round(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.member_state = {"a": (-1, "joining"), "b": (-1, "training")}
    assert not federation_running(node)
    node.member_state["c"] = (4, "training")
    assert federation_running(node)


def test_a_reset_link_starts_afresh_once_even_when_both_ends_ask(tmp_path: Path) -> None:
    async def main() -> None:
        node = _node(tmp_path)
        node.neighbours["a"] = NeighbourState(peer_holds=7, missed=2)
        message = Contribution("fed", 7, "a", node.peer_id, 2, "full", -1, 0.5, False, ())
        node.estimates.apply(message, np.zeros(node.layout.size, np.float32))
        await reset_link(node, "a")
        assert node.neighbours["a"].peer_holds == -1  # our next contribution is full
        assert "a" not in node.estimates.peers
        # the other end's request arrives a moment later: the fresh link is kept as it is
        node.neighbours["a"].peer_holds = 8
        await trio.sleep(0.5)
        await reset_link(node, "a")
        assert node.neighbours["a"].peer_holds == 8
        await trio.sleep(2.0)  # later resets (a second outage) start afresh again
        await reset_link(node, "a")
        assert node.neighbours["a"].peer_holds == -1

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("status", ["training", "consensus"])
def test_dropping_a_neighbour_keeps_it_wanted_for_the_relink_loop(tmp_path: Path,
                                                                  status: str) -> None:
    async def main() -> None:
        node = _node(tmp_path)
        node.status = status
        node.wanted = {"a", "b"}
        node.neighbours = {"a": NeighbourState(), "b": NeighbourState()}
        await drop_neighbour(node, "a", 5, "missed rounds")
        assert node.wanted - set(node.neighbours) == {"a"}
        assert node.dropped[-1] == {"peer_id": "a", "round": 5, "reason": "missed rounds"}

    trio.run(main)


def test_the_round_to_jump_to_is_the_upper_median_of_the_neighbours() -> None:
    assert consensus_round([7]) == 7
    assert consensus_round([7, 9]) == 9
    assert consensus_round([12, 12, 10**6]) == 12  # one far-off claim does not carry us away
    assert consensus_round([3, 12, 12, 10**6]) == 12


def _pulled(node: Node, rounds: dict[str, int]) -> dict[str, tuple[int, np.ndarray]]:
    return {p: (r, np.full(node.layout.size, float(r), np.float32)) for p, r in rounds.items()}


@pytest.mark.parametrize(
    ("rounds", "jump", "model"),
    [
        ({"a": 20, "b": 22, "c": 5}, 20, 21.0),  # most are ahead: mean of those ahead
        ({"a": 10**6, "b": 5, "c": 6}, 10, 0.0),  # one far-off claim: stay (model untouched)
        ({}, 10, 0.0),  # nobody answered: stay
    ],
)
def test_catching_up_mid_run_follows_most_neighbours(tmp_path: Path, rounds: dict[str, int],
                                                     jump: int, model: float,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path)
    node.model = np.zeros(node.layout.size, np.float32)
    node.round, node.behind = 9, 25

    async def pull(_: Node) -> dict[str, tuple[int, np.ndarray]]:
        return _pulled(node, rounds)

    monkeypatch.setattr(state_sync, "pull_neighbourhood", pull)
    assert trio.run(catch_up_now, node, 10) == jump
    assert node.behind is None
    np.testing.assert_allclose(node.model, model)
    if jump > 10:
        assert node.round == jump - 1
        assert node.catch_ups == [{"from_round": 10, "to_round": jump, "neighbours": 2,
                                   "why": "behind"}]
    else:
        assert node.round == 9 and node.catch_ups == []


class _LinkAnswers:
    """A transport whose every link request is answered ``accepted`` by the member asked;
    records whom the node asked, in order."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def open(self, peer: str, addrs: tuple[str, ...], protocol: str) -> Any:
        self.asked.append(peer)
        return _Accepting(peer)

    async def disconnect(self, peer: str) -> None:
        pass


class _Accepting(QuietEnd):
    def __init__(self, remote: str) -> None:
        self.remote = remote

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        assert isinstance(message, LinkRequest) and message.joining

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        return LinkReply("fed", self.remote, LinkCode.ACCEPTED, "", 3)


def test_a_member_settling_after_the_others_asks_its_own_topology_neighbours_first(
        tmp_path: Path) -> None:
    """Seen at 1,000 simulated members: a founding member that knew every member moments after
    its neighbours began training took the late path and, hearing of one running member only,
    linked with that one alone (a chain the consensus crawled along). Its own neighbours in the
    topology over the members it knows come first: they kept its place."""
    node = small_node(tmp_path)
    peers = meet(node, 24)
    own = topology_over(node, [node.peer_id, *peers])[node.peer_id]
    assert 0 < len(own) < len(peers)
    running = next(p for p in peers if p not in own)  # the one member heard running
    node.member_state = {running: (2, NodeStatus.TRAINING)}
    assert federation_running(node)
    net = _LinkAnswers()
    node.net = net  # type: ignore[assignment]

    async def main() -> None:
        await join_late(node)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert set(net.asked) == set(own) and set(node.neighbours) == set(own)
    assert node.joined_late and node.wanted == set(own)
    # the horizon is bounded by every member it knows, not by the one heard running: with 2
    # it finished at depth 2 while its neighbours counted to 9 (their depths then stalled)
    assert node.settle.members == len(peers) + 1
    node.estimates.peers = {p: PeerEstimate(np.zeros(3, np.float32), 31, len(own), 0.0, False,
                                            depth=2, horizon=9) for p in own}
    node.disagreement = 0.0
    verdict = trio.run(_judge, node, clock=trio.testing.MockClock())
    assert (verdict, node.settle.depth, node.settle.horizon) == (Verdict.GO_ON, 3, 9)


async def _judge(node: Node) -> Verdict:
    return judge(node, 31)
