"""Privacy audit: what a curious neighbour learns from gossip, with and without protection.

An in-process simulation of a small gossip federation (synchronous CHOCO-gossip with identity
compression and ``γ = 1``, as the node runs it: each round every node trains locally from its
model ``x_i`` to ``x_i^{1/2}``, publishes the delta ``q_i = x_i^{1/2} − x̂_i`` against its public
estimate, everyone sets ``x̂_i += q_i``, and ``x_i ← x_i^{1/2} + Σ_j W_ij (x̂_j − x̂_i)`` with
Metropolis–Hastings weights). Node 0 is the *curious aggregator*: honest in what it sends, but it
keeps everything it receives and tries to learn about one *target* neighbour.

What node 0 receives from its neighbourhood ``V`` in each round, per setting:

* ``none``: every neighbour's delta ``q_j`` in the clear (plain gossip).
* ``dp``: every neighbour's privatised delta (clipped to ``C``, plus ``N(0, σ²C²)`` noise per
  coordinate, :func:`gossipfl.privacy.dp.privatise_update`) in the clear.
* ``secagg``: secure aggregation over ``V`` (:func:`gossipfl.crypto.secagg.run_simulation`: real
  X25519 key agreement and HKDF pair seeds bound to federation ‖ aggregator ‖ round, Shamir
  shares sealed to the members, stochastic quantisation, double masking): the masked vector
  ``y_j`` of each neighbour (with its weight, ``W_0j q_j``, as the design notes prescribe) and
  the unmasked, dequantised sum ``S = Σ_j W_0j q_j``. Nothing else the aggregator sees (public
  keys, sealed shares, the self-seed shares it needs to unmask) carries information about one
  input.
* ``secagg_dp``: as ``secagg``, over the privatised deltas.

``none`` and ``secagg`` share one training trajectory (the secure sum equals the plain one up to
quantisation, ``< |V| / scale`` per coordinate), ``dp`` and ``secagg_dp`` another, in which every
node privatises its delta once per round and the public estimates advance by the privatised delta.

**Attack 1: update reconstruction.** The target's true update in round ``r`` is its delta ``q_j``
before any privatisation. The attacker's estimates (the cosine similarity is scale-invariant, so
an estimate of ``W_0j q_j`` is as good as one of ``q_j``):

* ``received`` (``none``, ``dp``): the vector it received from the target.
* ``masked_as_plain`` (``secagg``, ``secagg_dp``): the target's masked vector, dequantised as if
  it were unmasked, each word read as the signed residue closest to the quantisation offset
  (:func:`centred_dequantise`). The masks are one-time pads over ``Z_{2^32}``, so this is
  uniform noise whatever the input.
* Estimators that use the sum, the only thing about the inputs the aggregator learns:

  - ``sum_share``: ``S / |V|``, the least-squares estimate of one input from the sum when the
    inputs are exchangeable (nothing distinguishes the target a priori);
  - ``sum_minus_own``: ``S − Σ_{k≠j} W_0k p``, the sum less the other neighbours' contributions,
    each estimated by the aggregator's own delta ``p`` (clipped to ``C`` under DP, where the
    others' noise has mean zero): its own data is the best proxy it has for theirs;
  - ``sum_minus_past``: ``S_r − mean_{t<r} S_t`` (``S_0 / |V|`` in round 0), the sum less its
    persistent part.

  ``best`` names the sum-based estimator with the highest mean cosine and its figure: a
  conservative summary, since an attacker could not tell which estimator wins without the truth.

For every estimator the audit reports the mean over rounds of the cosine similarity to the
target's true update (``mean``, ``per_round``), the same mean taken over every neighbour of
node 0 as the target (``neighbours_mean``), and the target's mean against its local training step
``x_j^{1/2} − x_j`` alone (``step_mean``), the part of the delta that this round's data made. With
few neighbours the sum is strongly correlated with each input: that is why secure aggregation
refuses fewer than :data:`gossipfl.crypto.secagg.MIN_CONTRIBUTORS` contributors and why DP goes
on top of it.

Under DP the true delta ``q_j = x_j^{1/2} − x̂_j`` is dominated, after the first round, by the
correction of the noise that ``j`` itself added to its public estimate ``x̂_j`` in earlier rounds:
noise that went into earlier sums. ``sum_minus_past`` therefore correlates with ``q_j`` in the
``secagg_dp`` setting while being uncorrelated with the training step (``step_mean`` near 0): it
recovers public information (post-processing of earlier releases), not the private update.

**Attack 2: membership inference** on node 0's final model (the model the curious node ends up
with), by the loss-threshold attack of Yeom et al. (CSF 2018): an example is called a member when
its loss is at most a threshold ``τ``. Members are the target's training examples; non-members are
held-out test examples; both are sampled per label to the same counts (``min`` of the two per
label), so that label skew of the target's partition cannot pass for membership. The report gives
(:func:`membership_advantage`):

* ``advantage``: ``max_τ TPR(τ) − FPR(τ)``, the membership advantage at the best threshold
  (chosen on the evaluation sample itself: an optimistic upper bound for the attacker; in
  ``[0, 1]``, and about ``1.36 · sqrt(2/m)`` under no leakage from sampling alone);
* ``auc`` and ``auc_advantage = 2·AUC − 1``: threshold-free, in ``[−1, 1]``, 0 in expectation
  when the model has not seen the members;
* ``yeom_advantage``: TPR − FPR at ``τ`` = the mean loss of the members (Yeom et al.'s attacker,
  who knows the expected training loss), in ``[−1, 1]``.

Run it with ``python -m gossipfl.privacy.audit --out audit.json``, or call :func:`run_audit`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax

from gossipfl.aggregation.mixing import choco_step, neighbour_weights
from gossipfl.aggregation.topology import build_topology
from gossipfl.config import DataConfig, ModelConfig, NodeConfig, TopologyConfig
from gossipfl.crypto import secagg
from gossipfl.learning.params import unflatten_params
from gossipfl.learning.train import TrainConfig
from gossipfl.node.learner import LocalLearner
from gossipfl.privacy.accountant import epsilon_after
from gossipfl.privacy.dp import DPConfig, clip_update, privatise_update

__all__ = [
    "AUDIT_KEYS",
    "RECONSTRUCTION_SETTINGS",
    "SUM_ESTIMATORS",
    "FederationTrace",
    "centred_dequantise",
    "cosine_similarity",
    "estimate_sum_minus_own",
    "estimate_sum_minus_past",
    "estimate_sum_share",
    "format_table",
    "main",
    "membership_advantage",
    "run_audit",
    "simulate_federation",
]

AUDIT_KEYS: tuple[str, ...] = ("parameters", "reconstruction", "membership")
"""Top-level keys of the dict :func:`run_audit` returns."""

RECONSTRUCTION_SETTINGS: tuple[str, ...] = ("none", "dp", "secagg", "secagg_dp")
"""The settings under ``reconstruction``: what node 0 receives (see the module docstring)."""

SUM_ESTIMATORS: tuple[str, ...] = ("sum_share", "sum_minus_own", "sum_minus_past")
"""The estimators of one input that use the securely aggregated sum."""

AGGREGATOR = 0
"""Index of the curious node."""

_NORM_FLOOR = 1e-30


# --------------------------------------------------------------------------- pure figures


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (flattened), computed in float64.

    Args:
        a: A real array.
        b: A real array with as many elements as ``a``.

    Returns:
        ``<a, b> / (|a| |b|)`` in ``[-1, 1]``; 0 if either vector is zero.

    Raises:
        ValueError: if the sizes differ.
    """
    x = np.asarray(a, np.float64).ravel()
    y = np.asarray(b, np.float64).ravel()
    if x.size != y.size:
        raise ValueError(f"vectors differ in size: {x.size} and {y.size}")
    norms = float(np.linalg.norm(x)) * float(np.linalg.norm(y))
    if norms <= _NORM_FLOOR:
        return 0.0
    return float(np.clip(np.dot(x, y) / norms, -1.0, 1.0))


