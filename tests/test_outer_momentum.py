"""Outer momentum (momentum on the averaged model): the maths, its config, the round's glue."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gossipfl.aggregation.momentum import mixing_step_limit, outer_momentum, tail_mean
from gossipfl.config import ConfigError, NodeConfig
from gossipfl.config_io import from_dict
from gossipfl.node.compression import mixing_warnings, momentum_warning
from gossipfl.node.outer import end_average, outer_step


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


def _node(beta: float, model: list[float], average: int = 0,
          rounds: int = 30) -> SimpleNamespace:
    # only what outer_step may touch: no estimate (own), so touching x̂ would fail
    config = SimpleNamespace(rounds=rounds, train=SimpleNamespace(
        outer_momentum=beta, outer_nesterov=False, outer_average=average))
    return SimpleNamespace(config=config, model=np.array(model, dtype=np.float32),
                           velocity=None, tail=None)


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
    train = lever.train
    assert (train.outer_momentum, train.outer_nesterov, train.outer_average) == (0.9, True, 5)
    assert (lever.protocol.gamma, lever.protocol.consensus_tolerance) == (0.7, 3e-4)
    same_train = dataclasses.replace(train, outer_momentum=0.0, outer_nesterov=False,
                                     outer_average=0)
    same_protocol = dataclasses.replace(lever.protocol, gamma=1.0, consensus_tolerance=1e-4)
    assert dataclasses.replace(lever, name=task.name, train=same_train,
                               protocol=same_protocol) == task
    # and the int4 scenario is that one with its deltas compressed
    int4 = load_scenario(scenarios / "peer_task_int4.toml")
    assert int4.compression.kind == "int4"
    assert dataclasses.replace(int4, name=lever.name, compression=lever.compression) == lever


def test_tail_mean_exact() -> None:
    mean = tail_mean(None, 0, np.array([1.0, -2.0]))
    assert mean.tolist() == [1.0, -2.0] and mean.dtype == np.float64
    mean = tail_mean(mean, 1, np.array([3.0, 2.0]))
    assert mean.tolist() == [2.0, 0.0]
    mean = tail_mean(mean, 2, np.array([4.0, 3.0]))  # (1 + 3 + 4) / 3, (-2 + 2 + 3) / 3
    assert mean.tolist() == [pytest.approx(8 / 3), pytest.approx(1.0)]


def test_tail_mean_refuses_bad_input_and_leaves_its_inputs() -> None:
    mean, model = np.array([1.0]), np.array([3.0])
    tail_mean(mean, 1, model)
    assert mean.tolist() == [1.0] and model.tolist() == [3.0]
    with pytest.raises(ValueError, match="must be given"):
        tail_mean(None, 1, model)
    with pytest.raises(ValueError, match="must be None"):
        tail_mean(mean, 0, model)
    with pytest.raises(ValueError, match="shapes"):
        tail_mean(mean, 1, np.ones(2))


def test_the_tail_is_the_last_rounds_and_training_ends_with_its_mean() -> None:
    node = _node(0.0, [0.0], average=2, rounds=4)  # rounds 2 and 3 go into the mean
    for r, value in enumerate([10.0, 20.0, 1.0, 4.0]):
        node.model = np.array([value], dtype=np.float32)
        outer_step(node, r, node.model)
        assert node.model.tolist() == [value]  # averaging never moves a training round
        assert (node.tail is None) == (r < 2)
    assert node.tail[0] == 2 and node.tail[1].tolist() == [2.5]
    end_average(node, 4)
    assert node.model.tolist() == [2.5] and node.model.dtype == np.float32
    assert node.tail is None
    end_average(node, 4)  # once
    assert node.model.tolist() == [2.5]


def test_a_public_model_is_kept_and_the_tail_dropped() -> None:
    node = _node(0.0, [1.0], average=3, rounds=3)
    outer_step(node, 2, node.model)
    node.model = np.array([7.0], dtype=np.float32)  # e.g. x̂, public, after a catch-up
    end_average(node, 3, keep=True)
    assert node.model.tolist() == [7.0] and node.tail is None


def test_the_tail_mean_is_taken_after_momentum() -> None:
    node = _node(0.5, [1.0], average=2, rounds=2)
    outer_step(node, 0, np.array([0.0], dtype=np.float32))  # v = 1, model 1
    node.model = np.array([2.0], dtype=np.float32)
    outer_step(node, 1, np.array([1.0], dtype=np.float32))  # v = 0.5 + 1, model 1 + 1.5
    assert node.model.tolist() == [2.5]
    end_average(node, 2)
    assert node.model.tolist() == [1.75]


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_config_refuses_a_bad_outer_average(value: Any) -> None:
    with pytest.raises(ConfigError, match="outer_average"):
        from_dict(NodeConfig, {"train": {"outer_average": value}})


def test_config_refuses_outer_average_with_async() -> None:
    assert from_dict(NodeConfig, {"train": {"outer_average": 5}}).train.outer_average == 5
    with pytest.raises(ConfigError, match=r"outer_average needs protocol\.mode = sync"):
        from_dict(NodeConfig, {"train": {"outer_average": 5}, "protocol": {"mode": "async"}})


def _mode_growth(a: float, beta: float, nesterov: bool) -> float:
    """How much a mode of the mixing with step ``a`` grows a round under outer momentum, by
    running outer_momentum itself on a model that mixing moves by ``−a x``."""
    x, v = np.array([1.0]), None
    for _ in range(400):
        x, v = outer_momentum(x, x - a * x.astype(np.float64), v, beta, nesterov=nesterov)
        if abs(float(x[0])) > 1e6:  # grown (before float32 overflows)
            return math.inf
    y, _ = outer_momentum(x, x - a * x.astype(np.float64), v, beta, nesterov=nesterov)
    return float(np.max(np.abs(np.concatenate([x, y]))))


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.85, 0.9])
@pytest.mark.parametrize("nesterov", [True, False])
def test_mixing_step_limit_is_where_a_mode_stops_decaying(beta: float, nesterov: bool) -> None:
    limit = mixing_step_limit(beta, nesterov=nesterov)
    assert limit == (1 + 1 / (1 + 2 * beta) if nesterov else 2 * (1 + beta))
    assert _mode_growth(0.97 * limit, beta, nesterov) < 1e-3  # decays
    assert _mode_growth(1.03 * limit, beta, nesterov) > 1e3  # grows
    with pytest.raises(ValueError, match="beta"):
        mixing_step_limit(1.0, nesterov=nesterov)


def test_momentum_warning_names_a_safe_gamma() -> None:
    nesterov = from_dict(NodeConfig, {"train": {"outer_momentum": 0.9, "outer_nesterov": True}})
    train, graph = nesterov.train, nesterov.topology  # regular, degree 4: steps up to 1.6 γ
    warning = momentum_warning(train, 1.0, graph)
    assert warning is not None and "gamma below 0.85" in warning  # 1.357 / 1.6
    assert momentum_warning(train, 0.84, graph) is None
    ring = from_dict(NodeConfig, {"topology": {"kind": "ring"}}).topology  # steps up to 4/3 γ
    assert momentum_warning(train, 1.0, ring) is None
    heavy = from_dict(NodeConfig, {"train": {"outer_momentum": 0.9}}).train
    assert momentum_warning(heavy, 1.0, graph) is None
    assert mixing_warnings("int4", 1.0, train, graph)[1] == warning  # and int4's, first
    assert mixing_warnings("none", 0.7, train, graph) == []


def test_the_peer_task_scenarios_are_not_warned_of() -> None:
    from pathlib import Path

    from gossipfl.scenario.config import load_scenario

    scenarios = Path(__file__).resolve().parent.parent / "scenarios"
    for name in ("peer_task_momentum", "peer_task_int4"):
        s = load_scenario(scenarios / f"{name}.toml")
        assert mixing_warnings(s.compression.kind, s.protocol.gamma, s.train, s.topology) == []


def test_a_simulated_run_ends_training_with_the_tail_mean(tmp_path: Path, pool) -> None:
    from sim_scenarios import node_log, scenario_text, simulated

    text = scenario_text(name="tail", nodes=4, rounds=4, topology="regular", degree=2,
                         protocol="gamma = 0.7\n").replace(
        "local_epochs = 1\n",
        "local_epochs = 1\nouter_momentum = 0.9\nouter_nesterov = true\nouter_average = 2\n")
    report = simulated(tmp_path, text, pool)
    assert report["summary"]["survivors"] == 4
    for index in range(4):
        assert "the model is now the mean of the last 2 training rounds' models" in node_log(
            tmp_path, index)
    assert report["summary"]["min_final_accuracy"] == report["summary"]["max_final_accuracy"]
