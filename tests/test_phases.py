"""A round's phases timed (gossipfl/node/phases.py): the wall time on the node's clock and, for a
node process on Linux, how much of it the node's thread ran and how much it waited for a CPU."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from gossipfl.node.phases import SCHEDSTAT, thread_sched, timed


def test_the_statistics_are_read_in_seconds_and_none_where_absent(tmp_path: Path) -> None:
    stat = tmp_path / "schedstat"
    stat.write_text("2000000000 500000000 7\n")
    assert thread_sched(stat) == (2.0, 0.5)
    assert thread_sched(tmp_path / "absent") is None
    stat.write_text("not numbers\n")
    assert thread_sched(stat) is None


@pytest.mark.skipif(not SCHEDSTAT.exists(), reason="Linux's per-thread scheduler statistics")
def test_this_threads_running_time_grows_with_its_work() -> None:
    before = thread_sched()
    assert before is not None and before[0] >= 0 and before[1] >= 0
    end = time.thread_time() + 0.05
    while time.thread_time() < end:  # 50 ms of this thread's CPU
        pass
    after = thread_sched()
    assert after is not None and after[0] - before[0] >= 0.04


def test_a_timed_phase_records_its_wall_time_and_its_split() -> None:
    readings = iter([(1.0, 2.0), (1.25, 2.5)])  # (ran, waited) before and after
    record: dict[str, Any] = {}

    async def main() -> None:
        with timed(record, "send", lambda: next(readings)):
            await trio.sleep(3.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert record == {"send_seconds": 3.0, "send_cpu_seconds": 0.25,
                      "send_queue_seconds": 0.5}


@pytest.mark.parametrize("sched", [None, lambda: None], ids=["none given", "kernel silent"])
def test_without_statistics_only_the_wall_time_is_recorded(sched: Any) -> None:
    record: dict[str, Any] = {}

    async def main() -> None:
        with timed(record, "send", sched):
            await trio.sleep(1.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert record == {"send_seconds": 1.0}


def test_a_phase_that_fails_records_nothing() -> None:
    record: dict[str, Any] = {}

    async def main() -> None:
        with timed(record, "send", lambda: (0.0, 0.0)):
            raise ConnectionError("the send broke")

    with pytest.raises(ConnectionError):
        trio.run(main)
    assert record == {}
