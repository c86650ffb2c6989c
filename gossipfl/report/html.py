"""``report.html``: one self-contained page of a run (inline CSS and figures, no external
fetch), assembled from :func:`gossipfl.report.data.load_run` and the figures of
:mod:`gossipfl.report.plots`."""

from __future__ import annotations

import html
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import gossipfl.report.plots as plots
from gossipfl.report.data import ReportError, RunData, load_run

log = logging.getLogger("gossipfl.report")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:16px 28px 60px}
h1{font-size:24px;margin:12px 0 2px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #ddd;padding-bottom:3px}
.sub{color:#666;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 10px;background:#fff}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}
th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:8px 0 18px;background:#fff;border:1px solid #e4e4e4;padding:6px}
figure svg,figure img{max-width:100%;height:auto;display:block}
figcaption{color:#555;font-size:12.5px;margin-top:4px}
.note{background:#fff8e1;border-left:4px solid #f0c000;padding:6px 10px;margin:8px 0}
nav a{margin-right:12px}ul{margin:4px 0 8px}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "–"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.2f} {unit}"
    return f"{value:.0f} B"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A table of escaped cells; numbers right-aligned."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_e(c)}</td>' if isinstance(c, int | float)
                         else f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(ident: str, markup: str, caption: str) -> str:
    return (f'<figure id="fig-{ident}">{markup}<figcaption>{_e(caption)}</figcaption>'
            f"</figure>")


def summary_section(run: RunData) -> str:
    s = run.summary
    rows: list[tuple[str, str]] = [
        ("nodes (survivors)", f"{_fmt(s.get('nodes'))} ({_fmt(s.get('survivors'))})"),
        ("training rounds / all rounds", f"{run.rounds} / {run.total_rounds}"),
        ("final accuracy min / mean / max",
         " / ".join(_fmt(s.get(k)) for k in ("min_final_accuracy", "mean_final_accuracy",
                                             "max_final_accuracy"))),
        ("centralised accuracy (pooled data)", _fmt(run.centralised_accuracy)),
        ("final consensus distance",
         _fmt(run.consensus_distance[-1] if run.consensus_distance else None)),
        ("wall time (seconds)", _fmt(run.wall_seconds)),
        ("bytes sent, all nodes", _bytes(s.get("total_bytes_sent"))),
        ("max peak RSS", _bytes(s.get("max_peak_rss_bytes"))),
        ("timed out", _fmt(run.timed_out)),
    ]
    if run.virtual_seconds is not None:
        rows.insert(6, ("simulated time (virtual seconds)", _fmt(run.virtual_seconds)))
    if "min_honest_accuracy" in s:
        rows.insert(3, ("min honest accuracy", _fmt(s.get("min_honest_accuracy"))))
    if s.get("isolated_nodes"):
        rows.append(("trained alone (isolated)", ", ".join(map(str, s["isolated_nodes"]))))
    if s.get("finished_without"):
        rows.append(("finished without", "; ".join(
            f"node {k}: {len(v) if isinstance(v, list) else v} member(s)"
            for k, v in s["finished_without"].items())))
    nodes = _table(
        ["node", "peer id", "role", "status", "final accuracy", "rounds", "bytes sent",
         "peak RSS", "restarts", "events"],
        [(n.index, f"…{n.peer_id[-8:]}", n.role, n.status, _fmt(n.final_accuracy),
          _fmt(n.rounds_completed), _bytes(n.bytes_sent), _bytes(n.peak_rss_bytes), n.restarts,
          "; ".join(n.events)) for n in run.nodes])
    return (f'<section id="summary"><h2>Summary</h2>{_table(["", "value"], rows)}'
            f"<h3>Nodes</h3>{nodes}</section>")


def privacy_sentences(run: RunData) -> list[str]:
    """The run's protections in words, from ``report.json``'s ``privacy`` section."""
    p = run.privacy
    out = []
    if p.get("transport"):
        out.append(f"Transport: {p['transport']}.")
    out.append("Admission on: only members holding a certificate signed by the federation key "
               "may join." if p.get("admission") else
               "Admission off: anyone who reaches a member may join, under any number of ids.")
    out.append("Contributions are sealed: encrypted to each neighbour and signed."
               if p.get("payload_encryption") else
               "Contributions are not sealed beyond the transport's encryption.")
    sa = p.get("secure_aggregation")
    if isinstance(sa, Mapping) and sa.get("enabled"):
        refused = sum(len(v) for v in (sa.get("refused_rounds") or {}).values()
                      if isinstance(v, list))
        failed = sum(len(v) for v in (sa.get("failed_rounds") or {}).values()
                     if isinstance(v, list))
        out.append(f"Secure aggregation on: a node's neighbours see only the masked sum of at "
                   f"least {_fmt(sa.get('min_contributors'))} contributions (clip "
                   f"{_fmt(sa.get('clip'))}); rounds refused: {refused}, failed: {failed} "
                   f"(all nodes).")
    else:
        out.append("Secure aggregation off: each neighbour receives a node's own contribution.")
    dp = p.get("dp")
    if isinstance(dp, Mapping) and dp.get("enabled"):
        spent = [v for v in (p.get("epsilon") or {}).values() if isinstance(v, int | float)]
        spent_text = ("ε spent not reported" if not spent else
                      f"ε spent {spent[0]:.4g} by every node" if min(spent) == max(spent) else
                      f"ε spent per node {min(spent):.4g}–{max(spent):.4g}")
        noise = "distributed noise" if dp.get("distributed") else "local noise"
        delta = p.get("delta") or dp.get("delta")
        out.append(f"Differential privacy on ({noise}), unit: {p.get('dp_unit') or dp.get('unit')}"
                   f". Target ε = {_fmt(dp.get('target_epsilon'))} at δ = {_fmt(delta)}; "
                   f"{spent_text}; clip norm {_fmt(dp.get('clip_norm'))}.")
        per_node = p.get("dp_per_node") or {}
        sigmas = sorted({round(float(v["noise_multiplier"]), 4) for v in per_node.values()
                         if isinstance(v, Mapping) and
                         isinstance(v.get("noise_multiplier"), int | float)})
        qs = sorted({round(float(v["sampling_probability"]), 4) for v in per_node.values()
                     if isinstance(v, Mapping) and
                     isinstance(v.get("sampling_probability"), int | float)})
        if sigmas:
            out.append(f"Noise multiplier σ = {', '.join(map(str, sigmas))}"
                       + (f"; sampling probability q = {', '.join(map(str, qs))}." if qs
                          else "."))
    else:
        out.append("Differential privacy off: no noise is added; no ε is claimed.")
    return out


def _privacy_section(run: RunData) -> str:
    items = "".join(f"<li>{_e(s)}</li>" for s in privacy_sentences(run))
    return f'<section id="privacy"><h2>Privacy settings</h2><ul>{items}</ul></section>'


def _epsilon_section(run: RunData) -> str:
    if not run.dp_enabled:
        return ""
    if any(n.series is not None and n.series.has_epsilon for n in run.nodes):
        body = _figure("epsilon", plots.epsilon_plot(run),
                       "ε each node had spent after each round (metrics.jsonl), and the target.")
    else:
        spent = run.privacy.get("epsilon") or {}
        body = ('<p class="note">ε per round is not recorded in this run\'s metrics.jsonl; '
                "the final ε of each node (report.json) is shown instead.</p>"
                + _table(["node", "final ε"], [(k, _fmt(v)) for k, v in spent.items()]))
    return f'<section id="epsilon"><h2>Privacy spent (ε)</h2>{body}</section>'


def _events_section(run: RunData) -> str:
    parts = []
    for number, part in enumerate(run.partitions):
        groups = " | ".join(",".join(map(str, g)) for g in part.groups)
        parts.append(
            f"partition {number} ({'silent' if part.silent else 'reset'}; groups {groups}): "
            f"cut at round {_fmt(part.cut_round)} ({_fmt(part.cut_seconds)} s), healed at round "
            f"{_fmt(part.heal_round)} ({_fmt(part.heal_seconds)} s)")
    churn = run.churn.get("events") if isinstance(run.churn.get("events"), list) else []
    if churn:
        kinds: dict[str, int] = {}
        for event in churn:
            if isinstance(event, Mapping):
                kinds[str(event.get("kind"))] = kinds.get(str(event.get("kind")), 0) + 1
        parts.append(f"churn: {len(churn)} events ("
                     + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) + ")")
    faults = run.config.get("faults") if isinstance(run.config.get("faults"), list) else []
    for fault in faults:
        if isinstance(fault, Mapping):
            when = ("a round drawn from the seed" if fault.get("at_round", 0) < 0 else
                    f"round {fault.get('at_round')}")
            parts.append(f"scenario fault: {fault.get('kind')} node {fault.get('node')} at "
                         f"{when}" + (f", down {fault.get('down_seconds')} s"
                                      if fault.get("kind") in ("restart", "pause") else ""))
    rows = [(m.round, m.node, m.kind.value, m.label) for m in run.markers]
    if not parts and not rows:
        return ('<section id="events"><h2>Faults, churn and partitions</h2>'
                "<p>None: no faults, churn, late joins or partitions in this run.</p></section>")
    listing = "".join(f"<li>{_e(p)}</li>" for p in parts)
    table = _table(["round", "node", "what", "as logged"], rows) if rows else ""
    return (f'<section id="events"><h2>Faults, churn and partitions</h2><ul>{listing}</ul>'
            f"{table}</section>")


def _link_changes(run: RunData) -> str:
    rows = sorted([(link.round, n.index, link.peer, "dropped", link.note)
                   for n in run.nodes for link in n.dropped]
                  + [(link.round, n.index, link.peer, "replacement", link.note)
                     for n in run.nodes for link in n.replacements])
    if not rows:
        return ""
    return "<h3>Link changes</h3>" + _table(["round", "node", "peer", "what", "why"], rows)


def _adversaries_section(run: RunData) -> str:
    if not run.adversaries:
        return ""
    rows = []
    for adversary in run.adversaries:
        details = adversary.get("details")
        text = ", ".join(f"{k} {v}" for k, v in details.items()) \
            if isinstance(details, Mapping) else ""
        rows.append((adversary.get("node", "?"), adversary.get("kind", "?"),
                     _fmt(adversary.get("attempts")), _fmt(adversary.get("succeeded")),
                     _fmt(adversary.get("max_cosine")), text))
    s = run.summary
    honest = ""
    if "min_honest_accuracy" in s:
        honest = (f"<p>Honest nodes: minimum final accuracy {_fmt(s.get('min_honest_accuracy'))}, "
                  f"consensus distance {_fmt(s.get('honest_consensus_distance'))}.</p>")
    table = _table(["node", "kind", "attempts", "succeeded", "max cosine", "details"], rows)
    return (f'<section id="adversaries"><h2>Adversaries and what they achieved</h2>{table}'
            f"{honest}<p>max cosine: the best cosine similarity between a reconstruction and "
            f"an honest node's true update (0: nothing learnt, 1: recovered).</p></section>")


def _sites_section(run: RunData) -> str:
    """A [[sites]] run: how each link was made, each end's time to first contact, the relays."""
    links = [link for link in run.sites.get("links", ()) if isinstance(link, Mapping)]
    if not links:
        return ""
    rows = []
    for link in links:
        a, b = (link.get("nodes") or ["?", "?"])[:2]
        contact = link.get("first_contact_seconds") or {}
        rows.append((f"{a} – {b}", "same site" if link.get("same_site") else "across sites",
                     "yes" if link.get("neighbours") else "no", link.get("how") or "none",
                     _fmt(link.get("direct")), _fmt(link.get("relayed")),
                     _fmt(contact.get(str(a))), _fmt(contact.get(str(b)))))
    table = _table(["link", "where", "neighbours", "made", "direct streams", "relayed streams",
                    "first contact at first end, s", "at second end, s"], rows)
    relays = _table(["relay", "address", "reservations", "relayed bytes"], [
        (r.get("index", "?"), str(r.get("addr", "")).split("/p2p/")[0],
         _fmt(r.get("reservations_held")), _bytes(r.get("relayed_bytes")))
        for r in run.sites.get("relays", ()) if isinstance(r, Mapping)])
    return ('<section id="sites"><h2>Links across sites</h2>' + table + relays
            + "<p>First contact: seconds from a node's start to its first stream with the "
              "other end, at each end.</p></section>")


def build_html(run: RunData) -> str:
    """The whole page as a string."""
    sections = [summary_section(run), _privacy_section(run)]
    figures = [
        ("accuracy", "Accuracy", plots.accuracy_plot,
         "Test accuracy of each node after each round, on the shared test set; the dashed line "
         "is the centralised baseline; dotted lines mark faults, shading partitions."),
        ("consensus", "Consensus", plots.consensus_plot,
         "Mean over nodes of ‖xᵢ − x̄‖ / ‖x̄‖ from the nodes' per-round models (log scale)."),
        ("bytes", "Traffic", plots.bytes_plot,
         "Application frame bytes each node sent per round, and all nodes together (Noise "
         "and yamux overhead not included)."),
        ("round-time", "Round time", plots.round_time_plot,
         "Seconds of a round, mean over the nodes that ran it: local training, evaluation, "
         "sending, waiting for neighbours, and the rest (mixing, checks)."),
        ("rss", "Memory", plots.rss_plot, "Peak resident set size per node."),
    ]
    for ident, title, draw, caption in figures:
        sections.append(f'<section id="{ident}"><h2>{_e(title)}</h2>'
                        f"{_figure(ident, draw(run), caption)}</section>")
    sections.append(_epsilon_section(run))
    sections.append(
        '<section id="topology"><h2>Topology</h2>' + _figure(
            "topology", plots.topology_plot(run),
            "Each node's neighbours at the end of the run; dashed red: links dropped and not "
            "made again; dotted orange: dropped, then linked again; green: links made to "
            "replace a departed neighbour.") + _link_changes(run) + "</section>")
    sections.append(
        '<section id="timeline"><h2>Timeline</h2>' + _figure(
            "timeline", plots.timeline_plot(run),
            "The rounds each node wrote, and what happened to it on the way.") + "</section>")
    sections.append(_events_section(run))
    sections.append(_adversaries_section(run))
    sections.append(_sites_section(run))
    if run.warnings:
        items = "".join(f"<li>{_e(w)}</li>" for w in run.warnings)
        sections.append(f'<section id="warnings"><h2>Missing data</h2><ul class="note">'
                        f"{items}</ul></section>")
    nav = "".join(f'<a href="#{i}">{t}</a>' for i, t in (
        ("summary", "summary"), ("privacy", "privacy"), ("accuracy", "accuracy"),
        ("consensus", "consensus"), ("bytes", "traffic"), ("round-time", "round time"),
        ("topology", "topology"), ("events", "events")))
    kind = "simulation (one process, virtual time)" if run.simulated else "node processes"
    title = f"gossipfl run: {run.scenario}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><p class=\"sub\">{_e(kind)} · folder {_e(run.path)}</p>"
            f"<nav>{nav}</nav>{''.join(sections)}</main></body></html>\n")


def write_report_html(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path; :class:`ReportError`
    when the run folder cannot be read."""
    run = load_run(run_dir)
    page = build_html(run)
    target = Path(run_dir) / "report.html"
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".report-", suffix=".html")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(page)
        os.chmod(temporary, 0o644)  # as report.json: mkstemp makes it 0600
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def try_write_report_html(run_dir: str | Path) -> Path | None:
    """As :func:`write_report_html`, for the end of a run: a failure is logged, not raised
    (``report.json`` is already written and stays the record of the run; the page is a view
    of it, and ``gossipfl report DIR`` can write it again)."""
    try:
        return write_report_html(run_dir)
    except (ReportError, OSError) as error:
        log.warning("report.html not written: %s", error)
    except Exception:  # a drawing failure must not turn a finished run into a traceback
        log.exception("report.html not written")
    return None
