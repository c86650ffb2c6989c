"""report.html: the page built from real (simulated) run folders and from synthetic ones; its
figures, its sections present or omitted, its size, no external references, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.cli import main
from gossipfl.node.learner import LearnerPool
from gossipfl.report import ReportError, load_run, plots, write_report_html
from gossipfl.report.data import MarkerKind, event_marker, per_line_bytes
from gossipfl.report.html import build_html, privacy_sentences, try_write_report_html
from gossipfl.scenario.progress import progress_total

FIGURES = ("accuracy", "consensus", "bytes", "round-time", "rss", "topology", "timeline")
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.I)
MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory, pool: LearnerPool) -> Path:
    """Four nodes, no DP, node 1 killed after round 2 and restarted."""
    tmp = tmp_path_factory.mktemp("plain")
    text = scenario_text(name="plain", nodes=4, rounds=5, degree=2,
                         extra='[[faults]]\nkind = "restart"\nnode = 1\nat_round = 2\n'
                               "down_seconds = 1.0\n")
    simulated(tmp, text, pool)
    return tmp / "out"


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory, pool: LearnerPool) -> Path:
    """Three nodes with node-level DP."""
    tmp = tmp_path_factory.mktemp("dp")
    text = scenario_text(name="dp", nodes=3, rounds=4, degree=2,
                         extra='[privacy]\nenabled = true\nunit = "node"\nclip_norm = 1.0\n'
                               "noise_multiplier = 1.0\ndelta = 1e-5\ntarget_epsilon = 50.0\n")
    simulated(tmp, text, pool)
    return tmp / "out"


def figure_count(page: str) -> int:
    return page.count("<svg") + page.count('src="data:image/png;base64,')


def series_count(page: str, figure: str) -> int:
    return len(re.findall(rf'id="series-{figure}-[^"]*"', page))


def test_a_real_run_folder_gives_every_figure_offline_and_small(plain_run: Path) -> None:
    path = write_report_html(plain_run)
    assert path == plain_run / "report.html"
    page = path.read_text()
    assert path.stat().st_size <= MAX_BYTES
    for figure in FIGURES:
        assert f'id="fig-{figure}"' in page, figure
    assert figure_count(page) >= len(FIGURES)
    assert series_count(page, "accuracy") == 4
    assert series_count(page, "timeline") == 4
    assert series_count(page, "rss") == 4
    assert not EXTERNAL.search(page)
    assert "<script" not in page
    # no DP: no ε section, and the page says so in words
    assert 'id="fig-epsilon"' not in page and 'id="epsilon"' not in page
    assert "Differential privacy off" in page
    # the kill and restart of node 1 are marked and listed
    run = load_run(plain_run)
    kinds = {(m.node, m.kind) for m in run.markers}
    assert (1, MarkerKind.KILL) in kinds and (1, MarkerKind.RESTART) in kinds
    assert "killed after round 2" in page
    assert 'id="adversaries"' not in page


def test_a_dp_run_has_the_epsilon_figure(dp_run: Path) -> None:
    page = write_report_html(dp_run).read_text()
    assert 'id="fig-epsilon"' in page
    assert series_count(page, "epsilon") == 3
    assert "Differential privacy on" in page
    assert not EXTERNAL.search(page)
    run = load_run(dp_run)
    assert all(n.series is not None and n.series.has_epsilon for n in run.nodes)


def test_the_cli_rewrites_the_page_and_prints_its_path(plain_run: Path, capsys) -> None:
    (plain_run / "report.html").unlink(missing_ok=True)
    assert main(["report", str(plain_run)]) == 0
    assert capsys.readouterr().out.strip() == str(plain_run / "report.html")
    assert (plain_run / "report.html").exists()


def test_a_corrupt_report_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "report.json").write_text('{"nodes": [')
    with pytest.raises(ReportError, match="not valid JSON"):
        load_run(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gossipfl report: ") and "report.json" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "report.json").write_text('{"scenario": "x"}')
    with pytest.raises(ReportError, match="not a gossipfl report"):
        load_run(tmp_path)
    assert try_write_report_html(tmp_path) is None  # the end of a run: logged, not raised
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="missing"):
        load_run(tmp_path / "empty")
    with pytest.raises(ReportError, match="no such run folder"):
        load_run(tmp_path / "nowhere")


# -- synthetic run folders ------------------------------------------------------------------

def peer(index: int) -> str:
    return f"12D3KooWpeer{index:04d}"


def write_run(folder: Path, *, nodes: int = 4, rounds: int = 6, consensus: int = 3,
              extra: dict[str, Any] | None = None, node_extra: dict[int, dict[str, Any]] |
              None = None, metrics: bool = True, epsilon: bool = False) -> Path:
    """A run folder as a run leaves it (report.json and metrics.jsonl only), on a ring."""
    total = rounds + consensus
    entries = []
    for index in range(nodes):
        entry: dict[str, Any] = {
            "index": index, "peer_id": peer(index), "role": "honest", "status": "done",
            "events": [], "restarts": 0, "catch_ups": [], "replacements": [],
            "dropped_neighbours": [], "final_accuracy": 0.9, "rounds_completed": total,
            "bytes_sent": 1000 * total, "peak_rss_bytes": 200 * 2**20,
            "neighbours": [peer((index - 1) % nodes), peer((index + 1) % nodes)],
        }
        entry.update((node_extra or {}).get(index, {}))
        entries.append(entry)
        if not metrics:
            continue
        out = folder / "nodes" / f"node-{index:02d}"
        out.mkdir(parents=True, exist_ok=True)
        lines = []
        for r in range(total):
            record = {"round": r, "phase": "train" if r < rounds else "consensus",
                      "test_accuracy": 0.5 + 0.05 * r, "train_seconds": 0.2, "eval_seconds":
                      0.05, "send_seconds": 0.01, "wait_seconds": 0.1, "round_seconds": 0.5,
                      "bytes_sent": 1000 * (r + 1)}
            if epsilon:
                record["epsilon"] = 0.5 * (r + 1)
            lines.append(json.dumps(record))
        (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    report: dict[str, Any] = {
        "report_version": 1, "scenario": "synthetic", "rounds": rounds, "total_rounds": total,
        "wall_seconds": 12.5, "timed_out": False, "centralised_accuracy": 0.95,
        "consensus_distance": [0.1 / (r + 1) for r in range(total - 1)] + [0.0],
        "config": {"protocol": {"consensus_tolerance": 1e-4}, "faults": []},
        "privacy": {"admission": True, "payload_encryption": False,
                    "secure_aggregation": {"enabled": False}, "dp": {"enabled": False}},
        "summary": {"nodes": nodes, "survivors": nodes, "min_final_accuracy": 0.9,
                    "mean_final_accuracy": 0.9, "max_final_accuracy": 0.9,
                    "total_bytes_sent": 1000 * total * nodes,
                    "max_peak_rss_bytes": 200 * 2**20},
        "nodes": entries,
    }
    report.update(extra or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_partitions_adversaries_and_link_changes_are_drawn_and_listed(tmp_path: Path) -> None:
    extra = {
        "network": {"partitions": [{"groups": [[0, 1], [2, 3]], "silent": False,
                                    "cut": {"seconds": 2.0, "max_round": 2},
                                    "healed": {"seconds": 4.0, "max_round": 4}}]},
        "adversaries": [{"node": 3, "kind": "lying_aggregator", "attempts": 7,
                         "succeeded": 0, "max_cosine": 0.02, "details": {"refused": 5}}],
        "summary": {"nodes": 4, "survivors": 4, "min_honest_accuracy": 0.88},
    }
    node_extra = {
        3: {"role": "lying_aggregator"},
        0: {"dropped_neighbours": [{"peer_id": peer(2), "round": 3, "reason": "missed rounds"}],
            "replacements": [{"peer_id": peer(1), "round": 3, "replacing": [peer(2)]}]},
        2: {"events": ["SIGKILL after round 3"], "status": "killed"},
    }
    run = write_run(tmp_path, extra=extra, node_extra=node_extra)
    page = build_html(load_run(run))
    assert 'id="adversaries"' in page and "lying_aggregator" in page and "refused 5" in page
    assert "min honest accuracy" in page
    assert "partition 0" in page and "cut at round 2" in page
    assert series_count(page, "topology-dropped") == 1
    assert series_count(page, "topology-replacement") == 1
    assert series_count(page, "topology-link") == 3  # the ring less the replaced link 0-1
    assert "Link changes" in page and "missed rounds" in page and "replacing node 2" in page
    assert "SIGKILL after round 3" in page
    assert not EXTERNAL.search(page)


def test_a_sites_run_lists_each_link_its_kind_and_first_contact(tmp_path: Path) -> None:
    sites = {"links": [
        {"nodes": [0, 1], "same_site": True, "neighbours": True, "how": "direct", "direct": 9,
         "relayed": 0, "punched": False, "first_contact_seconds": {"0": 0.25, "1": 0.5}},
        {"nodes": [1, 2], "same_site": False, "neighbours": True, "how": "relayed",
         "direct": 0, "relayed": 12, "punched": False,
         "first_contact_seconds": {"1": 1.75, "2": 2.125}}],
        "relays": [{"index": 0, "addr": "/ip4/198.18.0.1/tcp/4001/p2p/R", "relayed_bytes":
                    2_500_000, "reservations_held": 2}]}
    page = build_html(load_run(write_run(tmp_path, nodes=3, extra={"sites": sites})))
    assert 'id="sites"' in page and "across sites" in page
    assert "relayed" in page and "1.75" in page and "2.125" in page and "0.25" in page
    assert "/ip4/198.18.0.1/tcp/4001" in page
    plain = build_html(load_run(write_run(tmp_path / "plain", nodes=3)))
    assert 'id="sites"' not in plain


def test_dp_without_epsilon_per_round_says_so(tmp_path: Path) -> None:
    extra = {"privacy": {"dp": {"enabled": True, "target_epsilon": 8.0, "delta": 1e-5},
                         "epsilon": {"0": 3.2, "1": 3.1}, "delta": 1e-5,
                         "dp_per_node": {"0": {"noise_multiplier": 1.1,
                                               "sampling_probability": 0.1}}}}
    page = build_html(load_run(write_run(tmp_path, nodes=2, extra=extra)))
    assert 'id="epsilon"' in page and 'id="fig-epsilon"' not in page
    assert "not recorded" in page and "3.2" in page
    assert "σ = 1.1" in page


def test_missing_metrics_are_named_not_fatal(tmp_path: Path) -> None:
    run = write_run(tmp_path, nodes=3)
    (run / "nodes" / "node-01" / "metrics.jsonl").unlink()
    with (run / "nodes" / "node-02" / "metrics.jsonl").open("a") as handle:
        handle.write("{not json\n")
    data = load_run(run)
    assert data.nodes[1].series is None and data.nodes[2].series is not None
    assert len(data.warnings) == 2
    page = build_html(data)
    assert 'id="warnings"' in page and "unreadable line" in page
    assert series_count(page, "accuracy") == 2


def test_large_figures_become_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "SVG_LIMIT", 100)
    markup = plots.accuracy_plot(load_run(write_run(tmp_path)))
    assert markup.startswith('<img alt="accuracy per node per round" '
                             'src="data:image/png;base64,')


# -- the figures and the data, one by one ---------------------------------------------------

def test_each_plot_is_svg_with_one_series_per_node(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, nodes=5, epsilon=True))
    for draw, name, count in ((plots.accuracy_plot, "accuracy", 5),
                              (plots.bytes_plot, "bytes", 6),
                              (plots.epsilon_plot, "epsilon", 5),
                              (plots.consensus_plot, "consensus", 1),
                              (plots.round_time_plot, "round-time", 5),
                              (plots.topology_plot, "topology-link", 5)):
        markup = draw(run)
        assert markup.startswith("<svg") and markup.rstrip().endswith("</svg>"), name
        assert "<metadata>" not in markup
        assert series_count(markup, name) == count, name


def test_the_fixed_layout_keeps_every_figure_inside_its_canvas(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Titles, labels, tick labels and legends inside the figure (as the SVG draws it, at 72
    dpi), each legend clear of the axes: here a two-column one of 24 entries (16 nodes, a
    partition, every kind of event) and a long role in a label."""
    events = {2: "SIGKILL after round 3", 4: "SIGTERM after round 5",
              5: "paused after round 2", 6: "restarted (after round 4)",
              7: "joined late (federation at round 1)"}
    node_extra: dict[int, dict[str, Any]] = {i: {"events": [e]} for i, e in events.items()}
    node_extra[3] = {"role": "lying_aggregator"}
    extra = {"network": {"partitions": [{"groups": [[0, 1], [2, 3]], "silent": False,
                                         "cut": {"seconds": 2.0, "max_round": 2},
                                         "healed": {"seconds": 4.0, "max_round": 4}}]}}
    run = load_run(write_run(tmp_path, nodes=16, extra=extra, node_extra=node_extra,
                             epsilon=True))
    figures: list[Any] = []
    render = plots.render
    monkeypatch.setattr(plots, "render",
                        lambda figure, name: figures.append(figure) or render(figure, name))
    for draw in (plots.accuracy_plot, plots.consensus_plot, plots.bytes_plot,
                 plots.round_time_plot, plots.rss_plot, plots.epsilon_plot,
                 plots.topology_plot, plots.timeline_plot):
        draw(run)
    assert max(len(f.legends[0].get_texts()) for f in figures if f.legends) == 24
    for figure in figures:
        figure.set_dpi(72)
        renderer = figure.canvas.get_renderer()
        figure.draw(renderer)
        width, height = figure.get_size_inches()
        box = figure.get_tightbbox(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, box
        for legend in figure.legends:
            where = legend.get_window_extent(renderer)
            assert not any(where.overlaps(a.get_tightbbox(renderer)) for a in figure.axes)


def test_log_axis_labels_are_plain_text_as_matplotlib_places_them(tmp_path: Path) -> None:
    """The consensus figure labels its log axis like matplotlib (decades, and the 2, 3, 4, 6
    multiples when the data span less than one), as plain text rather than mathtext."""
    run = load_run(write_run(tmp_path, nodes=2))  # 0.1 down to 0.0125, tolerance 1e-4
    markup = plots.consensus_plot(run)
    assert "10⁻¹" in markup and "10⁻⁴" in markup and "mathdefault" not in markup
    narrow = dataclasses.replace(run, consensus_distance=[2e-3, 4e-3, 6e-3], config={})
    markup = plots.consensus_plot(narrow)
    assert all(f"{k}×10⁻³" in markup for k in (2, 3, 4, 6)) and "mathdefault" not in markup
    assert plots.plain_label("x") == "x"


def test_round_time_parts_add_up_to_the_round(tmp_path: Path) -> None:
    rounds, parts = plots.round_time_parts(load_run(write_run(tmp_path, nodes=2)))
    assert list(rounds) == list(range(9))
    assert list(parts) == ["train", "evaluate", "send", "wait", "rest"]
    assert parts["rest"][0] == pytest.approx(0.5 - 0.2 - 0.05 - 0.01 - 0.1)
    assert sum(p[3] for p in parts.values()) == pytest.approx(0.5)


def test_a_restarted_node_timeline_shows_its_gaps() -> None:
    xs, ys = plots.run_segments([0, 1, 2, 5, 6, 2, 3])
    assert [x for x in xs if not math.isnan(x)] == [0, 2, 5, 6, 2, 3]
    assert sum(math.isnan(y) for y in ys) == 2
    assert plots.run_segments([]) == ([], [])


def test_bytes_per_line_restart_from_zero_after_a_restart() -> None:
    assert per_line_bytes([100.0, 250.0, 40.0, 90.0]) == (100.0, 150.0, 40.0, 50.0)
    out = per_line_bytes([10.0, math.nan, 30.0])
    assert out[0] == 10.0 and math.isnan(out[1]) and out[2] == 20.0


def test_events_become_markers() -> None:
    assert event_marker(2, "SIGKILL after round 7").kind is MarkerKind.KILL  # type: ignore
    assert event_marker(2, "killed after round 7").round == 7  # type: ignore
    assert event_marker(1, "paused after round 3").kind is MarkerKind.PAUSE  # type: ignore
    assert event_marker(1, "restarted (after round 3)").kind is MarkerKind.RESTART  # type: ignore
    joined = event_marker(4, "joined late (federation at round 6)")
    assert joined is not None and joined.kind is MarkerKind.JOIN and joined.round == 6
    assert event_marker(1, "SIGCONT (stopped after round 3)") is None
    assert event_marker(1, "resumed (paused after round 3)") is None


def test_privacy_in_words(tmp_path: Path) -> None:
    run = load_run(write_run(tmp_path, nodes=2))
    words = " ".join(privacy_sentences(run))
    assert "Admission on" in words and "not sealed" in words
    assert "Secure aggregation off" in words and "Differential privacy off" in words


def test_progress_counts_the_training_rounds_and_ends_full() -> None:
    assert progress_total(30, 0, False) == 30
    assert progress_total(30, 12, False) == 30
    assert progress_total(30, 34, False) == 35  # consensus rounds: one more than done
    assert progress_total(30, 38, True) == 38  # finished early: the bar is full
    assert progress_total(30, 0, True) == 1


def test_the_progress_display_ends_full_when_consensus_comes_early() -> None:
    from types import SimpleNamespace

    from gossipfl.scenario.progress import Progress

    nodes = [SimpleNamespace(index=i, peer_id="12D3KooWabcdef", last_accuracy=0.9,
                             phase="consensus", exit_code=None, killed_at=None, restart_at=None,
                             last_round=37) for i in range(2)]
    with Progress(nodes, 30, quiet=False) as progress:  # type: ignore[arg-type]
        progress.update()
        tasks = progress._progress.tasks
        assert [(t.completed, t.total) for t in tasks] == [(38, 39), (38, 39)]
        nodes[0].exit_code = 0  # node 0 finished after 38 rounds (30 + 8 of up to 60)
        progress.update()
        assert [(t.completed, t.total) for t in tasks] == [(38, 38), (38, 39)]
    assert all(t.completed == t.total for t in tasks)  # the run is over: every bar full
