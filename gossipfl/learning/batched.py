"""Many nodes' local training and evaluation as one vectorised JAX program.

A simulation runs every node of a federation in one process; nodes that share a model and a
training configuration train at the same virtual instant, and their calls are batched here:
the trainer's own step (:meth:`Trainer._train_step_impl`, the one a node process runs alone)
under ``jax.vmap`` over the nodes and a ``lax.scan`` over :data:`STEP_CHUNK` steps, each node
taking the steps of its own :class:`~gossipfl.learning.plan.MinibatchPlan` (a node with fewer
steps than another is held still, parameters and optimiser state, while the others go on).
Evaluation is the trainer's evaluation step under ``jax.vmap`` over the nodes' parameters. The
number of nodes in a batch is padded to a power of two (inactive copies), so a run compiles a
handful of programs, not one per batch size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.learning.params import Params
from gossipfl.learning.plan import MinibatchPlan
from gossipfl.learning.train import EVAL_CHUNK, OptState, Trainer


@dataclass(frozen=True)
class TrainJob:
    """One node's training call: its start, its data and the steps it takes."""

    params: Params
    opt_state: OptState
    x: np.ndarray
    y: np.ndarray
    plan: MinibatchPlan


def _bucket(count: int) -> int:
    """The batch width for ``count`` nodes: the next power of two."""
    return 1 << max(0, count - 1).bit_length()


def _stack(trees: Sequence[Any], width: int) -> Any:
    """Stack pytrees along a new leading axis, padded to ``width`` with copies of the first
    (on the host, then moved to the device once per leaf)."""
    padded = list(trees) + [trees[0]] * (width - len(trees))
    return jax.tree_util.tree_map(lambda *leaves: jnp.asarray(np.stack(leaves)), *padded)


def _unstack(tree: Any, count: int) -> list[Any]:
    host = jax.device_get(tree)
    return [jax.tree_util.tree_map(lambda leaf, i=i: np.asarray(leaf[i]), host)
            for i in range(count)]


STEP_CHUNK = 16
"""Training steps run as one compiled program (a ``lax.scan``): one dispatch and one gather
of each node's rows per 16 steps, not per step (at 1,000 members with 124 steps a round, the
per-step loop spent most of a round in Python), while a chunk's inputs stay small (16 steps ×
1,024 nodes × 32 rows × 16 features: 34 MB)."""


MIN_PART = 64
"""Fewest nodes a thread takes: :meth:`Batched.train_many` and :meth:`Batched.evaluate_many`
split a batch over ``threads`` only into parts of at least this many."""

EVAL_FLOATS = 1 << 25
"""Most activations (float32 values of the widest layer, over every node and row) one
evaluation call holds: 128 MB. At 1,000 nodes with a layer of 256 the full
:data:`~gossipfl.learning.train.EVAL_CHUNK` rows held 1 GB a layer, and the 1,000-member
teacher run peaked at 8.1 GB."""


