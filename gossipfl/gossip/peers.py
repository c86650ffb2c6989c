"""Talking to one peer: dial if needed, open a stream for a protocol, send and receive frames.

Every call here is under a deadline set by the caller, and counts the bytes and messages it moves.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import multiaddr
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from gossipfl.gossip.framing import read_frame, write_frame
from gossipfl.gossip.wire import M, Message

log = logging.getLogger(__name__)

ADDR_TTL_SECONDS = 3600


@dataclass
class Traffic:
    """Application bytes and frames moved (Noise and yamux overhead not included)."""

    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    by_kind_sent: dict[str, int] = field(default_factory=dict)

    def sent(self, kind: str, size: int) -> None:
        self.bytes_sent += size
        self.messages_sent += 1
        self.by_kind_sent[kind] = self.by_kind_sent.get(kind, 0) + size

    def received(self, size: int) -> None:
        self.bytes_received += size
        self.messages_received += 1


class Channel:
    """One stream to a peer, speaking whole frames."""

    def __init__(self, stream: INetStream, traffic: Traffic) -> None:
        self.stream = stream
        self.traffic = traffic

    @property
    def remote(self) -> str:
        return str(self.stream.muxed_conn.peer_id)

    async def send(self, message: Message, max_bytes: int) -> None:
        size = await write_frame(self.stream, message, max_bytes)
        self.traffic.sent(message.KIND, size)

    async def receive(self, expected: type[M], max_bytes: int) -> M:
        message, size = await read_frame(self.stream, expected, max_bytes)
        self.traffic.received(size)
        return message

    async def close(self) -> None:
        try:
            await self.stream.close()
        except Exception:  # the peer may be gone already; nothing to recover
            log.debug("closing a stream to %s failed", self.remote, exc_info=True)

    async def reset(self) -> None:
        try:
            await self.stream.reset()
        except Exception:
            log.debug("resetting a stream to %s failed", self.remote, exc_info=True)


class PeerNet:
    """Opens channels to peers by id, dialling their known addresses when not connected.

    ``routes`` maps a peer id to the one address to dial it at (a relay that forwards to it): a
    routed peer is never dialled at the addresses it advertises, whoever told us them (heartbeats,
    bootstrap lists, libp2p's identify), so everything we send it passes the relay.
    """

    def __init__(self, host: IHost, traffic: Traffic,
                 routes: Mapping[str, str] | None = None) -> None:
        self.host = host
        self.traffic = traffic
        self.routes: dict[str, multiaddr.Multiaddr] = {
            peer: _transport_part(multiaddr.Multiaddr(addr), peer)
            for peer, addr in (routes or {}).items()
        }

    def remember(
        self, peer_id: str, addrs: tuple[str, ...]
    ) -> tuple[ID, list[multiaddr.Multiaddr]]:
        """Parse ``peer_id`` and its addresses (transport parts only) and store them.

        For a routed peer, its route replaces every address the peerstore holds for it.
        """
        pid = ID.from_base58(peer_id)
        if peer_id in self.routes:
            return pid, self._pin_route(pid, peer_id)
        maddrs = []
        for addr in addrs:
            try:
                maddr = multiaddr.Multiaddr(addr)
            except Exception:
                log.warning("ignoring malformed address %r for %s", addr, peer_id)
                continue
            # keep the transport part only: the peer id is added by the peerstore
            maddrs.append(_transport_part(maddr, peer_id))
        if maddrs:
            self.host.get_peerstore().add_addrs(pid, maddrs, ADDR_TTL_SECONDS)
        return pid, maddrs

    def _pin_route(self, pid: ID, peer_id: str) -> list[multiaddr.Multiaddr]:
        """Leave the peer's route as the only address the peerstore holds for it (identify may
        have added the addresses it listens on since we last looked)."""
        route = self.routes[peer_id]
        peerstore = self.host.get_peerstore()
        peerstore.clear_addrs(pid)
        peerstore.add_addrs(pid, [route], ADDR_TTL_SECONDS)
        return [route]

    async def open(self, peer_id: str, addrs: tuple[str, ...], protocol: str) -> Channel:
        """Connect (if not connected already) and open a stream for ``protocol``."""
        pid, maddrs = self.remember(peer_id, addrs)
        # Our callers pace their own retries (heartbeat and re-link intervals, each under a
        # deadline). libp2p blocks a peer whose dials all failed for 60 s, which would keep a
        # healed partition or a restarted peer apart long after it answers again.
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(pid)
        await self.host.connect(PeerInfo(pid, maddrs))
        if peer_id in self.routes:
            self._pin_route(pid, peer_id)  # new_stream redials from the peerstore if need be
        stream = await self.host.new_stream(pid, [protocol])
        return Channel(stream, self.traffic)

    async def disconnect(self, peer_id: str) -> None:
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except Exception:
            log.debug("disconnecting %s failed", peer_id, exc_info=True)


def _transport_part(maddr: multiaddr.Multiaddr, peer_id: str) -> multiaddr.Multiaddr:
    """``maddr`` without a trailing ``/p2p/<peer_id>`` (the peerstore adds the peer id)."""
    with contextlib.suppress(Exception):
        maddr = maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_id}"))
    return maddr
