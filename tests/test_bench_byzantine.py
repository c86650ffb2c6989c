"""The Byzantine bench's scenarios load as the node's own scenario files, with the settings
(and a preset's) they were given; a cell over several seeds is its worst run."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_byzantine import (
    PRESETS,
    Settings,
    anchor_edges,
    anchor_share,
    average_accuracy,
    scenario,
    worst,
)
from gossipfl.scenario.config import load_scenario


def _load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return load_scenario(path)


def test_anchor_scenario_carries_its_settings(tmp_path: Path) -> None:
    settings = Settings(rounds=12, epochs=2, lr=0.05, batch=16, consensus=7, gamma=0.5, seed=3,
                        tau_steps=0.75)
    config = _load(tmp_path, scenario("anchor", "dissensus", "clipping", settings))
    assert (config.rounds, config.seed) == (12, 3)
    assert (config.train.local_epochs, config.train.learning_rate, config.train.batch_size) == (
        2, 0.05, 16)
    assert (config.protocol.max_consensus_rounds, config.protocol.gamma) == (7, 0.5)
    assert (config.robust.rule, config.robust.tau_steps, config.robust.tau) == (
        "clipping", 0.75, 0.0)
    assert sorted(a.node for a in config.adversaries) == list(range(5, 16))
    assert {str(a.kind) for a in config.adversaries} == {"dissensus"}
    assert len(anchor_edges()) == 16


def test_clippedgossip_s_share_on_the_anchor_is_6_11_and_reaches_the_config(
        tmp_path: Path) -> None:
    assert abs(anchor_share() - 6 / 11) < 1e-15
    lazy = Settings(tau_steps=1.0, share=anchor_share())
    config = _load(tmp_path, scenario("anchor", "dissensus", "clipping", lazy))
    assert config.robust.neighbour_share == anchor_share()
    assert _load(tmp_path, scenario("anchor", "none", "none", lazy)).robust.neighbour_share == 1
    assert _load(tmp_path, scenario("anchor", "alie", "clipping", Settings())
                 ).robust.neighbour_share == 1


def test_the_loss_screen_reaches_a_robust_rule_s_config_only(tmp_path: Path) -> None:
    screened = Settings(tau_steps=1.0, screen=0.5)
    assert _load(tmp_path, scenario("anchor", "dissensus", "clipping", screened)
                 ).robust.screen == 0.5
    assert _load(tmp_path, scenario("anchor", "none", "none", screened)).robust.screen == 0
    assert _load(tmp_path, scenario("anchor", "alie", "clipping", Settings())).robust.screen == 0


def test_presets_are_valid_settings(tmp_path: Path) -> None:
    for name, preset in PRESETS.items():
        settings = Settings(**{k: v for k, v in preset.items() if k != "seeds"})
        config = _load(tmp_path, scenario("anchor", "none", "clipping", settings))
        assert config.rounds == settings.rounds, name


def test_a_cell_is_its_worst_run_and_a_failed_run_fails_it() -> None:
    runs = [{"min_honest": 0.9, "min_ring": 0.92, "seconds": 1.0},
            {"min_honest": 0.85, "min_ring": 0.95, "seconds": 2.0}]
    cell = worst(runs)
    assert (cell["min_honest"], cell["min_ring"], cell["seconds"]) == (0.85, 0.92, 3.0)
    assert worst([*runs, {"min_honest": None, "min_ring": None, "seconds": 0.5}])[
        "min_honest"] is None


def test_honest_holders_and_clippedgossip_s_alie_on_the_anchor(tmp_path: Path) -> None:
    preset = PRESETS["clippedgossip-data"]
    settings = Settings(**{k: v for k, v in preset.items() if k != "seeds"})
    config = _load(tmp_path, scenario("anchor", "alie", "clipping", settings))
    assert config.data.holders == (0, 1, 2, 3, 4)
    assert config.protocol.max_consensus_rounds == 0
    # their ALIE10 over 3 estimates with n − 1: z = 10·√(3/2) over the population's spread
    assert {round(a.strength, 4) for a in config.adversaries} == {12.2474}
    regular = _load(tmp_path, scenario("regular", "alie", "clipping", settings))
    assert regular.data.holders == tuple(i for i in range(16) if i not in (3, 8, 13))
    assert {a.strength for a in regular.adversaries} == {0.0}  # the kind's default there
    assert _load(tmp_path, scenario("anchor", "alie", "clipping", Settings())).data.holders == ()


def test_the_average_model_figure_is_the_mean_of_the_members_final_models(
        tmp_path: Path) -> None:
    import numpy as np

    from gossipfl.node.learner import LocalLearner
    from gossipfl.scenario.calibrate import node_config

    folder = tmp_path / "cell"
    folder.mkdir()
    config = _load(folder, scenario("anchor", "none", "clipping", Settings()))
    learner = LocalLearner(node_config(config, 0))
    first = learner.initial_vector()
    second = first + np.random.default_rng(0).normal(0, 0.5, first.shape).astype(np.float32)
    for index, vector in ((0, first), (1, second)):
        node = folder / "out" / "nodes" / f"node-{index:02d}"
        node.mkdir(parents=True)
        np.savez(node / "final.npz", params=vector)
    mean = learner.evaluate((first + second) / 2).accuracy
    assert average_accuracy(folder, (0, 1)) == mean
    assert average_accuracy(folder, (0, 2)) is None  # node 2 left no final model
