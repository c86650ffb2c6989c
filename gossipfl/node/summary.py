"""What a node reports when it stops (``summary.json``): reads of its state and its process."""

from __future__ import annotations

import os
import resource
from typing import Any

from gossipfl.node.state import Node


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    """CPU seconds (user and system) this process has used so far, its threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_age() -> float:
    """Wall seconds since this process started (forked or spawned), at the clock ticks'
    resolution (10 ms)."""
    import time

    import psutil

    return time.time() - psutil.Process().create_time()


def node_summary(node: Node) -> dict[str, Any]:
    """What ``summary.json`` holds: the node's end state, traffic, faults seen, privacy."""
    return {
        "peer_id": node.peer_id,
        "pid": os.getpid(),
        "node_index": node.config.node_index,
        "status": node.status,
        "round": node.round,
        "final_accuracy": node.final_accuracy,
        "bytes_sent": node.traffic.bytes_sent,
        "bytes_received": node.traffic.bytes_received,
        "messages_sent": node.traffic.messages_sent,
        "messages_received": node.traffic.messages_received,
        "bytes_sent_by_kind": dict(node.traffic.by_kind_sent),
        "compression": compression_summary(node),
        "train_seconds": sum(h.get("train_seconds", 0.0) for h in node.history),
        "eval_seconds": sum(h.get("eval_seconds", 0.0) for h in node.history),
        "peak_rss_bytes": peak_rss_bytes(),
        "startup_seconds": node.startup_seconds,
        "cpu_seconds": cpu_seconds(),
        "rejected": dict(node.rejections),
        "timeouts": node.timeouts,
        "neighbours": sorted(node.neighbours),
        "dropped_neighbours": node.dropped,
        "isolated_rounds": node.isolated_rounds,
        "termination": {"depth": node.settle.depth, "horizon": node.settle.horizon,
                        "finished_without": list(node.settle.gone),
                        "held_rounds": node.settle.holds,
                        "paced_rounds": node.settle.paced,
                        "held_seconds": node.settle.held_seconds,
                        "awaiting_rounds": node.settle.waiting_rounds,
                        # after done: time spent lingering, and each reopening (linger.py)
                        "lingered_seconds": node.settle.lingered_seconds,
                        "reopened": node.settle.reopened,
                        "reopens": node.settle.reopens},
        "resumed_from": node.resumed_from,
        "diverged_rounds": node.diverged_rounds,
        "rejoins_served": node.rejoins_served,
        "joined_late": node.joined_late,
        "relinks": node.relinks,
        "replacements": node.replacements,
        "catch_ups": node.catch_ups,
        "parameters": node.layout.size,
        "examples": len(node.learner.y),
        "privacy": privacy_summary(node),
        "role": node.role.kind.value,
        "in_flight": {"peak_bytes": node.in_flight.peak, "limit": node.in_flight.limit,
                      "refused": node.in_flight.refused},
    }


def privacy_summary(node: Node) -> dict[str, Any]:
    """The privacy section: transport, admission, sealing, secure aggregation, DP spent."""
    dp = node.config.privacy
    summary: dict[str, Any] = {
        "transport": "noise", "admission": node.security.enabled,
        "payload_encryption": node.security.sealed, "dp": dp.enabled,
    }
    summary["secure_aggregation"] = {
        "enabled": node.config.secagg.enabled,
        "min_contributors": node.config.secagg.min_contributors,
        "refused_rounds": node.secagg.refused_rounds,
        "failed_rounds": node.secagg.failed_rounds,
    }
    if node.budget is not None:
        summary.update(
            unit=str(node.budget.unit), epsilon=node.budget.epsilon(), delta=dp.delta,
            target_epsilon=dp.target_epsilon, noise_multiplier=node.budget.noise_multiplier,
            clip_norm=dp.clip_norm, noise_source="PCG64 seeded from os entropy (secrets)",
            stopped_contributing_round=node.dp_exhausted_round,
        )
        if node.budget.unit == "record":
            summary.update(
                sampling="poisson", sampling_probability=node.budget.sample_rate,
                expected_batch=node.budget.sample_rate * len(node.learner.y),
                records=len(node.learner.y),
                steps_spent=node.budget.spent,
            )
        else:
            summary.update(sampling="none (every round)", sampling_probability=1.0,
                           rounds_spent=node.budget.rounds_spent)
    return summary


def compression_summary(node: Node) -> dict[str, Any]:
    """``[compression]`` and what it saved: the parameter bytes of the contributions sent
    against float32, and the contribution frames' bytes against what they would have been."""
    own, kinds = node.own, node.traffic.by_kind_sent
    frames = kinds.get("contribution", 0) + kinds.get("sealed", 0)
    saved = own.bytes_float32 - own.bytes_packed
    return {"kind": node.config.compression.kind, "ratio": node.config.compression.ratio,
            "parameter_ratio": own.bytes_float32 / own.bytes_packed if own.bytes_packed else None,
            "frame_ratio": (frames + saved) / frames if frames else None}
