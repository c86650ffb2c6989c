"""Accelerated consensus rounds (``protocol.accelerate_consensus``; the maths:
:mod:`gossipfl.aggregation.acceleration`).

After a consensus round mixed (``node.model`` is then ``W x_t``), the model is pushed on by
``β`` times its distance from the model the previous consensus round started from (``x_{t−1}``):
``x_{t+1} = W x_t + β (W x_t − x_{t−1})``, with ``β`` computed once per topology from its
spectrum (every node derives the same topology, so every node uses the same ``β``). Like outer
momentum, the memory is the node's own state and never leaves it: what a node publishes is its
next model through its estimate, as without acceleration.

It runs only where the consensus step is plain gossip ``x ← W x``: synchronous rounds, no
robust rule (a robust rule bounds what one neighbour moves us a round; a memory of past rounds
would add up a steady push past that bound), no compression (the estimates are then exact) and
``γ = 1``; secure aggregation has its own rounds. A round is accelerated only when the one
before it was this node's previous consensus round, with the same neighbours, none missing, and
left the model as it found it (a catch-up, a restart, a reopening or a resumed state replaces
the model, and the memory starts again).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from gossipfl.aggregation.acceleration import graph_radius, heavy_ball, heavy_ball_beta
from gossipfl.config import Mode
from gossipfl.node.state import Acceleration

if TYPE_CHECKING:
    from gossipfl.node.state import Node


def enabled(node: Node) -> bool:
    """Whether this node's consensus rounds are plain gossip that may be accelerated."""
    config = node.config
    return (config.protocol.accelerate_consensus and config.protocol.mode is Mode.SYNC
            and config.robust.rule == "none" and config.compression.kind == "none"
            and config.protocol.gamma == 1.0 and not config.secagg.enabled)


def consensus_step(node: Node, r: int, start: np.ndarray, missing: list[str],
                   record: dict[str, Any]) -> None:
    """After consensus round ``r`` mixed ``start`` (``x_t``) into ``node.model`` (``W x_t``):
    accelerate it when the memory allows (``record["momentum"]``: the β it used), and
    remember this round for the next one."""
    memory: Acceleration = node.acceleration
    if not enabled(node) or node.topology is None:
        memory.round = -1
        return
    if memory.topology is not node.topology:
        memory.topology, memory.round = node.topology, -1
        memory.beta = heavy_ball_beta(graph_radius(node.topology))
    neighbours = frozenset(node.neighbours)
    usable = (memory.round == r - 1 and memory.result is start and memory.start is not None
              and memory.neighbours == neighbours and not missing and memory.beta > 0.0
              and np.isfinite(node.model).all())
    if usable:
        assert memory.start is not None
        node.model = heavy_ball(node.model, memory.start, memory.beta)
        record["momentum"] = memory.beta
    if missing:  # this round mixed with another W: the next one starts the memory again
        memory.round = -1
        return
    memory.round, memory.start, memory.result = r, start, node.model
    memory.neighbours = neighbours
