"""An in-process stream from a secure-aggregation aggregator to its members (shared by the
secure-round tests): every frame goes through the wire codec and the member's own handler
answers it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio

from gossipfl.config import (
    CompressionConfig,
    DataConfig,
    ModelConfig,
    NodeConfig,
    SecAggConfig,
    SecurityConfig,
)
from gossipfl.crypto.admission import admit_identity, init_federation
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip import wire
from gossipfl.node import secure_round
from gossipfl.node.compression import compressor
from gossipfl.node.learner import LocalLearner
from gossipfl.node.membership_loop import renew_stamp
from gossipfl.node.runtime import NeighbourState, Node
from gossipfl.node.secagg_state import SecAggState


class Loopback:
    """A stream from the aggregator to one member: every frame goes through the wire codec and
    the member's own handler answers it (None: the member closed the stream unanswered)."""

    def __init__(self, aggregator: str, member: Node, protocol: str) -> None:
        self.aggregator, self.member, self.protocol = aggregator, member, protocol
        self.reply: Any = None

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        # encoded as the aggregator sends it (an unmask request: its peers by place in the
        # table ``known``), decoded as the member reads it (with its own view of that table)
        body = wire.encode_body(message, known=known)
        message = wire.decode_body(body, type(message), known=self.member.sum_table(
            self.aggregator))
        if self.protocol == secure_round.PROTO_CONSISTENCY:
            self.reply = secure_round.answer_consistency(self.member, self.aggregator, message)
        else:
            self.reply = secure_round.answer_unmask(self.member, self.aggregator, message)

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        if self.reply is None:
            raise EOFError("stream closed without an answer")
        return wire.decode_frame(wire.encode_frame(self.reply, max_bytes), expected, max_bytes)


def wire_up(star: dict[str, Node], gone: str = "") -> None:
    a = star["a"]
    by_id = {node.peer_id: node for node in star.values()}
    vanished = {star[n].peer_id for n in gone}

    @asynccontextmanager
    async def channel_to(peer: str, protocol: str, addrs=None) -> AsyncIterator[Loopback]:
        if peer in vanished:
            raise ConnectionError(f"{peer} is gone")
        yield Loopback(a.peer_id, by_id[peer], protocol)

    a.channel_to = channel_to  # type: ignore[method-assign]


def link_star(nodes: dict[str, Node], now: float) -> dict[str, Node]:
    """Make ``nodes`` one neighbourhood: every node neighbours every other (each admitted by
    its certificate), a topology over all of them, and each node's clock stopped at ``now``."""
    ids = {name: node.peer_id for name, node in nodes.items()}
    topology = {ids[n]: frozenset(ids[m] for m in nodes if m != n) for n in nodes}
    for node in nodes.values():
        node.topology = topology
        node.clock = lambda: now
        for other in nodes.values():
            if other is not node:
                assert node.security.admit(other.peer_id, other.security.own_certificate) is None
                node.neighbours[other.peer_id] = NeighbourState()
    return nodes


def secagg_node(tmp_path: Path, name: str, secagg: SecAggConfig,
                compression: CompressionConfig | None = None) -> Node:
    """A node admitted to the federation in ``tmp_path`` (made on first use), on iris with
    logistic regression, with ``secagg`` (and ``compression``) as configured."""
    federation = tmp_path / "federation"
    if not (federation / "federation.pub").exists():
        init_federation(federation, "fed")
    key_file = tmp_path / name / "node.key"
    identity, _ = load_or_create_identity(key_file)
    cert = admit_identity(federation, key_file, valid_days=1, now=time.time())
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path / name),
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        security=SecurityConfig(admission=True,
                                federation_public=str(federation / "federation.pub"),
                                certificate=str(cert)),
        secagg=secagg, compression=compression or CompressionConfig(),
    )
    return Node(config, identity, LocalLearner(config))


def reset_star(star: dict[str, Node], now: float) -> None:
    """Each test starts with no secure-aggregation memory, every member live (a fresh stamp of
    each heard by every other)."""
    stamps = {name: renew_stamp(node) for name, node in star.items()}
    for node in star.values():
        node.secagg = SecAggState()
        for name, other in star.items():
            if other is not node:
                node.membership.heard_from(other.peer_id, (), now, stamps[name])


def publish_round(star: dict[str, Node], r: int, seed: int, spread: float) -> dict[str, Any]:
    """Every member trains a little (noise of ``spread``) and publishes round r's delta,
    compressed as its config says; returns each x̂ after it."""
    rng = np.random.default_rng(seed)
    for node in star.values():
        half = node.own.vector + rng.normal(0, spread, node.layout.size).astype(np.float32)
        node.own.publish(half, r, compress=compressor(node.config.compression, "fed",
                                                      node.peer_id, r, node.config.secagg,
                                                      node.config.rounds))
    return {name: node.own.vector.copy() for name, node in star.items()}


def random_estimates(star: dict[str, Node], seed: int) -> None:
    """Give every member a random x̂ in [-1, 1]."""
    rng = np.random.default_rng(seed)
    for node in star.values():
        node.own.vector = rng.uniform(-1, 1, node.layout.size).astype(np.float32)


def weighted_sum(star: dict[str, Node], estimates: dict[str, Any], names: str) -> Any:
    """Σ_j w_aj x̂_j over the named members: what aggregator a's sum should hold."""
    a = star["a"]
    return sum(secure_round.weight(a, a.peer_id, star[n].peer_id) * estimates[n] for n in names)


def run_secure_sum(node: Node, r: int) -> Any:
    """Aggregator ``node``'s secure sum of round r, run to its end."""
    async def main() -> object:
        return await secure_round.secure_sum(node, r)

    return trio.run(main)

