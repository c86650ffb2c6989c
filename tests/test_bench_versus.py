"""The against-a-commit benchmark refuses a folder that is no checkout (its figures come from
real runs and are not asserted here; its arithmetic, benchmarks/pairs.py, is tested in
tests/test_bench_secagg_cost.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_baseline_that_is_no_checkout_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_versus.py"),
                             str(ROOT / "scenarios" / "quickstart.toml"), "--baseline",
                             str(tmp_path)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "not a checkout of the project" in result.stderr
