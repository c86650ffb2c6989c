"""A small soak with real node processes: the churn restarts one node and pauses another, the
report samples every node's RSS and checks every checkpoint.

Tied to events, not to this machine's speed: the pause is due before the restarted node is
back, so the runner takes it at its first look after the restart, when the others cannot have
finished (a neighbour they want has not linked again yet: they await it, for gone_seconds);
the paused node is then awaited in turn. Only the first event rests on the runner's look (every
0.2 s) coming within the training rounds: they are its margin."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_scenarios import BASE, run_text

pytestmark = pytest.mark.e2e

# seed 2 draws a restart, then a pause (the draws depend on the seed and the nodes up only).
# every_seconds + jitter_seconds < down_seconds: the pause is due before the restarted node is
# back, so it comes at the runner's first look after the restart (one node down at a time),
# when the others cannot have finished: they still wait for the restarted node to link again,
# and have gone on by a few rounds at most (max_missed_rounds, then a round a heartbeat).
# until_round: events throughout the training rounds
CHURN = """
[churn]
every_seconds = 0.6
jitter_seconds = 0.3
kinds = ["restart", "pause"]
down_seconds = 1.0
max_events = 2
start_seconds = 0.0
until_round = 60
"""


def test_a_short_soak_restarts_and_pauses_and_every_checkpoint_is_sound(tmp_path: Path) -> None:
    # while a node is down the others cannot finish (a wanted neighbour is missing: they
    # await it, for gone_seconds at most), so the pause, due before the restarted node is
    # back, comes while the federation runs, whatever this machine's speed. The rounds are
    # only the margin for the runner's first look (every 0.2 s) after round 1: the restart
    text = BASE.format(name="e2esoak", nodes=4, rounds=60, topology="full", degree=3,
                       round_timeout=5.0).replace("seed = 1", "seed = 2\nrss_sample_seconds = 0.5")
    code, report = run_text(tmp_path, text + CHURN)
    assert code == 0
    events = report["churn"]["events"]
    assert [e["kind"] for e in events] == ["restart", "pause"]
    assert events[1]["time"] >= events[0]["back_at"]
    nodes = report["nodes"]
    assert [n["status"] for n in nodes] == ["done"] * 4
    restarted, paused = nodes[events[0]["node"]], nodes[events[1]["node"]]
    assert restarted["restarts"] == 1 and restarted["events"][0].startswith("SIGKILL")
    assert any(e.startswith("SIGSTOP") for e in paused["events"])
    assert report["summary"]["finished_without"] == {}  # each node down was waited for
    assert report["checkpoints"]["ok"] == 4 and report["checkpoints"]["bad"] == []
    assert set(report["checkpoints"]["rounds"]) == {"0", "1", "2", "3"}
    for node in nodes:
        assert node["rss_samples"] and all(rss > 0 for _, rss in node["rss_samples"])
    # the restarted node's samples come from two processes; the growth is its longer life's
    assert len({life["pid"] for life in restarted["rss_lives"]}) == 2
    assert report["summary"]["max_rss_growth"] is not None
