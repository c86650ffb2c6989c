"""Accelerated consensus (gossipfl/aggregation/acceleration.py, gossipfl/node/accelerate.py):
the maths exactly and as properties, the node's memory rules, and a simulated run."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import metrics, node_dir, scenario_text, simulated

import gossipfl.aggregation.acceleration as acceleration
from gossipfl.aggregation.acceleration import (
    graph_radius,
    heavy_ball,
    heavy_ball_beta,
    metropolis_matrix,
)
from gossipfl.aggregation.topology import build_topology
from gossipfl.config import ConfigError, Mode, NodeConfig
from gossipfl.config_io import from_dict
from gossipfl.node.accelerate import Acceleration, consensus_step, enabled


def regular(n: int, degree: int, seed: int = 1) -> dict[str, frozenset[str]]:
    members = [f"p{i:04d}" for i in range(n)]
    return dict(build_topology("regular", members, degree=degree, seed=seed))


def ring(n: int) -> dict[str, frozenset[str]]:
    ids = [f"p{i:02d}" for i in range(n)]
    return {p: frozenset({ids[i - 1], ids[(i + 1) % n]}) for i, p in enumerate(ids)}


def disagreement(x: np.ndarray) -> float:
    return float(np.abs(x - x.mean(axis=0)).max())


def run(matrix: np.ndarray, x0: np.ndarray, beta: float, rounds: int) -> list[np.ndarray]:
    """Rows of x are the nodes: x_{t+1} = (1 + β) W x_t − β x_{t−1}, x_{−1} = x_0."""
    previous, x, out = x0, x0, [x0]
    for _ in range(rounds):
        mixed = matrix @ x
        previous, x = x, mixed + beta * (mixed - previous)
        out.append(x)
    return out


# --------------------------------------------------------------------------- the maths


def test_metropolis_matrix_is_symmetric_and_doubly_stochastic() -> None:
    for graph in (regular(32, 4), ring(7), regular(10, 3, seed=4)):
        matrix = metropolis_matrix(graph)
        assert np.allclose(matrix, matrix.T)
        assert np.allclose(matrix.sum(axis=0), 1.0) and np.allclose(matrix.sum(axis=1), 1.0)
        assert (matrix >= 0).all()


def test_the_radius_of_a_ring_is_its_known_eigenvalue() -> None:
    # a ring of n with Metropolis weights 1/3: eigenvalues 1/3 + 2/3 cos(2πk/n)
    for n in (5, 8, 12):
        values = [1 / 3 + 2 / 3 * math.cos(2 * math.pi * k / n) for k in range(1, n)]
        assert graph_radius(ring(n)) == pytest.approx(max(abs(v) for v in values), abs=1e-12)


def test_power_iteration_agrees_with_the_exact_radius_from_below(monkeypatch) -> None:
    for graph in (regular(300, 8), regular(64, 4, seed=2)):
        exact = graph_radius(graph)
        monkeypatch.setattr(acceleration, "DENSE_MEMBERS", 10)
        estimate = graph_radius(graph)
        monkeypatch.setattr(acceleration, "DENSE_MEMBERS", 256)
        assert exact - 0.01 <= estimate <= exact + 1e-9


def test_beta_decays_every_mode_by_its_square_root() -> None:
    rho = graph_radius(regular(32, 4))
    beta = heavy_ball_beta(rho)
    assert beta == pytest.approx(((1 - math.sqrt(1 - rho**2)) / rho) ** 2)
    for value in np.linalg.eigvalsh(metropolis_matrix(regular(32, 4)))[:-1]:
        roots = np.roots([1.0, -(1 + beta) * value, beta])
        assert max(abs(roots)) <= math.sqrt(beta) + 1e-6 < rho


def test_heavy_ball_exact_and_refuses_bad_input() -> None:
    mixed, previous = np.array([1.0, 2.0]), np.array([3.0, 2.0])
    assert heavy_ball(mixed, previous, 0.0).tolist() == [1.0, 2.0]
    assert heavy_ball(mixed, previous, 0.25).tolist() == [0.5, 2.0]
    assert heavy_ball(mixed, previous, 0.25).dtype == np.float32
    assert previous.tolist() == [3.0, 2.0]
    for beta in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match="beta"):
            heavy_ball(mixed, previous, beta)
    with pytest.raises(ValueError, match="shapes"):
        heavy_ball(mixed, np.zeros(3), 0.5)


def test_no_acceleration_for_a_graph_in_pieces_or_alone() -> None:
    assert graph_radius({"a": frozenset()}) == 1.0
    two = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}
    assert graph_radius(two) == 1.0
    assert heavy_ball_beta(1.0) == 0.0 and heavy_ball_beta(float("nan")) == 0.0


def test_accelerated_gossip_keeps_the_mean_and_agrees_in_far_fewer_rounds() -> None:
    graph = regular(32, 4)
    matrix = metropolis_matrix(graph)
    x0 = np.random.default_rng(0).normal(size=(32, 50))
    beta = heavy_ball_beta(graph_radius(graph))

    def rounds_to(threshold: float, b: float) -> int:
        for t, x in enumerate(run(matrix, x0, b, 200)):
            assert np.allclose(x.mean(axis=0), x0.mean(axis=0), atol=1e-12)
            if disagreement(x) <= threshold:
                return t
        raise AssertionError("no agreement in 200 rounds")

    plain, fast = rounds_to(1e-6 * disagreement(x0), 0.0), rounds_to(1e-6 * disagreement(x0), beta)
    assert fast <= 0.6 * plain, (fast, plain)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(4, 14), degree=st.sampled_from([2, 3]), seed=st.integers(0, 50),
       beta=st.floats(0.0, 0.95))
def test_any_beta_below_one_converges_on_any_connected_graph(n: int, degree: int, seed: int,
                                                             beta: float) -> None:
    if n * degree % 2:
        n += 1
    graph = regular(n, degree, seed)
    if graph_radius(graph) >= 1.0:
        return
    matrix = metropolis_matrix(graph)
    x0 = np.random.default_rng(seed).normal(size=(n, 3))
    last = run(matrix, x0, beta, 400)[-1]
    assert np.allclose(last.mean(axis=0), x0.mean(axis=0), atol=1e-9)
    assert disagreement(last) <= 1e-3 * disagreement(x0)


# --------------------------------------------------------------------------- the node's memory


def _node(**protocol: Any) -> SimpleNamespace:
    config = from_dict(NodeConfig, {"protocol": protocol})
    graph = ring(5)
    return SimpleNamespace(config=config, topology=graph, acceleration=Acceleration(),
                           neighbours={"p01": None, "p04": None},
                           model=np.zeros(2, dtype=np.float32))


def _round(node: SimpleNamespace, r: int, mixed: list[float], missing: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    start, record = node.model, {}
    node.model = np.array(mixed, dtype=np.float32)
    consensus_step(node, r, start, list(missing), record)
    return record


def test_the_node_pushes_on_from_the_round_before_only_on_consecutive_rounds() -> None:
    node = _node()
    beta = heavy_ball_beta(graph_radius(node.topology))
    assert _round(node, 30, [1.0, 1.0]) == {}  # the first consensus round: nothing to push from
    record = _round(node, 31, [2.0, 1.0])  # x_{t−1} = [0, 0] (round 30's start)
    assert record == {"momentum": beta}
    assert node.model.tolist() == pytest.approx([2 + 2 * beta, 1 + beta])
    before = node.model.copy()
    _round(node, 33, [5.0, 5.0])  # a round skipped (a catch-up): no push
    assert node.model.tolist() == [5.0, 5.0]
    assert before is not None


def test_a_missing_neighbour_a_new_link_or_a_replaced_model_start_the_memory_again() -> None:
    node = _node()
    _round(node, 30, [1.0, 1.0])
    assert _round(node, 31, [2.0, 2.0], missing=("p01",)) == {}  # another W this round
    assert _round(node, 32, [3.0, 3.0]) == {}  # and the memory started again after it
    assert "momentum" in _round(node, 33, [4.0, 4.0])
    node.neighbours = {"p01": None, "p02": None}
    assert _round(node, 34, [5.0, 5.0]) == {}  # a new neighbour
    assert "momentum" in _round(node, 35, [6.0, 6.0])
    node.model = node.model.copy()  # a state sync, a restart, a reopening: another model
    assert _round(node, 36, [7.0, 7.0]) == {}


def test_beta_follows_the_topology_and_is_computed_once_for_it(monkeypatch) -> None:
    node = _node()
    calls = []
    real = acceleration.graph_radius
    monkeypatch.setattr("gossipfl.node.accelerate.graph_radius",
                        lambda graph: calls.append(1) or real(graph))
    for r in range(30, 35):
        _round(node, r, [float(r), 0.0])
    assert len(calls) == 1
    node.topology = ring(9)
    assert _round(node, 35, [1.0, 0.0]) == {}  # a new topology: computed again, memory anew
    assert _round(node, 36, [2.0, 0.0]) == {"momentum": heavy_ball_beta(graph_radius(ring(9)))}
    assert len(calls) == 2


@pytest.mark.parametrize("change", [
    {"protocol": {"accelerate_consensus": False}},
    {"protocol": {"mode": "async"}},
    {"protocol": {"gamma": 0.5}},
    {"robust": {"rule": "median"}},
    {"compression": {"kind": "int8"}},
])
def test_only_plain_gossip_consensus_is_accelerated(change: dict[str, Any]) -> None:
    node = _node()
    assert enabled(node)
    node.config = from_dict(NodeConfig, change)
    assert not enabled(node)
    _round(node, 30, [1.0, 1.0])
    assert _round(node, 31, [2.0, 2.0]) == {}
    assert node.model.tolist() == [2.0, 2.0]


def test_the_config_takes_a_bool_only() -> None:
    assert from_dict(NodeConfig, {}).protocol.accelerate_consensus is True
    assert from_dict(NodeConfig, {}).protocol.mode is Mode.SYNC
    with pytest.raises(ConfigError, match="accelerate_consensus"):
        from_dict(NodeConfig, {"protocol": {"accelerate_consensus": 1}})


# --------------------------------------------------------------------------- a simulated run


def test_a_simulated_ring_agrees_in_fewer_rounds_on_the_same_model(tmp_path: Path,
                                                                   pool) -> None:
    """Six nodes on a ring (ρ = 2/3): the consensus rounds end sooner accelerated (15 against
    24 when written), and every node ends near the same model as without (the mean of the last
    training round's models: consensus rounds keep it)."""
    runs = {}
    for on in (False, True):
        text = scenario_text(name="ring", nodes=6, rounds=4, topology="ring", degree=2,
                             protocol=f"accelerate_consensus = {str(on).lower()}\n")
        runs[on] = simulated(tmp_path / str(on), text, pool)
    plain, fast = runs[False], runs[True]
    consensus = {on: [len([m for m in metrics(tmp_path / str(on), i)
                           if m["phase"] == "consensus"]) for i in range(6)] for on in runs}
    assert max(consensus[True]) < 0.75 * min(consensus[False]), consensus
    assert any("momentum" in m for m in metrics(tmp_path / "True", 0))
    assert not any("momentum" in m for m in metrics(tmp_path / "False", 0))
    for report in (plain, fast):
        assert [n["status"] for n in report["nodes"]] == ["done"] * 6
        assert report["final_consensus_distance"] <= 1e-3
    # the same training (a simulated run repeats), so the same mean to agree on: each node's
    # final model is the other run's within what the tolerance leaves
    for i in range(6):
        a, b = (np.load(node_dir(tmp_path / str(on), i) / "final.npz")["params"] for on in runs)
        assert np.linalg.norm(a - b) <= 2e-3 * np.linalg.norm(b)
