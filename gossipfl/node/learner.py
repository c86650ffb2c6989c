"""The node's local learning: its data partition, the model, and train/evaluate on flat vectors.

The round code sees parameters only as flat float32 vectors; this class converts to and from the
model's pytree and runs the JAX work (called from a worker thread, so the node keeps answering
its peers while it trains).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gossipfl.config import NodeConfig
from gossipfl.learning.batched import TrainJob
from gossipfl.learning.data import Dataset, load_dataset
from gossipfl.learning.executables import ExecutableCache
from gossipfl.learning.generated import load_kept
from gossipfl.learning.models import Model, build_model
from gossipfl.learning.params import Params, flatten_params, named_arrays, unflatten_params
from gossipfl.learning.partition import node_partition
from gossipfl.learning.partition import partition_indices as partition_indices_of
from gossipfl.learning.plan import minibatch_plan
from gossipfl.learning.train import DPSGD, Trainer

if TYPE_CHECKING:  # dp-accounting (and SciPy) load only when DP is on
    from gossipfl.privacy.accountant import RecordBudget

log = logging.getLogger("gossipfl.learner")


@dataclass(frozen=True)
class RecordDP:
    """Record-level DP for local training: the node's budget and its DP generator."""

    budget: RecordBudget
    rng: np.random.Generator


@dataclass(frozen=True)
class TrainResult:
    vector: np.ndarray
    loss: float
    seconds: float
    examples: int
    epochs: float  # the local work done: whole epochs, or minibatch steps / steps per epoch


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    seconds: float


def load_node_data(config: NodeConfig) -> tuple[Dataset, np.ndarray]:
    """The dataset and the indices of this node's training partition."""
    spec = config.data
    dataset = load_dataset(spec.dataset, seed=spec.seed, test_fraction=spec.test_fraction,
                           path=spec.path, samples=spec.samples, test_path=spec.test_path)
    return dataset, partition_indices(config, dataset)


def partition_indices(config: NodeConfig, dataset: Dataset) -> np.ndarray:
    """The indices of this node's training partition of ``dataset``."""
    spec = config.data
    if spec.partition == "none":
        return np.arange(len(dataset.y_train))
    return node_partition(
        dataset.y_train, config.node_index, config.node_count, scheme=spec.partition,
        seed=spec.seed, alpha=spec.alpha, shards_per_node=spec.shards_per_node,
        holders=spec.holders,
    )


def make_model(config: NodeConfig, dataset: Dataset) -> Model:
    return build_model(config.model.name, dataset.input_shape, dataset.num_classes,
                       hidden=config.model.hidden)


def data_key(config: NodeConfig) -> tuple[object, ...]:
    """What decides the data set a node loads (its partition aside)."""
    spec = config.data
    return (spec.dataset, spec.seed, spec.test_fraction, spec.path, spec.samples, spec.test_path)


class LearnerPool:
    """What learners of one process share when many nodes run in it (a simulation): each
    dataset loaded once, and one model, template and jitted trainer per configuration, so a
    thousand nodes compile once. Their optimiser states stay their own. Simulations that share
    a pool share its trainers' vectorised steps too (``vectorised``, by ``id`` of the trainer,
    filled by :class:`gossipfl.scenario.batcher.Batcher`): traced and lowered once, not once a
    run."""

    def __init__(self, data_cache: str | None = None) -> None:
        self.data_cache = data_cache  # where a generated data set is kept (learning/generated)
        self._datasets: dict[tuple[object, ...], Dataset] = {}
        self._partitions: dict[tuple[object, ...], list[np.ndarray]] = {}
        self._trainers: dict[tuple[object, ...], tuple[Model, Params, Trainer]] = {}
        self.vectorised: dict[int, Any] = {}

    def dataset(self, config: NodeConfig) -> Dataset:
        spec = config.data
        key = data_key(config)
        if key not in self._datasets:
            self._datasets[key] = load_kept(spec.dataset, cache=self.data_cache,
                                            seed=spec.seed, test_fraction=spec.test_fraction,
                                            path=spec.path, samples=spec.samples,
                                            test_path=spec.test_path)
        return self._datasets[key]

    def indices(self, config: NodeConfig, dataset: Dataset) -> np.ndarray:
        """This node's partition (every node's computed once: the partition is global)."""
        spec = config.data
        if spec.partition == "none":
            return np.arange(len(dataset.y_train))
        key = (id(dataset), spec.partition, config.node_count, spec.seed, spec.alpha,
               spec.shards_per_node, spec.holders)
        if key not in self._partitions:
            self._partitions[key] = partition_indices_of(
                dataset.y_train, config.node_count, scheme=spec.partition, seed=spec.seed,
                alpha=spec.alpha, shards_per_node=spec.shards_per_node, holders=spec.holders)
        return self._partitions[key][config.node_index]

    def trainer(self, config: NodeConfig, dataset: Dataset) -> tuple[Model, Params, Trainer]:
        key = (config.model, config.train, config.seed, dataset.input_shape, dataset.num_classes)
        if key not in self._trainers:
            model = make_model(config, dataset)
            self._trainers[key] = (model, model.init(config.seed), Trainer(model, config.train))
        return self._trainers[key]


