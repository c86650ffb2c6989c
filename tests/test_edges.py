"""A fixed, explicit communication graph (``[topology] kind = "edges"``): the pure graph, the
checks of a scenario's and a node's ``[topology]``, the runner's translation of node indices to
peer ids, and the links a node on such a graph takes or refuses (without a network)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from gossipfl.aggregation.topology import KINDS, build_topology
from gossipfl.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    NodeConfig,
    TopologyConfig,
    dump_toml,
    from_dict,
    to_dict,
)
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.node.graph import listed_neighbours, may_link
from gossipfl.node.learner import LocalLearner
from gossipfl.node.links import take_joiner, take_listed
from gossipfl.node.resume import saved_neighbours
from gossipfl.node.runtime import NeighbourState, Node
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.graphs import ScenarioTopology, node_topology
from gossipfl.scenario.runner import prepare_nodes

# a ring 0-1-2-3-0 with a leaf on 0 (4) and one on 2 (5)
RING_AND_LEAVES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 0), (5, 2))
IDS = [f"n{i}" for i in range(6)]
PEER_EDGES = [(IDS[a], IDS[b]) for a, b in RING_AND_LEAVES]


def neighbours(topology: dict[str, frozenset[str]]) -> dict[str, set[str]]:
    return {member: set(peers) for member, peers in topology.items()}


# -- build_topology("edges") --------------------------------------------------------------------


def test_the_listed_graph_is_the_topology() -> None:
    topology = build_topology("edges", IDS, edges=PEER_EDGES)
    assert neighbours(topology) == {
        "n0": {"n1", "n3", "n4"}, "n1": {"n0", "n2"}, "n2": {"n1", "n3", "n5"},
        "n3": {"n0", "n2"}, "n4": {"n0"}, "n5": {"n2"},
    }
    assert all(isinstance(peers, frozenset) for peers in topology.values())
    # degree and seed play no part; the order of members, edges and ends none either
    shuffled = [(b, a) for a, b in reversed(PEER_EDGES)]
    assert build_topology("edges", list(reversed(IDS)), degree=2, seed=9, edges=shuffled) \
        == topology


def test_links_listed_one_way_hold_both_ways() -> None:
    topology = build_topology("edges", ["a", "b", "c"], edges=[("a", "b"), ("c", "b")])
    assert neighbours(topology) == {"a": {"b"}, "b": {"a", "c"}, "c": {"b"}}
    for member, peers in topology.items():
        assert all(member in topology[peer] for peer in peers)


def test_only_links_between_members_present_count() -> None:
    present = ["n0", "n2", "n3", "n4"]  # n1 and n5 absent
    topology = build_topology("edges", present, edges=[*PEER_EDGES, ("n4", "zz")])
    assert neighbours(topology) == {"n0": {"n3", "n4"}, "n2": {"n3"}, "n3": {"n0", "n2"},
                                    "n4": {"n0"}}
    # a member none of whose listed neighbours is present has none
    assert build_topology("edges", ["n4", "n5"], edges=PEER_EDGES) == {
        "n4": frozenset(), "n5": frozenset()}
    assert build_topology("edges", [], edges=PEER_EDGES) == {}


@pytest.mark.parametrize(("kind", "edges", "error", "message"), [
    ("edges", [("a", "a")], ValueError, "to itself"),
    ("edges", [("a", "b", "c")], TypeError, "pair of member ids"),
    ("edges", [("a", 1)], TypeError, "pair of member ids"),
    ("ring", [("a", "b")], ValueError, "only with the kind 'edges'"),
])
def test_build_topology_refuses_bad_edges(kind: str, edges: list, error: type[Exception],
                                          message: str) -> None:
    assert "edges" in KINDS
    with pytest.raises(error, match=message):
        build_topology(kind, ["a", "b", "c"], edges=edges)


# -- a scenario's [topology] ---------------------------------------------------------------------


def scenario(edges: object, *, kind: str = "edges", nodes: int = 6) -> ScenarioConfig:
    topology: dict[str, object] = {"kind": kind}
    if edges is not None:
        topology["edges"] = edges
    return from_dict(ScenarioConfig, {"nodes": nodes, "topology": topology})


def test_a_scenario_reads_its_graph_from_toml() -> None:
    text = '[topology]\nkind = "edges"\nedges = [[0, 1], [1, 2], [2, 3], [3, 0], [4, 0], ' \
           '[5, 2]]\n'
    config = from_dict(ScenarioConfig, {"nodes": 6, **tomllib.loads(text)})
    assert config.topology == ScenarioTopology(kind="edges", edges=RING_AND_LEAVES)


@pytest.mark.parametrize(("edges", "kind", "message"), [
    ([[0, 1], [1, 2], [2, 3], [3, 4], [4, 6], [5, 0]], "edges", "names node 6, the scenario has "
                                                                 "nodes 0 to 5"),
    ([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [-1, 0]], "edges", "names node -1"),
    ([[0, 1], [1, 2], [2, 2], [3, 4], [4, 5]], "edges", r"\[2, 2\] links 2 to itself"),
    ([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [1, 0]], "edges", "link 1-0 is listed twice"),
    ([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [4, 5]], "edges", "link 4-5 is listed twice"),
    ([[0, 1], [1, 2], [2, 3], [3, 0], [4, 0]], "edges", r"node\(s\) \[5\] have no link"),
    ([[0, 1, 2], [3, 4], [5, 0]], "edges", "is not a pair"),
    ([[0, 1]], "ring", 'kind = "ring" draws its own'),
    (None, "edges", "needs topology.edges"),
    ([], "edges", "needs topology.edges"),
    ([[0, "x"]], "edges", "must be an integer"),
])
def test_a_scenario_graph_is_checked_once(edges: object, kind: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scenario(edges, kind=kind)


def test_a_node_graph_names_peer_ids_and_survives_toml() -> None:
    config = NodeConfig(topology=TopologyConfig(kind="edges", edges=tuple(PEER_EDGES)))
    assert from_dict(NodeConfig, tomllib.loads(dump_toml(to_dict(config)))) == config
    for bad, message in [((("a", "a"),), "to itself"), ((("a", "b"), ("b", "a")), "twice"),
                         (((0, 1),), "peer id"), ((("a", ""),), "peer id")]:
        with pytest.raises(ConfigError, match=message):
            TopologyConfig(kind="edges", edges=bad)
    with pytest.raises(ConfigError, match="draws its own"):
        TopologyConfig(kind="regular", edges=(("a", "b"),))


# -- node indices to peer ids ----------------------------------------------------------------


def test_node_indices_become_peer_ids() -> None:
    topology = ScenarioTopology(kind="edges", degree=2, edges=((0, 1), (2, 1)))
    assert node_topology(topology, ["pa", "pb", "pc"]) == TopologyConfig(
        kind="edges", degree=2, edges=(("pa", "pb"), ("pc", "pb")))
    assert node_topology(ScenarioTopology(kind="ring", degree=3), ["pa"]) == TopologyConfig(
        kind="ring", degree=3)


def test_the_runner_writes_each_node_its_graph_in_peer_ids(tmp_path: Path) -> None:
    config = from_dict(ScenarioConfig, {
        "nodes": 6, "admission": False,
        "topology": {"kind": "edges", "edges": [list(e) for e in RING_AND_LEAVES]}})
    entries = prepare_nodes(config, tmp_path, ports=[4000 + i for i in range(6)])
    ids = [entry.peer_id for entry in entries]
    expected = tuple((ids[a], ids[b]) for a, b in RING_AND_LEAVES)
    for entry in entries:
        written = tomllib.loads((entry.out / "node.toml").read_text())["topology"]
        assert written == {"kind": "edges", "degree": 4, "edges": [list(e) for e in expected]}
        assert entry.config.topology.edges == expected


# -- the links of a node on a fixed graph -------------------------------------------------------


def fixed_node(tmp_path: Path, edges: list[tuple[str, str]]) -> Node:
    """A node whose fixed graph is ``edges``, where ``"me"`` stands for its own peer id."""
    key_file = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key_file)
    me = str(identity.peer_id)
    listed = tuple((me if a == "me" else a, me if b == "me" else b) for a, b in edges)
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path),
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        topology=TopologyConfig(kind="edges", edges=listed),
    )
    node = Node(config, identity, LocalLearner(config))
    node.status = "training"
    return node


def test_a_fixed_graph_takes_no_unlisted_joiner_even_with_room(tmp_path: Path) -> None:
    node = fixed_node(tmp_path, [("me", "a"), ("me", "b"), ("b", "c")])
    me = node.peer_id
    assert listed_neighbours(node) == {"a", "b"}
    assert may_link(node, "a") and may_link(node, "b") and not may_link(node, "c")
    node.topology, node.wanted, node.link_cap = {me: frozenset({"a"}), "a": frozenset({me})}, \
        {"a"}, 10
    node.neighbours = {"a": NeighbourState()}
    status, reason = take_joiner(node, "c")
    assert status == "rejected" and "fixed graph" in reason
    assert node.wanted == {"a"}


def test_a_listed_neighbour_linking_late_extends_the_graph_and_horizon(tmp_path: Path) -> None:
    node = fixed_node(tmp_path, [("me", "a"), ("me", "b"), ("b", "c")])
    me = node.peer_id
    node.topology, node.wanted = {me: frozenset({"a"}), "a": frozenset({me})}, {"a"}
    node.settle.horizon = 2  # a single link: diameter 1
    take_listed(node, "b")
    assert node.wanted == {"a", "b"}
    assert neighbours(node.topology) == {me: {"a", "b"}, "a": {me}, "b": {me}}
    assert node.settle.horizon == 3  # the path a-me-b: diameter 2
    saved = json.loads((tmp_path / "topology.json").read_text())
    assert saved == {"members": sorted([me, "a", "b"]), "neighbours": ["a", "b"]}
    # a restart that finds only the member set gets its listed neighbours among them
    (tmp_path / "topology.json").write_text(json.dumps({"members": [me, "a", "c", "x"]}))
    assert saved_neighbours(node) == ["a"]


def test_code_may_give_a_scenario_a_node_topology_without_edges() -> None:
    config = ScenarioConfig(nodes=3, topology=TopologyConfig(kind="full", degree=2))
    assert config.topology == ScenarioTopology(kind="full", degree=2)
    with pytest.raises(ConfigError, match="names each node by its index"):
        ScenarioConfig(nodes=2, topology=TopologyConfig(kind="edges", edges=(("pa", "pb"),)))
