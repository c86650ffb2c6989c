"""Alternated runs of two sides and the ratio of their medians: the shared arithmetic of
``bench_secagg_cost.py`` and ``bench_versus.py``.

On this 2-core machine the speed moves from minute to minute, so two sides are run in ABBA
order (a drift falls on both alike) and compared by their medians, with every pair's ratio
printed beside it."""

from __future__ import annotations

import statistics


def order(pairs: int, first: str, second: str) -> list[tuple[int, str]]:
    """The runs in ABBA order: pair i runs ``first`` first when i is even.

    >>> order(2, "plain", "secure")
    [(0, 'plain'), (0, 'secure'), (1, 'secure'), (1, 'plain')]
    """
    runs = []
    for i in range(pairs):
        sides = (first, second) if i % 2 == 0 else (second, first)
        runs.extend((i, side) for side in sides)
    return runs


def median_ratio(top: list[float], bottom: list[float]) -> tuple[float, list[float]]:
    """(median of ``top`` / median of ``bottom``, each pair's ``top / bottom``).

    >>> median_ratio([4.0, 5.0, 9.0], [8.0, 10.0, 6.0])
    (0.625, [0.5, 0.5, 1.5])
    """
    if not top or len(top) != len(bottom):
        raise ValueError(f"need as many runs on each side, at least one: {len(top)} and "
                         f"{len(bottom)}")
    return (statistics.median(top) / statistics.median(bottom),
            [t / b for t, b in zip(top, bottom, strict=True)])


def summary(top: list[float], bottom: list[float], names: tuple[str, str]) -> list[str]:
    """The closing lines: every pair's ratio, the medians and their ratio, the worst pair."""
    ratio, pairs = median_ratio(top, bottom)
    return [f"pair ratios ({names[0]} / {names[1]} wall): "
            + ", ".join(f"{r:.3f}" for r in pairs),
            f"median wall {names[0]} {statistics.median(top):.2f} s / {names[1]} "
            f"{statistics.median(bottom):.2f} s = {ratio:.3f}; worst pair {max(pairs):.3f}"]
