"""A run folder read back: ``report.json`` and each node's ``metrics.jsonl``, as plain data.

Everything the page shows comes from here; nothing else opens the run folder. A missing or
corrupt ``report.json`` raises :class:`ReportError` with a sentence a person can act on; a node
whose ``metrics.jsonl`` is missing or has unreadable lines is kept (from what ``report.json``
holds) and named in :attr:`RunData.warnings`.
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ReportError(Exception):
    """The run folder cannot be turned into a report (the message says why)."""


class MarkerKind(enum.Enum):
    """What happened to a node (or the network) at a round."""

    KILL = "killed"
    STOP = "stopped"
    PAUSE = "paused"
    RESTART = "restarted"
    JOIN = "joined late"
    CATCH_UP = "caught up"


@dataclass(frozen=True)
class Marker:
    """An event on the round axis: ``node`` is the node's index."""

    round: int
    node: int
    kind: MarkerKind
    label: str


@dataclass(frozen=True)
class Partition:
    """A network partition: cut and healed at these rounds (``None``: never cut/healed)."""

    groups: tuple[tuple[int, ...], ...]
    cut_round: int | None
    heal_round: int | None
    cut_seconds: float | None
    heal_seconds: float | None
    silent: bool


@dataclass(frozen=True)
class Series:
    """One node's ``metrics.jsonl``: one entry per line, in the order written (a restarted
    node may write a round twice). Missing values are NaN. ``bytes_sent`` is per line (the
    file holds running totals, which start again at a restart)."""

    rounds: tuple[int, ...]
    phases: tuple[str, ...]
    accuracy: tuple[float, ...]
    train_seconds: tuple[float, ...]
    eval_seconds: tuple[float, ...]
    send_seconds: tuple[float, ...]
    wait_seconds: tuple[float, ...]
    round_seconds: tuple[float, ...]
    bytes_sent: tuple[float, ...]
    epsilon: tuple[float, ...]

    @property
    def has_epsilon(self) -> bool:
        return any(not math.isnan(e) for e in self.epsilon)


@dataclass(frozen=True)
class Link:
    """A link that changed: ``peer`` is the other end's index (-1 when unknown)."""

    peer: int
    round: int
    note: str


@dataclass(frozen=True)
class NodeData:
    index: int
    peer_id: str
    role: str
    status: str
    final_accuracy: float | None
    peak_rss_bytes: int | None
    bytes_sent: int | None
    rounds_completed: int | None
    neighbours: tuple[int, ...]
    dropped: tuple[Link, ...]
    replacements: tuple[Link, ...]
    restarts: int
    events: tuple[str, ...]
    series: Series | None


@dataclass(frozen=True)
class RunData:
    path: Path
    scenario: str
    simulated: bool
    rounds: int
    total_rounds: int
    wall_seconds: float | None
    virtual_seconds: float | None
    timed_out: bool
    centralised_accuracy: float | None
    consensus_distance: tuple[float, ...]
    nodes: tuple[NodeData, ...]
    markers: tuple[Marker, ...]
    partitions: tuple[Partition, ...]
    summary: Mapping[str, Any]
    privacy: Mapping[str, Any]
    config: Mapping[str, Any]
    adversaries: tuple[Mapping[str, Any], ...]
    churn: Mapping[str, Any]
    warnings: tuple[str, ...]
    # a [[sites]] run's links and relays (report.json's "sites"; empty for any other run)
    sites: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dp_enabled(self) -> bool:
        dp = self.privacy.get("dp")
        return isinstance(dp, Mapping) and bool(dp.get("enabled"))


_EVENT_KINDS = (
    (("SIGKILL", "killed"), MarkerKind.KILL),
    (("SIGTERM", "stopped"), MarkerKind.STOP),
    (("SIGSTOP", "paused"), MarkerKind.PAUSE),
    (("restarted",), MarkerKind.RESTART),
    (("joined late",), MarkerKind.JOIN),
)
_ROUND = re.compile(r"round (-?\d+)")


