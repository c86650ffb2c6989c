"""Byzantine-robust gossip mixing: self-centred clipping, trimmed mean, median and Krum.

Each rule combines a node's own vector ``x_i`` with the vectors its neighbours sent, like
:func:`gossipfl.aggregation.mixing.mix`, but bounds what a few arbitrary ("Byzantine") inputs
can do to the result. All functions are pure: numpy arrays in, a new float32 array out, no
state kept between calls and the inputs never mutated.

* **Self-centred clipping** (ClippedGossip; He, Karimireddy & Jaggi, 2022):
  ``x_i' = x_i + Σ_j w_ij · clip_τ(x_j − x_i)`` with ``clip_τ(z) = z · min(1, τ / ||z||)``.
  Whatever the neighbours send, ``||x_i' − x_i|| ≤ τ · Σ_j w_ij``; with ``τ = inf`` it is plain
  Metropolis–Hastings mixing. :func:`clipping_radius` picks ``τ`` adaptively (see there).
* **Coordinate-wise trimmed mean** and **coordinate-wise median** over ``{x_i} ∪ {x_j}``.
* **Krum / multi-Krum** (Blanchard et al., 2017) over ``{x_i} ∪ {x_j}``.

The coordinate-wise rules and Krum treat all ``n = 1 + len(neighbours)`` inputs alike and
ignore the mixing weights (as the decentralised variants in the ClippedGossip experiments do);
the result replaces the mixed model. :func:`robust_mix` dispatches on a :class:`RobustRule`
and reports in a :class:`RobustResult` how many inputs were clipped or left out.

Computation is in float64; vectors are returned as float32. The own vector is labelled
:data:`SELF_ID`; neighbours are processed in sorted-id order and ties are broken by that order
(own first), so results never depend on the insertion order of the mappings. Inputs must be
finite: a non-finite neighbour vector raises a ``ValueError`` naming the peer, so the caller
can drop it before mixing.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gossipfl.aggregation.filter import distance_filter
from gossipfl.aggregation.mixing import (
    WEIGHT_SUM_TOLERANCE,
    _check_same_peers,
    _check_weight,
    mix,
)

__all__ = [
    "SELF_ID",
    "RobustResult",
    "RobustRule",
    "clipped_gossip",
    "clipping_radius",
    "coordinate_median",
    "multi_krum",
    "robust_choco_step",
    "robust_mix",
    "trimmed_mean",
]

SELF_ID: str = "<self>"
"""Label of the node's own vector in Krum selections; no neighbour may use it as its id."""


class RobustRule(enum.Enum):
    """Name of a mixing rule, as a config file spells it."""

    NONE = "none"
    CLIPPING = "clipping"
    TRIMMED_MEAN = "trimmed_mean"
    MEDIAN = "median"
    KRUM = "krum"
    FILTER = "filter"  # gossipfl.aggregation.filter: far estimates left out


@dataclass(frozen=True, eq=False)
class RobustResult:
    """Outcome of one :func:`robust_mix` call.

    Attributes:
        model: The new vector, float32, of the own vector's shape.
        rule: The rule applied.
        inputs: ``n``, the number of vectors considered (own + neighbours).
        clipped: Neighbour differences shortened to ``tau`` (clipping only, else 0).
        discarded: Input values left out of the result: ``n − m`` vectors for Krum; per
            coordinate ``2b`` for the trimmed mean and ``n − 1`` (odd ``n``) or ``n − 2``
            (even ``n``) for the median; 0 for none and clipping.
        tau: The clipping radius used (clipping only, else ``None``).
        selected: Ids of the vectors Krum averaged (own is :data:`SELF_ID`), in id order.
        left_out: Ids of the neighbours the filter left out, in id order.
    """

    model: np.ndarray
    rule: RobustRule
    inputs: int
    clipped: int = 0
    discarded: int = 0
    tau: float | None = None
    selected: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()


