"""The simulator's batched training (gossipfl/scenario/batcher.py, gossipfl/learning/batched.py):
what a node is charged for it. A node process compiles its steps once, while it joins; in the
simulator a new batch width compiles a vectorised program, which is the simulator's cost, not a
node's: at 1,000 members under load one such compile was charged to every node of its batch as
56 s of training, and the federation waited for them at one round."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.config import DataConfig, ModelConfig, NodeConfig
from gossipfl.learning.batched import Batched, _in_threads
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


def _clocked(monkeypatch: pytest.MonkeyPatch, compile_seconds: float,
             work_seconds: float) -> None:
    """A made-up clock on which each batch's training takes ``work_seconds`` and a compile
    ``compile_seconds`` (counted as the compiler's, as a new batch width's is)."""
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    real = Batched.train_many

    def timed(self: Batched, jobs: list, threads: int = 1,  # type: ignore[type-arg]
              pool: Executor | None = None) -> list:  # type: ignore[type-arg]
        out = real(self, jobs, threads, pool)
        now[0] += compile_seconds + work_seconds
        self.compile_seconds += compile_seconds
        return out

    monkeypatch.setattr(Batched, "train_many", timed)


def test_the_compile_is_not_charged_to_the_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch's compile takes 50 s and the work 0.25 s; each of the two nodes is charged
    its share of the work, 0.125 s."""
    _clocked(monkeypatch, 50.0, 0.25)
    results = _train_all(Batcher(), _learners(2))
    assert [r.seconds for r in results] == [0.125, 0.125]
    assert all(np.isfinite(r.vector).all() for r in results)


def test_a_node_is_charged_its_share_of_the_batch_not_the_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Eight nodes trained in one batch of 2 s: each is charged 0.25 s, so the virtual time a
    round's training costs does not grow with the federation."""
    _clocked(monkeypatch, 0.0, 2.0)
    results = _train_all(Batcher(), _learners(8))
    assert [r.seconds for r in results] == [0.25] * 8


def test_a_run_splits_its_batches_over_one_pool_of_threads() -> None:
    """Threads made afresh for every batch left a 1,000-member run's memory spread over
    malloc's arenas (its RSS grew some 100 MB a round): every batch of a run goes to the same
    threads, which end with the run."""
    seen: set[threading.Thread] = set()

    def work(part: list[int]) -> list[int]:
        seen.add(threading.current_thread())
        return [2 * item for item in part]

    with ThreadPoolExecutor(2) as pool:
        for _ in range(6):
            assert _in_threads(work, list(range(200)), 2, pool) == list(range(0, 400, 2))
    assert 1 <= len(seen) <= 2 and threading.current_thread() not in seen
    seen.clear()  # without a pool: threads of its own for every call
    for _ in range(6):
        assert _in_threads(work, list(range(200)), 2) == list(range(0, 400, 2))
    assert len(seen) >= 6
    batcher = Batcher(threads=2)
    _train_all(batcher, _learners(2))
    assert batcher._pool is None  # shut down as the batching task ended


