"""Benchmark: what the node's protections cost one node per round, timed on the node's own rounds.

Five real :class:`~gossipfl.node.runtime.Node` objects, each a neighbour of every other (degree
d = 4), run whole (``Node.run``: admission, links, rounds) in one process over the in-memory
network (:mod:`gossipfl.scenario.observed`), the model an MLP on digits with about P parameters.
Each setting is one such federation of ``--reps`` + 1 training rounds; nothing composes a round
here, the rounds are the node's (:mod:`gossipfl.node.round`):

* ``plain gossip``: admitted members, contributions in the clear (``encrypt_payloads`` off):
  each node sends d frames (encoded, written), takes d (decoded, applied to its estimates) and
  mixes (the CHOCO step);
* ``sealed gossip``: the same, every contribution signed and encrypted to its receiver;
* ``secure aggregation``: sealed masked inputs, the consistency step and unmasking; *of which*
  ``masking`` (the node's ``secure_round.masked_input``: quantise, d − 1 pair masks and the self
  mask, Shamir shares of the self seed sealed to each holder; d a round) and ``unmasking``
  (``secure_round.unmask``: self seeds from threshold shares, masks removed, dequantised; one a
  round); the rest is sealing, the wire, signing and checking survivor sets, opening shares;
* ``node-level DP``: sealed gossip with the node-level mechanism on each published update;
* ``sgd step`` / ``dp-sgd step``: one local training step of the learner, without and with
  record-level DP (per-example gradients, clipping, noise); the record unit's cost is its
  steps, so it is given per step, its ratio against a plain SGD step.

How it is timed: the simulation runs everything in one thread under a mock clock (no waiting
costs time; the nodes' own ``*_seconds`` records are virtual time, so they are not used). The
protocol's work in round r is the wall time from the moment the last node ends round r − 1 to
the moment the last node ends round r, less the blocking work the nodes hand their offload that
is not the protocol's (training, evaluation, checkpoints); divided by the nodes (all alike), it
is one node's protocol work in a round; the figures are medians over the rounds after round 0
(which compiles). Each node's ``masked_input`` and ``unmask`` calls go through its offload and
are timed there. Ratios are against ``plain gossip`` measured in the same run.

    .venv/bin/python benchmarks/bench_privacy_cost.py            # 100k and 1M parameters
    .venv/bin/python benchmarks/bench_privacy_cost.py --quick    # 100k only
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

from threadpoolctl import threadpool_limits

from gossipfl.config import (
    DataConfig,
    ModelConfig,
    NodeConfig,
    ProtocolConfig,
    SecAggConfig,
    TopologyConfig,
)
from gossipfl.learning.train import TrainConfig
from gossipfl.node.learner import LearnerPool, LocalLearner, RecordDP
from gossipfl.privacy.accountant import make_budget
from gossipfl.privacy.dp import DPConfig, PrivacyUnit, noise_generator
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.observed import ObservedSimulation, observe_scenario

NODES = 5
INPUTS = 64 * 1 + 10  # digits: 64 features, 10 classes; an MLP (h,) has about 75·h parameters
SETTINGS = ("plain gossip", "sealed gossip", "secure aggregation", "node-level DP")
PARTS = {"masking": "masked_input", "unmasking": "unmask"}  # offloaded protocol work, by name
PROTOCOL_OFFLOADS = frozenset(PARTS.values())


def _hidden(parameters: int) -> int:
    return max(1, round((parameters - 10) / (INPUTS + 1)))


def _scenario(parameters: int, setting: str, rounds: int) -> ScenarioConfig:
    node_dp = DPConfig(enabled=True, unit=PrivacyUnit.NODE)  # σ for ε = 8 over the rounds
    return ScenarioConfig(
        name="bench", nodes=NODES, rounds=rounds, seed=0, timeout=3600.0,
        keep_round_models=False, encrypt_payloads=setting != "plain gossip",
        data=DataConfig(dataset="digits", partition="iid"),
        model=ModelConfig(name="mlp", hidden=(_hidden(parameters),)),
        train=TrainConfig(optimizer="sgd", learning_rate=0.05, batch_size=32, local_epochs=1),
        topology=TopologyConfig(kind="full"), protocol=ProtocolConfig(max_consensus_rounds=0),
        privacy=node_dp if setting == "node-level DP" else DPConfig(),
        secagg=SecAggConfig(enabled=setting == "secure aggregation"))


def _per_node_round(sim: ObservedSimulation, rounds: int) -> dict[str, float]:
    """Seconds of protocol work per node in a round (the median over rounds 1 onwards, each
    from the last node's end of the round before to the last node's end of it); and the
    offloaded parts of it (:data:`PARTS`). One thread runs it all: no offloaded call straddles
    the end of a round."""
    ends = [max(views[r].ended for views in sim.views.values()) for r in range(rounds)]
    per_round: dict[str, list[float]] = {"total": [], **{part: [] for part in PARTS}}
    for start, end in itertools.pairwise(ends):
        inside = [o for o in sim.offloaded if start <= o.started < end]
        other = sum(o.seconds for o in inside if o.name not in PROTOCOL_OFFLOADS)
        per_round["total"].append((end - start - other) / len(sim.views))
        for part, name in PARTS.items():
            per_round[part].append(sum(o.seconds for o in inside if o.name == name)
                                   / len(sim.views))
    return {name: statistics.median(values) for name, values in per_round.items()}


def _train_steps(config: NodeConfig, pool: LearnerPool, reps: int) -> tuple[float, float]:
    """Median seconds of one SGD step and one DP-SGD step of a node's learner."""
    learner = LocalLearner(config, pool)
    one = 1.0 / learner.steps_per_epoch
    dp = DPConfig(enabled=True, unit=PrivacyUnit.RECORD, noise_multiplier=1.0)
    vector = learner.initial_vector()

    def step(record: RecordDP | None) -> float:
        start = time.perf_counter()
        learner.train(vector, 0, one, record)
        return time.perf_counter() - start

    def budget() -> RecordDP:
        return RecordDP(make_budget(dp, rounds=10**6, records=len(learner.y), batch_size=32,
                                    local_epochs=1), noise_generator())

    step(None), step(budget())  # compile
    plain = statistics.median(step(None) for _ in range(reps))
    private = statistics.median(step(budget()) for _ in range(reps))
    return plain, private


