"""Update-level differential privacy: clip each round's model update, then add Gaussian noise.

The unit of privacy is a node's whole contribution in one round (its update, the delta between its
locally trained model and its previous public estimate), not a single training record. Each round
the node

1. clips its update to L2 norm at most ``C`` (:func:`clip_update`), bounding its sensitivity, and
2. adds independent Gaussian noise ``N(0, σ²C²)`` to every coordinate (:func:`gaussian_noise`),

which is the Gaussian mechanism with noise multiplier ``σ``; :mod:`gossipfl.privacy.accountant`
composes it over rounds into an ``(ε, δ)`` guarantee.

Rules the caller must keep for that guarantee to hold:

* Privatise **once per round** and send the *same* noisy vector to every neighbour. Drawing fresh
  noise per neighbour releases several independent views of the update, and the accountant (one
  Gaussian release per round) would undercount the privacy loss.
* Every round whose message depends on the node's private data counts, consensus-only rounds
  included.
* The public estimate must advance by the *privatised* update, so that everything that is public
  is post-processing of noisy releases.
* The accounting uses the add/remove neighbouring relation (the node's clipped update against no
  update), whose L2 sensitivity is ``C``. Against "replace the node's update by any other" the
  sensitivity is ``2C``; that guarantee equals the one computed here with ``σ/2``.
* The randomness comes from a :class:`numpy.random.Generator`: fine for experiments, but it is not
  a cryptographically secure source, and floating-point Gaussian sampling is known to leak through
  its low-order bits (Mironov 2012). A deployment facing a real adversary needs a secure sampler.

Distributed noise (``DPConfig.distributed``): with ``n`` contributors to a *secure sum*, each adds
``N(0, σ²C²/n)``, so the sum carries ``N(0, σ²C²)``. This only protects a node if (a) its
individual message is never seen in the clear (the sum is masked / securely aggregated), (b) the
other ``n − 1`` contributors are honest and really add their share, and (c) all ``n`` shares make it
into the sum: with only ``m < n`` of them the sum carries ``σ²C²·m/n``. Pass as ``n`` the number of
honest contributors that is *guaranteed* to reach the sum (a lower bound), never an optimistic
count. Sent in plain gossip, an update with distributed noise is protected only by ``σ/√n``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "DPConfig",
    "DPUpdateState",
    "clip_update",
    "dp_update_transform",
    "gaussian_noise",
    "gaussian_noise_transform",
    "noise_stddev",
    "privatise_update",
]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True)
class DPConfig:
    """Update-level differential privacy for one node.

    Attributes:
        enabled: Whether updates are clipped and noised at all. When off, :func:`privatise_update`
            returns the update unchanged and there is no privacy guarantee.
        clip_norm: ``C``, the largest L2 norm an update may have after clipping.
        noise_multiplier: ``σ``; the noise stddev is ``σ·C`` per coordinate (of the sum, when
            ``distributed``).
        delta: The ``δ`` of the ``(ε, δ)`` guarantee, in (0, 1).
        target_epsilon: The ``ε`` budget; the node stops contributing before exceeding it.
        sampling_probability: ``q``: the chance that the node takes part in a round, decided
            independently each round. Amplification by sampling only holds if whether the node took
            part stays secret (see :mod:`gossipfl.privacy.accountant`).
        distributed: Split the noise among the contributors of a secure sum (see the module
            docstring for when this is valid).
    """

    enabled: bool = False
    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5
    target_epsilon: float = 8.0
    sampling_probability: float = 1.0
    distributed: bool = False

    def __post_init__(self) -> None:
        _require(isinstance(self.enabled, bool), "privacy.enabled must be a bool")
        _require(isinstance(self.distributed, bool), "privacy.distributed must be a bool")
        for name in ("clip_norm", "noise_multiplier", "delta", "target_epsilon",
                     "sampling_probability"):
            value = getattr(self, name)
            _require(_is_real(value) and math.isfinite(value),
                     f"privacy.{name} must be a finite number, got {value!r}")
        _require(self.clip_norm > 0, f"privacy.clip_norm must be positive, got {self.clip_norm}")
        _require(self.noise_multiplier >= 0,
                 f"privacy.noise_multiplier must be non-negative, got {self.noise_multiplier}")
        _require(not self.enabled or self.noise_multiplier > 0,
                 "privacy.noise_multiplier must be positive when privacy is enabled "
                 "(σ = 0 gives no privacy)")
        _require(0 < self.delta < 1, f"privacy.delta must be in (0, 1), got {self.delta}")
        _require(self.target_epsilon > 0,
                 f"privacy.target_epsilon must be positive, got {self.target_epsilon}")
        _require(0 < self.sampling_probability <= 1,
                 f"privacy.sampling_probability must be in (0, 1], got {self.sampling_probability}")


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
    stddev = config.noise_multiplier * config.clip_norm
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


class DPUpdateState(NamedTuple):
    """State of :func:`gaussian_noise_transform`: the PRNG key for the next draw."""

    key: jax.Array


def gaussian_noise_transform(stddev: float, seed: int) -> optax.GradientTransformation:
    """An optax transformation adding i.i.d. ``N(0, stddev²)`` noise to every leaf of an update.

    Unlike :func:`optax.add_noise` there is no schedule: the stddev is the same every step. Each
    call to ``update`` splits the key in the state, so successive draws are independent.

    Args:
        stddev: The standard deviation per coordinate, non-negative.
        seed: Seed of the PRNG key.

    Returns:
        The transformation; its state is a :class:`DPUpdateState`.

    Raises:
        ValueError: ``stddev`` is negative or not finite.
    """
    _require(_is_real(stddev) and math.isfinite(stddev) and stddev >= 0,
             f"stddev must be a non-negative finite number, got {stddev!r}")

    def init_fn(params: optax.Params) -> DPUpdateState:
        del params
        return DPUpdateState(key=jax.random.key(seed))

    def update_fn(
        updates: optax.Updates, state: DPUpdateState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, DPUpdateState]:
        del params
        leaves, treedef = jax.tree.flatten(updates)
        next_key, noise_key = jax.random.split(state.key)
        keys = jax.random.split(noise_key, max(len(leaves), 1))
        noisy = [
            leaf + stddev * jax.random.normal(k, jnp.shape(leaf), jnp.result_type(leaf))
            for leaf, k in zip(leaves, keys, strict=False)
        ]
        return jax.tree.unflatten(treedef, noisy), DPUpdateState(key=next_key)

    return optax.GradientTransformation(init_fn, update_fn)


def dp_update_transform(clip_norm: float, stddev: float, seed: int) -> optax.GradientTransformation:
    """Clip-then-noise on a pytree update, as an optax transformation.

    The same mechanism as :func:`privatise_update`: :func:`optax.clip_by_global_norm` (the norm
    over all leaves together) followed by :func:`gaussian_noise_transform`. Leaves must be floating.

    Args:
        clip_norm: The largest allowed global L2 norm, positive.
        stddev: The noise stddev per coordinate, e.g. :func:`noise_stddev` of the config.
        seed: Seed of the PRNG key.

    Returns:
        The chained transformation.

    Raises:
        ValueError: ``clip_norm`` is not positive or ``stddev`` is negative (or either not finite).
    """
    _require(_is_real(clip_norm) and math.isfinite(clip_norm) and clip_norm > 0,
             f"clip_norm must be a positive finite number, got {clip_norm!r}")
    return optax.chain(optax.clip_by_global_norm(clip_norm), gaussian_noise_transform(stddev, seed))
