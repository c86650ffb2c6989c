"""Benchmark: what a node process costs before it does any work (start-up and memory).

Runs a scenario (default: the quickstart) with ``gossipfl run --spawn`` (each node a fresh
interpreter, ``python -m gossipfl node``, as a real deployment starts one) in three ways, in
this same run so that their figures compare as ratios whatever the machine's load:

- ``no cache``: ``GOSSIPFL_COMPILE_CACHE=off``, every node compiles its own steps (as before
  the cache reached spawned nodes);
- ``run cache``: the default, the runner compiles once into ``DIR/xla-cache`` and the nodes
  load from it;
- ``warm cache``: a machine's cache already holding the steps (a second run, or a node
  started by hand after another: ``gossipfl node --compile-cache DIR``).

For each: the nodes' start-up (process start to round 0, from each ``summary.json``'s
``startup_seconds``: imports, identity, data, JAX, listening, joining, links), their peak RSS,
the run's wall time; then the import of a node's modules in a fresh interpreter. Prints the
load average with the figures (the machine may be shared).

    .venv/bin/python benchmarks/bench_overhead.py [SCENARIO] [--repeat N]

Not measured here (yet): the per-message CPU of the node's send path against a raw py-libp2p
stream (issue 15).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NODE_MODULES = ("import gossipfl.node.main, gossipfl.node.runtime, gossipfl.node.round, "
                "gossipfl.node.learner, gossipfl.adversary.factory")


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0] if Path("/proc/loadavg").exists() \
        else "?"


def run(scenario: str, out: Path, cache: str | None) -> dict[str, Any]:
    """One ``gossipfl run --spawn``; its nodes' start-up and peak RSS, its wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    env.pop("GOSSIPFL_COMPILE_CACHE", None)
    if cache is not None:
        env["GOSSIPFL_COMPILE_CACHE"] = cache
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "gossipfl", "run", "--spawn", scenario, "--out",
                    str(out), "--quiet", "--no-centralised"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("nodes/*/summary.json"))]
    startup = [s["startup_seconds"] for s in summaries if s.get("startup_seconds") is not None]
    report = json.loads((out / "report.json").read_text())
    return {"wall": wall, "startup": startup,
            "rss": [s["peak_rss_bytes"] / 2**20 for s in summaries],
            "accuracy": report["summary"]["min_final_accuracy"], "load": load()}


def import_seconds(repeat: int) -> float:
    """The least wall time of a fresh interpreter importing a node's modules."""
    best = float("inf")
    for _ in range(repeat):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", NODE_MODULES], check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
        best = min(best, time.monotonic() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/quickstart.toml")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each way (default 1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gossipfl-overhead-") as folder:
        base = Path(folder)
        machine = base / "machine-cache"
        run(args.scenario, base / "prime", str(machine))  # fills the machine's cache
        ways: dict[str, list[dict[str, Any]]] = {"no cache": [], "run cache": [],
                                                 "warm cache": []}
        for number in range(args.repeat):  # interleaved: the load hits each way alike
            ways["no cache"].append(run(args.scenario, base / f"off-{number}", "off"))
            ways["run cache"].append(run(args.scenario, base / f"run-{number}", None))
            ways["warm cache"].append(run(args.scenario, base / f"warm-{number}", str(machine)))
    print(f"\n{args.scenario}, gossipfl run --spawn, {args.repeat} run(s) each "
          f"(load average before each run in brackets)")
    print(f"{'':>11} {'start-up s (median / max)':>26} {'peak RSS MB (max)':>18} "
          f"{'wall s':>7} {'min acc':>8}  load")
    figures: dict[str, tuple[float, float, float]] = {}
    for name, runs in ways.items():
        startup = [s for r in runs for s in r["startup"]]
        rss = max(x for r in runs for x in r["rss"])
        wall = statistics.median(r["wall"] for r in runs)
        figures[name] = (statistics.median(startup), rss, wall)
        print(f"{name:>11} {statistics.median(startup):>13.2f} / {max(startup):<10.2f} "
              f"{rss:>18.0f} {wall:>7.1f} {min(r['accuracy'] for r in runs):>8.4f}  "
              f"[{', '.join(r['load'] for r in runs)}]")
    off = figures["no cache"]
    for name in ("run cache", "warm cache"):
        got = figures[name]
        print(f"{name} / no cache: start-up {got[0] / off[0]:.2f}x, peak RSS "
              f"{got[1] / off[1]:.2f}x, wall {got[2] / off[2]:.2f}x")
    print(f"imports of a node's modules in a fresh interpreter: {import_seconds(3):.2f} s "
          f"(best of 3; load {load()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