class LocalLearner:
    """Train and evaluate one node's model on its own partition (``pool``: datasets and
    trainers shared with the other nodes of the process; ``executables``: a process of one
    node loads its compiled steps from the machine's folder). A node that holds no data
    (``data.holders``) trains nothing: :meth:`train` returns the model it was given."""

    def __init__(self, config: NodeConfig, pool: LearnerPool | None = None,
                 executables: ExecutableCache | None = None) -> None:
        self.config = config
        if pool is None:
            self.dataset, self.indices = load_node_data(config)
        else:
            self.dataset = pool.dataset(config)
            self.indices = pool.indices(config, self.dataset)
        if pool is None or executables is not None:  # its own steps (loaded, with executables)
            self.model = make_model(config, self.dataset)
            # Every member starts from the same initial model: the federation seed decides it.
            self.template = self.model.init(config.seed)
            self.trainer = Trainer(self.model, config.train, executables)
        else:
            self.model, self.template, self.trainer = pool.trainer(config, self.dataset)
        self.x = self.dataset.x_train[self.indices]
        self.y = self.dataset.y_train[self.indices]
        self.opt_state = self.trainer.init_opt_state(self.template)
        # held while :meth:`prepare` compiles, so that the first round waits for it rather
        # than compile the same steps beside it
        self._compiling = threading.Lock()

    def prepare(self, dp: RecordDP | None = None) -> float:
        """Compile (or load from the compile cache) the steps :meth:`train` and
        :meth:`evaluate` run, on throwaway state: from the initial model with a fresh optimiser
        state, one step through the chunk of minibatch steps (one program, whatever a chunk's
        count; one DP-SGD step with DP), and one evaluation. Nothing of the node changes: its
        optimiser state, its DP budget and its DP generator are left as they were (DP-SGD's step is
        compiled with noise from a generator of its own, whose draws are thrown away with the
        step's result). A node runs it in a worker thread while it joins, so that round 0 does
        not wait for the compilation. Returns the seconds it took."""
        start = time.perf_counter()
        with self._compiling:
            params = unflatten_params(self.initial_vector(), self.template)
            if not len(self.y):  # nothing to train on: only the evaluation is compiled
                self.trainer.evaluate(params, self.dataset.x_test, self.dataset.y_test)
                return time.perf_counter() - start
            dpsgd = None
            if dp is not None:
                dpsgd = DPSGD(clip_norm=dp.budget.config.clip_norm,
                              noise_multiplier=dp.budget.noise_multiplier,
                              sample_rate=dp.budget.sample_rate, rng=np.random.default_rng())
            steps = 1  # one chunk (its count an argument) or one DP-SGD step
            self.trainer.train(params, self.trainer.init_opt_state(self.template), self.x,
                               self.y, epochs=steps, seed=0, max_steps=steps, dp=dpsgd)
            self.trainer.evaluate(params, self.dataset.x_test, self.dataset.y_test)
        return time.perf_counter() - start

    def initial_vector(self) -> np.ndarray:
        return flatten_params(self.template)

    @property
    def size(self) -> int:
        return int(self.initial_vector().size)

    def tensor_names(self) -> list[str]:
        return [name for name, _ in named_arrays(self.template)]

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.y) // self.config.train.batch_size)

    def _seed(self, round_: int) -> int:
        return (self.config.seed * 1_000_003 + self.config.node_index * 7919 + round_) % 2**31

    def _steps(self, epochs: float | None) -> int | None:
        """Minibatch steps for ``epochs`` of local work; None: the configured whole epochs."""
        if epochs is None or epochs == self.config.train.local_epochs:
            return None
        return max(1, math.ceil(epochs * self.steps_per_epoch - 1e-9))

    def _epochs(self, steps: int | None) -> int:
        configured = self.config.train.local_epochs
        return configured if steps is None else -(-steps // self.steps_per_epoch)

    def _result(self, params: Params, loss: float, seconds: float,
                steps: int | None) -> TrainResult:
        done = (float(self.config.train.local_epochs) if steps is None
                else steps / self.steps_per_epoch)
        return TrainResult(flatten_params(params), float(loss), seconds, len(self.y), done)

    def train(self, vector: np.ndarray, round_: int, epochs: float | None = None,
              dp: RecordDP | None = None) -> TrainResult:
        """Train from ``vector``: the configured epochs, or ``epochs`` of local work (rounded up
        to whole minibatch steps). With ``dp``, DP-SGD: the steps are spent from ``dp.budget``
        before they are taken, and only as many as keep ε within the target (training stops
        there, logged once)."""
        start = time.perf_counter()
        with self._compiling:  # after :meth:`prepare`, if it runs
            pass
        if not len(self.y):  # no data (data.holders): no work, the model as it was
            return TrainResult(np.asarray(vector, np.float32).copy(), 0.0,
                               time.perf_counter() - start, 0, 0.0)
        params = unflatten_params(vector, self.template)
        steps = self._steps(epochs)
        dpsgd = None
        if dp is not None:
            configured = self.config.train.local_epochs
            wanted = configured * self.steps_per_epoch if steps is None else steps
            allowed = dp.budget.steps_allowed(wanted)
            if allowed < wanted:
                log.warning("round %d: privacy budget allows %d of %d DP-SGD steps (epsilon "
                            "%.3f of %.3f at delta %g after %d steps); training stops there",
                            round_, allowed, wanted, dp.budget.epsilon(),
                            dp.budget.config.target_epsilon, dp.budget.config.delta,
                            dp.budget.spent)
            if allowed == 0:
                return TrainResult(np.asarray(vector, np.float32).copy(), 0.0,
                                   time.perf_counter() - start, len(self.y), 0.0)
            dp.budget.spend(allowed)  # spent before the steps are taken
            steps = allowed
            dpsgd = DPSGD(clip_norm=dp.budget.config.clip_norm,
                          noise_multiplier=dp.budget.noise_multiplier,
                          sample_rate=dp.budget.sample_rate, rng=dp.rng)
        params, self.opt_state, loss = self.trainer.train(
            params, self.opt_state, self.x, self.y, epochs=self._epochs(steps),
            seed=self._seed(round_), max_steps=steps, dp=dpsgd,
        )
        return self._result(params, loss, time.perf_counter() - start, steps)

    def train_job(self, vector: np.ndarray, round_: int,
                  epochs: float | None = None) -> TrainJob:
        """What :meth:`train` (without DP) would run, as a job to batch with other nodes'
        (:class:`gossipfl.learning.batched.Batched`); hand its outcome to :meth:`take`."""
        steps = self._steps(epochs)
        plan = minibatch_plan(len(self.y), self.config.train.batch_size, self._epochs(steps),
                              self._seed(round_), steps)
        return TrainJob(unflatten_params(vector, self.template), self.opt_state, self.x,
                        self.y, plan)

    def take(self, outcome: tuple[Params, Any, float], epochs: float | None,
             seconds: float) -> TrainResult:
        """The result of a batched :meth:`train_job` that cost this node ``seconds`` (its
        share of the batch): the optimiser state is kept, as :meth:`train` keeps it."""
        params, self.opt_state, loss = outcome
        return self._result(params, loss, seconds, self._steps(epochs))

    def evaluate(self, vector: np.ndarray) -> EvalResult:
        start = time.perf_counter()
        with self._compiling:  # after :meth:`prepare`, if it runs
            pass
        params = unflatten_params(vector, self.template)
        loss, accuracy = self.trainer.evaluate(params, self.dataset.x_test, self.dataset.y_test)
        return EvalResult(float(loss), float(accuracy), time.perf_counter() - start)

    def local_loss(self, vector: np.ndarray) -> float | None:
        """The mean loss of ``vector`` on this node's own training data (``[robust] screen``:
        :mod:`gossipfl.aggregation.screen`); ``None`` for a node that holds no data."""
        if len(self.y) == 0:
            return None
        with self._compiling:
            pass
        loss, _ = self.trainer.evaluate(unflatten_params(vector, self.template), self.x, self.y)
        return float(loss)
