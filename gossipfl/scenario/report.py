"""Build ``report.json`` from what the nodes wrote (metrics, summaries, per-round models)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gossipfl.aggregation.mixing import consensus_distance
from gossipfl.config import to_dict
from gossipfl.node.compile_cache import cache_folder
from gossipfl.scenario.adversaries import adversaries_section
from gossipfl.scenario.integrity import (
    checkpoints_section,
    expected_parameters,
)

if TYPE_CHECKING:
    from gossipfl.scenario.config import ScenarioConfig
    from gossipfl.scenario.process import NodeProcess

REPORT_VERSION = 1


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a node killed mid-line
            break
    return records


def _round_models(out: Path) -> dict[int, Path]:
    folder = out / "rounds"
    if not folder.is_dir():
        return {}
    return {int(p.stem[1:]): p for p in folder.glob("r*.npy")}


def consensus_by_round(nodes: list[NodeProcess], last_round: int) -> list[float | None]:
    """mean_i ||x_i − x̄|| / ||x̄|| per round, over the nodes still in the federation.

    A node that finished early keeps its final model in later rounds; a killed node counts only
    up to its last round.
    """
    per_node = {n.index: _round_models(n.out) for n in nodes}
    distances: list[float | None] = []
    # each node's last model read, and no other: a finished node's final model serves every
    # later round, while keeping every model read held every node's every round to the end
    # (1,000 nodes × 46 rounds of 36 KB: 1.6 GB)
    last: dict[int, tuple[Path, np.ndarray]] = {}

    def load(index: int, path: Path) -> np.ndarray:
        if index not in last or last[index][0] != path:
            last[index] = (path, np.load(path))
        return last[index][1]

    for r in range(last_round + 1):
        vectors = []
        for node in nodes:
            models = per_node[node.index]
            if r in models:
                vectors.append(load(node.index, models[r]))
            elif models and node.killed_at is None and r > max(models):
                vectors.append(load(node.index, models[max(models)]))
        distances.append(float(consensus_distance(vectors)) if len(vectors) >= 2 else None)
    return distances


def node_entry(node: NodeProcess) -> dict[str, Any]:
    info = _read_json(node.out / "node.json") or {}
    summary = _read_json(node.out / "summary.json") or {}
    metrics = _metrics(node.out / "metrics.jsonl")
    last = metrics[-1] if metrics else {}
    # rounds a node did not evaluate (train.eval_every) carry None: left out here
    accuracy = [m["test_accuracy"] for m in metrics if m.get("test_accuracy") is not None]
    status = "killed" if node.killed_at is not None else summary.get("status", "unknown")
    return {
        "index": node.index,
        "peer_id": node.peer_id,
        "role": {"none": "honest"}.get(node.config.adversary.kind, node.config.adversary.kind),
        "pid": info.get("pid", node.process.pid if node.process else None),
        "status": status,
        "exit_code": node.exit_code,
        "events": node.events,
        "restarts": node.restarts,
        "resumed_from": summary.get("resumed_from"),
        "joined_late": summary.get("joined_late", False),
        "relinks": summary.get("relinks", 0),
        "rejoins_served": summary.get("rejoins_served", 0),
        "replacements": summary.get("replacements", []),
        "catch_ups": summary.get("catch_ups", []),
        "examples": info.get("examples"),
        "rounds_completed": len(metrics),
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "bytes_sent": summary.get("bytes_sent", last.get("bytes_sent", 0)),
        "compression": summary.get("compression"),
        "bytes_received": summary.get("bytes_received", last.get("bytes_received", 0)),
        "messages_sent": summary.get("messages_sent", last.get("messages_sent", 0)),
        "messages_received": summary.get("messages_received", last.get("messages_received", 0)),
        **phase_seconds(metrics),
        "round_seconds_mean": (
            float(np.mean([m["round_seconds"] for m in metrics])) if metrics else None
        ),
        "peak_rss_bytes": summary.get("peak_rss_bytes", last.get("peak_rss_bytes")),
        "cpu_seconds": summary.get("cpu_seconds"),
        "neighbours": summary.get("neighbours", last.get("neighbours", [])),
        "dropped_neighbours": summary.get("dropped_neighbours", []),
        "isolated_rounds": summary.get("isolated_rounds", 0),
        "termination": summary.get("termination", {}),
        "reopened": summary.get("termination", {}).get("reopened", 0),  # after done (why: reopens)
        "rejected": summary.get("rejected", last.get("rejected", {})),
        "timeouts": summary.get("timeouts", last.get("timeouts", 0)),
        "privacy": summary.get("privacy", {}),
        **({"robust": rounds} if (rounds := robust_rounds(metrics)) else {}),
    }


#: A round's phases as its metrics time them (gossipfl/node/round.py), each summed over a node's
#: rounds: training (in a worker thread, as the learner timed it), evaluation, sending (until
#: every frame is written, on the node's one trio thread, which serves its neighbours
#: meanwhile) and waiting for theirs; and the training step on the node's clock as the send
#: phase is timed (``train_step``: training plus the hand-off to the worker thread and back,
#: which on a busy machine waits for a CPU at both ends).
PHASES = ("train", "eval", "send", "wait", "train_step")
#: The send phase split, where a node process measured it (gossipfl.node.phases): the time its
#: thread ran, and the time it waited runnable for a CPU.
SPLITS = ("send_cpu", "send_queue")


def phase_seconds(metrics: list[dict[str, Any]]) -> dict[str, float | None]:
    """``{phase}_seconds`` for each of :data:`PHASES`: the node's rounds summed (a round
    that did not time a phase counts 0); and for each of :data:`SPLITS` the sum over the rounds
    that measured it (None if none did: a simulated node, or a kernel that does not say).

    >>> phase_seconds([{"train_seconds": 1.0, "send_seconds": 0.5}, {"train_seconds": 2.0,
    ...                "wait_seconds": None, "send_cpu_seconds": 0.25}])
    ... # doctest: +NORMALIZE_WHITESPACE
    {'train_seconds': 3.0, 'eval_seconds': 0.0, 'send_seconds': 0.5, 'wait_seconds': 0.0,
     'train_step_seconds': 0.0, 'send_cpu_seconds': 0.25, 'send_queue_seconds': None}
    """
    totals: dict[str, float | None] = {
        f"{phase}_seconds": float(sum(m.get(f"{phase}_seconds") or 0.0 for m in metrics))
        for phase in PHASES}
    for split in SPLITS:
        measured = [m[f"{split}_seconds"] for m in metrics
                    if m.get(f"{split}_seconds") is not None]
        totals[f"{split}_seconds"] = float(sum(measured)) if measured else None
    return totals


def median_phases(entries: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each phase's median over the nodes that ran a round (the per-node totals of
    :func:`phase_seconds`; a split's over the nodes that measured it): where a node's time
    goes, read at a glance.

    >>> median_phases([{"rounds_completed": 2, "train_seconds": 1.0, "eval_seconds": 0.0,
    ...                 "send_seconds": 3.0, "wait_seconds": 1.0, "train_step_seconds": 1.5},
    ...                {"rounds_completed": 0, "train_seconds": 0.0, "eval_seconds": 0.0,
    ...                 "send_seconds": 0.0, "wait_seconds": 0.0, "train_step_seconds": 0.0}
    ...                ])["send"]
    3.0
    """
    ran = [e for e in entries if e["rounds_completed"]]
    medians: dict[str, float | None] = {
        phase: float(np.median([e[f"{phase}_seconds"] for e in ran])) if ran else None
        for phase in PHASES}
    for split in SPLITS:
        measured = [e[f"{split}_seconds"] for e in ran
                    if e.get(f"{split}_seconds") is not None]
        medians[split] = float(np.median(measured)) if measured else None
    return medians


