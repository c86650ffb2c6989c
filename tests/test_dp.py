"""Tests of update-level differential privacy: clipping, noise, optax transform and accounting."""

from __future__ import annotations

import dataclasses
import math

import dp_accounting
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.privacy.accountant import (
    BudgetExhausted,
    PrivacyBudget,
    epsilon_after,
    noise_for_budget,
)
from gossipfl.privacy.dp import (
    DPConfig,
    clip_update,
    dp_update_transform,
    gaussian_noise,
    noise_stddev,
    privatise_update,
)


def dp(**overrides: object) -> DPConfig:
    return DPConfig(enabled=True, **overrides)  # type: ignore[arg-type]


# --- clipping -------------------------------------------------------------------------------------


def test_clip_long_vector_to_unit_norm_keeps_direction() -> None:
    update = np.array([3.0, 4.0], dtype=np.float32)  # norm 5
    clipped, norm = clip_update(update, 1.0)
    assert norm == 5.0
    assert clipped.dtype == np.float32
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=1e-7)
    assert np.linalg.norm(clipped) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(update, [3.0, 4.0])  # the input is not modified


def test_clip_short_vector_is_unchanged_copy() -> None:
    update = np.array([0.3, -0.4, 0.0], dtype=np.float32)  # norm 0.5
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped, update)
    assert clipped is not update
    clipped[0] = 9.0
    assert update[0] == np.float32(0.3)


def test_clip_zero_vector_stays_zero() -> None:
    with np.errstate(all="raise"):  # no division by zero, no invalid value
        clipped, norm = clip_update(np.zeros(7, dtype=np.float32), 0.5)
    assert norm == 0.0
    np.testing.assert_array_equal(clipped, np.zeros(7))


def test_clip_norm_is_over_all_elements_and_int_input_becomes_float32() -> None:
    clipped, norm = clip_update(np.array([[3, 0], [0, 4]]), 2.5)
    assert norm == 5.0
    assert clipped.dtype == np.float32
    np.testing.assert_allclose(clipped, [[1.5, 0.0], [0.0, 2.0]])


@pytest.mark.parametrize(("bad", "match"), [
    (np.array([1.0, np.nan]), "finite"),
    (np.array([np.inf, 0.0]), "finite"),
])
def test_clip_rejects_non_finite_update(bad: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        clip_update(bad, 1.0)


@pytest.mark.parametrize("clip", [0.0, -1.0, math.inf, math.nan])
def test_clip_rejects_bad_clip_norm(clip: float) -> None:
    with pytest.raises(ValueError, match="clip_norm must be a positive finite number"):
        clip_update(np.ones(3), clip)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float32, st.integers(1, 50),
               elements=st.floats(-1e6, 1e6, allow_nan=False, width=32)),
    st.floats(1e-3, 1e3),
)
def test_clip_property_norm_bound_and_direction(update: np.ndarray, clip: float) -> None:
    clipped, norm = clip_update(update, clip)
    assert norm == pytest.approx(float(np.linalg.norm(update.astype(np.float64))))
    new_norm = float(np.linalg.norm(clipped.astype(np.float64)))
    assert new_norm <= clip * (1 + 1e-6)
    if norm <= clip:
        np.testing.assert_array_equal(clipped, update)
    else:
        assert new_norm == pytest.approx(clip, rel=1e-6)
        np.testing.assert_allclose(clipped, update * (clip / norm), rtol=1e-6, atol=1e-30)


# --- noise ----------------------------------------------------------------------------------------


def test_gaussian_noise_empirical_stddev() -> None:
    rng = np.random.default_rng(1234)
    noise = gaussian_noise(200_000, 0.7, rng)
    assert noise.dtype == np.float32
    assert noise.shape == (200_000,)
    assert abs(float(noise.mean())) < 0.01
    assert float(noise.std()) == pytest.approx(0.7, rel=0.02)


def test_gaussian_noise_zero_stddev_and_shape() -> None:
    noise = gaussian_noise((3, 4), 0.0, np.random.default_rng(0))
    assert noise.shape == (3, 4)
    np.testing.assert_array_equal(noise, 0.0)


