"""The against-a-commit benchmark's arithmetic and its refusal of a folder that is no checkout
(its figures come from real runs and are not asserted here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_versus import ratios

ROOT = Path(__file__).resolve().parent.parent


def test_the_figure_is_the_ratio_of_medians_beside_every_pair() -> None:
    ratio, pairs = ratios([6.0, 5.0, 7.0, 30.0], [10.0, 10.0, 7.0, 12.0])
    assert ratio == pytest.approx(6.5 / 10.0)
    assert pairs == pytest.approx([0.6, 0.5, 1.0, 2.5])


@pytest.mark.parametrize(("ours", "base"), [([], []), ([1.0, 2.0], [1.0])])
def test_unmatched_runs_are_refused(ours: list[float], base: list[float]) -> None:
    with pytest.raises(ValueError, match="as many runs"):
        ratios(ours, base)


def test_a_baseline_that_is_no_checkout_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_versus.py"),
                             str(ROOT / "scenarios" / "quickstart.toml"), "--baseline",
                             str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "not a checkout of the project" in result.stderr
