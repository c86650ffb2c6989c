"""Differential privacy for node updates: clipping, Gaussian noise and ε accounting."""

from gossipfl.privacy.accountant import (
    BudgetExhausted,
    PrivacyBudget,
    epsilon_after,
    noise_for_budget,
)
from gossipfl.privacy.dp import (
    DPConfig,
    DPUpdateState,
    clip_update,
    dp_update_transform,
    gaussian_noise,
    gaussian_noise_transform,
    noise_stddev,
    privatise_update,
)

__all__ = [
    "BudgetExhausted",
    "DPConfig",
    "DPUpdateState",
    "PrivacyBudget",
    "clip_update",
    "dp_update_transform",
    "epsilon_after",
    "gaussian_noise",
    "gaussian_noise_transform",
    "noise_for_budget",
    "noise_stddev",
    "privatise_update",
]