def centred_dequantise(y: np.ndarray, clip: float, scale: int) -> np.ndarray:
    """Read a masked vector as if it were one unmasked quantised input.

    Each word ``y`` becomes ``((y − offset) mod 2**32) / scale``, the residue taken in
    ``[−2**31, 2**31)``: the value the word would stand for if no mask had been added, without
    the huge constant bias that reading ``y − offset`` as non-negative would give.

    Args:
        y: A uint32 vector (a masked input).
        clip: The clipping bound of the quantisation.
        scale: Its levels per unit.

    Returns:
        A float64 vector.
    """
    offset = secagg.quantisation_offset(clip, scale)
    words = (np.asarray(y, np.uint32).astype(np.int64) - offset) % secagg.MODULUS
    words = np.where(words >= secagg.MODULUS // 2, words - secagg.MODULUS, words)
    return words.astype(np.float64) / scale


def estimate_sum_share(total: np.ndarray, count: int) -> np.ndarray:
    """``S / |V|``: the least-squares estimate of one of ``count`` exchangeable inputs."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    return np.asarray(total, np.float64) / count


def estimate_sum_minus_own(
    total: np.ndarray, weights: Mapping[str, float], target: str, proxy: np.ndarray
) -> np.ndarray:
    """``S − Σ_{k≠target} w_k · proxy``: the sum less the others, each estimated by ``proxy``.

    Args:
        total: The sum ``Σ_k w_k q_k``.
        weights: ``w_k`` of every contributor (the target included).
        target: The contributor whose input is estimated.
        proxy: The attacker's guess of every other contributor's (unweighted) input.

    Returns:
        The estimate of ``w_target · q_target``, float64.
    """
    if target not in weights:
        raise ValueError(f"target {target!r} is not a contributor")
    others = math.fsum(w for k, w in weights.items() if k != target)
    return np.asarray(total, np.float64) - others * np.asarray(proxy, np.float64)


def estimate_sum_minus_past(
    total: np.ndarray, past_totals: Sequence[np.ndarray], count: int
) -> np.ndarray:
    """``S_r − mean_{t<r} S_t``; with no past sums, :func:`estimate_sum_share`."""
    if not past_totals:
        return estimate_sum_share(total, count)
    past = np.mean(np.stack([np.asarray(t, np.float64) for t in past_totals]), axis=0)
    return np.asarray(total, np.float64) - past


def membership_advantage(
    member_losses: np.ndarray, non_member_losses: np.ndarray
) -> dict[str, float | None]:
    """Figures of the loss-threshold membership-inference attack (Yeom et al., 2018).

    The attack calls an example a member when its loss is at most ``τ``.

    Args:
        member_losses: Per-example losses of the members, non-empty.
        non_member_losses: Per-example losses of the non-members, non-empty.

    Returns:
        ``advantage`` (``max_τ TPR − FPR``, in ``[0, 1]``), ``threshold`` (the best ``τ``;
        None when no threshold beats calling nothing a member),
        ``auc`` (the probability that a member has a lower loss than a non-member, ties
        counting one half), ``auc_advantage`` (``2·auc − 1``, in ``[−1, 1]``) and
        ``yeom_advantage`` (TPR − FPR at ``τ`` = the members' mean loss, in ``[−1, 1]``).

    Raises:
        ValueError: if a set is empty or a loss is not finite.
    """
    members = np.asarray(member_losses, np.float64).ravel()
    others = np.asarray(non_member_losses, np.float64).ravel()
    if members.size == 0 or others.size == 0:
        raise ValueError("both members and non-members must be non-empty")
    if not (np.all(np.isfinite(members)) and np.all(np.isfinite(others))):
        raise ValueError("losses must be finite")
    members.sort()
    others.sort()
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([members, others]))])
    tpr = np.searchsorted(members, thresholds, side="right") / members.size
    fpr = np.searchsorted(others, thresholds, side="right") / others.size
    gaps = tpr - fpr
    best = int(np.argmax(gaps))
    # AUC (Mann–Whitney): P(member loss < non-member loss) + P(tie) / 2.
    below = np.searchsorted(members, others, side="left").sum()
    ties = (
        np.searchsorted(members, others, side="right") - np.searchsorted(members, others, "left")
    ).sum()
    auc = (float(below) + 0.5 * float(ties)) / (members.size * others.size)
    tau = float(members.mean())
    yeom = float(np.mean(members <= tau) - np.mean(others <= tau))
    return {
        "advantage": float(gaps[best]),
        "threshold": float(thresholds[best]) if best > 0 else None,
        "auc": auc,
        "auc_advantage": 2.0 * auc - 1.0,
        "yeom_advantage": yeom,
    }


# --------------------------------------------------------------------------- simulation


@dataclass(frozen=True)
class FederationTrace:
    """One simulated gossip run, everything the audit needs.

    Attributes:
        ids: Node ids, ``ids[i]`` for node ``i``.
        topology: Node id to its neighbours' ids.
        deltas: Per round, node id to its true delta ``q_i = x_i^{1/2} − x̂_i`` (float32).
        steps: Per round, node id to its local training step ``x_i^{1/2} − x_i`` (float32).
        sent: Per round, node id to the vector it published (the privatised delta under DP,
            else the delta itself).
        final_models: Node id to its model after the last round.
    """

    ids: tuple[str, ...]
    topology: Mapping[str, frozenset[str]]
    deltas: tuple[Mapping[str, np.ndarray], ...]
    steps: tuple[Mapping[str, np.ndarray], ...]
    sent: tuple[Mapping[str, np.ndarray], ...]
    final_models: Mapping[str, np.ndarray]


def _node_id(index: int) -> str:
    return f"node-{index}"


def simulate_federation(
    learners: Sequence[LocalLearner],
    topology: Mapping[str, frozenset[str]],
    rounds: int,
    *,
    privacy: DPConfig | None,
    seed: int,
    gamma: float = 1.0,
) -> FederationTrace:
    """Run synchronous CHOCO-gossip (identity compression) over ``learners`` in memory.

    The learners' optimiser states are reset first, so two calls with the same arguments give
    the same trace.

    Args:
        learners: One per node, node ``i`` being ``learners[i]`` with id ``node-i``; all built
            for the same model.
        topology: Node id to its neighbours' ids (symmetric).
        rounds: Rounds to run, >= 1.
        privacy: When given and enabled, each node privatises its delta once per round before
            publishing it, with its own generator.
        seed: Seeds the DP noise generators.
        gamma: The CHOCO consensus step size.

    Returns:
        The :class:`FederationTrace`.

    Raises:
        ValueError: if ``rounds < 1`` or a node's update stops being finite (local training
            diverged, e.g. on models carrying much DP noise).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    ids = tuple(_node_id(i) for i in range(len(learners)))
    by_id = dict(zip(ids, learners, strict=True))
    for learner in learners:
        learner.opt_state = learner.trainer.init_opt_state(learner.template)
    start = learners[0].initial_vector().astype(np.float32)
    models = {i: start.copy() for i in ids}
    estimates = {i: start.copy() for i in ids}
    noise = dict(
        zip(ids, (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(ids))),
            strict=True)
    )
    dp = privacy if privacy is not None and privacy.enabled else None
    all_deltas: list[dict[str, np.ndarray]] = []
    all_steps: list[dict[str, np.ndarray]] = []
    all_sent: list[dict[str, np.ndarray]] = []
    for r in range(rounds):
        half = {i: by_id[i].train(models[i], r).vector.astype(np.float32) for i in ids}
        deltas = {i: (half[i] - estimates[i]).astype(np.float32) for i in ids}
        diverged = sorted(i for i in ids if not np.all(np.isfinite(deltas[i])))
        if diverged:
            raise ValueError(
                f"training diverged in round {r} (non-finite update at {', '.join(diverged)})"
                + ("; the DP noise is too large for this model and learning rate" if dp else "")
            )
        sent = {
            i: deltas[i] if dp is None else privatise_update(deltas[i], dp, noise[i])
            for i in ids
        }
        estimates = {i: (estimates[i] + sent[i]).astype(np.float32) for i in ids}
        new_models = {}
        for i in ids:
            peers = sorted(topology[i])
            _, weights = neighbour_weights(len(peers), {p: len(topology[p]) for p in peers})
            new_models[i] = choco_step(
                half[i], estimates[i], {p: estimates[p] for p in peers}, weights, gamma=gamma
            )
        all_steps.append({i: (half[i] - models[i]).astype(np.float32) for i in ids})
        models = new_models
        all_deltas.append(deltas)
        all_sent.append(sent)
    return FederationTrace(
        ids=ids,
        topology={i: frozenset(topology[i]) for i in ids},
        deltas=tuple(all_deltas),
        steps=tuple(all_steps),
        sent=tuple(all_sent),
        final_models=models,
    )


