"""A done node's lingering and reopening, the rules (gossipfl.node.termination: reopen_decision,
linger_time, reopen_round) and what a lingering node makes of its neighbours' contributions
(gossipfl.node.linger: who is back, who came back with another model)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.config import ConfigError, ProtocolConfig
from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.wire import Contribution
from gossipfl.node import linger, settle
from gossipfl.node.estimates import OwnEstimate, PeerEstimates
from gossipfl.node.exchange import send_targets
from gossipfl.node.state import NeighbourState
from gossipfl.node.termination import (
    Reopen,
    SettleState,
    back_from_gone,
    linger_time,
    reopen_decision,
    reopen_round,
)

TOL = 1e-4
FAR, NEAR = 3e-2, 5e-5


def decide(*, missing: bool = False, seen_done: bool = False, done_now: bool = True,
           distance: float = FAR, wanted: bool = True, reopened: int = 0) -> Reopen:
    return reopen_decision(wanted=wanted, missing_at_finish=missing, seen_done=seen_done,
                           done_now=done_now, distance=distance, tolerance=TOL,
                           reopened=reopened, max_reopen=3)


def test_a_member_missing_at_the_finish_that_comes_back_with_another_model_reopens() -> None:
    assert decide(missing=True) is Reopen.REOPEN  # its final (done) estimate, far away
    assert decide(missing=True, done_now=False) is Reopen.REOPEN  # still in its rounds
    assert decide(missing=True, distance=NEAR) is Reopen.STAY  # it agrees: nothing to do
    assert decide(missing=True, distance=TOL) is Reopen.STAY  # "more than" the tolerance
    assert decide(missing=True, distance=float("nan")) is Reopen.STAY
    assert decide(missing=True, wanted=False) is Reopen.STAY  # not a neighbour it wants


def test_a_neighbour_seen_done_that_sends_rounds_again_reopens_it() -> None:
    assert decide(seen_done=True, done_now=False) is Reopen.REOPEN  # it reopened itself
    assert decide(seen_done=True, done_now=True) is Reopen.STAY  # its final estimate again
    assert decide(seen_done=True, done_now=False, distance=NEAR) is Reopen.STAY


def test_a_neighbour_there_at_the_finish_and_finishing_itself_is_no_news() -> None:
    # its last rounds cross this node's done announcement: whatever they say, no reopening
    assert decide(done_now=False) is Reopen.STAY
    assert decide(done_now=True) is Reopen.STAY


def test_reopenings_are_bounded_by_max_reopen() -> None:
    assert decide(missing=True, reopened=2) is Reopen.REOPEN
    assert decide(missing=True, reopened=3) is Reopen.SPENT
    assert decide(missing=True, reopened=3, distance=NEAR) is Reopen.STAY
    assert reopen_decision(wanted=True, missing_at_finish=True, seen_done=False, done_now=True,
                           distance=FAR, tolerance=TOL, reopened=0,
                           max_reopen=0) is Reopen.SPENT


def test_linger_time_is_long_only_when_members_were_absent() -> None:
    assert linger_time(10.0, absent=2, heartbeat_interval=0.5) == 10.0
    assert linger_time(10.0, absent=0, heartbeat_interval=0.5) == 1.0
    assert linger_time(0.4, absent=0, heartbeat_interval=0.5) == 0.4
    assert linger_time(0.0, absent=2, heartbeat_interval=0.5) == 0.0  # off: stop at once


def test_a_reopened_node_keeps_step_with_the_member_that_reopened_it() -> None:
    assert reopen_round(41, 4) == 42  # a member far behind: the node goes on from its own
    assert reopen_round(4, 41) == 41  # one far ahead: it joins that member's round
    assert reopen_round(10, 11) == 11


@pytest.mark.parametrize("settings", [{"linger_seconds": -1.0},
                                      {"linger_seconds": float("inf")},
                                      {"linger_seconds": float("nan")},
                                      {"max_reopen": -1}])
def test_linger_settings_are_checked(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=r"linger_seconds|max_reopen"):
        ProtocolConfig(**settings)
    assert ProtocolConfig(linger_seconds=0.0, max_reopen=0).linger_seconds == 0.0


# -- what a lingering node makes of what arrives ------------------------------------------------


@dataclass
class DoneNode:
    """What linger.look and linger.absent_members read of a node that has finished."""

    neighbours: dict[str, NeighbourState]
    wanted: set[str]
    model: np.ndarray = field(default_factory=lambda: np.ones(4, np.float32))
    peer_id: str = "me"
    topology: dict[str, frozenset[str]] | None = None
    membership: set[str] = field(default_factory=set)
    member_state: dict[str, tuple[int, NodeStatus]] = field(default_factory=dict)
    protocol: ProtocolConfig = field(default_factory=lambda: ProtocolConfig(
        consensus_tolerance=TOL, max_reopen=3))
    estimates: PeerEstimates = field(default_factory=lambda: PeerEstimates.empty(4))
    settle: SettleState = field(default_factory=SettleState)
    own: OwnEstimate = field(default_factory=lambda: OwnEstimate(np.ones(4, np.float32), 11))
    status: NodeStatus = NodeStatus.DONE
    round: int = 10
    disagreement: float = 0.0
    relink_now: trio.Event = field(default_factory=trio.Event)
    heard_at: dict[str, float] = field(default_factory=dict)

    def hear(self, peer: str, r: int, offset: float, *, done: bool) -> None:
        message = Contribution("f", r, peer, "me", 2, "full", -1, 1e-6, done, (),
                               training=False)
        self.estimates.apply(message, self.model + np.float32(offset))


def test_look_reopens_for_a_member_back_with_another_model_not_for_one_there_all_along(
        ) -> None:
    node = DoneNode(neighbours={"b": NeighbourState()}, wanted={"b", "x"})
    node.hear("b", 10, 0.0, done=True)
    node.settle.gone = ["x"]
    watch = linger.Watch.at_finish(node)
    assert watch.missing == {"x"} and watch.seen_done == {"b"}
    node.hear("b", 11, 0.5, done=True)  # b, there at the finish, sends its final estimate again
    assert linger.look(node, watch) is None
    # x is linked again (a new link) and sends its final estimate, far off: reopen
    node.neighbours["x"] = NeighbourState()
    assert linger.look(node, watch) is None  # linked, nothing heard yet: back, no reopening
    assert node.settle.gone == []
    node.hear("x", 4, 0.5, done=True)
    peer, distance, round_ = linger.look(node, watch)
    assert (peer, round_) == ("x", 4)
    assert distance == pytest.approx(0.5)

    async def reopen() -> None:
        linger.reopen(node, peer, distance, round_)

    trio.run(reopen)
    # consensus again, after its done announcement (round 11): rounds go on numbering
    assert node.status is NodeStatus.CONSENSUS
    assert (node.round, node.settle.reopened_at, node.settle.reopened) == (11, 12, 1)
    assert node.settle.reopens[0]["peer_id"] == "x" and node.settle.depth == 0


def test_look_reopens_for_a_neighbour_seen_done_that_sends_a_round_again() -> None:
    node = DoneNode(neighbours={"b": NeighbourState()}, wanted={"b"})
    node.hear("b", 10, 0.0, done=False)  # still in its rounds at this node's finish
    watch = linger.Watch.at_finish(node)
    node.hear("b", 11, 0.3, done=False)  # its last round, crossing our done: no news
    assert linger.look(node, watch) is None
    node.member_state["b"] = (12, NodeStatus.DONE)  # its heartbeat: done
    assert linger.look(node, watch) is None
    node.hear("b", 14, 0.3, done=False)  # then a round again: it reopened
    assert linger.look(node, watch)[0] == "b"


def test_members_absent_at_the_finish() -> None:
    topology = {m: frozenset() for m in ("me", "a", "b", "c", "d")}
    node = DoneNode(neighbours={"a": NeighbourState()}, wanted={"a", "b"}, topology=topology,
                    membership={"a", "b", "c"})
    node.member_state["d"] = (30, NodeStatus.DONE)  # forgotten, but it said it was done
    assert linger.absent_members(node) == []
    node.settle.gone = ["b"]  # finished without it
    node.membership.discard("c")  # silent for member_timeout
    assert linger.absent_members(node) == ["b", "c"]


# -- a member back from a cut is awaited again, and sent rounds ---------------------------------


def test_back_from_gone_takes_the_unlinked_alive_ones_under_the_cap() -> None:
    alive = {"a": True, "b": False, "c": True, "d": True}
    assert back_from_gone(["a", "b", "c", "d"], ["d"], alive, {"c": 2}, 3) == ["a", "c"]
    assert back_from_gone(["a", "b", "c", "d"], ["d"], alive, {"c": 3}, 3) == ["a"]
    assert back_from_gone(["a"], [], alive, {}, 0) == []  # max_reopen 0: never again


def run_at(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` inside trio with a virtual clock at ``seconds``."""
    clock = trio.testing.MockClock()
    clock.jump(seconds)

    async def main() -> Any:
        return fn()

    return trio.run(main, clock=clock)


