"""A small soak with real node processes: the churn restarts one node and pauses another, the
report samples every node's RSS and checks every checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_scenarios import BASE, run_text

pytestmark = pytest.mark.e2e

# seed 2 draws a restart, then a pause (the draws depend on the seed and the nodes up only)
CHURN = """
[churn]
every_seconds = 2.0
jitter_seconds = 0.5
kinds = ["restart", "pause"]
down_seconds = 1.0
max_events = 2
start_seconds = 0.0
"""


def test_a_short_soak_restarts_and_pauses_and_every_checkpoint_is_sound(tmp_path: Path) -> None:
    # enough rounds that the others are still at work when the restarted node is back
    text = BASE.format(name="e2esoak", nodes=4, rounds=300, topology="full", degree=3,
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
    assert report["checkpoints"]["ok"] == 4 and report["checkpoints"]["bad"] == []
    assert set(report["checkpoints"]["rounds"]) == {"0", "1", "2", "3"}
    for node in nodes:
        assert node["rss_samples"] and all(rss > 0 for _, rss in node["rss_samples"])
    # the restarted node's samples come from two processes; the growth is its longer life's
    assert len({life["pid"] for life in restarted["rss_lives"]}) == 2
    assert report["summary"]["max_rss_growth"] is not None
