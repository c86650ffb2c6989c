"""Privacy accounting over rounds: RDP composition of the per-round Gaussian mechanism.

Each round a node releases one privatised update (:func:`gossipfl.privacy.dp.privatise_update`):
a Gaussian mechanism with noise multiplier ``σ`` on an update of L2 sensitivity ``C`` (add/remove
relation). With ``sampling_probability = q < 1`` the node takes part in each round independently
with probability ``q``, which is accounted as a Poisson-sampled Gaussian. The ``rounds`` composed
are all the rounds *offered*, taken part in or not: call :meth:`PrivacyBudget.spend` every round.

Amplification by sampling assumes that whether the node took part is secret. In plain gossip the
neighbours see whether a message arrived, so ``q < 1`` is only valid if a node that sits a round
out still sends something indistinguishable from a real contribution (or the sum is secure);
otherwise use ``q = 1``.

The conversion from RDP to ``(ε, δ)`` is the one of :class:`dp_accounting.rdp.RdpAccountant` with
its default orders. Results are cached, so repeated queries are cheap.
"""

from __future__ import annotations

import functools
import math

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from gossipfl.privacy.dp import DPConfig

__all__ = ["BudgetExhausted", "PrivacyBudget", "epsilon_after", "noise_for_budget"]

_MAX_NOISE_MULTIPLIER = 1e6


class BudgetExhausted(RuntimeError):
    """Spending another round would take ε past the target."""


def _check_rounds(rounds: int, minimum: int) -> None:
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < minimum:
        raise ValueError(f"rounds must be an integer ≥ {minimum}, got {rounds!r}")


@functools.lru_cache(maxsize=4096)
def _epsilon(rounds: int, noise_multiplier: float, delta: float, sampling_probability: float
             ) -> float:
    if rounds == 0:
        return 0.0
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_probability < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_probability, event)
    accountant = RdpAccountant()
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(delta))


def epsilon_after(rounds: int, config: DPConfig) -> float:
    """The ``ε`` spent after ``rounds`` rounds, at ``δ = config.delta``.

    Args:
        rounds: Rounds composed, ``≥ 0`` (0 gives 0).
        config: The privacy configuration (``noise_multiplier``, ``delta``,
            ``sampling_probability``). A disabled config adds no noise: ``ε`` is infinite after
            any round.

    Returns:
        ``ε`` of the RDP accountant.

    Raises:
        ValueError: ``rounds`` is not a non-negative integer.
    """
    _check_rounds(rounds, 0)
    if rounds > 0 and not config.enabled:
        return math.inf
    return _epsilon(rounds, float(config.noise_multiplier), float(config.delta),
                    float(config.sampling_probability))


class PrivacyBudget:
    """The rounds a node has spent against its ``(target_epsilon, delta)`` budget.

    Pure state, no I/O: the caller asks :meth:`can_spend` before contributing to a round and
    calls :meth:`spend` when it does. Once :meth:`can_spend` is False the node must stop sending
    anything that depends on its private data.

    Attributes:
        config: The privacy configuration (must be enabled).
    """

    def __init__(self, config: DPConfig, rounds_spent: int = 0) -> None:
        """Starts (or restores) a budget.

        Args:
            config: The privacy configuration; must be enabled.
            rounds_spent: Rounds already spent, e.g. when restoring from a checkpoint.

        Raises:
            ValueError: The config is disabled, ``rounds_spent`` is negative, or the rounds already
                spent exceed the target.
        """
        if not config.enabled:
            raise ValueError("PrivacyBudget needs privacy.enabled = true (no noise, no budget)")
        _check_rounds(rounds_spent, 0)
        if epsilon_after(rounds_spent, config) > config.target_epsilon:
            raise ValueError(f"rounds_spent = {rounds_spent} already exceeds "
                             f"privacy.target_epsilon = {config.target_epsilon}")
        self.config = config
        self._rounds = rounds_spent

    @property
    def rounds_spent(self) -> int:
        """Rounds recorded so far."""
        return self._rounds

    def epsilon(self) -> float:
        """``ε`` spent so far (0 before the first round)."""
        return epsilon_after(self._rounds, self.config)

    def next_epsilon(self) -> float:
        """``ε`` after one more round."""
        return epsilon_after(self._rounds + 1, self.config)

    def can_spend(self) -> bool:
        """Whether one more round keeps ``ε ≤ target_epsilon``."""
        return self.next_epsilon() <= self.config.target_epsilon

    def spend(self) -> float:
        """Records one round.

        Returns:
            ``ε`` spent so far, this round included.

        Raises:
            BudgetExhausted: The round would take ``ε`` past the target; nothing is recorded.
        """
        after = self.next_epsilon()
        if after > self.config.target_epsilon:
            raise BudgetExhausted(
                f"round {self._rounds + 1} would spend ε = {after:.4g} > privacy.target_epsilon = "
                f"{self.config.target_epsilon} (δ = {self.config.delta}); the node must stop "
                "contributing")
        self._rounds += 1
        return after

    def __repr__(self) -> str:
        return (f"PrivacyBudget(rounds_spent={self._rounds}, epsilon={self.epsilon():.4g}, "
                f"target_epsilon={self.config.target_epsilon}, delta={self.config.delta})")


def noise_for_budget(
    rounds: int,
    target_epsilon: float,
    delta: float,
    sampling_probability: float = 1.0,
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier that keeps ``ε ≤ target_epsilon`` after ``rounds`` rounds.

    Bisection over ``σ`` (``ε`` decreases as ``σ`` grows). The answer is the upper end of the
    final bracket: it always meets the target, and ``σ − tolerance`` does not.

    Args:
        rounds: Rounds to last, ``≥ 1``.
        target_epsilon: The ``ε`` budget, positive.
        delta: The ``δ``, in (0, 1).
        sampling_probability: ``q`` in (0, 1], as in :class:`DPConfig`.
        tolerance: Width of the final bracket, positive.

    Returns:
        ``σ``, to be used as ``DPConfig.noise_multiplier``.

    Raises:
        ValueError: An argument breaks its rule, or no ``σ ≤ 1e6`` meets the target.
    """
    _check_rounds(rounds, 1)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}")
    # DPConfig validates target_epsilon, delta and sampling_probability for us.
    config = DPConfig(enabled=True, delta=delta, target_epsilon=target_epsilon,
                      sampling_probability=sampling_probability)

    def meets(sigma: float) -> bool:
        return _epsilon(rounds, sigma, float(delta), float(sampling_probability)) <= target_epsilon

    low, high = 0.0, 1.0  # σ = 0 is no privacy at all: ε = ∞
    while not meets(high):
        low, high = high, 2 * high
        if high > _MAX_NOISE_MULTIPLIER:
            raise ValueError(f"no noise multiplier ≤ {_MAX_NOISE_MULTIPLIER:g} keeps "
                             f"ε ≤ {config.target_epsilon} over {rounds} rounds")
    while high - low > tolerance:
        mid = (low + high) / 2
        if meets(mid):
            high = mid
        else:
            low = mid
    return high