def test_gaussian_noise_is_reproducible_with_seed() -> None:
    a = gaussian_noise(10, 1.0, np.random.default_rng(5))
    b = gaussian_noise(10, 1.0, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


def test_gaussian_noise_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stddev must be a non-negative"):
        gaussian_noise(3, -0.1, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        gaussian_noise(3, 1.0, np.random.RandomState(0))  # type: ignore[arg-type]


def test_noise_stddev_central_distributed_and_disabled() -> None:
    config = dp(clip_norm=2.0, noise_multiplier=1.5)
    assert noise_stddev(config) == pytest.approx(3.0)
    assert noise_stddev(config, contributors=9) == pytest.approx(3.0)  # not distributed: ignored
    distributed = dataclasses.replace(config, distributed=True)
    assert noise_stddev(distributed, contributors=9) == pytest.approx(1.0)
    assert noise_stddev(distributed, contributors=1) == pytest.approx(3.0)
    assert noise_stddev(DPConfig(enabled=False)) == 0.0
    with pytest.raises(ValueError, match="contributors must be a positive integer"):
        noise_stddev(config, contributors=0)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_distributed_shares_sum_to_central_noise(n: int) -> None:
    config = dp(clip_norm=0.8, noise_multiplier=1.3, distributed=True)
    share = noise_stddev(config, contributors=n)
    rng = np.random.default_rng(n)
    total = sum(gaussian_noise(200_000, share, rng).astype(np.float64) for _ in range(n))
    assert float(total.std()) == pytest.approx(1.3 * 0.8, rel=0.02)
    assert share * math.sqrt(n) == pytest.approx(1.3 * 0.8)


def test_privatise_update_is_clip_plus_noise() -> None:
    config = dp(clip_norm=1.0, noise_multiplier=0.5)
    update = np.full(200_000, 3.0, dtype=np.float32)  # far beyond the clip
    out = privatise_update(update, config, np.random.default_rng(7))
    assert out.dtype == np.float32
    clipped, _ = clip_update(update, 1.0)
    residual = (out - clipped).astype(np.float64)
    assert float(residual.std()) == pytest.approx(0.5, rel=0.02)
    # Same seed, same draw: clip, then exactly the noise gaussian_noise would give.
    expected = clipped + gaussian_noise(update.shape, 0.5, np.random.default_rng(7))
    np.testing.assert_array_equal(out, expected)


def test_privatise_update_disabled_is_identity() -> None:
    update = np.array([30.0, -40.0], dtype=np.float64)
    out = privatise_update(update, DPConfig(enabled=False), np.random.default_rng(0))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, update)


# --- optax transform ------------------------------------------------------------------------------


def _flat(tree: dict[str, jnp.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(tree[k]).ravel() for k in sorted(tree)])


@pytest.mark.parametrize("scale", [0.1, 1.0, 40.0])
def test_optax_transform_clipping_matches_privatise_update(scale: float) -> None:
    rng = np.random.default_rng(3)
    tree = {"a": rng.standard_normal((4, 5)).astype(np.float32) * scale,
            "b": rng.standard_normal(6).astype(np.float32) * scale}
    config = dp(clip_norm=2.0, noise_multiplier=1.0)
    transform = dp_update_transform(2.0, 0.0, seed=0)
    updates = {k: jnp.asarray(v) for k, v in tree.items()}
    out, _ = transform.update(updates, transform.init(updates))
    expected, _ = clip_update(_flat(tree), config.clip_norm)
    # privatise_update with zero noise = the clipping alone
    zero_noise = dataclasses.replace(config, noise_multiplier=1e-300)
    via_privatise = privatise_update(_flat(tree), zero_noise, np.random.default_rng(0))
    np.testing.assert_allclose(_flat(out), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_flat(out), via_privatise, rtol=1e-6, atol=1e-7)


def test_optax_transform_noise_distribution_matches_privatise_update() -> None:
    clip, stddev, size = 1.0, 0.05, 50_000
    update = np.full(size, 10.0, dtype=np.float32)
    transform = dp_update_transform(clip, stddev, seed=11)
    state = transform.init({"w": jnp.asarray(update)})
    config = dp(clip_norm=clip, noise_multiplier=stddev / clip)
    rng = np.random.default_rng(11)
    optax_norms, numpy_norms, draws = [], [], []
    for _ in range(20):
        out, state = transform.update({"w": jnp.asarray(update)}, state)
        draws.append(np.asarray(out["w"]))
        optax_norms.append(float(np.linalg.norm(draws[-1])))
        numpy_norms.append(float(np.linalg.norm(privatise_update(update, config, rng))))
    # ‖clip(u) + noise‖² ≈ C² + d·s² for both
    expected = math.sqrt(clip**2 + size * stddev**2)
    assert np.mean(optax_norms) == pytest.approx(expected, rel=0.01)
    assert np.mean(numpy_norms) == pytest.approx(expected, rel=0.01)
    residual = draws[0] - update * (clip / np.linalg.norm(update.astype(np.float64)))
    assert float(residual.std()) == pytest.approx(stddev, rel=0.02)
    assert not np.array_equal(draws[0], draws[1])  # the key advances between calls


def test_optax_transform_zero_update_and_bad_arguments() -> None:
    transform = dp_update_transform(1.0, 0.0, seed=0)
    zeros = {"w": jnp.zeros(5)}
    out, _ = transform.update(zeros, transform.init(zeros))
    np.testing.assert_array_equal(np.asarray(out["w"]), 0.0)
    with pytest.raises(ValueError, match="clip_norm"):
        dp_update_transform(0.0, 1.0, seed=0)
    with pytest.raises(ValueError, match="stddev"):
        dp_update_transform(1.0, -1.0, seed=0)


# --- accounting -----------------------------------------------------------------------------------


def _direct_epsilon(rounds: int, sigma: float, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma), rounds))
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize(("rounds", "sigma", "delta"), [
    (1, 1.0, 1e-5), (30, 1.0, 1e-5), (30, 3.5, 1e-5), (100, 2.0, 1e-6), (7, 0.7, 1e-3),
])
def test_epsilon_after_matches_direct_dp_accounting(rounds: int, sigma: float, delta: float
                                                    ) -> None:
    config = dp(noise_multiplier=sigma, delta=delta)
    assert epsilon_after(rounds, config) == pytest.approx(
        _direct_epsilon(rounds, sigma, delta), rel=0, abs=1e-9)