def _check_count(value: int, name: str, minimum: int) -> int:
    """Return ``value`` as an ``int`` of at least ``minimum`` or raise naming the rule."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _stack(
    own: np.ndarray, neighbours: Mapping[str, np.ndarray]
) -> tuple[tuple[str, ...], np.ndarray, tuple[int, ...]]:
    """Ids (own first, then sorted peers), a float64 ``(n, size)`` matrix and the shape."""
    if SELF_ID in neighbours:
        raise ValueError(f"{SELF_ID!r} is reserved for the own vector; no neighbour may use it")
    x = np.asarray(own, dtype=np.float64)
    ids = [SELF_ID, *sorted(neighbours)]
    rows = [x.ravel()]
    for peer in ids[1:]:
        v = np.asarray(neighbours[peer], dtype=np.float64)
        if v.shape != x.shape:
            raise ValueError(
                f"model of {peer} has shape {v.shape}, expected {x.shape} (shapes must match)"
            )
        rows.append(v.ravel())
    matrix = np.stack(rows)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        bad = [ids[k] for k in np.flatnonzero(~finite)]
        raise ValueError(f"vectors must be finite; non-finite entries from {bad}")
    return tuple(ids), matrix, x.shape


def _neighbour_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validated weights in sorted-peer order; their sum must not exceed 1."""
    ws = {peer: _check_weight(weights[peer], f"weight of {peer}") for peer in sorted(weights)}
    total = math.fsum(ws.values())
    if total > 1.0 + WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"sum of neighbour weights must be at most 1, got {total}")
    return ws


def clipping_radius(
    own: np.ndarray,
    neighbours: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    delta: float,
) -> float:
    """Adaptive clipping radius: clip at most ``delta`` of the mixing weight, the farthest.

    Sort the neighbours by distance ``d_j = ||x_j − x_i||`` from the own vector, farthest
    first (ties by peer id), and add up their weights ``w_ij`` in that order. The radius is
    the distance of the first neighbour at which the running sum exceeds ``delta``; so the
    neighbours that :func:`clipped_gossip` then shortens are exactly the farthest ones, of
    total weight at most ``delta``. It is 0 (nobody moves the node) if all the neighbours
    together weigh at most ``delta``, and ``max_j d_j`` (no clipping) if ``delta`` is smaller
    than the farthest neighbour's weight.

    Guarantee: if the Byzantine neighbours weigh at most ``delta`` in total, the neighbours up
    to and including the one that sets the radius weigh more than ``delta``, so one of them is
    honest and ``τ ≤ max over honest j of d_j``; the change of ``x_i`` is then at most
    ``Σ_j w_ij · max_honest d_j``, however far the Byzantine vectors are.

    Relation to the paper: ClippedGossip's analysis takes
    ``τ_i = sqrt((1/δ_i) Σ_{honest j} w_ij E||x_j − x_i||²)``, which needs to know who is
    honest; for its experiments the authors' reference code uses a heuristic, the
    second-largest neighbour distance. This rule is a weighted generalisation of that
    heuristic: with equal weights ``w`` and ``delta = w`` it is the second-largest distance
    (only the farthest neighbour is clipped), with ``delta = k·w`` the (k+1)-th largest.

    Args:
        own: This node's vector ``x_i``.
        neighbours: Neighbour vectors by peer id; each of ``own``'s shape and finite.
        weights: ``w_ij`` per neighbour; same peers as ``neighbours``, summing to at most 1.
        delta: Mixing weight that may be Byzantine, ``0 <= delta < 1``.

    Returns:
        The radius ``τ >= 0``; 0.0 without neighbours.

    Raises:
        ValueError: On mismatched peers or shapes, non-finite vectors, bad weights, or
            ``delta`` outside ``[0, 1)``.

    Example:
        >>> x = np.zeros(1)
        >>> far = {"a": np.array([1.0]), "b": np.array([2.0]), "c": np.array([9.0])}
        >>> clipping_radius(x, far, {"a": 0.25, "b": 0.25, "c": 0.25}, delta=0.25)
        2.0
    """
    _check_same_peers(weights, neighbours)
    d = float(delta)
    if not 0.0 <= d < 1.0:
        raise ValueError(f"delta must satisfy 0 <= delta < 1, got {delta}")
    ws = _neighbour_weights(weights)
    ids, rows, _ = _stack(own, neighbours)
    distance = {peer: float(np.linalg.norm(rows[k] - rows[0])) for k, peer in enumerate(ids)}
    cumulative = 0.0
    for peer in sorted(ids[1:], key=lambda p: (-distance[p], p)):
        cumulative += ws[peer]
        if cumulative > d + WEIGHT_SUM_TOLERANCE:
            return distance[peer]
    return 0.0


