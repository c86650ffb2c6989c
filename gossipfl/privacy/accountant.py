"""Privacy accounting with dp-accounting's RDP accountant, for both units of privacy.

Record unit (:class:`RecordBudget`): every DP-SGD step is a Poisson-sampled Gaussian mechanism
(``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``, ``q = batch_size / records``), composed over
*all* the local steps a node takes in the whole run. ``σ`` is calibrated before the first step
(:func:`make_budget`): the smallest ``σ`` for which the planned steps
(``rounds × local_epochs × ⌈records / batch_size⌉``) stay within ``target_epsilon`` at ``delta``.
As a second guard, the trainer asks :meth:`RecordBudget.steps_allowed` before each round's
training and takes no step that would pass the target (training stops there; the node logs it).

Node unit (:class:`PrivacyBudget`): each round is one Gaussian mechanism on the node's update,
composed over the rounds the node contributed to. No round sampling (``q = 1``): a node that
sits rounds out is not implemented, so amplification by sampling is never claimed.

The conversion from RDP to ``(ε, δ)`` is the one of :class:`dp_accounting.rdp.RdpAccountant` with
its default orders. Results are cached, so repeated queries are cheap.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator

import dp_accounting
from dp_accounting.rdp import RdpAccountant

from gossipfl.privacy.dp import DPConfig, PrivacyUnit

__all__ = ["BudgetExhausted", "PrivacyBudget", "RecordBudget", "epsilon_after",
           "epsilon_for_steps", "make_budget", "noise_for_budget", "planned_steps"]

_MAX_NOISE_MULTIPLIER = 1e6
_SECANT_STEPS = 40  # queries after which the calibration only bisects (it then surely ends)


class BudgetExhausted(RuntimeError):
    """Spending another round (or step) would take ε past the target."""


def _check_count(count: int, minimum: int, name: str = "rounds") -> None:
    if not isinstance(count, int) or isinstance(count, bool) or count < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {count!r}")


@contextlib.contextmanager
def _quiet_rdp() -> Iterator[None]:
    """dp-accounting warns (through absl) for each fractional RDP order whose series does not
    converge (small orders at moderate q and σ); those orders are left out of ε, which stays a
    valid (if looser) bound, so the warnings are only noise in a node's log."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


@functools.lru_cache(maxsize=4096)
def _epsilon(count: int, noise_multiplier: float, delta: float, sampling_probability: float
             ) -> float:
    if count == 0:
        return 0.0
    event: dp_accounting.DpEvent = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_probability < 1:
        event = dp_accounting.PoissonSampledDpEvent(sampling_probability, event)
    accountant = RdpAccountant()
    with _quiet_rdp():
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def _sigma(config: DPConfig) -> float:
    if config.noise_multiplier is None:
        raise ValueError("privacy.noise_multiplier is not resolved yet: build the budget with "
                         "make_budget(), which calibrates it")
    return float(config.noise_multiplier)


def epsilon_after(rounds: int, config: DPConfig) -> float:
    """Node unit: the ``ε`` spent after ``rounds`` rounds (``q = 1``), at ``δ = config.delta``.

    Args:
        rounds: Rounds composed, ``≥ 0`` (0 gives 0).
        config: The privacy configuration with a resolved ``noise_multiplier``. A disabled
            config adds no noise: ``ε`` is infinite after any round.

    Raises:
        ValueError: ``rounds`` is not a non-negative integer.
    """
    _check_count(rounds, 0)
    if rounds > 0 and not config.enabled:
        return math.inf
    if rounds == 0:
        return 0.0
    return _epsilon(rounds, _sigma(config), float(config.delta), 1.0)


def epsilon_for_steps(steps: int, noise_multiplier: float, sample_rate: float, delta: float
                      ) -> float:
    """Record unit: ``ε`` after ``steps`` Poisson-sampled Gaussian steps, at ``delta``."""
    _check_count(steps, 0, "steps")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return _epsilon(steps, float(noise_multiplier), float(delta), float(sample_rate))


