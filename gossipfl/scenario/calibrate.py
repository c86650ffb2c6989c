"""The short calibration behind ``gossipfl estimate`` (issue 13): what one node's work costs on
the machine at hand, measured with the project's own code, in a few seconds.

- **Learning**: the scenario's dataset, every node's partition and the model, loaded with
  :mod:`gossipfl.learning`; one node's real training step (the real :class:`Trainer`, DP-SGD
  when record-level DP is on) timed for one round of local epochs after compilation (the first
  call, compilation included, is timed too), and the evaluation on the test set.
- **Wire**: the bytes of one real contribution frame as the scenario sends it (a full estimate
  and a delta, compressed as ``[compression]`` says, sealed with the real envelope when
  payloads are sealed), an ack, a heartbeat listing every member (certificates and liveness
  stamps when admission is on), a link request and reply, and with secure aggregation a real
  masked input (quantised, masked, self seed Shamir-shared and encrypted to each co-neighbour),
  the consistency request and signed response, the unmask request (shares and signatures) and
  response. Keys are made in memory (no files).
- **CPU per message**: the CPU time to build, seal, frame, open and decode one contribution
  (both ends of one exchange), and one heartbeat.
- **Start-up and memory**, the way the launcher starts nodes: a fresh interpreter importing
  what the launcher imports (its CPU seconds); then this process imports the same and forks a
  warm-up child that compiles into a fresh compilation cache (its CPU to the end of its first
  round), and a node child that loads from it: its CPU to the end of its first round and its
  peak RSS (ru_maxrss, as a node reports its own) are a node's start and the base of its peak.
  Times are CPU seconds (``time.process_time``), so a busy machine does not inflate them.

- **Transport**: the CPU py-libp2p spends on one small frame between two real hosts (a
  ping-pong on loopback, in a forked child): how fast this machine runs the event loop, which
  scales the cost model's few constants fitted from runs.

The wire measurements are in :mod:`gossipfl.scenario.calibrate_wire`, the transport probe in
:mod:`gossipfl.scenario.calibrate_transport`.

The cost model that turns these figures into per-node estimates is
:mod:`gossipfl.scenario.estimate` (pure).
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gossipfl.config import NodeConfig
from gossipfl.gossip.wire_fields import MAX_MEMBERS as MAX_MEMBERS_LISTED
from gossipfl.scenario.calibrate_transport import frame_seconds
from gossipfl.scenario.calibrate_wire import (
    SecAggBytes,
    contribution_frames,
    heartbeat_frame,
    make_members,
    secagg_frames,
    timed,
)
from gossipfl.scenario.config import ScenarioConfig

#: Timed repetitions of the steady training round and of the message codec.
TRAIN_REPEATS = 3
REPEAT_BUDGET_SECONDS = 1.0  # no further repeat once the timed ones took this long
PROBE_SECONDS = 0.5  # each of the two probes of how busy the machine is
FULL_SHARE = 0.95  # busy loops on every core getting this much of them: the machine is free


@dataclass(frozen=True)
class Calibration:
    """What the calibration measured (seconds: CPU seconds of this machine, one core)."""

    cores: int
    other_load: float  # runnable processes of other work, from the probes' machine share
    parameters: int
    examples: tuple[int, ...]  # training examples per node (the scenario's partition)
    steps: tuple[int, ...]  # minibatch steps per node in a training round
    test_examples: int
    import_seconds: float  # a fresh interpreter importing JAX, libp2p and the node runtime
    compile_seconds: float  # the warm-up child: JAX, data, model, first round (compiling)
    node_first_seconds: float  # a node child the same way, loading from the compile cache
    train_seconds: float  # one steady training round of node 0 (its local epochs)
    eval_seconds: float  # one evaluation on the test set
    full_bytes: int  # one contribution frame carrying the full estimate (as sent)
    delta_bytes: int  # one carrying a delta (compressed when the scenario compresses)
    ack_bytes: int
    heartbeat_bytes: int  # one heartbeat listing every member
    link_bytes: int  # a link request plus its reply
    message_cpu_seconds: float  # one contribution: build, seal, frame, open, decode
    heartbeat_cpu_seconds: float  # one heartbeat: build, frame, decode, check its stamps
    frame_seconds: float  # py-libp2p's CPU for one small frame sent or received (the probe)
    secagg: SecAggBytes | None
    base_rss_bytes: int  # peak RSS of a forked child that loaded, trained and evaluated
    calibration_seconds: float

    def train_seconds_for(self, index: int) -> float:
        """One steady training round of node ``index`` (scales with its minibatch steps)."""
        return self.train_seconds * self.steps[index] / max(1, self.steps[0])


def node_config(scenario: ScenarioConfig, index: int = 0) -> NodeConfig:
    """The learning part of node ``index``'s configuration, as the runner writes it."""
    return NodeConfig(federation=scenario.federation_name, node_index=index,
                      node_count=scenario.nodes, rounds=scenario.rounds, seed=scenario.seed,
                      data=scenario.data, model=scenario.model, train=scenario.train,
                      protocol=scenario.protocol, privacy=scenario.privacy,
                      compression=scenario.compression)


