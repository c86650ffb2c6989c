"""Stand-ins for the far end of a node's streams, shared by the tests that drive the send
paths without a transport (test_codes.py, test_pipelined_send.py, test_heartbeat_links.py),
and a small node for them."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from gossipfl.config import DataConfig, ModelConfig, NodeConfig
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.node.learner import LocalLearner
from gossipfl.node.membership_loop import heartbeat
from gossipfl.node.runtime import Node


class QuietEnd:
    """A stream end whose close and reset do nothing (a subclass says what it answers)."""

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


class NoNet:
    """A transport that only disconnects, which the tests' sends never need."""

    async def disconnect(self, peer: str) -> None:
        pass


def small_node(tmp_path: Path, *, node_index: int = 0,
               rng: random.Random | None = None) -> Node:
    """A node of a 4-member federation on iris with logistic regression (cheap to build),
    its key and output in ``tmp_path``; nothing runs until a test drives it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    key_file = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key_file)
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path), seed=7,
        node_index=node_index, node_count=4,
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
    )
    return Node(config, identity, LocalLearner(config), rng=rng)


def meet(node: Node, count: int) -> list[str]:
    """``count`` made-up members heard from directly by ``node`` (each at its own port)."""
    peers = [f"peer{i:02d}" for i in range(count)]
    for i, peer in enumerate(peers):
        node.membership.heard_from(peer, (f"/ip4/10.0.0.1/tcp/{4000 + i}",), 0.0)
    return peers


class AnsweringEnd:
    """``peer``'s end of a membership stream we opened: answers every heartbeat with its own,
    counting them."""

    def __init__(self, peer: Node, to: Node) -> None:
        self.peer, self.to, self.remote = peer, to, peer.peer_id
        self.heard = 0
        self.closed = False

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        self.heard += 1

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        return heartbeat(self.peer, self.to.peer_id)

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.closed = True


class AnsweringNet:
    """A transport whose every stream is an :class:`AnsweringEnd` of the node it reaches;
    keeps each stream opened."""

    def __init__(self, peers: dict[str, Node], me: Node) -> None:
        self.peers, self.me = peers, me
        self.opened: list[AnsweringEnd] = []

    async def open(self, peer: str, addrs: tuple[str, ...], protocol: str) -> AnsweringEnd:
        channel = AnsweringEnd(self.peers[peer], self.me)
        self.opened.append(channel)
        return channel

    async def disconnect(self, peer: str) -> None:
        pass
