"""Outer momentum and tail averaging in a training round (``train.outer_momentum``,
``train.outer_average``; the maths: :mod:`gossipfl.aggregation.momentum`).

Applied once per training round, after mixing, to this node's own model only: what a node
publishes is still its next round's trained model through its estimate x̂ (CHOCO: x̂ += q), so
the bytes sent, secure aggregation's masked inputs and node-level DP's clipped, noised delta are
as without momentum; the velocity is private state, like the model, and never leaves the node.
The velocity carries over from the previous round only: after a round this node did not train
(a catch-up, a restart: the velocity is not checkpointed) it starts again from zero.

Tail averaging keeps the running mean of the models after the last ``outer_average`` training
rounds (private state too, not checkpointed: after a restart it holds the rounds since); when
training stops (round.stop_training) the model becomes that mean, once, and the consensus
rounds average it with the neighbours' as any model.
"""

from __future__ import annotations

import logging

import numpy as np

from gossipfl.aggregation.momentum import outer_momentum, tail_mean
from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.round")


def outer_step(node: Node, r: int, round_start: np.ndarray) -> None:
    """After training round ``r`` mixed: the model becomes the momentum step from
    ``round_start`` (the model the round trained from), and a round among the last
    ``outer_average`` training rounds goes into the tail's mean; nothing with both off."""
    train = node.config.train
    if not np.isfinite(node.model).all():
        return
    if train.outer_momentum:
        held = node.velocity
        previous = held[1] if held is not None and held[0] == r - 1 else None
        node.model, velocity = outer_momentum(round_start, node.model, previous,
                                              train.outer_momentum,
                                              nesterov=train.outer_nesterov)
        node.velocity = (r, velocity)
    if train.outer_average and r >= node.config.rounds - train.outer_average:
        count, mean = node.tail if node.tail is not None else (0, None)
        node.tail = (count + 1, tail_mean(mean, count, node.model))


def end_average(node: Node, r: int, *, keep: bool = False) -> None:
    """When training stops at round ``r``: the model becomes the tail's mean (once; nothing
    when no training round went into it, and with ``keep`` the tail is dropped and the model
    kept)."""
    if node.tail is None:
        return
    count, mean = node.tail
    node.tail = None
    if keep:
        return
    node.model = mean.astype(np.float32)
    log.info("round %d: the model is now the mean of the last %d training rounds' models "
             "(train.outer_average)", r, count)