NODE_MODULES = ("gossipfl.node.learner", "gossipfl.node.main", "gossipfl.node.round",
                "gossipfl.node.runtime")


def _import_node_modules(scenario: ScenarioConfig, fresh: bool) -> float:
    """Import what the launcher imports before it forks the nodes, here; with ``fresh``, also
    time a fresh interpreter doing it (as the launcher does, from scratch)."""
    modules = NODE_MODULES + (("gossipfl.privacy.accountant",) if scenario.privacy.enabled
                              else ())
    for module in modules:
        importlib.import_module(module)
    if not fresh:
        return 0.0
    before = _children_cpu()
    done = subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], check=False,
                          capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode != 0:
        raise CalibrationError("importing the node's modules in a fresh interpreter failed: "
                               + done.stderr.decode(errors="replace").strip()[-300:])
    return _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _learning(scenario: ScenarioConfig, cache: str | None, pool: Any) -> dict[str, Any]:
    """Load the data and model, time one node's training round (the first call, compilation
    or cache load included, then steady) and evaluation; with ``cache``, through the node's
    own cache of compiled steps in that folder, as the launcher's children do. ``ready``: the
    CPU seconds from the call (in a fresh child: the fork) to the end of the first round's
    training and evaluation (JAX's backend, the model, compilation or cache load; the data
    are ``pool``'s, loaded once before the fork: the caller adds what loading them cost)."""
    started = time.process_time()
    from gossipfl.learning.params import named_arrays
    from gossipfl.learning.partition import partition_indices
    from gossipfl.learning.train import DPSGD
    from gossipfl.node.compile_cache import node_executables
    from gossipfl.node.learner import LocalLearner

    config = node_config(scenario)
    learner = LocalLearner(config, pool, executables=node_executables(cache))
    spec = config.data
    if spec.partition == "none":
        examples = [len(learner.dataset.y_train)] * scenario.nodes
    else:
        parts = partition_indices(learner.dataset.y_train, scenario.nodes, scheme=spec.partition,
                                  seed=spec.seed, alpha=spec.alpha,
                                  shards_per_node=spec.shards_per_node,
                                  holders=spec.holders)
        examples = [len(p) for p in parts]
    vector = learner.initial_vector()
    dp = None
    if scenario.privacy.enabled and scenario.privacy.unit == "record":
        rate = min(1.0, scenario.train.batch_size / max(1, len(learner.y)))
        noise = scenario.privacy.noise_multiplier or 1.0
        dp = DPSGD(clip_norm=scenario.privacy.clip_norm, noise_multiplier=noise,
                   sample_rate=rate, rng=np.random.default_rng())

    def train() -> None:
        learner.trainer.train(learner.template, learner.opt_state, learner.x, learner.y,
                              epochs=scenario.train.local_epochs, seed=1, dp=dp)

    def evaluate() -> None:
        learner.evaluate(vector)

    def steady(call: Callable[[], None]) -> float:  # a few times, within a budget
        times = [timed(call)]
        while len(times) < TRAIN_REPEATS and sum(times) < REPEAT_BUDGET_SECONDS:
            times.append(timed(call))
        return min(times)

    first_train = timed(train)
    first_eval = timed(evaluate)
    ready = time.process_time() - started  # the child's CPU up to its first round's end
    return {
        "parameters": int(vector.size), "examples": examples,
        "test_examples": len(learner.dataset.y_test), "train_examples": len(learner.y),
        "first_train": first_train, "first_eval": first_eval, "ready": ready,
        "train": steady(train), "eval": steady(evaluate),
        "names": [[name, list(np.shape(a))] for name, a in named_arrays(learner.template)],
        "rss": peak_rss_bytes(),
    }


