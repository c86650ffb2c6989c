"""Momentum on the averaged model (outer momentum; SlowMo, Wang et al., 2020).

A training round moves a node's model from ``x`` (where the round started) to ``m`` (trained
locally, then mixed with the neighbours' estimates). Outer momentum treats ``m − x`` as the
round's step and keeps a velocity of past rounds' steps:

* heavy ball: ``v ← β v + (m − x)``, ``x ← x + v``  (that is ``m + β v_previous``);
* Nesterov: ``v ← β v + (m − x)``, ``x ← m + β v``.

With ``β = 0`` both give ``m``: the round as without momentum. The step ``m − x`` is the local
training plus the mixing, so momentum speeds up both the descent and (to a bounded degree) the
averaging; with plain SGD and one local epoch a round's step is small (each node takes a few
dozen minibatch steps on an eighth of the data), and momentum makes the most of the rounds a
task allows.

Momentum on the mixed model also acts on the mixing. On an eigenvector of the mixing matrix W
with eigenvalue λ the round's step is ``−a x`` with ``a = γ(1 − λ)`` (γ: CHOCO's consensus
step), and momentum on that mode is stable only while ``a`` stays below
:func:`mixing_step_limit`: ``1 + 1 / (1 + 2β)`` for Nesterov (1.36 at β = 0.9), ``2(1 + β)``
for heavy ball. Metropolis–Hastings weights on a graph of largest degree d have λ ≥
−(d − 1)/(d + 1) (Gershgorin), so ``a`` may reach ``2γd / (d + 1)``: 1.6γ at degree 4, where
random 4-regular graphs on 8 nodes reach λ = −0.45 (a = 1.45 at γ = 1): Nesterov then lets
the nodes' disagreement grow, round after round, on such graphs.

Tail averaging (``train.outer_average = K``; Polyak–Ruppert averaging, as in SWA, Izmailov et
al., 2018): a node ends its training with the mean of its models after its last K training
rounds (:func:`tail_mean` keeps it as a running mean), not the last one alone. Momentum's last
steps swing the model about the minimum it is heading for; their mean lies nearer it.

Pure functions: numpy arrays in, new arrays out, inputs never mutated. Arithmetic in float64;
the model comes back as float32 (the dtype models are exchanged in), the velocity as float64.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mixing_step_limit", "outer_momentum", "tail_mean"]


def outer_momentum(start: np.ndarray, mixed: np.ndarray, velocity: np.ndarray | None,
                   beta: float, *, nesterov: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One outer-momentum step: ``(new model, new velocity)``.

    Args:
        start: The model the round started from (``x``).
        mixed: The model after local training and mixing (``m``).
        velocity: The velocity after the previous training round, or None (none yet: zero).
        beta: The momentum coefficient, in ``[0, 1)``.
        nesterov: Nesterov's variant (``m + β v``) rather than heavy ball (``x + v``).

    Raises:
        ValueError: If ``beta`` is not in ``[0, 1)``, or the shapes differ.

    Example:
        >>> model, v = outer_momentum(np.zeros(2), np.ones(2), np.ones(2), 0.5)
        >>> model.tolist(), v.tolist()
        ([1.5, 1.5], [1.5, 1.5])
    """
    if not (math.isfinite(beta) and 0 <= beta < 1):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    x = np.asarray(start, dtype=np.float64)
    m = np.asarray(mixed, dtype=np.float64)
    if m.shape != x.shape:
        raise ValueError(f"mixed has shape {m.shape}, start {x.shape} (shapes must match)")
    previous = np.zeros_like(x) if velocity is None else np.asarray(velocity, dtype=np.float64)
    if previous.shape != x.shape:
        raise ValueError(f"velocity has shape {previous.shape}, start {x.shape} "
                         "(shapes must match)")
    new_velocity = beta * previous + (m - x)
    model = m + beta * new_velocity if nesterov else x + new_velocity
    return model.astype(np.float32), new_velocity


def tail_mean(mean: np.ndarray | None, count: int, model: np.ndarray) -> np.ndarray:
    """The mean of ``count + 1`` models from the mean of the first ``count`` (``mean``; None
    when ``count`` is 0) and the next, ``model``: ``mean + (model − mean) / (count + 1)``,
    in float64.

    Raises:
        ValueError: If ``count`` is negative, ``mean`` is None with ``count`` > 0 (or given
            with 0), or the shapes differ.

    Example:
        >>> tail_mean(None, 0, np.array([2.0])).tolist(), tail_mean(np.array([2.0]), 1,
        ...                                                         np.array([4.0])).tolist()
        ([2.0], [3.0])
    """
    if count < 0 or (mean is None) != (count == 0):
        raise ValueError(f"a mean of {count} models must be {'None' if count == 0 else 'given'}")
    m = np.asarray(model, dtype=np.float64)
    if mean is None:
        return m.copy()
    previous = np.asarray(mean, dtype=np.float64)
    if previous.shape != m.shape:
        raise ValueError(f"model has shape {m.shape}, mean {previous.shape} (shapes must match)")
    return previous + (m - previous) / (count + 1)


def mixing_step_limit(beta: float, *, nesterov: bool) -> float:
    """The largest ``a = γ(1 − λ)`` (a mode of the mixing, module docstring) on which outer
    momentum ``beta`` is stable. On such a mode a round's step is ``−a x``, and ``x`` follows
    ``z² − (1 + β − a(1 + β)) z + β(1 − a)`` (Nesterov) or ``z² − (1 + β − a) z + β`` (heavy
    ball); by Jury's test the roots stay inside the unit circle for ``0 < a < 1 + 1/(1 + 2β)``
    and ``0 < a < 2(1 + β)`` respectively (the polynomial's value at −1 turns negative there).

    Example:
        >>> round(mixing_step_limit(0.9, nesterov=True), 4), mixing_step_limit(0.5, nesterov=False)
        (1.3571, 3.0)
    """
    if not (math.isfinite(beta) and 0 <= beta < 1):
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    return 1.0 + 1.0 / (1.0 + 2.0 * beta) if nesterov else 2.0 * (1.0 + beta)
