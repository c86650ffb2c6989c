"""Scenario namespaces without root: the [namespaces] section, the exact ip/tc commands, the
make-and-always-remove sequence (through a fake command runner) and the refusal without rights."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.config import ConfigError, from_dict
from gossipfl.scenario import netns, runner
from gossipfl.scenario.config import NamespacesConfig, ScenarioConfig, load_scenario
from gossipfl.scenario.launcher import run_in
from gossipfl.scenario.netns import (
    NetnsError,
    NetnsSession,
    check_rights,
    enter_netns,
    make_plan,
    missing_rights,
    open_namespaces,
    parse_netns_list,
    parse_sent_bytes,
    run_names,
    run_tag,
    setup_commands,
    tbf_args,
    teardown_commands,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
ROOT_STATUS = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
USER_STATUS = "Name:\tpython\nCapEff:\t0000000000000000\n"
TBF_SHOW = ("qdisc tbf 8003: root refcnt 3 rate 5Mbit burst 32Kb lat 200ms \n"
            " Sent 219958 bytes 484 pkt (dropped 0, overlimits 48 requeues 0) \n"
            " backlog 0b 0p requeues 0\n")


def _plan(tmp_path: Path, nodes: int = 2, rate: float | None = 10.0) -> netns.NetnsPlan:
    return make_plan(NamespacesConfig(enabled=True, rate_mbit=rate), nodes, tmp_path / "run")


class FakeIp:
    """Records commands; keeps a namespace list; fails the commands it is told to."""

    def __init__(self, existing: Sequence[str] = (), fail: str = "") -> None:
        self.namespaces = list(existing)
        self.commands: list[list[str]] = []
        self.fail = fail

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.commands.append(command)
        joined = " ".join(command)
        if self.fail and self.fail in joined:
            return subprocess.CompletedProcess(command, 2, "", "RTNETLINK answers: File exists")
        if command[:3] == ["ip", "netns", "list"]:
            listing = "".join(f"{n} (id: {i})\n" for i, n in enumerate(self.namespaces))
            return subprocess.CompletedProcess(command, 0, listing, "")
        if command[:3] == ["ip", "netns", "add"]:
            self.namespaces.append(command[3])
        if command[:3] == ["ip", "netns", "delete"]:
            self.namespaces.remove(command[3])
        shown = TBF_SHOW if command[:2] == ["tc", "-s"] else ""
        return subprocess.CompletedProcess(command, 0, shown, "")


def _allowed() -> None:
    return None


# -- configuration ------------------------------------------------------------------------------


def test_namespaces_are_off_by_default_and_read_from_toml() -> None:
    assert ScenarioConfig().namespaces == NamespacesConfig(enabled=False)
    scenario = load_scenario(SCENARIOS / "namespaces.toml")
    quick = load_scenario(SCENARIOS / "quickstart.toml")
    assert scenario.namespaces == NamespacesConfig(enabled=True, subnet="10.77.0.0/24",
                                                   rate_mbit=10.0)
    assert scenario.nodes == 8
    for part in ("rounds", "seed", "data", "model", "train", "topology", "protocol"):
        assert getattr(scenario, part) == getattr(quick, part), part


@pytest.mark.parametrize(
    ("section", "rule"),
    [
        ({"subnet": "10.77.0.1/24"}, "namespaces.subnet: 10.77.0.1/24 has host bits set"),
        ({"subnet": "not a subnet"}, "namespaces.subnet"),
        ({"subnet": "fd00::/64"}, "namespaces.subnet"),
        ({"subnet": "8.8.8.0/24"}, "must be a private IPv4 range"),
        ({"subnet": "10.77.0.0/31"}, "of at least 4 addresses"),
        ({"rate_mbit": 0.0}, r"rate_mbit must be in \(0, 100000\]"),
        ({"rate_mbit": -5.0}, "rate_mbit must be in"),
        ({"rate_mbit": math.nan}, "rate_mbit must be in"),
        ({"rate_mbit": math.inf}, "rate_mbit must be in"),
    ],
)
def test_bad_namespaces_sections_are_refused(section: dict, rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(ScenarioConfig, {"namespaces": {"enabled": True, **section}})


def test_a_subnet_too_small_for_the_nodes_is_refused() -> None:
    small = {"enabled": True, "subnet": "10.77.0.0/29"}  # 6 hosts
    assert from_dict(ScenarioConfig, {"nodes": 6, "namespaces": small}).namespaces.capacity == 6
    with pytest.raises(ConfigError, match=r"10.77.0.0/29 holds 6 nodes, the scenario has 7"):
        from_dict(ScenarioConfig, {"nodes": 7, "namespaces": small})


def test_namespaces_with_relays_are_refused() -> None:
    extra = {"links": [{"nodes_a": [0], "nodes_b": [1], "latency": 0.01}]}
    with pytest.raises(ConfigError, match=r"namespaces cannot be combined with \[\[links\]\]"):
        from_dict(ScenarioConfig, {"nodes": 4, "namespaces": {"enabled": True}, **extra})
    from_dict(ScenarioConfig, {"nodes": 4, "namespaces": {"enabled": False}, **extra})
    # partitions are cut at the IP layer instead (tests/test_netcut.py)
    from_dict(ScenarioConfig, {"nodes": 4, "namespaces": {"enabled": True},
                               "partitions": [{"side": [0], "at_round": 2}]})


# -- names and commands -------------------------------------------------------------------------


def test_plan_names_addresses_and_tags(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=3)
    tag = run_tag(tmp_path / "run")
    assert len(tag) == 8 and plan.tag == tag
    assert plan.hub == f"gfl-{tag}-hub"
    assert [s.namespace for s in plan.nodes] == [f"gfl-{tag}-n{i}" for i in range(3)]
    assert [s.ip for s in plan.nodes] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    assert plan.nodes[2].listen == "/ip4/10.77.0.3/tcp/4001"
    assert all(len(s.hub_iface) <= 15 for s in plan.nodes)  # IFNAMSIZ
    # the same folder (however spelt) has the same names; another folder has others
    assert run_tag(tmp_path / "x" / ".." / "run") == tag
    assert run_tag(tmp_path / "other") != tag
    other = make_plan(NamespacesConfig(enabled=True, subnet="192.168.8.0/28"), 3,
                      tmp_path / "other")
    assert [s.ip for s in other.nodes] == ["192.168.8.1", "192.168.8.2", "192.168.8.3"]
    assert not set(other.namespaces) & set(plan.namespaces)
    with pytest.raises(ConfigError, match="holds 14 nodes, not 15"):
        make_plan(NamespacesConfig(enabled=True, subnet="192.168.8.0/28"), 15, tmp_path)


def test_tbf_arguments() -> None:
    assert tbf_args(10.0) == ["tbf", "rate", "10000kbit", "burst", "32768", "latency", "200ms"]
    assert tbf_args(0.5)[2] == "500kbit"
    assert tbf_args(1000.0)[4] == "1250000"  # 1/100 s at 1 Gbit/s, above the floor


def test_setup_commands_exactly(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=2, rate=10.0)
    hub, n0, n1 = plan.hub, plan.nodes[0].namespace, plan.nodes[1].namespace
    cap = ["tbf", "rate", "10000kbit", "burst", "32768", "latency", "200ms"]
    node0 = [
        ["ip", "netns", "add", n0],
        ["ip", "-n", hub, "link", "add", "n0", "type", "veth", "peer", "name", "eth0",
         "netns", n0],
        ["ip", "-n", hub, "link", "set", "n0", "master", "br0"],
        ["ip", "-n", hub, "link", "set", "n0", "up"],
        ["ip", "-n", n0, "addr", "add", "10.77.0.1/24", "dev", "eth0"],
        ["ip", "-n", n0, "link", "set", "eth0", "up"],
        ["ip", "-n", n0, "link", "set", "lo", "up"],
        ["tc", "-n", n0, "qdisc", "add", "dev", "eth0", "root", *cap],
        ["tc", "-n", hub, "qdisc", "add", "dev", "n0", "root", *cap],
    ]
    commands = setup_commands(plan)
    assert commands[:3] == [["ip", "netns", "add", hub],
                            ["ip", "-n", hub, "link", "add", "br0", "type", "bridge"],
                            ["ip", "-n", hub, "link", "set", "br0", "up"]]
    assert commands[3:12] == node0
    assert len(commands) == 3 + 2 * 9
    assert ["ip", "-n", n1, "addr", "add", "10.77.0.2/24", "dev", "eth0"] in commands
    # nothing is made in the runner's own namespace: every link command names one of ours
    for command in commands:
        if command[:2] != ["ip", "netns"]:
            assert command[1:3] in (["-n", hub], ["-n", n0], ["-n", n1]), command
    # without a rate: no tc at all
    uncapped = setup_commands(_plan(tmp_path, nodes=2, rate=None))
    assert not [c for c in uncapped if c[0] == "tc"] and len(uncapped) == 3 + 2 * 7
    assert teardown_commands([n0, hub]) == [["ip", "netns", "delete", n0],
                                            ["ip", "netns", "delete", hub]]


def test_listing_parsing_and_this_runs_names(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=2)
    listed = parse_netns_list(f"{plan.hub} (id: 3)\nother-ns\n{plan.nodes[1].namespace}\n"
                              f"gfl-{'0' * 8}-n0 (id: 1)\n{plan.prefix[:-1]}x-n0\n\n")
    assert listed[0] == plan.hub and "other-ns" in listed
    assert run_names(plan, listed) == [plan.nodes[1].namespace, plan.hub]  # hub last
    assert parse_sent_bytes(TBF_SHOW) == 219958
    assert parse_sent_bytes("qdisc noqueue 0: root refcnt 2\n Sent 5 bytes 1 pkt\n") is None


# -- rights -------------------------------------------------------------------------------------


def test_missing_rights_are_named() -> None:
    def have(tool: str) -> str:
        return f"/usr/sbin/{tool}"

    assert missing_rights(need_tc=True, which=have, status_text=lambda: ROOT_STATUS) == []
    assert missing_rights(need_tc=True, which=have, status_text=lambda: USER_STATUS) == [
        "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    net_admin_only = "CapEff:\t0000000000001000\n"
    assert missing_rights(need_tc=False, which=have,
                          status_text=lambda: net_admin_only) == ["CAP_SYS_ADMIN"]
    no_tools = missing_rights(need_tc=True, which=lambda tool: None,
                              status_text=lambda: ROOT_STATUS)
    assert [m.split("`")[1] for m in no_tools] == ["ip", "tc"]
    assert len(missing_rights(need_tc=False, which=lambda tool: None,
                              status_text=lambda: ROOT_STATUS)) == 1
    with pytest.raises(ConfigError, match=r"needs root .* missing: CAP_NET_ADMIN, CAP_SYS_ADMIN, "
                                          r"the `ip` command \(Debian: apt-get install iproute2\)"):
        check_rights(need_tc=False, which=lambda tool: None, status_text=lambda: USER_STATUS)


def test_without_rights_nothing_is_run(tmp_path: Path) -> None:
    fake = FakeIp()

    def refuse() -> None:
        check_rights(need_tc=True, status_text=lambda: USER_STATUS)

    with pytest.raises(ConfigError, match="CAP_NET_ADMIN"), \
            open_namespaces(_plan(tmp_path), run=fake, check=refuse):
        pytest.fail("the block must not run")
    assert fake.commands == []


def test_the_cli_refuses_a_namespaced_run_without_rights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def as_a_user(*, need_tc: bool, need_ss: bool = False) -> None:
        check_rights(need_tc=need_tc, need_ss=need_ss, status_text=lambda: USER_STATUS)

    monkeypatch.setattr(runner, "check_rights", as_a_user)
    out = tmp_path / "out"
    assert main(["run", str(SCENARIOS / "namespaces.toml"), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gossipfl run: namespaces.enabled needs root")
    assert "Traceback" not in err and "CAP_NET_ADMIN" in err
    assert not out.exists()  # refused before anything was made


# -- make, then always remove -------------------------------------------------------------------


def test_namespaces_are_made_then_removed(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=2)
    fake = FakeIp(existing=["someone-else"])
    with open_namespaces(plan, run=fake, check=_allowed) as session:
        assert sorted(fake.namespaces) == sorted([*plan.namespaces, "someone-else"])
        made = [c for c in fake.commands if c[:3] != ["ip", "netns", "list"]]
        assert made == setup_commands(plan)
        session.snapshot()
    assert fake.namespaces == ["someone-else"]
    deletes = [c[3] for c in fake.commands if c[:3] == ["ip", "netns", "delete"]]
    assert deletes == [plan.nodes[0].namespace, plan.nodes[1].namespace, plan.hub]
    section = session.section()
    assert [(n["ip"], n["rate_mbit"]) for n in section["nodes"]] == [("10.77.0.1", 10.0),
                                                                      ("10.77.0.2", 10.0)]
    assert section["nodes"][1]["sent_bytes_capped"] == {"node_side": 219958,
                                                        "hub_side": 219958}
    assert "rate 5Mbit" in section["nodes"][0]["qdisc"]["hub_side"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_namespaces_are_removed_when_the_run_fails(tmp_path: Path,
                                                   error: type[BaseException]) -> None:
    plan = _plan(tmp_path, nodes=3)
    fake = FakeIp()
    with pytest.raises(error), open_namespaces(plan, run=fake, check=_allowed):
        assert len(fake.namespaces) == 4
        raise error()
    assert fake.namespaces == []


def test_a_failed_command_is_a_clear_error_and_what_was_made_goes(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=3)
    fake = FakeIp(fail=f"add dev {plan.nodes[1].hub_iface} root")  # the hub-side cap of node 1
    with pytest.raises(NetnsError, match=r"`tc -n gfl-\w+-hub qdisc add dev n1 root tbf .*` "
                                         r"failed \(2\): RTNETLINK answers: File exists"), \
            open_namespaces(plan, run=fake, check=_allowed):
        pytest.fail("the block must not run")
    assert issubclass(NetnsError, ConfigError)  # the CLI prints it without a traceback
    assert fake.namespaces == []
    assert not any(plan.nodes[2].namespace in c for c in fake.commands[:-4])  # stopped at n1


def test_leftovers_of_a_crashed_run_are_removed_first(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=2)
    other = _plan(tmp_path / "elsewhere", nodes=2)
    stale = [plan.hub, plan.nodes[0].namespace]
    fake = FakeIp(existing=[*stale, other.hub])
    with open_namespaces(plan, run=fake, check=_allowed):
        first_add = fake.commands.index(["ip", "netns", "add", plan.hub])
        deleted_before = [c[3] for c in fake.commands[:first_add] if c[2] == "delete"]
        assert deleted_before == [plan.nodes[0].namespace, plan.hub]
    assert fake.namespaces == [other.hub]  # another run's namespaces are not ours to touch


def test_a_snapshot_keeps_what_tc_said_even_when_it_fails(tmp_path: Path) -> None:
    plan = _plan(tmp_path, nodes=1)
    session = NetnsSession(plan, run=FakeIp(fail="qdisc show"))
    session.snapshot()
    entry = session.section()["nodes"][0]
    assert "failed (2)" in entry["qdisc"]["node_side"]
    assert entry["sent_bytes_capped"] == {"node_side": None, "hub_side": None}


def test_entering_a_namespace_that_is_not_there_fails_before_the_node_runs(
        tmp_path: Path) -> None:
    ran = []
    with pytest.raises(FileNotFoundError):
        run_in(str(tmp_path / "no-such-netns"), lambda: ran.append(1))
    assert ran == []
    assert run_in(None, lambda: 7) == 7
    with pytest.raises(FileNotFoundError):
        enter_netns(tmp_path / "missing")


def test_sigterm_to_the_runner_still_removes_the_namespaces(tmp_path: Path) -> None:
    import os
    import signal

    before = signal.getsignal(signal.SIGTERM)
    fake = FakeIp()
    with pytest.raises(SystemExit) as stopped, \
            open_namespaces(_plan(tmp_path), run=fake, check=_allowed):
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM must end the block")
    assert stopped.value.code == 128 + signal.SIGTERM
    assert fake.namespaces == []
    assert signal.getsignal(signal.SIGTERM) == before


def test_probe_says_why_it_cannot_and_leaves_nothing() -> None:
    fake = FakeIp(fail="type veth")
    reason = netns.probe(run=fake, check=_allowed)
    assert reason is not None and "type veth" in reason and "failed (2)" in reason
    assert fake.namespaces == []
    assert netns.probe(run=FakeIp(), check=_allowed) is None
    refused = netns.probe(run=FakeIp(), check=lambda: check_rights(
        need_tc=True, status_text=lambda: USER_STATUS))
    assert refused is not None and "CAP_NET_ADMIN" in refused
