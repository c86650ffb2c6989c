"""The default norm bound (robust.norm_ratio), on the simulator: a member that publishes a
huge multiple of its model (the issue's 6e+37) cannot get it into its neighbours' models, in
sync and async mode; with the bound off, the same member wrecks them. (Under secure
aggregation: tests/test_sim_secagg_byzantine.py.)"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.aggregation.bounds import (
    MIN_SUM_RATIO,
    mean_within,
    norm_bound,
    sum_bound,
    within_bound,
)
from gossipfl.node.learner import LearnerPool, TrainResult
from gossipfl.scenario import simulate as simulate_module

HUGE = 6e37  # what one neighbour set a receiver's model to in one round before the bound


class Scaled:
    """A learner whose training result is a model of ``HUGE`` entries: what a member that
    publishes an exploded or scaled model sends (finite, so only a bound stops it)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def train(self, *args: Any) -> TrainResult:
        result = self._inner.train(*args)
        return replace(result, vector=np.full_like(result.vector, HUGE, np.float32))


def node_zero_learns_with(monkeypatch: pytest.MonkeyPatch, wrapper: type) -> None:
    """Node 0 of every simulation in the test runs ``wrapper(its learner)``."""
    original = simulate_module.Simulation.make_node

    def make_node(self: Any, index: int, config: Any, identity: Any, learner: Any,
                  offload: Any) -> Any:
        return original(self, index, config, identity, wrapper(learner) if index == 0
                        else learner, offload)

    monkeypatch.setattr(simulate_module.Simulation, "make_node", make_node)


@pytest.fixture
def attacker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 0 of every simulation here publishes a huge model."""
    node_zero_learns_with(monkeypatch, Scaled)


def run(tmp_path: Path, pool: LearnerPool, ratio: float) -> dict[str, Any]:
    text = scenario_text(name="scaled", nodes=5, rounds=8, round_timeout=2.0,
                         extra=f"[robust]\nnorm_ratio = {ratio}\n")
    return simulated(tmp_path, text, pool)


def test_a_scaled_model_is_kept_out_by_the_default_bound(tmp_path: Path, pool,
                                                         attacker: None) -> None:
    report = run(tmp_path, pool, 100.0)
    honest = report["nodes"][1:]
    assert min(n["final_accuracy"] for n in honest) > 0.8
    assert all(n["rejected"].get("norm", 0) >= 1 for n in honest)


def test_without_the_bound_the_same_member_wrecks_its_neighbours(tmp_path: Path, pool,
                                                                 attacker: None) -> None:
    report = run(tmp_path, pool, 0.0)
    honest = report["nodes"][1:]
    # the attack is real: with the bound off the honest nodes' models are far off (chance is
    # about 0.1 on digits; a diverged node's training is discarded, its model stays wrecked)
    assert max(n["final_accuracy"] or 0.0 for n in honest) < 0.5


@pytest.mark.parametrize("max_lead", [1, -1])  # a bounded lead, and none (staleness weights)
def test_a_scaled_model_is_kept_out_by_the_default_bound_in_async_mode(
        tmp_path: Path, pool, attacker: None, max_lead: int) -> None:
    def async_run(ratio: float) -> list[dict[str, Any]]:
        text = scenario_text(name="scaled-async", nodes=5, rounds=8, round_timeout=2.0,
                             protocol=f'mode = "async"\nmax_lead = {max_lead}\n',
                             extra=f"[robust]\nnorm_ratio = {ratio}\n")
        return simulated(tmp_path / str(ratio), text, pool)["nodes"][1:]

    # measured: 0.867 at every honest node with the bound (40 refusals each), 0.100 without
    honest = async_run(100.0)
    assert min(n["final_accuracy"] for n in honest) > 0.8
    assert all(n["rejected"].get("norm", 0) >= 1 for n in honest)
    assert max(n["final_accuracy"] or 0.0 for n in async_run(0.0)) < 0.5


def test_the_bound_is_relative_to_the_node_s_own_model() -> None:
    own = np.full(100, 0.5, np.float32)  # norm 5
    bound = norm_bound(own, 100.0)
    assert bound == pytest.approx(500.0)
    assert within_bound(own * 50, bound)  # an honest-looking neighbour, far off but bounded
    assert not within_bound(own * 1e6, bound)
    assert not within_bound(np.full(100, 6e37, np.float32), bound)  # no float32 overflow


@pytest.mark.parametrize("count", [3, 4, 8])
def test_a_secure_sum_is_bounded_for_its_size(count: int) -> None:
    """One member scaled by c among ``count`` equal to the aggregator's own model: the mean
    lies (c − 1)/count of the model from it, so the sum's bound catches it past the plain bound
    (c > ratio + 2), as the plain bound would catch its estimate, where a bound on the mean's
    own norm (ratio) would let it go ``count`` times as far."""
    own = np.full(100, 0.5, np.float32)  # norm 5

    def mean_with(c: float) -> np.ndarray:
        return (own * (count - 1) + c * own) / count

    bound = sum_bound(own, 100.0, count)
    assert mean_within(mean_with(1.0), own, bound)  # all honest and agreeing
    assert mean_within(mean_with(-1.0), own, bound)  # sign flipping: within it (the limit)
    assert mean_within(mean_with(101.0), own, bound)
    assert not mean_within(mean_with(103.0), own, bound)
    # 50·count times its model: the mean's own norm is within the plain bound (about 51×),
    # so a bound on it would let this member in; the sum's bound does not
    assert within_bound(mean_with(50 * count), norm_bound(own, 100.0))
    assert not mean_within(mean_with(50 * count), own, bound)
    assert not mean_within(np.full(100, np.inf, np.float32), own, math.inf)
    assert sum_bound(own, 0.0, count) == math.inf  # the bound off
    # however many contribute, never below MIN_SUM_RATIO units: agreeing honest sums pass
    assert sum_bound(own, 100.0, 1000) == pytest.approx(MIN_SUM_RATIO * 5.0)


class Flipped(Scaled):
    """A learner whose model points the other way, three times as far: within the norm bound,
    so only a robust rule stops it (sign flipping)."""

    def train(self, *args: Any) -> TrainResult:
        result = self._inner.train(*args)
        return replace(result, vector=(-3.0 * result.vector).astype(np.float32))


@pytest.fixture
def flipper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Node 0 of every simulation here flips its model."""
    node_zero_learns_with(monkeypatch, Flipped)


