"""The paired benchmarks' arithmetic and run order (benchmarks/pairs.py), and how the
secure-aggregation cost benchmark reads a run (its figures come from real
runs and are not asserted here; see the README's Known limits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_secagg_cost import read_run
from benchmarks.pairs import median_ratio, order, summary


def test_the_figure_is_the_ratio_of_medians_and_the_worst_pair_is_printed() -> None:
    secure, plain = [9.0, 9.0, 7.0, 8.0], [8.0, 6.0, 7.0, 20.0]
    ratio, pairs = median_ratio(secure, plain)
    assert ratio == pytest.approx(8.5 / 7.5)
    assert pairs == pytest.approx([1.125, 1.5, 1.0, 0.4])
    lines = summary(secure, plain, ("secure", "plain"))
    assert lines[0].endswith("1.125, 1.500, 1.000, 0.400")
    assert "= 1.133" in lines[1] and lines[1].endswith("worst pair 1.500")


@pytest.mark.parametrize(("top", "bottom"), [([], []), ([1.0], [1.0, 2.0])])
def test_unmatched_runs_are_refused(top: list[float], bottom: list[float]) -> None:
    with pytest.raises(ValueError, match="as many runs"):
        median_ratio(top, bottom)


def test_abba_order_alternates_which_kind_goes_first() -> None:
    runs = order(3, "plain", "secure")
    assert [kind for _, kind in runs] == ["plain", "secure", "secure", "plain", "plain", "secure"]
    assert sorted(runs) == sorted({(i, k) for i in range(3) for k in ("plain", "secure")})


def test_a_run_is_read_from_its_report_and_its_nodes_metrics(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"wall_seconds": 7.5, "total_rounds": 37}))
    for index, (train, rnd) in enumerate([(1.0, 2.0), (3.0, 4.0)]):
        folder = tmp_path / "nodes" / f"node-{index}"
        folder.mkdir(parents=True)
        rows = [{"train_seconds": train / 2, "round_seconds": rnd / 2}, {"train_seconds": None,
                "round_seconds": rnd / 2}, {"train_seconds": train / 2}]
        (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    run = read_run(tmp_path)
    assert (run.wall, run.total_rounds) == (7.5, 37)
    assert run.train == pytest.approx(2.0) and run.rounds == pytest.approx(3.0)
