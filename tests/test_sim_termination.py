"""Never finish apart, on the simulator (every node the real ``Node.run``, in virtual time): a
partition that outlasts the training rounds heals into one model; one that never heals ends
after ``gone_seconds`` with the report naming whom each node finished without; a node cut off
from every neighbour holds its round instead of training alone, unless ``allow_alone``."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
from sim_scenarios import metrics, node_log, scenario_text, simulated


def long_cut(*, heal: str, protocol: str = "") -> str:
    """Six nodes on a ring, cut in two halves at round 2 of 6: the cut outlasts the training
    rounds, so each half could settle on a model of its own long before the heal."""
    return scenario_text(
        name="long-cut", nodes=6, rounds=6, topology="ring", degree=2, round_timeout=2.0,
        protocol=protocol,
        extra=f"[[partitions]]\ngroups = [[0, 1, 2], [3, 4, 5]]\nat_round = 2\n{heal}\n")


def finals(report: dict[str, Any]) -> list[float]:
    return [n["final_accuracy"] for n in report["nodes"]]


def test_a_partition_healed_after_training_ends_in_one_model(tmp_path: Path, pool) -> None:
    # the heal comes 8 virtual seconds in; before termination was federation-wide each half
    # had finished by about 2 s, with its own model (consensus distance ~3e-2 on this cut)
    report = simulated(tmp_path, long_cut(heal="heal_seconds = 8.0"), pool)
    [partition] = report["network"]["partitions"]
    assert partition["healed"]["seconds"] == pytest.approx(8.0, abs=0.5)
    assert partition["rejoined"]
    assert [n["status"] for n in report["nodes"]] == ["done"] * 6
    assert report["final_consensus_distance"] <= 1e-3
    assert max(finals(report)) - min(finals(report)) <= 0.01
    assert report["summary"]["finished_without"] == {}
    for node in report["nodes"]:
        termination = node["termination"]
        assert termination["depth"] >= termination["horizon"]  # each saw the whole settled
        # waiting for the other half, rounds were paced and did not use up the limit
        assert termination["awaiting_rounds"] > 0
    # the halves waited: nobody finished before the heal
    ends = [metrics(tmp_path, i)[-1]["time"] for i in range(6)]
    assert min(ends) - report["network"]["partitions"][0]["healed"]["seconds"] > -1.0


def test_a_partition_that_never_heals_ends_after_gone_seconds_and_says_so(tmp_path: Path,
                                                                         pool) -> None:
    report = simulated(tmp_path, long_cut(heal="", protocol="gone_seconds = 4.0\n"), pool)
    assert [n["status"] for n in report["nodes"]] == ["done"] * 6
    without = {int(k): set(v) for k, v in report["summary"]["finished_without"].items()}
    # on a ring cut in two, the four nodes next to the cut each finished without its
    # neighbour across it, and the report names it
    assert without == {0: {5}, 2: {3}, 3: {2}, 5: {0}} or all(
        all((i < 3) != (p < 3) for p in peers) for i, peers in without.items())
    assert len(without) == 4
    assert "gone for good" in node_log(tmp_path, next(iter(without)))


def test_a_node_cut_off_from_all_neighbours_holds_its_round(tmp_path: Path, pool) -> None:
    text = scenario_text(
        name="cut-off", nodes=4, rounds=8, topology="ring", degree=2, round_timeout=2.0,
        extra="[[partitions]]\nside = [0]\nat_round = 2\nheal_seconds = 6.0\n")
    report = simulated(tmp_path, text, pool)
    node0 = report["nodes"][0]
    assert node0["isolated_rounds"] == 0  # it never trained alone
    assert node0["termination"]["held_rounds"] >= 1
    assert node0["termination"]["held_seconds"] > 1.0
    assert "holding this round" in node_log(tmp_path, 0)
    # it trained no round while held: once its neighbours were dropped (cut at 0.65 s, dropped
    # after max_missed_rounds) no training round ended until the heal at 6 s brought them back
    times = [m["time"] for m in metrics(tmp_path, 0) if m["phase"] == "train"]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) > 4.0
    assert [m for m in metrics(tmp_path, 0) if 2.0 < m["time"] < 6.0] == []
    assert report["final_consensus_distance"] <= 1e-3


def test_allow_alone_trains_alone_and_counts_the_rounds(tmp_path: Path, pool) -> None:
    text = scenario_text(
        name="alone", nodes=4, rounds=8, topology="ring", degree=2, round_timeout=2.0,
        protocol="allow_alone = true\n",
        extra="[[partitions]]\nside = [0]\nat_round = 2\nheal_seconds = 6.0\n")
    report = simulated(tmp_path, text, pool)
    node0 = report["nodes"][0]
    assert node0["isolated_rounds"] >= 1
    assert report["summary"]["isolated_nodes"] == [0]
    assert "training alone (allow_alone)" in node_log(tmp_path, 0)


def test_a_heal_tied_to_rounds_waits_out_min_cut_seconds_and_says_so(tmp_path: Path,
                                                                     pool) -> None:
    text = scenario_text(
        name="min-cut", nodes=4, rounds=10, topology="ring", degree=2, round_timeout=2.0,
        extra="[[partitions]]\ngroups = [[0, 1], [2, 3]]\nat_round = 2\nheal_round = 3\n"
              "min_cut_seconds = 3.0\n")
    report = simulated(tmp_path, text, pool)
    [partition] = report["network"]["partitions"]
    assert partition["cut"]["by"] == "round"
    # round 3 came within a round of the cut; the heal waited out the 3 s, and says why
    assert partition["healed"]["by"] == "min_cut_seconds"
    assert partition["healed"]["seconds"] - partition["cut"]["seconds"] >= 3.0
    assert report["final_consensus_distance"] <= 1e-3


def test_partition_timing_rules() -> None:
    from gossipfl.scenario.config import PartitionConfig

    by_round = PartitionConfig(groups=((0,), (1,)), at_round=2, heal_round=5,
                               min_cut_seconds=4.0)
    assert by_round.cut_due({"seconds": 0.0, "max_round": 1}) is None
    assert by_round.cut_due({"seconds": 0.0, "max_round": 2}) == "round"
    cut = {"seconds": 1.0, "max_round": 2}
    assert by_round.heal_due(cut, {"seconds": 2.0, "max_round": 4}) is None
    assert by_round.heal_due(cut, {"seconds": 2.0, "max_round": 9}) == "held"
    assert by_round.heal_due(cut, {"seconds": 5.0, "max_round": 9}) == "round"
    by_time = PartitionConfig(side=(0,), at_seconds=1.0, heal_seconds=3.0)
    assert by_time.cut_due({"seconds": 1.0, "max_round": 0}) == "seconds"
    assert by_time.heal_due({"seconds": 1.0}, {"seconds": 3.0, "max_round": 0}) == "seconds"


def test_neighbours_of_a_member_gone_for_good_are_paced_only_until_gone_seconds(
        tmp_path: Path, pool) -> None:
    # three members on a full graph: when one is killed no member can take its place, so its
    # two neighbours are short of their degree for the rest of the run; they are paced a
    # heartbeat a round while they await it, and go at their own pace once it is gone for good
    text = scenario_text(name="gone", nodes=3, rounds=30, degree=2, round_timeout=2.0,
                         protocol="gone_seconds = 3.0\n",
                         extra='[[faults]]\nkind = "kill"\nnode = 2\nat_round = 2\n')
    report = simulated(tmp_path, text, pool)
    survivors = report["nodes"][:2]
    assert [n["status"] for n in survivors] == ["done", "done"]
    for index, node in enumerate(survivors):
        paced = node["termination"]["paced_rounds"]
        # paced while awaited (3 s at a heartbeat of 0.5 s, plus the rounds before the drop
        # was noticed), not for the 28 rounds left: before the rule, every one was paced
        assert 1 <= paced <= 10, paced
        assert node["rounds_completed"] >= 30
        assert "gone for good" in node_log(tmp_path, index)
    # and the report names whom they finished without
    assert report["summary"]["finished_without"] == {0: [2], 1: [2]}
    assert report["final_consensus_distance"] <= 1e-3
