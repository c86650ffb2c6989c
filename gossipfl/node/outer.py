"""Outer momentum in a training round (``train.outer_momentum``; the maths:
:mod:`gossipfl.aggregation.momentum`).

Applied once per training round, after mixing, to this node's own model only: what a node
publishes is still its next round's trained model through its estimate x̂ (CHOCO: x̂ += q), so
the bytes sent, secure aggregation's masked inputs and node-level DP's clipped, noised delta are
as without momentum; the velocity is private state, like the model, and never leaves the node.
The velocity carries over from the previous round only: after a round this node did not train
(a catch-up, a restart: the velocity is not checkpointed) it starts again from zero.
"""

from __future__ import annotations

import numpy as np

from gossipfl.aggregation.momentum import outer_momentum
from gossipfl.node.state import Node


def outer_step(node: Node, r: int, round_start: np.ndarray) -> None:
    """After training round ``r`` mixed: the model becomes the momentum step from
    ``round_start`` (the model the round trained from); nothing with momentum off."""
    train = node.config.train
    if not train.outer_momentum or not np.isfinite(node.model).all():
        return
    held = node.velocity
    previous = held[1] if held is not None and held[0] == r - 1 else None
    node.model, velocity = outer_momentum(round_start, node.model, previous,
                                          train.outer_momentum, nesterov=train.outer_nesterov)
    node.velocity = (r, velocity)
