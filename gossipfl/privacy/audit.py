"""Privacy audit: what an aggregator learns about a neighbour, under the protocol the node runs.

The audit builds a small federation of real :class:`~gossipfl.node.runtime.Node` objects in one
process (:mod:`gossipfl.node.inprocess`: admitted identities, sealed payloads, the wire codec)
and runs the node's own rounds: local training (DP-SGD under record-level DP), the public
estimate's publish step (node-level DP: the node's ``privatise_update``), then either plain
sealed contributions and the node's CHOCO step, or secure aggregation through the node's
handlers (masked inputs, Bonawitz's consistency step with the differencing rule, unmasking from
threshold shares). Node 0 is the attacker; its target is one of its neighbours.

Settings (each one run of the federation): ``none`` (plain gossip), ``record_dp`` (plain, DP-SGD
in local training), ``node_dp`` (plain, the node-level mechanism on each published delta),
``secagg`` and ``secagg_record_dp`` (secure aggregation, without and with DP-SGD).

**Honest-but-curious aggregator** (``reconstruction``): node 0 follows the protocol and keeps
what it holds. The truth in round ``r`` is the target's published update ``q_j = x̂_j^r −
x̂_j^{r−1}`` (its estimate's move, what secure aggregation hides), also scored against its local
training step ``x_j^{1/2} − x_j`` (``step_mean``). Estimators:

* ``received`` (plain settings): the update read from the estimate node 0 holds of the target;
* ``masked_as_plain`` (secure settings): the target's masked inputs read as if unmasked
  (:func:`gossipfl.adversary.aggregator.read_as_plain`), this round's less the last's;
* from the sum ``S_r = Σ_{k∈V} w_k x̂_k`` node 0 gets, through ``D_r = S_r − S_{r−1}``
  (``S_{−1}`` from the public initial model): ``sum_share`` (``D_r/|V|``), ``sum_minus_own``
  (``D_r`` less the others' share, each guessed by node 0's own update) and ``sum_minus_past``
  (``D_r`` less the mean of the earlier ``D``). ``best`` names the estimator with the highest
  mean, a conservative summary.

**Lying aggregator** (``lying_aggregator``): node 0 runs the adversary of
:class:`gossipfl.adversary.aggregator.LyingAggregator` (inconsistent survivor sets: the target is
told "the others dropped", the others "the target dropped") under secure aggregation and tries
to unmask the target's input alone every round. Reported: its attempts, inputs recovered, and
the cosine of its best reconstruction to the target's estimate ``x̂_j``; and ``control``, the
same reconstruction when members *forget* what they signed and revealed (each set answered as
if it were the only one): the figure the consistency step is there to prevent, showing the
attack would work without it.

**Membership inference** (``membership``): the loss-threshold attack (Yeom et al., CSF 2018) on
what node 0 holds: the model it ends with (``own_model``, every setting and the lying
aggregator's run) and, under plain gossip, the target's public estimate (``target_estimate``),
against the target's training records and as many held-out records per label
(:func:`gossipfl.privacy.audit_figures.membership_advantage`).

DP noise and self-mask seeds come from the operating system, as in the node: two runs with one
seed agree in data, partition, topology and initial model, not in every figure.

Run it with ``python -m gossipfl.privacy.audit --out audit.json``, or call :func:`run_audit`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from gossipfl.adversary.aggregator import LyingAggregator, read_as_plain
from gossipfl.adversary.role import Role, SumResult, reconstruction_key
from gossipfl.aggregation.topology import build_topology
from gossipfl.config import (
    AdversaryConfig,
    DataConfig,
    ModelConfig,
    NodeConfig,
    SecAggConfig,
    TopologyConfig,
)
from gossipfl.gossip.wire import ConsistencyRequest, MaskedInput
from gossipfl.learning.params import unflatten_params
from gossipfl.learning.train import TrainConfig
from gossipfl.node import inprocess, secure_round
from gossipfl.node.learner import LocalLearner
from gossipfl.node.runtime import Node
from gossipfl.privacy.audit_figures import (
    cosine_similarity,
    estimate_sum_minus_own,
    estimate_sum_minus_past,
    estimate_sum_share,
    membership_advantage,
    membership_samples,
    summarise,
)
from gossipfl.privacy.dp import DPConfig, PrivacyUnit

__all__ = ["AUDIT_KEYS", "SETTINGS", "SUM_ESTIMATORS", "format_table", "main", "run_audit"]

AUDIT_KEYS: tuple[str, ...] = ("parameters", "reconstruction", "lying_aggregator", "membership")
SETTINGS: tuple[str, ...] = ("none", "record_dp", "node_dp", "secagg", "secagg_record_dp")
SUM_ESTIMATORS: tuple[str, ...] = ("sum_share", "sum_minus_own", "sum_minus_past")
ATTACKER = 0


class Curious(Role):
    """Honest in all it sends; keeps every masked input and sum of its own neighbourhood."""

    aggregates = True

    def __init__(self) -> None:
        super().__init__(AdversaryConfig())
        self.seen: dict[int, tuple[dict[str, MaskedInput], SumResult]] = {}

    async def secure_sum(self, node: Node, r: int) -> SumResult:
        inputs = dict(node.secagg.inbox.get(r, {}))
        result = await secure_round.honest_sum(node, r)
        self.seen[r] = (inputs, result)
        return result


@dataclass
class Trace:
    """What one run left: per round, node 0's neighbours' true updates, steps and estimates,
    the estimates node 0 held (plain), node 0's own update; the control figure (lying run)."""

    updates: list[dict[str, np.ndarray]] = field(default_factory=list)
    steps: list[dict[str, np.ndarray]] = field(default_factory=list)
    estimates: list[dict[str, np.ndarray]] = field(default_factory=list)
    held: list[dict[str, np.ndarray]] = field(default_factory=list)
    own: list[np.ndarray] = field(default_factory=list)
    control: float | None = None