def test_epsilon_after_with_sampling_matches_direct_and_is_smaller() -> None:
    config = dp(noise_multiplier=1.0, sampling_probability=0.1)
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.1, dp_accounting.GaussianDpEvent(1.0)), 50))
    assert epsilon_after(50, config) == pytest.approx(accountant.get_epsilon(1e-5), abs=1e-9)
    assert epsilon_after(50, config) < epsilon_after(50, dp(noise_multiplier=1.0))


def test_epsilon_after_zero_rounds_disabled_and_bad_rounds() -> None:
    assert epsilon_after(0, dp()) == 0.0
    assert epsilon_after(3, DPConfig(enabled=False)) == math.inf
    with pytest.raises(ValueError, match="rounds must be an integer"):
        epsilon_after(-1, dp())


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.floats(0.5, 5.0), st.sampled_from([1e-5, 1e-6]))
def test_epsilon_increases_with_rounds_and_decreases_with_sigma(
    rounds: int, sigma: float, delta: float
) -> None:
    config = dp(noise_multiplier=sigma, delta=delta)
    eps = epsilon_after(rounds, config)
    assert eps > 0
    assert epsilon_after(rounds + 1, config) > eps
    assert epsilon_after(rounds, dataclasses.replace(config, noise_multiplier=sigma * 1.1)) < eps


@pytest.mark.parametrize(("sigma", "target"), [(2.0, 8.0), (1.0, 8.0), (3.5, 2.0)])
def test_budget_stops_exactly_before_the_round_that_exceeds(sigma: float, target: float) -> None:
    config = dp(noise_multiplier=sigma, target_epsilon=target)
    last_ok = 0
    while epsilon_after(last_ok + 1, config) <= target:
        last_ok += 1
    assert last_ok >= 1
    budget = PrivacyBudget(config)
    assert budget.rounds_spent == 0
    assert budget.epsilon() == 0.0
    for r in range(1, last_ok + 1):
        assert budget.can_spend()
        assert budget.spend() == epsilon_after(r, config)
        assert budget.rounds_spent == r
        assert budget.epsilon() == epsilon_after(r, config) <= target
    assert not budget.can_spend()
    with pytest.raises(BudgetExhausted, match="would spend"):
        budget.spend()
    assert budget.rounds_spent == last_ok  # a refused round is not recorded


