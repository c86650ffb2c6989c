"""Cheap bounds on what a node mixes in (issue 9): pure functions, arrays in, numbers out.

The norm bound keeps a scaled or exploded estimate out whatever rule mixes it: a neighbour's
estimate whose L2 norm exceeds ``ratio`` times the node's own model's norm (at least 1) is
refused. Honest estimates of one federation share an initial model and move together, so their
norms stay within a small factor of each other. A secure sum's neighbourhood mean is held to
the bound for its size (:func:`sum_bound`): no farther from the node's own model than one
member at the plain bound could move it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MIN_SUM_RATIO", "mean_within", "norm_bound", "sum_bound", "within_bound"]


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


#: The least the bound on a secure sum's mean may be, in units of ``max(‖own‖, 1)``: honest
#: neighbours whose models are within 3× this node's norm always pass, however many they are.
MIN_SUM_RATIO = 4.0


def sum_bound(own: np.ndarray, ratio: float, count: int) -> float:
    """How far from ``own`` the (weighted) mean of ``count`` masked inputs may lie:
    ``max((ratio + 1) / count, MIN_SUM_RATIO) · max(‖own‖, 1)``; infinite when ``ratio`` is 0.

    The bound for the sum's size. Under secure aggregation only the mean of a neighbourhood's
    inputs is seen, and one member's input moves it by its share of the weight (``1/count`` in
    a regular graph) times its distance from the rest. A member at the plain bound
    (``‖x̂‖ = ratio · max(‖own‖, 1)``, :func:`norm_bound`) among others equal to ``own`` moves
    the mean by at most ``(ratio + 1) / count`` times that unit: so a member past the plain
    bound is caught as it would be in plain mode, where a bound on the mean's own norm
    (``ratio`` units) would let one member of ``count`` go ``count`` times as far.

    >>> sum_bound(np.array([3.0, 4.0], np.float32), 99.0, 4)  # 25 units of 5
    125.0
    >>> sum_bound(np.zeros(2, np.float32), 99.0, 50)  # never below MIN_SUM_RATIO units
    4.0
    >>> sum_bound(np.ones(2, np.float32), 0.0, 4)
    inf
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if ratio < 0:
        raise ValueError(f"ratio must be >= 0, got {ratio}")
    if ratio == 0:
        return math.inf
    return max((ratio + 1.0) / count, MIN_SUM_RATIO) * norm_bound(own, 1.0)


def mean_within(mean: np.ndarray, own: np.ndarray, bound: float) -> bool:
    """Whether ``mean`` is finite and within ``bound`` of ``own`` in L2 (in float64).

    >>> mean_within(np.array([4.0, 4.0], np.float32), np.array([1.0, 0.0], np.float32), 5.0)
    True
    >>> mean_within(np.array([6e37], np.float32), np.array([0.0], np.float32), math.inf)
    True
    >>> mean_within(np.array([np.inf], np.float32), np.array([0.0], np.float32), math.inf)
    False
    """
    values = np.asarray(mean, np.float64)
    if not np.isfinite(values).all():
        return False
    return float(np.linalg.norm(values - np.asarray(own, np.float64))) <= bound
