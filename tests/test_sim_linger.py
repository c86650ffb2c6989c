"""A done node lingers and reopens, on the simulator (every node the real ``Node.run``, in
virtual time): a member cut off or paused until the others finished without it comes back with
another model, and the federation ends with one model again; two halves that each finished
apart do too; with ``linger_seconds = 0`` a done node stops at once, as it used to.

The scenarios here run on the code before lingering too (no new setting in them but the last
test's): there the first three end with two models or more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sim_scenarios import metrics, node_log, scenario_text, simulated

from gossipfl.node.learner import LearnerPool

HEAL = 12.0  # virtual seconds: after every node finished (by about 8 s), within its linger


def cut_off(fault: str, protocol: str = "") -> str:
    """Six nodes on a ring; ``fault`` takes a member (or half) away from round 2 until after
    the others have waited ``gone_seconds`` (4 s) for it and finished without it."""
    return scenario_text(name="linger", nodes=6, rounds=6, topology="ring", degree=2,
                         round_timeout=2.0, protocol="gone_seconds = 4.0\n" + protocol,
                         extra=fault)


ALONE = f"[[partitions]]\nside = [0]\nat_round = 2\nheal_seconds = {HEAL}\n"


def spread(report: dict[str, Any]) -> float:
    finals = [n["final_accuracy"] for n in report["nodes"]]
    return max(finals) - min(finals)


def test_a_member_cut_off_until_the_others_finished_comes_back_and_they_reopen(
        tmp_path: Path, pool: LearnerPool) -> None:
    # before lingering: node 0 finished alone at round 5 (0.54), the others without it (0.67),
    # consensus distance 7.3e-2, and the report named them as finished without each other
    report = simulated(tmp_path, cut_off(ALONE), pool)
    assert [n["status"] for n in report["nodes"]] == ["done"] * 6
    # one model: the federation agrees, and nobody is reported as finished without anyone
    assert report["final_consensus_distance"] <= 1e-3
    assert spread(report) <= 0.01
    assert report["summary"]["finished_without"] == {}
    [partition] = report["network"]["partitions"]
    assert partition["healed"]["seconds"] == pytest.approx(HEAL, abs=0.5)
    # every node had finished before the heal, then reopened when node 0 came back
    for index, node in enumerate(report["nodes"]):
        first = node["termination"]["reopens"][0]
        assert node["reopened"] >= 1, index
        assert first["at"] >= HEAL - 0.5, index
        assert first["distance"] > 1e-4
        before = [m for m in metrics(tmp_path, index) if m["time"] < HEAL - 0.5]
        assert before and max(m["round"] for m in before) < first["round"]
    assert "gone for good; finishing alone" in node_log(tmp_path, 0)
    assert "reopening: " in node_log(tmp_path, 0)


def test_two_halves_that_finished_apart_reopen_into_one_model(tmp_path: Path,
                                                              pool: LearnerPool) -> None:
    halves = "[[partitions]]\ngroups = [[0, 1, 2], [3, 4, 5]]\nat_round = 2\n" \
             f"heal_seconds = {HEAL + 2}\n"
    report = simulated(tmp_path, cut_off(halves), pool)
    ends = [(n["reopened"], n["termination"]) for n in report["nodes"]]  # said if one fails
    assert [n["status"] for n in report["nodes"]] == ["done"] * 6
    assert report["final_consensus_distance"] <= 1e-3, ends
    assert spread(report) <= 0.01
    assert report["summary"]["finished_without"] == {}, ends
    assert all(n["reopened"] >= 1 for n in report["nodes"]), ends


def test_a_member_paused_until_the_others_finished_ends_in_the_same_model(
        tmp_path: Path, pool: LearnerPool) -> None:
    # the lingering neighbours take it back; it is far behind, so it catches up from them
    pause = "[[faults]]\nkind = \"pause\"\nnode = 0\nat_round = 2\ndown_seconds = 10.0\n"
    report = simulated(tmp_path, cut_off(pause), pool)
    assert [n["status"] for n in report["nodes"]] == ["done"] * 6
    assert report["final_consensus_distance"] <= 1e-3
    assert spread(report) <= 0.01
    assert report["summary"]["finished_without"] == {}
    assert report["nodes"][0]["catch_ups"]


def test_linger_zero_keeps_the_old_ending(tmp_path: Path, pool: LearnerPool) -> None:
    report = simulated(tmp_path, cut_off(ALONE, protocol="linger_seconds = 0.0\n"), pool)
    # every node stopped at its finish, before the heal was due: two models, and the report
    # says which members each finished without
    assert report["virtual_seconds"] < HEAL
    assert report["network"]["partitions"][0]["healed"] is None
    assert all(n["reopened"] == 0 for n in report["nodes"])
    assert all(n["termination"]["lingered_seconds"] == 0.0 for n in report["nodes"])
    assert report["final_consensus_distance"] > 1e-2
    without = {int(k): set(v) for k, v in report["summary"]["finished_without"].items()}
    assert len(without.pop(0)) == 2  # node 0 finished alone, without both its neighbours
    assert without and all(peers == {0} for peers in without.values())


def test_a_whole_federation_stops_lingering_once_every_member_is_done_and_never_reopens(
        tmp_path: Path, pool: LearnerPool) -> None:
    text = scenario_text(name="whole", nodes=4, rounds=4, topology="ring", degree=2)
    report = simulated(tmp_path, text, pool)
    assert [n["status"] for n in report["nodes"]] == ["done"] * 4
    for node in report["nodes"]:
        assert node["reopened"] == 0
        # nobody was absent at its finish: it stops once every member said done and heard its
        # own done, before the two heartbeat intervals (0.5 s each) it would otherwise wait
        assert node["termination"]["lingered_seconds"] < 1.0
    assert report["final_consensus_distance"] <= 1e-3