def clipped_gossip(
    own: np.ndarray,
    neighbours: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    tau: float,
) -> tuple[np.ndarray, int]:
    """Self-centred clipping step ``x_i + Σ_j w_ij · clip_τ(x_j − x_i)``.

    ``clip_τ(z) = z · min(1, τ / ||z||)`` (Euclidean norm over all entries), so every
    neighbour moves ``x_i`` by at most ``w_ij · τ``. With ``tau = inf`` this is
    :func:`~gossipfl.aggregation.mixing.mix` with ``self_weight = 1 − Σ_j w_ij``.

    Args:
        own: This node's vector ``x_i``.
        neighbours: Neighbour vectors by peer id; each of ``own``'s shape and finite.
        weights: ``w_ij`` per neighbour; same peers as ``neighbours``, summing to at most 1.
        tau: Clipping radius, ``>= 0`` (``math.inf`` allowed); see :func:`clipping_radius`.

    Returns:
        ``(new_vector, clipped)``: the float32 result and how many neighbours were farther
        than ``tau`` and therefore shortened.

    Raises:
        ValueError: On mismatched peers or shapes, non-finite vectors, bad weights, or a
            negative or NaN ``tau``.

    Example:
        >>> clipped_gossip(np.zeros(2), {"a": np.array([0.0, 1.0]), "b": np.array([30.0, 40.0])},
        ...                {"a": 0.5, "b": 0.5}, tau=5.0)
        (array([1.5, 2.5], dtype=float32), 1)
    """
    _check_same_peers(weights, neighbours)
    t = float(tau)
    if not t >= 0.0:
        raise ValueError(f"tau must be non-negative, got {tau}")
    ws = _neighbour_weights(weights)
    ids, rows, shape = _stack(own, neighbours)
    x = rows[0]
    step = np.zeros_like(x)
    clipped = 0
    for k, peer in enumerate(ids[1:], 1):
        z = rows[k] - x
        norm = float(np.linalg.norm(z))
        if norm > t:
            z = z * (t / norm)
            clipped += 1
        step += ws[peer] * z
    return (x + step).reshape(shape).astype(np.float32), clipped


def trimmed_mean(own: np.ndarray, neighbours: Mapping[str, np.ndarray], b: int) -> np.ndarray:
    """Coordinate-wise trimmed mean of ``{own} ∪ neighbours``, dropping ``b`` at each end.

    In every coordinate the ``b`` largest and ``b`` smallest of the ``n`` values are dropped
    and the other ``n − 2b`` averaged. With at most ``b`` arbitrary inputs every coordinate of
    the result lies between the smallest and largest honest value.

    Args:
        own: This node's vector.
        neighbours: Neighbour vectors by peer id; each of ``own``'s shape and finite.
        b: Values trimmed from each end per coordinate, ``0 <= 2b < n``.

    Returns:
        The float32 trimmed mean, of ``own``'s shape.

    Raises:
        TypeError: If ``b`` is not an integer.
        ValueError: On mismatched shapes, non-finite vectors, ``b < 0`` or ``2b >= n``.

    Example:
        >>> trimmed_mean(np.array([1.0]), {"a": np.array([2.0]), "b": np.array([99.0])}, b=1)
        array([2.], dtype=float32)
    """
    ids, rows, shape = _stack(own, neighbours)
    n = len(ids)
    trim = _check_count(b, "b", 0)
    if 2 * trim >= n:
        raise ValueError(
            f"trimmed mean needs more than 2*b inputs (own + neighbours): n={n}, b={trim}"
        )
    kept = np.sort(rows, axis=0)[trim : n - trim]
    return kept.mean(axis=0).reshape(shape).astype(np.float32)


def coordinate_median(own: np.ndarray, neighbours: Mapping[str, np.ndarray]) -> np.ndarray:
    """Coordinate-wise median of ``{own} ∪ neighbours`` (mean of the middle two if ``n`` even).

    With fewer than half of the ``n`` inputs arbitrary, every coordinate of the result lies
    between the smallest and largest honest value.

    Args:
        own: This node's vector.
        neighbours: Neighbour vectors by peer id; each of ``own``'s shape and finite.

    Returns:
        The float32 median, of ``own``'s shape.

    Raises:
        ValueError: On mismatched shapes or non-finite vectors.

    Example:
        >>> coordinate_median(np.array([1.0, 5.0]),
        ...                   {"a": np.array([2.0, -7.0]), "b": np.array([99.0, 0.0])})
        array([2., 0.], dtype=float32)
    """
    _, rows, shape = _stack(own, neighbours)
    return np.median(rows, axis=0).reshape(shape).astype(np.float32)