def flipped_run(tmp_path: Path, pool: LearnerPool, rule: str) -> dict[str, Any]:
    text = scenario_text(name="flipped", nodes=6, rounds=10, round_timeout=2.0, degree=5,
                         extra=f'[robust]\nrule = "{rule}"\n')
    return simulated(tmp_path, text, pool)


# measured here: without an attacker every node ends at 0.861 (none), 0.858 (clipping), 0.808
# (trimmed mean), 0.725 (median); with it, 0.428 with plain mixing and 0.800, 0.706, 0.711.
# Krum (0.369 without an attacker: one estimate picked a round mixes too little on non-IID
# data) is left out: it does not help here.
@pytest.mark.parametrize(("rule", "floor"), [("clipping", 0.75), ("trimmed_mean", 0.65),
                                             ("median", 0.65)])
def test_a_robust_rule_keeps_a_sign_flipping_member_from_its_neighbours(
        tmp_path: Path, pool, flipper: None, rule: str, floor: float) -> None:
    plain = min(n["final_accuracy"] for n in flipped_run(tmp_path / "plain", pool,
                                                          "none")["nodes"][1:])
    report = flipped_run(tmp_path / rule, pool, rule)
    robust = min(n["final_accuracy"] for n in report["nodes"][1:])
    assert plain < 0.5  # the attack is real ...
    assert robust > floor and robust > plain + 0.15  # ... and the rule stops most of it
    rounds = [json.loads(line) for line in
              (tmp_path / rule / "out" / "nodes" / "node-01" / "metrics.jsonl").read_text()
              .splitlines()]
    assert all(m["robust"]["rule"] == rule for m in rounds if "robust" in m)
    assert any("robust" in m for m in rounds)


def test_a_robust_rule_is_refused_with_secure_aggregation_and_bad_values_clearly() -> None:
    from gossipfl.config import ConfigError, RobustConfig, SecAggConfig
    from gossipfl.scenario.config import ScenarioConfig

    with pytest.raises(ConfigError, match="not with secagg"):
        ScenarioConfig(secagg=SecAggConfig(enabled=True), robust=RobustConfig(rule="median"))
    with pytest.raises(ConfigError, match=r"robust\.rule must be one of"):
        RobustConfig(rule="mean")
    with pytest.raises(ConfigError, match=r"robust\.delta"):
        RobustConfig(rule="clipping", delta=1.5)
    with pytest.raises(ConfigError, match="norm_ratio"):
        RobustConfig(norm_ratio=1.0)
