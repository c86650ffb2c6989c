"""Gossip averaging: Metropolis–Hastings mixing weights, D-PSGD mixing and CHOCO bookkeeping.

Every function here is pure: it takes numpy arrays (or plain mappings of them), never mutates
its inputs and keeps no state between calls.

* Decentralised parallel SGD (D-PSGD; Lian et al., 2017) averages each node's model with its
  neighbours' through a symmetric, doubly stochastic mixing matrix ``W``. We use
  Metropolis–Hastings weights, ``W_ij = 1 / (1 + max(d_i, d_j))`` on every edge ``(i, j)``,
  which need only the degrees of the two endpoints, so every node can compute its own row of
  ``W`` from what its neighbours tell it.
* CHOCO-gossip (Koloskova et al., 2019) gossips compressed differences instead of models; each
  node keeps public estimates ``x̂_j`` of its neighbours and updates
  ``x_i ← x_i^{1/2} + γ Σ_j W_ij (x̂_j − x̂_i)``. The compression itself lives elsewhere; this
  module provides the linear consensus step.
* ``shared_weights`` makes a row lazy (``W' = (1 − s)·I + s·W``), as ClippedGossip's
  experiments raise every honest node's self-weight (``clippedgossip_share``); a robust rule
  mixes with it when ``[robust] neighbour_share`` is below 1.
* ``consensus_distance`` (Kong et al., 2021) is the diagnostic the report gives.

Computation is carried out in float64 and models are returned as float32, the dtype models are
exchanged in. Neighbour contributions are always summed in sorted-key order, so the result does
not depend on the insertion order of the mappings passed in.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "WEIGHT_SUM_TOLERANCE",
    "choco_step",
    "clippedgossip_share",
    "consensus_distance",
    "metropolis_weight",
    "mix",
    "neighbour_weights",
    "relative_disagreement",
    "reported_examples",
    "shared_weights",
    "weighted_neighbour_weights",
]

WEIGHT_SUM_TOLERANCE: float = 1e-6
"""How far ``self_weight + Σ_j w_j`` may stray from 1 in :func:`mix`."""

_NORM_FLOOR: float = 1e-12


def _check_degree(value: int, name: str) -> int:
    """Return ``value`` as a non-negative ``int`` or raise naming the broken rule."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be non-negative, got {value}")
    return int(value)


def _check_weight(value: float, name: str) -> float:
    """Return ``value`` as a finite, non-negative ``float`` or raise naming the broken rule.

    Values down to ``-WEIGHT_SUM_TOLERANCE`` pass as rounding noise, e.g. a self weight
    computed as ``1 - sum(weights)`` that should be exactly zero.
    """
    weight = float(value)
    if not math.isfinite(weight):
        raise ValueError(f"{name} must be finite, got {weight}")
    if weight < -WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"{name} must be non-negative, got {weight}")
    return weight