def _parts(items: Sequence[Any], threads: int) -> list[Sequence[Any]]:
    """``items`` in at most ``threads`` contiguous parts of at least :data:`MIN_PART` (one
    part when there are fewer)."""
    count = max(1, min(threads, len(items) // MIN_PART))
    size = -(-len(items) // count)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _in_threads(work: Callable[[Sequence[Any]], list[Any]], items: Sequence[Any],
                threads: int, pool: Executor | None = None) -> list[Any]:
    """``work`` over :func:`_parts` of ``items``, each part in a thread of ``pool`` (of at
    least ``threads`` workers; None: threads made for this call), results in order: XLA
    releases the GIL, and a simulation waits for its batch with every other core idle. A
    simulation passes one pool for its run: threads made afresh for every batch left the
    memory of their allocations spread over malloc's arenas, and a 1,000-member run's RSS grew
    by about 100 MB a round."""
    parts = _parts(items, threads)
    if len(parts) == 1:
        return work(items)
    if pool is not None:
        return [result for part in pool.map(work, parts) for result in part]
    with ThreadPoolExecutor(len(parts)) as own:
        return [result for part in own.map(work, parts) for result in part]


def _widest(params: Params) -> int:
    """The largest last dimension of any leaf: a layer's width, for :data:`EVAL_FLOATS`."""
    return max(int(np.shape(leaf)[-1]) if np.ndim(leaf) else 1
               for leaf in jax.tree_util.tree_leaves(params))


class Batched:
    """The vectorised steps of one :class:`Trainer` (built once, compiled per batch width)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

        def held_step(params: Params, opt_state: OptState, x: jax.Array, y: jax.Array,
                      mask: jax.Array, active: jax.Array) -> tuple[Params, OptState, jax.Array]:
            new_params, new_state, loss = trainer._train_step_impl(params, opt_state, x, y, mask)
            keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731
            return (jax.tree_util.tree_map(keep, new_params, params),
                    jax.tree_util.tree_map(keep, new_state, opt_state), loss)

        def steps(params: Params, opt_state: OptState, xs: jax.Array, ys: jax.Array,
                  masks: jax.Array, active: jax.Array) -> tuple[Params, OptState, jax.Array]:
            # STEP_CHUNK steps of every node in one program (leading axis: the step)
            def step(carry: tuple[Params, OptState], batch: tuple[jax.Array, ...]
                     ) -> tuple[tuple[Params, OptState], jax.Array]:
                new_params, new_state, loss = jax.vmap(held_step)(*carry, *batch)
                return (new_params, new_state), loss
            (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                                       (xs, ys, masks, active))
            return params, opt_state, losses

        self._train = jax.jit(steps)
        self._eval = jax.jit(jax.vmap(trainer._eval_step_impl, in_axes=(0, None, None, None)))
        self._compiled: dict[int, Any] = {}  # the training step compiled, by batch width
        self._compiling = threading.Lock()  # threads of one batch compile a width once
        #: seconds spent compiling training steps so far: the simulator charges a node's
        #: training as virtual time and leaves this out (a node process compiles once, while
        #: it joins; a new batch width here is the simulator's own cost, not a node's)
        self.compile_seconds = 0.0

    def _train_step(self, width: int, *args: Any) -> Any:
        with self._compiling:
            compiled = self._compiled.get(width)
            if compiled is None:
                started = time.perf_counter()
                compiled = self._train.lower(*args).compile()
                self.compile_seconds += time.perf_counter() - started
                self._compiled[width] = compiled
        return compiled(*args)

    def train_many(self, jobs: Sequence[TrainJob], threads: int = 1,
                   pool: Executor | None = None) -> list[tuple[Params, OptState, float]]:
        """Each job's ``(params, opt_state, mean_loss)``, as :meth:`Trainer.train` returns it
        for that job alone (the mean loss weighted by each step's real rows); in up to
        ``threads`` parts at once (:data:`MIN_PART`), on ``pool`` if given."""
        return _in_threads(self._train_part, jobs, threads, pool)

    def _train_part(self, jobs: Sequence[TrainJob]) -> list[tuple[Params, OptState, float]]:
        count, width = len(jobs), _bucket(len(jobs))
        steps = max(job.plan.steps for job in jobs)
        params = _stack([j.params for j in jobs], width)
        state = _stack([j.opt_state for j in jobs], width)
        batch = jobs[0].plan.rows.shape[1]
        features = jobs[0].x.shape[1:]
        losses = []
        for first in range(0, steps, STEP_CHUNK):  # steps past a node's last are held still
            xb = np.zeros((STEP_CHUNK, width, batch, *features), np.float32)
            yb = np.zeros((STEP_CHUNK, width, batch), np.int32)
            mb = np.zeros((STEP_CHUNK, width, batch), np.float32)
            active = np.zeros((STEP_CHUNK, width), bool)
            for i, job in enumerate(jobs):
                rows = job.plan.rows[first:first + STEP_CHUNK]
                taken = len(rows)
                if taken:
                    xb[:taken, i], yb[:taken, i] = job.x[rows], job.y[rows]
                    mb[:taken, i] = job.plan.masks[first:first + STEP_CHUNK]
                    active[:taken, i] = True
            params, state, loss = self._train_step(width, params, state, xb, yb, mb, active)
            losses.append(loss)
        per_step = np.concatenate(jax.device_get(losses))  # (steps rounded up, width)
        out = []
        for i, (p, o) in enumerate(zip(_unstack(params, count), _unstack(state, count),
                                       strict=True)):
            weights = jobs[i].plan.weights
            mean = float(np.dot(per_step[: len(weights), i], weights) / weights.sum())
            out.append((p, o, mean))
        return out

    def evaluate_many(self, params: Sequence[Params], x: np.ndarray, y: np.ndarray,
                      threads: int = 1, pool: Executor | None = None,
                      ) -> list[tuple[float, float]]:
        """Each parameter set's ``(mean_loss, accuracy)`` on ``(x, y)``, as
        :meth:`Trainer.evaluate` computes it; in up to ``threads`` parts at once (on ``pool``
        if given)."""
        return _in_threads(lambda part: self._evaluate_part(part, x, y), params, threads, pool)

    def _evaluate_part(self, params: Sequence[Params], x: np.ndarray,
                       y: np.ndarray) -> list[tuple[float, float]]:
        count, width = len(params), _bucket(len(params))
        stacked = _stack(list(params), width)
        n = x.shape[0]
        # rows a call: EVAL_CHUNK at most, fewer where width × rows activations of the widest
        # layer would pass EVAL_FLOATS (a power of two: a handful of programs)
        fits = max(1, EVAL_FLOATS // (width * _widest(params[0])))
        chunk = min(EVAL_CHUNK, 1 << (n - 1).bit_length(), 1 << (fits.bit_length() - 1))
        loss = jnp.zeros(width, jnp.float32)
        correct = jnp.zeros(width, jnp.float32)
        for start in range(0, n, chunk):
            xb, yb = x[start: start + chunk], y[start: start + chunk]
            m = xb.shape[0]
            mask = np.zeros(chunk, np.float32)
            mask[:m] = 1.0
            if m < chunk:
                xb = np.concatenate([xb, np.zeros((chunk - m, *x.shape[1:]), np.float32)])
                yb = np.concatenate([yb, np.zeros(chunk - m, np.int32)])
            part_loss, part_correct = self._eval(stacked, xb, yb, mask)
            loss, correct = loss + part_loss, correct + part_correct
        losses, hits = np.asarray(jax.device_get(loss)), np.asarray(jax.device_get(correct))
        return [(float(losses[i]) / n, float(hits[i]) / n) for i in range(count)]


__all__ = ["Batched", "TrainJob"]