def test_a_reopening_awaits_again_a_wanted_member_known_again_not_one_still_gone() -> None:
    # found in the simulated two-halves test: the reopened rounds took no time at all, and
    # the node finished its round limit before its re-link loop asked back the wanted
    # neighbour the membership already knew again; the report named it as finished without
    node = DoneNode(neighbours={"b": NeighbourState()}, wanted={"b", "x", "y"},
                    membership={"b", "x"})
    node.settle.gone = ["x", "y"]
    node.settle.missing_since = {"x": 1.0, "y": 1.0}
    run_at(20.0, lambda: linger.reopen(node, "b", 0.5, 12))
    assert node.settle.gone == ["y"]  # y: the membership does not know it (still silent)
    assert node.settle.missing_since["x"] == 20.0  # awaited gone_seconds from the reopening
    assert node.settle.revivals == {"x": 1}
    assert node.relink_now.is_set()  # and asked back at once


class Members(set):
    """A membership that says when each member last proved itself alive."""

    live: dict[str, float]

    def live_at(self, peer: str) -> float | None:
        return self.live.get(peer)


def test_a_member_taken_for_gone_that_proves_itself_alive_is_awaited_again_a_bounded_times(
        ) -> None:
    members = Members({"x"})
    members.live = {"x": 3.0}
    node = DoneNode(neighbours={"b": NeighbourState()}, wanted={"b", "x"}, membership=members,
                    status=NodeStatus.CONSENSUS)
    gone_after = settle.gone_seconds(node)
    node.settle.missing_since = {"x": 0.0}
    assert run_at(gone_after + 1, lambda: settle.missing(node, 5, gone_after + 1)) == []
    assert node.settle.gone == ["x"]  # missing too long: gone for good
    taken = gone_after + 1
    assert run_at(taken + 1, lambda: settle.missing(node, 6, taken + 1)) == []
    members.live["x"] = taken + 1.5  # a newer liveness stamp: it is alive (a healed cut)
    for k in range(1, 4):
        now = taken + 2 * k * gone_after
        members.live["x"] = now - 0.5
        assert run_at(now, lambda now=now: settle.missing(node, 7, now)) == ["x"], k
        assert node.settle.gone == [] and node.settle.revivals["x"] == k
        # it never links: gone again once gone_seconds pass
        later = now + gone_after + 0.5
        run_at(later, lambda later=later: settle.missing(node, 8, later))
        assert node.settle.gone == ["x"]
    # max_reopen (3) times at most: a member that proves itself alive but never links
    members.live["x"] = taken + 100 * gone_after
    run_at(taken + 100 * gone_after, lambda: settle.missing(node, 9, taken + 100 * gone_after))
    assert node.settle.gone == ["x"] and node.settle.revivals["x"] == 3