def bench(parameters: int, reps: int) -> dict[str, float]:
    rounds = reps + 1  # round 0 compiles: not timed
    pool = LearnerPool()
    figures: dict[str, float] = {}
    for setting in SETTINGS:
        with tempfile.TemporaryDirectory(prefix="gossipfl-bench-") as folder:
            sim = observe_scenario(_scenario(parameters, setting, rounds), Path(folder),
                                   pool=pool, keep_vectors=False, key_seed=0)
        measured = _per_node_round(sim, rounds)
        figures[setting] = measured["total"]
        if setting == "secure aggregation":
            figures.update({part: measured[part] for part in PARTS})
    node = sim.nodes[0]
    figures["sgd step"], figures["dp-sgd step"] = _train_steps(node.config, pool, reps)
    figures["parameters"] = float(node.layout.size)
    return figures


def table(results: dict[int, dict[str, float]]) -> str:
    sizes = sorted(results)
    labels = [f"{int(results[s]['parameters']):,} params" for s in sizes]
    head = f"{'protocol work (per node, round)':<32}" + "".join(f"{label:>24}" for label in labels)
    lines = [head, f"{'':<32}" + "".join(f"{'ms':>12}{'× plain':>12}" for _ in sizes)]

    def row(label: str, name: str) -> str:
        return f"{label:<32}" + "".join(
            f"{1e3 * results[s][name]:>12.2f}"
            f"{results[s][name] / results[s]['plain gossip']:>12.2f}" for s in sizes)

    for setting in SETTINGS:
        lines.append(row(setting, setting))
        if setting == "secure aggregation":
            lines += [row(f"  of which {part}", part) for part in PARTS]
    lines.append(f"{'sgd step':<32}" + "".join(
        f"{1e3 * results[s]['sgd step']:>12.2f}{'':>12}" for s in sizes))
    lines.append(f"{'dp-sgd step (× sgd step)':<32}" + "".join(
        f"{1e3 * results[s]['dp-sgd step']:>12.2f}"
        f"{results[s]['dp-sgd step'] / results[s]['sgd step']:>12.2f}" for s in sizes))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k parameters only")
    parser.add_argument("--reps", type=int, default=7, help="timed rounds (and training steps)")
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    with threadpool_limits(limits=1):
        results = {size: bench(size, max(3, args.reps)) for size in sizes}
    print(table(results))


if __name__ == "__main__":
    main()