def honest_consensus(nodes: list[NodeProcess], last_round: int) -> float | None:
    """The last round's consensus distance over the honest nodes only."""
    honest = [n for n in nodes if n.config.adversary.kind == "none"]
    distances = consensus_by_round(honest, last_round)[-1:] if honest else []
    return distances[0] if distances else None


def robust_rounds(metrics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A node's robust rule per round (``[robust] rule``): how many neighbour inputs it mixed,
    clipped and discarded each round, and the totals; None without a rule."""
    rows = [(m["round"], m["robust"]) for m in metrics if m.get("robust")]
    if not rows:
        return None
    return {"rules": sorted({r["rule"] for _, r in rows}),
            "rounds": [r for r, _ in rows],
            "inputs": [r["inputs"] for _, r in rows],
            "clipped": [r["clipped"] for _, r in rows],
            "discarded": [r["discarded"] for _, r in rows],
            "clipped_total": sum(r["clipped"] for _, r in rows),
            "discarded_total": sum(r["discarded"] for _, r in rows)}


def finished_without(entries: list[dict[str, Any]]) -> dict[int, list[int | str]]:
    """Node index → the wanted neighbours (indices; peer ids if unknown) it finished without,
    taking them for gone for good; only the nodes that did."""
    index_of = {e["peer_id"]: e["index"] for e in entries}
    out: dict[int, list[int | str]] = {}
    for entry in entries:
        gone = (entry.get("termination") or {}).get("finished_without") or []
        if gone:
            out[entry["index"]] = [index_of.get(p, p) for p in gone]
    return out


def centralised_baseline(scenario: ScenarioConfig) -> float:
    """The same model and epochs trained on the pooled training data (or as the scenario's
    ``[baseline]`` says): the bar to reach (kept in the machine's cache folder:
    :mod:`gossipfl.scenario.baseline`)."""
    from gossipfl.scenario.baseline import centralised_baseline as baseline

    return baseline(scenario, cache_folder(None))


def privacy_section(scenario: ScenarioConfig, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What protected the run: transport, admission, payload encryption, DP and each node's ε."""
    dp = scenario.privacy
    return {
        "transport": "libp2p Noise (XX, ChaCha20-Poly1305); plaintext refused",
        "admission": scenario.admission,
        "payload_encryption": scenario.admission and scenario.encrypt_payloads,
        "secure_aggregation": {
            **to_dict(scenario.secagg),
            "refused_rounds": {
                str(e["index"]): e["privacy"].get("secure_aggregation", {}).get(
                    "refused_rounds", []) for e in entries
            },
            "failed_rounds": {
                str(e["index"]): e["privacy"].get("secure_aggregation", {}).get(
                    "failed_rounds", []) for e in entries
            },
        },
        "dp": to_dict(dp),
        "dp_unit": (("record: one training record; DP-SGD (per-example clipping, Gaussian noise"
                     " each step, Poisson sampling q = batch_size / records), RDP over all steps")
                    if dp.unit == "record" else
                    "node: one node's whole update per round (add/remove), Gaussian mechanism, "
                    "RDP over rounds"),
        "epsilon": {
            str(e["index"]): e["privacy"].get("epsilon") for e in entries if dp.enabled
        },
        "delta": dp.delta if dp.enabled else None,
        "dp_per_node": {  # σ, sampling rate q and steps (record) or rounds (node) spent
            str(e["index"]): {k: e["privacy"][k] for k in (
                "noise_multiplier", "sampling", "sampling_probability", "steps_spent",
                "rounds_spent", "records") if k in e["privacy"]}
            for e in entries if dp.enabled
        },
    }


def network_section(section: dict[str, Any], nodes: list[NodeProcess]) -> dict[str, Any]:
    """The runner's relay section, plus per partition the neighbour links across its groups in
    each round (from the nodes' metrics) and whether any came back after the heal."""
    from gossipfl.scenario.network import cross_group_links

    index_of = {n.peer_id: n.index for n in nodes}
    by_round: dict[int, dict[int, list[int]]] = {}
    for node in nodes:
        for record in _metrics(node.out / "metrics.jsonl"):
            near = [index_of[p] for p in record.get("neighbours", []) if p in index_of]
            by_round.setdefault(record["round"], {})[node.index] = near
    for partition in section["partitions"]:
        groups = tuple(tuple(g) for g in partition["groups"])
        counts = [cross_group_links(groups, by_round[r]) if r in by_round else None
                  for r in range(max(by_round, default=-1) + 1)]
        partition["cross_links_by_round"] = counts  # index: round
        healed = partition.get("healed")
        partition["rejoined"] = None if healed is None else any(
            (c or 0) > 0 for c in counts[healed["max_round"] + 1:])
    return section


def build_report(scenario: ScenarioConfig, nodes: list[NodeProcess], *, wall_seconds: float,
                 centralised: bool, timed_out: bool,
                 network: dict[str, Any] | None = None,
                 namespaces: dict[str, Any] | None = None) -> dict[str, Any]:
    entries = [node_entry(n) for n in nodes]
    last_round = max((e["rounds_completed"] for e in entries), default=0) - 1
    distances = consensus_by_round(nodes, last_round)
    survivors = [e for e in entries if e["status"] != "killed"]
    finals = [e["final_accuracy"] for e in survivors if e["final_accuracy"] is not None]
    honest = [e["final_accuracy"] for e in survivors
              if e["role"] == "honest" and e["final_accuracy"] is not None]
    checkpoints = checkpoints_section([(n.index, n.out) for n in nodes],
                                      expected_parameters(scenario, cache_folder(None)))
    return {
        "report_version": REPORT_VERSION,
        "scenario": scenario.name,
        "config": to_dict(scenario),
        "wall_seconds": wall_seconds,
        "timed_out": timed_out,
        "rounds": scenario.rounds,
        "total_rounds": last_round + 1,
        "centralised_accuracy": centralised_baseline(scenario) if centralised else None,
        "consensus_distance": distances,
        "final_consensus_distance": next(
            (d for d in reversed(distances) if d is not None), None
        ),
        "distinct_pids": len({e["pid"] for e in entries if e["pid"] is not None}),
        "privacy": privacy_section(scenario, entries),
        "summary": {
            "nodes": len(entries),
            "survivors": len(survivors),
            "min_final_accuracy": min(finals) if finals else None,
            "mean_final_accuracy": float(np.mean(finals)) if finals else None,
            "max_final_accuracy": max(finals) if finals else None,
            # with adversaries: the honest nodes' lowest (what an attack is measured by)
            **({"min_honest_accuracy": min(honest) if honest else None,
                "honest_consensus_distance": honest_consensus(nodes, last_round)}
               if scenario.adversaries else {}),
            "max_peak_rss_bytes": max((e["peak_rss_bytes"] or 0) for e in entries),
            "total_node_cpu_seconds": sum(e["cpu_seconds"] or 0.0 for e in entries),
            "median_node_phase_seconds": median_phases(entries),
            "total_bytes_sent": sum(e["bytes_sent"] for e in entries),
            "isolated_nodes": [e["index"] for e in entries if e["isolated_rounds"]],
            # nodes that finished without a wanted neighbour gone for good, and which
            "finished_without": finished_without(entries),
            "bad_checkpoints": len(checkpoints["bad"]),
        },
        "checkpoints": checkpoints,
        "nodes": entries,
        **({"network": network_section(network, nodes)} if network is not None else {}),
        **({"adversaries": adversaries_section(scenario, nodes)} if scenario.adversaries else {}),
        **({"namespaces": namespaces} if namespaces is not None else {}),  # per node: ip, cap
    }


def show_report(report: dict[str, Any], out_dir: Path, *, quiet: bool, html: bool,
                more: Callable[[dict[str, Any]], None] | None = None) -> None:
    """What a finished run (``gossipfl run`` or ``simulate``) shows once ``report.json`` is
    written: the summary table and ``more`` unless ``quiet``, where the report is, and
    ``report.html`` written beside it with ``html`` (a failure to draw is logged, not raised)."""
    if not quiet:
        print_summary(report)
        if more is not None:
            more(report)
    print(f"report: {out_dir / 'report.json'}")
    if html:
        from gossipfl.report.html import try_write_report_html  # matplotlib: only now

        if (page := try_write_report_html(out_dir)) is not None:
            print(f"report: {page}")


def print_summary(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['scenario']}: {report['wall_seconds']:.1f} s wall")
    for column in ("node", "status", "final acc", "rounds", "sent MB", "train s", "peak RSS MB"):
        table.add_column(column, justify="right")
    for e in report["nodes"]:
        final = e["final_accuracy"]
        table.add_row(
            str(e["index"]), e["status"], "-" if final is None else f"{final:.4f}",
            str(e["rounds_completed"]), f"{e['bytes_sent'] / 1e6:.2f}",
            f"{e['train_seconds']:.1f}", f"{(e['peak_rss_bytes'] or 0) / 2**20:.0f}",
        )
    console = Console()
    console.print(table)
    central = report["centralised_accuracy"]
    distance = report["final_consensus_distance"]
    console.print(
        f"centralised accuracy: {'-' if central is None else f'{central:.4f}'}   "
        f"final consensus distance: {'-' if distance is None else f'{distance:.2e}'}"
    )
