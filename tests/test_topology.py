"""Tests for gossipfl.aggregation.topology: deterministic gossip graphs over member ids."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.aggregation import GENERATED_KINDS, build_topology
from gossipfl.aggregation import topology as topology_module
from gossipfl.aggregation.topology import Topology

FAST = settings(max_examples=80, deadline=None)


def names(n: int, prefix: str = "node-") -> list[str]:
    return [f"{prefix}{i:02d}" for i in range(n)]


def edges(topology: Topology) -> set[frozenset[str]]:
    return {frozenset((a, b)) for a, peers in topology.items() for b in peers}


def degrees(topology: Topology) -> list[int]:
    return sorted(len(peers) for peers in topology.values())


def max_degree(topology: Topology) -> int:
    return max(degrees(topology), default=0)


def is_connected(topology: Topology) -> bool:
    """Whether every member reaches every other (a graph search written for the tests)."""
    if not topology:
        return True
    start = min(topology)
    seen, stack = {start}, [start]
    while stack:
        for peer in topology[stack.pop()]:
            if peer not in seen:
                seen.add(peer)
                stack.append(peer)
    return seen == set(topology)


def sorted_position_edges(topology: Topology) -> set[frozenset[int]]:
    """The edges between the members' positions in sorted order (the structure, ids aside)."""
    index = {member: i for i, member in enumerate(sorted(topology))}
    return {frozenset((index[a], index[b])) for a, b in map(tuple, edges(topology))}


def check_invariants(topology: Topology, members: list[str]) -> None:
    assert set(topology) == set(members)
    for member, peers in topology.items():
        assert isinstance(peers, frozenset)
        assert member not in peers
        assert peers <= set(members)
        assert all(member in topology[peer] for peer in peers)
    if len(members) >= 2:
        assert is_connected(topology)


def expected_regular_degrees(n: int, d: int) -> list[int]:
    if d >= n - 1:
        return [n - 1] * n
    if n * d % 2:
        return [d - 1] + [d] * (n - 1)
    return [d] * n


# --------------------------------------------------------------------------- exhaustive sweep


@pytest.mark.parametrize("kind", GENERATED_KINDS)
def test_invariants_for_every_size_degree_and_seed(kind: str) -> None:
    for n, d, seed in itertools.product(range(1, 31), range(2, 7), range(3)):
        members = names(n)
        topology = build_topology(kind, members, degree=d, seed=seed)
        check_invariants(topology, members)
        if kind == "ring":
            assert degrees(topology) == [min(n - 1, 2)] * n
        elif kind == "full":
            assert degrees(topology) == [n - 1] * n
        else:
            assert max_degree(topology) <= d
            assert degrees(topology) == expected_regular_degrees(n, d), (n, d, seed)


@FAST
@given(
    kind=st.sampled_from(GENERATED_KINDS),
    members=st.lists(st.text(min_size=0, max_size=6), min_size=1, max_size=30, unique=True),
    degree=st.integers(2, 6),
    seed=st.integers(0, 2**63),
    data=st.data(),
)
def test_invariants_and_order_independence(
    kind: str, members: list[str], degree: int, seed: int, data: st.DataObject
) -> None:
    topology = build_topology(kind, members, degree=degree, seed=seed)
    check_invariants(topology, members)
    if kind == "ring":
        assert max_degree(topology) <= 2
    if kind == "regular":
        assert degrees(topology) == expected_regular_degrees(len(members), degree)
    shuffled = data.draw(st.permutations(members))
    assert build_topology(kind, shuffled, degree=degree, seed=seed) == topology
    assert build_topology(kind, tuple(members), degree=degree, seed=seed) == topology


# --------------------------------------------------------------------------- small exact cases


@pytest.mark.parametrize("kind", GENERATED_KINDS)
def test_tiny_federations(kind: str) -> None:
    assert build_topology(kind, [], degree=2) == {}
    assert build_topology(kind, ["solo"], degree=2) == {"solo": frozenset()}
    assert build_topology(kind, ["b", "a"], degree=2) == {
        "a": frozenset({"b"}),
        "b": frozenset({"a"}),
    }
    three = build_topology(kind, ["a", "b", "c"], degree=2)
    assert edges(three) == {frozenset("ab"), frozenset("bc"), frozenset("ac")}


def test_ring_is_a_single_cycle() -> None:
    members = names(9)
    topology = build_topology("ring", members, seed=3)
    start = members[0]
    previous, current, seen = None, start, [start]
    while True:
        nxt = next(p for p in sorted(topology[current]) if p != previous)
        if nxt == start:
            break
        seen.append(nxt)
        previous, current = current, nxt
    assert sorted(seen) == members


def test_regular_fallback_is_connected_and_regular(monkeypatch: pytest.MonkeyPatch) -> None:
    # With no random attempts allowed every graph comes from the circulant fallback.
    monkeypatch.setattr(topology_module, "REGULAR_MAX_ATTEMPTS", 0)
    for n, d in itertools.product(range(1, 31), range(2, 9)):
        members = names(n)
        topology = build_topology("regular", members, degree=d, seed=n)
        check_invariants(topology, members)
        assert degrees(topology) == expected_regular_degrees(n, d), (n, d)
    assert build_topology("regular", names(10), degree=3, seed=1) != build_topology(
        "regular", names(10), degree=3, seed=2
    )