def test_budget_that_cannot_afford_one_round() -> None:
    budget = PrivacyBudget(dp(noise_multiplier=0.3, target_epsilon=1.0))
    assert not budget.can_spend()
    with pytest.raises(BudgetExhausted):
        budget.spend()


def test_budget_rejects_disabled_config_and_overspent_restore() -> None:
    with pytest.raises(ValueError, match="enabled"):
        PrivacyBudget(DPConfig(enabled=False))
    with pytest.raises(ValueError, match="already exceeds"):
        PrivacyBudget(dp(noise_multiplier=1.0, target_epsilon=8.0), rounds_spent=1000)
    assert PrivacyBudget(dp(noise_multiplier=3.0), rounds_spent=5).rounds_spent == 5


@pytest.mark.parametrize(("rounds", "target", "delta", "q"), [
    (30, 8.0, 1e-5, 1.0), (40, 8.0, 1e-5, 1.0), (60, 8.0, 1e-5, 1.0), (10, 1.0, 1e-6, 1.0),
    (100, 3.0, 1e-5, 0.2),
])
def test_noise_for_budget_is_tight(rounds: int, target: float, delta: float, q: float) -> None:
    sigma = noise_for_budget(rounds, target, delta, sampling_probability=q)
    config = dp(noise_multiplier=sigma, delta=delta, target_epsilon=target,
                sampling_probability=q)
    assert epsilon_after(rounds, config) <= target
    lower = dataclasses.replace(config, noise_multiplier=sigma - 0.01)
    assert epsilon_after(rounds, lower) > target
    tighter = dataclasses.replace(config, noise_multiplier=sigma - 1e-3)
    assert epsilon_after(rounds, tighter) > target  # within the bisection tolerance
    budget = PrivacyBudget(config)
    for _ in range(rounds):
        budget.spend()
    assert budget.epsilon() <= target


def test_noise_for_budget_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds must be an integer ≥ 1"):
        noise_for_budget(0, 8.0, 1e-5)
    with pytest.raises(ValueError, match="target_epsilon must be positive"):
        noise_for_budget(10, 0.0, 1e-5)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        noise_for_budget(10, 8.0, 1.0)


# --- configuration --------------------------------------------------------------------------------


def test_default_config_is_valid_and_disabled() -> None:
    config = DPConfig()
    assert not config.enabled
    assert config.clip_norm == 1.0
    assert config.noise_multiplier == 1.0
    assert config.delta == 1e-5
    assert config.target_epsilon == 8.0
    assert config.sampling_probability == 1.0
    assert not config.distributed


@pytest.mark.parametrize(("overrides", "match"), [
    ({"clip_norm": -1.0}, "clip_norm must be positive"),
    ({"clip_norm": 0.0}, "clip_norm must be positive"),
    ({"clip_norm": math.inf}, "clip_norm must be a finite number"),
    ({"noise_multiplier": -0.5}, "noise_multiplier must be non-negative"),
    ({"noise_multiplier": 0.0, "enabled": True}, "noise_multiplier must be positive when"),
    ({"noise_multiplier": math.nan}, "noise_multiplier must be a finite number"),
    ({"delta": 1.0}, r"delta must be in \(0, 1\)"),
    ({"delta": 0.0}, r"delta must be in \(0, 1\)"),
    ({"target_epsilon": 0.0}, "target_epsilon must be positive"),
    ({"target_epsilon": -3.0}, "target_epsilon must be positive"),
    ({"sampling_probability": 0.0}, r"sampling_probability must be in \(0, 1\]"),
    ({"sampling_probability": 1.5}, r"sampling_probability must be in \(0, 1\]"),
    ({"enabled": "yes"}, "enabled must be a bool"),
    ({"distributed": 1}, "distributed must be a bool"),
    ({"clip_norm": "1.0"}, "clip_norm must be a finite number"),
])
def test_config_validation(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DPConfig(**overrides)  # type: ignore[arg-type]


def test_config_allows_zero_noise_when_disabled_and_is_frozen() -> None:
    config = DPConfig(noise_multiplier=0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.clip_norm = 2.0  # type: ignore[misc]
