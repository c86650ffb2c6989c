"""Real NAT in network namespaces (gossipfl/scenario/natlab.py), and what py-libp2p 0.8.1's
circuit relay v2 and DCUtR do across it.

The plan and command tests run anywhere. The e2e tests build a lab (root, iproute2, iptables;
else they skip) and run programs in its namespaces with ``ip netns exec``: raw TCP for the NAT
itself, and three py-libp2p peers (tests/natlab_peers.py) for relay v2 and hole punching. Every
wait is bounded; the lab is gone afterwards, which each e2e test checks."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gossipfl.config import ConfigError
from gossipfl.scenario.natlab import (
    PREFIX,
    PUBLIC_SUBNET,
    NatPlan,
    lab_names,
    make_plan,
    missing,
    nat_lab,
    probe,
    router_rules,
    setup_commands,
)

ROOT = Path(__file__).resolve().parent.parent
PEERS = Path(__file__).resolve().parent / "natlab_peers.py"
TCP_PORT = 5000


# --- plan and commands (no root needed) ---------------------------------------------------------

def test_plan_gives_every_site_its_own_router_subnet_and_public_address() -> None:
    plan = make_plan(3, "abc123")
    assert plan.hub == "gfl-nat-abc123-hub" and plan.public == "gfl-nat-abc123-pub"
    assert [s.host for s in plan.sites] == [f"gfl-nat-abc123-p{i}" for i in range(3)]
    assert len(set(plan.namespaces)) == len(plan.namespaces) == 8
    assert len({s.wan_ip for s in plan.sites} | {plan.public_ip}) == 4
    assert len({s.subnet for s in plan.sites}) == 3
    for site in plan.sites:
        assert site.host_ip != site.lan_ip and site.wan_ip.startswith("198.18.0.")
    assert max(len(name) for name in plan.namespaces) < 64
    assert make_plan(1).tag != make_plan(1).tag  # random tags: labs never share a name
    assert PREFIX == "gfl-nat-" and PUBLIC_SUBNET.subnet_of(ipaddress.IPv4Network("198.18.0.0/15"))


def test_every_command_stays_inside_the_labs_own_namespaces() -> None:
    plan = make_plan(2, "t1")
    mine = set(plan.namespaces)
    for command in setup_commands(plan):
        if command[:3] == ["ip", "netns", "add"]:
            assert command[3] in mine
        elif command[:2] == ["ip", "-n"]:
            assert command[2] in mine, command
        else:  # iptables and sysctl run only through `ip netns exec` in a router namespace
            assert command[:3] == ["ip", "netns", "exec"], command
            assert command[3] in {s.router for s in plan.sites}, command


def test_routers_masquerade_and_drop_unsolicited_inbound() -> None:
    site = make_plan(1, "t2").sites[0]
    stealth = [" ".join(c) for c in router_rules(site, drop_unsolicited=True)]
    plain = [" ".join(c) for c in router_rules(site, drop_unsolicited=False)]
    assert any("MASQUERADE" in r and site.subnet in r for r in stealth)
    assert any("ip_forward=1" in r for r in stealth)
    assert any("FORWARD -i wan -o lan -j DROP" in r for r in stealth + plain)
    assert any("INPUT -i wan -j DROP" in r for r in stealth)
    assert not any("INPUT" in r for r in plain)
    # a port-preserving NAT unless asked for random ports (a "symmetric" NAT)
    assert not any("--random-fully" in r for r in stealth + plain)
    symmetric = [" ".join(c) for c in router_rules(site, drop_unsolicited=True,
                                                   random_ports=True)]
    assert [r for r in symmetric if "--random-fully" in r] == [
        r + " --random-fully" for r in stealth if "MASQUERADE" in r]
    assert make_plan(2, "t2", random_ports=True).random_ports is True
    assert sum("--random-fully" in " ".join(c)
               for c in setup_commands(make_plan(2, "t2", random_ports=True))) == 2



@pytest.mark.parametrize(("sites", "tag"), [(0, "a"), (201, "a"), (1, "a-b"), (1, "x" * 13)])
def test_bad_sites_or_tags_are_refused(sites: int, tag: str) -> None:
    with pytest.raises(ConfigError, match="natlab"):
        make_plan(sites, tag)


def test_lab_names_are_only_this_labs() -> None:
    plan = make_plan(1, "t3")
    listed = ["gfl-nat-t3-p0", "gfl-nat-t33-p0", "gfl-nat-t3-hub", "other", "gfl-nat-t3-r0"]
    assert lab_names(plan, listed) == ["gfl-nat-t3-p0", "gfl-nat-t3-r0", "gfl-nat-t3-hub"]


class FakeRun:
    """Records commands; fails the ``fail_at``-th one; ``ip netns list`` lists what was added."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.commands: list[list[str]] = []
        self.fail_at = fail_at
        self.alive: list[str] = []

    def __call__(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        command = list(command)
        self.commands.append(command)
        if command == ["ip", "netns", "list"]:
            return subprocess.CompletedProcess(command, 0, "\n".join(self.alive), "")
        if command[:3] == ["ip", "netns", "delete"]:
            self.alive.remove(command[3])
        elif self.fail_at is not None and len(self.commands) == self.fail_at:
            return subprocess.CompletedProcess(command, 2, "", "RTNETLINK answers: boom")
        elif command[:3] == ["ip", "netns", "add"]:
            self.alive.append(command[3])
        return subprocess.CompletedProcess(command, 0, "", "")


def test_a_failed_step_removes_the_whole_lab_and_names_the_command() -> None:
    run = FakeRun(fail_at=20)
    with (pytest.raises(ConfigError, match="RTNETLINK answers: boom"),
          nat_lab(2, tag="t4", run=run, check=list)):
        pytest.fail("the block must not run")
    assert run.alive == []
    assert any(c[:3] == ["ip", "netns", "delete"] for c in run.commands)


def test_an_error_in_the_block_still_removes_the_lab() -> None:
    run = FakeRun()
    with (pytest.raises(RuntimeError, match="in the block"),
          nat_lab(2, tag="t5", run=run, check=list) as plan):
        assert len(run.alive) == len(plan.namespaces)
        raise RuntimeError("in the block")
    assert run.alive == []


def test_without_rights_or_tools_it_says_what_is_missing() -> None:
    lacks = missing(which=lambda tool: None, status_text=lambda: "CapEff:\t0000000000000000\n")
    text = " ".join(lacks)
    assert "CAP_NET_ADMIN" in text and "`ip`" in text and "iptables" in text
    reason = probe(run=FakeRun(), check=lambda: ["the `iptables` command"])
    assert reason is not None and "iptables" in reason


# --- real NAT (root, iproute2, iptables) --------------------------------------------------------


def _in_ns(namespace: str, code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _left_behind(plan: NatPlan) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    return [line for line in names.splitlines() if line.startswith(plan.prefix)]


SERVER = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", {port})); s.listen(); s.settimeout({wait}); print("listening", flush=True)
try:
    c, a = s.accept(); print("accepted", a[0])
except socket.timeout:
    print("nothing")
"""

CLIENT = """
import socket
try:
    c = socket.create_connection(("{ip}", {port}), timeout={wait}); print("connected")
except OSError as e:
    print(type(e).__name__)
"""


def _serve(namespace: str, wait: float) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", namespace, sys.executable, "-c",
         SERVER.format(port=TCP_PORT, wait=wait)], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"  # it ends within `wait` anyway
    return server


@pytest.mark.e2e
def test_a_private_host_reaches_the_public_host_which_sees_its_router(can_make_nat: None) -> None:
    with nat_lab(2) as plan:
        site = plan.sites[0]
        server = _serve(plan.public, wait=10)
        client = _in_ns(site.host, CLIENT.format(ip=plan.public_ip, port=TCP_PORT, wait=5), 20)
        seen, _ = server.communicate(timeout=20)
        assert client.stdout.strip() == "connected", client.stderr
        # NAT is real: the far end sees the router's public address, not the host's own
        assert seen.strip() == f"accepted {site.wan_ip}"
        assert site.wan_ip != site.host_ip
    assert _left_behind(plan) == []


@pytest.mark.e2e
@pytest.mark.parametrize("drop_unsolicited", [True, False], ids=["stealth", "resetting"])
def test_nothing_public_can_open_a_connection_to_a_private_host(
        can_make_nat: None, drop_unsolicited: bool) -> None:
    with nat_lab(1, drop_unsolicited=drop_unsolicited) as plan:
        site = plan.sites[0]
        server = _serve(site.host, wait=12)
        # to the router's public address: no port forward
        to_wan = _in_ns(plan.public, CLIENT.format(ip=site.wan_ip, port=TCP_PORT, wait=2), 20)
        # even a public host that routes the private subnet through the router is dropped
        subprocess.run(["ip", "-n", plan.public, "route", "add", site.subnet, "via",
                        site.wan_ip], check=True, timeout=10)
        to_host = _in_ns(plan.public, CLIENT.format(ip=site.host_ip, port=TCP_PORT, wait=2), 20)
        # the server was listening all along: from the router's own private side it is reached
        from_lan = _in_ns(site.router, CLIENT.format(ip=site.host_ip, port=TCP_PORT, wait=2), 20)
        seen, _ = server.communicate(timeout=20)
        wan_said = "TimeoutError" if drop_unsolicited else "ConnectionRefusedError"
        assert to_wan.stdout.strip() == wan_said, to_wan.stderr
        assert to_host.stdout.strip() == "TimeoutError", to_host.stderr
        assert from_lan.stdout.strip() == "connected", from_lan.stderr
        assert seen.strip() == f"accepted {site.lan_ip}"  # only the router's own connection
    assert _left_behind(plan) == []


def _wait_for(path: Path, seconds: float) -> dict[str, Any] | None:
    for _ in range(int(seconds / 0.2)):
        if path.exists():
            return json.loads(path.read_text())
        time.sleep(0.2)
    return None


def _run_peers(plan: NatPlan, out: Path, relay_args: Sequence[str] = ()) -> dict[str, Any]:
    """Relay in the public namespace, listener at site 0, dialer at site 1; what each wrote."""
    listener_site, dialer_site = plan.sites
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [sys.executable, str(PEERS)]
    common = ["--out", str(out), "--relay-ip", plan.public_ip]
    procs: list[subprocess.Popen[bytes]] = []
    found: dict[str, Any] = {}
    try:
        for role, namespace, extra in (
                ("relay", plan.public, list(relay_args)),
                ("listener", listener_site.host, ["--own-ip", listener_site.host_ip])):
            with open(out / f"{role}.err", "wb") as err:
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", namespace, *base, role, *common, *extra,
                     "--hold", "90"], stderr=err, env=env))
            found[f"{role}-ready"] = _wait_for(out / f"{role}-ready.json", 45)
            assert found[f"{role}-ready"] is not None, (out / f"{role}.err").read_text()
        with open(out / "dialer.err", "wb") as err:
            subprocess.run(["ip", "netns", "exec", dialer_site.host, *base, "dialer", *common,
                            "--own-ip", dialer_site.host_ip, "--listener-ip",
                            listener_site.host_ip, "--listener-wan", listener_site.wan_ip],
                           stderr=err, env=env, timeout=150, check=False)
        for role in ("dialer", "listener", "relay"):
            found[role] = _wait_for(out / f"{role}.json", 20)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    return found


@pytest.mark.e2e
@pytest.mark.parametrize(("drop_unsolicited", "random_ports"),
                         [(True, False), (False, False), (True, True)],
                         ids=["stealth", "resetting", "symmetric"])
def test_libp2p_peers_behind_nat_meet_through_circuit_relay_v2_then_hole_punch(
        can_make_nat: None, tmp_path: Path, drop_unsolicited: bool, random_ports: bool) -> None:
    with nat_lab(2, drop_unsolicited=drop_unsolicited, random_ports=random_ports) as plan:
        found = _run_peers(plan, tmp_path)
    assert _left_behind(plan) == []
    listener_site, dialer_site = plan.sites
    dialer, listener, relay = found["dialer"], found["listener"], found["relay"]
    assert dialer is not None, (tmp_path / "dialer.err").read_text()[-3000:]
    # neither of the listener's addresses can be dialled directly from another site
    assert dialer["direct_private"] != "connected" and dialer["direct_wan"] != "connected"
    # the listener reserved a slot; the dialer reached it through the relay, end to end
    assert listener["reserved"] is True
    assert "relay_error" not in dialer, dialer.get("relay_error")
    assert dialer["echo_ok"] is True
    assert dialer["stream_remote"] == f"('{plan.public_ip}', 4001)"  # over the relay
    # the relay saw both peers at their routers' public addresses (NAT on both sides)
    assert relay["remote_addrs"][listener["peer"]] and relay["remote_addrs"][dialer["peer"]]
    assert relay["remote_addrs"][listener["peer"]][0].startswith(f"('{listener_site.wan_ip}',")
    assert relay["remote_addrs"][dialer["peer"]][0].startswith(f"('{dialer_site.wan_ip}',")
    punched = dialer["dcutr"]
    assert punched["echo_ok"] is True  # the link works after DCUtR either way
    direct = f"('{listener_site.wan_ip}', 4001)"
    relayed = f"('{plan.public_ip}', 4001)"
    if random_ports:
        # each connection out gets its own random public port, so no punch reaches the port
        # its peer's own punch opened: every punch misses, the peers stay relayed
        assert punched["initiate_hole_punch"] is False
        assert direct not in punched["remote_addrs"]
        assert punched["stream_remote"] == relayed
    elif drop_unsolicited or punched["initiate_hole_punch"]:
        # DCUtR (TCP simultaneous open, ports kept by MASQUERADE) makes a direct link, and the
        # next stream goes over it. Behind resetting routers only when the two SYNs cross in
        # flight (a race the punch can win or lose)
        assert punched["initiate_hole_punch"] is True
        assert direct in punched["remote_addrs"]
        assert punched["stream_remote"] == direct
    else:
        # the far router answered the first SYN with a reset before its own side's SYN had
        # opened the mapping: the peers stay relayed (every dial got "Connection refused")
        assert direct not in punched["remote_addrs"]
        assert punched["stream_remote"] == relayed
        assert "Connection refused" in (tmp_path / "dialer.err").read_text()


@pytest.mark.e2e
def test_the_relay_cuts_a_circuit_at_its_data_limit(can_make_nat: None, tmp_path: Path) -> None:
    """A 16 KiB frame each way needs more than 24 KiB of circuit: the relay resets it."""
    with nat_lab(2) as plan:
        found = _run_peers(plan, tmp_path, ["--data-limit", str(24 * 1024)])
    assert _left_behind(plan) == []
    dialer, listener = found["dialer"], found["listener"]
    assert dialer is not None, (tmp_path / "dialer.err").read_text()[-3000:]
    assert listener["reserved"] is True and "dial_seconds" in dialer  # the circuit was made
    assert dialer.get("echo_ok") is not True
    assert dialer["relay_error"]["step"] == "echo", dialer["relay_error"]
    assert "Circuit-wide data limit exceeded" in (tmp_path / "relay.err").read_text()