# --------------------------------------------------------------------------- attacks


def _summary(
    per_target: Mapping[str, Sequence[float]],
    step_per_target: Mapping[str, Sequence[float]],
    target: str,
) -> dict[str, Any]:
    """``mean``/``per_round`` for the target, ``neighbours_mean`` over every neighbour, and
    ``step_mean``, the target's mean against its local training step."""
    rounds = [float(c) for c in per_target[target]]
    everyone = [float(c) for cs in per_target.values() for c in cs]
    return {
        "mean": float(np.mean(rounds)),
        "per_round": rounds,
        "neighbours_mean": float(np.mean(everyone)),
        "step_mean": float(np.mean(step_per_target[target])),
    }


def _reconstruct_plain(
    trace: FederationTrace, aggregator: str, target: str
) -> dict[str, dict[str, Any]]:
    """Reconstruction from plain gossip: the received vector itself."""
    peers = sorted(trace.topology[aggregator])
    cosines = {j: [cosine_similarity(sent[j], deltas[j]) for deltas, sent in zip(
        trace.deltas, trace.sent, strict=True)] for j in peers}
    steps = {j: [cosine_similarity(sent[j], step[j]) for step, sent in zip(
        trace.steps, trace.sent, strict=True)] for j in peers}
    return {"received": _summary(cosines, steps, target)}


