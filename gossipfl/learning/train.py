"""Local training and evaluation with optax.

:class:`Trainer` owns one jitted chunk of up to :data:`TRAIN_CHUNK` training steps (a round's
steps go in chunks; the last chunk's count is an argument, so one compiled program takes any
number) and one jitted evaluation step. Every training minibatch has exactly ``batch_size``
rows: the last, partial minibatch of an epoch is *kept*, padded to full size, and its padding
rows are masked out of the loss. Each is therefore compiled once per Trainer (per feature width and
parameter structure), however many rounds run, whatever a node's data size is and however
many steps a round takes. Evaluation runs in padded, masked chunks of at most 1024
rows (a power of two), so it compiles at most a handful of times.

With a :class:`DPSGD` argument, :meth:`Trainer.train` runs DP-SGD instead (record-level
differential privacy, :mod:`gossipfl.privacy.dp`): each step draws a Poisson batch (every record
in independently with rate ``q``) from the DP generator, computes per-example gradients with
``jax.vmap(jax.value_and_grad(...))``, clips each to ``clip_norm``, adds ``N(0, σ²C²)`` to their
sum and divides by the expected batch size ``q·n``; then the optimiser step. A Poisson batch is
laid out in padded chunks of :func:`gossipfl.privacy.dp.padded_batch_size` rows with a 0/1 mask,
so the step compiles once; a batch larger than one chunk (rare) is summed over several chunks
before the single noise draw, so the step taken is exactly the accounted one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from gossipfl.learning.data import Dataset
from gossipfl.learning.executables import ExecutableCache
from gossipfl.learning.models import Model
from gossipfl.learning.params import Params
from gossipfl.learning.plan import minibatch_plan
from gossipfl.learning.train_config import DPSGD, TrainConfig, _is_int, make_optimizer
from gossipfl.privacy.dp import clip_per_example, noisy_mean, padded_batch_size, poisson_sample

EVAL_CHUNK = 1024
"""Largest number of rows evaluated in one call of the jitted evaluation step."""

TRAIN_CHUNK = 8
"""Most minibatch steps a training call dispatches at once (a ``lax.fori_loop`` over the
minibatches stacked, its count an argument): a jitted call per minibatch cost 4.8-7.9 ms of
CPU for a quickstart round of 32 steps, chunks of 8 about a third of that. One program takes
a full chunk or the last few steps of a round: a fixed-length chunk (a ``lax.scan``) and a
single step for the rest compiled twice (0.59 + 0.40 s of CPU for the quickstart's model,
against 0.45 s), with the same parameters to the bit."""

OptState = Any
"""An optax optimiser state (a pytree)."""


def _full_chunk(rows: np.ndarray) -> np.ndarray:
    """``rows`` (a chunk's minibatches stacked) padded with zeros to :data:`TRAIN_CHUNK`."""
    if len(rows) == TRAIN_CHUNK:
        return rows
    padded = np.zeros((TRAIN_CHUNK, *rows.shape[1:]), rows.dtype)
    padded[: len(rows)] = rows
    return padded


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a feature/label pair and convert to float32/int32 NumPy arrays.

    Args:
        x: Features, ``(n, features)``.
        y: Labels, ``(n,)``, integers ``>= 0``.

    Returns:
        ``(x, y)`` as float32 and int32 arrays.

    Raises:
        ValueError: If shapes disagree, the set is empty or labels are invalid.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-D (n, features), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {y.shape}")
    if x.shape[0] == 0:
        raise ValueError("x and y must contain at least one example, got 0")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y must have an integer dtype, got {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"labels must be >= 0, got {y.min()}")
    return np.asarray(x, np.float32), np.asarray(y, np.int32)


class Trainer:
    """Trains and evaluates one model with one optimiser configuration.

    The jitted step functions live on the instance, so reusing one Trainer across
    rounds never recompiles.

    Args:
        model: The model to train.
        config: Training hyper-parameters.
    """

    def __init__(self, model: Model, config: TrainConfig,
                 executables: ExecutableCache | None = None) -> None:
        """Build the optimiser and the jitted step functions (``executables``: compiled once
        per machine and loaded, :mod:`gossipfl.learning.executables`)."""
        self.model = model
        self.config = config
        self.optimizer = make_optimizer(config)

        # what the steps close over beyond gossipfl's code: the model's build and this config
        context = f"{model.spec}|{config!r}" if model.spec else None

        def jit(fn: Any, name: str) -> Any:
            return jax.jit(fn) if executables is None else executables.jit(fn, name, context)

        self._init = jit(self.optimizer.init, "opt_init")
        self._train_chunk = jit(self._train_chunk_impl, "train_chunk")
        self._eval_step = jit(self._eval_step_impl, "eval_step")
        self._dp_step = jit(self._dp_step_impl, "dp_step")
        self._clipped_sum = jit(self._clipped_sum_impl, "clipped_sum")
        self._classes: dict[tuple[int, ...], int] = {}  # input shape → number of logits

    def _masked_loss(
        self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array
    ) -> jax.Array:
        """Mean cross-entropy over the rows where ``mask`` is 1."""
        logits = self.model.apply(params, x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    def _train_step_impl(
        self,
        params: Params,
        opt_state: OptState,
        x: jax.Array,
        y: jax.Array,
        mask: jax.Array,
    ) -> tuple[Params, OptState, jax.Array]:
        """One optimiser step on a (possibly padded) minibatch."""
        loss, grads = jax.value_and_grad(self._masked_loss)(params, x, y, mask)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def _train_chunk_impl(
        self,
        params: Params,
        opt_state: OptState,
        xs: jax.Array,
        ys: jax.Array,
        masks: jax.Array,
        count: jax.Array,
    ) -> tuple[Params, OptState, jax.Array]:
        """The first ``count`` (at most :data:`TRAIN_CHUNK`) of the minibatches stacked in
        ``xs``, each the step :meth:`_train_step_impl` takes, in one call; their losses (0
        past ``count``)."""

        def step(i: jax.Array, carry: tuple[Params, OptState, jax.Array]
                 ) -> tuple[Params, OptState, jax.Array]:
            params, opt_state, losses = carry
            params, opt_state, loss = self._train_step_impl(params, opt_state, xs[i], ys[i],
                                                            masks[i])
            return params, opt_state, losses.at[i].set(loss)

        losses = jnp.zeros(xs.shape[0], jnp.float32)
        return jax.lax.fori_loop(0, count, step, (params, opt_state, losses))

    def _example_loss(self, params: Params, x: jax.Array, y: jax.Array) -> jax.Array:
        """Cross-entropy of one example (``x`` without the batch axis)."""
        logits = self.model.apply(params, x[None])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y[None])[0]

    def _clipped_sum_impl(
        self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array, clip: jax.Array
    ) -> tuple[Params, jax.Array]:
        """Summed per-example-clipped gradients and summed loss over the masked rows."""
        per_example = jax.vmap(jax.value_and_grad(self._example_loss), in_axes=(None, 0, 0))
        losses, grads = per_example(params, x, y)
        summed, _ = clip_per_example(grads, clip, mask)
        return summed, jnp.sum(losses * mask)

    def _dp_step_impl(
        self,
        params: Params,
        opt_state: OptState,
        x: jax.Array,
        y: jax.Array,
        mask: jax.Array,
        extra: Params,
        noise: jax.Array,
        clip: jax.Array,
        stddev: jax.Array,
        expected: jax.Array,
    ) -> tuple[Params, OptState, jax.Array]:
        """One DP-SGD step: clipped sum (+ ``extra``, the overflow chunks), noise, optimiser."""
        summed, loss_sum = self._clipped_sum_impl(params, x, y, mask, clip)
        summed = jax.tree_util.tree_map(jnp.add, summed, extra)
        _, unravel = jax.flatten_util.ravel_pytree(params)
        grads = noisy_mean(summed, unravel(noise), stddev, expected)
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss_sum

    def _eval_step_impl(
        self, params: Params, x: jax.Array, y: jax.Array, mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Summed loss and number of correct predictions over the unmasked rows."""
        logits = self.model.apply(params, x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        return jnp.sum(losses * mask), jnp.sum(correct * mask)

    def _check_labels_fit(self, params: Params, x: np.ndarray, y: np.ndarray) -> None:
        """Raise ValueError if a label is not below the model's number of logits (the
        model's output width, traced once per input width)."""
        key = x.shape[1:]
        if key not in self._classes:
            out = jax.eval_shape(self.model.apply, params,
                                 jax.ShapeDtypeStruct(x[:1].shape, x.dtype))
            self._classes[key] = out.shape[-1]
        num_classes = self._classes[key]
        if y.max() >= num_classes:
            raise ValueError(f"label {y.max()} out of range for a model with {num_classes} classes")

    def init_opt_state(self, params: Params) -> OptState:
        """Return a fresh optimiser state for ``params``.

        Args:
            params: Parameter pytree.

        Returns:
            The optax state.
        """
        return self._init(params)  # one step, not an eager op per leaf

    def train(
        self,
        params: Params,
        opt_state: OptState,
        x: np.ndarray,
        y: np.ndarray,
        *,
        epochs: int | None = None,
        seed: int,
        max_steps: int | None = None,
        dp: DPSGD | None = None,
    ) -> tuple[Params, OptState, float]:
        """Run local training (DP-SGD with ``dp``, see the module docstring).

        Each epoch visits the examples in a fresh random order drawn from
        ``np.random.default_rng(seed)``; the last partial minibatch is kept (padded
        and masked), so every example is used once per epoch. With ``max_steps``,
        training stops after that many minibatch steps (a fraction of an epoch, or of
        the last epoch); the steps it does take are exactly those the full run starts
        with.

        Args:
            params: Starting parameters.
            opt_state: Starting optimiser state (from :meth:`init_opt_state`).
            x: Features, ``(n, features)``.
            y: Integer labels, ``(n,)``.
            epochs: Number of epochs, ``>= 1``; defaults to ``config.local_epochs``.
            seed: Non-negative shuffling seed.
            max_steps: At most this many minibatch steps, ``>= 1``; ``None``: no limit.
            dp: Run DP-SGD: Poisson batches of expected size ``dp.sample_rate · n`` from
                ``dp.rng`` (``seed`` is then unused); an epoch is ``⌈n / batch_size⌉`` steps.

        Returns:
            ``(params, opt_state, mean_loss)`` where ``mean_loss`` is the
            per-example training loss averaged over all minibatches taken, each
            minibatch's loss measured before its update.

        Raises:
            ValueError: For invalid data, ``epochs``, ``seed`` or ``max_steps``.
        """
        epochs = self.config.local_epochs if epochs is None else epochs
        if not _is_int(epochs) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
        if not _is_int(seed) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
            raise ValueError(f"max_steps must be an int >= 1 or None, got {max_steps!r}")
        x, y = _check_xy(x, y)
        # numpy and jax leaves would compile two versions of the step: always pass jax arrays
        params = jax.device_put(params)  # a transfer, not an eager op
        self._check_labels_fit(params, x, y)
        n = x.shape[0]
        batch = self.config.batch_size
        num_batches = -(-n // batch)
        if dp is not None:
            steps = epochs * num_batches if max_steps is None else min(max_steps,
                                                                        epochs * num_batches)
            return self._train_dp(params, opt_state, x, y, steps, dp)
        plan = minibatch_plan(n, batch, epochs, seed, max_steps)
        losses: list[jax.Array] = []
        for start in range(0, plan.steps, TRAIN_CHUNK):  # TRAIN_CHUNK steps a dispatch
            count = min(TRAIN_CHUNK, plan.steps - start)
            rows = plan.rows[start : start + count]
            xs, ys = _full_chunk(x[rows]), _full_chunk(y[rows])
            masks = _full_chunk(plan.masks[start : start + count])
            params, opt_state, loss = self._train_chunk(params, opt_state, xs, ys, masks,
                                                        np.int32(count))
            losses.append(loss)
        # device_get, not jnp.concatenate: that would compile once per number of steps
        per_step = np.concatenate(jax.device_get(losses))[: plan.steps]
        mean_loss = float(np.dot(per_step, plan.weights) / plan.weights.sum())
        return params, opt_state, mean_loss

    def _train_dp(
        self, params: Params, opt_state: OptState, x: np.ndarray, y: np.ndarray, steps: int,
        dp: DPSGD,
    ) -> tuple[Params, OptState, float]:
        """``steps`` DP-SGD steps; returns the mean per-example loss over the sampled rows."""
        n = x.shape[0]
        expected = dp.sample_rate * n
        rows = padded_batch_size(expected, n)
        size = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(params))
        # host values, not eager JAX ops (each of those would be compiled)
        zeros = jax.tree_util.tree_map(lambda leaf: np.zeros(np.shape(leaf), np.float32), params)
        clip = np.float32(dp.clip_norm)
        stddev = np.float32(dp.noise_multiplier * dp.clip_norm)
        expected_j = np.float32(expected)
        loss_sums: list[jax.Array] = []
        sampled = 0
        for _ in range(steps):
            chosen = poisson_sample(n, dp.sample_rate, dp.rng)
            sampled += len(chosen)
            chunks = [chosen[i : i + rows] for i in range(0, len(chosen), rows)] or [chosen]
            extra = zeros
            for chunk in chunks[1:]:  # overflow: more rows than one padded chunk holds
                xb, yb, mb = _pad(x, y, chunk, rows)
                part, part_loss = self._clipped_sum(params, xb, yb, mb, clip)
                extra = jax.tree_util.tree_map(np.add, extra, jax.device_get(part))
                loss_sums.append(part_loss)
            xb, yb, mb = _pad(x, y, chunks[0], rows)
            noise = dp.rng.standard_normal(size, dtype=np.float32)
            params, opt_state, loss_sum = self._dp_step(
                params, opt_state, xb, yb, mb, extra, noise, clip, stddev, expected_j
            )
            loss_sums.append(loss_sum)
        total = float(np.sum(jax.device_get(loss_sums))) if loss_sums else 0.0
        return params, opt_state, total / max(sampled, 1)

    def evaluate(self, params: Params, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
        """Compute mean cross-entropy and accuracy.

        Args:
            params: Parameters to evaluate.
            x: Features, ``(n, features)``.
            y: Integer labels, ``(n,)``.

        Returns:
            ``(mean_loss, accuracy)`` over all ``n`` examples.

        Raises:
            ValueError: For invalid data.
        """
        x, y = _check_xy(x, y)
        # numpy and jax leaves would compile two versions of the step: always pass jax arrays
        params = jax.device_put(params)  # a transfer, not an eager op
        self._check_labels_fit(params, x, y)
        n = x.shape[0]
        chunk = min(EVAL_CHUNK, 1 << (n - 1).bit_length())
        sums: list[tuple[jax.Array, jax.Array]] = []  # summed on the host: no eager op
        for start in range(0, n, chunk):
            xb = x[start : start + chunk]
            yb = y[start : start + chunk]
            m = xb.shape[0]
            mask = np.zeros(chunk, np.float32)
            mask[:m] = 1.0
            if m < chunk:
                xb = np.concatenate([xb, np.zeros((chunk - m, x.shape[1]), np.float32)])
                yb = np.concatenate([yb, np.zeros(chunk - m, np.int32)])
            sums.append(self._eval_step(params, xb, yb, mask))
        totals = np.asarray(jax.device_get(sums), np.float64).sum(axis=0)
        return float(totals[0]) / n, float(totals[1]) / n


def _pad(
    x: np.ndarray, y: np.ndarray, chosen: np.ndarray, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows ``chosen`` (at most ``rows``) padded to ``rows`` with a 0/1 mask."""
    index = np.zeros(rows, np.int64)
    index[: len(chosen)] = chosen
    mask = np.zeros(rows, np.float32)
    mask[: len(chosen)] = 1.0
    return x[index], y[index], mask


def train_centralised(
    dataset: Dataset,
    model: Model,
    config: TrainConfig,
    *,
    epochs: int,
    seed: int,
) -> tuple[Params, list[float]]:
    """Train on the pooled training set: the non-federated baseline.

    Parameters are initialised with ``jax.random.key(seed)``; epoch ``e`` shuffles
    with a seed drawn from ``np.random.default_rng(seed)``.

    Args:
        dataset: Full dataset.
        model: Model to train.
        config: Hyper-parameters (``local_epochs`` is ignored).
        epochs: Number of epochs, ``>= 1``.
        seed: Non-negative seed for initialisation and shuffling.

    Returns:
        ``(params, accuracies)`` with the test accuracy after each epoch.

    Raises:
        ValueError: For invalid ``epochs`` or ``seed``.
    """
    if not _is_int(epochs) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    trainer = Trainer(model, config)
    params = model.init(seed)
    opt_state = trainer.init_opt_state(params)
    epoch_seeds = np.random.default_rng(seed).integers(0, 2**31 - 1, size=epochs)
    accuracies: list[float] = []
    for epoch_seed in epoch_seeds:
        params, opt_state, _ = trainer.train(
            params, opt_state, dataset.x_train, dataset.y_train, epochs=1, seed=int(epoch_seed)
        )
        _, accuracy = trainer.evaluate(params, dataset.x_test, dataset.y_test)
        accuracies.append(accuracy)
    return params, accuracies
