"""Where a node's round time goes, in the report (gossipfl/scenario/report.py): each node's
training, evaluation, send and wait phases (and the training step on the send phase's clock)
summed over its rounds, and their medians over the
nodes in the summary (issue 15 reads its send-against-training bar there)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sim_scenarios import node_dir, scenario_text, simulated

from gossipfl.scenario.report import PHASES, SPLITS, median_phases, phase_seconds


def test_a_nodes_phases_are_its_rounds_summed() -> None:
    metrics = [{"train_seconds": 0.25, "send_seconds": 0.5, "wait_seconds": 1.0,
                "eval_seconds": 0.125, "train_step_seconds": 0.375},
               {"train_seconds": None, "send_seconds": 0.25},  # a round that did not train
               {}]  # nor time anything (a consensus round of an old record)
    assert phase_seconds(metrics) == {"train_seconds": 0.25, "eval_seconds": 0.125,
                                      "send_seconds": 0.75, "wait_seconds": 1.0,
                                      "train_step_seconds": 0.375,
                                      "send_cpu_seconds": None, "send_queue_seconds": None}
    assert phase_seconds([]) == {**dict.fromkeys(("train_seconds", "eval_seconds",
                                                  "send_seconds", "wait_seconds",
                                                  "train_step_seconds"), 0.0),
                                 "send_cpu_seconds": None, "send_queue_seconds": None}
    # the send split, where a node process measured it: over the rounds that did
    split = [{"send_seconds": 1.0, "send_cpu_seconds": 0.125, "send_queue_seconds": 0.75},
             {"send_seconds": 0.5}, {"send_cpu_seconds": 0.25, "send_queue_seconds": 0.0}]
    got = phase_seconds(split)
    assert (got["send_cpu_seconds"], got["send_queue_seconds"]) == (0.375, 0.75)


def test_the_medians_skip_nodes_that_ran_no_round() -> None:
    def entry(rounds: int, **seconds: float) -> dict:
        return {"rounds_completed": rounds,
                **{f"{p}_seconds": seconds.get(p, 0.0) for p in PHASES},
                **{f"{p}_seconds": seconds.get(p) for p in SPLITS}}

    entries = [entry(3, train=1.0, send=4.0, send_cpu=0.5), entry(3, train=2.0, send=2.0),
               entry(3, train=9.0, send=1.0, send_cpu=0.25),
               entry(0, send_cpu=9.0)]  # the last never ran a round
    assert median_phases(entries) == {"train": 2.0, "eval": 0.0, "send": 2.0, "wait": 0.0,
                                      "train_step": 0.0, "send_cpu": 0.375,
                                      "send_queue": None}
    assert median_phases([entry(0)]) == dict.fromkeys((*PHASES, *SPLITS))


def test_a_runs_report_carries_each_nodes_phases_and_their_medians(tmp_path: Path,
                                                                   pool) -> None:
    report = simulated(tmp_path, scenario_text(name="phases", nodes=4, rounds=3), pool)
    for node in report["nodes"]:
        lines = (node_dir(tmp_path, node["index"]) / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert node["rounds_completed"] == len(records) > 0
        for phase in PHASES:
            total = sum(r.get(f"{phase}_seconds") or 0.0 for r in records)
            assert node[f"{phase}_seconds"] == pytest.approx(total)
        assert node["train_seconds"] > 0  # it trained (virtual seconds in a simulation)
        # simulated nodes share one thread: no split of it is theirs to report
        assert node["send_cpu_seconds"] is None and node["send_queue_seconds"] is None
    medians = report["summary"]["median_node_phase_seconds"]
    for phase in PHASES:
        expected = float(np.median([n[f"{phase}_seconds"] for n in report["nodes"]]))
        assert math.isclose(medians[phase], expected)
    assert medians["send_cpu"] is None and medians["send_queue"] is None