def forgetful_control(nodes: Sequence[Node], role: LyingAggregator, target: str,
                      r: int) -> float:
    """The lying aggregator's reconstruction of ``target`` in round ``r`` if members forgot
    what they signed and revealed: each of the two sets signed and answered as if it were the
    only one (call inside the run). Returns the cosine to the target's estimate."""
    attacker, by_id = nodes[ATTACKER], {node.peer_id: node for node in nodes}
    inputs = attacker.secagg.inbox[r]
    everyone = sorted(inputs)
    held = []
    for survivors in (everyone, [p for p in everyone if p != target]):
        dropped = sorted(secure_round.neighbourhood(attacker, attacker.peer_id) - set(survivors))
        for peer in survivors:  # forgetful members
            memory = by_id[peer].secagg
            memory.committed.clear()
            memory.revealed.clear()
            memory.signed.clear()
        request = ConsistencyRequest(attacker.config.federation, r, attacker.peer_id,
                                     tuple(survivors), tuple(dropped))
        signatures = {p: secure_round.answer_consistency(by_id[p], attacker.peer_id,
                                                         request).signature for p in survivors}
        for peer in survivors:
            unmask = secure_round.unmask_request(attacker, r, inputs, survivors, dropped, peer,
                                                 tuple(sorted(signatures.items())))
            held.append(secure_round.answer_unmask(by_id[peer], attacker.peer_id, unmask))
    guess, _ = role.best_guess(attacker, target, inputs[target], [h for h in held if h])
    return cosine_similarity(guess, by_id[target].own.vector)


def _run(configs: Sequence[NodeConfig], graph: Mapping[int, frozenset[int]],
         learners: Sequence[LocalLearner], role: Role | None,
         lying_target: int | None = None) -> tuple[list[Node], Trace]:
    trace = Trace()
    with tempfile.TemporaryDirectory(prefix="gossipfl-audit-") as folder:
        nodes = inprocess.build_federation(Path(folder), configs, graph, learners=learners,
                                           roles={ATTACKER: role} if role else None)
        liar = role if isinstance(role, LyingAggregator) else None
        if liar is not None and lying_target is not None:  # its peer id is known only now
            liar.config = AdversaryConfig(kind="lying_aggregator",
                                          target=nodes[lying_target].peer_id)
        attacker = nodes[ATTACKER]
        peers = sorted(attacker.neighbours)
        by_id = {node.peer_id: node for node in nodes}
        previous = {p: by_id[p].own.vector.copy() for p in peers}

        def observe(r: int, _: Sequence[Node], before: dict[str, np.ndarray],
                    half: dict[str, np.ndarray]) -> None:
            trace.updates.append({p: by_id[p].own.last_delta.copy() for p in peers})
            trace.steps.append({p: half[p] - before[p] for p in peers})
            trace.estimates.append({p: by_id[p].own.vector.copy() for p in peers})
            if not attacker.config.secagg.enabled:
                trace.held.append({p: attacker.estimates.peers[p].vector - previous[p]
                                   for p in peers})
                previous.update({p: attacker.estimates.peers[p].vector.copy() for p in peers})
            trace.own.append(attacker.own.last_delta.copy())
            if liar is not None and r == configs[0].rounds - 1:
                trace.control = forgetful_control(nodes, liar, liar.config.target, r)

        inprocess.run_rounds(nodes, configs[0].rounds, observe)
    return nodes, trace


