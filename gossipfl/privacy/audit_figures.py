"""Privacy audit, the pure figures: cosine similarity, the estimators of one input from a
secure sum, and the loss-threshold membership-inference attack (Yeom et al., CSF 2018).

Arrays in, numbers out; the driver that runs the node's protocol is :mod:`gossipfl.privacy.audit`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "cosine_similarity",
    "estimate_sum_minus_own",
    "estimate_sum_minus_past",
    "estimate_sum_share",
    "membership_advantage",
    "membership_samples",
    "summarise",
]

_NORM_FLOOR = 1e-30


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


def summarise(
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


def membership_samples(
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