class PrivacyBudget:
    """Node unit: the rounds a node has spent against its ``(target_epsilon, delta)`` budget.

    Pure state, no I/O: the caller asks :meth:`can_spend` before contributing to a round and
    calls :meth:`spend` when it does. Once :meth:`can_spend` is False the node must stop sending
    anything that depends on its private data. :attr:`spent` (= :attr:`rounds_spent`) is what a
    checkpoint stores; ``PrivacyBudget(config, rounds_spent=n)`` restores it.
    """

    unit = PrivacyUnit.NODE

    def __init__(self, config: DPConfig, rounds_spent: int = 0) -> None:
        """Starts (or restores) a budget.

        Raises:
            ValueError: The config is disabled or has no ``noise_multiplier``, ``rounds_spent``
                is negative, or the rounds already spent exceed the target.
        """
        if not config.enabled:
            raise ValueError("PrivacyBudget needs privacy.enabled = true (no noise, no budget)")
        _sigma(config)
        _check_count(rounds_spent, 0)
        if epsilon_after(rounds_spent, config) > config.target_epsilon:
            raise ValueError(f"rounds_spent = {rounds_spent} already exceeds "
                             f"privacy.target_epsilon = {config.target_epsilon}")
        self.config = config
        self._rounds = rounds_spent

    @property
    def rounds_spent(self) -> int:
        """Rounds recorded so far."""
        return self._rounds

    @property
    def spent(self) -> int:
        """Rounds recorded so far (the count a checkpoint stores)."""
        return self._rounds

    @property
    def noise_multiplier(self) -> float:
        return _sigma(self.config)

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
        """Records one round; returns ``ε`` spent so far, this round included.

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


class RecordBudget:
    """Record unit: the DP-SGD steps a node has taken against its ``(target_epsilon, delta)``.

    Every step is accounted as ``PoissonSampledDpEvent(sample_rate, GaussianDpEvent(σ))``.
    :attr:`spent` is the step count a checkpoint stores; ``RecordBudget(config, sample_rate=q,
    noise_multiplier=σ, spent=n)`` (or :func:`make_budget` with ``spent=n``) restores it.
    """

    unit = PrivacyUnit.RECORD

    def __init__(self, config: DPConfig, *, sample_rate: float, noise_multiplier: float,
                 spent: int = 0) -> None:
        if not config.enabled or config.unit is not PrivacyUnit.RECORD:
            raise ValueError("RecordBudget needs privacy.enabled = true and unit = \"record\"")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be positive, got {noise_multiplier!r}")
        _check_count(spent, 0, "spent")
        self.config = config
        self.sample_rate = float(sample_rate)
        self.noise_multiplier = float(noise_multiplier)
        self._steps = spent
        self.exhausted = False  # set once a request for steps was cut short by the budget
        if self.epsilon() > config.target_epsilon:
            raise ValueError(f"spent = {spent} steps already exceeds "
                             f"privacy.target_epsilon = {config.target_epsilon}")

    @property
    def spent(self) -> int:
        """DP-SGD steps recorded so far."""
        return self._steps

    def _eps(self, steps: int) -> float:
        return epsilon_for_steps(steps, self.noise_multiplier, self.sample_rate,
                                 self.config.delta)

    def epsilon(self) -> float:
        """``ε`` spent so far (0 before the first step)."""
        return self._eps(self._steps)

    def can_spend(self, steps: int = 1) -> bool:
        return self._eps(self._steps + steps) <= self.config.target_epsilon

    def steps_allowed(self, wanted: int) -> int:
        """The most steps ``k ≤ wanted`` that keep ``ε ≤ target_epsilon`` (bisection)."""
        _check_count(wanted, 0, "wanted")
        if self.can_spend(wanted):
            return wanted
        self.exhausted = True
        low, high = 0, wanted  # can_spend(low) holds, can_spend(high) does not
        while high - low > 1:
            mid = (low + high) // 2
            if self.can_spend(mid):
                low = mid
            else:
                high = mid
        return low

    def spend(self, steps: int = 1) -> float:
        """Records ``steps`` steps; returns ``ε`` spent so far, these included.

        Raises:
            BudgetExhausted: They would take ``ε`` past the target; nothing is recorded.
        """
        _check_count(steps, 0, "steps")
        after = self._eps(self._steps + steps)
        if after > self.config.target_epsilon:
            raise BudgetExhausted(
                f"{steps} more DP-SGD steps would spend ε = {after:.4g} > privacy.target_epsilon"
                f" = {self.config.target_epsilon} (δ = {self.config.delta})")
        self._steps += steps
        return after

    def __repr__(self) -> str:
        return (f"RecordBudget(spent={self._steps}, q={self.sample_rate:.4g}, "
                f"σ={self.noise_multiplier:.4g}, epsilon={self.epsilon():.4g}, "
                f"target_epsilon={self.config.target_epsilon}, delta={self.config.delta})")


def noise_for_budget(
    rounds: int,
    target_epsilon: float,
    delta: float,
    sampling_probability: float = 1.0,
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier that keeps ``ε ≤ target_epsilon`` after ``rounds``
    compositions (node rounds, or DP-SGD steps with ``sampling_probability = q``).

    A bracketed search over ``σ`` (``ε`` decreases as ``σ`` grows; :func:`_smallest_meeting`).
    The answer is the upper end of the final bracket: it always meets the target, and
    ``σ − tolerance`` does not.

    Raises:
        ValueError: An argument breaks its rule, or no ``σ ≤ 1e6`` meets the target.
    """
    _check_count(rounds, 1)
    if not tolerance > 0:
        raise ValueError(f"tolerance must be positive, got {tolerance!r}")
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be positive, got {target_epsilon!r}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")
    if not 0 < sampling_probability <= 1:
        raise ValueError(f"sampling_probability must be in (0, 1], got {sampling_probability!r}")

    def excess(sigma: float) -> float:  # log(ε / target): ≤ 0 where σ meets the target
        epsilon = _epsilon(rounds, sigma, float(delta), float(sampling_probability))
        return math.log(epsilon / target_epsilon) if epsilon > 0 else -math.inf

    with _quiet_rdp():
        sigma = _smallest_meeting(excess, tolerance)
    if sigma is None:
        raise ValueError(f"no noise multiplier ≤ {_MAX_NOISE_MULTIPLIER:g} keeps "
                         f"ε ≤ {target_epsilon} over {rounds} rounds")
    return sigma