def event_marker(node: int, text: str) -> Marker | None:
    """The marker of one of a node's ``events`` lines (``None`` for those not marked, such
    as a resume after a pause, and for lines without a round)."""
    found = _ROUND.search(text)
    if found is None:
        return None
    for prefixes, kind in _EVENT_KINDS:
        if text.startswith(prefixes):
            return Marker(int(found.group(1)), node, kind, text)
    return None


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else math.nan


def per_line_bytes(totals: Sequence[float]) -> tuple[float, ...]:
    """Bytes per line from running totals; a total that falls (a restart) starts again."""
    out: list[float] = []
    last = 0.0
    for total in totals:
        if math.isnan(total):
            out.append(math.nan)
            continue
        out.append(total - last if total >= last else total)
        last = total
    return tuple(out)


def load_series(path: Path) -> tuple[Series | None, str | None]:
    """A node's metrics file read (``None`` and a warning when missing or unreadable; bad
    lines are skipped and counted in the warning)."""
    try:
        text = path.read_text()
    except OSError as error:
        return None, f"{path}: cannot read ({error.strerror or error})"
    records: list[dict[str, Any]] = []
    bad = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            records.append(record)
        else:
            bad += 1
    warning = f"{path}: {bad} unreadable line(s) skipped" if bad else None
    if not records:
        return None, warning or f"{path}: no rounds"

    def column(key: str) -> tuple[float, ...]:
        return tuple(_number(r.get(key)) for r in records)

    return Series(
        rounds=tuple(int(r["round"]) for r in records),
        phases=tuple(str(r.get("phase", "")) for r in records),
        accuracy=column("test_accuracy"),
        train_seconds=column("train_seconds"),
        eval_seconds=column("eval_seconds"),
        send_seconds=column("send_seconds"),
        wait_seconds=column("wait_seconds"),
        round_seconds=column("round_seconds"),
        bytes_sent=per_line_bytes(column("bytes_sent")),
        epsilon=column("epsilon"),
    ), warning


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _float_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _links(entries: Any, index_of: Mapping[str, int], note_key: str) -> tuple[Link, ...]:
    links = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        note = entry.get(note_key, "")
        if note_key == "replacing":
            gone = note if isinstance(note, list) else [note] if note else []
            note = ("replacing node " + ", ".join(str(index_of.get(str(p), "?")) for p in gone)
                    if gone else "taken on (late joiner or room)")
        links.append(Link(index_of.get(str(entry.get("peer_id")), -1),
                          _int_or_none(entry.get("round")) or 0, str(note)))
    return tuple(links)


def _node(entry: Mapping[str, Any], index_of: Mapping[str, int], run: Path,
          warnings: list[str]) -> tuple[NodeData, list[Marker]]:
    index = _int_or_none(entry.get("index"))
    if index is None:
        raise ReportError(f"{run / 'report.json'}: a node entry has no index")
    series, warning = load_series(run / "nodes" / f"node-{index:02d}" / "metrics.jsonl")
    if warning:
        warnings.append(warning)
    events = tuple(str(e) for e in entry.get("events") or [])
    markers = [m for m in (event_marker(index, e) for e in events) if m is not None]
    for jump in entry.get("catch_ups") or []:
        if isinstance(jump, Mapping) and isinstance(jump.get("to_round"), int):
            markers.append(Marker(int(jump["to_round"]), index, MarkerKind.CATCH_UP,
                                  (f"caught up from round {jump['from_round']} to "
                                   if isinstance(jump.get("from_round"), int) else
                                   "caught up to round ")
                                  + f"{jump['to_round']} ({jump.get('why', '')})"))
    neighbours = tuple(sorted(index_of[p] for p in entry.get("neighbours") or []
                              if p in index_of))
    node = NodeData(
        index=index, peer_id=str(entry.get("peer_id", "")), role=str(entry.get("role", "honest")),
        status=str(entry.get("status", "?")),
        final_accuracy=_float_or_none(entry.get("final_accuracy")),
        peak_rss_bytes=_int_or_none(entry.get("peak_rss_bytes")),
        bytes_sent=_int_or_none(entry.get("bytes_sent")),
        rounds_completed=_int_or_none(entry.get("rounds_completed")),
        neighbours=neighbours,
        dropped=_links(entry.get("dropped_neighbours"), index_of, "reason"),
        replacements=_links(entry.get("replacements"), index_of, "replacing"),
        restarts=_int_or_none(entry.get("restarts")) or 0, events=events, series=series,
    )
    return node, markers


