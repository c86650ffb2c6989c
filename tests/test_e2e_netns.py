"""End to end over real interfaces: node processes in their own network namespaces, each with its
own address on a bridge and a tc cap both ways; the namespaces are gone afterwards. Runs as root
with iproute2 (CI), else skips."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

import pytest
from e2e_scenarios import BASE, run_text

from gossipfl.scenario.config import NamespacesConfig
from gossipfl.scenario.netns import make_plan, probe

pytestmark = pytest.mark.e2e

SUBNET = "10.79.3.0/24"
NAMESPACES = f'\n[namespaces]\nenabled = true\nsubnet = "{SUBNET}"\nrate_mbit = 5.0\n'


@pytest.fixture(scope="module")
def can_make_namespaces() -> None:
    reason = probe()
    if reason is not None:
        pytest.skip(f"cannot make network namespaces here: {reason}")


def _left_behind(tag: str) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True,
                           check=True).stdout
    return [line for line in (names + links).splitlines() if tag in line]


@pytest.mark.parametrize("spawn", [False, True], ids=["forked", "spawned"])
def test_nodes_in_namespaces_learn_over_capped_veth_links(
        tmp_path: Path, spawn: bool, can_make_namespaces: None) -> None:
    plan = make_plan(NamespacesConfig(enabled=True, subnet=SUBNET, rate_mbit=5.0), 3,
                     tmp_path / "out")
    text = BASE.format(name="e2enetns", nodes=3, rounds=6, topology="full", degree=2,
                       round_timeout=20.0) + NAMESPACES
    code, report = run_text(tmp_path, text, spawn=spawn)
    assert code == 0
    assert [n["status"] for n in report["nodes"]] == ["done"] * 3
    assert min(n["final_accuracy"] for n in report["nodes"]) > 0.8
    # each node listened on its own namespace address, the one the report names
    section = report["namespaces"]
    assert section["rate_mbit"] == 5.0 and section["hub"] == plan.hub
    listened = []
    for index, entry in enumerate(section["nodes"]):
        info = json.loads((tmp_path / "out" / "nodes" / f"node-{index:02d}" / "node.json")
                          .read_text())
        (addr,) = info["addrs"]
        ip = addr.split("/")[2]
        assert ip == entry["ip"] == plan.nodes[index].ip
        assert ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(SUBNET)
        listened.append(ip)
        # the cap was in place at both ends of its link, and the node's traffic went through it
        for side in ("node_side", "hub_side"):
            assert entry["qdisc"][side].startswith("qdisc tbf"), entry["qdisc"][side]
            assert "rate 5Mbit" in entry["qdisc"][side]
            assert entry["sent_bytes_capped"][side] > 10_000
    assert len(set(listened)) == 3
    assert all(n["bytes_received"] > 0 for n in report["nodes"])
    # nothing left: no namespace, no interface with the run's tag
    assert _left_behind(plan.tag) == []
