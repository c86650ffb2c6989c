"""The report's figures: one function per figure, each returning inline markup.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no pyplot,
no global backend), written as SVG with text kept as text; a figure whose SVG would be larger
than :data:`SVG_LIMIT` bytes is embedded as a base64 PNG instead. Each drawn series carries an
id (``series-<figure>-<n>``) so that tests and readers can count them. The layout is fixed
(:func:`place`, margins in inches), not matplotlib's constrained layout, which cost more than
the drawing itself.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import re
import warnings
from collections.abc import Callable, Iterable, Sequence

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation

from gossipfl.report.data import MarkerKind, NodeData, RunData, Series

#: Above this many bytes of SVG, a figure is embedded as PNG.
SVG_LIMIT = 200_000
PNG_DPI = 90
WIDTH, HEIGHT = 9.0, 3.4
#: The fixed layout's margins in inches (see :func:`place`): above the axes for the title
#: (and a y offset such as "1e6"); below for the x tick labels and the x label; on the left
#: for the y label and y tick labels up to six digits wide ("100000", "2×10⁻³"); on the
#: right for the last x tick label, or instead a legend's measured width.
TOP, BOTTOM, LEFT, RIGHT = 0.34, 0.5, 0.8, 0.2
#: Inches at the figure's edge, between stacked axes, and between the axes and a legend.
EDGE, GAP = 0.1, 0.15
RC = {"svg.fonttype": "none", "svg.hashsalt": "gossipfl", "font.size": 8.5,
      "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}
MARKER_STYLE = {
    MarkerKind.KILL: ("#d62728", "x"),
    MarkerKind.STOP: ("#8c1c13", "s"),
    MarkerKind.PAUSE: ("#ff7f0e", "|"),
    MarkerKind.RESTART: ("#2ca02c", "^"),
    MarkerKind.JOIN: ("#1f77b4", ">"),
    MarkerKind.CATCH_UP: ("#9467bd", "D"),
}
#: Marker kinds drawn as vertical lines on the round plots (catch-ups only on the timeline).
LINE_KINDS = (MarkerKind.KILL, MarkerKind.STOP, MarkerKind.PAUSE, MarkerKind.RESTART,
              MarkerKind.JOIN)


def styled(draw: Callable[[RunData], str]) -> Callable[[RunData], str]:
    """Run a figure function under the report's style (:data:`RC`), restored after."""

    @functools.wraps(draw)
    def wrapper(run: RunData) -> str:
        with matplotlib.rc_context(RC):
            return draw(run)

    return wrapper


def _figure(height: float = HEIGHT, width: float = WIDTH) -> Figure:
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def place(figure: Figure) -> None:
    """Lay ``figure`` out with its margins in inches, the same at any figure size: the
    subplots inside :data:`TOP`, :data:`BOTTOM`, :data:`LEFT` and :data:`RIGHT` (only
    :data:`EDGE` where the axes are hidden), :data:`GAP` apart, and each legend right of
    them in room as wide as it measures at the figure's dpi (so as many columns as it has),
    centred on the axes or level with their top as its ``loc`` says."""
    width, height = figure.get_size_inches()
    shown = any(a.axison for a in figure.axes)
    bottom, left = (BOTTOM, LEFT) if shown else (EDGE, EDGE)
    right = max([RIGHT, *(legend.get_window_extent().width / figure.dpi + GAP + EDGE
                          for legend in figure.legends)])
    rows = max((spec.nrows for spec in (a.get_gridspec() for a in figure.axes)
                if spec is not None), default=1)
    tall = max(height - TOP - bottom - GAP * (rows - 1), 0.1) / rows  # one row's height
    figure.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                           top=1 - TOP / height, hspace=GAP / tall)
    for legend in figure.legends:
        legend.set_bbox_to_anchor((1 - (right - GAP) / width, bottom / height, 0,
                                   1 - (TOP + bottom) / height), figure.transFigure)


def render(figure: Figure, name: str) -> str:
    """``figure`` as inline markup: an ``<svg>`` element, or an ``<img>`` with a PNG data URI
    when the SVG is over :data:`SVG_LIMIT`."""
    buffer = io.BytesIO()
    with matplotlib.rc_context(RC):
        place(figure)
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue().decode()
    if len(svg) <= SVG_LIMIT:
        svg = svg[svg.index("<svg"):]
        svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
        return svg.replace("<svg ", f'<svg role="img" aria-label="{name}" ', 1)
    buffer = io.BytesIO()
    with matplotlib.rc_context(RC):
        figure.set_dpi(PNG_DPI)
        place(figure)  # legends measured again: hinted text is wider at some dpi
        figure.savefig(buffer, format="png", dpi=PNG_DPI)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="{name}" src="data:image/png;base64,{data}">'


