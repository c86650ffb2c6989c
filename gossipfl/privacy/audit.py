"""Privacy audit: what an aggregator learns about a neighbour, under the protocol the node runs.

Each setting is one simulated federation (:mod:`gossipfl.scenario.observed`): six real
:class:`~gossipfl.node.runtime.Node` objects in one process, each running :meth:`Node.run`
(admission, membership, links, its own rounds, sealed payloads through the wire codec) over the
in-memory network under a mock clock. Each round is the node's: local training (DP-SGD under
record-level DP), the public estimate's publish step (node-level DP: the node's
``privatise_update``), then either plain sealed contributions and the node's CHOCO step, or
secure aggregation through the node's handlers (masked inputs, Bonawitz's consistency step with
the differencing rule, unmasking from threshold shares). The audit reads what each node's round
left (its offload and its round record, :class:`~gossipfl.scenario.observed.RoundView`) and what
node 0, the attacker, keeps through its role. Its target is one of its neighbours. The nodes'
keys derive from the seed, so the topology (built over their peer ids) does too.

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
what node 0 holds at the end of the training rounds: its model (``own_model``, every setting and
the lying aggregator's run) and, under plain gossip, the target's public estimate
(``target_estimate``), against the target's training records and as many held-out records per
label (:func:`gossipfl.privacy.audit_figures.membership_advantage`).

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
    ProtocolConfig,
    SecAggConfig,
    TopologyConfig,
)
from gossipfl.gossip.wire import ConsistencyRequest, MaskedInput
from gossipfl.learning.params import unflatten_params
from gossipfl.learning.train import TrainConfig
from gossipfl.node import secure_round
from gossipfl.node.learner import LearnerPool, LocalLearner
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
from gossipfl.scenario.config import AdversarySpec, ScenarioConfig
from gossipfl.scenario.observed import ObservedSimulation, RoundView, observe_scenario, seeded_keys

__all__ = ["AUDIT_KEYS", "SETTINGS", "SUM_ESTIMATORS", "format_table", "main", "run_audit"]

AUDIT_KEYS: tuple[str, ...] = ("parameters", "reconstruction", "lying_aggregator", "membership")
SETTINGS: tuple[str, ...] = ("none", "record_dp", "node_dp", "secagg", "secagg_record_dp")
SUM_ESTIMATORS: tuple[str, ...] = ("sum_share", "sum_minus_own", "sum_minus_past")
ATTACKER = 0
FEDERATION = "gossipfl-audit"
TIMEOUT = 3600.0  # virtual seconds: a run that has not ended by then is stuck


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
    """What one run left: per training round, node 0's neighbours' true updates, steps and
    estimates, the estimates node 0 held (plain), node 0's own update; node 0's model and its
    estimate of each neighbour at the end of the training rounds; the control (lying run)."""

    updates: list[dict[str, np.ndarray]] = field(default_factory=list)
    steps: list[dict[str, np.ndarray]] = field(default_factory=list)
    estimates: list[dict[str, np.ndarray]] = field(default_factory=list)
    held: list[dict[str, np.ndarray]] = field(default_factory=list)
    own: list[np.ndarray] = field(default_factory=list)
    model: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))
    final_held: dict[str, np.ndarray] = field(default_factory=dict)
    control: float | None = None


def forgetful_guess(sim: ObservedSimulation, role: LyingAggregator, target: str,
                    r: int) -> np.ndarray:
    """The lying aggregator's reconstruction of ``target`` in round ``r`` if members forgot
    what they signed and revealed: each of the two sets signed and answered as if it were the
    only one (call inside the run, once node 0 has ended round ``r``)."""
    attacker = sim.nodes[ATTACKER]
    by_id = {node.peer_id: node for node in sim.nodes.values()}
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
    return guess


def _trace(sim: ObservedSimulation, rounds: int, initial: np.ndarray,
           control: np.ndarray | None, target: str | None) -> Trace:
    """The trace of a finished run, from every node's round views."""
    trace = Trace()
    attacker = sim.nodes[ATTACKER]
    by_id = {node.peer_id: index for index, node in sim.nodes.items()}
    peers = sorted(attacker.topology[attacker.peer_id]) if attacker.topology else []
    view: dict[str, list[RoundView]] = {
        p: [sim.views[by_id[p]][r] for r in range(rounds)] for p in [*peers, attacker.peer_id]}
    previous = {p: initial for p in peers}
    for r in range(rounds):
        trace.updates.append({p: _vector(view[p][r].update) for p in peers})
        trace.steps.append({p: view[p][r].step for p in peers})
        trace.estimates.append({p: _vector(view[p][r].estimate) for p in peers})
        mine = view[attacker.peer_id][r]
        if not attacker.config.secagg.enabled:
            trace.held.append({p: mine.held[p] - previous[p] for p in peers})
            previous = {p: mine.held[p] for p in peers}
        trace.own.append(_vector(mine.update))
    last = view[attacker.peer_id][rounds - 1]
    trace.model, trace.final_held = _vector(last.model), last.held
    if control is not None and target is not None:
        trace.control = cosine_similarity(control, trace.estimates[rounds - 1][target])
    return trace


