"""End to end: a partition cut and healed at the IP layer between node processes that each run in
their own network namespace (gossipfl/scenario/netcut.py). Runs as root with iproute2 (ip, tc,
ss) on a kernel with clsact, u32 and mirred (CI), else skips saying why."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from e2e_scenarios import BASE, run_text

from gossipfl.scenario import netcut, netns
from gossipfl.scenario.config import NamespacesConfig

pytestmark = pytest.mark.e2e

SUBNET = "10.79.4.0/24"
NAMESPACES = f'\n[namespaces]\nenabled = true\nsubnet = "{SUBNET}"\nrate_mbit = 10.0\n'
PARTITION = """
[[partitions]]
groups = [[0, 1], [2, 3]]
at_round = 3
heal_round = 8
min_cut_seconds = {min_cut}
silent = {silent}
"""


@pytest.fixture(scope="module")
def can_cut_in_namespaces() -> None:
    for probe in (netns.probe, netcut.probe):
        reason = probe()
        if reason is not None:
            pytest.skip(f"cannot make or cut network namespaces here: {reason}")


def _left_behind(tag: str) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    return [line for line in names.splitlines() if tag in line]


def _failed_sends_across(out: Path, report: dict) -> list[int]:
    """The rounds of every send a node logged as failed (reset, refused or timed out) to a
    neighbour across the cut ({0, 1} | {2, 3})."""
    index_of = {n["peer_id"]: n["index"] for n in report["nodes"]}
    rounds = []
    for node in range(4):
        text = (out / "nodes" / f"node-{node:02d}" / "node.log").read_text()
        for round_, peer in re.findall(r"(?:could not send|sending) round (\d+) to (\w+)", text):
            if peer in index_of and index_of[peer] // 2 != node // 2:
                rounds.append(int(round_))
    return rounds


@pytest.mark.parametrize("silent", [False, True], ids=["reset", "silent"])
def test_a_cut_in_namespaces_stops_traffic_across_and_the_heal_ends_in_one_model(
        tmp_path: Path, silent: bool, can_cut_in_namespaces: None) -> None:
    plan = netns.make_plan(NamespacesConfig(enabled=True, subnet=SUBNET), 4, tmp_path / "out")
    text = BASE.format(name="e2enetcut", nodes=4, rounds=14, topology="full", degree=3,
                       round_timeout=4.0).replace(
        "[protocol]\n", "[protocol]\nrequest_timeout = 4.0\nmax_missed_rounds = 2\n")
    # silent: long enough a cut for the nodes to time their neighbours across out
    text += NAMESPACES + PARTITION.format(min_cut=6.0 if silent else 3.0,
                                          silent=str(silent).lower())
    code, report = run_text(tmp_path, text)
    assert code == 0
    assert [n["status"] for n in report["nodes"]] == ["done"] * 4
    section = report["network"]
    assert section["namespaces"] is True
    (partition,) = section["partitions"]
    assert [e["event"] for e in section["events"]] == ["cut", "heal"]
    assert partition["cut"]["max_round"] >= 3 and partition["healed"]["max_round"] >= 8
    # traffic crossed before the cut and after the heal, and none while it was cut
    assert partition["before_cut"]["bytes_across"] > 10_000
    assert partition["while_cut"]["bytes_across"] == 0
    assert partition["while_cut"]["packets_across"] == 0
    assert partition["after_heal"]["bytes_across"] > 10_000
    if silent:  # the nodes kept trying across, and the hub dropped it without a word
        assert partition["while_cut"]["packets_dropped"] > 0
        assert partition["while_cut"]["connections_reset"] == 0
    else:  # the connections across were reset where they were (the routes refuse new ones)
        assert partition["while_cut"]["connections_reset"] > 0
        assert partition["while_cut"]["connections_left"] == 0
    assert partition["rejoined"] is True
    # the nodes met the cut: sends across failed (reset) or timed out (silent) in its rounds
    failed = _failed_sends_across(tmp_path / "out", report)
    assert any(partition["cut"]["min_round"] <= r <= partition["healed"]["max_round"]
               for r in failed), failed
    # one model at the end, nobody alone, nobody finished without a member
    assert report["final_consensus_distance"] <= 1e-3
    assert report["summary"]["isolated_nodes"] == []
    assert report["summary"]["finished_without"] == {}
    assert _left_behind(plan.tag) == []
