"""The robust mixing rule a node runs in place of the weighted sum (``[robust] rule``; issue 9):
the pure step of :func:`gossipfl.aggregation.robust.robust_choco_step`, with the node's
parameters, and what it clipped or left out written to the round's record."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gossipfl.aggregation.filter import distrusted
from gossipfl.aggregation.robust import RobustRule, robust_choco_step

if TYPE_CHECKING:
    from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.round")

STEP_DECAY = 0.9  # per round: the remembered training step (filter, tau_steps) fades in consensus


def step_scale(previous: float, step: float, latest: bool) -> float:
    """The training-step scale after a round whose own training step had norm ``step``.

    A round without training (``step`` 0: a consensus round) keeps ``STEP_DECAY`` times the
    previous scale. After a training round the filter keeps the larger of ``step`` and that
    (never tighter than the steps it remembers); clipping (``latest``) takes this round's step
    itself: steps shrink faster than ``STEP_DECAY`` once a node has fit its data (0.04 by
    round 17 against 5.3 in round 0 on the ClippedGossip graph), and a radius held at the
    decayed first step lets every neighbour, Byzantine ones too, move the node by far more
    than it trains.

    >>> step_scale(1.0, 0.5, latest=True), step_scale(1.0, 0.5, latest=False)
    (0.5, 0.9)
    >>> step_scale(1.0, 0.0, latest=True)
    0.9
    """
    decayed = STEP_DECAY * previous
    if latest and step > 0:
        return step
    return max(step, decayed)


def robust_step(node: Node, half_step: np.ndarray, estimates: Mapping[str, np.ndarray],
                weights: Mapping[str, float], record: dict[str, Any] | None) -> np.ndarray:
    """``x_i ← x½ + γ (R(x̂_i, {x̂_j}) − x̂_i)`` with the node's rule ``R``. A rule that needs
    more inputs than the node holds this round (Krum with too few neighbours, a trim too deep)
    falls back to the coordinate median, which takes any number, and says so."""
    config = node.config.robust
    rule = RobustRule(config.rule)
    params: dict[str, Any] = {
        RobustRule.CLIPPING: {"tau": config.tau} if config.tau else {"delta": config.delta},
        RobustRule.TRIMMED_MEAN: {"b": config.trim},
        RobustRule.KRUM: {"f": config.krum_f},
        RobustRule.FILTER: {"ratio": config.filter_ratio, "floor": config.filter_floor},
    }.get(rule, {})
    stepped = rule is RobustRule.FILTER or (rule is RobustRule.CLIPPING and config.tau_steps)
    if stepped:
        # the scale honest neighbours differ by: this node's own training step (its model
        # before the round is still node.model), remembered with a decay through consensus
        # rounds, where it trains no more; nothing a neighbour sends moves it
        step = float(np.linalg.norm(half_step.astype(np.float64) - node.model))
        node.step_scale = step_scale(node.step_scale, step, latest=rule is RobustRule.CLIPPING)
    if rule is RobustRule.FILTER:
        params["distrusted"] = distrusted(node.filter_counts)
        params["least"] = node.step_scale
    elif stepped:  # clipping at a radius of tau_steps training steps
        params = {"tau": config.tau_steps * node.step_scale}
    try:
        result = robust_choco_step(rule, half_step, node.own.vector, estimates, weights,
                                   node.protocol.gamma, **params)
    except ValueError as error:
        log.warning("robust rule %s cannot run with %d neighbour estimate(s) (%s): the "
                    "coordinate median this round", rule.value, len(estimates), error)
        rule = RobustRule.MEDIAN
        result = robust_choco_step(rule, half_step, node.own.vector, estimates, weights,
                                   node.protocol.gamma)
    if rule is RobustRule.FILTER:
        for peer in estimates:
            out, seen = node.filter_counts.get(peer, (0, 0))
            node.filter_counts[peer] = (out + (peer in result.left_out), seen + 1)
    if record is not None:
        record["robust"] = {"rule": rule.value, "inputs": result.inputs,
                            "clipped": result.clipped, "discarded": result.discarded,
                            **({"tau": result.tau} if result.tau is not None else {}),
                            **({"left_out": list(result.left_out)} if result.left_out else {})}
    return result.model