def node_colours(count: int) -> list[tuple[float, float, float, float]]:
    cmap = matplotlib.colormaps["tab10" if count <= 10 else "tab20" if count <= 20 else "viridis"]
    if count > 20:
        return [cmap(i / max(1, count - 1)) for i in range(count)]
    return [cmap(i) for i in range(count)]


def _series(nodes: Sequence[NodeData]) -> list[tuple[NodeData, Series]]:
    return [(n, n.series) for n in nodes if n.series is not None]


def _shade_partitions(axes: Axes, run: RunData) -> None:
    """Each partition's rounds shaded (to the last round if it never healed)."""
    top = max(run.total_rounds, 1)
    for number, part in enumerate(run.partitions):
        if part.cut_round is None:
            continue
        end = part.heal_round if part.heal_round is not None else top
        axes.axvspan(part.cut_round, end, color="#999999", alpha=0.18, lw=0,
                     label="partitioned" if number == 0 else None)


def _mark_rounds(axes: Axes, run: RunData) -> None:
    """Partitions shaded and node events as vertical lines, one legend entry per kind."""
    _shade_partitions(axes, run)
    seen: set[MarkerKind] = set()
    for marker in run.markers:
        if marker.kind not in LINE_KINDS:
            continue
        colour, _ = MARKER_STYLE[marker.kind]
        axes.axvline(marker.round, color=colour, lw=0.8, ls=":",
                     label=None if marker.kind in seen else marker.kind.value)
        seen.add(marker.kind)


def _legend(figure: Figure, *axes: Axes, limit: int = 24) -> None:
    """One legend for the figure, outside the axes on the right (none for more than
    ``limit`` entries: too many nodes to tell apart)."""
    handles: list[object] = []
    labels: list[str] = []
    for each in axes:
        more, names = each.get_legend_handles_labels()
        handles += more
        labels += names
    if handles and len(handles) <= limit:
        figure.legend(handles, labels, fontsize=7, ncols=max(1, math.ceil(len(handles) / 14)),
                      loc="center left", borderaxespad=0, frameon=False)


@styled
def accuracy_plot(run: RunData) -> str:
    """Test accuracy per node per round, the centralised baseline, events marked."""
    figure = _figure()
    axes = figure.add_subplot()
    pairs = _series(run.nodes)
    colours = node_colours(len(run.nodes))
    for position, (node, series) in enumerate(pairs):
        # rounds a node did not evaluate ([train] eval_every) are NaN: joined over, not gaps
        rounds = [r for r, a in zip(series.rounds, series.accuracy, strict=True)
                  if math.isfinite(a)]
        accuracy = [a for a in series.accuracy if math.isfinite(a)]
        line, = axes.plot(rounds, accuracy, lw=1.0,
                          color=colours[position % len(colours)],
                          label=f"node {node.index}" + ("" if node.role == "honest"
                                                        else f" ({node.role})"))
        line.set_gid(f"series-accuracy-{node.index}")
    if run.centralised_accuracy is not None:
        axes.axhline(run.centralised_accuracy, color="black", ls="--", lw=1,
                     label="centralised")
    if run.rounds:
        axes.axvline(run.rounds - 0.5, color="#555555", lw=0.8, ls="-.",
                     label="training ends")
    _mark_rounds(axes, run)
    axes.set(title="Test accuracy per node", xlabel="round", ylabel="accuracy")
    _legend(figure, axes)
    return render(figure, "accuracy per node per round")


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
_MATHTEXT = re.compile(r"^\$\\mathdefault\{(-?)(?:([\d.]+)\\times)?"
                       r"(?:(\d+)\^\{(-?\d+)\}|([\d.]+))\}\$$")


class PlainLogFormatter(LogFormatterSciNotation):
    """matplotlib's log-axis labels (which ticks get one, and what it says) as plain text,
    ``2×10⁻³`` rather than mathtext: parsing each mathtext label cost about 10 ms, most of
    the consensus figure's drawing."""

    def __call__(self, x: float, pos: int | None = None) -> str:
        return plain_label(super().__call__(x, pos))


