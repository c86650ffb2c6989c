"""The secure-aggregation cost benchmark's arithmetic and run order (its figures come from real
runs and are not asserted here; see the README's Known limits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.bench_secagg_cost import cost, order, read_run


def test_the_figure_is_the_ratio_of_medians_and_the_worst_pair_is_kept() -> None:
    ratio, worst, pairs = cost([8.0, 6.0, 7.0, 20.0], [9.0, 9.0, 7.0, 8.0])
    assert ratio == pytest.approx(8.5 / 7.5)
    assert worst == pytest.approx(1.5)
    assert pairs == pytest.approx([1.125, 1.5, 1.0, 0.4])


@pytest.mark.parametrize(("plain", "secure"), [([], []), ([1.0], [1.0, 2.0])])
def test_unmatched_runs_are_refused(plain: list[float], secure: list[float]) -> None:
    with pytest.raises(ValueError, match="as many secure runs"):
        cost(plain, secure)


def test_abba_order_alternates_which_kind_goes_first() -> None:
    runs = order(3)
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
