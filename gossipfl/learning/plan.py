"""Which examples each minibatch step of local training takes (pure numpy, no JAX).

One plan serves one node's training call, whether it runs alone (:meth:`Trainer.train`) or
batched with other nodes' (:func:`gossipfl.learning.batched.train_many`): both take the same
steps on the same rows, so a simulated node trains exactly as a node process does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MinibatchPlan:
    """``rows[s]``: the example indices of step ``s`` (padded to the batch size with index 0);
    ``masks[s]``: 1 for a real row, 0 for padding; ``weights[s]``: the real rows of step ``s``."""

    rows: np.ndarray  # (steps, batch) int64
    masks: np.ndarray  # (steps, batch) float32
    weights: np.ndarray  # (steps,) float64

    @property
    def steps(self) -> int:
        return int(self.rows.shape[0])


def minibatch_plan(n: int, batch: int, epochs: int, seed: int,
                   max_steps: int | None = None) -> MinibatchPlan:
    """The steps of ``epochs`` epochs over ``n`` examples in minibatches of ``batch``: each epoch
    a fresh order from ``np.random.default_rng(seed)``, its last partial minibatch kept (padded
    and masked), so every example is used once per epoch; with ``max_steps``, only the first
    that many steps.

    >>> plan = minibatch_plan(5, 2, epochs=2, seed=0)
    >>> plan.steps, plan.masks.sum(axis=1).tolist(), plan.weights.tolist()
    (6, [2.0, 2.0, 1.0, 2.0, 2.0, 1.0], [2.0, 2.0, 1.0, 2.0, 2.0, 1.0])
    >>> sorted(plan.rows[:3][plan.masks[:3] == 1].tolist())
    [0, 1, 2, 3, 4]
    >>> minibatch_plan(5, 2, epochs=2, seed=0, max_steps=4).steps
    4
    """
    num_batches = -(-n // batch)
    padded = num_batches * batch
    mask = np.zeros(padded, np.float32)
    mask[:n] = 1.0
    mask_batches = mask.reshape(num_batches, batch)
    steps = epochs * num_batches if max_steps is None else min(max_steps, epochs * num_batches)
    rng = np.random.default_rng(seed)
    rows, masks = [], []
    for _ in range(-(-steps // num_batches)):
        order = np.zeros(padded, np.int64)
        order[:n] = rng.permutation(n)
        take = min(num_batches, steps - len(rows))
        rows.extend(order.reshape(num_batches, batch)[:take])
        masks.extend(mask_batches[:take])
    weights = np.array([float(min(batch, n - (s % num_batches) * batch)) for s in range(steps)])
    return MinibatchPlan(np.array(rows, np.int64).reshape(steps, batch),
                         np.array(masks, np.float32).reshape(steps, batch), weights)


__all__ = ["MinibatchPlan", "minibatch_plan"]