def _smallest_meeting(excess: Callable[[float], float], tolerance: float) -> float | None:
    """The upper end of a bracket ``[low, high]`` no wider than ``tolerance`` with
    ``excess(low) > 0 ≥ excess(high)``, for an ``excess`` (``log ε − log target``) that
    decreases as ``σ`` grows; None where no ``σ ≤ 1e6`` meets the target.

    Each accountant query costs up to 0.1 s of CPU (a node calibrates once, at its start), so
    the root is estimated by secant steps on ``log ε`` against ``log σ`` (``ε`` is close to a
    power of ``σ``), kept inside the bracket; once an estimate falls within ``tolerance`` of
    the last point, a probe just past it on the other side closes the bracket: 6-8 queries
    where bisection took 10-20, the same answer up to the tolerance.
    """
    low, high = 0.0, 1.0  # σ = 0 is no privacy at all: ε = ∞
    f_high = excess(high)
    points = [(high, f_high)]
    while f_high > 0:
        low, high = high, 2 * high
        if high > _MAX_NOISE_MULTIPLIER:
            return None
        f_high = excess(high)
        points.append((high, f_high))
    step = 0.75 * tolerance
    while high - low > tolerance:
        (s0, f0), (s1, f1) = points[-2] if len(points) > 1 else (0.0, math.inf), points[-1]
        guess = (low + high) / 2
        secant = s0 > 0 and math.isfinite(f0) and math.isfinite(f1) and f0 != f1
        if secant and len(points) < _SECANT_STEPS:
            slope = (f1 - f0) / (math.log(s1) - math.log(s0))
            guess = math.exp(max(-700.0, min(math.log(high), math.log(s1) - f1 / slope)))
            if abs(guess - s1) < step:  # the root is this close to s1: probe its other side
                guess = s1 - step if f1 <= 0 else s1 + step
        if high - low > 2 * step:  # an estimate at an end of the bracket: just inside it
            guess = min(max(guess, low + step), high - step)
        if not low < guess < high:
            guess = (low + high) / 2
        value = excess(guess)
        points.append((guess, value))
        if value <= 0:
            high = guess
        else:
            low = guess
    return high


def planned_steps(rounds: int, local_epochs: int, records: int, batch_size: int) -> int:
    """DP-SGD steps a node plans: ``rounds × local_epochs × ⌈records / batch_size⌉``."""
    return rounds * local_epochs * -(-records // batch_size)


def make_budget(config: DPConfig, *, rounds: int, records: int, batch_size: int,
                local_epochs: int, spent: int = 0) -> PrivacyBudget | RecordBudget:
    """The budget of one node, ``σ`` calibrated when ``config.noise_multiplier`` is None.

    Args:
        config: An enabled privacy configuration.
        rounds: Training rounds planned.
        records: The node's training records (record unit: ``q = batch_size / records``).
        batch_size: The expected DP-SGD batch size.
        local_epochs: Local epochs per round.
        spent: Rounds (node) or steps (record) already spent, when restoring a checkpoint.

    Raises:
        ValueError: The config is disabled, or (record unit) ``delta > 1/records``.
    """
    if not config.enabled:
        raise ValueError("a privacy budget needs privacy.enabled = true")
    if config.unit is PrivacyUnit.NODE:
        if config.noise_multiplier is None:
            sigma = noise_for_budget(max(rounds, 1), config.target_epsilon, config.delta)
            config = DPConfig(enabled=True, unit=PrivacyUnit.NODE, clip_norm=config.clip_norm,
                              noise_multiplier=sigma, delta=config.delta,
                              target_epsilon=config.target_epsilon,
                              distributed=config.distributed)
        return PrivacyBudget(config, rounds_spent=spent)
    _check_count(records, 1, "records")
    if config.delta > 1 / records:
        raise ValueError(f"privacy.delta = {config.delta:g} exceeds 1/records = {1 / records:.3g} "
                         f"({records} records at this node): with unit = \"record\" delta must "
                         "be at most 1/records")
    rate = min(1.0, batch_size / records)
    sigma = config.noise_multiplier
    if sigma is None:
        steps = planned_steps(max(rounds, 1), local_epochs, records, batch_size)
        sigma = noise_for_budget(steps, config.target_epsilon, config.delta,
                                 sampling_probability=rate)
    return RecordBudget(config, sample_rate=rate, noise_multiplier=float(sigma), spent=spent)
