"""A federation of real :class:`~gossipfl.node.runtime.Node` objects in one process, no network.

Admitted identities (a federation key, a certificate per node), a topology given by index, and
the in-memory transport (:mod:`gossipfl.gossip.memory`): a stream a node opens reaches the
*peer's own handler* for that protocol, every frame going through the wire codec and the read
policy as over libp2p. The rounds run
the node's own steps: local training (DP-SGD for record-level DP), the public estimate's
:meth:`~gossipfl.node.estimates.OwnEstimate.publish` with the node's privacy step, then either
the sealed plain contribution (served by the receiver's contribution handler) and the CHOCO
step (:func:`gossipfl.node.round.aggregate`), or secure aggregation
(:func:`gossipfl.node.round.secure_exchange`: masked inputs, consistency, unmasking, through
the handlers). The privacy audit and the cost benchmark drive it, and so may tests.

Rounds run inside one ``trio.run`` (:func:`run_rounds`): the node stamps liveness with
``trio.current_time()``, whose origin differs between runs.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import trio

from gossipfl.adversary.role import Role
from gossipfl.config import NodeConfig, SecurityConfig
from gossipfl.crypto.admission import admit_identity, init_federation
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.memory import MemoryNetwork
from gossipfl.gossip.transport import run_inline
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Ack, Contribution
from gossipfl.node import round as node_round
from gossipfl.node.learner import LocalLearner
from gossipfl.node.runtime import NeighbourState, Node

log = logging.getLogger("gossipfl.inprocess")

ADMITTED = SecurityConfig(admission=True, federation_public="<set by build_federation>",
                          certificate="<set by build_federation>")
"""Security of a config given to :func:`build_federation` (which sets the real paths)."""


def build_federation(folder: Path, configs: Sequence[NodeConfig],
                     graph: Mapping[int, frozenset[int]], *,
                     learners: Sequence[LocalLearner] | None = None,
                     roles: Mapping[int, Role] | None = None) -> list[Node]:
    """Admitted nodes with certificates, linked as ``graph`` says (by index), connected.

    Args:
        folder: Where the federation key, node keys and certificates go.
        configs: One per node (``configs[i]`` is node ``i``); key, certificate and output paths
            are set here, admission on.
        graph: Node index to its neighbours' indices (symmetric).
        learners: Optional learners to reuse (their optimiser states are reset).
        roles: Optional adversary roles by node index; the others are honest.
    """
    federation = folder / "federation"
    init_federation(federation, configs[0].federation)
    network = MemoryNetwork()
    nodes: list[Node] = []
    for i, config in enumerate(configs):
        key_file = folder / f"node-{i}" / "node.key"
        identity, _ = load_or_create_identity(key_file)
        cert = admit_identity(federation, key_file, valid_days=1, now=time.time())
        security = replace(config.security, admission=True, certificate=str(cert),
                           federation_public=str(federation / "federation.pub"))
        config = replace(config, key_file=str(key_file), out_dir=str(folder / f"node-{i}"),
                         security=security)
        learner = learners[i] if learners is not None else LocalLearner(config)
        learner.opt_state = learner.trainer.init_opt_state(learner.template)
        nodes.append(Node(config, identity, learner, (roles or {}).get(i), network=network,
                          offload=run_inline, signals=False))
    ids = [node.peer_id for node in nodes]
    topology = {ids[i]: frozenset(ids[j] for j in graph[i]) for i in range(len(nodes))}
    for i, node in enumerate(nodes):
        node.topology = topology
        for j, other in enumerate(nodes):
            if j != i:
                refusal = node.security.admit(other.peer_id, other.security.own_certificate)
                if refusal is not None:
                    raise ValueError(f"node {i} refused node {j}'s certificate: {refusal}")
        for j in sorted(graph[i]):
            node.neighbours[ids[j]] = NeighbourState()
        node.net = node.make_transport()
        node.serve_protocols(node.net)
    return nodes


@contextlib.asynccontextmanager
async def serving(nodes: Sequence[Node]) -> AsyncIterator[None]:
    """Every node's transport listening (its handlers served) until the block ends."""
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            assert node.net is not None
            await stack.enter_async_context(node.net.running())
        yield


