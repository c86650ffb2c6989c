"""Outer momentum (momentum on the averaged model): the maths, its config, the round's glue."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gossipfl.aggregation.momentum import outer_momentum
from gossipfl.config import ConfigError, NodeConfig
from gossipfl.config_io import from_dict
from gossipfl.node.outer import outer_step


def test_zero_beta_is_the_mixed_model() -> None:
    start, mixed = np.array([1.0, 2.0]), np.array([0.5, 3.0])
    for nesterov in (False, True):
        model, velocity = outer_momentum(start, mixed, np.array([9.0, -9.0]), 0.0,
                                         nesterov=nesterov)
        assert model.tolist() == [0.5, 3.0]
        assert velocity.tolist() == [-0.5, 1.0]


def test_heavy_ball_exact() -> None:
    # v = 0.5 * [2, -4] + ([1, 1] - [0, 0]) = [2, -1]; x = start + v
    model, velocity = outer_momentum(np.zeros(2), np.ones(2), np.array([2.0, -4.0]), 0.5)
    assert velocity.tolist() == [2.0, -1.0]
    assert model.tolist() == [2.0, -1.0]
    assert model.dtype == np.float32 and velocity.dtype == np.float64


def test_nesterov_exact() -> None:
    # v = [2, -1] as above; x = mixed + 0.5 v = [1, 1] + [1, -0.5]
    model, velocity = outer_momentum(np.zeros(2), np.ones(2), np.array([2.0, -4.0]), 0.5,
                                     nesterov=True)
    assert velocity.tolist() == [2.0, -1.0]
    assert model.tolist() == [2.0, 0.5]


def test_no_velocity_is_zero_velocity() -> None:
    model, velocity = outer_momentum(np.array([1.0]), np.array([3.0]), None, 0.9)
    assert model.tolist() == [3.0] and velocity.tolist() == [2.0]


def test_constant_step_accelerates_to_one_over_one_minus_beta() -> None:
    x, v = np.zeros(1), None
    for _ in range(200):  # every round's own step is +1: the velocity tends to 1 / (1 - β)
        x, v = outer_momentum(x, x + 1.0, v, 0.75)
    assert v is not None and v[0] == pytest.approx(4.0)


def test_inputs_not_mutated_and_bad_input_refused() -> None:
    start, mixed, velocity = np.zeros(3), np.ones(3), np.full(3, 2.0)
    outer_momentum(start, mixed, velocity, 0.5)
    assert start.tolist() == [0, 0, 0] and mixed.tolist() == [1, 1, 1]
    assert velocity.tolist() == [2, 2, 2]
    for beta in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            outer_momentum(start, mixed, None, beta)
    with pytest.raises(ValueError, match="shapes"):
        outer_momentum(start, np.ones(2), None, 0.5)
    with pytest.raises(ValueError, match="shapes"):
        outer_momentum(start, mixed, np.ones(2), 0.5)


@pytest.mark.parametrize("value", [1.0, -0.5, 1.5, True])
def test_config_refuses_outer_momentum_out_of_range(value: Any) -> None:
    with pytest.raises(ConfigError, match="outer_momentum"):
        from_dict(NodeConfig, {"train": {"outer_momentum": value}})


def test_config_accepts_outer_momentum_and_refuses_it_with_async() -> None:
    config = from_dict(NodeConfig, {"train": {"outer_momentum": 0.85, "outer_nesterov": True}})
    assert config.train.outer_momentum == 0.85 and config.train.outer_nesterov
    assert from_dict(NodeConfig, {}).train.outer_momentum == 0.0  # off by default
    with pytest.raises(ConfigError, match=r"outer_momentum needs protocol\.mode = sync"):
        from_dict(NodeConfig, {"train": {"outer_momentum": 0.5},
                               "protocol": {"mode": "async"}})
    from_dict(NodeConfig, {"protocol": {"mode": "async"}})  # off: async as before


def _node(beta: float, model: list[float]) -> SimpleNamespace:
    # only what outer_step may touch: no estimate (own), so touching x̂ would fail
    config = SimpleNamespace(train=SimpleNamespace(outer_momentum=beta, outer_nesterov=False))
    return SimpleNamespace(config=config, model=np.array(model, dtype=np.float32),
                           velocity=None)


def test_outer_step_carries_the_velocity_from_the_previous_round_only() -> None:
    node = _node(0.5, [1.0])
    outer_step(node, 3, np.array([0.0], dtype=np.float32))  # step +1, no velocity yet
    assert node.model.tolist() == [1.0] and node.velocity[0] == 3
    node.model = np.array([2.0], dtype=np.float32)
    outer_step(node, 4, np.array([1.0], dtype=np.float32))  # v = 0.5 + 1
    assert node.model.tolist() == [2.5] and node.velocity[1].tolist() == [1.5]
    node.model = np.array([3.5], dtype=np.float32)
    outer_step(node, 6, np.array([2.5], dtype=np.float32))  # round 5 not trained: v from zero
    assert node.model.tolist() == [3.5] and node.velocity[0] == 6


def test_outer_step_off_or_diverged_leaves_the_model() -> None:
    node = _node(0.0, [1.0])
    outer_step(node, 0, np.array([0.0], dtype=np.float32))
    assert node.model.tolist() == [1.0] and node.velocity is None
    node = _node(0.5, [float("nan")])
    outer_step(node, 0, np.array([0.0], dtype=np.float32))
    assert node.velocity is None


def test_the_momentum_scenario_is_the_peer_task_plus_the_lever() -> None:
    import dataclasses
    from pathlib import Path

    from gossipfl.scenario.config import load_scenario

    scenarios = Path(__file__).resolve().parent.parent / "scenarios"
    task = load_scenario(scenarios / "peer_task.toml")
    lever = load_scenario(scenarios / "peer_task_momentum.toml")
    assert (lever.train.outer_momentum, lever.train.outer_nesterov) == (0.85, True)
    same_train = dataclasses.replace(lever.train, outer_momentum=0.0, outer_nesterov=False)
    assert dataclasses.replace(lever, name=task.name, train=same_train) == task