def _plain_figures(trace: Trace, target: str) -> dict[str, Any]:
    peers = sorted(trace.updates[0])
    cos = {p: [cosine_similarity(h[p], u[p]) for h, u in zip(trace.held, trace.updates,
                                                             strict=True)] for p in peers}
    step = {p: [cosine_similarity(h[p], s[p]) for h, s in zip(trace.held, trace.steps,
                                                              strict=True)] for p in peers}
    return {"received": summarise(cos, step, target)}


def _secure_figures(trace: Trace, role: Curious, initial: np.ndarray, target: str,
                    secagg: SecAggConfig) -> dict[str, Any]:
    peers = sorted(trace.updates[0])
    names = ("masked_as_plain", *SUM_ESTIMATORS)
    cos: dict[str, dict[str, list[float]]] = {n: {p: [] for p in peers} for n in names}
    step: dict[str, dict[str, list[float]]] = {n: {p: [] for p in peers} for n in names}
    initial = initial.astype(np.float64)
    read_before = {p: initial for p in peers}
    past: list[np.ndarray] = []
    before: np.ndarray | None = None
    for r in range(len(trace.updates)):
        inputs, result = role.seen[r]
        if result is None:
            raise RuntimeError(f"round {r}: the honest secure sum was refused")
        total, _, survivors = result
        weights = {p: inputs[p].weight for p in survivors}
        if before is None:
            before = sum(weights.values()) * initial
        moved = np.asarray(total, np.float64) - before
        for p in peers:
            read = read_as_plain(np.frombuffer(inputs[p].data, "<u4"), secagg.clip,
                                 secagg.scale).astype(np.float64) / weights[p]
            guesses = {
                "masked_as_plain": read - read_before[p],
                "sum_share": estimate_sum_share(moved, len(survivors)),
                "sum_minus_own": estimate_sum_minus_own(moved, weights, p, trace.own[r]),
                "sum_minus_past": estimate_sum_minus_past(moved, past, len(survivors)),
            }
            read_before[p] = read
            for name, guess in guesses.items():
                cos[name][p].append(cosine_similarity(guess, trace.updates[r][p]))
                step[name][p].append(cosine_similarity(guess, trace.steps[r][p]))
        past.append(moved)
        before = np.asarray(total, np.float64)
    figures: dict[str, Any] = {n: summarise(cos[n], step[n], target) for n in names}
    best = max(SUM_ESTIMATORS, key=lambda n: figures[n]["mean"])
    figures["best"] = {"estimator": best, "mean": figures[best]["mean"]}
    return figures


def _lying_figures(trace: Trace, role: LyingAggregator, target: str) -> dict[str, Any]:
    per_round = []
    for r, estimates in enumerate(trace.estimates):
        guess = role.tally.reconstructions.get(reconstruction_key(r, target))
        if guess is not None:
            per_round.append(cosine_similarity(guess, estimates[target]))
    return {"attempts": role.tally.attempts, "inputs_recovered": role.tally.succeeded,
            "details": dict(sorted(role.tally.details.items())), "per_round": per_round,
            "mean": float(np.mean(per_round)) if per_round else None,
            "best": max(per_round) if per_round else None, "control": trace.control}