def _busy(seconds: float) -> None:
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        sum(range(1000))


def machine_share(cores: int, seconds: float = PROBE_SECONDS) -> float:
    """The share of the machine ``cores`` busy loops get here now (their CPU seconds over
    ``cores`` × wall seconds): 1 on an idle machine, C / (C + L) with L other runnable
    processes keeping the cores busy. This process loops as one of them, forked children as
    the others."""
    wall = time.perf_counter()
    own, children = time.process_time(), _children_cpu()
    pids = []
    for _ in range(cores - 1):
        pid = os.fork()
        if pid == 0:  # a child: loop, leave
            try:
                _busy(seconds)
            finally:
                os._exit(0)
        pids.append(pid)
    _busy(seconds)
    for pid in pids:
        os.waitpid(pid, 0)
    cpu = time.process_time() - own + _children_cpu() - children
    return min(1.0, cpu / max(1e-9, cores * (time.perf_counter() - wall)))


def other_load(cores: int, share: float) -> float:
    """Runnable processes of other work that the machine ``share`` C busy loops got implies:
    with L of them, C / (C + L); nearly all of it says the machine is free (none).

    >>> other_load(2, 1.0), other_load(2, 0.5)
    (0.0, 2.0)
    """
    return 0.0 if share >= FULL_SHARE else max(0.0, cores / max(share, 1e-3) - cores)