def _vector(array: np.ndarray | None) -> np.ndarray:
    if array is None:
        raise ValueError("a round view without the vector the audit reads")
    return array


def _run(scenario: ScenarioConfig, pool: LearnerPool,
         role: Role | None) -> tuple[ObservedSimulation, Trace]:
    """One simulated federation of ``scenario`` (node 0 playing ``role``, if given) to its
    end; the nodes and the trace of its training rounds."""
    last = scenario.rounds - 1
    guesses: list[np.ndarray] = []

    def on_round(sim: ObservedSimulation, index: int, view: RoundView) -> None:
        liar = sim.nodes[ATTACKER].role
        if index == ATTACKER and view.round == last and isinstance(liar, LyingAggregator):
            guesses.append(forgetful_guess(sim, liar, liar.config.target, last))

    with tempfile.TemporaryDirectory(prefix="gossipfl-audit-") as folder:
        sim = observe_scenario(scenario, Path(folder), roles={ATTACKER: role} if role else None,
                               pool=pool, key_seed=scenario.seed, on_round=on_round)
    attacker = sim.nodes[ATTACKER]
    target = attacker.config.adversary.target or None
    trace = _trace(sim, scenario.rounds, attacker.learner.initial_vector(),
                   guesses[0] if guesses else None, target)
    return sim, trace


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
    with tempfile.TemporaryDirectory(prefix="gossipfl-audit-") as folder:
        ids = seeded_keys(Path(folder), nodes, seed)  # the keys every run's nodes get
    graph = {ids.index(k): frozenset(ids.index(p) for p in v)
             for k, v in build_topology(topology.kind, ids, degree=topology.degree,
                                        seed=seed, edges=topology.edges).items()}
    neighbours = sorted(graph[ATTACKER])
    if len(neighbours) < 3:
        raise ValueError(f"node {ATTACKER} has {len(neighbours)} neighbours; secure "
                         "aggregation needs at least 3")
    index = neighbours[0] if target is None else target
    if index not in graph[ATTACKER]:
        raise ValueError(f"target {target} is not a neighbour of node {ATTACKER}")

    def scenario(setting: str) -> ScenarioConfig:
        lying = setting == "lying"
        return ScenarioConfig(
            name=FEDERATION, nodes=nodes, rounds=rounds, seed=seed, timeout=TIMEOUT,
            keep_round_models=False, data=data, model=model, train=train, topology=topology,
            protocol=ProtocolConfig(max_consensus_rounds=0),  # the training rounds only
            privacy=_privacy(setting, epsilon, clip_norm),
            secagg=SecAggConfig(enabled=setting.startswith("secagg") or lying),
            adversaries=(AdversarySpec(ATTACKER, "lying_aggregator", index),) if lying else ())

    pool = LearnerPool()  # one dataset and one compiled trainer for every run
    mi_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    reconstruction: dict[str, Any] = {}
    membership: dict[str, Any] = {}
    peer = ids[index]
    for setting in settings:
        role = Curious() if setting.startswith("secagg") else None
        sim, trace = _run(scenario(setting), pool, role)
        attacker, victim = sim.nodes[ATTACKER], sim.nodes[index]
        initial = attacker.learner.initial_vector()
        if role is None:
            reconstruction[setting] = _plain_figures(trace, peer)
        else:
            reconstruction[setting] = _secure_figures(trace, role, initial, peer,
                                                      attacker.config.secagg)
        membership[setting] = {"own_model": _membership(attacker.learner, victim.learner,
                                                        trace.model, mi_seed)}
        if role is None:  # plain gossip: it holds the target's estimate itself
            membership[setting]["target_estimate"] = _membership(
                attacker.learner, victim.learner, trace.final_held[peer], mi_seed)
        if victim.budget is not None:
            for figures in membership[setting].values():
                figures["epsilon"] = float(victim.budget.epsilon())
    sim, trace = _run(scenario("lying"), pool, None)
    attacker, victim = sim.nodes[ATTACKER], sim.nodes[index]
    liar = attacker.role
    if not isinstance(liar, LyingAggregator) or liar.config.target != peer:
        raise RuntimeError(f"node {ATTACKER} did not play the lying aggregator against {peer}")
    lying = _lying_figures(trace, liar, peer)
    membership["lying"] = {"own_model": _membership(attacker.learner, victim.learner,
                                                    trace.model, mi_seed)}
    initial = attacker.learner.initial_vector()
    parameters = {
        "seed": seed, "nodes": nodes, "rounds": rounds, "attacker": ATTACKER, "target": index,
        "neighbours": neighbours, "target_records": int(victim.learner.y.size),
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
              "", "membership inference on what node 0 holds after the training rounds (loss "
                  "threshold): its model, and under plain gossip the target's estimate",
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