def test_regular_degree_at_least_n_minus_one_is_full() -> None:
    members = names(5)
    assert build_topology("regular", members, degree=4) == build_topology("full", members)
    assert build_topology("regular", members, degree=9) == build_topology("full", members)


def test_regular_odd_degree_sum_leaves_exactly_one_node_short() -> None:
    topology = build_topology("regular", names(7), degree=3, seed=5)
    assert degrees(topology) == [2, 3, 3, 3, 3, 3, 3]
    assert is_connected(topology)


def test_regular_degree_one() -> None:
    assert edges(build_topology("regular", ["a", "b"], degree=1)) == {frozenset("ab")}
    assert build_topology("regular", ["a"], degree=1) == {"a": frozenset()}
    with pytest.raises(ValueError, match="cannot be connected"):
        build_topology("regular", names(3), degree=1)


def test_golden_graphs_are_stable() -> None:
    # Every node must compute the same graph: a change here breaks mixed-version federations.
    ring = build_topology("ring", list("fedcba"), seed=0)
    assert edges(ring) == {frozenset(e) for e in ["ae", "ec", "cd", "db", "bf", "fa"]}
    # the best of eight draws since wire version 6 (topology.REGULAR_CANDIDATES)
    regular = build_topology("regular", [f"n{i}" for i in range(8)], degree=3, seed=0)
    assert {k: sorted(v) for k, v in regular.items()} == {
        "n0": ["n4", "n5", "n7"],
        "n1": ["n3", "n4", "n6"],
        "n2": ["n4", "n5", "n6"],
        "n3": ["n1", "n5", "n7"],
        "n4": ["n0", "n1", "n2"],
        "n5": ["n0", "n2", "n3"],
        "n6": ["n1", "n2", "n7"],
        "n7": ["n0", "n3", "n6"],
    }


def test_same_graph_in_fresh_processes_with_different_hash_seeds() -> None:
    code = (
        "from gossipfl.aggregation import build_topology as b;"
        "t = b('regular', [f'm{i}' for i in range(20)], degree=4, seed=11);"
        "print(sorted((k, sorted(v)) for k, v in t.items()))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    local = build_topology("regular", [f"m{i}" for i in range(20)], degree=4, seed=11)
    assert outputs == {str(sorted((k, sorted(v)) for k, v in local.items())) + "\n"}


# --------------------------------------------------------------------------- seeds and members


@pytest.mark.parametrize("kind", ["ring", "regular"])
def test_different_seeds_usually_give_different_graphs(kind: str) -> None:
    pairs = differing = 0
    for n in range(8, 31):
        for d in range(2, min(6, n - 2) + 1):
            graphs = [
                frozenset(edges(build_topology(kind, names(n), degree=d, seed=s))) for s in range(5)
            ]
            assert len(set(graphs)) >= 2, (n, d)
            for a, b in itertools.combinations(graphs, 2):
                pairs += 1
                differing += a != b
    assert differing / pairs > 0.95


@pytest.mark.parametrize("kind", ["ring", "regular"])
def test_different_federations_differ_under_the_same_seed(kind: str) -> None:
    # Compare structure by sorted position: the graphs differ beyond a relabelling of ids.
    different = 0
    for seed in range(5):
        a = build_topology(kind, names(12, "a"), degree=3, seed=seed)
        b = build_topology(kind, names(12, "b"), degree=3, seed=seed)
        different += sorted_position_edges(a) != sorted_position_edges(b)
    assert different >= 4


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"kind": "star"}, ValueError, "unknown topology kind"),
        ({"members": ["a", "b", "a"]}, ValueError, "must be unique"),
        ({"members": ["a", 1]}, TypeError, "must be strings"),
        ({"degree": 0}, ValueError, "degree must be at least 1"),
        ({"degree": 2.0}, TypeError, "degree must be an integer"),
        ({"degree": True}, TypeError, "degree must be an integer"),
        ({"seed": -1}, ValueError, "seed must be at least 0"),
    ],
)
def test_build_topology_validation(kwargs: dict, error: type[Exception], message: str) -> None:
    arguments = {"kind": "regular", "members": ["a", "b", "c"], "degree": 2, "seed": 0} | kwargs
    kind = arguments.pop("kind")
    members = arguments.pop("members")
    with pytest.raises(error, match=message):
        build_topology(kind, members, **arguments)


# --------------------------------------------------------------------------- the test helpers


def test_is_connected_helper() -> None:
    """The oracle the invariants lean on must itself tell connected from split graphs."""
    path = {"a": frozenset({"b"}), "b": frozenset({"a", "c"}), "c": frozenset({"b"})}
    assert is_connected({}) and is_connected({"a": frozenset()}) and is_connected(path)
    assert not is_connected({"a": frozenset(), "b": frozenset()})
    two_pairs = {"a": frozenset({"b"}), "b": frozenset({"a"}), "c": frozenset({"d"}),
                 "d": frozenset({"c"})}
    assert not is_connected(two_pairs)
    assert max_degree(path) == 2 and max_degree({}) == 0