def _membership(attacker: LocalLearner, target: LocalLearner, vector: np.ndarray,
                seed: int) -> dict[str, Any]:
    data = attacker.dataset
    members, others = membership_samples(target.y, data.y_test, np.random.default_rng(seed))

    def losses(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        logits = attacker.model.apply(unflatten_params(vector, attacker.template),
                                      jnp.asarray(x, jnp.float32))
        return np.asarray(optax.softmax_cross_entropy_with_integer_labels(
            logits, jnp.asarray(y, jnp.int32)), np.float64)

    mine = losses(target.x[members], target.y[members])
    theirs = losses(data.x_test[others], data.y_test[others])
    figures: dict[str, Any] = membership_advantage(mine, theirs)
    figures.update(members=int(members.size), member_mean_loss=float(mine.mean()),
                   non_member_mean_loss=float(theirs.mean()),
                   test_accuracy=float(attacker.evaluate(vector).accuracy))
    return figures


def _privacy(setting: str, epsilon: float, clip: float) -> DPConfig:
    if setting in ("record_dp", "secagg_record_dp"):
        return DPConfig(enabled=True, unit=PrivacyUnit.RECORD, clip_norm=clip,
                        target_epsilon=epsilon, delta=1e-5)
    if setting == "node_dp":
        return DPConfig(enabled=True, unit=PrivacyUnit.NODE, clip_norm=clip,
                        target_epsilon=epsilon, delta=1e-5)
    return DPConfig()


def run_audit(seed: int = 0, *, nodes: int = 6, rounds: int = 3, target: int | None = None,
              epsilon: float = 8.0, clip_norm: float = 1.0, data: DataConfig | None = None,
              model: ModelConfig | None = None, train: TrainConfig | None = None,
              topology: TopologyConfig | None = None,
              settings: Sequence[str] = SETTINGS) -> dict[str, Any]:
    """Run the audit (see the module docstring); returns a JSON-ready dict with keys
    :data:`AUDIT_KEYS`. ``seed`` fixes data, partition, topology and the initial model."""
    if nodes < 4 or rounds < 1:
        raise ValueError(f"need at least 4 nodes and 1 round, got {nodes} and {rounds}")
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {SETTINGS}")
    # few records a node and many local epochs: a model that remembers its records, so that
    # membership inference has something to find when nothing protects them
    data = data or DataConfig(dataset="mnist1d", partition="iid", samples=1500, seed=seed)
    model = model or ModelConfig(name="mlp", hidden=(128,))
    train = train or TrainConfig(optimizer="sgd", learning_rate=0.1, batch_size=16,
                                 local_epochs=20)
    topology = topology or TopologyConfig(kind="regular", degree=4)
    names = [f"node-{i}" for i in range(nodes)]
    graph = {int(k.removeprefix("node-")): frozenset(int(p.removeprefix("node-")) for p in v)
             for k, v in build_topology(topology.kind, names, degree=topology.degree,
                                        seed=seed).items()}
    neighbours = sorted(graph[ATTACKER])
    if len(neighbours) < 3:
        raise ValueError(f"node {ATTACKER} has {len(neighbours)} neighbours; secure "
                         "aggregation needs at least 3")
    index = neighbours[0] if target is None else target
    if index not in graph[ATTACKER]:
        raise ValueError(f"target {target} is not a neighbour of node {ATTACKER}")

    def configs(setting: str) -> list[NodeConfig]:
        secure = setting.startswith("secagg") or setting == "lying"
        return [NodeConfig(federation="gossipfl-audit", node_index=i, node_count=nodes,
                           rounds=rounds, seed=seed, data=data, model=model, train=train,
                           topology=topology, secagg=SecAggConfig(enabled=secure),
                           security=inprocess.ADMITTED,
                           privacy=_privacy(setting, epsilon, clip_norm))
                for i in range(nodes)]

    learners = [LocalLearner(c) for c in configs("none")]
    initial = learners[0].initial_vector()
    mi_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    reconstruction: dict[str, Any] = {}
    membership: dict[str, Any] = {}
    for setting in settings:
        role = Curious() if setting.startswith("secagg") else None
        run, trace = _run(configs(setting), graph, learners, role)
        peer = run[index].peer_id
        if role is None:
            reconstruction[setting] = _plain_figures(trace, peer)
        else:
            reconstruction[setting] = _secure_figures(trace, role, initial, peer,
                                                      run[0].config.secagg)
        membership[setting] = {"own_model": _membership(learners[ATTACKER], learners[index],
                                                        run[ATTACKER].model, mi_seed)}
        if role is None:  # plain gossip: it holds the target's estimate itself
            membership[setting]["target_estimate"] = _membership(
                learners[ATTACKER], learners[index],
                run[ATTACKER].estimates.peers[peer].vector, mi_seed)
        if run[index].budget is not None:
            for figures in membership[setting].values():
                figures["epsilon"] = float(run[index].budget.epsilon())
    liar = LyingAggregator(AdversaryConfig(kind="lying_aggregator"))
    run, trace = _run(configs("lying"), graph, learners, liar, lying_target=index)
    lying = _lying_figures(trace, liar, run[index].peer_id)
    membership["lying"] = {"own_model": _membership(learners[ATTACKER], learners[index],
                                                    run[ATTACKER].model, mi_seed)}
    parameters = {
        "seed": seed, "nodes": nodes, "rounds": rounds, "attacker": ATTACKER, "target": index,
        "neighbours": neighbours, "target_records": int(learners[index].y.size),
        "model_size": int(initial.size), "settings": list(settings),
        "data": {"dataset": data.dataset, "partition": data.partition, "alpha": data.alpha,
                 "samples": data.samples},
        "model": {"name": model.name, "hidden": list(model.hidden)},
        "train": {"optimizer": train.optimizer, "learning_rate": train.learning_rate,
                  "batch_size": train.batch_size, "local_epochs": train.local_epochs},
        "topology": {"kind": topology.kind, "degree": topology.degree},
        "privacy": {"target_epsilon": epsilon, "clip_norm": clip_norm, "delta": 1e-5},
    }
    return {"parameters": parameters, "reconstruction": reconstruction,
            "lying_aggregator": lying, "membership": membership}


def format_table(audit: Mapping[str, Any]) -> str:
    """A small text table of the audit's headline figures."""
    p = audit["parameters"]
    lines = [f"privacy audit: node {p['attacker']} attacks node {p['target']} ({p['nodes']} "
             f"nodes, {p['rounds']} rounds, neighbours {p['neighbours']}, model size "
             f"{p['model_size']}, ε target {p['privacy']['target_epsilon']} per node)", "",
             "honest-but-curious aggregator: cosine to the target's update, mean over rounds "
             "(target / every neighbour / target's training step)",
             f"  {'setting':<17} {'estimator':<16} {'target':>8} {'all':>8} {'step':>8}"]
    for setting, estimators in audit["reconstruction"].items():
        for name, f in estimators.items():
            if name != "best":
                lines.append(f"  {setting:<17} {name:<16} {f['mean']:>8.4f} "
                             f"{f['neighbours_mean']:>8.4f} {f['step_mean']:>8.4f}")
    lie = audit["lying_aggregator"]
    lines += ["", f"lying aggregator (secagg): {lie['attempts']} attempts, "
                  f"{lie['inputs_recovered']} inputs recovered; cosine of its reconstruction "
                  f"to the target's estimate: mean {lie['mean']:.4f}, best {lie['best']:.4f}; "
                  f"were members to forget what they revealed: {lie['control']:.4f}",
              "", "membership inference on what node 0 holds (loss threshold): its final model, "
                  "and under plain gossip the target's estimate",
              f"  {'setting':<17} {'model':<16} {'advantage':>10} {'auc_adv':>8} "
              f"{'yeom_adv':>9} {'m':>5} {'acc':>7} {'ε':>6}"]
    for setting, models in audit["membership"].items():
        for name, f in models.items():
            eps = f"{f['epsilon']:.2f}" if "epsilon" in f else "-"
            lines.append(f"  {setting:<17} {name:<16} {f['advantage']:>10.4f} "
                         f"{f['auc_advantage']:>8.4f} {f['yeom_advantage']:>9.4f} "
                         f"{f['members']:>5d} {f['test_accuracy']:>7.4f} {eps:>6}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gossipfl.privacy.audit --out FILE.json``: run, print the table, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m gossipfl.privacy.audit",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the audit as JSON to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--target", type=int, default=None, help="node index; a neighbour of 0")
    parser.add_argument("--epsilon", type=float, default=8.0, help="DP target ε per node")
    parser.add_argument("--clip-norm", type=float, default=1.0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    audit = run_audit(args.seed, nodes=args.nodes, rounds=args.rounds, target=args.target,
                      epsilon=args.epsilon, clip_norm=args.clip_norm)
    print(format_table(audit))
    print(f"\n({time.perf_counter() - start:.1f} s)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(audit, handle, indent=2, allow_nan=False)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
