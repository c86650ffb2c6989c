"""The report's consensus distance per round (gossipfl/scenario/report.py: consensus_by_round),
read from the round models every node keeps: the figures, and what it holds in memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.aggregation.mixing import consensus_distance
from gossipfl.scenario.report import consensus_by_round

SIZE = 10_000  # parameters a model (40 KB as float32)


def write_rounds(tmp_path: Path, models: dict[int, list[np.ndarray]]) -> list[SimpleNamespace]:
    nodes = []
    for index, rounds in models.items():
        folder = tmp_path / f"node-{index:02d}" / "rounds"
        folder.mkdir(parents=True)
        for r, model in enumerate(rounds):
            np.save(folder / f"r{r:05d}.npy", model)
        nodes.append(SimpleNamespace(index=index, out=folder.parent, killed_at=None))
    return nodes


def test_each_round_is_the_distance_of_the_models_then_a_finished_node_keeping_its_last(
        tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    models = {i: [rng.normal(size=SIZE).astype(np.float32) for _ in range(6 if i else 3)]
              for i in range(4)}
    nodes = write_rounds(tmp_path, models)
    nodes[3].killed_at = 2.0  # a killed node counts up to its last round only
    models[3] = models[3][:2]
    for r in (2, 3, 4, 5):
        (nodes[3].out / "rounds" / f"r{r:05d}.npy").unlink()
    got = consensus_by_round(nodes, 5)
    for r in range(6):
        held = [models[i][min(r, len(models[i]) - 1)] for i in range(3)]
        if r < 2:
            held.append(models[3][r])
        assert got[r] == pytest.approx(float(consensus_distance(held)), rel=1e-9)


def test_it_holds_one_model_a_node_not_every_round_read(tmp_path: Path) -> None:
    """20 nodes × 12 or 30 rounds of 40 KB: every model read, kept to the end, peaked at 24 MB
    here (1.6 GB at the end of a 1,000-node run); one a node, at 7.6 MB (a round's models in
    float64 for the distance, and one model a node)."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=SIZE).astype(np.float32)
    models = {i: [base + np.float32(0.01 * (i + r)) for r in range(30 if i % 2 else 12)]
              for i in range(20)}
    nodes = write_rounds(tmp_path, models)
    tracemalloc.start()
    try:
        distances = consensus_by_round(nodes, 29)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(distances) == 30 and all(d is not None and d > 0 for d in distances)
    assert peak < 12 * 2**20, peak


def test_a_simulation_frees_its_nodes_before_the_report_reads_their_files(
        tmp_path: Path, pool, monkeypatch) -> None:
    """None of the simulation's nodes is alive when the report starts, also when the caller
    froze what it had (as this suite's conftest does): the simulation makes its nodes after
    quiet_gc's freeze, so none of them is frozen out of the collection that frees them. Each
    node is followed by a weak reference, which a frozen object would keep alive too."""
    import gc
    import weakref

    import gossipfl.scenario.simulate as simulate
    from gossipfl.node.runtime import Node

    made: weakref.WeakSet[Node] = weakref.WeakSet()
    init = Node.__init__

    def following(self: Node, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        made.add(self)

    monkeypatch.setattr(Node, "__init__", following)
    gc.collect()
    gc.freeze()
    alive = []
    real = simulate.build_report

    def counting(*args, **kwargs):
        alive.append(len(made))
        return real(*args, **kwargs)

    monkeypatch.setattr(simulate, "build_report", counting)
    report = simulated(tmp_path, scenario_text(name="free", nodes=3, rounds=2), pool)
    assert report["summary"]["survivors"] == 3
    assert alive == [0]
