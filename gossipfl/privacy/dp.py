"""Differential privacy: the mechanisms, for records (DP-SGD, the default) or for whole nodes.

Two units of privacy, chosen by ``[privacy] unit`` (:class:`PrivacyUnit`):

``record`` (default): DP-SGD inside local training. What is protected is one *training record*
(a patient, a customer) in a node's data: each step samples a Poisson batch (every record in
independently with rate ``q = batch_size / records``), clips every per-example gradient to L2 norm
``C`` (:func:`clip_per_example`), adds ``N(0, σ²C²)`` to the sum and divides by the *expected*
batch size (:func:`noisy_mean`). :mod:`gossipfl.privacy.accountant` composes the
Poisson-sampled Gaussian over every local step the node takes. Everything the node publishes
afterwards (its CHOCO delta, its secure-aggregation input) is a function of the DP-SGD output and
of public values: post-processing, it spends nothing more, so no node-level noise is added.

``node``: update-level DP. The unit is a node's whole contribution in one round (the delta
between its trained model and its previous public estimate). Each round the node

1. clips its update to L2 norm at most ``C`` (:func:`clip_update`), bounding its sensitivity, and
2. adds independent Gaussian noise ``N(0, σ²C²)`` to every coordinate (:func:`gaussian_noise`),

the Gaussian mechanism composed over rounds. Rules the caller must keep for it to hold:

* Privatise **once per round** and send the *same* noisy vector to every neighbour.
* Every round whose message depends on the node's private data counts.
* The public estimate must advance by the *privatised* update.
* The accounting uses the add/remove relation (sensitivity ``C``); against "replace" it is ``2C``,
  the guarantee computed here with ``σ/2``.
* No sampling of rounds: every node takes part in every round, so ``q = 1``; a configured
  ``sampling_probability < 1`` is refused (amplification by sampling that is not really done would
  under-report ε).

Distributed noise (``DPConfig.distributed``, node unit only): with ``n`` contributors to a
*secure sum*, each adds ``N(0, σ²C²/n)``. This only protects a node if its message is never seen
in the clear, the other ``n − 1`` are honest, and all ``n`` shares reach the sum; pass as ``n`` a
guaranteed lower bound.

Noise source: :func:`noise_generator` is a PCG64 :class:`numpy.random.Generator` seeded with 128
bits from :mod:`secrets` (the OS's CSPRNG) once per node run, never from the scenario seed: peers
cannot predict (and subtract) the noise, nor guess the Poisson batches. Its limits: PCG64 itself is
not a cryptographic generator (its output after the seed could in principle be predicted from
enough observed outputs, which the node never publishes), and the floating-point Gaussian sampler
does not give the guarantee of the ideal real-valued Gaussian: the low-order bits of a float
sample leak (Mironov, CCS 2012). A deployment facing a real adversary needs a discrete or
snapping Gaussian sampler (e.g. Canonne, Kamath & Steinke 2020).
"""

from __future__ import annotations

import enum
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DPConfig",
    "PrivacyUnit",
    "clip_per_example",
    "clip_update",
    "gaussian_noise",
    "noise_generator",
    "noise_stddev",
    "noisy_mean",
    "padded_batch_size",
    "poisson_sample",
    "privatise_update",
]

