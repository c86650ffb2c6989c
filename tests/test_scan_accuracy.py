"""benchmarks/scan_accuracy.py: the pure JAX screen of a scenario's federated accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.scan_accuracy import scan_one
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
    with pytest.raises(SystemExit, match="more than a minibatch"):
        scan_one(scenario, {"nodes": 8})  # 180 examples a node: the proxy takes one step
