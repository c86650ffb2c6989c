"""Scan: a scenario's federated accuracy under other settings, in a pure JAX proxy.

What is learned, without the protocol: each node takes the scenario's local steps on its own
partition in minibatches of the scenario's batch size (the last padded and masked, in one order
every epoch; a partition smaller than a minibatch, as digits at 1,000 members, is one full-
batch step an epoch), then one Metropolis–Hastings mixing step over a random d-regular graph
(1/(d+1) each), for the scenario's training rounds, with outer momentum as
``gossipfl.aggregation.momentum`` takes it; then ``consensus`` mixing-only rounds, as the
simulation's consensus rounds. Printed: every node's final test accuracy (min, max), the
accuracy at the last training round before the consensus rounds, and the centralised baseline
of the same settings (the report's: :func:`gossipfl.learning.train.train_centralised`, rounds ×
local_epochs epochs, or as the scenario's ``[baseline]`` says). ``degree`` 0 averages exactly
(FedAvg over all nodes: the best any mixing can do); ``mix_steps`` mixes that many times a
round (not a protocol option: a bound on what more gossip would give).

A screen, not the result: a setting it picks is then run with ``gossipfl simulate`` (on
``scenarios/scale1000.toml`` it gave 0.889 where the simulator gave 0.894).

    PYTHONPATH=. .venv/bin/python benchmarks/scan_accuracy.py scenarios/scale1000.toml \\
        '[{}, {"learning_rate": 0.15, "local_epochs": 2}, {"degree": 0}, {"outer_momentum": 0.5}]'
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.aggregation.topology import build_topology
from gossipfl.learning.data import load_dataset
from gossipfl.learning.models import build_model
from gossipfl.learning.partition import node_partition
from gossipfl.learning.train import TrainConfig, Trainer, train_centralised
from gossipfl.scenario.config import ScenarioConfig, load_scenario

EVAL_NODES = 50
SETTINGS = ("optimizer", "learning_rate", "local_epochs", "weight_decay", "outer_momentum",
            "outer_nesterov", "degree", "hidden", "rounds", "mix_steps", "consensus", "nodes")


def scan_one(scenario: ScenarioConfig, setting: dict[str, Any]) -> dict[str, Any]:
    """One setting (keys of :data:`SETTINGS` over the scenario's): the figures above."""
    unknown = set(setting) - set(SETTINGS)
    if unknown:
        raise SystemExit(f"unknown settings {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    spec = scenario.data
    n = int(setting.get("nodes", scenario.nodes))
    rounds = int(setting.get("rounds", scenario.rounds))
    degree = int(setting.get("degree", scenario.topology.degree))
    mix_steps = int(setting.get("mix_steps", 1))
    consensus = int(setting.get("consensus", 20))
    train = {k: setting[k] for k in ("optimizer", "learning_rate", "local_epochs",
                                     "weight_decay", "outer_momentum", "outer_nesterov")
             if k in setting}
    config: TrainConfig = replace(scenario.train, **train)
    hidden = tuple(setting.get("hidden", scenario.model.hidden))
    data = load_dataset(spec.dataset, seed=spec.seed, test_fraction=spec.test_fraction,
                        path=spec.path, samples=spec.samples)
    parts = [node_partition(data.y_train, i, n, scheme=spec.partition, seed=spec.seed,
                            alpha=spec.alpha, shards_per_node=spec.shards_per_node)
             for i in range(n)]
    # a node's examples in minibatches of batch_size (the last one padded and masked), taken in
    # the same order every epoch (the node shuffles; a screen need not)
    largest = max(len(p) for p in parts)
    batches = -(-largest // config.batch_size)
    rows = min(largest, config.batch_size)
    x = np.zeros((n, batches, rows, *data.x_train.shape[1:]), np.float32)
    y = np.zeros((n, batches, rows), np.int32)
    m = np.zeros((n, batches, rows), np.float32)
    for i, part in enumerate(parts):
        for b in range(batches):
            chunk = part[b * rows:(b + 1) * rows]
            x[i, b, :len(chunk)], y[i, b, :len(chunk)], m[i, b, :len(chunk)] = (
                data.x_train[chunk], data.y_train[chunk], 1.0)
    model = build_model(scenario.model.name, data.input_shape, data.num_classes, hidden=hidden)
    trainer = Trainer(model, config)
    ids = [f"{i:06d}" for i in range(n)]
    neighbours = None
    if degree:
        graph = build_topology("regular", ids, degree=degree, seed=scenario.seed)
        neighbours = jnp.asarray(np.array([[int(j) for j in sorted(graph[i])] for i in ids]))
    beta, nesterov, epochs = config.outer_momentum, config.outer_nesterov, config.local_epochs

    def local(p: Any, o: Any, xs: jax.Array, ys: jax.Array, ms: jax.Array) -> tuple[Any, Any]:
        def step(carry: tuple[Any, Any], batch: tuple[jax.Array, ...]
                 ) -> tuple[tuple[Any, Any], None]:
            new_p, new_o, _loss = trainer._train_step_impl(*carry, *batch)
            return (new_p, new_o), None

        def epoch(carry: tuple[Any, Any], _: None) -> tuple[tuple[Any, Any], None]:
            return jax.lax.scan(step, carry, (xs, ys, ms))[0], None
        return jax.lax.scan(epoch, (p, o), None, length=epochs)[0]

    def mix(leaf: jax.Array) -> jax.Array:
        if neighbours is None:
            return jnp.broadcast_to(leaf.mean(axis=0), leaf.shape)
        for _ in range(mix_steps):
            leaf = leaf + (leaf[neighbours] - leaf[:, None]).sum(axis=1) / (degree + 1)
        return leaf

    @jax.jit
    def round_(p: Any, o: Any, v: Any) -> tuple[Any, Any, Any]:
        start = p
        p, o = jax.vmap(local)(p, o, jnp.asarray(x), jnp.asarray(y), jnp.asarray(m))
        p = jax.tree_util.tree_map(mix, p)
        if beta:
            v = jax.tree_util.tree_map(lambda v_, m_, x_: beta * v_ + (m_ - x_), v, p, start)
            p = jax.tree_util.tree_map(
                lambda m_, x_, v_: m_ + beta * v_ if nesterov else x_ + v_, p, start, v)
        return p, o, v

    evaluate = jax.jit(jax.vmap(trainer._eval_step_impl, in_axes=(0, None, None, None)))
    mask = np.ones(len(data.y_test), np.float32)

    # nodes evaluated EVAL_NODES at a time: all 1,000 at once on 20,000 test examples would
    # hold 1,000 × 20,000 activations a layer
    def accuracies(p: Any) -> np.ndarray:
        correct = [np.asarray(evaluate(jax.tree_util.tree_map(
            lambda a, i=i: a[i:i + EVAL_NODES], p), data.x_test, data.y_test, mask)[1])
            for i in range(0, n, EVAL_NODES)]
        return np.concatenate(correct) / len(data.y_test)

    start_time = time.perf_counter()
    params = jax.tree_util.tree_map(lambda leaf: jnp.stack([leaf] * n), model.init(scenario.seed))
    opt = jax.vmap(trainer.init_opt_state)(params)
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
    for _ in range(rounds):
        params, opt, velocity = round_(params, opt, velocity)
    trained = accuracies(params)
    mix_only = jax.jit(lambda p: jax.tree_util.tree_map(mix, p))
    for _ in range(consensus):
        params = mix_only(params)
    final = accuracies(params)
    # the report's baseline: [train] as scanned, with the scenario's [baseline] over it
    _, central = train_centralised(data, model, scenario.baseline.train(config),
                                   epochs=scenario.baseline.epochs_for(rounds, epochs),
                                   seed=scenario.seed)
    return {**setting, "min": round(float(final.min()), 4), "max": round(float(final.max()), 4),
            "min_at_last_training_round": round(float(trained.min()), 4),
            "centralised": round(float(central[-1]), 4),
            "points_below": round(100 * (float(central[-1]) - float(final.min())), 1),
            "seconds": round(time.perf_counter() - start_time, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("settings", help="a JSON list of settings, each a dict of: "
                                         + ", ".join(SETTINGS))
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    for setting in json.loads(args.settings):
        print(json.dumps(scan_one(scenario, setting)), flush=True)


if __name__ == "__main__":
    main()