def _reconstruct_secure(
    trace: FederationTrace,
    aggregator: str,
    target: str,
    *,
    federation: str,
    clip: float,
    scale: int,
    privacy: DPConfig | None,
    seed: int,
) -> dict[str, Any]:
    """Secure aggregation over the aggregator's neighbourhood, then every estimator."""
    peers = sorted(trace.topology[aggregator])
    _, weights = neighbour_weights(len(peers), {p: len(trace.topology[p]) for p in peers})
    threshold = len(peers) // 2 + 1
    generators = [np.random.default_rng(s) for s in
                  np.random.SeedSequence(seed).spawn(len(trace.deltas))]
    names = ("masked_as_plain", *SUM_ESTIMATORS)
    cosines: dict[str, dict[str, list[float]]] = {n: {j: [] for j in peers} for n in names}
    steps: dict[str, dict[str, list[float]]] = {n: {j: [] for j in peers} for n in names}
    past_totals: list[np.ndarray] = []
    for r, (deltas, sent) in enumerate(zip(trace.deltas, trace.sent, strict=True)):
        inputs = {j: (weights[j] * sent[j].astype(np.float64)).astype(np.float32) for j in peers}
        transcript = secagg.run_simulation(
            inputs, threshold, set(), clip, scale, generators[r],
            context=secagg.seed_context(federation, aggregator, r),
        )
        # The aggregator's view: transcript.masked and transcript.result only.
        total = np.asarray(transcript.result, np.float64)
        own = deltas[aggregator]
        if privacy is not None and privacy.enabled:
            own, _ = clip_update(own, privacy.clip_norm)
        for j in peers:
            truth = deltas[j]
            step = trace.steps[r][j]
            estimates = {
                "masked_as_plain": centred_dequantise(transcript.masked[j], clip, scale),
                "sum_share": estimate_sum_share(total, len(peers)),
                "sum_minus_own": estimate_sum_minus_own(total, weights, j, own),
                "sum_minus_past": estimate_sum_minus_past(total, past_totals, len(peers)),
            }
            for name, estimate in estimates.items():
                cosines[name][j].append(cosine_similarity(estimate, truth))
                steps[name][j].append(cosine_similarity(estimate, step))
        past_totals.append(total)
    result: dict[str, Any] = {name: _summary(cosines[name], steps[name], target) for name in names}
    best = max(SUM_ESTIMATORS, key=lambda n: result[n]["mean"])
    result["best"] = {"estimator": best, "mean": result[best]["mean"]}
    return result


