"""Partitions in namespaces without root: the exact tc/ip/ss commands of a cut and a heal, the
filter counters' parsing, the cut/heal schedule and the report section (through a fake command
runner), and the configuration rules (links refused, partitions taken)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from gossipfl.config import ConfigError, from_dict
from gossipfl.scenario import netcut
from gossipfl.scenario.config import NamespacesConfig, ScenarioConfig, load_scenario
from gossipfl.scenario.netcut import (
    COUNT_PREF,
    Batch,
    cut_batches,
    heal_batches,
    kill_commands,
    needs,
    parse_filter_stats,
    partition_counts,
    set_up_cuts,
    setup_batches,
    stats_command,
)
from gossipfl.scenario.netns import NetnsPlan, NetnsSession, check_rights, make_plan, missing_rights

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
ROOT_STATUS = "CapEff:\t000001ffffffffff\n"

# `tc -s filter show dev n0 ingress` in a hub, as this kernel prints it (one counting filter,
# one drop filter of partition 0)
TC_SHOWN = """\
filter protocol ip pref 100 u32 chain 0 
filter protocol ip pref 100 u32 chain 0 fh 801: ht divisor 1 
filter protocol ip pref 100 u32 chain 0 fh 801::800 order 2048 key ht 801 bkt 0 terminal flowid not_in_hw 
  match 0a4d0003/ffffffff at 16
	action order 1: mirred (Egress Redirect to device sink0) stolen
	index 3 ref 1 bind 1 installed 4 sec used 1 sec
	Action statistics:
	Sent 1180 bytes 20 pkt (dropped 0, overlimits 0 requeues 0) 
	backlog 0b 0p requeues 0

filter protocol ip pref 50000 u32 chain 0 
filter protocol ip pref 50000 u32 chain 0 fh 800: ht divisor 1 
filter protocol ip pref 50000 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 terminal flowid not_in_hw 
  match 0a4d0003/ffffffff at 16
	action order 1: mirred (Egress Mirror to device sink0) continue
	index 1 ref 1 bind 1 installed 11 sec firstused 11 sec
	Action statistics:
	Sent 579 bytes 10 pkt (dropped 0, overlimits 0 requeues 0) 
	backlog 0b 0p requeues 0

filter protocol ip pref 50000 u32 chain 0 fh 800::801 order 2049 key ht 800 bkt 0 terminal flowid not_in_hw 
  match 0a4d0004/ffffffff at 16
	action order 1: mirred (Egress Mirror to device sink0) continue
	index 2 ref 1 bind 1 installed 11 sec used 11 sec
	Action statistics:
	Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) 
	backlog 0b 0p requeues 0
