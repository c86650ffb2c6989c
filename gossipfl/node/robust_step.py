"""The robust mixing rule a node runs in place of the weighted sum (``[robust] rule``; issue 9):
the pure step of :func:`gossipfl.aggregation.robust.robust_choco_step`, with the node's
parameters (its neighbours' weights first made lazy by ``[robust] neighbour_share``:
:func:`gossipfl.aggregation.mixing.shared_weights`), and what it clipped or left out written to
the round's record. The simulator and node processes both mix through here."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from gossipfl.aggregation.filter import distrusted
from gossipfl.aggregation.mixing import shared_weights
from gossipfl.aggregation.robust import RobustRule, robust_choco_step
from gossipfl.aggregation.screen import loss_screen

if TYPE_CHECKING:
    from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.round")

STEP_DECAY = 0.9  # per round: the remembered training step (filter, tau_steps) fades in consensus


def robust_step(node: Node, half_step: np.ndarray, estimates: Mapping[str, np.ndarray],
                weights: Mapping[str, float], record: dict[str, Any] | None,
                losses: Mapping[str, float] | None = None) -> np.ndarray:
    """``x_i ← x½ + γ (R(x̂_i, {x̂_j}) − x̂_i)`` with the node's rule ``R``. A rule that needs
    more inputs than the node holds this round (Krum with too few neighbours, a trim too deep)
    falls back to the coordinate median, which takes any number, and says so. ``losses``: each
    neighbour's estimate's loss on this node's data (:func:`screen_losses`), for ``[robust]
    screen``; None screens nothing (the screen off, or a node without data)."""
    config = node.config.robust
    rule = RobustRule(config.rule)
    if config.neighbour_share != 1:  # ClippedGossip's raised self-weight (the rest on self)
        own_weight = 1.0 - sum(weights.values())
        _, weights = shared_weights(max(own_weight, 0.0), weights, config.neighbour_share)
    screened: tuple[str, ...] = ()
    if config.screen and estimates and losses is not None:
        estimates, weights, screened = screen(estimates, weights, losses, config.screen)
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
        node.step_scale = max(step, STEP_DECAY * node.step_scale)
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
                            **({"left_out": list(result.left_out)} if result.left_out else {}),
                            **({"screened": list(screened)} if screened else {})}
    return result.model


def screen(estimates: Mapping[str, np.ndarray], weights: Mapping[str, float],
           losses: Mapping[str, float], share: float,
           ) -> tuple[dict[str, np.ndarray], dict[str, float], tuple[str, ...]]:
    """``[robust] screen``: the neighbours whose estimates fit this node's training data worst,
    up to ``share`` of its mixing weight, left out this round, their weight staying on the node
    (:func:`gossipfl.aggregation.screen.loss_screen`). A neighbour without a loss (its
    estimate came after they were computed) counts as fitting worst."""
    kept, left_out = loss_screen(weights, {p: losses.get(p, math.inf) for p in weights}, share)
    return {p: v for p, v in estimates.items() if p in kept}, kept, left_out


async def screen_losses(node: Node, r: int) -> dict[str, float] | None:
    """Each held neighbour's estimate as of round ``r``, its mean loss on this node's training
    data, computed through the node's offload (JAX work off the event loop); None for a node
    that holds no data (it screens nothing)."""
    estimates = {p: node.estimates.peers[p].as_of(r) for p in sorted(node.neighbours)
                 if p in node.estimates.peers}
    return await node.offload(_losses, node.learner, estimates)


def _losses(learner: Any, estimates: Mapping[str, np.ndarray]) -> dict[str, float] | None:
    losses: dict[str, float] = {}
    for peer, vector in estimates.items():
        loss = learner.local_loss(vector)
        if loss is None:
            return None
        losses[peer] = loss
    return losses
