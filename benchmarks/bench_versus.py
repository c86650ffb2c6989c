"""Benchmark: a scenario's wall time against an older commit's, run alternately on this machine.

This machine's speed moves by a factor of two from one day to another (the quickstart of
``58ba1d2``: 3.8-5.1 s at its stop, 7.5-9.4 s on 2026-12-01), so a wall time measured on one day
is no bar for another. This runs the scenario as node processes with this checkout and with an
older checkout of the project (made beforehand: ``git worktree add --detach PATH REV``), in ABBA
order, each through ``gossipfl run`` with that checkout first on ``PYTHONPATH``, and prints
every run, each pair's ratio (this / baseline) and the ratio of the medians. A bar given as a
time against the baseline's time when it was set (issue 15: 5 s where the quickstart took
7.3 s at ``259f7d5``) reads as that ratio.

    git worktree add --detach /tmp/filed 259f7d5
    .venv/bin/python benchmarks/bench_versus.py scenarios/quickstart.toml --baseline /tmp/filed

``--baseline-scenario`` runs another file on the baseline side (a scenario that did not exist
there: it is copied into a temporary folder, so the baseline's checkout is not written to).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from benchmarks.pairs import order, summary
except ModuleNotFoundError:  # run as a script: its own folder is on sys.path
    from pairs import order, summary  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent.parent


def run(tree: Path, scenario: Path, out: Path) -> float:
    """One ``gossipfl run`` of ``scenario`` with ``tree``'s package; its report's wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(tree), os.environ.get("PYTHONPATH")]))}
    code = ("import sys; from gossipfl.cli import main; "
            "sys.argv[0] = 'gossipfl'; sys.exit(main())")
    result = subprocess.run([sys.executable, "-c", code, "run", str(scenario), "--out",
                             str(out)], cwd=tree, env=env, check=False,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{scenario} with {tree} exited {result.returncode}: "
                           f"{result.stderr.strip()[-500:]}")
    return float(json.loads((out / "report.json").read_text())["wall_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--baseline", type=Path, required=True,
                        help="an older checkout of the project (git worktree add --detach)")
    parser.add_argument("--baseline-scenario", type=Path,
                        help="the scenario file for the baseline side (default: the same)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the runs under this folder")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    if not (args.baseline / "gossipfl" / "cli.py").is_file():
        parser.error(f"{args.baseline} holds no gossipfl/cli.py: not a checkout of the project")
    root = args.keep or Path(tempfile.mkdtemp(prefix="gossipfl-versus-"))
    root.mkdir(parents=True, exist_ok=True)
    ours_file = args.scenario.resolve()
    base_file = root / "baseline.toml"
    shutil.copyfile((args.baseline_scenario or args.scenario).resolve(), base_file)
    walls: dict[str, list[float]] = {"ours": [], "baseline": []}
    for i, side in order(args.pairs, "baseline", "ours"):
        tree, scenario = (HERE, ours_file) if side == "ours" else (args.baseline, base_file)
        wall = run(tree.resolve(), scenario, root / f"{side}-{i}")
        walls[side].append(wall)
        print(f"pair {i} {side:>8}: wall {wall:6.2f} s", flush=True)
    print("\n".join(summary(walls["ours"], walls["baseline"], ("this", "baseline"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