def test_batched_training_takes_each_nodes_own_steps_as_it_would_alone() -> None:
    """Three nodes of 5, 40 and 70 examples in minibatches of 4 (2, 10 and 18 steps an epoch;
    2 epochs: up to 36 steps, three chunks) trained in one batch end where
    :meth:`Trainer.train` ends each alone: the short ones held still, not moved, after their
    last step."""
    import jax

    from gossipfl.learning.batched import STEP_CHUNK, TrainJob
    from gossipfl.learning.models import build_model
    from gossipfl.learning.plan import minibatch_plan
    from gossipfl.learning.train import TrainConfig, Trainer

    trainer = Trainer(build_model("mlp", (4,), 3, hidden=(8,)),
                      TrainConfig(optimizer="momentum", learning_rate=0.1, batch_size=4))
    rng = np.random.default_rng(3)
    jobs, alone = [], []
    for index, n in enumerate((5, 40, 70)):
        x = rng.standard_normal((n, 4)).astype(np.float32)
        y = rng.integers(0, 3, n).astype(np.int32)
        params = trainer.model.init(index)
        opt_state = trainer.init_opt_state(params)
        plan = minibatch_plan(n, 4, epochs=2, seed=index)
        jobs.append(TrainJob(params, opt_state, x, y, plan))
        alone.append(trainer.train(params, opt_state, x, y, epochs=2, seed=index))
    assert max(job.plan.steps for job in jobs) > STEP_CHUNK  # more than one chunk
    batched = Batched(trainer).train_many(jobs)
    for (params, _, loss), (want, _, want_loss) in zip(batched, alone, strict=True):
        for got, expected in zip(jax.tree_util.tree_leaves(params),
                                 jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        assert loss == pytest.approx(want_loss, rel=1e-5)


def test_a_batch_split_over_threads_gives_each_node_what_one_program_gives() -> None:
    """130 nodes over 2 threads (parts of 65: widths 128) and 4 asked (only 2 parts of at
    least MIN_PART): the same parameters, losses and evaluations as one program of width 256."""
    import jax

    from gossipfl.learning.batched import MIN_PART, TrainJob, _parts
    from gossipfl.learning.models import build_model
    from gossipfl.learning.plan import minibatch_plan
    from gossipfl.learning.train import TrainConfig, Trainer

    assert [len(p) for p in _parts(list(range(130)), 4)] == [65, 65]
    assert [len(p) for p in _parts(list(range(MIN_PART * 3)), 8)] == [MIN_PART] * 3
    assert [len(p) for p in _parts(list(range(10)), 8)] == [10]
    trainer = Trainer(build_model("mlp", (4,), 3, hidden=(8,)),
                      TrainConfig(optimizer="momentum", learning_rate=0.1, batch_size=4))
    rng = np.random.default_rng(5)
    jobs = []
    for index in range(130):
        n = int(rng.integers(3, 20))
        params = trainer.model.init(index)
        jobs.append(TrainJob(params, trainer.init_opt_state(params),
                             rng.standard_normal((n, 4)).astype(np.float32),
                             rng.integers(0, 3, n).astype(np.int32),
                             minibatch_plan(n, 4, epochs=1, seed=index)))
    steps = Batched(trainer)
    one = steps.train_many(jobs)
    for threads in (2, 4):
        split = steps.train_many(jobs, threads)
        assert len(split) == 130
        for (p1, _, l1), (p2, _, l2) in zip(one, split, strict=True):
            for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2),
                            strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
            assert l1 == pytest.approx(l2, rel=1e-6)
    assert set(steps._compiled) == {256, 128}
    x_test = rng.standard_normal((50, 4)).astype(np.float32)
    y_test = rng.integers(0, 3, 50).astype(np.int32)
    params = [p for p, _, _ in one]
    alone = [trainer.evaluate(p, x_test, y_test) for p in params[:3]]
    for threads in (1, 2):
        figures = steps.evaluate_many(params, x_test, y_test, threads)
        assert len(figures) == 130
        for (loss, accuracy), want in zip(figures[:3], alone, strict=True):
            assert loss == pytest.approx(want[0], rel=1e-5)
            assert accuracy == pytest.approx(want[1])


def test_an_evaluation_call_holds_a_bounded_number_of_activations(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows a call: fewer where nodes × rows × the widest layer would pass EVAL_FLOATS."""
    from gossipfl.learning import batched
    from gossipfl.learning.models import build_model
    from gossipfl.learning.train import TrainConfig, Trainer

    trainer = Trainer(build_model("mlp", (4,), 3, hidden=(32,)), TrainConfig())
    steps = Batched(trainer)
    shapes: list[tuple[int, ...]] = []
    real = steps._eval
    monkeypatch.setattr(steps, "_eval", lambda p, x, y, m: (shapes.append(x.shape), real(
        p, x, y, m))[1])
    params = [trainer.model.init(i) for i in range(8)]
    x = np.zeros((300, 4), np.float32)
    y = np.zeros(300, np.int32)
    steps.evaluate_many(params, x, y)
    assert {s[0] for s in shapes} == {512}  # 300 rows fit: one call padded to 512
    shapes.clear()
    monkeypatch.setattr(batched, "EVAL_FLOATS", 8 * 32 * 64)  # 8 nodes × 32 wide: 64 rows
    figures = steps.evaluate_many(params, x, y)
    assert {s[0] for s in shapes} == {64} and len(shapes) == 5
    assert len(figures) == 8


def test_the_batcher_splits_over_the_cores_it_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    if hasattr(os, "sched_getaffinity"):
        assert Batcher().threads == len(os.sched_getaffinity(0))
        monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert Batcher().threads == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert Batcher().threads == 1
