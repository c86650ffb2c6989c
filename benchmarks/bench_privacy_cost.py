"""Benchmark: what the node's protections cost one node per round, timed on the node's own code.

A star of five real :class:`~gossipfl.node.runtime.Node` objects in one process
(:mod:`gossipfl.node.inprocess`: admitted identities, certificates), every member a neighbour of
every other (degree d = 4), the model an MLP on digits with about P parameters. One round of
node ``a`` is timed phase by phase, single-threaded; each phase counts what one node does per
round (as contributor to its d neighbours and as aggregator of its own neighbourhood):

* ``plain``: d contribution frames out (``Contribution``, ``encode_frame``) and d in
  (``decode_frame``, ``Layout.from_tensors``, ``PeerEstimates.apply``): the path without
  protection.
* ``seal/open``: the same frames sealed by ``NodeSecurity.seal`` and opened by
  ``Node.open_sealed_message`` (signature and encryption, on top of ``plain``).
* ``mask``: d ``secure_round.masked_input`` (quantise, pair seeds with the d−1 co-members,
  masks, Shamir shares of the self seed sealed to each holder) and d ``accept_masked``.
* ``consistency``: d ``answer_consistency`` (check and sign the survivor set) and the
  aggregator's check of the d signatures.
* ``unmask``: d ``answer_unmask`` (shares opened) and ``secure_round.unmask`` (self seeds from
  threshold shares, masks removed, dequantised).
* ``dp (node)``: ``privatise_update`` of the round's delta (the node unit).
* ``sgd step`` / ``dp-sgd step``: one local training step of the learner, without and with
  record-level DP (per-example gradients, clipping, noise); the record unit's cost is its
  steps, so it is given per step, its ratio against a plain SGD step.

Ratios are against ``plain`` measured in the same run (medians over ``--reps``).

    .venv/bin/python benchmarks/bench_privacy_cost.py            # 100k and 1M parameters
    .venv/bin/python benchmarks/bench_privacy_cost.py --quick    # 100k only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trio
from threadpoolctl import threadpool_limits

from gossipfl.config import DataConfig, ModelConfig, NodeConfig, SecAggConfig
from gossipfl.crypto import consistency
from gossipfl.gossip import wire
from gossipfl.gossip.wire import ConsistencyRequest, Contribution, Sealed
from gossipfl.learning.train import TrainConfig
from gossipfl.node import inprocess, secure_round
from gossipfl.node.learner import RecordDP
from gossipfl.node.runtime import Node
from gossipfl.privacy.accountant import make_budget
from gossipfl.privacy.dp import DPConfig, PrivacyUnit, noise_generator, privatise_update

INPUTS = 64 * 1 + 10  # digits: 64 features, 10 classes; an MLP (h,) has about 75·h parameters
PHASES = ("plain", "seal/open", "mask", "consistency", "unmask", "dp (node)")


def _star(folder: Path, parameters: int) -> list[Node]:
    hidden = max(1, round((parameters - 10) / (INPUTS + 1)))
    configs = [NodeConfig(federation="bench", node_index=i, node_count=5, seed=0,
                          data=DataConfig(dataset="digits", partition="iid"),
                          model=ModelConfig(name="mlp", hidden=(hidden,)),
                          train=TrainConfig(optimizer="sgd", learning_rate=0.05, batch_size=32),
                          secagg=SecAggConfig(enabled=True), security=inprocess.ADMITTED)
               for i in range(5)]
    graph = {i: frozenset(j for j in range(5) if j != i) for i in range(5)}
    nodes = inprocess.build_federation(folder, configs, graph)
    rng = np.random.default_rng(0)
    for node in nodes:
        node.own.vector = rng.normal(0, 0.05, node.layout.size).astype(np.float32)
    return nodes


def _round(nodes: list[Node], r: int) -> dict[str, float]:
    """One round of node a (nodes[0]) as aggregator and contributor; seconds per phase."""
    a, members = nodes[0], nodes[1:]
    cap = a.payload_cap
    seconds: dict[str, float] = {}

    def timed(name: str, work: Callable[[], object]) -> object:
        start = time.perf_counter()
        out = work()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start
        return out

    a.round = r
    for m in members:  # out: a's frame to m; in: m's frame to a (the same work either way)
        frame = timed("plain", lambda m=m: wire.encode_frame(inprocess.contribution(a, m.peer_id,
                                                                                    r), cap))
        message = timed("plain", lambda m=m: wire.decode_frame(wire.encode_frame(
            inprocess.contribution(m, a.peer_id, r), cap), Contribution, cap))
        timed("plain", lambda message=message: a.estimates.apply(
            message, a.layout.from_tensors(message.tensors)))
        del frame
        sealed = timed("seal/open", lambda m=m: wire.encode_frame(
            m.security.seal(inprocess.contribution(m, a.peer_id, r)), cap))
        timed("seal/open", lambda sealed=sealed, m=m: a.open_sealed_message(
            m.peer_id, wire.decode_frame(sealed, Sealed, cap), Contribution))
        timed("seal/open", lambda m=m: a.security.seal(inprocess.contribution(a, m.peer_id, r)))
    a.estimates.peers.clear()
    # a masks for each of its d neighbours' sums (once here: the d inputs to a are alike)
    inputs = {}
    for m in members:
        message = timed("mask", lambda m=m: secure_round.masked_input(m, a.peer_id, r,
                                                                      m.own.vector, False))
        timed("mask", lambda m=m, message=message: secure_round.accept_masked(a, m.peer_id,
                                                                              message))
        inputs[m.peer_id] = message
    survivors = sorted(inputs)
    request = ConsistencyRequest("bench", r, a.peer_id, tuple(survivors), ())
    signatures = {}
    for m in members:
        response = timed("consistency", lambda m=m: secure_round.answer_consistency(
            m, a.peer_id, request))
        signatures[m.peer_id] = response.signature
    announced = secure_round._announced(request)
    timed("consistency", lambda: consistency.check_signatures(
        announced, list(signatures.items()), needed=3))
    responses = {}
    for m in members:
        unmask = secure_round.unmask_request(a, r, inputs, survivors, [], m.peer_id,
                                             tuple(sorted(signatures.items())))
        responses[m.peer_id] = timed("unmask", lambda m=m, unmask=unmask:
                                     secure_round.answer_unmask(m, a.peer_id, unmask))
    timed("unmask", lambda: secure_round.unmask(a, r, inputs, survivors, [], responses))
    config = DPConfig(enabled=True, unit=PrivacyUnit.NODE, noise_multiplier=1.0)
    rng = noise_generator()
    timed("dp (node)", lambda: privatise_update(a.own.vector, config, rng))
    a.secagg.forget_before(r)
    for m in members:
        m.secagg.forget_before(r)
    return seconds


def _train_steps(node: Node, reps: int) -> tuple[float, float]:
    """Median seconds of one SGD step and one DP-SGD step of the node's learner."""
    learner = node.learner
    one = 1.0 / learner.steps_per_epoch
    dp = DPConfig(enabled=True, unit=PrivacyUnit.RECORD, noise_multiplier=1.0)

    def step(record: RecordDP | None) -> float:
        start = time.perf_counter()
        learner.train(node.own.vector, 0, one, record)
        return time.perf_counter() - start

    def budget() -> RecordDP:
        return RecordDP(make_budget(dp, rounds=10**6, records=len(learner.y), batch_size=32,
                                    local_epochs=1), noise_generator())

    step(None), step(budget())  # compile
    plain = statistics.median(step(None) for _ in range(reps))
    private = statistics.median(step(budget()) for _ in range(reps))
    return plain, private