def plain_label(label: str) -> str:
    r"""A label of :class:`~matplotlib.ticker.LogFormatterSciNotation` without mathtext
    (``$\mathdefault{2\times10^{-3}}$`` → ``2×10⁻³``); any other label unchanged.

    >>> plain_label(r"$\mathdefault{10^{-3}}$"), plain_label(r"$\mathdefault{2\times10^{4}}$")
    ('10⁻³', '2×10⁴')
    >>> plain_label(r"$\mathdefault{0.5}$"), plain_label("")
    ('0.5', '')
    """
    match = _MATHTEXT.match(label)
    if match is None:
        return label
    sign, coefficient, base, exponent, number = match.groups()
    if number is not None:
        return sign + number
    return sign + (f"{coefficient}×" if coefficient else "") + base + exponent.translate(
        _SUPERSCRIPT)


@styled
def consensus_plot(run: RunData) -> str:
    """Mean relative distance of the nodes' models to their average, per round (log)."""
    figure = _figure()
    axes = figure.add_subplot()
    values = np.array(run.consensus_distance, dtype=float)
    positive = np.where(values > 0, values, np.nan)
    line, = axes.plot(np.arange(len(values)), positive, lw=1.4, color="#1f77b4",
                      label="consensus distance")
    line.set_gid("series-consensus-0")
    tolerance = run.config.get("protocol", {}).get("consensus_tolerance") \
        if isinstance(run.config.get("protocol"), dict) else None
    if isinstance(tolerance, int | float) and tolerance > 0:
        axes.axhline(tolerance, color="black", ls="--", lw=1, label="consensus tolerance")
    if np.isfinite(positive).any():
        axes.set_yscale("log")
        axes.yaxis.set_major_formatter(PlainLogFormatter())
        axes.yaxis.set_minor_formatter(PlainLogFormatter(labelOnlyBase=False))  # as matplotlib
    if run.rounds:
        axes.axvline(run.rounds - 0.5, color="#555555", lw=0.8, ls="-.",
                     label="training ends")
    _mark_rounds(axes, run)
    axes.set(title="Consensus distance: mean ‖xᵢ − x̄‖ / ‖x̄‖", xlabel="round",
             ylabel="relative distance")
    _legend(figure, axes)
    return render(figure, "consensus distance per round")


def _by_round(pairs: Iterable[tuple[NodeData, Series]],
              pick: str) -> tuple[np.ndarray, np.ndarray]:
    """Rounds and a node × round matrix of ``pick`` (the last line of each round; NaN where a
    node wrote none)."""
    pairs = list(pairs)
    top = max((max(s.rounds) for _, s in pairs if s.rounds), default=-1) + 1
    matrix = np.full((len(pairs), max(top, 0)), np.nan)
    for row, (_, series) in enumerate(pairs):
        for number, value in zip(series.rounds, getattr(series, pick), strict=True):
            if number >= 0:
                matrix[row, number] = value
    return np.arange(matrix.shape[1]), matrix


@styled
def bytes_plot(run: RunData) -> str:
    """Kilobytes each node sent per round (top) and the federation's total (bottom)."""
    figure = _figure(height=4.6)
    axes, below = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    pairs = _series(run.nodes)
    colours = node_colours(len(run.nodes))
    for position, (node, series) in enumerate(pairs):
        line, = axes.plot(series.rounds, np.array(series.bytes_sent) / 1e3, lw=0.8,
                          alpha=0.85, color=colours[position % len(colours)],
                          label=f"node {node.index}")
        line.set_gid(f"series-bytes-{node.index}")
    rounds, matrix = _by_round(pairs, "bytes_sent")
    if matrix.size:
        line, = below.plot(rounds, np.nansum(matrix, axis=0) / 1e6, color="black", lw=1.4,
                           label="all nodes")
        line.set_gid("series-bytes-total")
    axes.set(title="Bytes sent per round (application frames)", ylabel="per node, kB")
    below.set(xlabel="round", ylabel="all nodes, MB")
    _legend(figure, axes, below)
    return render(figure, "bytes sent per round")


#: The parts of a round, in stacking order: (field, label, colour).
ROUND_PARTS = (("train_seconds", "train", "#1f77b4"), ("eval_seconds", "evaluate", "#9467bd"),
               ("send_seconds", "send", "#2ca02c"), ("wait_seconds", "wait", "#ff7f0e"))


