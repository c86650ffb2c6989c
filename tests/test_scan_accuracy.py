"""benchmarks/scan_accuracy.py: the pure JAX screen of a scenario's federated accuracy."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from benchmarks.scan_accuracy import scan_one
from gossipfl.learning.data import load_dataset
from gossipfl.learning.models import build_model
from gossipfl.learning.partition import node_partition
from gossipfl.learning.train import Trainer
from gossipfl.scenario.config import ScenarioConfig, load_scenario

SCENARIO = """
name = "scan"
nodes = 100
rounds = 2
seed = 0

[data]
dataset = "digits"
partition = "iid"

[model]
name = "mlp"
hidden = [16]

[train]
optimizer = "momentum"
learning_rate = 0.1
batch_size = 32
local_epochs = 1

[topology]
kind = "regular"
degree = 4
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> ScenarioConfig:
    path: Path = tmp_path_factory.mktemp("scan") / "scan.toml"
    path.write_text(SCENARIO)
    return load_scenario(path)


def test_exact_averaging_leaves_every_node_the_same_model(scenario: ScenarioConfig) -> None:
    exact = scan_one(scenario, {"degree": 0, "consensus": 0})
    assert exact["min"] == exact["max"]
    assert 0.0 <= exact["min"] <= 1.0 and 0.0 < exact["centralised"] <= 1.0
    assert exact["points_below"] == pytest.approx(100 * (exact["centralised"] - exact["min"]),
                                                  abs=0.06)


def test_gossip_leaves_nodes_apart_until_consensus_rounds(scenario: ScenarioConfig) -> None:
    apart = scan_one(scenario, {"consensus": 0})
    assert apart["min"] < apart["max"]  # one mixing step a round on a 4-regular graph
    assert apart["min_at_last_training_round"] == apart["min"]


def test_refuses_what_it_does_not_model(scenario: ScenarioConfig) -> None:
    with pytest.raises(SystemExit, match="unknown settings"):
        scan_one(scenario, {"learning_rat": 0.1})


def test_a_node_holding_several_minibatches_takes_them_in_turn(scenario: ScenarioConfig) -> None:
    """One node, nothing to mix: the screen's model is the node's minibatch steps in order
    (1,437 examples in batches of 32, the last of 29 masked out to 32), replayed here."""
    one = scan_one(scenario, {"nodes": 1, "degree": 0, "consensus": 0, "rounds": 1})
    spec = scenario.data
    data = load_dataset(spec.dataset, seed=spec.seed, test_fraction=spec.test_fraction)
    part = node_partition(data.y_train, 0, 1, scheme=spec.partition, seed=spec.seed)
    model = build_model("mlp", data.input_shape, data.num_classes, hidden=(16,))
    trainer = Trainer(model, scenario.train)
    params = model.init(scenario.seed)
    opt = trainer.init_opt_state(params)
    step = jax.jit(trainer._train_step_impl)  # the trainer's own step, compiled once
    for start in range(0, len(part), 32):
        chunk = part[start:start + 32]
        x = np.zeros((32, data.x_train.shape[1]), np.float32)
        y = np.zeros(32, np.int32)
        m = np.zeros(32, np.float32)
        x[:len(chunk)], y[:len(chunk)], m[:len(chunk)] = (
            data.x_train[chunk], data.y_train[chunk], 1.0)
        params, opt, _ = step(params, opt, x, y, m)
    _, correct = trainer._eval_step_impl(params, data.x_test, data.y_test,
                                         np.ones(len(data.y_test), np.float32))
    assert len(part) > 32
    assert one["min"] == pytest.approx(float(correct) / len(data.y_test), abs=1e-4)