def bench(parameters: int, reps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="gossipfl-bench-") as folder:
        nodes = _star(Path(folder), parameters)

        async def main() -> list[dict[str, float]]:
            inprocess.hear_everyone(nodes)
            _round(nodes, 0)  # warm-up
            return [_round(nodes, r) for r in range(1, reps + 1)]

        runs = trio.run(main)
        figures = {name: statistics.median(run[name] for run in runs) for name in PHASES}
        figures["sgd step"], figures["dp-sgd step"] = _train_steps(nodes[0], reps)
        figures["parameters"] = float(nodes[0].layout.size)
    return figures


def table(results: dict[int, dict[str, float]]) -> str:
    sizes = sorted(results)
    labels = [f"{int(results[s]['parameters']):,} params" for s in sizes]
    head = f"{'phase (per node, per round)':<30}" + "".join(f"{label:>24}" for label in labels)
    lines = [head, f"{'':<30}" + "".join(f"{'ms':>12}{'× plain':>12}" for _ in sizes)]
    for name in PHASES:
        lines.append(f"{name:<30}" + "".join(
            f"{1e3 * results[s][name]:>12.2f}{results[s][name] / results[s]['plain']:>12.2f}"
            for s in sizes))
    protected = ("plain", "seal/open", "mask", "consistency", "unmask")
    lines.append(f"{'secagg + sealing, all':<30}" + "".join(
        f"{1e3 * sum(results[s][p] for p in protected):>12.2f}"
        f"{sum(results[s][p] for p in protected) / results[s]['plain']:>12.2f}" for s in sizes))
    lines.append(f"{'sgd step':<30}" + "".join(
        f"{1e3 * results[s]['sgd step']:>12.2f}{'':>12}" for s in sizes))
    lines.append(f"{'dp-sgd step (× sgd step)':<30}" + "".join(
        f"{1e3 * results[s]['dp-sgd step']:>12.2f}"
        f"{results[s]['dp-sgd step'] / results[s]['sgd step']:>12.2f}" for s in sizes))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k parameters only")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions")
    args = parser.parse_args()
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    with threadpool_limits(limits=1):
        results = {size: bench(size, max(3, args.reps)) for size in sizes}
    print(table(results))


if __name__ == "__main__":
    main()
