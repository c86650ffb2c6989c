"""Benchmark: ``gossipfl simulate`` against the floor, a pure JAX program of the same task.

The floor is the scenario's learning without any protocol: every node's local training (the
scenario's model, optimiser, batch size and local epochs, on the node's own partition) as one
``jax.vmap`` over nodes of a ``lax.scan`` over minibatch steps, then one mixing step as a
gather over the scenario's topology (Metropolis–Hastings weights, 1/(d+1) on a d-regular
graph), for the scenario's training rounds. It has no membership, no sealing, no wire, no
checkpoints, no consensus rounds: what one round of the task costs at the least on this
machine. The simulation runs the scenario's real nodes (:mod:`gossipfl.scenario.simulate`),
training at no virtual cost (``epoch_seconds = 0``).
Both run in the same process, one after the other; the ratio is seconds per training round.

    .venv/bin/python benchmarks/bench_simulate.py scenarios/scale1000.toml
    .venv/bin/python benchmarks/bench_simulate.py scenarios/quickstart.toml --floor-only
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.aggregation.topology import build_topology
from gossipfl.learning.data import load_dataset
from gossipfl.learning.models import build_model
from gossipfl.learning.partition import node_partition
from gossipfl.learning.train import Trainer
from gossipfl.scenario.config import ScenarioConfig, load_scenario
from gossipfl.scenario.datafiles import check_files, pooled_dataset, uses_files
from gossipfl.scenario.graphs import node_topology


def floor(scenario: ScenarioConfig) -> dict[str, float]:
    """Run the scenario's task as one pure JAX program; returns seconds per round (after the
    first, which compiles) and the final accuracy of the nodes' mean model and worst node."""
    spec = scenario.data
    n = scenario.nodes
    if uses_files(spec):  # a file per node: pooled in node order, each node its own rows
        data = pooled_dataset(spec, n)
        sizes = [len(d.y_train) for d in check_files(spec, n)]
        ends = np.cumsum(sizes)
        parts = [np.arange(end - size, end) for size, end in zip(sizes, ends, strict=True)]
    else:
        data = load_dataset(spec.dataset, seed=spec.seed, test_fraction=spec.test_fraction,
                            path=spec.path, samples=spec.samples)
        parts = [node_partition(data.y_train, i, n, scheme=spec.partition, seed=spec.seed,
                                alpha=spec.alpha, shards_per_node=spec.shards_per_node)
                 if spec.partition != "none" else np.arange(len(data.y_train))
                 for i in range(n)]
    batch = scenario.train.batch_size
    per_epoch = max(-(-len(p) // batch) for p in parts)
    steps = per_epoch * scenario.train.local_epochs
    rng = np.random.default_rng(scenario.seed)
    model = build_model(scenario.model.name, data.input_shape, data.num_classes,
                        hidden=scenario.model.hidden)
    trainer = Trainer(model, scenario.train)
    params = model.init(scenario.seed)
    stacked = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf] * n), params)
    states = jax.vmap(trainer.init_opt_state)(stacked)
    ids = [f"{i:06d}" for i in range(n)]
    topology = node_topology(scenario.topology, ids)
    graph = build_topology(topology.kind, ids, degree=topology.degree, seed=scenario.seed,
                           edges=topology.edges)
    degree = max(len(graph[i]) for i in ids)
    neighbours = np.array([[int(j) for j in sorted(graph[i])] + [int(i)] * (degree - len(graph[i]))
                           for i in ids])
    valid = np.array([[1.0] * len(graph[i]) + [0.0] * (degree - len(graph[i])) for i in ids],
                     np.float32)

    def schedule() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each node's minibatches for one round: rows (nodes, steps, batch) and masks."""
        xs = np.zeros((n, steps, batch, *data.x_train.shape[1:]), np.float32)
        ys = np.zeros((n, steps, batch), np.int32)
        ms = np.zeros((n, steps, batch), np.float32)
        for i, part in enumerate(parts):
            order = np.concatenate([rng.permutation(part) for _ in range(
                scenario.train.local_epochs)])
            for s in range(min(steps, -(-len(order) // batch))):
                rows = order[s * batch:(s + 1) * batch]
                xs[i, s, :len(rows)], ys[i, s, :len(rows)] = data.x_train[rows], data.y_train[rows]
                ms[i, s, :len(rows)] = 1.0
        return xs, ys, ms

    def local(p: object, o: object, x: jax.Array, y: jax.Array, m: jax.Array) -> object:
        def step(carry: tuple[object, object], batch_: tuple[jax.Array, ...]) -> tuple:
            params_, state_ = carry
            new_p, new_s, _ = trainer._train_step_impl(params_, state_, *batch_)
            keep = batch_[2].sum() > 0
            pick = lambda a, b: jnp.where(keep, a, b)  # noqa: E731
            return (jax.tree_util.tree_map(pick, new_p, params_),
                    jax.tree_util.tree_map(pick, new_s, state_)), None
        (p, o), _ = jax.lax.scan(step, (p, o), (x, y, m))
        return p, o

    nb, vd = jnp.asarray(neighbours), jnp.asarray(valid)

    @jax.jit
    def round_(p: object, o: object, x: jax.Array, y: jax.Array, m: jax.Array) -> tuple:
        p, o = jax.vmap(local)(p, o, x, y, m)
        w = 1.0 / (vd.sum(axis=1, keepdims=True) + 1.0)  # MH on a regular graph

        def mix(leaf: jax.Array) -> jax.Array:
            gathered = leaf[nb] * vd.reshape(*vd.shape, *([1] * (leaf.ndim - 1)))
            return leaf + (w.reshape(-1, *([1] * (leaf.ndim - 1)))
                           * (gathered - leaf[:, None]).sum(axis=1))
        return jax.tree_util.tree_map(mix, p), o

    times = []
    for _ in range(scenario.rounds):
        batches = schedule()
        start = time.perf_counter()
        stacked, states = round_(stacked, states, *batches)
        jax.block_until_ready(stacked)
        times.append(time.perf_counter() - start)
    evaluate = jax.jit(jax.vmap(trainer._eval_step_impl, in_axes=(0, None, None, None)))
    mask = np.ones(len(data.y_test), np.float32)
    _, correct = evaluate(stacked, data.x_test, data.y_test, mask)
    accuracy = np.asarray(correct) / len(data.y_test)
    return {"seconds_per_round": float(np.median(times[1:] or times)),
            "min_accuracy": float(accuracy.min()), "mean_accuracy": float(accuracy.mean())}


def simulated(path: Path) -> dict[str, float]:
    from gossipfl.scenario.simulate import simulate_scenario

    with tempfile.TemporaryDirectory(prefix="gossipfl-bench-sim-") as folder:
        start = time.perf_counter()
        code = simulate_scenario(path, out=Path(folder) / "run", quiet=True, centralised=False,
                                 epoch_seconds=0.0)
        wall = time.perf_counter() - start
        report = json.loads((Path(folder) / "run" / "report.json").read_text())
    rounds = report["rounds"]
    return {"exit_code": code, "wall_seconds": wall, "seconds_per_round": wall / rounds,
            "total_rounds": report["total_rounds"],
            "min_accuracy": report["summary"]["min_final_accuracy"],
            "consensus_distance": report["final_consensus_distance"],
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", type=Path)
    parser.add_argument("--floor-only", action="store_true")
    parser.add_argument("--nodes", type=int, help="override the scenario's node count")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    if args.nodes:
        scenario = replace(scenario, nodes=args.nodes)
    base = floor(scenario)
    print(f"floor ({scenario.nodes} nodes, pure JAX): {base['seconds_per_round']:.3f} s/round, "
          f"accuracy min {base['min_accuracy']:.4f} mean {base['mean_accuracy']:.4f}")
    if args.floor_only:
        return
    sim = simulated(args.scenario)
    print(f"simulate: {sim['wall_seconds']:.1f} s wall for {scenario.rounds} training rounds "
          f"({sim['total_rounds']} in all): {sim['seconds_per_round']:.3f} s per training round, "
          f"{sim['seconds_per_round'] / base['seconds_per_round']:.1f}x the floor; "
          f"min accuracy {sim['min_accuracy']}, consensus {sim['consensus_distance']}, "
          f"peak RSS {sim['peak_rss_bytes'] / 2**30:.2f} GiB, exit {sim['exit_code']}")


if __name__ == "__main__":
    main()
