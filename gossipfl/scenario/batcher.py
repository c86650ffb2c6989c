"""Batching the simulated nodes' learning: training and evaluation as one JAX program each.

In a simulation every node runs in one trio process under a mock clock, and many of them
train (or evaluate) at the same virtual instant. :class:`Batcher` holds each such call until
every task of the run is blocked (nothing else can happen at this instant), then runs the calls
that share a trainer as one vectorised call (:class:`gossipfl.learning.batched.Batched`): the
node's own steps on its own data, exactly as it would take them alone. Calls it cannot batch
(DP-SGD, whose noise and Poisson batches come from each node's generator; disk writes; secure
aggregation's arithmetic) run inline.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from gossipfl.learning.batched import Batched
from gossipfl.learning.params import unflatten_params
from gossipfl.node.learner import EvalResult, LocalLearner

log = logging.getLogger("gossipfl.simulate")


@dataclass(eq=False)
class _Call:
    kind: str  # "train" | "evaluate"
    learner: LocalLearner
    args: tuple[Any, ...]
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class Batcher:
    """Collects training and evaluation calls and runs them batched (see the module)."""

    pending: list[_Call] = field(default_factory=list)
    batches: int = 0  # vectorised calls run
    batched_calls: int = 0  # node calls they served
    # each trainer's vectorised steps, by its id (an entry holds its trainer: the id is not
    # reused while it lives); a pool's own (LearnerPool.vectorised), so that the simulations
    # that share the pool trace them once
    steps: dict[int, Batched] = field(default_factory=dict)
    # threads a batch is split over (the cores this process may use): while a batch runs
    # every node is blocked, so the other cores would otherwise sit idle
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0))
                         if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    _wake: trio.Event = field(default_factory=trio.Event)
    _pool: ThreadPoolExecutor | None = None  # the run's threads (made at the first batch)

    def batchable(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> str | None:
        learner = getattr(fn, "__self__", None)
        if not isinstance(learner, LocalLearner):
            return None
        name = getattr(fn, "__name__", "")
        if name == "train" and not len(learner.y):  # no data: nothing to batch
            return None
        if name == "train" and (len(args) < 3 or args[2] is None):  # no record-level DP
            return "train"
        return "evaluate" if name == "evaluate" else None

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        kind = self.batchable(fn, args)
        if kind is None:
            await trio.lowlevel.checkpoint()
            return fn(*args)
        call = _Call(kind, fn.__self__, args)  # type: ignore[attr-defined]
        self.pending.append(call)
        self._wake.set()
        await call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    async def run(self) -> None:
        """The batching task: once calls are pending and every task is blocked, run them."""
        try:
            await self._serve()
        finally:  # the run's threads end with it
            if self._pool is not None:
                self._pool.shutdown(wait=False)
                self._pool = None

    def _threads(self) -> ThreadPoolExecutor | None:
        if self.threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="batch")
        return self._pool

    async def _serve(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            await trio.testing.wait_all_tasks_blocked()
            calls, self.pending = self.pending, []
            groups: dict[tuple[str, int, int], list[_Call]] = {}
            for call in calls:
                key = (call.kind, id(call.learner.trainer), id(call.learner.dataset))
                groups.setdefault(key, []).append(call)
            for group in groups.values():
                self._run(group)
            for call in calls:
                call.done.set()

    def _batched(self, learner: LocalLearner) -> Batched:
        trainer = learner.trainer
        if id(trainer) not in self.steps:
            self.steps[id(trainer)] = Batched(trainer)
        return self.steps[id(trainer)]

    def _run(self, group: list[_Call]) -> None:
        start = time.perf_counter()
        steps = self._batched(group[0].learner)
        try:
            if group[0].kind == "train":
                jobs = [c.learner.train_job(c.args[0], c.args[1], c.args[2] if len(c.args) > 2
                                            else None) for c in group]
                compiling = steps.compile_seconds
                outcomes = steps.train_many(jobs, self.threads, self._threads())
                start += steps.compile_seconds - compiling  # a node's work, not the compiler's
                # each node's share of the batch, as for evaluation: the whole batch's time
                # charged to each of 1,000 nodes made round 0 last seconds of virtual time,
                # every member heartbeating through them (most of a 1,000-node run's wall)
                share = (time.perf_counter() - start) / len(group)
                for c, outcome in zip(group, outcomes, strict=True):
                    epochs = c.args[2] if len(c.args) > 2 else None
                    c.result = c.learner.take(outcome, epochs, share)
            else:
                learner = group[0].learner
                params = [unflatten_params(c.args[0], learner.template) for c in group]
                figures = steps.evaluate_many(params, learner.dataset.x_test,
                                              learner.dataset.y_test, self.threads,
                                              self._threads())
                share = (time.perf_counter() - start) / len(group)
                for c, (loss, accuracy) in zip(group, figures, strict=True):
                    c.result = EvalResult(loss, accuracy, share)
        except Exception as error:  # each node sees the error its own call would raise
            for c in group:
                c.error = error
        self.batches += 1
        self.batched_calls += len(group)


__all__ = ["Batcher"]
