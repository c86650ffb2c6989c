"""``gossipfl estimate``: the cost model on small exact examples, the calibration on a tiny
scenario, and the CLI's errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.scenario.calibrate import (
    Calibration,
    SecAggBytes,
    calibrate,
    other_load,
    scenario_degree,
)
from gossipfl.scenario.config import ScenarioConfig, load_scenario
from gossipfl.scenario.estimate import (
    SPEED_LIMITS,
    GraphFigures,
    ModelConstants,
    consensus_rounds,
    contribution_bytes,
    estimate,
    frames_per_round,
    graph_figures,
    heartbeat_targets,
    machine_factor,
    masked_words_bytes,
    mixing_rho,
    scaled,
    secagg_bytes,
)
from gossipfl.scenario.graphs import ScenarioTopology

ROOT = Path(__file__).resolve().parent.parent
TINY = """name = "tiny"
nodes = 3
rounds = 2
[data]
dataset = "iris"
partition = "iid"
[model]
name = "logreg"
[topology]
kind = "ring"
"""

# no heartbeat, transport or round costs: only what a test sets
BARE = ModelConstants(final_disagreement=1e-2, frame_cpu_seconds=0.0, byte_cpu_seconds=0.0,
                      stream_cpu_seconds=0.0,
                      round_cpu_seconds=0.0, train_dispatch_seconds=0.0,
                      join_pair_cpu_seconds=0.0, exit_seconds=0.0, exit_cpu_seconds=0.0,
                      answer_seconds=0.0, heartbeat_share=1.0)


def calibration(**changes: object) -> Calibration:
    base = Calibration(
        cores=2, other_load=0.0, parameters=100, examples=(10, 10, 10), steps=(4, 4, 4),
        test_examples=10,
        import_seconds=0.0, compile_seconds=0.0, node_first_seconds=0.0, train_seconds=0.1,
        eval_seconds=0.0, full_bytes=1000, delta_bytes=400, ack_bytes=50, heartbeat_bytes=0,
        link_bytes=0, message_cpu_seconds=0.0, heartbeat_cpu_seconds=0.0,
        frame_seconds=ModelConstants().reference_frame_seconds, secagg=None,
        base_rss_bytes=100 * 2**20, calibration_seconds=1.0)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def scenario(nodes: int = 3, rounds: int = 5, kind: str = "ring") -> ScenarioConfig:
    return ScenarioConfig(name="t", nodes=nodes, rounds=rounds,
                          topology=ScenarioTopology(kind=kind))


def test_contribution_bytes_of_a_three_node_ring() -> None:
    # 2 neighbours, 5 rounds and the final one: a full estimate, then 5 deltas, to each; an ack
    # for each of the 6 contributions received from each
    assert contribution_bytes(calibration(), degree=2, rounds=5) == 2 * (1000 + 5 * 400) + 12 * 50
    ring = scenario()
    graph = GraphFigures((2, 2, 2), 2, 0.25)
    result = estimate(ring, calibration(), BARE, graph)
    rounds = result.rounds
    assert rounds == 5 + consensus_rounds(graph, 1e-4, 60, 1e-2)
    for node in result.nodes:
        assert node.degree == 2 and node.rounds == rounds
        assert node.bytes_sent == node.bytes_received == 2 * (1000 + rounds * 400) \
            + 2 * (rounds + 1) * 50


def test_heartbeats_add_bytes_in_proportion_to_the_cycles() -> None:
    graph = GraphFigures((2, 2, 2), 2, 0.25)
    quiet = estimate(scenario(), calibration(), BARE, graph)
    beating = estimate(scenario(), calibration(heartbeat_bytes=100), BARE, graph)
    # a 3-node ring: one end of each link heartbeats, the other answers, so a node starts one
    # exchange a cycle on average and takes part in two (one heartbeat sent in each), a cycle a
    # heartbeat interval (1 s by default, no answer wait here)
    assert heartbeat_targets(3, 2) == 1 and heartbeat_targets(16, 4) == 4
    cycles = beating.wall_seconds / 1.0
    extra = beating.nodes[0].bytes_sent - quiet.nodes[0].bytes_sent
    assert extra == int(cycles * 2 * 1 * 100)


def test_secagg_bytes() -> None:
    s = SecAggBytes(masked_input=500, consistency_request=30, consistency_response=20,
                    unmask_request=100, unmask_response=50, cpu_seconds=0.0)
    cal = calibration(secagg=s)
    # 4 neighbours, 3 rounds: each round a masked input to each, answered by the unmask
    # request, and our answer (both ways: the sums are symmetric); the consistency exchange in
    # the first round only; the final input and its ack
    assert secagg_bytes(cal, degree=4, rounds=3) == 4 * (3 * (500 + 100 + 50) + 50 + 500 + 50)
    assert secagg_bytes(cal, degree=4, rounds=0) == 4 * (500 + 50)
    # compressed rounds: each input carries its round's words instead of the full estimate's
    # (calibration() has 100 parameters: 400 bytes of 32-bit words in the 500)
    words = [400, 75, 75]
    assert secagg_bytes(cal, degree=4, rounds=3, words=words) == 4 * (
        (500 + 2 * (500 - 400 + 75)) + 3 * (100 + 50) + 50 + 500 + 50)


def test_masked_words_follow_the_node_s_round_kinds() -> None:
    """Per round, what a member's masked words cost: the node's own full_round and rings."""
    from gossipfl.config import CompressionConfig, SecAggConfig
    p, on = 1000, SecAggConfig(enabled=True, full_every=10)

    def words(kind: str, r: int, *, ratio: float = 0.25, deltas: bool = False) -> int:
        scenario = ScenarioConfig(rounds=30, secagg=dataclasses.replace(
            on, consensus_deltas=deltas), compression=CompressionConfig(kind=kind, ratio=ratio))
        return masked_words_bytes(scenario, p, 4, r)

    assert [words("none", r) for r in (0, 1, 31)] == [4000] * 3
    # a round full by full_every alone (10, 20; 40 with consensus deltas) counts as waived
    assert [words("randk", r) for r in (0, 1, 10, 30, 31)] == [4000, 1000, 1000, 4000, 4000]
    assert [words("int8", r) for r in (1, 10, 31)] == [1500, 1500, 4000]  # 12 bits, 2 in 3
    assert [words("int4", r) for r in (1, 30, 31)] == [750, 4000, 4000]  # 6 bits, 4 in 3
    # the first consensus round is a delta round too
    assert [words("int4", r, deltas=True) for r in (30, 31, 40)] == [1500, 1500, 1500]


def test_consensus_rounds() -> None:
    graph = GraphFigures((2, 2, 2), 3, 0.1)
    # 1e-2 → 1e-4 at ρ = 0.1: 2 rounds, then the depth climbs 3
    assert consensus_rounds(graph, 1e-4, 60, 1e-2) == 5
    assert consensus_rounds(graph, 1e-4, 4, 1e-2) == 4  # the limit
    assert consensus_rounds(graph, 1e-1, 60, 1e-2) == 3  # already within: the horizon only
    assert consensus_rounds(GraphFigures((1, 1), 2, 1.0), 1e-4, 60, 1e-2) == 60  # never
    slower = GraphFigures((2, 2, 2), 3, 0.5)
    assert consensus_rounds(slower, 1e-4, 60, 1e-2) > consensus_rounds(graph, 1e-4, 60, 1e-2)


def test_mixing_rho_and_graph_figures() -> None:
    ids = ["a", "b", "c", "d"]
    ring = {"a": frozenset("bd"), "b": frozenset("ac"), "c": frozenset("bd"),
            "d": frozenset("ac")}
    # W = (I + A) / 3 on a 4-cycle: eigenvalues 1, 1/3, 1/3, -1/3
    assert mixing_rho(ids, ring) == pytest.approx(1 / 3)
    full = {m: frozenset(set(ids) - {m}) for m in ids}
    assert mixing_rho(ids, full) == pytest.approx(0.0, abs=1e-12)  # one round averages
    figures = graph_figures(scenario(nodes=6))
    assert figures.degrees == (2,) * 6 and figures.diameter_plus_one == 4
    assert graph_figures(scenario(nodes=16, kind="regular")).degrees == (4,) * 16
    assert scenario_degree(scenario(nodes=16, kind="regular")) == 4


def test_contention_scales_training_and_rounds() -> None:
    def at(nodes: int) -> tuple[float, float]:
        graph = GraphFigures((2,) * nodes, 2, 0.25)
        cal = calibration(examples=(10,) * nodes, steps=(4,) * nodes)
        result = estimate(scenario(nodes=nodes), cal, BARE, graph)
        return result.nodes[0].train_seconds_per_round, result.nodes[0].round_seconds

    # 2 cores: up to 2 nodes train at full speed; 8 nodes share them, 4 to a core
    assert at(2) == pytest.approx((0.1, 0.1))
    assert at(8) == pytest.approx((0.4, 0.4))
    assert at(16) == pytest.approx((0.8, 0.8))


def test_other_work_found_by_the_probe() -> None:
    # C busy loops getting C / (C + L) of the machine: L other runnable processes
    assert other_load(2, 1.0) == 0.0 and other_load(2, 0.5) == pytest.approx(2.0)
    assert other_load(4, 0.8) == pytest.approx(1.0)


def test_wall_time_adds_start_up_rounds_and_finish() -> None:
    graph = GraphFigures((2, 2, 2), 2, 0.25)
    cal = calibration(import_seconds=1.0, compile_seconds=3.5, node_first_seconds=0.5)
    result = estimate(scenario(), cal, BARE, graph)
    # 3 nodes on 2 cores: a round of 0.1 s CPU each takes 0.15 s (the steps were compiled
    # while joining: the first round costs what the others do)
    rounds = 5 * 0.15  # 5 training rounds; consensus rounds cost nothing here (no messages)
    # compiling (3.5 s) overlaps joining (three heartbeat intervals; imports precede the run)
    start = max(3.5, 3 * 1.0)
    finish = 0.25 * 1.0  # the done heartbeats crossing
    assert result.wall_seconds == pytest.approx(start + rounds + finish)
    assert result.max_peak_rss_bytes > cal.base_rss_bytes
    # a compilation shorter than joining is hidden by it
    quick = estimate(scenario(), calibration(import_seconds=1.0, compile_seconds=0.5,
                                             node_first_seconds=0.5), BARE, graph)
    assert quick.wall_seconds == pytest.approx(3 * 1.0 + rounds + finish)


def test_a_slower_event_loop_scales_the_fitted_constants_not_the_calibrated_ones() -> None:
    # the fitted transport constants only: a machine whose probe is twice the reference's
    # pays twice for them, while the calibrated training round stays what it measured
    only_frames = dataclasses.replace(BARE, frame_cpu_seconds=1e-3)
    graph = GraphFigures((2, 2, 2), 2, 0.25)
    reference = only_frames.reference_frame_seconds
    base = estimate(scenario(), calibration(frame_seconds=reference), only_frames, graph)
    slow = estimate(scenario(), calibration(frame_seconds=2 * reference), only_frames, graph)
    assert base.terms["machine_factor"] == 1.0 and slow.terms["machine_factor"] == 2.0
    frames = frames_per_round(2, secure=False) * 1e-3
    train_round = 0.1 + frames  # one node's CPU a round; three nodes on two cores
    assert base.terms["train_round_seconds"] == pytest.approx(3 * train_round / 2)
    assert slow.terms["train_round_seconds"] == pytest.approx(3 * (0.1 + 2 * frames) / 2)
    assert base.nodes[0].train_seconds_per_round == slow.nodes[0].train_seconds_per_round
    # a broken probe (zero, or absurdly slow) is clipped, not believed
    assert machine_factor(0.0, reference) == SPEED_LIMITS[0]
    assert machine_factor(1.0, reference) == SPEED_LIMITS[1]
    assert scaled(only_frames, 3.0).frame_cpu_seconds == pytest.approx(3e-3)
    assert scaled(only_frames, 3.0).exit_seconds == only_frames.exit_seconds  # a wait, not CPU


def test_calibration_of_a_tiny_scenario(tmp_path: Path) -> None:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    cal = calibrate(load_scenario(path), isolated=False)
    assert cal.parameters == 4 * 3 + 3  # logreg on iris: 4 features, 3 classes
    assert len(cal.examples) == 3 and all(e > 0 for e in cal.examples)
    assert cal.train_seconds > 0 and cal.eval_seconds > 0 and cal.message_cpu_seconds > 0
    # a sealed frame carries the 15 floats, a signature, the envelope and the routing fields
    assert 4 * 15 < cal.full_bytes < 4 * 15 + 2000 and cal.ack_bytes < 300
    assert cal.heartbeat_bytes > 100 and cal.link_bytes > 0 and cal.secagg is None
    assert cal.base_rss_bytes > 10 * 2**20
    assert 1e-6 < cal.frame_seconds < 0.05  # a small frame on loopback: microseconds, not none
    result = estimate(load_scenario(path), cal)
    assert result.wall_seconds > 0 and all(n.bytes_sent > cal.full_bytes for n in result.nodes)


def test_cli_estimate_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.toml"
    assert main(["estimate", str(missing)]) == 2
    assert "missing.toml" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nnodes = 1\n')
    assert main(["estimate", str(bad)]) == 2
    assert "nodes must be at least 2" in capsys.readouterr().err
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "x"\n[protocol]\nround_timout = 3.0\n')
    assert main(["estimate", str(typo)]) == 2
    assert "round_timout" in capsys.readouterr().err

    # the real path: a fresh process, the calibration in forked children
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "gossipfl", "estimate", str(path), "--json"],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["wall_seconds"] > 0 and out["total_rounds"] >= 2
    assert len(out["nodes"]) == 3
    for node in out["nodes"]:
        assert node["peak_rss_bytes"] > 10 * 2**20 and node["bytes_sent"] > 0
        assert node["bytes_received"] > 0 and node["train_seconds_per_round"] > 0
