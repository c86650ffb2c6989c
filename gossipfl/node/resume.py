"""Resuming a node that ran before (same identity, same folder): its checkpoint, and the
topology it saved at its start (members, and its neighbours: topology ones plus late joiners
taken), so that a restarted node finds the same neighbours, who still have it in theirs."""

from __future__ import annotations

import json
import logging

from gossipfl.gossip.codes import NodeStatus
from gossipfl.node.checkpoint import (
    CheckpointError,
    atomic_write_json,
    load_latest_checkpoint,
    restore_dp_state,
    restore_robust_state,
    restored_public_estimate,
)
from gossipfl.node.graph import topology_over
from gossipfl.node.state import Node, NodeError

log = logging.getLogger("gossipfl.node")


def restore(node: Node) -> None:
    """Start from the last checkpoint, if this node ran before (same identity, same folder):
    the private model as the model, the public estimate stored apart from it as x̂ (what
    is published and served: never the model), and the DP budget spent."""
    state = load_latest_checkpoint(node.out / "checkpoint.npz")
    if state is None:
        try:  # killed before its first checkpoint: the write-ahead ledger may know more
            restore_dp_state(node, None)
        except CheckpointError as error:
            raise NodeError(f"{error}; refusing to start rather than forget the privacy "
                            "budget spent") from None
        node.state_loaded = True
        return
    round_ = state.round
    if state.meta.get("status") == NodeStatus.DONE:
        log.warning("the checkpoint says this node had finished; starting again from it")
    try:  # the budget spent is the data's, whatever the model: restored in every case
        restore_dp_state(node, state.meta)
    except CheckpointError as error:
        raise NodeError(f"{error}; refusing to start rather than forget the privacy budget "
                        "spent") from None
    if state.model.shape != node.model.shape:
        log.error("checkpoint holds %d parameters, the model has %d: not resuming",
                  state.model.size, node.model.size)
        node.state_loaded = True  # another model: this run's checkpoints replace it
        return
    node.model = state.model.copy()
    node.own = restored_public_estimate(state, node.own.vector)  # node.own: the initial
    restore_robust_state(node, state.meta)
    node.round = round_
    node.resumed_from = round_
    node.state_loaded = True
    members = saved_members(node)
    log.warning("resuming from the checkpoint of round %d (%s members in the saved "
                "topology)", round_, len(members) if members else "no")


def saved_topology(node: Node, key: str) -> list[str] | None:
    try:
        saved = json.loads((node.out / "topology.json").read_text())[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [str(m) for m in saved]


def saved_members(node: Node) -> list[str] | None:
    return saved_topology(node, "members")


def saved_neighbours(node: Node) -> list[str] | None:
    """The neighbours saved at the last start (topology ones plus late joiners taken)."""
    saved = saved_topology(node, "neighbours")
    if saved is not None:
        return saved
    members = saved_members(node)
    if not members:
        return None
    topology = topology_over(node, members)
    return sorted(topology.get(node.peer_id, frozenset()))


def save_topology(node: Node, members: list[str]) -> None:
    atomic_write_json(node.out / "topology.json",
                      {"members": sorted(members), "neighbours": sorted(node.wanted)})