def _as_float64(array: np.ndarray, name: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """Convert to a float64 array and check its shape against ``shape`` (if given)."""
    result = np.asarray(array, dtype=np.float64)
    if shape is not None and result.shape != shape:
        raise ValueError(f"{name} has shape {result.shape}, expected {shape} (shapes must match)")
    return result


def _check_same_peers(weights: Mapping[str, float], models: Mapping[str, np.ndarray]) -> None:
    """Every weight needs a model and every model needs a weight."""
    if set(weights) != set(models):
        missing_models = sorted(set(weights) - set(models))
        missing_weights = sorted(set(models) - set(weights))
        raise ValueError(
            "weights and neighbour models must have the same peers: "
            f"weights without a model {missing_models}, models without a weight {missing_weights}"
        )


def metropolis_weight(degree_i: int, degree_j: int) -> float:
    """Metropolis–Hastings weight of the edge between nodes of degrees ``degree_i``, ``degree_j``.

    Args:
        degree_i: Degree of one endpoint (number of neighbours, self excluded).
        degree_j: Degree of the other endpoint.

    Returns:
        ``1 / (1 + max(degree_i, degree_j))``.

    Raises:
        TypeError: If a degree is not an integer.
        ValueError: If a degree is negative.

    Example:
        >>> metropolis_weight(1, 2)
        0.3333333333333333
    """
    d_i = _check_degree(degree_i, "degree_i")
    d_j = _check_degree(degree_j, "degree_j")
    return 1.0 / (1.0 + max(d_i, d_j))


def neighbour_weights(
    own_degree: int, neighbour_degrees: Mapping[str, int]
) -> tuple[float, dict[str, float]]:
    """A node's own row of the Metropolis–Hastings matrix, from locally known degrees.

    Neighbours that are absent this round are simply left out of ``neighbour_degrees``; their
    weight then goes to the node itself, so the row still sums to one.

    Args:
        own_degree: This node's degree in the topology.
        neighbour_degrees: Degree of each neighbour present, by peer id.

    Returns:
        ``(self_weight, {peer: weight})`` with ``weight = 1 / (1 + max(own_degree, d_peer))``
        and ``self_weight = 1 − Σ weight``. Peers appear in sorted order.

    Raises:
        TypeError: If a degree is not an integer.
        ValueError: If a degree is negative, or more neighbours are present than
            ``own_degree`` allows.

    Example:
        >>> neighbour_weights(2, {"b": 1, "c": 2})
        (0.33333333333333337, {'b': 0.3333333333333333, 'c': 0.3333333333333333})
    """
    d_own = _check_degree(own_degree, "own_degree")
    if len(neighbour_degrees) > d_own:
        raise ValueError(
            f"{len(neighbour_degrees)} neighbours present but own_degree is {d_own}: "
            "a node cannot have more neighbours than its degree"
        )
    weights = {
        peer: metropolis_weight(d_own, _check_degree(neighbour_degrees[peer], f"degree of {peer}"))
        for peer in sorted(neighbour_degrees)
    }
    return 1.0 - math.fsum(weights.values()), weights


def shared_weights(
    self_weight: float, weights: Mapping[str, float], share: float
) -> tuple[float, dict[str, float]]:
    """A node's row of the lazy matrix ``W' = (1 − share)·I + share·W``: every neighbour's
    weight times ``share``, what it loses staying with the node itself.

    This is ClippedGossip's raised self-weight (He, Karimireddy & Jaggi, 2022; their reference
    code normalises the Metropolis matrix to ``(W + c·I) / (1 + c)``, ``c = 1 − min_k W_kk``,
    i.e. ``share = 1 / (1 + c)``: :func:`clippedgossip_share`). The ratios between the
    neighbours' weights are kept, so a neighbourhood's Byzantine share of the weight is
    unchanged; only the node's step towards its neighbours shortens. ``W'`` is symmetric and
    doubly stochastic when ``W`` is, with the same average. ``share = 1`` returns the row as is.

    Args:
        self_weight: The node's own weight in ``W`` (``1 − Σ weights``).
        weights: Its neighbours' weights in ``W``, by peer id.
        share: ``0 < share <= 1``.

    Returns:
        ``(self_weight', {peer: share · weight})``, ``self_weight' = 1 − share·(1 − self_weight)``;
        peers in sorted order.

    Raises:
        ValueError: If ``share`` is outside ``(0, 1]`` or a weight is negative or not finite.

    Example:
        >>> shared_weights(0.5, {"b": 0.25, "a": 0.25}, 0.5)
        (0.75, {'a': 0.125, 'b': 0.125})
    """
    s = float(share)
    if not 0.0 < s <= 1.0:
        raise ValueError(f"share must satisfy 0 < share <= 1, got {share}")
    own = _check_weight(self_weight, "self_weight")
    ws = {peer: _check_weight(weights[peer], f"weight of {peer}") for peer in sorted(weights)}
    if s == 1.0:
        return own, ws
    return 1.0 - s * (1.0 - own), {peer: s * w for peer, w in ws.items()}


def clippedgossip_share(self_weights: Iterable[float]) -> float:
    """The ``share`` of :func:`shared_weights` that ClippedGossip's normalisation amounts to.

    Their experiments (the "MaliciousRing" graphs) raise the Metropolis matrix's diagonal by
    ``c = 1 − m``, ``m`` the smallest self-weight among the honest nodes, and divide by
    ``1 + c``: the node that had the least self-weight then keeps ``1 / (2 − m) ≥ 1/2`` of its
    own model, and every other weight is multiplied by ``1 / (2 − m)``, which is returned.

    Args:
        self_weights: The honest nodes' self-weights ``W_kk`` in the Metropolis matrix.

    Returns:
        ``1 / (2 − min self_weights)``, in ``[1/2, 1]``.

    Raises:
        ValueError: If ``self_weights`` is empty or holds a value outside ``[0, 1]``.

    Example:
        >>> clippedgossip_share([1 / 6, 7 / 30, 1 / 5])  # their mr5,1,0: 6/11
        0.5454545454545455
    """
    values = [_check_weight(w, "self weight") for w in self_weights]
    if not values:
        raise ValueError("self_weights must not be empty")
    if max(values) > 1.0 + WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"a self weight must be at most 1, got {max(values)}")
    return 1.0 / (2.0 - min(max(min(values), 0.0), 1.0))


