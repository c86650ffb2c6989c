"""Cheap bounds on what a node mixes in (issue 9): pure functions, arrays in, numbers out.

The norm bound keeps a scaled or exploded estimate out whatever rule mixes it: a neighbour's
estimate (or a secure sum's neighbourhood mean) whose L2 norm exceeds ``ratio`` times the
node's own model's norm (at least 1) is refused. Honest estimates of one federation share an
initial model and move together, so their norms stay within a small factor of each other.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["norm_bound", "within_bound"]


def norm_bound(own: np.ndarray, ratio: float) -> float:
    """The largest L2 norm a received vector may have: ``ratio · max(‖own‖, 1)``; infinite
    when ``ratio`` is 0 (the bound is off).

    >>> norm_bound(np.array([3.0, 4.0], np.float32), 10.0)
    50.0
    >>> norm_bound(np.zeros(3, np.float32), 10.0)  # a zero model still bounds at the ratio
    10.0
    >>> norm_bound(np.ones(2, np.float32), 0.0)
    inf
    """
    if ratio == 0:
        return math.inf
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    own_norm = float(np.linalg.norm(np.asarray(own, np.float64)))
    return ratio * max(own_norm, 1.0)


def within_bound(vector: np.ndarray, bound: float) -> bool:
    """Whether ``vector`` is finite and its L2 norm is at most ``bound`` (in float64, so a
    float32 vector of 6e+37 entries does not overflow to a norm that looks finite or small).

    >>> within_bound(np.array([3.0, 4.0], np.float32), 5.0)
    True
    >>> within_bound(np.array([6e37, 6e37], np.float32), 1e6)
    False
    >>> within_bound(np.array([np.nan], np.float32), math.inf)
    False
    """
    values = np.asarray(vector, np.float64)
    if not np.isfinite(values).all():
        return False
    return float(np.linalg.norm(values)) <= bound