def test_a_reopened_node_sends_rounds_to_a_done_neighbour_linked_lately_not_heard_yet() -> None:
    # the other half of the two-halves failure: two reopened nodes, re-linked across the healed
    # cut, each held the other's final (done) estimate and had heard no heartbeat from it yet,
    # so neither sent the other a round and each mixed with a frozen estimate to its limit
    node = DoneNode(neighbours={"new": NeighbourState(linked_at=30.0),
                                "old": NeighbourState(linked_at=1.0),
                                "heard": NeighbourState(linked_at=1.0),
                                "running": NeighbourState(linked_at=1.0)},
                    wanted={"new", "old", "heard", "running"}, status=NodeStatus.CONSENSUS)
    for peer in ("new", "old", "heard"):
        node.hear(peer, 10, 0.1, done=True)
    node.hear("running", 10, 0.1, done=False)
    node.heard_at = {"old": 2.0, "heard": 29.5}
    for peer in ("old", "heard", "running"):  # each acknowledged our round 9 on its link
        node.neighbours[peer].peer_holds = 9
    # not reopened: only the one whose (new) link holds none of ours yet, besides the running
    assert sorted(run_at(30.0, lambda: send_targets(node))) == ["new", "running"]
    node.settle.reopened = 1
    assert sorted(run_at(30.0, lambda: send_targets(node))) == ["heard", "new", "running"]


