"""Network-fault configuration: routes in NodeConfig, [[links]] and [[partitions]] in scenarios,
the link plan, and the runner's relays and partition clock (no node processes)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import multiaddr
import pytest

from gossipfl.config import ConfigError, NodeConfig, dump_toml, from_dict, load_toml, to_dict
from gossipfl.scenario.config import LinkConfig, PartitionConfig, ScenarioConfig, load_scenario
from gossipfl.scenario.network import (
    ScenarioNetwork,
    cross_group_links,
    relay_name,
    routed_links,
    totals,
)
from gossipfl.scenario.relay import LinkFaults
from gossipfl.scenario.runner import prepare_nodes

PEER_A = "12D3KooWRBhwfeP2Y7TCx1Q6EVDeBSQ3sCJHsAQ3E1fpnXHMCpQ1"
PEER_B = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def _roundtrip(config: NodeConfig) -> NodeConfig:
    return from_dict(NodeConfig, tomllib.loads(dump_toml(to_dict(config))))


# -- NodeConfig.routes -------------------------------------------------------------------------


def test_routes_default_to_none_and_round_trip_through_toml() -> None:
    assert NodeConfig().routes == {}
    assert _roundtrip(NodeConfig()) == NodeConfig()
    routes = {PEER_A: "/ip4/127.0.0.1/tcp/4100", PEER_B: f"/ip4/127.0.0.1/tcp/4101/p2p/{PEER_B}"}
    config = NodeConfig(routes=routes)
    text = dump_toml(to_dict(config))
    assert "[routes]" in text and f'{PEER_A} = "/ip4/127.0.0.1/tcp/4100"' in text
    back = _roundtrip(config)
    assert back.routes == routes and back == config
    hash(config)  # still hashable: routes are left out of the hash


def test_routes_from_a_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'federation = "lab"\n\n[routes]\n{PEER_A} = "/ip4/127.0.0.1/tcp/5000"\n')
    config = from_dict(NodeConfig, load_toml(path))
    assert config.routes == {PEER_A: "/ip4/127.0.0.1/tcp/5000"}


@pytest.mark.parametrize(
    ("routes", "rule"),
    [
        ({PEER_A: "not an address"}, f"routes.{PEER_A}: 'not an address' is not a multiaddr"),
        ({PEER_A: "/ip4/127.0.0.1/udp/4000"}, "is not a multiaddr with a /tcp/ part"),
        ({"not-a-peer!": "/ip4/127.0.0.1/tcp/4000"}, "'not-a-peer!' is not a peer id"),
        ({"": "/ip4/127.0.0.1/tcp/4000"}, "is not a peer id"),
    ],
)
def test_bad_routes_are_refused(routes: dict[str, str], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        NodeConfig(routes=routes)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"routes": ["/ip4/127.0.0.1/tcp/1"]}, "routes must be a table"),
        ({"routes": {PEER_A: 4000}}, f"routes.{PEER_A} must be a string"),
    ],
)
def test_routes_types_are_checked(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(NodeConfig, data)


def test_dump_toml_quotes_keys_that_are_not_bare() -> None:
    text = dump_toml({"routes": {"a b": "x", "ok_key-1": "y"}})
    assert tomllib.loads(text) == {"routes": {"a b": "x", "ok_key-1": "y"}}


# -- [[links]] and [[partitions]] ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"nodes_a": [], "nodes_b": [1]}, "must each name at least one node"),
        ({"nodes_a": [0, 0], "nodes_b": [1]}, "links.nodes_a must hold distinct node indices"),
        ({"nodes_a": [-1], "nodes_b": [1]}, "links.nodes_a must hold distinct node indices"),
        ({"nodes_a": [0, 1], "nodes_b": [1]}, "must not share a node"),
        ({"nodes_a": [0], "nodes_b": [1], "latency": -0.01}, "links: latency must be finite"),
        ({"nodes_a": [0], "nodes_b": [1], "reset_rate": -1}, "links: reset_rate must be"),
    ],
)
def test_link_validation(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(LinkConfig, data)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"at_round": 1}, "give either groups or side"),
        ({"groups": [[0]], "side": [1], "at_round": 1}, "give either groups or side"),
        ({"groups": [[0, 1]], "at_round": 1}, "at least two non-empty groups"),
        ({"groups": [[0], []], "at_round": 1}, "at least two non-empty groups"),
        ({"groups": [[0, 1], [1, 2]], "at_round": 1}, "a node may appear once only"),
        ({"side": [0]}, "exactly one of at_round and at_seconds"),
        ({"side": [0], "at_round": 1, "at_seconds": 2.0}, "exactly one of at_round and"),
        ({"side": [0], "at_round": 1, "heal_round": 3, "heal_seconds": 9.0}, "at most one of"),
        ({"side": [0], "at_round": 5, "heal_round": 5}, "heal_round must come after at_round"),
        ({"side": [0], "at_seconds": 5, "heal_seconds": 4}, "heal_seconds must come after"),
        ({"side": [0], "at_seconds": -1}, "partitions.at_seconds must be >= 0"),
    ],
)
def test_partition_validation(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(PartitionConfig, data)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"nodes": 4, "links": [{"nodes_a": [0], "nodes_b": [4]}]},
         "links names node 4, the scenario has 4"),
        ({"nodes": 4, "links": [{"nodes_a": [0, 1], "nodes_b": [2]},
                                {"nodes_a": [3, 2], "nodes_b": [1]}]},
         "links entries 0 and 1 both route the link"),
        ({"nodes": 4, "partitions": [{"groups": [[0, 1], [2, 7]], "at_round": 1}]},
         "partitions names node 7, the scenario has 4"),
        ({"nodes": 2, "partitions": [{"side": [0, 1], "at_round": 1}]},
         "side must leave at least one node"),
        ({"nodes": 4, "rounds": 10, "partitions": [{"side": [0], "at_round": 10}]},
         "at_round must be below rounds"),
    ],
)
def test_scenario_network_validation(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(ScenarioConfig, data)


def test_partition_pairs_and_side() -> None:
    part = from_dict(PartitionConfig, {"side": [0, 2], "at_round": 1})
    assert part.resolved_groups(4) == ((0, 2), (1, 3))
    assert part.cross_pairs(4) == {(0, 1), (1, 0), (0, 3), (3, 0), (2, 1), (1, 2), (2, 3),
                                   (3, 2)}
    three = from_dict(PartitionConfig, {"groups": [[0], [1], [2]], "at_seconds": 1.0})
    assert len(three.cross_pairs(4)) == 6  # node 3 is in no group: never cut
    assert all(3 not in pair for pair in three.cross_pairs(4))


def test_routed_links_merge_links_and_partitions() -> None:
    scenario = from_dict(ScenarioConfig, {
        "nodes": 4,
        "links": [{"nodes_a": [0], "nodes_b": [1, 2], "latency": 0.02, "jitter": 0.01}],
        "partitions": [{"groups": [[0, 1], [2, 3]], "at_round": 2, "heal_round": 4}],
    })
    plan = routed_links(scenario)
    slow = LinkFaults(latency=0.02, jitter=0.01)
    assert plan[(0, 1)] == plan[(1, 0)] == plan[(0, 2)] == plan[(2, 0)] == slow
    # the partition's other cross links are routed without faults
    assert plan[(1, 3)] == plan[(3, 1)] == plan[(0, 3)] == plan[(1, 2)] == LinkFaults()
    assert (2, 3) not in plan and (0, 0) not in plan
    assert len(plan) == 2 * 5


def test_cross_group_links_counts_each_link_once() -> None:
    groups = ((0, 1), (2, 3))
    neighbours = {0: [1, 2], 1: [0, 3], 2: [0, 3], 3: [1, 2], 4: [0]}
    assert cross_group_links(groups, neighbours) == 2  # 0-2 and 1-3; node 4 is in no group
    assert cross_group_links(groups, {0: [1], 1: [0]}) == 0


def test_every_shipped_network_scenario_loads() -> None:
    for name in ("partition", "netfaults"):
        scenario = load_scenario(SCENARIOS / f"{name}.toml")
        assert routed_links(scenario)


# -- the runner's side, without node processes ------------------------------------------------


def _network_scenario(**extra: Any) -> ScenarioConfig:
    return from_dict(ScenarioConfig, {
        "nodes": 4, "rounds": 10, "admission": False,
        "links": [{"nodes_a": [0, 1], "nodes_b": [2, 3], "latency": 0.01}],
        "partitions": [{"groups": [[0, 1], [2, 3]], "at_round": 3, "heal_round": 6}],
        **extra,
    })


def test_prepare_nodes_routes_cross_links_through_relays(tmp_path: Path) -> None:
    scenario = _network_scenario()
    network = ScenarioNetwork(scenario)
    try:
        nodes = prepare_nodes(scenario, tmp_path, network)
        stats = network.fleet.stats()
    finally:
        network.close()
    peers = [n.peer_id for n in nodes]
    ports = [int(multiaddr.Multiaddr(n.config.listen[0]).value_for_protocol("tcp"))
             for n in nodes]
    assert sorted(stats) == sorted(relay_name(a, b) for a in range(4) for b in range(4)
                                   if (a < 2) != (b < 2))
    for node in nodes:
        written = from_dict(NodeConfig, load_toml(node.out / "node.toml"))
        assert written.routes == node.config.routes
        others = {p for p in peers if p != node.peer_id}
        cross = {peers[j] for j in range(4) if (j < 2) != (node.index < 2)}
        assert set(written.routes) == cross and cross <= others
        for peer, route in written.routes.items():
            j = peers.index(peer)
            relay = stats[relay_name(node.index, j)]
            assert route == f"/ip4/127.0.0.1/tcp/{relay['port']}"
            assert relay["target_port"] == ports[j] and relay["faults"]["latency"] == 0.01
            assert relay["port"] not in ports
        # bootstrap: the relay for a node across the cut, the real address otherwise
        for addr in written.bootstrap:
            peer = multiaddr.Multiaddr(addr).value_for_protocol("p2p")
            j = peers.index(peer)
            port = int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))
            assert port == (stats[relay_name(node.index, j)]["port"] if peer in cross
                            else ports[j])
        assert len(written.bootstrap) == node.index


def test_partitions_cut_and_heal_on_the_most_advanced_round(tmp_path: Path) -> None:
    scenario = _network_scenario()
    network = ScenarioNetwork(scenario)
    try:
        network.build([40001, 40002, 40003, 40004])  # nothing listens: no connection is made
        assert network.step([1, 2, 0, 0], now=100.0) == []
        [cut] = network.step([3, 1, 0, 2], now=101.5)
        assert cut == {"partition": 0, "event": "cut", "seconds": 1.5, "max_round": 3,
                       "min_round": 0, "by": "round"}
        assert all(f["faults"]["cut"] for f in network.fleet.stats().values())
        assert network.step([5, 5, 5, 5], now=102.0) == []
        [heal] = network.step([6, 4, 4, 4], now=103.0)
        assert heal["event"] == "heal" and heal["max_round"] == 6 and heal["by"] == "round"
        faults = {n: s["faults"] for n, s in network.fleet.stats().items()}
        assert not any(f["cut"] for f in faults.values())
        assert all(f["latency"] == 0.01 for f in faults.values())  # the link's own faults back
        assert network.step([9, 9, 9, 9], now=104.0) == []
        section = network.section()
    finally:
        network.close()
    [part] = section["partitions"]
    assert part["groups"] == [[0, 1], [2, 3]]
    assert part["cut"]["max_round"] == 3 and part["healed"]["max_round"] == 6
    assert part["while_cut"]["accepted"] == 0
    assert section["routed_links"] == 4 and len(section["relays"]) == 8
    assert [e["event"] for e in section["events"]] == ["cut", "heal"]
    assert section["totals"] == totals(section["relays"])


def test_overlapping_partitions_heal_a_link_only_when_both_have_healed() -> None:
    scenario = from_dict(ScenarioConfig, {
        "nodes": 3, "rounds": 10, "admission": False,
        "partitions": [{"side": [0], "at_seconds": 1.0, "heal_seconds": 3.0},
                       {"groups": [[0], [1]], "at_seconds": 2.0}],  # never heals
    })
    network = ScenarioNetwork(scenario)
    try:
        network.build([40001, 40002, 40003])
        network.step([0, 0, 0], now=0.0)
        network.step([0, 0, 0], now=2.5)  # both cut
        network.step([0, 0, 0], now=3.5)  # the first heals
        faults = {n: s["faults"]["cut"] for n, s in network.fleet.stats().items()}
    finally:
        network.close()
    assert faults == {"0->1": True, "1->0": True, "0->2": False, "2->0": False}


def test_a_silent_partition_stalls_traffic_instead_of_resetting() -> None:
    scenario = from_dict(ScenarioConfig, {
        "nodes": 2, "rounds": 10, "admission": False,
        "partitions": [{"side": [0], "at_round": 1, "heal_round": 3, "silent": True}],
    })
    network = ScenarioNetwork(scenario)
    try:
        network.build([40001, 40002])
        network.step([1, 1], now=1.0)
        cut = {n: s["faults"] for n, s in network.fleet.stats().items()}
        network.step([3, 3], now=2.0)
        healed = {n: s["faults"] for n, s in network.fleet.stats().items()}
    finally:
        network.close()
    assert set(cut) == {"0->1", "1->0"}
    assert all(f["stall"] and not f["cut"] and not f["blackhole"] for f in cut.values())
    assert not any(f["stall"] or f["cut"] for f in healed.values())
