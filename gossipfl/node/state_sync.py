"""Catching up, the steps: pulling the neighbours' state (after a restart, a late join, or
mid-run when a neighbour is far ahead) and serving ours (the state protocol). The rules they
follow (what is refused, which round to go on at) are in :mod:`gossipfl.node.catchup`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import trio

from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Contribution, LinkRequest
from gossipfl.node.catchup import (
    rounds_in_progress,
    secure_catch_up_round,
    state_refusal,
    upper_median,
)
from gossipfl.node.estimates import EstimateError
from gossipfl.node.layout import LayoutError
from gossipfl.node.links import topology_digest
from gossipfl.node.state import Node

if TYPE_CHECKING:
    from gossipfl.gossip.peers import Channel

log = logging.getLogger("gossipfl.node")

PROTO_STATE = "/gossipfl/state/1.0.0"


def consensus_round(rounds: Iterable[int]) -> int:
    """The round to jump to from the rounds neighbours report: the upper median, so that one
    neighbour claiming a far-off round cannot carry a node there on its own."""
    return upper_median(rounds)


async def catch_up(node: Node) -> None:
    """After a restart or a late join: pull the neighbours' current estimates and continue
    from them.

    The node takes the mean of what its neighbours hold now (not its old checkpoint, which
    would drag the average back) and joins the round they are in; a restarted node whose
    neighbours are mostly not past its checkpoint goes on from the checkpoint instead (never
    back), and one that jumps takes the mean of those at or past the round it jumps to. Under
    secure aggregation nothing is pulled (:func:`catch_up_secure`).
    """
    if node.config.secagg.enabled:
        catch_up_secure(node, node.round + 1, "restart")
        node.start_round = node.round + 1
        return
    pulled = await pull_neighbourhood(node)
    if not pulled:
        log.warning("no neighbour answered the state request; continuing from %s",
                    "the checkpoint" if node.resumed_from is not None else "the start")
        node.start_round = node.round + 1
        return
    jump = consensus_round(r for r, _ in pulled.values())
    if node.resumed_from is not None and jump <= node.round:
        # most neighbours are not past our checkpoint: their state would take us back
        log.warning("restart: most neighbours (%d answered) are not past the checkpoint's "
                    "round %d; continuing from the checkpoint", len(pulled), node.round)
        node.start_round = node.round + 1
        node.catch_ups.append({"from_round": node.resumed_from, "to_round": node.start_round,
                               "neighbours": 0, "why": "restart", "kept_checkpoint": True})
        return
    ahead = [v for r, v in pulled.values() if r >= jump] if node.resumed_from is not None \
        else [v for _, v in pulled.values()]
    node.model = np.mean(ahead, axis=0).astype(np.float32)
    node.model_public = True  # the neighbours' public estimates only
    node.start_round = jump
    node.round = node.start_round - 1
    log.warning("caught up from %d neighbour(s): continuing at round %d (%s)", len(pulled),
                node.start_round, "joined late" if node.resumed_from is None
                else f"checkpoint was round {node.resumed_from}")
    node.catch_ups.append({"from_round": node.resumed_from, "to_round": node.start_round,
                           "neighbours": len(ahead),
                           "why": "restart" if node.resumed_from is not None else "late"})


async def catch_up_now(node: Node, r: int) -> int:
    """Mid-run: a neighbour said it is far ahead (we were cut off, paused or dropped). Pull
    every neighbour's state; if most of them are ahead of round ``r``, take the mean of
    those ahead as our model and return the round to go on from; else return ``r``."""
    target, node.behind = node.behind, None
    if node.config.secagg.enabled:
        return catch_up_secure(node, r, "behind")
    pulled = await pull_neighbourhood(node)
    jump = consensus_round(r for r, _ in pulled.values()) if pulled else r
    if jump <= r:
        log.info("round %d: a neighbour reported round %s, but most are not ahead (%d "
                 "answered); going on", r, target, len(pulled))
        return r
    ahead = [v for round_, v in pulled.values() if round_ > r]
    node.model = np.mean(ahead, axis=0).astype(np.float32)
    node.model_public = True  # the neighbours' public estimates only
    node.round = jump - 1
    node.catch_ups.append({"from_round": r, "to_round": jump, "neighbours": len(ahead),
                           "why": "behind"})
    log.warning("round %d: neighbours were ahead; caught up from %d of them: continuing at "
                "round %d", r, len(ahead), jump)
    return jump


def catch_up_secure(node: Node, r: int, why: str) -> int:
    """Under secure aggregation: no neighbour's estimate is pulled (that would be one
    member's estimate in the clear). The node keeps its own model and goes on at the round
    most of its neighbours are in, as their heartbeats and masked inputs told it; its next
    secure round brings in the neighbourhood's masked sum. Returns the round to go on at
    (``r``: stay) and sets ``node.round`` to the one before."""
    masked = {p: status[0] for p, status in node.secagg.peer_status.items()}
    in_progress = rounds_in_progress(node.neighbours, node.member_state, masked)
    jump = secure_catch_up_round(r, in_progress.values())
    log.warning("secure aggregation (%s): no neighbour's estimate is pulled; going on from "
                "this node's own model at round %d (%d neighbour(s) reported their round); "
                "its next secure round brings in the neighbourhood's masked sum", why, jump,
                len(in_progress))
    if jump <= r:
        return r
    node.round = jump - 1
    node.catch_ups.append({"from_round": r if why == "behind" else node.resumed_from,
                           "to_round": jump, "neighbours": len(in_progress), "why": why})
    return jump


async def pull_neighbourhood(node: Node) -> dict[str, tuple[int, np.ndarray]]:
    """Pull every neighbour's current public estimate and hold it as its estimate; returns
    peer → (round, vector) for those that answered with a usable one. Never under secure
    aggregation (no plaintext path to one member's estimate): returns nothing."""
    if node.config.secagg.enabled:
        log.error("not pulling neighbours' estimates: secure aggregation is on")
        return {}
    pulled: dict[str, Contribution] = {}
    async with trio.open_nursery() as nursery:
        for peer in list(node.neighbours):
            nursery.start_soon(pull_state, node, peer, pulled)
    result = {}
    for peer, message in pulled.items():
        try:
            vector = node.layout.from_tensors(message.tensors)
        except LayoutError as error:
            node.reject(peer, "state", "layout", str(error))
            continue
        held = node.estimates.peers.get(peer)
        node.estimates.forget(peer)  # the pulled state replaces whatever we held
        try:
            node.estimates.apply(message, vector)
        except EstimateError as error:
            if held is not None:
                node.estimates.peers[peer] = held
            node.reject(peer, "state", error.key, error.reason)
            continue
        result[peer] = (message.round, vector)
    return result


async def pull_state(node: Node, peer: str, pulled: dict[str, Contribution]) -> None:
    request = LinkRequest(node.config.federation, node.peer_id, topology_digest(node),
                          node.round, rejoin=True)
    with trio.move_on_after(node.protocol.request_timeout):
        try:
            async with node.channel_to(peer, PROTO_STATE) as channel:
                await channel.send(request, MAX_CONTROL_BYTES)
                message, _ = await node.receive_payload(channel, Contribution)
        except Exception as error:
            log.info("state request to %s failed: %s", peer, error)
            return
        if message is not None and message.sender == peer and message.kind == "full":
            pulled[peer] = message


async def on_state_request(node: Node, channel: Channel) -> None:
    """Give a (re)joining neighbour our current public estimate x̂ (never the private model)
    and round; refused to anyone under secure aggregation (catchup.py)."""
    remote = channel.remote  # authenticated by Noise: judged before anything is read
    refusal = state_refusal(secure_aggregation=node.config.secagg.enabled,
                            neighbour=remote in node.neighbours,
                            member=node.security.is_member(remote))
    if refusal is not None:
        node.reject(remote, "state request", refusal.key, refusal.value)
        return
    request = await channel.receive(LinkRequest, MAX_CONTROL_BYTES)
    if not node.check_origin(channel, "state request", request.federation, request.sender):
        return
    if node.own.round < 0:
        # nothing published yet: x̂ is the initial model, round -1. Served as round 0 it would
        # stand for our real round 0, which the neighbour then refuses as stale, and its copy
        # of x̂ would differ from ours for as long as our deltas build on it
        log.info("state request from %s: no public estimate published yet; nothing served",
                 remote)
        return
    sent_at = trio.current_time()
    message = Contribution(
        federation=node.config.federation, round=node.own.round,
        sender=node.peer_id, receiver=remote, degree=len(node.neighbours), kind="full",
        base_round=-1, disagreement=float(min(node.disagreement, 1e9)),
        done=node.status == NodeStatus.DONE,
        tensors=node.layout.to_tensors(node.own.vector),
        training=node.status == NodeStatus.TRAINING,
        # what it says of its convergence, as its contributions do: a done node's horizon
        # lets the puller count it settled (termination.settled_depth)
        depth=node.settle.depth, horizon=node.settle.horizon, waiting=node.settle.waiting,
        examples=node.reported_examples,
    )
    await node.send_payload(channel, message)
    # it holds our estimate as of this round now (unless the link was dropped or made afresh
    # while we sent it: a new link's holds start from nothing)
    state = node.neighbours.get(remote)
    if state is not None and state.linked_at <= sent_at:
        state.peer_holds = node.own.round
