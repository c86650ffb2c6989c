"""Byzantine members as scenario adversaries, on the simulator (the nodes' own code over the
in-memory transport, in virtual time): each kind runs as a member and the report says what it
did; the norm bound keeps a scaled model out without stalling the round; ALIE wrecks plain
mixing and a robust rule holds it off."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.node.learner import LearnerPool

ROUND_TIMEOUT = 2.0


def run(tmp_path: Path, pool: LearnerPool, kind: str | None, rule: str = "none", *,
        nodes: int = 5, rounds: int = 4) -> dict[str, Any]:
    adversary = "" if kind is None else f'[[adversaries]]\nnode = 0\nkind = "{kind}"\n'
    text = scenario_text(name=f"byz-{kind}", nodes=nodes, rounds=rounds, degree=nodes - 1,
                         round_timeout=ROUND_TIMEOUT,
                         extra=f'[robust]\nrule = "{rule}"\n' + adversary)
    # an attacker never agrees: the honest nodes would spend every consensus round allowed
    text = text.replace("max_consensus_rounds = 30", "max_consensus_rounds = 3")
    return simulated(tmp_path, text, pool)


def metrics(tmp_path: Path, index: int) -> list[dict[str, Any]]:
    path = tmp_path / "out" / "nodes" / f"node-{index:02d}" / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# each role's output is pinned in test_byzantine.py; here one of each way of attacking: a
# crafted model of its own (scale), one aimed at each target's neighbourhood (dissensus),
# poisoned data (label_flip)
@pytest.mark.parametrize("kind", ["scale", "dissensus", "label_flip"])
def test_each_byzantine_kind_runs_as_a_member_and_is_reported(tmp_path: Path, pool,
                                                              kind: str) -> None:
    report = run(tmp_path, pool, kind)
    roles = [n["role"] for n in report["nodes"]]
    assert roles == [kind] + ["honest"] * 4
    (entry,) = report["adversaries"]
    assert entry["kind"] == kind and entry["attempts"] >= 4 * 4  # each round, each neighbour
    honest = report["nodes"][1:]
    assert report["summary"]["min_honest_accuracy"] == min(n["final_accuracy"] for n in honest)
    if kind == "scale":  # 1000× its model: past every honest node's norm bound, all refused
        assert entry["succeeded"] == 0 and entry["details"]["refused"] >= 4 * 4
        assert all(n["rejected"].get("norm", 0) >= 4 for n in honest)
        # refused on arrival, its sender has answered the round: no honest node waits out the
        # round timeout for it (a Byzantine member cannot stretch every round)
        for index in range(1, 5):
            assert max(m.get("wait_seconds", 0.0) for m in metrics(tmp_path, index)) \
                < ROUND_TIMEOUT / 2
    else:
        assert entry["succeeded"] > 0
    if kind in ("alie", "ipm", "dissensus"):  # one attacker: it hears its targets itself
        assert entry["details"].get("lacking_inputs", 0) == 0


def test_alie_wrecks_plain_mixing_and_a_robust_rule_holds_it_off(tmp_path: Path, pool) -> None:
    # measured here: no attack 0.86; ALIE with plain mixing 0.35, with median 0.74
    plain = run(tmp_path / "plain", pool, "alie", "none", nodes=6, rounds=10)
    robust = run(tmp_path / "median", pool, "alie", "median", nodes=6, rounds=10)
    attacked = plain["summary"]["min_honest_accuracy"]
    defended = robust["summary"]["min_honest_accuracy"]
    assert attacked < 0.6  # the attack is real
    assert defended > attacked + 0.2
    honest = robust["nodes"][1]
    assert honest["robust"]["rules"] == ["median"]
    assert len(honest["robust"]["rounds"]) == honest["rounds_completed"]