def round_time_parts(run: RunData) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per round, the mean over the nodes that ran it of each part of :data:`ROUND_PARTS`
    and ``rest`` (the round's seconds less those parts: mixing, checks; never negative)."""
    pairs = _series(run.nodes)
    rounds, total = _by_round(pairs, "round_seconds")
    parts: dict[str, np.ndarray] = {}
    used = np.zeros_like(total)
    for field, label, _ in ROUND_PARTS:
        _, matrix = _by_round(pairs, field)
        matrix = np.where(np.isnan(total), np.nan, np.nan_to_num(matrix))
        used = used + np.nan_to_num(matrix)
        parts[label] = matrix
    parts["rest"] = np.where(np.isnan(total), np.nan, np.clip(total - used, 0.0, None))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        # a round no node timed (all NaN) has no mean: NaN, drawn as 0 below
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {label: (np.nanmean(m, axis=0) if m.size else m.reshape(-1))
                 for label, m in parts.items()}
    return rounds, {k: np.nan_to_num(v) for k, v in means.items()}


@styled
def round_time_plot(run: RunData) -> str:
    """A round's seconds split into train / evaluate / send / wait / rest (mean over nodes)."""
    figure = _figure()
    axes = figure.add_subplot()
    rounds, means = round_time_parts(run)
    colours = [c for _, _, c in ROUND_PARTS] + ["#bbbbbb"]
    if rounds.size:
        stacks = axes.stackplot(rounds, *means.values(), labels=list(means),
                                colors=colours, step="mid", lw=0)
        for number, stack in enumerate(stacks):
            stack.set_gid(f"series-round-time-{number}")
    _mark_rounds(axes, run)
    axes.set(title="Round time split (mean over nodes)", xlabel="round", ylabel="seconds")
    _legend(figure, axes)
    return render(figure, "round time split")


@styled
def rss_plot(run: RunData) -> str:
    """Peak resident memory per node (MB), adversaries in red."""
    figure = _figure(height=2.8)
    axes = figure.add_subplot()
    nodes = [n for n in run.nodes if n.peak_rss_bytes is not None]
    values = [n.peak_rss_bytes / 2**20 for n in nodes if n.peak_rss_bytes is not None]
    colours = ["#1f77b4" if n.role == "honest" else "#d62728" for n in nodes]
    bars = axes.bar([str(n.index) for n in nodes], values, color=colours)
    for node, bar in zip(nodes, bars, strict=True):
        bar.set_gid(f"series-rss-{node.index}")
    label = "the one process's peak (simulation)" if run.simulated else "each node's process"
    axes.set(title=f"Peak RSS per node: {label}", xlabel="node", ylabel="MiB")
    return render(figure, "peak RSS per node")


@styled
def epsilon_plot(run: RunData) -> str:
    """ε spent per round per node, with the target."""
    figure = _figure()
    axes = figure.add_subplot()
    pairs = [(n, s) for n, s in _series(run.nodes) if s.has_epsilon]
    colours = node_colours(len(run.nodes))
    for position, (node, series) in enumerate(pairs):
        line, = axes.plot(series.rounds, series.epsilon, lw=1.0,
                          color=colours[position % len(colours)], label=f"node {node.index}")
        line.set_gid(f"series-epsilon-{node.index}")
    dp = run.privacy.get("dp")
    target = dp.get("target_epsilon") if isinstance(dp, dict) else None
    if isinstance(target, int | float):
        axes.axhline(target, color="black", ls="--", lw=1, label="target ε")
    axes.set(title="Privacy spent: ε per round", xlabel="round", ylabel="ε")
    _legend(figure, axes)
    return render(figure, "epsilon per round")


@styled
def topology_plot(run: RunData) -> str:
    """The nodes on a circle; final links solid, dropped links dashed red, replacement links
    green; nodes coloured by status, adversaries ringed red."""
    count = len(run.nodes)
    figure = _figure(height=5.2, width=6.2)
    axes = figure.add_subplot()
    angles = {n.index: math.pi / 2 - 2 * math.pi * k / max(count, 1)
              for k, n in enumerate(run.nodes)}
    where = {i: (math.cos(a), math.sin(a)) for i, a in angles.items()}

    def segment(a: int, b: int, gid: str, **style: object) -> None:
        if a in where and b in where and a != b:
            line, = axes.plot(*zip(where[a], where[b], strict=True), **style)
            line.set_gid(gid)

    replaced = {frozenset((n.index, link.peer)) for n in run.nodes for link in n.replacements}
    current = {frozenset((n.index, peer)) for n in run.nodes for peer in n.neighbours
               if n.status != "killed"}  # a killed node's list is as it died
    dropped = {frozenset((n.index, link.peer)) for n in run.nodes for link in n.dropped}
    for number, pair in enumerate(sorted(current - replaced, key=sorted)):
        segment(*sorted(pair), f"series-topology-link-{number}", color="#555555", lw=1.0)
    for number, pair in enumerate(sorted(replaced, key=sorted)):
        segment(*sorted(pair), f"series-topology-replacement-{number}", color="#2ca02c",
                lw=2.0)
    for number, pair in enumerate(sorted(dropped - current, key=sorted)):
        segment(*sorted(pair), f"series-topology-dropped-{number}", color="#d62728", lw=1.2,
                ls="--")
    for number, pair in enumerate(sorted(dropped & current, key=sorted)):
        segment(*sorted(pair), f"series-topology-relinked-{number}", color="#ff7f0e", lw=1.6,
                ls=":")
    status_colour = {"done": "#1f77b4", "killed": "#d62728", "stopped": "#ff7f0e"}
    for node in run.nodes:
        x, y = where[node.index]
        axes.scatter([x], [y], s=260, zorder=3, color=status_colour.get(node.status, "#7f7f7f"),
                     edgecolors="#d62728" if node.role != "honest" else "white",
                     linewidths=2.5 if node.role != "honest" else 1.0)
        axes.annotate(str(node.index), (x, y), ha="center", va="center", color="white",
                      fontsize=8, zorder=4, fontweight="bold")
    for label, style in (("link at the end", {"color": "#555555"}),
                         ("replacement link", {"color": "#2ca02c", "lw": 2.0}),
                         ("dropped link", {"color": "#d62728", "ls": "--"}),
                         ("dropped, linked again", {"color": "#ff7f0e", "ls": ":"})):
        axes.plot([], [], label=label, **style)
    for status, colour in status_colour.items():
        axes.scatter([], [], color=colour, label=f"node {status}", s=60)
    axes.set_aspect("equal")
    axes.axis("off")
    axes.set_title(f"Topology: {count} nodes")
    figure.legend(fontsize=7, loc="upper left", borderaxespad=0, frameon=False)
    return render(figure, "topology")


def run_segments(rounds: Sequence[int]) -> tuple[list[float], list[float]]:
    """The stretches of consecutive rounds in ``rounds`` (in the order written) as one line
    broken by NaN: ``xs`` from each stretch's first round to its last, ``ys`` 0 or NaN."""
    xs: list[float] = []
    ys: list[float] = []
    for position, number in enumerate(rounds):
        if position == 0:
            xs.append(number)
            ys.append(0.0)
        elif number != rounds[position - 1] + 1:
            xs += [rounds[position - 1], math.nan, number]
            ys += [0.0, math.nan, 0.0]
    if rounds:
        xs.append(rounds[-1])
        ys.append(0.0)
    return xs, ys


@styled
def timeline_plot(run: RunData) -> str:
    """Each node's rounds over the run (its metrics lines, in order), with its faults,
    restarts, late joins and catch-ups, and partitions shaded."""
    count = len(run.nodes)
    figure = _figure(height=max(2.4, 0.9 + 0.22 * count))
    axes = figure.add_subplot()
    for node in run.nodes:
        if node.series is None:
            continue
        xs, ys = run_segments(node.series.rounds)
        line, = axes.plot(xs, [node.index if not math.isnan(y) else y for y in ys],
                          color="#cccccc", lw=4, solid_capstyle="butt")
        line.set_gid(f"series-timeline-{node.index}")
    _shade_partitions(axes, run)
    seen: set[MarkerKind] = set()
    for marker in run.markers:
        colour, symbol = MARKER_STYLE[marker.kind]
        axes.scatter([marker.round], [marker.node], color=colour, marker=symbol, s=40, zorder=3,
                     label=None if marker.kind in seen else marker.kind.value)
        seen.add(marker.kind)
    if run.rounds:
        axes.axvline(run.rounds - 0.5, color="#555555", lw=0.8, ls="-.",
                     label="training ends")
    axes.set_yticks([n.index for n in run.nodes])
    axes.set_ylim(count - 0.5, -0.5)
    axes.set(title="Timeline: each node's rounds and events", xlabel="round", ylabel="node")
    _legend(figure, axes)
    return render(figure, "timeline of rounds and events")
