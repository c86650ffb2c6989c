"""A scenario's ``[baseline]``: how the centralised baseline its report compares against is
trained (:mod:`gossipfl.scenario.baseline`).

By default the baseline is the scenario's own model and ``[train]`` settings on the pooled
training data for ``rounds × local_epochs`` epochs: the passes the federation makes over its
data. A large task may set fewer epochs where pooled training has long converged, and other
settings where the federation's own diverge on pooled data (a step size that suits 1,000
members averaging their moves can be unstable for one model taking every minibatch):
``scenarios/scale1000_teacher.toml`` trains it 12 epochs with Adam at 0.001 in minibatches of
128, the strongest pooled training found for that task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gossipfl.config import ConfigError
from gossipfl.learning.train_config import OPTIMIZERS, TrainConfig


@dataclass(frozen=True)
class BaselineConfig:
    """``epochs`` (0: rounds × local_epochs); ``optimizer``, ``learning_rate`` and
    ``batch_size`` replace ``[train]``'s for the baseline alone ("" or 0: the scenario's)."""

    epochs: int = 0
    optimizer: str = ""
    learning_rate: float = 0.0
    batch_size: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError("baseline.epochs must be 0 (rounds × local_epochs) or positive")
        if self.optimizer and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"baseline.optimizer {self.optimizer!r}: expected one of "
                              f"{', '.join(OPTIMIZERS)} (or leave it out: [train]'s)")
        if self.learning_rate < 0 or self.batch_size < 0:
            raise ConfigError("baseline.learning_rate and baseline.batch_size must be positive "
                              "(or 0: [train]'s)")

    def train(self, scenario_train: TrainConfig) -> TrainConfig:
        """The settings the baseline trains with: ``scenario_train`` with these replacing it.

        >>> BaselineConfig(optimizer="adam").train(TrainConfig(learning_rate=0.1)).optimizer
        'adam'
        >>> BaselineConfig().train(TrainConfig(learning_rate=0.1)).learning_rate
        0.1
        """
        changed = {name: value for name, value in (
            ("optimizer", self.optimizer), ("learning_rate", self.learning_rate),
            ("batch_size", self.batch_size)) if value}
        return replace(scenario_train, **changed)

    def epochs_for(self, rounds: int, local_epochs: int) -> int:
        """``epochs``, else the federation's passes over its data (rounds × local_epochs)."""
        return self.epochs or rounds * local_epochs