def reported_examples(count: int, rounding: str = "exact") -> int:
    """The example count a node tells its neighbours for sample-weighted averaging.

    ``exact`` tells ``count``; ``pow2`` the nearest power of two in log scale (the count
    within a factor of √2: 1, 2, 4, ...). Never below 1: a node with no example still mixes.

    Example:
        >>> reported_examples(170, "pow2"), reported_examples(3, "pow2"), reported_examples(0)
        (128, 4, 1)
    """
    n = _check_degree(count, "count")
    if rounding == "exact":
        return max(n, 1)
    if rounding == "pow2":
        return 1 << max(0, round(math.log2(max(n, 1))))
    raise ValueError(f"rounding must be exact or pow2, not {rounding!r}")


def weighted_neighbour_weights(
    own_degree: int, own_examples: int, neighbours: Mapping[str, tuple[int, int]]
) -> tuple[float, dict[str, float]]:
    """A node's row of a mixing matrix whose stationary distribution is ∝ examples.

    ``W_ij = min(1, m_j / m_i) / (1 + max(d_i, d_j))`` for a neighbour j of degree ``d_j``
    that reports ``m_j`` examples (``neighbours[j] = (d_j, m_j)``). Then ``m_i W_ij =
    min(m_i, m_j) / (1 + max(d_i, d_j)) = m_j W_ji``: the chain is reversible with stationary
    distribution π ∝ m, so gossip ``x ← W x`` (and the CHOCO step) keeps the example-weighted
    mean ``Σ m_i x_i / Σ m_i`` and converges to it, as FedAvg's weighted average. Each row sums
    to at most ``d_i / (1 + d_i) < 1``; the rest is the self weight. A count of 0 on either end
    (a node that does not weight) makes the edge's factor 1, the same on both ends. A
    neighbour's weight never exceeds the unweighted Metropolis weight: reporting more examples
    gains a member no more pull on its neighbours (it only listens less to them).

    Example:
        >>> weighted_neighbour_weights(1, 100, {"b": (1, 1)})
        (0.995, {'b': 0.005})
    """
    m_own = _check_degree(own_examples, "own_examples")
    d_own = _check_degree(own_degree, "own_degree")
    if len(neighbours) > d_own:
        raise ValueError(
            f"{len(neighbours)} neighbours present but own_degree is {d_own}: "
            "a node cannot have more neighbours than its degree"
        )
    weights = {}
    for peer in sorted(neighbours):
        d_peer, m_peer = neighbours[peer]
        base = metropolis_weight(d_own, _check_degree(d_peer, f"degree of {peer}"))
        m_peer = _check_degree(m_peer, f"examples of {peer}")
        factor = 1.0 if m_own == 0 or m_peer == 0 else min(1.0, m_peer / m_own)
        weights[peer] = base * factor
    return 1.0 - math.fsum(weights.values()), weights


