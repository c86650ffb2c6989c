"""Byzantine members under secure aggregation, on the simulator (issue 9): a member masks its
crafted vector as its input to each neighbour's sum, and the aggregator, which sees only the
sum, holds it to the bound for its size (gossipfl.aggregation.bounds.sum_bound).

5 nodes, fully connected (degree 4: every honest node has the attacker in its neighbourhood),
8 rounds. Measured here: no attacker, every node 0.867; a 1000× scaled member with the default
bound, every sum it is in refused (11 a node), honest nodes 0.436-0.806 (each trains alone: no
sum without the attacker exists); with the bound off, 0.125; a sign-flipping member, within the
bound, 0.097 (the limit: nothing under masking can tell it apart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim_scenarios import metrics, scenario_text, simulated

from gossipfl.node.learner import LearnerPool


def run(tmp_path: Path, pool: LearnerPool, kind: str, *, ratio: float = 100.0,
        compressed: bool = False) -> dict[str, Any]:
    int4 = ('full_every = 4\nconsensus_deltas = true\n\n[compression]\nkind = "int4"\n'
            if compressed else "")
    text = scenario_text(name=f"secagg-{kind}", nodes=5, rounds=8, degree=4, round_timeout=2.0,
                         extra="[secagg]\nenabled = true\nmin_contributors = 3\n" + int4 + "\n"
                               f"[robust]\nnorm_ratio = {ratio}\n\n"
                               f'[[adversaries]]\nnode = 0\nkind = "{kind}"\n')
    # an attacker never agrees: the honest nodes would spend every consensus round allowed
    text = text.replace("max_consensus_rounds = 30", "max_consensus_rounds = 3")
    return simulated(tmp_path, text, pool)


def test_a_scaled_member_s_sums_are_refused_and_without_the_bound_it_wrecks_them(
        tmp_path: Path, pool) -> None:
    report = run(tmp_path / "bound", pool, "scale")
    honest = report["nodes"][1:]
    (entry,) = report["adversaries"]
    assert entry["kind"] == "scale" and entry["attempts"] >= 4 * 8  # each aggregator, each round
    # every honest node refused the sums the scaled input was in, and mixed none of them
    assert all(n["rejected"].get("norm_sum", 0) >= 1 for n in honest)
    for index in range(1, 5):
        outcomes = {m.get("secure_aggregation") for m in metrics(tmp_path / "bound", index)}
        assert "refused: norm bound" in outcomes
    defended = report["summary"]["min_honest_accuracy"]
    assert defended > 0.35  # each honest node on its own data (measured 0.436)
    off = run(tmp_path / "off", pool, "scale", ratio=0.0)
    assert all(n["rejected"].get("norm_sum", 0) == 0 for n in off["nodes"][1:])
    wrecked = max(n["final_accuracy"] or 0.0 for n in off["nodes"][1:])
    assert wrecked < 0.2 and defended > wrecked + 0.2  # the defence is real (measured 0.125)


def test_a_sign_flipping_member_runs_under_secure_aggregation_within_the_bound(
        tmp_path: Path, pool) -> None:
    report = run(tmp_path, pool, "sign_flip")
    assert [n["role"] for n in report["nodes"]] == ["sign_flip"] + ["honest"] * 4
    (entry,) = report["adversaries"]
    assert entry["kind"] == "sign_flip" and entry["attempts"] >= 4 * 8
    assert entry["succeeded"] >= 4 * 8  # its masked inputs were taken into the sums
    honest = report["nodes"][1:]
    # −x is within the bound for the sum's size: no sum is refused, and nothing else under
    # masking can tell it apart (the limit the README states: measured 0.097)
    assert all(n["rejected"].get("norm_sum", 0) == 0 for n in honest)
    assert report["summary"]["min_honest_accuracy"] < 0.5
    for index in range(1, 5):
        assert all(m.get("secure_aggregation") in (None, "4 contributors")
                   for m in metrics(tmp_path, index))


def test_a_scaled_member_is_refused_in_int4_and_consensus_delta_rounds_too(
        tmp_path: Path, pool) -> None:
    """With int4 deltas and consensus deltas the scaled member's full-round input trips the
    bound, the running sum is dropped, and the delta rounds after are refused until the next
    full one: no honest node mixes it (measured: the same accuracies as uncompressed, 0.436 to
    0.806); its crafted deltas are levels of the public step, bounded by the ring's window."""
    report = run(tmp_path, pool, "scale", compressed=True)
    honest = report["nodes"][1:]
    assert all(n["rejected"].get("norm_sum", 0) >= 1 for n in honest)
    assert report["summary"]["min_honest_accuracy"] > 0.35
    for index in range(1, 5):
        outcomes = [m.get("secure_aggregation") for m in metrics(tmp_path, index)]
        assert "refused: norm bound" in outcomes
        # no delta round was mixed without a base: every one is refused or carries none
        assert not any(o and ("int4" in o or "consensus deltas" in o) for o in outcomes)