def peak_rss_bytes() -> int:
    """This process's peak resident set, as a node reports its own."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()`` in a forked child (the way the launcher starts nodes: this process imported
    the modules, the child initialises JAX); its JSON result back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read)
            try:
                result: dict[str, Any] = work()
            except Exception as error:  # reported to the parent, which raises it
                result, code = {"error": f"{type(error).__name__}: {error}"}, 1
            with os.fdopen(write, "w") as pipe:
                json.dump(result, pipe)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(text) if text else {"error": "the calibration child died"}
    if "error" in result:
        raise CalibrationError(f"calibration failed: {result['error']}")
    return result


class CalibrationError(RuntimeError):
    """The calibration could not measure the scenario (the message says why)."""


def scenario_degree(scenario: ScenarioConfig) -> int:
    """The most links a node of the scenario has."""
    topology, n = scenario.topology, scenario.nodes
    if topology.kind == "ring":
        return min(2, n - 1)
    if topology.kind == "full":
        return n - 1
    if topology.kind == "edges":
        counts = [sum(1 for e in topology.edges if i in e) for i in range(n)]
        return max(counts)
    return min(topology.degree, n - 1)


def calibrate(scenario: ScenarioConfig, *, isolated: bool = True) -> Calibration:
    """Measure one node's costs for ``scenario`` on this machine (a few seconds).

    ``isolated`` (the CLI): as the launcher does, this process imports and forks, a first
    child compiles into a fresh compilation cache and times the steady steps, a second loads
    from it like a node and reports its peak RSS; this process must not have started JAX.
    Otherwise (tests) everything runs here, without a cache."""
    start = time.perf_counter()
    cores = os.cpu_count() or 1
    shares = [machine_share(cores)] if isolated else [1.0]

    def probe() -> float:
        return float((in_child(lambda: {"frame": frame_seconds()}) if isolated
                      else {"frame": frame_seconds()})["frame"])

    # the transport probe at both ends of the calibration, the less disturbed kept: a slow
    # spell of a shared machine (every figure 1.3-1.75x for a minute) misled one estimate
    # by 80 % when the one probe fell in it
    first_frame = probe()
    import_seconds = _import_node_modules(scenario, fresh=isolated)
    from gossipfl.node.learner import LearnerPool

    pool = LearnerPool()  # the data, loaded once here (numpy only) and shared by the children
    data_seconds = timed(lambda: pool.dataset(node_config(scenario)))
    federation = make_members(min(scenario.nodes, MAX_MEMBERS_LISTED))

    def messages(names: list[tuple[str, tuple[int, ...]]]) -> tuple[float, float]:
        """The contribution's and the heartbeat's CPU (measured again at the end, like the
        probe: the less disturbed kept); the frames' sizes do not change."""
        return (contribution_frames(scenario, names, federation[0], federation[1])[3],
                heartbeat_frame(scenario, federation)[2])

    if isolated:
        with tempfile.TemporaryDirectory(prefix="gossipfl-calibrate-") as cache:
            warm = in_child(lambda: _learning(scenario, cache, pool))
            names = [(str(n), tuple(int(x) for x in shape)) for n, shape in warm["names"]]
            full, delta, ack, message_cpu = contribution_frames(scenario, names, federation[0],
                                                                federation[1])
            heartbeat, link, heartbeat_cpu = heartbeat_frame(scenario, federation)
            node = in_child(lambda: _learning(scenario, cache, pool))
    else:
        warm = node = _learning(scenario, None, pool)
        names = [(str(n), tuple(int(x) for x in shape)) for n, shape in warm["names"]]
        full, delta, ack, message_cpu = contribution_frames(scenario, names, federation[0],
                                                            federation[1])
        heartbeat, link, heartbeat_cpu = heartbeat_frame(scenario, federation)
    secure = (secagg_frames(scenario, int(warm["parameters"]), scenario_degree(scenario))
              if scenario.secagg.enabled else None)
    frame = min(first_frame, probe())
    again = messages(names)
    message_cpu, heartbeat_cpu = min(message_cpu, again[0]), min(heartbeat_cpu, again[1])
    batch, epochs = scenario.train.batch_size, scenario.train.local_epochs
    if isolated:
        shares.append(machine_share(cores))
    return Calibration(
        cores=cores, other_load=other_load(cores, sum(shares) / len(shares)),
        parameters=int(warm["parameters"]),
        examples=tuple(warm["examples"]),
        steps=tuple(epochs * -(-e // batch) for e in warm["examples"]),
        test_examples=int(warm["test_examples"]), import_seconds=import_seconds,
        compile_seconds=data_seconds + float(warm["ready"]),
        node_first_seconds=data_seconds + float(node["ready"]),
        train_seconds=min(warm["train"], node["train"]), eval_seconds=min(warm["eval"],
                                                                          node["eval"]),
        full_bytes=full, delta_bytes=delta, ack_bytes=ack, heartbeat_bytes=heartbeat,
        link_bytes=link, message_cpu_seconds=message_cpu, heartbeat_cpu_seconds=heartbeat_cpu,
        frame_seconds=frame, secagg=secure, base_rss_bytes=int(node["rss"]),
        calibration_seconds=time.perf_counter() - start,
    )


__all__ = ["Calibration", "CalibrationError", "SecAggBytes", "calibrate", "in_child",
           "node_config", "other_load", "peak_rss_bytes", "scenario_degree"]
