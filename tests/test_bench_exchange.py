"""The exchange benchmark runs end to end (two libp2p hosts over loopback) and each path carries
the vector intact; its figures are not asserted (see the README's Benchmarks)."""

from __future__ import annotations

import trio

from benchmarks.bench_exchange import run


def test_every_exchange_path_runs_and_delivers() -> None:
    rows = trio.run(run, [20_000], 1, False)  # asserts the vector arrived intact
    (row,) = rows
    assert row["parameters"] == 20_000 and row["frame_bytes"] > 80_000
    for name in ("plain", "contribution-clear", "contribution", "masked"):
        wall, cpu = row[name]
        assert wall > 0 and cpu >= 0, name
