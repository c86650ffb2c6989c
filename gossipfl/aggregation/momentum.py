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

Pure functions: numpy arrays in, new arrays out, inputs never mutated. Arithmetic in float64;
the model comes back as float32 (the dtype models are exchanged in), the velocity as float64.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["outer_momentum"]


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
