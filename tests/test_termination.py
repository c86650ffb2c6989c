"""The hold and termination rules (gossipfl.node.termination): small exact cases, and the
federation-wide property on random graphs: while any member is unsettled, no member's settled
depth reaches the horizon; once all are settled, every member does within a horizon of rounds."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import hypothesis.strategies as st
import numpy as np
import trio
import trio.testing
from hypothesis import given, settings

from gossipfl.aggregation.topology import build_topology
from gossipfl.config import NodeConfig, ProtocolConfig
from gossipfl.gossip.wire import MAX_DEPTH, Contribution
from gossipfl.node import settle as settle_module
from gossipfl.node.estimates import PeerEstimates
from gossipfl.node.termination import (
    Hold,
    PeerSettle,
    SettleState,
    hold_decision,
    horizon,
    locally_settled,
    settled_depth,
    waiting_for,
    waiting_hops,
)

TOL = 1e-4


def settle(disagreement: float = 0.0, *, done: bool = False, depth: int = 0,
           horizon_: int = 3) -> PeerSettle:
    return PeerSettle(disagreement, done, depth, horizon_)


# -- holding a round ---------------------------------------------------------------------------


def test_a_node_short_of_neighbours_holds_until_gone_seconds_then_gives_up() -> None:
    common = {"allow_alone": False, "gone_seconds": 30.0}
    assert hold_decision(1, 1, awaited=0, held_for=0.0, **common) is Hold.GO
    assert hold_decision(3, 2, awaited=1, held_for=100.0, **common) is Hold.GO
    assert hold_decision(0, 1, awaited=1, held_for=0.0, **common) is Hold.HOLD
    assert hold_decision(0, 2, awaited=2, held_for=30.0, **common) is Hold.HOLD
    assert hold_decision(0, 1, awaited=1, held_for=30.1, **common) is Hold.GIVE_UP
    assert hold_decision(0, 1, awaited=0, held_for=30.1, **common) is Hold.GIVE_UP


def test_a_node_with_some_neighbours_but_fewer_than_it_needs_is_paced_while_it_awaits() -> None:
    common = {"allow_alone": False, "gone_seconds": 30.0}
    assert hold_decision(1, 2, awaited=1, held_for=0.0, **common) is Hold.PACE
    assert hold_decision(1, 3, awaited=2, held_for=100.0, **common) is Hold.PACE
    assert hold_decision(1, 2, awaited=1, allow_alone=True, held_for=0.0,
                         gone_seconds=30.0) is Hold.PACE


def test_once_the_missing_neighbours_are_gone_for_good_a_node_goes_on_with_those_it_has() -> None:
    # a crashed neighbour no member can replace (a full graph, secure aggregation) used to
    # pace its neighbours a heartbeat a round for the rest of the run
    common = {"allow_alone": False, "gone_seconds": 30.0}
    assert hold_decision(1, 2, awaited=0, held_for=0.0, **common) is Hold.GO
    assert hold_decision(2, 4, awaited=0, held_for=0.0, **common) is Hold.GO
    # one of two missing is gone for good, the other awaited: still paced
    assert hold_decision(2, 4, awaited=1, held_for=0.0, **common) is Hold.PACE
    # none live: holding (then giving up) is unchanged by who is awaited
    assert hold_decision(0, 2, awaited=0, held_for=0.0, **common) is Hold.HOLD


def test_allow_alone_trains_at_once_and_only_when_short() -> None:
    assert hold_decision(0, 1, awaited=1, allow_alone=True, held_for=0.0,
                         gone_seconds=30.0) is Hold.ALONE
    assert hold_decision(2, 1, awaited=0, allow_alone=True, held_for=0.0,
                         gone_seconds=30.0) is Hold.GO


def test_wanted_neighbours_missing_are_awaited_until_gone_seconds() -> None:
    awaited, gone = waiting_for({"a", "b", "c", "d"}, {"a"}, {"b": 0.0, "c": 40.0}, 70.0, 30.0)
    assert awaited == ["c", "d"]  # c missing 30 s (not more), d just now
    assert gone == ["b"]
    assert waiting_for({"a"}, {"a", "x"}, {}, 0.0, 1.0) == ([], [])  # extra links: not wanted


# -- settled ---------------------------------------------------------------------------------


def test_settled_needs_agreement_both_ways_and_no_wanted_neighbour_missing() -> None:
    assert locally_settled(1e-5, {"a": settle(1e-5), "b": settle(1e-5)}, [], TOL)
    assert not locally_settled(1e-3, {"a": settle(1e-5)}, [], TOL)  # this node disagrees
    assert not locally_settled(1e-5, {"a": settle(1e-3)}, [], TOL)  # a says it disagrees
    assert not locally_settled(1e-5, {"a": None}, [], TOL)  # nothing heard from a yet
    assert not locally_settled(1e-5, {"a": settle(1e-5)}, ["b"], TOL)  # b missing
    assert not locally_settled(math.nan, {"a": settle()}, [], TOL)
    # a finished neighbour's own figure is moot: it stopped mixing
    assert locally_settled(1e-5, {"a": settle(0.5, done=True)}, [], TOL)


def test_the_depth_is_one_more_than_the_least_neighbour_depth() -> None:
    assert settled_depth(True, [settle(depth=4), settle(depth=2)], 9) == 3
    assert settled_depth(False, [settle(depth=4)], 9) == 0
    assert settled_depth(True, [], 5) == 5  # no neighbour reporting: nothing near is unsettled
    # a done neighbour saw the federation settled: it counts as its horizon
    assert settled_depth(True, [settle(done=True, depth=0, horizon_=6)], 9) == 7


# -- the horizon ----------------------------------------------------------------------------


def brute_diameter(topology: dict[str, frozenset[str]]) -> float:
    """Floyd–Warshall, for comparison."""
    nodes = sorted(topology)
    dist = {(a, b): 0 if a == b else math.inf for a in nodes for b in nodes}
    for a in nodes:
        for b in topology[a]:
            dist[(a, b)] = dist[(b, a)] = 1
    for k, i, j in itertools.product(nodes, nodes, nodes):
        if dist[(i, k)] + dist[(k, j)] < dist[(i, j)]:
            dist[(i, j)] = dist[(i, k)] + dist[(k, j)]
    return max(dist.values())


graphs = st.builds(
    lambda kind, n, degree, seed: build_topology(kind, [f"m{i:03d}" for i in range(n)],
                                                 degree=min(degree, n - 1), seed=seed),
    st.sampled_from(["ring", "regular", "full"]), st.integers(3, 24), st.integers(2, 6),
    st.integers(0, 10_000))


@settings(max_examples=60, deadline=None)
@given(graphs)
def test_the_horizon_is_the_diameter_plus_one(topology: dict[str, frozenset[str]]) -> None:
    assert horizon(topology) == brute_diameter(topology) + 1


def test_a_disconnected_graph_has_the_member_count_for_horizon() -> None:
    assert horizon({"a": frozenset({"b"}), "b": frozenset(), "c": frozenset({"d"})}) == 4


def test_above_the_exact_size_the_horizon_bounds_the_diameter_from_one_member() -> None:
    members = [f"m{i:04d}" for i in range(300)]
    ring = build_topology("ring", members, degree=2, seed=0)
    exact = horizon(ring) - 1  # without a source: one search per member
    assert exact == 150  # a ring of 300
    bound = horizon(ring, members[0])
    assert exact + 1 <= bound <= 2 * exact + 1


# -- the federation-wide property, on the rule's own functions -----------------------------------


def run_rule(topology: dict[str, frozenset[str]], unsettled: set[str], rounds: int,
             ) -> list[dict[str, int]]:
    """Every member applies settled_depth each round from its neighbours' depths of the round
    before (what their contributions carry); ``unsettled`` members never settle."""
    h = horizon(topology)
    depth = dict.fromkeys(topology, 0)
    history = []
    for _ in range(rounds):
        reports = {m: [PeerSettle(0.0, False, depth[p], h) for p in topology[m]]
                   for m in topology}
        depth = {m: settled_depth(m not in unsettled, reports[m], h) for m in topology}
        history.append(depth)
    return history


@settings(max_examples=60, deadline=None)
@given(graphs, st.data())
def test_while_any_member_is_unsettled_no_member_reaches_the_horizon(
        topology: dict[str, frozenset[str]], data: st.DataObject) -> None:
    members = sorted(topology)
    unsettled = set(data.draw(st.lists(st.sampled_from(members), min_size=1, max_size=3)))
    h = horizon(topology)
    for depths in run_rule(topology, unsettled, 3 * h):
        assert max(depths.values()) < h


@settings(max_examples=60, deadline=None)
@given(graphs)
def test_once_all_are_settled_every_member_reaches_the_horizon_in_horizon_rounds(
        topology: dict[str, frozenset[str]]) -> None:
    h = horizon(topology)
    history = run_rule(topology, set(), h)
    assert all(d >= h for d in history[-1].values())
    assert all(d < h for d in history[-2].values())  # and not a round sooner


def test_a_partitioned_federation_never_finishes_on_either_side() -> None:
    # two halves of a ring whose cross links are cut: the members next to the cut miss a
    # wanted neighbour, so they are unsettled, and neither half's depth reaches the horizon
    members = [f"m{i}" for i in range(8)]
    ring = build_topology("ring", members, degree=2, seed=0)
    halves = [set(members[:4]), set(members[4:])]
    cut_side = {m for m in members for p in ring[m]
                if (m in halves[0]) != (p in halves[0])}
    assert cut_side  # the ring crosses the cut
    h = horizon(ring)
    for depths in run_rule(ring, cut_side, 5 * h):
        assert max(depths.values()) < h


# -- members that lie ---------------------------------------------------------------------------


def test_a_member_claiming_the_largest_depth_cannot_end_a_federation_that_disagrees() -> None:
    # a ring: the liar (m0) always reports the largest depth; m4, far from it, is unsettled.
    # Every honest member has an honest neighbour whose depth is bounded by its distance to
    # m4, so none reaches the horizon
    members = [f"m{i}" for i in range(8)]
    ring = {m: frozenset({members[(i - 1) % 8], members[(i + 1) % 8]})
            for i, m in enumerate(members)}
    h = horizon(ring)
    depth = dict.fromkeys(members, 0)
    for _ in range(5 * h):
        reports = {m: [PeerSettle(0.0, False, MAX_DEPTH if p == "m0" else depth[p], h)
                       for p in ring[m]] for m in members}
        depth = {m: settled_depth(m != "m4", reports[m], h) for m in members}
        assert max(d for m, d in depth.items() if m != "m0") < h


class Silent:
    """A membership that has heard no member prove itself alive lately."""

    def live_at(self, peer: str) -> float | None:
        return None


@dataclass
class JudgedNode:
    """What settle.judge reads of a node (plain aggregation, no secure aggregation)."""

    neighbours: dict[str, object]
    wanted: set[str]
    disagreement: float = 1e-6
    protocol: ProtocolConfig = field(default_factory=lambda: ProtocolConfig(
        member_timeout=5.0, heartbeat_interval=0.5, gone_seconds=10.0))
    config: NodeConfig = field(default_factory=NodeConfig)
    estimates: PeerEstimates = field(default_factory=lambda: PeerEstimates.empty(2))
    settle: SettleState = field(default_factory=lambda: SettleState(horizon=4, members=8))
    member_state: dict[str, tuple[int, str]] = field(default_factory=dict)
    membership: Silent = field(default_factory=Silent)

    def hear(self, peer: str, r: int, *, depth: int = 0, waiting: int = 0) -> None:
        message = Contribution("f", r, peer, "me", 2, "full", -1, 1e-6, False, (),
                               training=False, depth=depth, horizon=4, waiting=waiting)
        self.estimates.apply(message, np.zeros(2, np.float32))


def test_a_neighbour_that_says_it_waits_forever_frees_rounds_for_twice_gone_seconds() -> None:
    async def main() -> None:
        node = JudgedNode(neighbours={"liar": object(), "b": object()}, wanted={"liar", "b"})
        verdicts = []
        for r in range(60):  # a round a second
            node.hear("liar", r, depth=0, waiting=1)
            node.hear("b", r, depth=3)
            verdicts.append(settle_module.judge(node, r))
            await trio.sleep(1.0)
        waited = [v for v in verdicts if v is settle_module.Verdict.AWAIT]
        # 2 × gone_seconds = 20 s of waiting rounds, then they count again
        assert 19 <= len(waited) <= 22
        assert verdicts[-1] is settle_module.Verdict.GO_ON
        assert node.settle.waiting_rounds == len(waited)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_missing_wanted_neighbour_is_awaited_then_gone_and_finished_without() -> None:
    async def main() -> None:
        node = JudgedNode(neighbours={"b": object()}, wanted={"b", "gone"})
        verdicts = []
        for r in range(20):
            node.hear("b", r, depth=9)
            verdicts.append(settle_module.judge(node, r))
            await trio.sleep(1.0)
        # awaited while missing up to gone_seconds (10 s), then finished without it
        assert verdicts[:10] == [settle_module.Verdict.AWAIT] * 10
        assert settle_module.Verdict.FINISH in verdicts[10:13]
        assert node.settle.gone == ["gone"]

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=40, deadline=None)
@given(graphs, st.data())
def test_waiting_spreads_within_the_horizon_and_stops_echoing_once_the_member_is_back(
        topology: dict[str, frozenset[str]], data: st.DataObject) -> None:
    members = sorted(topology)
    source = data.draw(st.sampled_from(members))
    h = horizon(topology)
    waits = dict.fromkeys(members, 0)

    def step(awaiting: set[str]) -> dict[str, int]:
        return {m: waiting_hops(m in awaiting, [waits[p] for p in topology[m]], h)
                for m in members}

    for _ in range(h):  # the source awaits a missing neighbour: news reaches everyone
        waits = step({source})
    assert all(w > 0 for w in waits.values())
    for _ in range(h + 1):  # it is back: the figures count up past the horizon and vanish
        waits = step(set())
    assert all(w == 0 for w in waits.values())


def test_linger_ends_early_only_when_every_member_said_done_and_heard_ours() -> None:
    from gossipfl.gossip.codes import NodeStatus
    from gossipfl.node.termination import linger_over

    done = NodeStatus.DONE
    assert linger_over(whole=True, statuses=[done, done], told_cycle=True, owed=False)
    # a member still in its rounds, or one never heard (a made-up id some reporter listed),
    # keeps the node lingering its full time: a liar cannot hold it longer than that
    assert not linger_over(whole=True, statuses=[done, NodeStatus.CONSENSUS], told_cycle=True,
                           owed=False)
    assert not linger_over(whole=True, statuses=[done, None], told_cycle=True, owed=False)
    # members that all say done (one of them lying) cannot end it when one was absent at the
    # finish (a partition: it may come back with another model)
    assert not linger_over(whole=False, statuses=[done, done], told_cycle=True, owed=False)
    # nor before the members heard this node's own done, nor while a neighbour is owed its model
    assert not linger_over(whole=True, statuses=[done], told_cycle=False, owed=False)
    assert not linger_over(whole=True, statuses=[done], told_cycle=True, owed=True)
