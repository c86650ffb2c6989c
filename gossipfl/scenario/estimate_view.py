"""``gossipfl estimate SCENARIO.toml``: calibrate, estimate, and show it (a rich table, or JSON
with ``--json``: the run's ``wall_seconds`` and each node's ``peak_rss_bytes``, ``bytes_sent``
and ``bytes_received`` under the names report.json uses)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from gossipfl.scenario.calibrate import Calibration
from gossipfl.scenario.estimate import Estimate

MB = 1e6
MIB = 2**20


def estimate_dict(estimate: Estimate, calibration: Calibration) -> dict[str, Any]:
    """The estimate as JSON data (report.json's names where a figure has one)."""
    return {
        "scenario": estimate.scenario,
        "wall_seconds": estimate.wall_seconds,
        "training_rounds": estimate.training_rounds,
        "consensus_rounds": estimate.consensus_rounds,
        "total_rounds": estimate.rounds,
        "max_peak_rss_bytes": estimate.max_peak_rss_bytes,
        "total_bytes_sent": sum(n.bytes_sent for n in estimate.nodes),
        "nodes": [dataclasses.asdict(n) for n in estimate.nodes],
        "terms": estimate.terms,
        "calibration": dataclasses.asdict(calibration),
    }


def print_estimate(estimate: Estimate, calibration: Calibration) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{estimate.scenario}: estimated {estimate.wall_seconds:.1f} s wall, "
                        f"{estimate.training_rounds} training + {estimate.consensus_rounds} "
                        f"consensus rounds")
    for column in ("node", "examples", "degree", "train s/rd", "round s", "rounds", "wall s",
                   "RSS MB", "sent MB", "recv MB"):
        table.add_column(column, justify="right")
    for n in estimate.nodes:
        table.add_row(str(n.index), str(n.examples), str(n.degree),
                      f"{n.train_seconds_per_round:.3f}", f"{n.round_seconds:.3f}",
                      str(n.rounds), f"{n.wall_seconds:.1f}", f"{n.peak_rss_bytes / MIB:.0f}",
                      f"{n.bytes_sent / MB:.2f}", f"{n.bytes_received / MB:.2f}")
    console = Console()
    console.print(table)
    t = estimate.terms
    console.print(
        f"calibrated in {calibration.calibration_seconds:.1f} s on {calibration.cores} cores: "
        f"{calibration.parameters} parameters, training round {calibration.train_seconds:.4f} s "
        f"(node 0), contribution frame {calibration.delta_bytes} B, heartbeat "
        f"{calibration.heartbeat_bytes} B; start-up {t['start_up_seconds']:.1f} s, "
        f"{t['cores_left']:.2f} cores left after heartbeats, ρ {t['rho']:.3f}, "
        f"horizon {t['horizon']:.0f}; the event loop runs {t['machine_factor']:.2f}× the "
        f"reference machine's time a frame ({calibration.frame_seconds * 1e6:.0f} µs). "
        f"Estimated for this machine with nothing else running; "
        f"other work found running now: {calibration.other_load:.1f} runnable processes.")


def run_estimate(path: str, *, as_json: bool) -> int:
    """Load, calibrate, estimate, print; ConfigError and OSError are the caller's to report."""
    from gossipfl.scenario.calibrate import calibrate
    from gossipfl.scenario.config import load_scenario
    from gossipfl.scenario.estimate import estimate

    scenario = load_scenario(path)
    calibration = calibrate(scenario)
    result = estimate(scenario, calibration)
    if as_json:
        json.dump(estimate_dict(result, calibration), sys.stdout, indent=1)
        print()
    else:
        print_estimate(result, calibration)
    return 0


__all__ = ["estimate_dict", "print_estimate", "run_estimate"]
