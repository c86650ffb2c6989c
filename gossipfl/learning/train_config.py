"""Local training's configuration: :class:`TrainConfig` (a scenario's ``[train]``), the
optimiser it names, and :class:`DPSGD` (what one DP-SGD run needs); :mod:`~gossipfl.learning.train`
runs them."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import optax

OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
"""Optimiser names accepted by :class:`TrainConfig`."""

MOMENTUM = 0.9
"""Momentum coefficient of the ``"momentum"`` optimiser."""


def _is_int(value: object) -> bool:
    """Return whether ``value`` is an integer but not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of local training.

    Attributes:
        optimizer: ``"sgd"``, ``"momentum"`` (SGD with momentum 0.9) or ``"adam"``.
        learning_rate: Step size, finite and ``> 0``.
        batch_size: Minibatch size, ``>= 1``.
        local_epochs: Epochs per round (default for :meth:`Trainer.train`), ``>= 1``.
        weight_decay: ``>= 0``. For ``"sgd"``/``"momentum"`` it adds
            ``weight_decay * params`` to the gradient (an L2 penalty); for
            ``"adam"`` it is AdamW's decoupled decay. Applies to all parameters.
        eval_every: A node evaluates its model on the test set every this many rounds (and
            always in its last training round and its last round), ``>= 1``.
        outer_momentum: Momentum on the averaged model across training rounds, in ``[0, 1)``
            (0: off; :mod:`gossipfl.aggregation.momentum`); ``outer_nesterov``: its Nesterov form.
        outer_average: Training ends with the mean of the models of the last this many training
            rounds (tail averaging), ``>= 0`` (0: off).
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.05
    batch_size: int = 32
    local_epochs: int = 1
    weight_decay: float = 0.0
    eval_every: int = 1
    outer_momentum: float = 0.0
    outer_nesterov: bool = False
    outer_average: int = 0

    def __post_init__(self) -> None:
        """Validate the fields.

        Raises:
            ValueError: Naming the first invalid field and its value.
        """
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; expected one of {OPTIMIZERS}")
        for name in ("learning_rate", "weight_decay", "outer_momentum"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float | np.floating | np.integer)
                or not math.isfinite(value)
            ):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.outer_momentum < 1:
            raise ValueError(f"outer_momentum must be in [0, 1), got {self.outer_momentum!r}")
        for name in ("batch_size", "local_epochs", "eval_every"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not _is_int(self.outer_average) or self.outer_average < 0:
            raise ValueError(f"outer_average must be an int >= 0, got {self.outer_average!r}")


@dataclass(frozen=True)
class DPSGD:
    """What one DP-SGD run needs: ``C``, ``σ``, the Poisson rate ``q`` and the DP generator.

    ``rng`` must be a cryptographically seeded generator
    (:func:`gossipfl.privacy.dp.noise_generator`), never one derived from a public seed: it draws
    both the Poisson batches and the noise.
    """

    clip_norm: float
    noise_multiplier: float
    sample_rate: float
    rng: np.random.Generator

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ValueError(f"clip_norm must be positive, got {self.clip_norm!r}")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}")
        if not 0 < self.sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Build the optax optimiser described by ``config``.

    Args:
        config: Training configuration.

    Returns:
        The gradient transformation.
    """
    lr = float(config.learning_rate)
    wd = float(config.weight_decay)
    if config.optimizer == "adam":
        return optax.adamw(lr, weight_decay=wd)
    momentum = MOMENTUM if config.optimizer == "momentum" else None
    return optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=momentum))
