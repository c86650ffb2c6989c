"""Tests of differential privacy: node-level clipping, noise and accounting over rounds, the
configuration rules of both units, record-level accounting (Poisson-sampled Gaussian per DP-SGD
step), the Poisson sampler, per-example clipping, the node's privacy step and its noise source.
The DP-SGD step inside the trainer is tested in test_learning.py."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import dp_accounting
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    NodeConfig,
    dump_toml,
    from_dict,
    to_dict,
)
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.node.learner import LocalLearner
from gossipfl.node.resume import restore
from gossipfl.node.round import persist_round, privacy_step, record_dp
from gossipfl.node.runtime import Node
from gossipfl.node.summary import privacy_summary
from gossipfl.privacy.accountant import (
    BudgetExhausted,
    PrivacyBudget,
    RecordBudget,
    _smallest_meeting,
    epsilon_after,
    epsilon_for_steps,
    make_budget,
    noise_for_budget,
    planned_steps,
)
from gossipfl.privacy.dp import (
    DPConfig,
    PrivacyUnit,
    clip_per_example,
    clip_update,
    gaussian_noise,
    noise_generator,
    noise_stddev,
    noisy_mean,
    padded_batch_size,
    poisson_sample,
    privatise_update,
)


def dp(**overrides: object) -> DPConfig:
    """An enabled node-level config (σ = 1 unless given)."""
    overrides.setdefault("unit", "node")
    overrides.setdefault("noise_multiplier", 1.0)
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
    with pytest.raises(ValueError, match="resolved"):
        noise_stddev(DPConfig(enabled=True, unit="node"))
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


def test_node_level_sampling_below_one_is_refused_with_the_rule() -> None:
    # issue 8 point 4: q = 0.05 over 30 rounds was reported as ε 2.7 where ε 39.8 was spent
    with pytest.raises(ValueError, match=r"sampling_probability = 0.05 refused: .*no node skips"):
        dp(sampling_probability=0.05)
    assert dp(sampling_probability=1.0).sampling_probability == 1.0
    assert epsilon_after(30, dp(noise_multiplier=1.0)) == pytest.approx(39.83, abs=0.01)


def test_record_unit_refuses_sampling_probability_and_distributed() -> None:
    with pytest.raises(ValueError, match=r"sampling_probability does not apply with unit = "
                       r"\"record\": the Poisson rate is batch_size / records"):
        DPConfig(enabled=True, sampling_probability=1.0)
    with pytest.raises(ValueError, match="distributed applies only with unit"):
        DPConfig(enabled=True, distributed=True)
    with pytest.raises(ValueError, match=r"privacy\.unit must be one of"):
        DPConfig(unit="user")
    assert DPConfig(unit="node").unit is PrivacyUnit.NODE


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


@pytest.mark.parametrize(("rounds", "target", "delta"), [
    (30, 8.0, 1e-5), (40, 8.0, 1e-5), (60, 8.0, 1e-5), (10, 1.0, 1e-6),
])
def test_noise_for_budget_is_tight(rounds: int, target: float, delta: float) -> None:
    sigma = noise_for_budget(rounds, target, delta)
    config = dp(noise_multiplier=sigma, delta=delta, target_epsilon=target)
    assert epsilon_after(rounds, config) <= target
    lower = dataclasses.replace(config, noise_multiplier=sigma - 0.01)
    assert epsilon_after(rounds, lower) > target
    tighter = dataclasses.replace(config, noise_multiplier=sigma - 1e-3)
    assert epsilon_after(rounds, tighter) > target  # within the bisection tolerance
    budget = PrivacyBudget(config)
    for _ in range(rounds):
        budget.spend()
    assert budget.epsilon() <= target
    assert budget.spent == budget.rounds_spent == rounds


def test_noise_for_budget_with_poisson_sampling_is_tight() -> None:
    steps, q = 1000, 0.02
    sigma = noise_for_budget(steps, 8.0, 1e-5, sampling_probability=q)
    assert epsilon_for_steps(steps, sigma, q, 1e-5) <= 8.0
    assert epsilon_for_steps(steps, sigma - 1e-3, q, 1e-5) > 8.0


@settings(max_examples=200, deadline=None)
@given(root=st.floats(1e-3, 5e4), power=st.floats(0.3, 4.0), curve=st.floats(-0.5, 0.5),
       tolerance=st.sampled_from([1e-3, 1e-2]))
def test_the_calibration_search_brackets_the_root_within_the_tolerance_in_few_queries(
        root: float, power: float, curve: float, tolerance: float) -> None:
    """On ``log ε − log target`` shaped like the accountant's (a power of σ, bent in log-log),
    the answer meets the target and the tolerance below it does not, and once the doubling has
    bracketed the root (σ = 1, 2, 4, ...), at most 8 more queries close the bracket, where
    bisection takes log2(width / tolerance): 10-17 here (20,000 random cases: at most 7)."""
    queries: list[float] = []

    def excess(sigma: float) -> float:
        queries.append(sigma)
        x = math.log(sigma / root)
        return -power * x * (1 + curve * math.tanh(x))  # decreasing for |curve| < 0.69

    sigma = _smallest_meeting(excess, tolerance)
    assert sigma is not None and root <= sigma <= root + tolerance * (1 + 1e-9)
    doubling = 1 + max(0, math.ceil(math.log2(root)))  # σ = 1, then up to the first that meets
    assert queries[:doubling] == [2.0 ** k for k in range(doubling)]
    assert len(queries) - doubling <= 8


def test_the_calibration_search_gives_none_past_the_largest_noise() -> None:
    assert _smallest_meeting(lambda sigma: 1.0, 1e-3) is None


def test_noise_for_budget_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rounds must be an integer ≥ 1"):
        noise_for_budget(0, 8.0, 1e-5)
    with pytest.raises(ValueError, match="target_epsilon must be positive"):
        noise_for_budget(10, 0.0, 1e-5)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        noise_for_budget(10, 8.0, 1.0)


# --- configuration --------------------------------------------------------------------------------


def test_default_config_is_valid_disabled_and_record_level() -> None:
    config = DPConfig()
    assert not config.enabled
    assert config.unit is PrivacyUnit.RECORD
    assert config.clip_norm == 1.0
    assert config.noise_multiplier is None  # calibrated from the budget and the plan
    assert config.delta == 1e-5
    assert config.target_epsilon == 8.0
    assert config.sampling_probability is None
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
    ({"unit": "node", "sampling_probability": 0.0}, r"sampling_probability must be in \(0, 1\]"),
    ({"unit": "node", "sampling_probability": 1.5}, r"sampling_probability must be in \(0, 1\]"),
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


# --- record level: sampling, clipping, accounting ---------------------------------------------


def test_poisson_sample_statistics() -> None:
    rng = np.random.default_rng(5)
    records, rate, draws = 2000, 0.05, 400
    sizes, hits = [], np.zeros(records)
    for _ in range(draws):
        chosen = poisson_sample(records, rate, rng)
        assert np.all(np.diff(chosen) > 0)  # each record at most once a batch
        assert chosen.max(initial=0) < records
        sizes.append(len(chosen))
        hits[chosen] += 1
    # size ~ Binomial(2000, 0.05): mean 100, variance 95; each record in w.p. 0.05
    assert np.mean(sizes) == pytest.approx(100, abs=2.5)
    assert np.var(sizes) == pytest.approx(95, rel=0.25)
    assert hits.mean() / draws == pytest.approx(rate, rel=0.05)
    assert len(set(sizes)) > 10  # the batch size really varies (no fixed-size batches)
    with pytest.raises(ValueError, match="rate"):
        poisson_sample(10, 0.0, rng)


def test_padded_batch_size_bound() -> None:
    assert padded_batch_size(256, 12_000) == 256 + 64  # B + 4√B
    assert padded_batch_size(100, 110) == 110  # never more rows than records
    assert padded_batch_size(2.5, 1000) == math.ceil(2.5 + 4 * math.sqrt(2.5))


def test_clip_per_example_bounds_each_example_and_sums_masked() -> None:
    rng = np.random.default_rng(0)
    grads = {"w": jnp.asarray(rng.standard_normal((5, 3, 2)) * [[[0.1]], [[1]], [[3]], [[9]],
                                                               [[0.01]]]),
             "b": jnp.asarray(rng.standard_normal((5, 4)))}
    clip = 1.5
    by_hand = []
    for i in range(5):
        onehot = jnp.zeros(5).at[i].set(1.0)
        clipped, norms = clip_per_example(grads, clip, onehot)
        flat = np.concatenate([np.asarray(clipped["b"]).ravel(), np.asarray(clipped["w"]).ravel()])
        raw = np.concatenate([np.asarray(grads["b"][i]).ravel(), np.asarray(grads["w"][i]).ravel()])
        assert float(norms[i]) == pytest.approx(np.linalg.norm(raw), rel=1e-5)
        assert np.linalg.norm(flat) <= clip * (1 + 1e-5)
        np.testing.assert_allclose(flat, raw * min(1.0, clip / np.linalg.norm(raw)), rtol=1e-5)
        by_hand.append(flat)
    mask = jnp.asarray([1.0, 0.0, 1.0, 1.0, 0.0])
    summed, _ = clip_per_example(grads, clip, mask)
    flat = np.concatenate([np.asarray(summed["b"]).ravel(), np.asarray(summed["w"]).ravel()])
    np.testing.assert_allclose(flat, by_hand[0] + by_hand[2] + by_hand[3], rtol=1e-5, atol=1e-6)


def test_noisy_mean_divides_by_the_expected_batch() -> None:
    out = noisy_mean({"w": jnp.asarray([2.0, 4.0])}, {"w": jnp.asarray([1.0, -1.0])}, 0.5, 4.0)
    np.testing.assert_allclose(np.asarray(out["w"]), [(2 + 0.5) / 4, (4 - 0.5) / 4])


def _direct_poisson_epsilon(steps: int, q: float, sigma: float, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps))
    return accountant.get_epsilon(delta)


def test_record_budget_matches_dp_accounting_and_restores() -> None:
    config = DPConfig(enabled=True, noise_multiplier=0.9)
    budget = RecordBudget(config, sample_rate=256 / 12_000, noise_multiplier=0.9)
    assert budget.spent == 0 and budget.epsilon() == 0.0
    assert budget.spend(500) == pytest.approx(
        _direct_poisson_epsilon(500, 256 / 12_000, 0.9, 1e-5), abs=1e-9)
    assert budget.spent == 500
    restored = RecordBudget(config, sample_rate=256 / 12_000, noise_multiplier=0.9,
                            spent=budget.spent)
    assert restored.epsilon() == budget.epsilon()


def test_make_budget_calibrates_sigma_for_the_planned_steps() -> None:
    budget = make_budget(DPConfig(enabled=True), rounds=30, records=6000, batch_size=256,
                         local_epochs=1)
    assert isinstance(budget, RecordBudget)
    steps = planned_steps(30, 1, 6000, 256)
    assert steps == 30 * 24
    assert budget.sample_rate == pytest.approx(256 / 6000)
    eps = _direct_poisson_epsilon(steps, 256 / 6000, budget.noise_multiplier, 1e-5)
    assert 7.9 < eps <= 8.0  # all the planned steps fit, tightly
    assert budget.steps_allowed(steps) == steps and not budget.exhausted
    budget.spend(steps)
    assert budget.steps_allowed(50) < 5 and budget.exhausted  # ε is at the target: σ's bracket
    with pytest.raises(BudgetExhausted, match="more DP-SGD steps"):
        budget.spend(50)
    assert budget.spent == steps  # a refused spend records nothing


def test_record_budget_stops_at_the_step_that_would_exceed() -> None:
    config = DPConfig(enabled=True, target_epsilon=2.0)
    budget = RecordBudget(config, sample_rate=0.05, noise_multiplier=1.0)
    allowed = budget.steps_allowed(10_000)
    assert 0 < allowed < 10_000
    assert epsilon_for_steps(allowed, 1.0, 0.05, 1e-5) <= 2.0
    assert epsilon_for_steps(allowed + 1, 1.0, 0.05, 1e-5) > 2.0


def test_make_budget_refuses_delta_above_one_over_records() -> None:
    with pytest.raises(ValueError, match=r"delta = 0.001 exceeds 1/records"):
        make_budget(DPConfig(enabled=True, delta=1e-3), rounds=10, records=5000, batch_size=64,
                    local_epochs=1)
    node = make_budget(dp(noise_multiplier=None), rounds=30, records=10, batch_size=64,
                       local_epochs=1)
    assert isinstance(node, PrivacyBudget)
    assert node.noise_multiplier == pytest.approx(noise_for_budget(30, 8.0, 1e-5))


# --- the node: privacy step and noise source --------------------------------------------------


def _node(tmp_path: Path, unit: str) -> Node:
    key_file = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key_file)
    privacy = DPConfig(enabled=True, unit=unit, delta=1e-3,
                       noise_multiplier=1.0 if unit == "node" else None)
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path), seed=3,
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        privacy=privacy,
    )
    return Node(config, identity, LocalLearner(config))


def test_record_mode_privacy_step_adds_no_second_noise(tmp_path: Path) -> None:
    node = _node(tmp_path, "record")
    assert isinstance(node.budget, RecordBudget)
    result = node.learner.train(node.model, 0, None, record_dp(node))
    assert node.budget.spent == node.learner.steps_per_epoch  # one local epoch of DP-SGD
    assert result.epochs == 1.0
    record: dict[str, object] = {}
    assert privacy_step(node, 0, True, record) is None  # the delta is published as is
    assert record["epsilon"] == node.budget.epsilon() > 0
    summary = privacy_summary(node)
    assert summary["unit"] == "record" and summary["steps_spent"] == node.budget.spent
    assert summary["sampling"] == "poisson"


def test_node_mode_privacy_step_noises_and_spends_a_round(tmp_path: Path) -> None:
    node = _node(tmp_path, "node")
    assert record_dp(node) is None  # no DP-SGD in local training
    step = privacy_step(node, 0, True, {})
    assert step is not None and node.budget.rounds_spent == 1
    delta = np.zeros(50, np.float32)
    assert float(np.std(step(delta))) > 0.5  # σ·C = 1


def test_two_nodes_with_the_same_config_draw_different_noise(tmp_path: Path) -> None:
    a = _node(tmp_path / "a", "record")
    b = _node(tmp_path / "b", "record")
    assert a.config.seed == b.config.seed == 3
    assert not np.array_equal(a.dp_rng.standard_normal(8), b.dp_rng.standard_normal(8))
    trained_a = a.learner.train(a.model, 0, None, record_dp(a)).vector
    trained_b = b.learner.train(b.model, 0, None, record_dp(b)).vector
    assert not np.allclose(trained_a, trained_b)  # same data, same seed: different DP draws
    draws = {noise_generator().integers(0, 2**62) for _ in range(4)}
    assert len(draws) == 4


def test_record_budget_survives_a_checkpoint_and_restart(tmp_path: Path) -> None:
    node = _node(tmp_path, "record")
    node.model = node.learner.train(node.model, 0, None, record_dp(node)).vector
    spent, sigma = node.budget.spent, node.budget.noise_multiplier
    assert spent > 0
    persist_round(node, 0)
    again = _node(tmp_path, "record")  # same folder and key: a restart
    assert again.budget.spent == 0
    restore(again)
    assert isinstance(again.budget, RecordBudget)
    assert again.budget.spent == spent and again.budget.noise_multiplier == sigma
    assert again.budget.epsilon() == node.budget.epsilon()


def test_training_stops_at_the_budget_and_the_round_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    node = _node(tmp_path, "record")
    records = len(node.learner.y)
    # σ given: a target that one epoch's steps would pass, so the round is cut short
    node.budget = RecordBudget(dataclasses.replace(node.budget.config, target_epsilon=0.5),
                               sample_rate=node.budget.sample_rate, noise_multiplier=0.7)
    wanted = node.learner.steps_per_epoch * node.config.train.local_epochs
    allowed = node.budget.steps_allowed(wanted)
    node.budget.exhausted = False
    assert allowed < wanted, (records, wanted)
    with caplog.at_level("WARNING"):
        result = node.learner.train(node.model, 0, None, record_dp(node))
    assert node.budget.spent == allowed and node.budget.epsilon() <= 0.5
    assert "privacy budget allows" in caplog.text
    record: dict[str, object] = {}
    assert privacy_step(node, 0, True, record) is None
    assert node.dp_exhausted_round == 0
    again = node.learner.train(result.vector, 1, None, record_dp(node))
    assert again.epochs == 0.0 and node.budget.spent == allowed  # no step past the target
    np.testing.assert_array_equal(again.vector, result.vector)


def test_privacy_keys_parse_from_toml_data_and_refuse_with_the_rule() -> None:
    config = from_dict(NodeConfig, {"privacy": {"enabled": True, "unit": "record"},
                                    "data": {"dataset": "mnist1d", "samples": 1000}})
    assert config.privacy.unit is PrivacyUnit.RECORD and config.data.samples == 1000
    assert "unit = \"record\"" in dump_toml(to_dict(config))
    with pytest.raises(ConfigError, match="no node skips rounds"):
        from_dict(NodeConfig, {"privacy": {"enabled": True, "unit": "node",
                                           "sampling_probability": 0.05}})
    with pytest.raises(ConfigError,
                       match=r"data\.samples applies only to datasets mnist1d and teacher"):
        from_dict(NodeConfig, {"data": {"dataset": "digits", "samples": 1000}})
