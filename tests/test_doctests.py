"""Every example in gossipfl's docstrings runs and holds: the small exact cases written beside
the pure functions (mixing, compression, masking, pacing, the report's sums, ...) are tests, not
prose that can drift from the code."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import gossipfl

PACKAGE = Path(gossipfl.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


def test_the_examples_are_found() -> None:
    assert len(MODULES) >= 25  # 27 modules held examples (85 in all) when this was written
    assert "gossipfl.aggregation.mixing" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_a_modules_examples_hold(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name}: no example ran"
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} failed"
