"""Soaks: the churn's schedule (which node, when, which kind), the RSS series and its growth,
the check of every node's checkpoint, the soak scenario files, and the churn on the simulator."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.config import ConfigError, from_dict, load_toml
from gossipfl.node.checkpoint import save_checkpoint
from gossipfl.scenario.churn import MIN_UP, ChurnSchedule, churn_rng, node_states
from gossipfl.scenario.config import ChurnConfig, ScenarioConfig, load_scenario
from gossipfl.scenario.integrity import check_file, checkpoints_section, expected_parameters
from gossipfl.scenario.rss import (
    BoundedSeries,
    RssSampler,
    add_rss,
    rss_growth,
    thin_evenly,
)

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
CHURN = ChurnConfig(every_seconds=10.0, jitter_seconds=2.0, down_seconds=3.0, max_events=5,
                    start_seconds=5.0, from_round=1, until_round=50)


def drive(schedule: ChurnSchedule, nodes: int = 6, *, seconds: float = 200.0,
          step: float = 0.5, round_: int = 10) -> None:
    """Ask the schedule every ``step`` seconds, with every node up but the last event's node
    while it is down (as a runner would)."""
    t = 0.0
    while t < seconds:
        last = schedule.events[-1] if schedule.events else None
        down = {last.node} if last is not None and t < last.back_at else set()
        up = set(range(nodes)) - down
        schedule.due(t, up, down, round_)
        t += step


# -- the schedule --------------------------------------------------------------------------------


def test_the_schedule_is_the_same_for_a_seed_and_differs_for_another() -> None:
    runs = []
    for seed in (3, 3, 4):
        schedule = ChurnSchedule(CHURN, 100, churn_rng(seed))
        drive(schedule)
        runs.append(schedule.events)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert len(runs[0]) == CHURN.max_events  # bounded
    for event in runs[0]:
        assert event.kind in CHURN.kinds and 0 <= event.node < 6
        assert event.back_at == pytest.approx(event.time + CHURN.down_seconds)


def test_events_come_about_every_so_often_one_at_a_time() -> None:
    schedule = ChurnSchedule(replace(CHURN, max_events=20), 100, random.Random(1))
    drive(schedule, seconds=400.0, step=0.25)
    events = schedule.events
    assert len(events) == 20
    assert CHURN.start_seconds <= events[0].time <= CHURN.start_seconds + CHURN.jitter_seconds
    for before, after in itertools.pairwise(events):
        gap = after.time - before.time
        assert CHURN.every_seconds - CHURN.jitter_seconds <= gap
        assert gap <= CHURN.every_seconds + CHURN.jitter_seconds + 0.25  # one step late at most
        assert after.time >= before.back_at  # the one before was back
    assert {e.kind for e in events} == {"restart", "pause"}
    assert len({e.node for e in events}) > 1


def test_no_event_while_a_node_is_down_or_its_predecessor_is_not_back() -> None:
    config = replace(CHURN, every_seconds=2.0, jitter_seconds=0.0, down_seconds=5.0,
                     start_seconds=0.0)
    schedule = ChurnSchedule(config, 100, random.Random(0))
    first = schedule.due(0.0, {0, 1, 2, 3}, set(), 5)
    assert first is not None
    # due again at 2 s, but the first node is due back only at 5 s
    assert schedule.due(2.0, {0, 1, 2, 3}, set(), 5) is None
    assert schedule.due(4.9, {0, 1, 2, 3}, set(), 5) is None
    # another node down (a [[faults]] entry, say): still none
    assert schedule.due(5.0, {0, 1, 2}, {3}, 5) is None
    second = schedule.due(5.0, {0, 1, 2, 3}, set(), 5)
    assert second is not None and second.time == 5.0


def test_never_fewer_than_two_nodes_are_left_up() -> None:
    config = replace(CHURN, every_seconds=1.0, jitter_seconds=0.0, start_seconds=0.0)
    schedule = ChurnSchedule(config, 100, random.Random(0))
    assert schedule.due(0.0, set(range(MIN_UP)), set(), 5) is None
    event = schedule.due(0.0, set(range(MIN_UP + 1)), set(), 5)
    assert event is not None and event.node in range(MIN_UP + 1)


def test_events_only_within_the_rounds_window_and_among_the_nodes_up() -> None:
    config = replace(CHURN, every_seconds=1.0, jitter_seconds=0.0, start_seconds=0.0,
                     down_seconds=0.5, max_events=40, from_round=3, until_round=8)
    schedule = ChurnSchedule(config, 100, random.Random(0))
    assert schedule.due(0.0, {0, 1, 2, 3}, set(), 2) is None  # before from_round
    assert schedule.due(0.0, {0, 1, 2, 3}, set(), 8) is None  # from until_round on
    for t in range(30):
        event = schedule.due(float(t), {1, 4, 6}, set(), 5)
        assert event is not None and event.node in {1, 4, 6}
    assert config.last_round(100) == 8 and replace(config, until_round=-1).last_round(30) == 20


def test_node_states_count_down_the_nodes_due_back_and_up_only_running_ones() -> None:
    from gossipfl.config import NodeConfig
    from gossipfl.scenario.process import NodeProcess

    entries = [NodeProcess(i, NodeConfig(), f"p{i}") for i in range(5)]
    entries[1].restart_at = 3.0
    entries[1].killed_at = 1.0
    entries[2].resume_at = 4.0
    entries[3].killed_at = 1.0  # killed for good
    up, down = node_states(entries, running={0, 2, 3})
    assert up == {0} and down == {1, 2}


def test_churn_config_is_validated_once() -> None:
    base = load_toml(SCENARIOS / "soak.toml")
    for churn, message in (({"kinds": ["kill"]}, "churn.kinds"),
                           ({"kinds": []}, "churn.kinds"),
                           ({"jitter_seconds": 10.0}, "jitter_seconds"),
                           ({"every_seconds": 0.0}, "every_seconds"),
                           ({"max_events": 0}, "max_events"),
                           ({"from_round": 5, "until_round": 5}, "until_round"),
                           ({"until_round": 301}, "within the training rounds")):
        with pytest.raises(ConfigError, match=message):
            from_dict(ScenarioConfig, {**base, "churn": {**base["churn"], **churn}})
    with pytest.raises(ConfigError, match="at least 3 nodes"):
        from_dict(ScenarioConfig, {**base, "nodes": 2})
    with pytest.raises(ConfigError, match="rss_sample_seconds"):
        from_dict(ScenarioConfig, {**base, "rss_sample_seconds": 0})
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(ScenarioConfig, {**base, "churn": {**base["churn"], "every": 1.0}})


def test_the_soak_and_its_baseline_differ_only_in_the_churn() -> None:
    soak = load_scenario(SCENARIOS / "soak.toml")
    baseline = load_scenario(SCENARIOS / "soak_baseline.toml")
    quickstart = load_scenario(SCENARIOS / "quickstart.toml")
    churn = load_scenario(SCENARIOS / "churn.toml")
    assert soak.nodes == 16 and soak.rounds == 300
    assert soak.churn is not None and set(soak.churn.kinds) == {"restart", "pause"}
    assert soak.churn.every_seconds == 10.0
    assert baseline.churn is None
    assert replace(soak, name="", churn=None) == replace(baseline, name="")
    assert (soak.data, soak.model, soak.train) == (quickstart.data, quickstart.model,
                                                   quickstart.train)
    assert soak.protocol == churn.protocol


# -- RSS ------------------------------------------------------------------------------------------


def test_rss_growth_compares_the_last_quarter_with_the_first() -> None:
    assert rss_growth([100, 100, 100, 100]) == 0.0
    assert rss_growth([100, 120, 130, 150]) == pytest.approx(0.5)
    assert rss_growth([1, 3, 9, 9, 9, 9, 4, 8]) == pytest.approx(2.0)  # (4+8)/(1+3) - 1
    assert rss_growth([200, 0, 0, 0, 100]) == pytest.approx(-0.5)  # 5 values: quarters of 1
    assert rss_growth([100, 200, 300]) is None  # too few
    assert rss_growth([]) is None
    assert rss_growth([0, 5, 5, 5]) is None


def test_thin_evenly_keeps_the_ends_and_spreads_the_rest() -> None:
    assert thin_evenly(list(range(10)), 4) == [0, 3, 6, 9]
    assert thin_evenly(list(range(3)), 5) == [0, 1, 2]
    assert thin_evenly(list(range(10)), 1) == [9]
    assert len(thin_evenly(list(range(1000)), 600)) == 600
    with pytest.raises(ValueError):
        thin_evenly([1], 0)


def test_a_bounded_series_stays_bounded_and_evenly_spaced() -> None:
    series = BoundedSeries(cap=10)
    for value in range(1000):
        series.add(value)
        assert len(series.items) <= 20
    gaps = {b - a for a, b in zip(series.items, series.items[1:], strict=False)}
    assert gaps == {series.stride} and series.items[0] == 0
    assert len(series.items) >= 10


def test_the_sampler_samples_when_due_splits_lives_at_a_new_pid_and_grows_on_the_longest() -> None:
    memory = {101: [100, 100, 100, 100, 200, 200, 200, 200], 202: [50, 500, 50, 500],
              303: [5, 5]}
    reads = {pid: iter(values) for pid, values in memory.items()}

    def read(pid: int) -> int | None:
        return next(reads[pid], None)

    sampler = RssSampler(every=1.0, started=10.0, read=read)
    times = [10.0, 10.5, 11.0, 12.0, 12.2, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0, 19.0, 20.0]
    for now in times:
        pid = 101 if now < 18.0 else 202  # restarted at 18 s
        sampler.step(now, [(0, pid), (1, 303)] if now < 12.0 else [(0, pid)])
    section = sampler.node_section(0)
    # due at 10, 11, 12, 13, ..., 20: eleven samples, 8 from pid 101, 3 from pid 202
    assert [s[0] for s in section["rss_samples"]] == [float(t) for t in range(11)]
    lives = section["rss_lives"]
    assert [(life["pid"], life["samples"], life["from"]) for life in lives] == [
        (101, 8, 0.0), (202, 3, 8.0)]
    assert lives[0]["growth"] == pytest.approx(1.0) and lives[1]["growth"] is None
    assert section["rss_growth"] == pytest.approx(1.0)  # the longest life's
    report = {"nodes": [{"index": 0}, {"index": 1}, {"index": 2}], "summary": {}}
    add_rss(report, sampler)
    assert report["summary"]["max_rss_growth"] == pytest.approx(1.0)
    assert report["nodes"][2]["rss_samples"] == [] and report["nodes"][2]["rss_growth"] is None
    assert report["nodes"][1]["rss_growth"] is None  # two samples only


def test_the_report_keeps_at_most_cap_samples_per_node() -> None:
    sampler = RssSampler(every=1.0, started=0.0, cap=50, read=lambda pid: 1000 + pid)
    for t in range(2000):
        sampler.step(float(t), [(0, 7)])
    section = sampler.node_section(0)
    assert len(section["rss_samples"]) == 50
    assert section["rss_samples"][0][0] == 0.0 and section["rss_growth"] == 0.0
    assert len(sampler.series[0].items) <= 100


# -- checkpoints ----------------------------------------------------------------------------------


def test_the_checkpoint_check_finds_missing_corrupt_and_wrong_sized_checkpoints(
        tmp_path: Path) -> None:
    folders = []
    for index in range(5):
        folder = tmp_path / f"node-{index}"
        folder.mkdir()
        folders.append((index, folder))
        if index != 1:  # node 1: none
            size = 7 if index == 3 else 10
            save_checkpoint(folder / "checkpoint.npz", np.ones(size), 4 + index,
                            public=np.zeros(size), public_round=3, durable=False)
    corrupt = tmp_path / "node-2" / "checkpoint.npz"
    data = bytearray(corrupt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte flipped: the checksum (or the zip) says so
    corrupt.write_bytes(bytes(data))
    (tmp_path / "node-4" / "final.npz").write_bytes(b"not a checkpoint")
    section = checkpoints_section(folders, expected=10)
    assert section["ok"] == 1 and section["rounds"] == {"0": 4, "4": 8}
    bad = {(b["node"], b["file"]): b["error"] for b in section["bad"]}
    assert set(bad) == {(1, "checkpoint.npz"), (2, "checkpoint.npz"), (3, "checkpoint.npz"),
                        (4, "final.npz")}
    assert bad[(1, "checkpoint.npz")] == "missing"
    assert "checksum" in bad[(2, "checkpoint.npz")] or "unreadable" in bad[(2, "checkpoint.npz")]
    assert bad[(3, "checkpoint.npz")] == "7 parameters, expected 10"
    assert check_file(tmp_path / "node-0" / "checkpoint.npz", None) == (None, 4)


def test_expected_parameters_is_the_models_size() -> None:
    quickstart = load_scenario(SCENARIOS / "quickstart.toml")  # digits, MLP 64-64
    assert expected_parameters(quickstart) == (64 * 64 + 64) * 2 + 64 * 10 + 10


# -- on the simulator -----------------------------------------------------------------------------


def test_churn_on_the_simulator_takes_nodes_down_one_at_a_time_and_all_finish(
        tmp_path: Path, pool) -> None:
    churn = ("[churn]\nevery_seconds = 2.0\njitter_seconds = 0.5\ndown_seconds = 1.0\n"
             "max_events = 4\nstart_seconds = 1.0\n")
    text = scenario_text(name="simchurn", nodes=6, rounds=60, extra=churn)
    report = simulated(tmp_path, text, pool)
    events = report["churn"]["events"]
    assert len(events) == 4 == report["summary"]["churn_events"]
    for before, after in itertools.pairwise(events):
        assert after["time"] >= before["back_at"]
    nodes = report["nodes"]
    for event in events:
        words = " ".join(nodes[event["node"]]["events"])
        assert ("killed after round" if event["kind"] == "restart" else "paused after") in words
    assert sum(n["restarts"] for n in nodes) == sum(e["kind"] == "restart" for e in events)
    assert [n["status"] for n in nodes] == ["done"] * 6
    assert report["checkpoints"]["ok"] == 6 and report["checkpoints"]["bad"] == []
    assert report["summary"]["bad_checkpoints"] == 0