def test_a_running_node_sends_a_round_to_a_done_neighbour_linked_again_that_holds_none() -> None:
    # the flake of a long partition healed (tests/test_e2e_linger.py, once in clean CI): nodes
    # still running when the cut healed were linked again to a lingering done node, got its
    # final estimate and, never having finished themselves, sent it nothing: it never saw that
    # their model was another, so it could not reopen, and the federation ended with two
    node = DoneNode(neighbours={"back": NeighbourState(linked_at=30.0),
                                "silent": NeighbourState(linked_at=1.0),
                                "running": NeighbourState(linked_at=1.0, peer_holds=9)},
                    wanted={"back", "silent", "running"}, status=NodeStatus.CONSENSUS)
    node.hear("back", 14, 0.1, done=True)
    node.hear("silent", 14, 0.1, done=True)
    node.hear("running", 10, 0.1, done=False)
    node.heard_at = {"silent": 2.0}  # silent for longer than a heartbeat allows: stopped
    assert node.settle.reopened == 0
    assert sorted(run_at(30.0, lambda: send_targets(node))) == ["back", "running"]
    node.neighbours["back"].peer_holds = 12  # it acknowledged one of ours: told once is enough
    assert sorted(run_at(30.5, lambda: send_targets(node))) == ["running"]


class _Members(set[str]):
    def ids(self) -> list[str]:
        return sorted(self)


def test_a_lingering_node_stops_once_every_member_it_knows_is_done_read_afresh() -> None:
    """It walks those found not done last time before it reads every member again, and only
    a full reading lets it stop: a member that reopened meanwhile is seen."""
    done = NodeStatus.DONE
    node = DoneNode(neighbours={}, wanted=set(), membership=_Members({"a", "b", "c"}))
    node.beaten_seq, node.settle.done_beat = 1, 1  # type: ignore[attr-defined]
    watch = linger.Watch.at_finish(node)
    node.member_state = {"a": (9, done)}
    assert not linger.nobody_left(node, watch, whole=True)
    assert watch.pending == ["b", "c"]
    node.member_state["b"] = (9, done)
    assert not linger.nobody_left(node, watch, whole=True)  # c is not done yet
    assert (watch.pending, watch.checked) == (["b", "c"], 1)
    node.member_state["c"] = (9, done)
    node.member_state["a"] = (10, NodeStatus.CONSENSUS)  # a reopened meanwhile
    assert not linger.nobody_left(node, watch, whole=True)
    assert watch.pending == ["a"]
    node.member_state["a"] = (12, done)
    assert not linger.nobody_left(node, watch, whole=False)  # members were absent: no
    node.settle.done_beat = 2  # type: ignore[attr-defined]
    assert not linger.nobody_left(node, watch, whole=True)  # its own done not yet answered
    node.beaten_seq = 2  # type: ignore[attr-defined]
    node.membership.add("d")  # met since: not heard done
    assert not linger.nobody_left(node, watch, whole=True)
    assert watch.pending == ["d"]
    node.membership.discard("d")  # forgotten (silent for member_timeout)
    assert linger.nobody_left(node, watch, whole=True)
