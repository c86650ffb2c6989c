"""End to end across real NAT, through ``gossipfl run``: a ``[[sites]]`` scenario of 4 nodes at 2
private sites (2 hosts on each site's LAN, behind its own NAT router) and 2 public relays
(not members), relay 0 killed after round 2. Runs as root with iproute2 and iptables (CI), else
skips.

What it checks: every node finished and learned, one model (consensus), the two hosts of a site
linked directly on their LAN, hosts of different sites only through a relay (hole punching is
off, and the routers let nothing unsolicited in), the relay killed mid-run was replaced by the
other (which then carried bytes), no node trained alone, and nothing of the lab is left.

Timing: the kill is tied to round 2 of 15; the runner's first look that sees round 2 kills it
(polls every 0.2 s), and the 13 rounds after it are the margin (see tests/e2e_scenarios.py).
Once relay 0 is gone, a cross-site exchange cannot complete until the nodes re-link through
relay 1, and a node does not finish while a neighbour it wants is missing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from e2e_scenarios import BASE, TWO_SITES, run_text

from gossipfl.scenario.netns import run_tag

pytestmark = pytest.mark.e2e


def test_sites_behind_nat_learn_through_relays_and_survive_losing_one(
        tmp_path: Path, can_make_nat: None) -> None:
    text = BASE.format(name="e2esites", nodes=4, rounds=15, topology="full", degree=3,
                       round_timeout=20.0) + TWO_SITES.format(kind="kill")
    code, report = run_text(tmp_path, text)
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout
    assert f"gfl-nat-{run_tag(tmp_path / 'out')}-" not in left  # the lab is gone
    assert code == 0
    nodes = report["nodes"]
    assert [n["status"] for n in nodes] == ["done"] * 4
    assert min(n["final_accuracy"] for n in nodes) > 0.8
    assert report["final_consensus_distance"] <= 1e-3
    assert report["summary"]["isolated_nodes"] == []
    assert [(n["site"], n["ip"]) for n in nodes] == [
        ("a", "10.66.0.2"), ("a", "10.66.0.3"), ("b", "10.66.1.2"), ("b", "10.66.1.3")]
    section = report["sites"]
    links = {tuple(link["nodes"]): link for link in section["links"]}
    assert links[(0, 1)]["how"] == links[(2, 3)]["how"] == "direct"
    for a, b in ((0, 2), (0, 3), (1, 2), (1, 3)):
        assert links[(a, b)]["how"] == "relayed", links[(a, b)]
    assert nodes[0]["links"] == {"1": "direct", "2": "relayed", "3": "relayed"}
    # relay 0 went down after round 2; relay 1 carried the cross-site traffic after it
    first, second = section["relays"]
    assert first["down"]["kind"] == "kill" and first["down"]["max_round"] >= 2
    assert section["relay_events"][0]["relay"] == 0
    assert second["down"] is None and second["relayed_bytes"] > 0
    # every node kept its three neighbours to the end (full topology)
    assert all(len(n["neighbours"]) == 3 for n in nodes)
