"""``[[sites]]`` scenarios without root: their configuration, the lab plan (several hosts per
site, several public hosts), who sits where, each node's relay and bootstrap settings, relay
faults, the link kinds the report gives, and the lab's removal however a run ends. The run
itself across real NAT is tests/test_e2e_sites.py."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gossipfl.config import ConfigError, from_dict
from gossipfl.gossip.circuit import announced, circuit_addr, circuit_order
from gossipfl.gossip.peers import PeerNet, Traffic
from gossipfl.node.runtime import split_p2p_addr
from gossipfl.relay_config import RelayConfig
from gossipfl.scenario import natlab, sites
from gossipfl.scenario.config import ScenarioConfig, load_scenario
from gossipfl.scenario.sites_config import PublicConfig, RelayFaultConfig
from gossipfl.scenario.sites_report import LinkHow, contact_span, link_how, pair_links

ROOT = Path(__file__).resolve().parent.parent
RELAY = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
PEER = "12D3KooWHcEsRNjsRx5b2yrLBQvBeJuA7z2ZkzVfQ9K8ZDN1sCi1"


def scenario(**extra: Any) -> ScenarioConfig:
    data: dict[str, Any] = {"nodes": 4, "sites": [{"nodes": 2, "name": "a"}, {"nodes": 2}]}
    data.update(extra)
    return from_dict(ScenarioConfig, data)


# --- configuration ---------------------------------------------------------------------------

def test_the_shipped_nat_scenarios_load() -> None:
    nat = load_scenario(ROOT / "scenarios" / "nat.toml")
    assert [s.nodes for s in nat.sites] == [2, 2, 2, 2] and nat.nodes == 8
    assert nat.public.relays == 1 and nat.public.hole_punch
    failover = load_scenario(ROOT / "scenarios" / "nat_failover.toml")
    assert failover.public.relays == 2
    (fault,) = failover.public.faults
    assert fault.relay == 0 and fault.at_round == 10 and fault.kind.value == "kill"


@pytest.mark.parametrize(("extra", "message"), [
    ({"nodes": 5}, r"\[\[sites\]\] hold 4 nodes \(2 \+ 2\); the scenario has nodes = 5"),
    ({"namespaces": {"enabled": True}}, r"\[\[sites\]\] and \[namespaces\]"),
    ({"links": [{"nodes_a": [0], "nodes_b": [2], "latency": 0.1}]}, r"\[\[links\]\]"),
    ({"partitions": [{"side": [0], "at_round": 1}]}, r"\[\[partitions\]\]"),
    ({"sites": [{"nodes": 2, "name": "a"}, {"nodes": 2, "name": "a"}]}, "share a name"),
    ({"sites": [{"nodes": 0}, {"nodes": 4}]}, "sites.nodes must be 1..200"),
    ({"sites": [{"nodes": 4, "name": "no spaces"}]}, "sites.name"),
    ({"public": {"relays": 0}}, "public.relays must be 1..8"),
    ({"public": {"relays": 2, "faults": [{"relay": 2, "at_round": 1}]}}, "names relay 2"),
    ({"public": {"faults": [{"relay": 0, "at_round": 1}]}}, "every relay"),
    ({"public": {"relays": 2, "faults": [{"relay": 0}]}}, "exactly one of at_round"),
    ({"public": {"relays": 2, "faults": [{"relay": 0, "at_round": 1, "kind": "pause"}]}},
     "public.faults.kind"),
    ({"public": {"circuit_bytes": 10}}, "circuit_bytes"),
])
def test_bad_sites_are_refused_clearly(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scenario(**extra)


def test_public_without_sites_is_refused_and_plain_scenarios_are_untouched() -> None:
    with pytest.raises(ConfigError, match=r"\[public\] describes the relays of \[\[sites\]\]"):
        from_dict(ScenarioConfig, {"nodes": 4, "public": {"relays": 2}})
    plain = from_dict(ScenarioConfig, {"nodes": 4})
    assert plain.sites == () and plain.public == PublicConfig()


def test_a_relay_fault_is_due_by_round_or_by_seconds() -> None:
    by_round = RelayFaultConfig(relay=0, at_round=3)
    assert not by_round.due(2, 100.0) and by_round.due(3, 0.0)
    by_time = RelayFaultConfig(relay=0, at_seconds=5.0)
    assert not by_time.due(99, 4.9) and by_time.due(-1, 5.0)


def test_without_root_or_iptables_it_says_what_is_missing() -> None:
    with pytest.raises(ConfigError, match=r"needs root .* iptables; missing: CAP_NET_ADMIN"):
        sites.check_rights(which=lambda tool: None,
                           status_text=lambda: "CapEff:\t0000000000000000\n")


# --- the lab plan --------------------------------------------------------------------------------

def test_a_site_holds_several_hosts_on_a_bridged_lan_and_the_lab_several_public_hosts() -> None:
    plan = natlab.make_plan(2, "t7", hosts=[3, 1], publics=2)
    first, second = plan.sites
    assert first.hosts == ("gfl-nat-t7-p0", "gfl-nat-t7-p0-1", "gfl-nat-t7-p0-2")
    assert first.host_ips == ("10.66.0.2", "10.66.0.3", "10.66.0.4")
    assert second.hosts == ("gfl-nat-t7-p1",) and second.host == "gfl-nat-t7-p1"
    assert plan.public_hosts == ("gfl-nat-t7-pub", "gfl-nat-t7-pub1")
    assert plan.public_ips == ("198.18.0.1", "198.18.0.2")
    assert len(set(plan.namespaces)) == len(plan.namespaces) == 2 + 4 + 2 + 1
    commands = natlab.setup_commands(plan)
    mine = set(plan.namespaces)
    for command in commands:  # nothing outside the lab's own namespaces
        if command[:3] == ["ip", "netns", "add"]:
            assert command[3] in mine
        elif command[:2] == ["ip", "-n"]:
            assert command[2] in mine, command
        else:
            assert command[:3] == ["ip", "netns", "exec"] and command[3] in mine, command
    text = [" ".join(c) for c in commands]
    # site 0: a bridge `lan` with the router's address, one veth end per host on it
    assert f"ip -n {first.router} link add lan type bridge" in text
    assert f"ip -n {first.router} addr add 10.66.0.1/24 dev lan" in text
    for k in range(3):
        assert f"ip -n {first.router} link set h{k} master lan" in text
        assert f"ip -n {first.hosts[k]} route add default via 10.66.0.1" in text
    # site 1 (one host) is built as before: a veth straight to the router's `lan`
    assert f"ip -n {second.router} link add lan type bridge" not in text
    assert any(t.startswith(f"ip -n {second.router} link add lan type veth") for t in text)
    assert any("MASQUERADE" in t and "10.66.0.0/24" in t for t in text)
    # the single-host lab of before is unchanged
    assert natlab.make_plan(2, "t8").namespaces == natlab.make_plan(2, "t8", hosts=[1, 1]
                                                                    ).namespaces


@pytest.mark.parametrize("hosts", [[0, 1], [1], [1, 201]])
def test_bad_host_counts_are_refused(hosts: list[int]) -> None:
    with pytest.raises(ConfigError, match="natlab: hosts"):
        natlab.make_plan(2, "t9", hosts=hosts)


def test_nodes_sit_site_by_site_with_their_own_address_and_port() -> None:
    config = scenario(sites=[{"nodes": 2, "name": "a"}, {"nodes": 1}, {"nodes": 1}])
    plan = sites.lab_plan(config.sites, config.public, "t10")
    places = sites.node_places(config.sites, plan)
    assert [(p.site, p.host, p.ip, p.port) for p in places] == [
        (0, 0, "10.66.0.2", 4001), (0, 1, "10.66.0.3", 4002),
        (1, 0, "10.66.1.2", 4001), (2, 0, "10.66.2.2", 4001)]
    assert [p.site_name for p in places] == ["a", "a", "site1", "site2"]
    assert places[1].namespace == plan.sites[0].hosts[1]
    assert places[1].listen == "/ip4/10.66.0.3/tcp/4002"
    (relay,) = sites.relay_places(plan)
    assert relay.namespace == plan.public and relay.listen == "/ip4/198.18.0.1/tcp/4001"


def test_a_node_bootstraps_from_its_site_directly_and_from_other_sites_through_the_relay(
) -> None:
    config = scenario(nodes=12, sites=[{"nodes": 2}, {"nodes": 10}])
    plan = sites.lab_plan(config.sites, config.public, "t11")
    places = sites.node_places(config.sites, plan)
    ids = [f"peer{i}" for i in range(12)]
    relay = f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}"
    assert sites.bootstrap_list(0, places, ids, relay) == ()
    assert sites.bootstrap_list(1, places, ids, relay) == ("/ip4/10.66.0.2/tcp/4001/p2p/peer0",)
    third = sites.bootstrap_list(3, places, ids, relay)
    assert third == (circuit_addr(relay, "peer0"), circuit_addr(relay, "peer1"),
                     "/ip4/10.66.1.2/tcp/4001/p2p/peer2")
    assert len(sites.bootstrap_list(11, places, ids, relay)) == sites.BOOTSTRAP_SEEDS


def test_a_site_node_is_private_reserves_on_every_relay_and_announces_its_lan_address() -> None:
    relays = [f"/ip4/198.18.0.{k + 1}/tcp/4001/p2p/{RELAY}" for k in range(2)]
    relay = sites.node_relay_config(PublicConfig(relays=2, hole_punch=False), relays)
    assert relay.private and relay.use == tuple(relays) and relay.announce_listen
    assert not relay.hole_punch
    with pytest.raises(ConfigError, match="announce_listen is for a private node"):
        RelayConfig(announce_listen=True)
    listen, relayed = "/ip4/10.66.0.2/tcp/4001", circuit_addr(relays[0], PEER)
    assert announced([listen], [relayed], private=True, with_listen=True) == [listen, relayed]
    assert announced([listen], [relayed], private=True) == [relayed]
    # [public] reachable = "auto": the nodes find out (they ask the relays to dial them back)
    found = sites.node_relay_config(PublicConfig(reachable="auto"), relays)
    assert found.reachable == "auto" and found.may_be_private and not found.private
    assert found.announce_listen and found.use == tuple(relays)
    with pytest.raises(ConfigError, match=r"public\.reachable"):
        PublicConfig(reachable="public")


def test_the_relay_runs_in_its_namespace() -> None:
    place = sites.RelayPlace(index=0, namespace="gfl-nat-x-pub", ip="198.18.0.1")
    command = sites.relay_command(place, Path("/k"), Path("/o"), 1 << 20, 60.0)
    assert command[:4] == ["ip", "netns", "exec", "gfl-nat-x-pub"]
    assert command[5:7] == ["-m", "gossipfl.scenario.relay_node"]
    assert "/ip4/198.18.0.1/tcp/4001" in command and str(1 << 20) in command


# --- link choice ---------------------------------------------------------------------------------

def test_a_bootstrap_entry_through_a_relay_names_the_peer_not_the_relay() -> None:
    addr = circuit_addr(f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}", PEER)
    assert split_p2p_addr(addr) == (PEER, addr)
    direct = f"/ip4/10.66.0.2/tcp/4001/p2p/{PEER}"
    assert split_p2p_addr(direct) == (PEER, direct)


def test_relays_still_connected_are_tried_first() -> None:
    dead = circuit_addr("/ip4/198.18.0.1/tcp/4001/p2p/RELAYA", PEER)
    live = circuit_addr("/ip4/198.18.0.2/tcp/4001/p2p/RELAYB", PEER)
    assert circuit_order([dead, live], {"RELAYB"}) == [live, dead]
    assert circuit_order([dead, live], set()) == [dead, live]  # none known: as announced
    assert circuit_order([dead, live], {"RELAYA", "RELAYB"}) == [dead, live]


def test_a_relay_whose_dials_failed_goes_last_even_while_connected() -> None:
    """A tampering or dropping relay stays connected; once a dial through it failed, the
    other relay is tried first (fewer failures in a row first, then live, then announced)."""
    bad = circuit_addr("/ip4/198.18.0.1/tcp/4001/p2p/RELAYA", PEER)
    good = circuit_addr("/ip4/198.18.0.2/tcp/4001/p2p/RELAYB", PEER)
    both = {"RELAYA", "RELAYB"}
    assert circuit_order([bad, good], both, {"RELAYA": 1}) == [good, bad]
    assert circuit_order([bad, good], both, {"RELAYA": 1, "RELAYB": 2}) == [bad, good]
    # failing counts first, liveness second: a dead relay with fewer failures still comes
    # before a live one with more
    assert circuit_order([bad, good], {"RELAYA"}, {"RELAYA": 1}) == [good, bad]
    assert circuit_order([bad, good], both, {}) == [bad, good]


@pytest.mark.parametrize(("direct", "relayed", "punched", "how"), [
    (5, 0, False, LinkHow.DIRECT), (0, 5, False, LinkHow.RELAYED),
    (3, 4, True, LinkHow.HOLE_PUNCHED), (3, 4, False, LinkHow.MIXED), (0, 0, True, None)])
def test_a_link_kind_from_its_streams(direct: int, relayed: int, punched: bool,
                                      how: LinkHow | None) -> None:
    assert link_how(direct, relayed, punched) == how


def test_both_ends_count_towards_one_link() -> None:
    ids = ["p0", "p1", "p2"]
    files = {
        0: {"link_streams": {"p1": {"direct": 3}, "p2": {"relayed": 2}},
            "hole_punch": {"p2": True}, "first_contact": {"p1": 0.5, "p2": 2.25}},
        1: {"link_streams": {"p0": {"direct": 4}, "p2": {"relayed": 6}, "stranger": {"d": 1}}},
        2: {"link_streams": {"p0": {"direct": 5}}, "hole_punch": {"p1": False},
            "first_contact": {"p0": 1.0}},
    }
    pairs = pair_links(files, ids)
    assert pairs[(0, 1)] == {"direct": 7, "relayed": 0, "punched": False, "how": "direct",
                             "first_contact_seconds": {"0": 0.5}}
    assert pairs[(0, 2)]["first_contact_seconds"] == {"0": 2.25, "2": 1.0}
    assert pairs[(0, 2)]["how"] == "hole-punched" and pairs[(0, 2)]["direct"] == 5
    assert pairs[(1, 2)]["how"] == "relayed"
    assert set(pairs) == {(0, 1), (0, 2), (1, 2)}


class FakeConn:
    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs

    def get_transport_addresses(self) -> list[str]:
        return self.addrs


class FakeStream:
    def __init__(self, addr: str) -> None:
        self.muxed_conn = FakeConn([addr])


def test_a_node_notes_its_first_stream_with_each_peer_from_its_start() -> None:
    now = [100.0]
    net = PeerNet(host=None, traffic=Traffic(), clock=lambda: now[0])  # type: ignore[arg-type]
    relayed = "/ip4/198.18.0.1/tcp/4001/p2p/RELAY/p2p-circuit"
    now[0] = 101.5
    net._count("p1", FakeStream(relayed))
    now[0] = 103.0
    net._count("p1", FakeStream("/ip4/10.66.1.2/tcp/4001"))  # a later stream changes nothing
    net._count("p2", FakeStream("/ip4/10.66.1.3/tcp/4001"))
    summary = net.relay_summary()
    assert summary["first_contact"] == {"p1": 1.5, "p2": 3.0}
    assert summary["link_streams"] == {"p1": {"relayed": 1, "direct": 1}, "p2": {"direct": 1}}


def test_a_nodes_first_contacts_are_shown_over_its_neighbours_only() -> None:
    entry = {"first_contact": {"1": 0.75, "2": 2.5, "3": 9.0}}
    assert contact_span(entry, {"relayed": ["1"], "direct": ["2"]}) == "0.75-2.50"
    assert contact_span(entry, {}) == "-" and contact_span({}, {"direct": ["1"]}) == "-"


# --- the running part, with fakes ---------------------------------------------------------------

class FakeProcess:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return -9 if self.signals else None

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_a_relay_fault_takes_its_relay_down_once_when_due(tmp_path: Path) -> None:
    config = scenario(public={"relays": 2, "faults": [{"relay": 1, "at_round": 3}]})
    plan = sites.lab_plan(config.sites, config.public, "t12")
    session = sites.SitesSession(config, tmp_path, plan)
    fakes = [FakeProcess(), FakeProcess()]
    for relay, fake in zip(session.relays, fakes, strict=True):
        relay.process = fake  # type: ignore[assignment]
    assert session.step([1, 2, 2, 0], 100.0) == []
    (event,) = session.step([1, 3, 2, 0], 101.5)
    assert event == {"relay": 1, "event": "kill", "max_round": 3, "seconds": 1.5}
    assert session.step([5, 5, 5, 5], 103.0) == []
    assert fakes[1].signals == [signal.SIGKILL] and fakes[0].signals == []
    assert session.relays[1].down == {"kind": "kill", "max_round": 3, "seconds": 1.5}
    assert len({r.peer_id for r in session.relays}) == 2  # each relay its own identity


class FakeRun:
    """Records commands; ``ip netns list`` lists what was added and not deleted."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.alive: list[str] = []

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.commands.append(command)
        if command == ["ip", "netns", "list"]:
            return subprocess.CompletedProcess(command, 0, "\n".join(self.alive), "")
        if command[:3] == ["ip", "netns", "delete"]:
            self.alive.remove(command[3])
        elif command[:3] == ["ip", "netns", "add"]:
            self.alive.append(command[3])
        return subprocess.CompletedProcess(command, 0, "", "")


