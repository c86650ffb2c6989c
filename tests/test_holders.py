"""``[data] holders``: the partition cut among the listed nodes only, every other node holding
no data (it trains nothing and only mixes), as the honest-data set-up of the ClippedGossip
table (benchmarks/bench_byzantine.py --holders honest)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.config import ConfigError, DataConfig, NodeConfig, ProtocolConfig, Weighting
from gossipfl.learning.partition import node_partition, partition_indices
from gossipfl.node.learner import LearnerPool, LocalLearner
from gossipfl.privacy.dp import DPConfig
from gossipfl.scenario.config import ScenarioConfig

LABELS = np.arange(103) % 10


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_holders_get_the_parts_of_a_split_among_them_in_order(scheme: str) -> None:
    among = partition_indices(LABELS, 3, scheme=scheme, seed=4)
    spread = partition_indices(LABELS, 7, scheme=scheme, seed=4, holders=(5, 0, 2))
    assert len(spread) == 7
    for owner, part in zip((5, 0, 2), among, strict=True):
        np.testing.assert_array_equal(spread[owner], part)
    for other in (1, 3, 4, 6):
        assert spread[other].size == 0 and spread[other].dtype == np.int64
    np.testing.assert_array_equal(np.sort(np.concatenate(spread)), np.arange(len(LABELS)))
    np.testing.assert_array_equal(
        node_partition(LABELS, 0, 7, scheme=scheme, seed=4, holders=(5, 0, 2)), among[1])
    assert node_partition(LABELS, 6, 7, scheme=scheme, seed=4, holders=(5, 0, 2)).size == 0


@pytest.mark.parametrize("holders", [(0, 0), (0, 7), (-1,)])
def test_holders_must_be_distinct_nodes_of_the_federation(holders: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="holder"):
        partition_indices(LABELS, 7, scheme="iid", seed=0, holders=holders)


def test_holders_are_checked_in_the_config() -> None:
    with pytest.raises(ConfigError, match="each once"):
        DataConfig(partition="iid", holders=(1, 1))
    with pytest.raises(ConfigError, match="needs a partition"):
        DataConfig(partition="none", holders=(0,))
    data = DataConfig(partition="iid", holders=(0, 3))
    with pytest.raises(ConfigError, match="node_count"):
        NodeConfig(data=data, node_count=3)
    with pytest.raises(ConfigError, match="privacy"):
        NodeConfig(data=data, node_count=4, privacy=DPConfig(enabled=True))
    with pytest.raises(ConfigError, match="weighting"):
        NodeConfig(data=data, node_count=4,
                   protocol=ProtocolConfig(weighting=Weighting.EXAMPLES))
    with pytest.raises(ConfigError, match="holders"):
        ScenarioConfig(nodes=3, data=data)
    assert NodeConfig(data=data, node_count=4).data.holders == (0, 3)


def test_a_node_without_data_trains_nothing_and_still_evaluates() -> None:
    data = DataConfig(partition="iid", holders=(1,))
    pool = LearnerPool()
    empty = LocalLearner(NodeConfig(data=data, node_count=2, node_index=0), pool)
    full = LocalLearner(NodeConfig(data=data, node_count=2, node_index=1), pool)
    assert len(empty.y) == 0 and len(full.y) == len(full.dataset.y_train)
    empty.prepare()
    start = empty.initial_vector() + 0.5
    result = empty.train(start, round_=0)
    np.testing.assert_array_equal(result.vector, start)
    assert result.examples == 0 and result.epochs == 0.0
    assert 0.0 <= empty.evaluate(start).accuracy <= 1.0


def test_nodes_without_data_mix_on_the_simulator(tmp_path: Path, pool) -> None:
    """Four nodes fully connected, only 0 and 1 holding data: 2 and 3 do no training, and
    all four end near the holders' model."""
    text = scenario_text(name="holders", nodes=4, rounds=4).replace(
        'partition = "dirichlet"', 'partition = "iid"\nholders = [0, 1]')
    report = simulated(tmp_path, text, pool)
    nodes = sorted(report["nodes"], key=lambda n: n["index"])
    assert [n["examples"] for n in nodes][2:] == [0, 0]
    assert nodes[0]["examples"] + nodes[1]["examples"] > 1000
    finals = [n["final_accuracy"] for n in nodes]
    assert min(finals) > 0.7, finals
