"""Benchmark: run a scenario (default: the quickstart) and print what it cost and reached.

Prints, per node: final accuracy, rounds, wall time per round, bytes sent/received, train and
eval seconds, peak RSS; then the federation's wall time and accuracy as ratios against the
centralised baseline trained in this same process (same model, data and epochs), and beside
the peers' published figures for the same task on this kind of machine.

    .venv/bin/python benchmarks/bench_quickstart.py                       # the quickstart
    .venv/bin/python benchmarks/bench_quickstart.py scenarios/peer_task.toml   # plain SGD task
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from gossipfl.scenario.config import load_scenario
from gossipfl.scenario.report import centralised_baseline
from gossipfl.scenario.runner import run_scenario

# Measured by the author on this kind of machine (2 cores), same task (peer_task.toml).
PEERS = {
    "Flower FedAvg (1 process, server)": {"accuracy": 0.931, "wall_s": "14-17", "rss": "1.3 GB"},
    "p2pfl (gRPC gossip)": {"accuracy": 0.931, "wall_s": "310", "rss": "2.8-3.7 GB"},
}
TARGET = {"min_accuracy": 0.96, "wall_s": 15.0, "rss_mb_per_node": 300}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/quickstart.toml")
    parser.add_argument("--out", help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gossipfl-bench-"))
    code = run_scenario(args.scenario, out=out, quiet=True, centralised=False)
    report = json.loads((out / "report.json").read_text())

    start = time.perf_counter()
    central = centralised_baseline(scenario)
    central_seconds = time.perf_counter() - start

    print(f"\nscenario {scenario.name}: {scenario.nodes} node processes, {scenario.rounds} "
          f"training rounds + consensus ({report['total_rounds']} rounds in all), exit {code}")
    header = (f"{'node':>4} {'status':>7} {'acc':>7} {'rounds':>6} {'s/round':>8} "
              f"{'sent MB':>8} {'recv MB':>8} {'train s':>8} {'eval s':>7} {'RSS MB':>7}")
    print(header)
    for n in report["nodes"]:
        acc = "-" if n["final_accuracy"] is None else f"{n['final_accuracy']:.4f}"
        per_round = n["round_seconds_mean"] or 0.0
        print(f"{n['index']:>4} {n['status']:>7} {acc:>7} {n['rounds_completed']:>6} "
              f"{per_round:>8.3f} {n['bytes_sent'] / 1e6:>8.2f} "
              f"{n['bytes_received'] / 1e6:>8.2f} {n['train_seconds']:>8.2f} "
              f"{n['eval_seconds']:>7.2f} {(n['peak_rss_bytes'] or 0) / 2**20:>7.0f}")
    summary = report["summary"]
    wall = report["wall_seconds"]
    min_acc = summary["min_final_accuracy"]
    if min_acc is None:
        print(f"the run failed (exit {code}): no node finished a round; see {out}/nodes/*/")
        return code or 1
    rss_mb = summary["max_peak_rss_bytes"] / 2**20
    print(f"\nwall time (all processes, start to last exit): {wall:.1f} s")
    print(f"min / mean node accuracy: {min_acc:.4f} / {summary['mean_final_accuracy']:.4f}")
    print(f"centralised baseline (this process): {central:.4f} in {central_seconds:.1f} s")
    print(f"ratio min accuracy / centralised: {min_acc / central:.3f}")
    print(f"ratio federation wall / centralised training time: {wall / central_seconds:.1f}")
    print(f"final consensus distance: {report['final_consensus_distance']:.2e}")
    print(f"total bytes sent: {summary['total_bytes_sent'] / 1e6:.1f} MB; max peak RSS per node: "
          f"{rss_mb:.0f} MB")
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    print(f"target: every node >= {TARGET['min_accuracy']} "
          f"({verdict(min_acc >= TARGET['min_accuracy'])}), wall <= {TARGET['wall_s']} s "
          f"({verdict(wall <= TARGET['wall_s'])}), RSS <= {TARGET['rss_mb_per_node']} MB "
          f"({verdict(rss_mb <= TARGET['rss_mb_per_node'])})")
    print("peers on the same task (published figures, not rerun here):")
    for name, figures in PEERS.items():
        print(f"  {name}: accuracy {figures['accuracy']}, {figures['wall_s']} s, {figures['rss']}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
