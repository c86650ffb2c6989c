"""The small interface a node's protocol runs over: serve a protocol, open a channel to a peer.

Two transports implement it: libp2p (:class:`gossipfl.gossip.peers.PeerNet`, what a node
process runs: TCP, Noise, yamux) and in-memory (:class:`gossipfl.gossip.memory.MemoryTransport`,
every node of a federation in one process, with faults injected by the network: drop, delay,
partition, kill). Both hand the node a :class:`~gossipfl.gossip.peers.Channel` of whole wire
frames, read under the node's read policy (frame caps, in-flight budget), so the node's code is
the same over either.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from gossipfl.gossip.peers import Channel, ReadPolicy, Traffic

Handler = Callable[[Channel], Awaitable[None]]
"""Serves one stream a peer opened (the node's guarded handler for a protocol)."""


class Transport(Protocol):
    """What a node needs of the network."""

    def running(self) -> AbstractAsyncContextManager[list[str]]:
        """Listen until the block ends; yields the addresses peers reach this node at."""
        ...

    def serve(self, protocol: str, handler: Handler) -> None:
        """Hand every stream a peer opens for ``protocol`` to ``handler``."""
        ...

    async def open(self, peer_id: str, addrs: tuple[str, ...], protocol: str) -> Channel:
        """A new stream to ``peer_id`` for ``protocol`` (dialling ``addrs`` if need be).
        Raises ``ConnectionError`` (or a libp2p error) when the peer cannot be reached."""
        ...

    def open_streams(self) -> dict[str, int]:
        """Each connected peer and the streams open with it."""
        ...

    async def disconnect(self, peer_id: str) -> None:
        """Close every connection with ``peer_id`` (its streams end)."""
        ...


class Network(Protocol):
    """Where a node's transport comes from when it is not a libp2p host of its own."""

    def attach(self, peer_id: str, traffic: Traffic, policy: ReadPolicy | None,
               addrs: tuple[str, ...]) -> Transport:
        ...


Offload = Callable[..., Awaitable[Any]]
"""Runs a blocking function (training, evaluation, disk) for the node: ``await offload(fn,
*args)``; a worker thread in a node process (``trio.to_thread.run_sync``), inline in a
simulation under a mock clock."""


__all__ = ["Handler", "Network", "Offload", "Transport"]