POISSON_SLACK_SIGMAS = 4.0
"""The padded Poisson batch holds the expected size plus this many standard deviations."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


class PrivacyUnit(enum.StrEnum):
    """Whom differential privacy protects."""

    RECORD = "record"  # one training record inside a node's data (DP-SGD)
    NODE = "node"  # a node's whole update in a round


@dataclass(frozen=True)
class DPConfig:
    """Differential privacy for one node.

    Attributes:
        enabled: Whether DP is applied at all. When off there is no privacy guarantee.
        unit: :class:`PrivacyUnit` (``"record"`` or ``"node"``); a string is converted.
        clip_norm: ``C``: per-example gradient bound (record) or update bound (node).
        noise_multiplier: ``σ``; the noise stddev is ``σ·C``. ``None`` (default): the smallest
            ``σ`` that keeps ``ε ≤ target_epsilon`` over the planned work (record: every local
            step of ``rounds × local_epochs`` epochs; node: ``rounds`` rounds).
        delta: The ``δ`` of the ``(ε, δ)`` guarantee, in (0, 1); record unit: at most
            1/records (checked when the node knows its records).
        target_epsilon: The ``ε`` budget; the node stops before exceeding it.
        sampling_probability: Node unit only, and only 1: no node skips rounds, so a smaller
            value (which would amplify ε for sampling never done) is refused. Record unit: the
            rate is ``batch_size / records``, so setting it is refused.
        distributed: Node unit only: split the noise among the contributors of a secure sum.
    """

    enabled: bool = False
    unit: PrivacyUnit = PrivacyUnit.RECORD
    clip_norm: float = 1.0
    noise_multiplier: float | None = None
    delta: float = 1e-5
    target_epsilon: float = 8.0
    sampling_probability: float | None = None
    distributed: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "privacy.enabled must be a bool")
        _require(isinstance(self.distributed, bool), "privacy.distributed must be a bool")
        units = tuple(u.value for u in PrivacyUnit)
        _require(isinstance(self.unit, str) and self.unit in units,
                 f"privacy.unit must be one of {units}, got {self.unit!r}")
        object.__setattr__(self, "unit", PrivacyUnit(self.unit))
        for name in ("clip_norm", "noise_multiplier", "delta", "target_epsilon",
                     "sampling_probability"):
            value = getattr(self, name)
            if value is None and name in ("noise_multiplier", "sampling_probability"):
                continue
            _require(_is_real(value) and math.isfinite(value),
                     f"privacy.{name} must be a finite number, got {value!r}")
        _require(self.clip_norm > 0, f"privacy.clip_norm must be positive, got {self.clip_norm}")
        sigma = self.noise_multiplier
        _require(sigma is None or sigma >= 0,
                 f"privacy.noise_multiplier must be non-negative, got {sigma}")
        _require(not self.enabled or sigma is None or sigma > 0,
                 "privacy.noise_multiplier must be positive when privacy is enabled "
                 "(σ = 0 gives no privacy)")
        _require(0 < self.delta < 1, f"privacy.delta must be in (0, 1), got {self.delta}")
        _require(self.target_epsilon > 0,
                 f"privacy.target_epsilon must be positive, got {self.target_epsilon}")
        q = self.sampling_probability
        if self.unit is PrivacyUnit.RECORD:
            _require(q is None, "privacy.sampling_probability does not apply with unit = "
                     "\"record\": the Poisson rate is batch_size / records; remove the key")
            _require(not self.distributed, "privacy.distributed applies only with unit = "
                     "\"node\" (DP-SGD noise is added in local training)")
        else:
            _require(q is None or 0 < q <= 1,
                     f"privacy.sampling_probability must be in (0, 1], got {q}")
            _require(q is None or q == 1, f"privacy.sampling_probability = {q} refused: with "
                     "unit = \"node\" every node takes part in every round (no node skips "
                     "rounds), so sampling amplification would under-report epsilon; use 1")


def noise_generator() -> np.random.Generator:
    """A fresh generator for DP noise and Poisson sampling, seeded with 128 bits from the OS.

    Call once per node run; never seed DP randomness from the scenario seed (peers know it).
    """
    return np.random.default_rng(secrets.randbits(128))


def clip_update(update: np.ndarray, clip_norm: float) -> tuple[np.ndarray, float]:
    """Scales ``update`` down so that its L2 norm is at most ``clip_norm``.

    An update already within the bound is returned unchanged (as a copy); a longer one is scaled by
    ``clip_norm / norm``, keeping its direction. A zero vector stays zero. The norm is taken over
    all elements, whatever the shape, and computed in float64; the result has the input's floating
    dtype (float32 for integer input), so its norm is ``clip_norm`` up to that dtype's rounding.

    Args:
        update: The update, any shape, all values finite.
        clip_norm: The largest allowed L2 norm, positive.

    Returns:
        The clipped copy and the update's original L2 norm.

    Raises:
        ValueError: ``clip_norm`` is not positive and finite, or ``update`` has a NaN or infinity.
    """
    _require(_is_real(clip_norm) and math.isfinite(clip_norm) and clip_norm > 0,
             f"clip_norm must be a positive finite number, got {clip_norm!r}")
    array = np.asarray(update)
    dtype = array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float32)
    wide = array.astype(np.float64)
    _require(bool(np.all(np.isfinite(wide))), "update must be finite (it has a NaN or infinity)")
    norm = float(np.linalg.norm(wide.ravel()))
    if norm <= clip_norm:
        return array.astype(dtype, copy=True), norm
    return (wide * (clip_norm / norm)).astype(dtype), norm


def gaussian_noise(
    shape: int | Sequence[int], stddev: float, rng: np.random.Generator
) -> np.ndarray:
    """Draws i.i.d. ``N(0, stddev²)`` noise.

    Args:
        shape: The shape of the noise array.
        stddev: The standard deviation per coordinate, non-negative (0 gives zeros).
        rng: The source of randomness.

    Returns:
        A float32 array of the given shape.

    Raises:
        ValueError: ``stddev`` is negative or not finite.
        TypeError: ``rng`` is not a :class:`numpy.random.Generator`.
    """
    _require(_is_real(stddev) and math.isfinite(stddev) and stddev >= 0,
             f"stddev must be a non-negative finite number, got {stddev!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise *= np.float32(stddev)
    return noise


def noise_stddev(config: DPConfig, contributors: int = 1) -> float:
    """The per-coordinate noise stddev one node adds to its update.

    Args:
        config: The privacy configuration.
        contributors: ``n``, the number of contributors to the secure sum the update goes into.
            Only used when ``config.distributed``; it must be a guaranteed lower bound on the honest
            contributors that reach the sum (see the module docstring).

    Returns:
        ``σ·C``, or ``σ·C/√n`` when distributed, so that the sum of ``n`` shares has stddev
        ``σ·C``; 0 when privacy is disabled.

    Raises:
        ValueError: ``contributors`` is not a positive integer.
    """
    _require(isinstance(contributors, int | np.integer) and not isinstance(contributors, bool)
             and contributors >= 1,
             f"contributors must be a positive integer, got {contributors!r}")
    if not config.enabled:
        return 0.0
    _require(config.noise_multiplier is not None,
             "noise_stddev needs a resolved privacy.noise_multiplier")
    stddev = float(config.noise_multiplier) * config.clip_norm  # type: ignore[arg-type]
    if config.distributed:
        stddev /= math.sqrt(int(contributors))
    return stddev


def privatise_update(
    update: np.ndarray, config: DPConfig, rng: np.random.Generator, contributors: int = 1
) -> np.ndarray:
    """Clips ``update`` to ``config.clip_norm`` and adds Gaussian noise of :func:`noise_stddev`.

    Call it once per round and send the result to every neighbour (see the module docstring).

    Args:
        update: The node's update for this round, all values finite.
        config: The privacy configuration; when disabled the update is returned unchanged.
        rng: The source of randomness.
        contributors: ``n`` for distributed noise (see :func:`noise_stddev`).

    Returns:
        The privatised update, float32, same shape.

    Raises:
        ValueError: ``update`` is not finite or ``contributors`` is not a positive integer.
        TypeError: ``rng`` is not a :class:`numpy.random.Generator`.
    """
    stddev = noise_stddev(config, contributors)
    if not config.enabled:
        return np.asarray(update).astype(np.float32, copy=True)
    clipped, _ = clip_update(update, config.clip_norm)
    clipped = clipped.astype(np.float32, copy=False)
    return clipped + gaussian_noise(clipped.shape, stddev, rng)


# --- record level: DP-SGD ---------------------------------------------------------------------


def padded_batch_size(expected: float, records: int) -> int:
    """The fixed row count of a padded Poisson batch: ``⌈B + 4√B⌉``, at most ``records``.

    A Poisson batch has ``Binomial(records, q)`` rows, mean ``B = q·records`` and standard
    deviation at most ``√B``; four of them above the mean it overflows about 3 steps in 100,000.
    An overflow is *not* truncated or resampled (either would change the sampling the accountant
    assumes): the trainer splits the batch into several padded chunks and sums their clipped
    gradients before the one noise draw, so the step is exactly the accounted one, only slower.
    """
    _require(_is_real(expected) and expected > 0, f"expected batch must be positive, "
             f"got {expected!r}")
    _require(isinstance(records, int | np.integer) and records >= 1,
             f"records must be a positive integer, got {records!r}")
    return int(min(records, math.ceil(expected + POISSON_SLACK_SIGMAS * math.sqrt(expected))))


def poisson_sample(records: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """The indices of one Poisson batch: each of ``records`` rows in independently w.p. ``rate``.

    The batch size is random (possibly 0): that is what the accountant's
    ``PoissonSampledDpEvent`` assumes, and what makes the batch composition secret.
    """
    _require(0 < rate <= 1, f"rate must be in (0, 1], got {rate!r}")
    return np.flatnonzero(rng.random(records) < rate)


def clip_per_example(grads: Any, clip_norm: jax.Array | float, mask: jax.Array
                     ) -> tuple[Any, jax.Array]:
    """Clips each example's gradient to L2 norm ``clip_norm`` and sums the masked ones.

    Args:
        grads: A pytree whose leaves have a leading batch axis (per-example gradients, e.g. from
            ``jax.vmap(jax.grad(loss))``); the norm of example ``i`` is over all its leaves.
        clip_norm: ``C``, positive.
        mask: ``(batch,)`` 0/1: which rows are real (1) or padding (0).

    Returns:
        ``(Σ_i mask_i · g_i · min(1, C/‖g_i‖), norms)``: the summed clipped gradients (a pytree
        without the batch axis) and the per-example norms before clipping.
    """
    leaves = jax.tree_util.tree_leaves(grads)
    squares = sum(jnp.sum(jnp.reshape(g, (g.shape[0], -1)) ** 2, axis=1) for g in leaves)
    norms = jnp.sqrt(squares)
    scale = mask * jnp.minimum(1.0, clip_norm / jnp.maximum(norms, 1e-12))
    summed = jax.tree_util.tree_map(lambda g: jnp.tensordot(scale, g, axes=1), grads)
    return summed, norms


def noisy_mean(grad_sum: Any, noise: Any, stddev: jax.Array | float,
               expected_batch: jax.Array | float) -> Any:
    """The DP-SGD gradient: ``(Σ clipped + stddev·noise) / B`` with ``B`` the *expected* batch.

    Dividing by the expected size, not the drawn one, keeps the batch size (which depends on the
    data's presence) out of the release: the sensitivity stays ``C/B``.

    Args:
        grad_sum: Summed clipped gradients (:func:`clip_per_example`).
        noise: Standard normal draws, the same structure as ``grad_sum``.
        stddev: ``σ·C``.
        expected_batch: ``B = q·records``.
    """
    return jax.tree_util.tree_map(lambda g, z: (g + stddev * z) / expected_batch, grad_sum, noise)