"""  # noqa: E501, W291


def _plan(tmp_path: Path, nodes: int = 4) -> NetnsPlan:
    return make_plan(NamespacesConfig(enabled=True), nodes, tmp_path / "run")


def _scenario(**partition: object) -> ScenarioConfig:
    return from_dict(ScenarioConfig, {
        "nodes": 4, "namespaces": {"enabled": True, "rate_mbit": 10.0},
        "partitions": [{"groups": [[0, 1], [2, 3]], **partition}]})


# -- configuration ------------------------------------------------------------------------------


def test_namespaces_take_partitions_and_refuse_links_saying_why() -> None:
    scenario = _scenario(at_round=2, heal_round=4, silent=True)
    assert scenario.partitions[0].silent and scenario.namespaces.enabled
    with pytest.raises(ConfigError, match=r"namespaces cannot be combined with \[\[links\]\]: "
                                          r".*loopback only.*no tc netem"):
        from_dict(ScenarioConfig, {"nodes": 4, "namespaces": {"enabled": True}, "links": [
            {"nodes_a": [0], "nodes_b": [1], "latency": 0.01}]})


def test_the_namespace_partition_scenario() -> None:
    scenario = load_scenario(SCENARIOS / "namespaces_partition.toml")
    loopback = load_scenario(SCENARIOS / "partition.toml")
    assert scenario.nodes == 8 and scenario.namespaces.enabled
    assert scenario.namespaces.rate_mbit == 10.0
    (cut,) = scenario.partitions
    assert cut.groups == ((0, 1, 2, 3), (4, 5, 6, 7)) and not cut.silent
    assert cut.at_seconds is not None and cut.at_round is None  # cut by time
    assert cut.heal_round is not None and cut.min_cut_seconds > 0
    for part in ("rounds", "data", "model", "train", "topology", "protocol"):
        assert getattr(scenario, part) == getattr(loopback, part), part


def test_tools_a_namespace_run_needs() -> None:
    assert needs(_scenario(at_round=2)) == {"need_tc": True, "need_ss": True}
    assert needs(_scenario(at_round=2, silent=True)) == {"need_tc": True, "need_ss": False}
    plain = from_dict(ScenarioConfig, {"nodes": 4, "namespaces": {"enabled": True}})
    assert needs(plain) == {"need_tc": False, "need_ss": False}
    missing = missing_rights(**needs(_scenario(at_round=2)), which=lambda tool: None,
                             status_text=lambda: ROOT_STATUS)
    assert [m.split("`")[1] for m in missing] == ["ip", "tc", "ss"]
    with pytest.raises(ConfigError, match=r"missing: the `ss` command \(Debian: apt-get install "
                                          r"iproute2\)"):
        check_rights(need_tc=True, need_ss=True,
                     which=lambda tool: None if tool == "ss" else tool,
                     status_text=lambda: ROOT_STATUS)


# -- commands -----------------------------------------------------------------------------------


def test_setup_counts_every_crossing_pair_at_the_hub(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    sink, counters = setup_batches(plan, {(0, 2), (2, 0), (0, 3)})
    assert sink == Batch("ip", plan.hub, (
        ("link", "add", "sink0", "type", "veth", "peer", "name", "sink1"),
        ("link", "set", "sink1", "up"), ("link", "set", "sink0", "up")))
    mirror = ("action", "mirred", "egress", "mirror", "dev", "sink0", "continue")
    assert counters.tool == "tc" and counters.namespace == plan.hub
    assert counters.lines == (
        ("qdisc", "add", "dev", "n0", "clsact"),
        ("filter", "add", "dev", "n0", "ingress", "pref", "50000", "protocol", "ip", "u32",
         "match", "ip", "dst", "10.77.0.3/32", *mirror),
        ("filter", "add", "dev", "n0", "ingress", "pref", "50000", "protocol", "ip", "u32",
         "match", "ip", "dst", "10.77.0.4/32", *mirror),
        ("qdisc", "add", "dev", "n2", "clsact"),
        ("filter", "add", "dev", "n2", "ingress", "pref", "50000", "protocol", "ip", "u32",
         "match", "ip", "dst", "10.77.0.1/32", *mirror),
    )
    assert counters.text().splitlines()[0] == "qdisc add dev n0 clsact"
    assert counters.command("/x/b.tc") == ["tc", "-n", plan.hub, "-batch", "/x/b.tc"]


def test_a_silent_cut_drops_at_the_hub_only(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    pairs = {(0, 2), (2, 0)}
    (hub,) = cut_batches(plan, 1, pairs, silent=True)
    redirect = ("action", "mirred", "egress", "redirect", "dev", "sink0")
    assert hub == Batch("tc", plan.hub, (
        ("filter", "add", "dev", "n0", "ingress", "pref", "101", "protocol", "ip", "u32",
         "match", "ip", "dst", "10.77.0.3/32", *redirect),
        ("filter", "add", "dev", "n2", "ingress", "pref", "101", "protocol", "ip", "u32",
         "match", "ip", "dst", "10.77.0.1/32", *redirect)))
    assert COUNT_PREF > 101  # a drop filter runs before the counting ones: never counted across
    (undo,) = heal_batches(plan, 1, pairs, silent=True)
    assert undo.lines == (("filter", "del", "dev", "n0", "ingress", "pref", "101"),
                          ("filter", "del", "dev", "n2", "ingress", "pref", "101"))


def test_a_reset_cut_also_prohibits_and_kills_in_each_node(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    pairs = {(0, 2), (0, 3), (2, 0), (3, 0)}
    hub, *routes = cut_batches(plan, 0, pairs, silent=False)
    assert len(hub.lines) == 4 and hub.namespace == plan.hub
    assert [(b.tool, b.namespace) for b in routes] == [
        ("ip", plan.nodes[i].namespace) for i in (0, 2, 3)]
    assert routes[0].lines == (("route", "add", "prohibit", "10.77.0.3/32", "metric", "100"),
                               ("route", "add", "prohibit", "10.77.0.4/32", "metric", "100"))
    assert routes[2].lines == (("route", "add", "prohibit", "10.77.0.1/32", "metric", "100"),)
    _, *unroutes = heal_batches(plan, 0, pairs, silent=False)
    assert [b.lines for b in unroutes] == [
        tuple(("route", "del", *line[2:]) for line in b.lines) for b in routes]
    kills = kill_commands(plan, pairs)
    assert kills[0] == ["ip", "netns", "exec", plan.nodes[0].namespace, "ss", "-t", "-n", "-H",
                        "-K", "dst", "10.77.0.3", "or", "dst", "10.77.0.4"]
    assert kills[1][-2:] == ["dst", "10.77.0.1"] and len(kills) == 3
    left = kill_commands(plan, pairs, kill=False)[0]
    assert left[4:10] == ["ss", "-t", "-n", "-H", "state", "established"]
    assert left[10:] == kills[0][9:]
    assert stats_command(plan, 2) == ["tc", "-s", "-n", plan.hub, "filter", "show", "dev", "n2",
                                      "ingress"]
    with pytest.raises(ConfigError, match="at most"):
        cut_batches(plan, COUNT_PREF, pairs, silent=True)


def test_every_command_stays_in_the_runs_namespaces(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    pairs = {(a, b) for a in (0, 1) for b in (2, 3)} | {(b, a) for a in (0, 1) for b in (2, 3)}
    batches = [*setup_batches(plan, pairs), *cut_batches(plan, 0, pairs, silent=False),
               *heal_batches(plan, 0, pairs, silent=False)]
    assert {b.namespace for b in batches} <= set(plan.namespaces)
    assert all(c[3] in plan.namespaces for c in kill_commands(plan, pairs))
    probing = netcut.probe_commands("gfl-cutprobe-1")
    assert probing[0] == ["ip", "netns", "add", "gfl-cutprobe-1"]
    assert all(c[1:3] == ["-n", "gfl-cutprobe-1"] for c in probing[1:])
    assert any("redirect" in c for c in probing) and any("prohibit" in c for c in probing)


# -- counters -----------------------------------------------------------------------------------


def test_filter_counters_are_read_per_preference_and_destination(tmp_path: Path) -> None:
    assert parse_filter_stats(TC_SHOWN) == {(100, "10.77.0.3"): (1180, 20),
                                            (COUNT_PREF, "10.77.0.3"): (579, 10),
                                            (COUNT_PREF, "10.77.0.4"): (0, 0)}
    assert parse_filter_stats("") == {}
    plan = _plan(tmp_path)
    snapshot = {(0, COUNT_PREF, "10.77.0.3"): (579, 10), (0, 100, "10.77.0.3"): (1180, 20),
                (2, COUNT_PREF, "10.77.0.1"): (21, 1), (1, COUNT_PREF, "10.77.0.4"): (999, 9)}
    assert partition_counts(plan, snapshot, {(0, 2), (2, 0)}, 0) == {
        "bytes_across": 600, "packets_across": 11, "bytes_dropped": 1180, "packets_dropped": 20}
    assert partition_counts(plan, snapshot, {(0, 2)}, 1)["bytes_dropped"] == 0  # not its filter


def _shown(counts: dict[tuple[int, str], tuple[int, int]]) -> str:
    blocks = []
    for (pref, ip), (sent, packets) in sorted(counts.items()):
        hexed = "".join(f"{int(part):02x}" for part in ip.split("."))
        blocks.append(f"filter protocol ip pref {pref} u32 chain 0 fh 800::800 order 2048\n"
                      f"  match {hexed}/ffffffff at 16\n\taction order 1: mirred\n"
                      f"\tAction statistics:\n\tSent {sent} bytes {packets} pkt (dropped 0)\n")
    return "\n".join(blocks)


class FakeHub:
    """Runs nothing: records each command (and each batch file's lines), answers ``tc -s filter
    show`` from ``counters`` and ``ss -K`` with ``killed`` sockets."""

    def __init__(self, plan: NetnsPlan, killed: int = 2, left: int = 0) -> None:
        self.plan = plan
        self.killed = killed
        self.left = left
        self.commands: list[list[str]] = []
        self.counters: dict[int, dict[tuple[int, str], tuple[int, int]]] = {}

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        if "-batch" in command:
            lines = Path(command[-1]).read_text().splitlines()
            self.commands += [[command[0], "-n", command[2], *line.split()] for line in lines]
        else:
            self.commands.append(command)
        out = ""
        if command[:2] == ["tc", "-s"]:
            port = command[command.index("dev") + 1]
            out = _shown(self.counters.get(int(port[1:]), {}))
        elif "ss" in command:  # killed by -K, or (with left) still established after
            count = self.killed if "-K" in command else self.left
            out = "ESTAB 0 0 10.77.0.1:4001 10.77.0.3:5555\n" * count
        return subprocess.CompletedProcess(command, 0, out, "")


def test_a_cut_and_heal_on_schedule_with_the_counters_in_the_report(tmp_path: Path) -> None:
    scenario = _scenario(at_seconds=1.0, heal_round=3, min_cut_seconds=2.0)
    plan = make_plan(scenario.namespaces, 4, tmp_path / "run")
    fake = FakeHub(plan, killed=2, left=1)
    network = set_up_cuts(scenario, NetnsSession(plan, run=fake), tmp_path / "run" / "netns")
    assert network is not None
    made = list(fake.commands)
    assert made[0][:4] == ["ip", "-n", plan.hub, "link"]
    assert len([c for c in made if "mirror" in c]) == 8  # each of the 8 ordered pairs counted
    fake.counters = {0: {(COUNT_PREF, "10.77.0.3"): (1000, 10)}}
    network.started = 100.0
    assert network.step([0, 0, 0, 0], 100.5) == []
    (cut,) = network.step([1, 1, 1, 1], 101.0)
    assert (cut["event"], cut["by"], cut["seconds"]) == ("cut", "seconds", 1.0)
    during = fake.commands[len(made):]
    assert len([c for c in during if "redirect" in c]) == 8
    assert len([c for c in during if "prohibit" in c]) == 8
    # each node aborts its connections across, then lists those left (none on a kernel with
    # sock_destroy; one a node here)
    assert len([c for c in during if "-K" in c]) == 4
    assert len([c for c in during if "established" in c]) == 4
    fake.counters = {0: {(COUNT_PREF, "10.77.0.3"): (1000, 10), (100, "10.77.0.3"): (300, 3)}}
    assert network.step([3, 3, 3, 3], 102.0) == []  # heal round reached, min_cut_seconds not
    fake.counters[2] = {(100, "10.77.0.1"): (200, 2)}
    (heal,) = network.step([4, 4, 4, 4], 103.5)
    assert (heal["event"], heal["by"]) == ("heal", "min_cut_seconds")
    undone = fake.commands[len(made) + len(during):]
    assert len([c for c in undone if c[3:5] == ["filter", "del"]]) == 4
    assert len([c for c in undone if c[3:5] == ["route", "del"]]) == 8
    fake.counters = {0: {(COUNT_PREF, "10.77.0.3"): (5000, 40)}}  # the drop filters are gone
    section = network.section()
    (entry,) = section["partitions"]
    assert section["namespaces"] is True and section["events"] == [cut, heal]
    assert entry["groups"] == [[0, 1], [2, 3]]
    assert entry["before_cut"] == {"bytes_across": 1000, "packets_across": 10}
    assert entry["while_cut"] == {"bytes_across": 0, "packets_across": 0, "bytes_dropped": 500,
                                  "packets_dropped": 5, "connections_reset": 8,
                                  "connections_left": 4}
    assert entry["after_heal"] == {"bytes_across": 4000, "packets_across": 30}
    assert section["totals"] == {"bytes_across": 5000, "packets_across": 40}
    assert sorted(p.name for p in (tmp_path / "run" / "netns").iterdir())[:3] == [
        "000-setup-hub.ip", "001-setup-hub.tc", "002-cut0-hub.tc"]


def test_overlapping_partitions_keep_their_own_filters(tmp_path: Path) -> None:
    scenario = from_dict(ScenarioConfig, {
        "nodes": 3, "namespaces": {"enabled": True},
        "partitions": [{"side": [0], "at_round": 1, "heal_round": 3, "silent": True},
                       {"groups": [[0], [1]], "at_round": 2, "silent": True}]})
    plan = make_plan(scenario.namespaces, 3, tmp_path / "run")
    fake = FakeHub(plan)
    network = set_up_cuts(scenario, NetnsSession(plan, run=fake), tmp_path / "netns")
    assert network is not None and len(network.pairs) == 4  # 0<->1, 0<->2
    network.step([1, 1, 1], 0.0)
    network.step([2, 2, 2], 1.0)
    mark = len(fake.commands)
    network.step([3, 3, 3], 2.0)  # partition 0 heals; partition 1 still cuts 0<->1
    undone = fake.commands[mark:]
    assert undone and all(c[-1] == "100" for c in undone if c[3:5] == ["filter", "del"])
    section = network.section()
    assert [p["healed"] is not None for p in section["partitions"]] == [True, False]
    assert "after_heal" not in section["partitions"][1]


def test_no_partitions_no_cuts_and_unreadable_counters_do_not_break_the_report(
        tmp_path: Path) -> None:
    plain = from_dict(ScenarioConfig, {"nodes": 4, "namespaces": {"enabled": True}})
    plan = make_plan(plain.namespaces, 4, tmp_path / "run")
    assert set_up_cuts(plain, NetnsSession(plan, run=FakeHub(plan)), tmp_path) is None

    def failing(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        code = 1 if command[:2] == ["tc", "-s"] else 0
        return subprocess.CompletedProcess(list(command), code, "", "Cannot find device")

    scenario = _scenario(at_round=1)
    network = set_up_cuts(scenario, NetnsSession(plan, run=failing), tmp_path / "netns")
    assert network is not None
    section = network.section()
    assert section["partitions"][0]["cut"] is None and section["totals"]["bytes_across"] == 0


def test_probe_says_why_it_cannot_and_leaves_nothing() -> None:
    made: list[str] = []

    def fake(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        if command[:3] == ["ip", "netns", "add"]:
            made.append(command[3])
        if command[:3] == ["ip", "netns", "delete"]:
            made.remove(command[3])
        if command[:3] == ["ip", "netns", "list"]:
            return subprocess.CompletedProcess(command, 0, "".join(f"{n}\n" for n in made), "")
        if "mirred" in command:
            return subprocess.CompletedProcess(command, 2, "", "Error: TC action not found.")
        return subprocess.CompletedProcess(command, 0, "", "")

    reason = netcut.probe(run=fake, check=lambda: None)
    assert reason is not None and "mirred" in reason and "TC action not found" in reason
    assert made == []
    refused = netcut.probe(run=fake, check=lambda: check_rights(
        need_tc=True, need_ss=True, which=lambda tool: None, status_text=lambda: ROOT_STATUS))
    assert refused is not None and "`ss`" in refused
