"""The Byzantine bench's scenarios load as the node's own scenario files, with the settings
(and a preset's) they were given; a cell over several seeds is its worst run."""

from __future__ import annotations

from pathlib import Path

from benchmarks.bench_byzantine import PRESETS, Settings, anchor_edges, scenario, worst
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