def _partitions(network: Any) -> tuple[Partition, ...]:
    parts = []
    entries = network.get("partitions") if isinstance(network, Mapping) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        cut = entry.get("cut") if isinstance(entry.get("cut"), Mapping) else {}
        healed = entry.get("healed") if isinstance(entry.get("healed"), Mapping) else {}
        parts.append(Partition(
            groups=tuple(tuple(int(i) for i in g) for g in entry.get("groups") or []),
            cut_round=_int_or_none(cut.get("max_round")),
            heal_round=_int_or_none(healed.get("max_round")),
            cut_seconds=_float_or_none(cut.get("seconds")),
            heal_seconds=_float_or_none(healed.get("seconds")),
            silent=bool(entry.get("silent")),
        ))
    return tuple(parts)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def load_run(path: str | Path) -> RunData:
    """Read the run folder ``path``; :class:`ReportError` when it holds no readable report."""
    run = Path(path)
    report_path = run / "report.json"
    if not run.is_dir():
        raise ReportError(f"{run}: no such run folder")
    try:
        report = json.loads(report_path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{report_path}: missing; is {run} the folder of a finished "
                          f"run?") from None
    except OSError as error:
        raise ReportError(f"{report_path}: cannot read ({error.strerror or error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{report_path}: not valid JSON ({error})") from None
    if not isinstance(report, dict) or not isinstance(report.get("nodes"), list):
        raise ReportError(f"{report_path}: not a gossipfl report (no 'nodes' list)")
    entries = [e for e in report["nodes"] if isinstance(e, Mapping)]
    index_of = {str(e.get("peer_id")): int(e["index"]) for e in entries
                if isinstance(e.get("index"), int)}
    warnings: list[str] = []
    nodes: list[NodeData] = []
    markers: list[Marker] = []
    for entry in entries:
        node, node_markers = _node(entry, index_of, run, warnings)
        nodes.append(node)
        markers.extend(node_markers)
    adversaries = tuple(a for a in report.get("adversaries") or [] if isinstance(a, Mapping))
    distance = tuple(_number(d) for d in report.get("consensus_distance") or [])
    return RunData(
        path=run, scenario=str(report.get("scenario", run.name)),
        simulated=bool(report.get("simulated")),
        rounds=_int_or_none(report.get("rounds")) or 0,
        total_rounds=_int_or_none(report.get("total_rounds")) or 0,
        wall_seconds=_float_or_none(report.get("wall_seconds")),
        virtual_seconds=_float_or_none(report.get("virtual_seconds")),
        timed_out=bool(report.get("timed_out")),
        centralised_accuracy=_float_or_none(report.get("centralised_accuracy")),
        consensus_distance=distance,
        nodes=tuple(sorted(nodes, key=lambda n: n.index)),
        markers=tuple(sorted(markers, key=lambda m: (m.round, m.node))),
        partitions=_partitions(report.get("network")),
        summary=_mapping(report.get("summary")), privacy=_mapping(report.get("privacy")),
        config=_mapping(report.get("config")), adversaries=adversaries,
        churn=_mapping(report.get("churn")), warnings=tuple(warnings),
        sites=_mapping(report.get("sites")),
    )