def multi_krum(
    own: np.ndarray, neighbours: Mapping[str, np.ndarray], f: int, m: int = 1
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Krum (``m = 1``) or multi-Krum over ``{own} ∪ neighbours`` with ``f`` Byzantine inputs.

    Each of the ``n`` inputs is scored by the sum of its squared Euclidean distances to its
    ``n − f − 2`` nearest other inputs; the ``m`` lowest scores are averaged (ties go to the
    own vector, then to the smaller peer id). Needs ``n > 2f + 2`` (Blanchard et al., 2017).

    Args:
        own: This node's vector.
        neighbours: Neighbour vectors by peer id; each of ``own``'s shape and finite.
        f: Number of inputs assumed Byzantine, ``f >= 0``.
        m: Number of inputs averaged, ``1 <= m <= n − f``.

    Returns:
        ``(vector, selected)``: the float32 average of the selected inputs and their ids in
        id order (own as :data:`SELF_ID`, first).

    Raises:
        TypeError: If ``f`` or ``m`` is not an integer.
        ValueError: On mismatched shapes, non-finite vectors, ``n <= 2f + 2`` or ``m`` out of
            range.

    Example:
        >>> peers = {"a": np.array([1.0]), "b": np.array([2.0]), "c": np.array([50.0])}
        >>> multi_krum(np.array([0.0]), peers, f=0)
        (array([1.], dtype=float32), ('a',))
        >>> multi_krum(np.array([0.0]), peers, f=0, m=3)
        (array([1.], dtype=float32), ('<self>', 'a', 'b'))
    """
    ids, rows, shape = _stack(own, neighbours)
    n = len(ids)
    byzantine = _check_count(f, "f", 0)
    chosen_count = _check_count(m, "m", 1)
    if n <= 2 * byzantine + 2:
        raise ValueError(
            f"Krum needs n > 2*f + 2 inputs (own + neighbours): n={n}, f={byzantine}"
        )
    if chosen_count > n - byzantine:
        raise ValueError(f"m must be at most n - f = {n - byzantine}, got {chosen_count}")
    squared = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            squared[i, j] = squared[j, i] = float(np.sum((rows[i] - rows[j]) ** 2))
    nearest = n - byzantine - 2
    scores = [math.fsum(np.sort(np.delete(squared[i], i))[:nearest]) for i in range(n)]
    ranked = sorted(range(n), key=lambda i: (scores[i], i))
    chosen = sorted(ranked[:chosen_count])
    vector = rows[chosen].mean(axis=0).reshape(shape).astype(np.float32)
    return vector, tuple(ids[i] for i in chosen)


def robust_mix(
    rule: RobustRule | str,
    own: np.ndarray,
    neighbours: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    *,
    tau: float | None = None,
    delta: float | None = None,
    b: int = 1,
    f: int = 1,
    m: int = 1,
    ratio: float = 3.0,
    floor: float = 0.01,
    distrusted: frozenset[str] = frozenset(),
    least: float = 0.0,
) -> RobustResult:
    """Apply ``rule`` to the own vector and the neighbours' and say what it left out.

    * ``NONE``: :func:`~gossipfl.aggregation.mixing.mix` with ``self_weight = 1 − Σ weights``.
    * ``CLIPPING``: :func:`clipped_gossip` with the fixed radius ``tau`` or, if ``tau`` is
      ``None``, the radius :func:`clipping_radius` picks for ``delta`` (give exactly one).
    * ``TRIMMED_MEAN``: :func:`trimmed_mean` with ``b``; ``MEDIAN``: :func:`coordinate_median`;
      ``KRUM``: :func:`multi_krum` with ``f`` and ``m``. These three ignore the weights, but
      the peers of ``weights`` and ``neighbours`` must still agree. ``FILTER``:
      :func:`~gossipfl.aggregation.filter.distance_filter` with ``ratio``, ``floor``,
      ``distrusted`` and ``least``.

    Args:
        rule: A :class:`RobustRule` or its value (``"clipping"``, ...).
        own: This node's vector.
        neighbours: Neighbour vectors by peer id; each of ``own``'s shape.
        weights: Mixing weight per neighbour; same peers as ``neighbours``.
        tau: Fixed clipping radius (clipping only).
        delta: Byzantine weight fraction for the adaptive radius (clipping only).
        b: Values trimmed per end (trimmed mean only).
        f: Inputs assumed Byzantine (Krum only).
        m: Inputs averaged (Krum only).

    Returns:
        A :class:`RobustResult`.

    Raises:
        ValueError: On an unknown rule, mismatched peers or shapes, bad parameters, or for
            clipping neither or both of ``tau`` and ``delta``; see the rule's function.

    Example:
        >>> r = robust_mix(RobustRule.MEDIAN, np.array([1.0]),
        ...                {"a": np.array([2.0]), "b": np.array([99.0])}, {"a": 0.3, "b": 0.3})
        >>> r.model, r.inputs, r.discarded
        (array([2.], dtype=float32), 3, 2)
    """
    chosen_rule = RobustRule(rule)
    _check_same_peers(weights, neighbours)
    n = 1 + len(neighbours)
    if chosen_rule is RobustRule.NONE:
        self_weight = 1.0 - math.fsum(float(w) for w in weights.values())
        return RobustResult(mix(own, neighbours, weights, self_weight), chosen_rule, n)
    if chosen_rule is RobustRule.CLIPPING:
        if (tau is None) == (delta is None):
            raise ValueError("clipping needs exactly one of tau (fixed) and delta (adaptive)")
        radius = (
            float(tau) if tau is not None else clipping_radius(own, neighbours, weights, delta)
        )
        model, clipped = clipped_gossip(own, neighbours, weights, radius)
        return RobustResult(model, chosen_rule, n, clipped=clipped, tau=radius)
    if chosen_rule is RobustRule.TRIMMED_MEAN:
        return RobustResult(
            trimmed_mean(own, neighbours, b), chosen_rule, n, discarded=2 * int(b)
        )
    if chosen_rule is RobustRule.MEDIAN:
        model = coordinate_median(own, neighbours)
        return RobustResult(model, chosen_rule, n, discarded=n - (1 if n % 2 else 2))
    if chosen_rule is RobustRule.FILTER:
        model, left_out = distance_filter(own, neighbours, weights, ratio, floor, distrusted,
                                          least)
        return RobustResult(model, chosen_rule, n, discarded=len(left_out),
                            left_out=tuple(left_out))
    model, selected = multi_krum(own, neighbours, f, m)
    return RobustResult(model, chosen_rule, n, discarded=n - len(selected), selected=selected)


def robust_choco_step(
    rule: RobustRule | str,
    own_half: np.ndarray,
    own_estimate: np.ndarray,
    neighbour_estimates: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    gamma: float = 1.0,
    **params: float | int | frozenset[str] | None,
) -> RobustResult:
    """The CHOCO consensus step with ``rule`` in place of the weighted sum:
    ``x_i ← x_i^{1/2} + γ (R(x̂_i, {x̂_j}) − x̂_i)``, ``R`` being :func:`robust_mix` over the
    public estimates (``params``: its ``tau``/``delta``/``b``/``f``/``m``). With ``NONE`` this is
    :func:`~gossipfl.aggregation.mixing.choco_step` exactly; with ``CLIPPING`` each neighbour
    moves the node by at most ``γ w_ij τ``. The result's ``model`` is the new ``x_i``.

    >>> r = robust_choco_step(RobustRule.MEDIAN, np.array([1.0]), np.array([1.0]),
    ...                       {"a": np.array([2.0]), "b": np.array([99.0])}, {"a": .3, "b": .3})
    >>> r.model
    array([2.], dtype=float32)
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    result = robust_mix(rule, own_estimate, neighbour_estimates, weights, **params)  # type: ignore[arg-type]
    own_hat = np.asarray(own_estimate, np.float64)
    step = np.asarray(result.model, np.float64) - own_hat
    model = (np.asarray(own_half, np.float64) + gamma * step).astype(np.float32)
    return dataclasses.replace(result, model=model)