def network_of(nodes: Sequence[Node]) -> MemoryNetwork:
    """The in-memory network the nodes share (its faults: kill, partition, delay, loss)."""
    network = nodes[0].network
    assert isinstance(network, MemoryNetwork)
    return network


def hear_everyone(nodes: Sequence[Node]) -> None:
    """Every node has just heard from every other (call inside the run, at its start)."""
    now = trio.current_time()
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.membership.heard_from(other.peer_id, (), now)


def train_and_publish(node: Node, r: int) -> np.ndarray:
    """The node's steps 1-3: local training (DP-SGD under record-level DP), then
    ``x̂ += privacy_step(x½ − x̂)``. Returns ``x½``."""
    result = node.learner.train(node.model, r, None, node_round.record_dp(node))
    node.own.publish(result.vector, r, privatise=node_round.privacy_step(node, r, True, {}))
    return result.vector


def contribution(node: Node, peer: str, r: int) -> Contribution:
    """This round's plain contribution to ``peer`` (its full public estimate, as a node sends
    to a neighbour that holds nothing yet)."""
    return Contribution(
        federation=node.config.federation, round=r, sender=node.peer_id, receiver=peer,
        degree=len(node.neighbours), kind="full", base_round=-1, disagreement=1e9, done=False,
        tensors=node.layout.to_tensors(node.own.vector), training=True)


async def deliver_plain(sender: Node, receiver: Node, r: int) -> str:
    """``sender``'s contribution to ``receiver`` over a stream of the contribution protocol
    (sealed when payloads are sealed), served by ``receiver``'s own handler; returns the ack's
    status."""
    async with sender.channel_to(receiver.peer_id, sender.contribution_protocol) as channel:
        await sender.send_payload(channel, contribution(sender, receiver.peer_id, r))
        ack = await channel.receive(Ack, MAX_CONTROL_BYTES)
    return str(ack.status)


async def federation_round(nodes: Sequence[Node], r: int) -> dict[str, np.ndarray]:
    """One synchronous round of every node, with the node's own code; returns each node's
    ``x½`` by peer id. Under secure aggregation the exchanges run concurrently (each node
    aggregates its neighbourhood while contributing to its neighbours')."""
    half = {node.peer_id: train_and_publish(node, r) for node in nodes}
    if nodes[0].config.secagg.enabled:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(node_round.secure_exchange, node, r, half[node.peer_id],
                                   trio.current_time(), {})
    else:
        by_id = {node.peer_id: node for node in nodes}
        for node in nodes:
            node.estimates.clock = r
            for peer in node.neighbours:
                status = await deliver_plain(node, by_id[peer], r)
                if status != "ok":
                    raise RuntimeError(f"{peer} refused {node.peer_id}'s round {r}: {status}")
        for node in nodes:
            node.model = node_round.aggregate(node, half[node.peer_id], r)
    for node in nodes:
        node.round = r
    return half


def run_rounds(nodes: Sequence[Node], rounds: int,
               observe: Callable[[int, Sequence[Node], dict[str, np.ndarray],
                                  dict[str, np.ndarray]], None] | None = None) -> None:
    """Run ``rounds`` rounds in one ``trio.run``; ``observe(r, nodes, models_before, half)``
    after each (``models_before``: each node's model when the round began)."""

    async def main() -> None:
        hear_everyone(nodes)
        async with serving(nodes):
            for r in range(rounds):
                before = {node.peer_id: node.model.copy() for node in nodes}
                half = await federation_round(nodes, r)
                if observe is not None:
                    observe(r, nodes, before, half)

    trio.run(main)


__all__ = ["ADMITTED", "build_federation", "contribution", "deliver_plain", "federation_round",
           "hear_everyone", "network_of", "run_rounds", "serving", "train_and_publish"]