def mix(
    own: np.ndarray,
    neighbours: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    self_weight: float,
) -> np.ndarray:
    """One gossip-averaging step: ``self_weight * own + Σ_j weights[j] * neighbours[j]``.

    Args:
        own: This node's model (any shape).
        neighbours: Neighbour models by peer id; each must have ``own``'s shape.
        weights: Mixing weight of each neighbour; same peers as ``neighbours``.
        self_weight: Weight of ``own``.

    Returns:
        The mixed model as a new float32 array of ``own``'s shape.

    Raises:
        ValueError: If shapes differ, the peers of ``weights`` and ``neighbours`` differ, a
            weight is negative or not finite, or the weights do not sum to 1 within
            ``WEIGHT_SUM_TOLERANCE``.

    Example:
        >>> mix(np.array([0.0, 2.0]), {"b": np.array([2.0, 0.0])}, {"b": 0.5}, 0.5)
        array([1., 1.], dtype=float32)
    """
    _check_same_peers(weights, neighbours)
    s = _check_weight(self_weight, "self_weight")
    ws = {peer: _check_weight(weights[peer], f"weight of {peer}") for peer in sorted(weights)}
    total = s + math.fsum(ws.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(
            f"self_weight + sum of weights must be 1 (within {WEIGHT_SUM_TOLERANCE}), got {total}"
        )
    x = _as_float64(own, "own", None)
    result = s * x
    for peer, w in ws.items():
        result += w * _as_float64(neighbours[peer], f"model of {peer}", x.shape)
    return result.astype(np.float32)


def choco_step(
    own_half: np.ndarray,
    own_estimate: np.ndarray,
    neighbour_estimates: Mapping[str, np.ndarray],
    weights: Mapping[str, float],
    gamma: float = 1.0,
) -> np.ndarray:
    """CHOCO-gossip consensus step ``x_i ← x_i^{1/2} + γ Σ_j W_ij (x̂_j − x̂_i)``.

    With exact (identity) compression, ``γ = 1`` and estimates equal to the models this is the
    same as :func:`mix` with ``self_weight = 1 − Σ_j W_ij``.

    Args:
        own_half: ``x_i^{1/2}``, this node's model after its local SGD step.
        own_estimate: ``x̂_i``, the public estimate of this node's model.
        neighbour_estimates: ``x̂_j`` for each neighbour, by peer id.
        weights: ``W_ij`` for each neighbour; same peers as ``neighbour_estimates``.
        gamma: Consensus step size, ``0 < gamma <= 1``.

    Returns:
        The new model as a float32 array of ``own_half``'s shape.

    Raises:
        ValueError: If shapes differ, peers differ, ``gamma`` is outside ``(0, 1]``, a weight
            is negative or not finite, or the weights sum to more than 1.

    Example:
        >>> choco_step(np.array([1.0]), np.array([0.0]), {"b": np.array([4.0])}, {"b": 0.25})
        array([2.], dtype=float32)
    """
    g = float(gamma)
    if not 0.0 < g <= 1.0:
        raise ValueError(f"gamma must satisfy 0 < gamma <= 1, got {gamma}")
    _check_same_peers(weights, neighbour_estimates)
    ws = {peer: _check_weight(weights[peer], f"weight of {peer}") for peer in sorted(weights)}
    total = math.fsum(ws.values())
    if total > 1.0 + WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"sum of neighbour weights must be at most 1, got {total}")
    x_half = _as_float64(own_half, "own_half", None)
    x_hat = _as_float64(own_estimate, "own_estimate", x_half.shape)
    correction = np.zeros_like(x_half)
    for peer, w in ws.items():
        estimate = _as_float64(neighbour_estimates[peer], f"estimate of {peer}", x_half.shape)
        correction += w * (estimate - x_hat)
    return (x_half + g * correction).astype(np.float32)


def consensus_distance(models: Sequence[np.ndarray]) -> float:
    """Mean relative distance of the models from their average (Kong et al., 2021).

    ``mean_i ||x_i − x̄|| / ||x̄||`` with Euclidean norms over all entries. If ``||x̄|| == 0``
    the absolute distance ``mean_i ||x_i − x̄||`` is returned instead.

    Args:
        models: One model per node, all of the same shape.

    Returns:
        The consensus distance; ``0.0`` for a single model.

    Raises:
        ValueError: If ``models`` is empty or the shapes differ.

    Example:
        >>> consensus_distance([np.array([3.0, 0.0]), np.array([1.0, 0.0])])
        0.5
    """
    if len(models) == 0:
        raise ValueError("models must not be empty")
    first = _as_float64(models[0], "models[0]", None)
    stacked = np.stack(
        [first] + [_as_float64(m, f"models[{i}]", first.shape) for i, m in enumerate(models[1:], 1)]
    ).reshape(len(models), -1)
    if len(models) == 1:
        return 0.0
    # Deviations are taken about models[0] first: nearly-converged models (the usual case) then
    # lose no precision to cancellation, and identical models give exactly 0.
    offsets = stacked - stacked[0]
    mean_offset = offsets.mean(axis=0)
    distance = float(np.linalg.norm(offsets - mean_offset, axis=1).mean())
    scale = float(np.linalg.norm(stacked[0] + mean_offset))
    return distance / scale if scale > 0.0 else distance


def relative_disagreement(own: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """Largest distance from ``own`` to any other model, relative to ``||own||``.

    ``max_j ||x_j − own|| / max(||own||, 1e-12)``.

    Args:
        own: This node's model.
        others: Models to compare against; each must have ``own``'s shape.

    Returns:
        The relative disagreement; ``0.0`` if ``others`` is empty.

    Raises:
        ValueError: If a shape differs from ``own``'s.

    Example:
        >>> relative_disagreement(np.array([3.0, 4.0]), [np.array([3.0, 4.0]), np.zeros(2)])
        1.0
    """
    x = _as_float64(own, "own", None)
    if len(others) == 0:
        return 0.0
    largest = max(
        float(np.linalg.norm((_as_float64(o, f"others[{i}]", x.shape) - x).ravel()))
        for i, o in enumerate(others)
    )
    return largest / max(float(np.linalg.norm(x.ravel())), _NORM_FLOOR)