def test_the_lab_is_removed_when_a_relay_fails_to_start_or_the_run_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = scenario()
    run = FakeRun()

    def no_relay(self: sites.SitesSession, timeout: float = 0.0) -> None:
        assert len(run.alive) == len(self.plan.namespaces)  # the lab was built
        raise natlab.NetnsError("sites: relay 0 did not start serving")

    monkeypatch.setattr(sites.SitesSession, "start_relays", no_relay)
    with (pytest.raises(ConfigError, match="relay 0 did not start"),
          sites.open_sites(config, tmp_path, run=run, check=lambda: None)):
        pytest.fail("the block must not run")
    assert run.alive == []

    monkeypatch.setattr(sites.SitesSession, "start_relays", lambda self: None)
    with (pytest.raises(RuntimeError, match="in the run"),
          sites.open_sites(config, tmp_path, run=run, check=lambda: None) as session):
        assert len(run.alive) == len(session.plan.namespaces) == 1 + 2 * 3 + 1
        assert session.plan.tag == sites.run_tag(tmp_path)  # named after the run folder
        raise RuntimeError("in the run")
    assert run.alive == []


def test_leftovers_of_a_crashed_run_of_the_same_folder_are_removed_first(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = scenario()
    run = FakeRun()
    stale = f"gfl-nat-{sites.run_tag(tmp_path)}-p0"
    run.alive = [stale, "gfl-nat-other-p0"]
    monkeypatch.setattr(sites.SitesSession, "start_relays", lambda self: None)
    with sites.open_sites(config, tmp_path, run=run, check=lambda: None):
        assert ["ip", "netns", "delete", stale] in run.commands
    assert run.alive == ["gfl-nat-other-p0"]
