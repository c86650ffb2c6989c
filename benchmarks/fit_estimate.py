"""Refit the estimator's constants on measured runs (issue 13).

Each folder given is a run made by ``benchmarks/bench_estimate.py --out DIR`` (its
``scenario.toml``, ``report.json`` and the ``estimate.json`` made just before it, calibration
included). For each run the estimate is recomputed from its own calibration with the model's
constants (``gossipfl/scenario/estimate.py``: ``ModelConstants``), and wall time, the largest
peak RSS and mean bytes sent are compared with the measured run. With
``--fit NAME=LOW:HIGH:STEPS`` (repeatable) a grid over those constants is searched for the
least worst ratio (either way) of wall time, peak RSS and bytes sent, the bar's three
figures; the figures are then printed again with the best constants. That is in-sample: check
a fit on runs it was not fitted on (``--check`` folders).

    PYTHONPATH=. python benchmarks/fit_estimate.py /tmp/fit/*-[0-9] \\
        --fit frame_cpu_seconds=1e-4:4e-4:7 --fit join_intervals=1.5:3:4 --check /tmp/held/*
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.scenario.calibrate import Calibration, SecAggBytes
from gossipfl.scenario.config import load_scenario
from gossipfl.scenario.estimate import ModelConstants, estimate


def calibration_of(data: dict[str, Any]) -> Calibration:
    fields = dict(data)
    if fields.get("secagg") is not None:
        fields["secagg"] = SecAggBytes(**fields["secagg"])
    fields["examples"], fields["steps"] = tuple(fields["examples"]), tuple(fields["steps"])
    return Calibration(**fields)


def load_run(folder: Path) -> tuple[Any, Calibration, dict[str, Any]]:
    scenario = load_scenario(folder / "scenario.toml")
    cal = calibration_of(json.loads((folder / "estimate.json").read_text())["calibration"])
    return scenario, cal, json.loads((folder / "report.json").read_text())


def ratios(run: tuple[Any, Calibration, dict[str, Any]],
           constants: ModelConstants) -> dict[str, float]:
    scenario, cal, report = run
    e = estimate(scenario, cal, constants)
    nodes = report["nodes"]
    return {
        "wall": e.wall_seconds / report["wall_seconds"],
        "rss": e.max_peak_rss_bytes / report["summary"]["max_peak_rss_bytes"],
        "bytes": statistics.fmean(n.bytes_sent for n in e.nodes)
        / statistics.fmean(n["bytes_sent"] for n in nodes),
    }


def worst(values: list[float]) -> float:
    return max(max(v, 1 / v) for v in values)


def show(title: str, runs: dict[str, Any], constants: ModelConstants) -> float:
    print(f"\n{title}")
    walls, every = [], []
    for name, run in runs.items():
        r = ratios(run, constants)
        walls.append(r["wall"])
        every.extend(r.values())
        print(f"  {name:<28} wall {r['wall']:.2f}  rss {r['rss']:.2f}  bytes {r['bytes']:.2f}"
              f"  (measured {run[2]['wall_seconds']:.1f} s)")
    print(f"  worst ratio (either way): wall {worst(walls):.3f}, any figure {worst(every):.3f}")
    return worst(every)


def grid(spec: list[str]) -> dict[str, np.ndarray]:
    axes = {}
    for item in spec:
        name, _, bounds = item.partition("=")
        low, high, steps = bounds.split(":")
        axes[name] = np.linspace(float(low), float(high), int(steps))
    return axes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--fit", action="append", default=[], metavar="NAME=LOW:HIGH:STEPS")
    parser.add_argument("--check", nargs="*", type=Path, default=[],
                        help="held-out runs: shown, not fitted on")
    args = parser.parse_args()
    runs = {f"{p.parent.name}/{p.name}": load_run(p) for p in args.runs}
    held = {f"{p.parent.name}/{p.name}": load_run(p) for p in args.check}
    constants = ModelConstants()
    show("the model's constants", runs, constants)
    if args.fit:
        axes = grid(args.fit)
        best, best_score = constants, float("inf")
        for values in itertools.product(*axes.values()):
            trial = dataclasses.replace(constants, **dict(zip(axes, map(float, values),
                                                              strict=True)))
            score = worst([v for run in runs.values() for v in ratios(run, trial).values()])
            if score < best_score:
                best, best_score = trial, score
        print("\nbest: " + ", ".join(f"{name} = {getattr(best, name):.4g}" for name in axes))
        show("with the best constants", runs, best)
        constants = best
    if held:
        show("held-out runs", held, constants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