def _per_example_losses(
    learner: LocalLearner, vector: np.ndarray, x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    params = unflatten_params(vector, learner.template)
    logits = learner.model.apply(params, jnp.asarray(x, jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(y, jnp.int32))
    return np.asarray(losses, np.float64)


def _membership_samples(
    member_labels: np.ndarray, non_member_labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of members and non-members, as many of each per label (the smaller count)."""
    picked_members: list[np.ndarray] = []
    picked_others: list[np.ndarray] = []
    for label in np.unique(member_labels):
        mine = np.flatnonzero(member_labels == label)
        theirs = np.flatnonzero(non_member_labels == label)
        k = min(mine.size, theirs.size)
        if k:
            picked_members.append(rng.choice(mine, size=k, replace=False))
            picked_others.append(rng.choice(theirs, size=k, replace=False))
    if not picked_members:
        raise ValueError("the target shares no label with the held-out examples")
    return np.sort(np.concatenate(picked_members)), np.sort(np.concatenate(picked_others))


def _membership(
    learner: LocalLearner, target: LocalLearner, vector: np.ndarray, seed: int
) -> dict[str, Any]:
    """The loss-threshold attack on ``vector`` against ``target``'s training examples."""
    data = learner.dataset
    members, others = _membership_samples(target.y, data.y_test, np.random.default_rng(seed))
    member_losses = _per_example_losses(learner, vector, target.x[members], target.y[members])
    other_losses = _per_example_losses(
        learner, vector, data.x_test[others], data.y_test[others]
    )
    figures: dict[str, Any] = membership_advantage(member_losses, other_losses)
    figures["members"] = int(members.size)
    figures["non_members"] = int(others.size)
    figures["member_mean_loss"] = float(member_losses.mean())
    figures["non_member_mean_loss"] = float(other_losses.mean())
    figures["test_accuracy"] = float(learner.evaluate(vector).accuracy)
    return figures


# --------------------------------------------------------------------------- the audit


def _default_train() -> TrainConfig:
    return TrainConfig(optimizer="sgd", learning_rate=0.1, batch_size=32, local_epochs=3)


def _default_privacy() -> DPConfig:
    return DPConfig(enabled=True, clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)


def run_audit(
    seed: int = 0,
    *,
    nodes: int = 6,
    rounds: int = 5,
    target: int | None = None,
    data: DataConfig | None = None,
    model: ModelConfig | None = None,
    train: TrainConfig | None = None,
    topology: TopologyConfig | None = None,
    privacy: DPConfig | None = None,
    federation: str = "gossipfl-audit",
    secagg_clip: float = secagg.DEFAULT_CLIP,
    secagg_scale: int = secagg.DEFAULT_SCALE,
) -> dict[str, Any]:
    """Run the privacy audit: a curious node 0 against one of its neighbours.

    Args:
        seed: Seeds everything: model initialisation, data split and partition, topology, local
            shuffling, DP noise, secure-aggregation keys and rounding, membership samples.
        nodes: Number of nodes, >= 4 (node 0 needs at least
            :data:`gossipfl.crypto.secagg.MIN_CONTRIBUTORS` neighbours).
        rounds: Gossip rounds, >= 1.
        target: The neighbour of node 0 under attack (a node index); by default its
            lowest-numbered neighbour.
        data: Data and partition; default digits, Dirichlet label skew with ``α = 0.5``, split
            and partitioned with ``seed``.
        model: Default an MLP with one hidden layer of 32 units.
        train: Local training; default SGD, learning rate 0.1, batch 32, 3 local epochs.
        topology: Default a random 4-regular graph.
        privacy: The DP mechanism of the ``dp`` and ``secagg_dp`` settings; must be enabled.
            Default clip norm 1, noise multiplier 1, ``δ = 1e-5``.
        federation: Federation name, in the secure-aggregation seed context.
        secagg_clip: Clipping bound of the secure-aggregation quantisation.
        secagg_scale: Its levels per unit.

    Returns:
        A JSON-ready dict with keys :data:`AUDIT_KEYS`:

        * ``parameters``: what was run (sizes, configs, ids, ``ε`` of the DP runs);
        * ``reconstruction``: for each setting of :data:`RECONSTRUCTION_SETTINGS`, estimator
          name to ``{"mean", "per_round", "neighbours_mean", "step_mean"}`` cosine similarities
          (see the module docstring); the secure settings also have ``best``
          (``{"estimator", "mean"}``);
        * ``membership``: ``no_dp`` and ``dp``, each the figures of
          :func:`membership_advantage` plus sample sizes, mean losses and test accuracy.

    Raises:
        ValueError: for too few nodes or rounds, a disabled ``privacy``, a target that is not a
            neighbour of node 0, node 0 with fewer than three neighbours, or training that
            diverges (:func:`simulate_federation`).
    """
    if nodes < secagg.MIN_CONTRIBUTORS + 1:
        raise ValueError(f"nodes must be at least {secagg.MIN_CONTRIBUTORS + 1}, got {nodes}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    data = data or DataConfig(dataset="digits", partition="dirichlet", alpha=0.5, seed=seed)
    model = model or ModelConfig(name="mlp", hidden=(32,))
    train = train or _default_train()
    topology = topology or TopologyConfig(kind="regular", degree=4)
    privacy = privacy or _default_privacy()
    if not privacy.enabled:
        raise ValueError("privacy must be enabled: it is the mechanism of the DP settings")

    ids = [_node_id(i) for i in range(nodes)]
    graph = build_topology(topology.kind, ids, degree=topology.degree, seed=seed)
    aggregator = _node_id(AGGREGATOR)
    peers = sorted(graph[aggregator], key=lambda p: int(p.split("-")[1]))
    secagg.check_contributors(len(peers))
    target_id = peers[0] if target is None else _node_id(target)
    if target_id not in graph[aggregator]:
        raise ValueError(f"target {target} is not a neighbour of node {AGGREGATOR}")

    configs = [
        NodeConfig(federation=federation, node_index=i, node_count=nodes, rounds=rounds,
                   seed=seed, data=data, model=model, train=train, topology=topology)
        for i in range(nodes)
    ]
    learners = [LocalLearner(c) for c in configs]
    seeds = np.random.SeedSequence(seed).spawn(5)
    plain = simulate_federation(learners, graph, rounds, privacy=None, seed=0)
    noisy = simulate_federation(
        learners, graph, rounds, privacy=privacy,
        seed=int(seeds[0].generate_state(1)[0]),
    )
    secure_args = {"federation": federation, "clip": secagg_clip, "scale": secagg_scale}
    reconstruction = {
        "none": _reconstruct_plain(plain, aggregator, target_id),
        "dp": _reconstruct_plain(noisy, aggregator, target_id),
        "secagg": _reconstruct_secure(
            plain, aggregator, target_id, privacy=None,
            seed=int(seeds[1].generate_state(1)[0]), **secure_args,
        ),
        "secagg_dp": _reconstruct_secure(
            noisy, aggregator, target_id, privacy=privacy,
            seed=int(seeds[2].generate_state(1)[0]), **secure_args,
        ),
    }
    index = int(target_id.split("-")[1])
    mi_seed = int(seeds[3].generate_state(1)[0])
    membership = {
        "no_dp": _membership(learners[AGGREGATOR], learners[index],
                             plain.final_models[aggregator], mi_seed),
        "dp": _membership(learners[AGGREGATOR], learners[index],
                          noisy.final_models[aggregator], mi_seed),
    }
    parameters = {
        "seed": seed,
        "nodes": nodes,
        "rounds": rounds,
        "aggregator": AGGREGATOR,
        "target": index,
        "neighbours": [int(p.split("-")[1]) for p in peers],
        "target_examples": int(learners[index].y.size),
        "model_size": int(learners[0].size),
        "data": {"dataset": data.dataset, "partition": data.partition, "alpha": data.alpha,
                 "seed": data.seed},
        "model": {"name": model.name, "hidden": list(model.hidden)},
        "train": {"optimizer": train.optimizer, "learning_rate": train.learning_rate,
                  "batch_size": train.batch_size, "local_epochs": train.local_epochs},
        "topology": {"kind": topology.kind, "degree": topology.degree},
        "secagg": {"clip": secagg_clip, "scale": secagg_scale,
                   "threshold": len(peers) // 2 + 1},
        "privacy": {"clip_norm": privacy.clip_norm, "noise_multiplier": privacy.noise_multiplier,
                    "delta": privacy.delta, "epsilon": epsilon_after(rounds, privacy)},
    }
    return {"parameters": parameters, "reconstruction": reconstruction, "membership": membership}


# --------------------------------------------------------------------------- command line


def format_table(audit: Mapping[str, Any]) -> str:
    """A small text table of the audit's headline figures."""
    p = audit["parameters"]
    lines = [
        f"privacy audit: node {p['aggregator']} attacks node {p['target']} "
        f"({p['nodes']} nodes, {p['rounds']} rounds, neighbours {p['neighbours']}, "
        f"model size {p['model_size']})",
        "",
        "update reconstruction: cosine similarity to the true update, mean over rounds "
        "(target / every neighbour / target's training step)",
        f"  {'setting':<10} {'estimator':<16} {'target':>8} {'all':>8} {'step':>8}",
    ]
    for setting in RECONSTRUCTION_SETTINGS:
        for name, figures in audit["reconstruction"][setting].items():
            if name == "best":
                continue
            lines.append(f"  {setting:<10} {name:<16} {figures['mean']:>8.4f} "
                         f"{figures['neighbours_mean']:>8.4f} {figures['step_mean']:>8.4f}")
    priv = p["privacy"]
    lines += [
        "",
        f"membership inference on node {p['aggregator']}'s final model (loss threshold); "
        f"DP: σ={priv['noise_multiplier']}, C={priv['clip_norm']}, "
        f"ε={priv['epsilon']:.2f} at δ={priv['delta']:g}",
        f"  {'model':<6} {'advantage':>10} {'auc_adv':>8} {'yeom_adv':>9} {'m':>5} {'acc':>7}",
    ]
    for name in ("no_dp", "dp"):
        f = audit["membership"][name]
        lines.append(f"  {name:<6} {f['advantage']:>10.4f} {f['auc_advantage']:>8.4f} "
                     f"{f['yeom_advantage']:>9.4f} {f['members']:>5d} {f['test_accuracy']:>7.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gossipfl.privacy.audit --out FILE.json``: run, print the table, write JSON."""
    parser = argparse.ArgumentParser(prog="python -m gossipfl.privacy.audit",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the audit as JSON to this file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", type=int, default=None, help="node index; a neighbour of 0")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--clip-norm", type=float, default=1.0)
    args = parser.parse_args(argv)
    privacy = DPConfig(enabled=True, clip_norm=args.clip_norm,
                       noise_multiplier=args.noise_multiplier)
    start = time.perf_counter()
    audit = run_audit(args.seed, nodes=args.nodes, rounds=args.rounds, target=args.target,
                      privacy=privacy)
    print(format_table(audit))
    print(f"\n({time.perf_counter() - start:.1f} s)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(audit, handle, indent=2, allow_nan=False)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
