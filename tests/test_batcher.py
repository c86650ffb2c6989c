"""The simulator's batched training (gossipfl/scenario/batcher.py, gossipfl/learning/batched.py):
what a node is charged for it. A node process compiles its steps once, while it joins; in the
simulator a new batch width compiles a vectorised program, which is the simulator's cost, not a
node's: at 1,000 members under load one such compile was charged to every node of its batch as
56 s of training, and the federation waited for them at one round."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.config import DataConfig, ModelConfig, NodeConfig
from gossipfl.learning.batched import Batched
from gossipfl.node.learner import LearnerPool, LocalLearner, TrainResult
from gossipfl.scenario.batcher import Batcher


def _learners(count: int) -> list[LocalLearner]:
    """``count`` nodes of one federation sharing a pool (one trainer: one batch)."""
    pool = LearnerPool()
    return [LocalLearner(NodeConfig(federation="fed", seed=7, node_index=index, node_count=count,
                                    data=DataConfig(dataset="iris", partition="iid"),
                                    model=ModelConfig(name="logreg")), pool)
            for index in range(count)]


def _train_all(batcher: Batcher, learners: list[LocalLearner]) -> list[TrainResult]:
    results: list[TrainResult] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(batcher.run)

            async def one(learner: LocalLearner) -> None:
                results.append(await batcher.call(learner.train, learner.initial_vector(), 0))

            async with trio.open_nursery() as calls:
                for learner in learners:
                    calls.start_soon(one, learner)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return results


def test_a_batch_width_compiles_once(tmp_path: Path) -> None:
    learners = _learners(3)
    batcher = Batcher()
    _train_all(batcher, learners)
    (steps,) = batcher.steps.values()
    assert isinstance(steps, Batched) and set(steps._compiled) == {4}  # 3 nodes: width 4
    first = steps.compile_seconds
    assert first > 0
    _train_all(batcher, learners)  # the same width again: nothing compiled
    assert steps.compile_seconds == first
    _train_all(batcher, learners[:1])
    assert set(steps._compiled) == {1, 4} and steps.compile_seconds > first


def test_the_compile_is_not_charged_to_the_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A made-up clock: the batch's compile takes 50 s of it and the work 0.25 s; each node is
    charged the 0.25 s."""
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    real = Batched.train_many

    def slow_compile(self: Batched, jobs: list) -> list:  # type: ignore[type-arg]
        out = real(self, jobs)
        now[0] += 50.0
        self.compile_seconds += 50.0
        now[0] += 0.25
        return out

    monkeypatch.setattr(Batched, "train_many", slow_compile)
    results = _train_all(Batcher(), _learners(2))
    assert [r.seconds for r in results] == [0.25, 0.25]
    assert all(np.isfinite(r.vector).all() for r in results)
