"""Talking to one peer: dial if needed, open a stream for a protocol, send and receive frames.

Every call here is under a deadline set by the caller, and counts the bytes and messages it moves.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo

from gossipfl.gossip.circuit import (
    CircuitError,
    Circuits,
    LinkKind,
    announced,
    is_circuit,
    stream_link_kind,
    usable_circuits,
)
from gossipfl.gossip.dialback import PROTO_DIALBACK, DialbackServer, probe
from gossipfl.gossip.framing import BufferedReader, ByteStream, read_frame, write_frame
from gossipfl.gossip.host import handshake_failures
from gossipfl.gossip.ratelimit import InFlight
from gossipfl.gossip.resources import resource_stats
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Known, M, Message, WireError
from gossipfl.relay_config import Reachability, RelayConfig

log = logging.getLogger(__name__)

ADDR_TTL_SECONDS = 3600
#: A peer that also has relayed addresses is tried at its direct ones this long at most (a LAN
#: peer answers in milliseconds; a private address elsewhere may hang in py-libp2p's dialer).
DIRECT_BEFORE_RELAY_SECONDS = 3.0
#: A stream over a relayed connection must be negotiated within this long (one round trip
#: through the relay, milliseconds when it forwards); else the relay is taken for a black hole
#: and the connection closed, so the next stream re-links (through another relay first).
RELAYED_STREAM_SECONDS = 4.0
LINK_PEERS = 1024  # peers whose streams are counted per kind of link (relay.json)


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


@dataclass
class ReadPolicy:
    """What a peer may make this node read: payload-sized frames only from certified members
    (``is_member``); anyone else is held to :data:`MAX_CONTROL_BYTES` from the frame header.
    Every frame's length is reserved from ``in_flight`` (all peers together) before its body
    is read."""

    is_member: Callable[[str], bool]
    in_flight: InFlight


class _Reservation:
    """One peer's view of the node's in-flight budget (:class:`FrameBudget`)."""

    def __init__(self, in_flight: InFlight, member: bool) -> None:
        self.in_flight, self.member = in_flight, member

    def reserve(self, size: int) -> bool:
        return self.in_flight.reserve(size, member=self.member)

    def release(self, size: int) -> None:
        self.in_flight.release(size, member=self.member)


class Channel:
    """One stream to a peer, speaking whole frames (read under ``policy`` when given)."""

    def __init__(self, stream: ByteStream, traffic: Traffic,
                 policy: ReadPolicy | None = None, remote: str | None = None) -> None:
        self.stream = stream
        self.reader = BufferedReader(stream)  # a member's frames read in chunks (framing.py)
        self.traffic = traffic
        self.policy = policy
        # a libp2p stream knows its peer; an in-memory one is told (gossipfl.gossip.memory)
        self.remote = remote if remote is not None else str(stream.muxed_conn.peer_id)  # type: ignore[attr-defined]

    def read_cap(self, max_bytes: int) -> tuple[int, bool]:
        """The cap on the next frame from this peer, and whether it is a certified member."""
        if self.policy is None:
            return max_bytes, True
        member = self.policy.is_member(self.remote)
        return (max_bytes if member else min(max_bytes, MAX_CONTROL_BYTES)), member

    async def send(self, message: Message, max_bytes: int, known: Known | None = None) -> None:
        size = await write_frame(self.stream, message, max_bytes, known)
        self.traffic.sent(message.KIND, size)

    async def receive(self, expected: type[M] | tuple[type[Message], ...],
                      max_bytes: int, known: Known | None = None) -> M:
        cap, member = self.read_cap(max_bytes)
        budget = None if self.policy is None else _Reservation(self.policy.in_flight, member)
        self.reader.ahead = member  # a stranger's frames: not a byte beyond a header unchecked
        try:
            message, size = await read_frame(self.reader, expected, cap, budget, known)
        except WireError as error:
            if cap < max_bytes:
                raise WireError(f"{error} (not a certified member: control frames only)") from None
            raise
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


class Idle(Enum):
    """Why a connection is closed by :class:`ConnectionReaper`."""

    STRANGER = "uncertified"  # no valid certificate within the grace period
    IDLE = "idle"  # no stream for idle_after


@dataclass
class ConnectionReaper:
    """Which connections to close: a peer that is not a certified member ``stranger_grace``
    seconds after we first saw its connection, and any peer with no stream open and none opened
    either way for ``idle_after`` seconds. Pure state; the node feeds it activity (:meth:`touch`)
    and samples of the open connections (:meth:`sweep`)."""

    stranger_grace: float
    idle_after: float
    _first_seen: dict[str, float] = field(default_factory=dict)
    _active: dict[str, float] = field(default_factory=dict)

    def touch(self, peer: str, now: float) -> None:
        """A stream to or from ``peer`` was opened."""
        self._active[peer] = now

    def sweep(self, now: float, streams: Mapping[str, int],
              is_member: Callable[[str], bool] | None) -> list[tuple[str, Idle]]:
        """``streams``: each connected peer and its open streams; ``is_member`` None when
        admission is off. Returns the peers to disconnect, and why."""
        for gone in set(self._first_seen) - set(streams):
            del self._first_seen[gone]
        for gone in set(self._active) - set(streams):
            del self._active[gone]
        close = []
        for peer, count in streams.items():
            first = self._first_seen.setdefault(peer, now)
            if is_member is not None and not is_member(peer):
                if now - first >= self.stranger_grace:
                    close.append((peer, Idle.STRANGER))
            elif count == 0 and now - max(first, self._active.get(peer, first)) >= self.idle_after:
                close.append((peer, Idle.IDLE))
        return close


class PeerNet:
    """The libp2p transport (:class:`gossipfl.gossip.transport.Transport`): serves protocols,
    and opens channels to peers by id, dialling their known addresses when not connected.

    ``routes`` maps a peer id to the one address to dial it at (a relay that forwards to it): a
    routed peer is never dialled at the addresses it advertises, whoever told us them (heartbeats,
    bootstrap lists, libp2p's identify), so everything we send it passes the relay.

    ``circuits``: circuit relay v2 (``gossip/circuit.py``), for a node that serves as a relay
    or cannot be dialled (a private node announces its relayed addresses only). A peer whose
    addresses are relayed ones (``.../p2p-circuit/p2p/PEER``) is dialled at its direct
    addresses first, if any, then through its relays (a node with no relay role of its own
    makes a dialer for that when first needed).
    """

    def __init__(self, host: IHost, traffic: Traffic,
                 routes: Mapping[str, str] | None = None,
                 policy: ReadPolicy | None = None,
                 reaper: ConnectionReaper | None = None,
                 listen: Sequence[multiaddr.Multiaddr] = (),
                 circuits: Circuits | None = None,
                 clock: Callable[[], float] = time.monotonic, *, federation: str = "") -> None:
        self.host = host
        self.circuits = circuits
        self.federation = federation
        self.dialback = DialbackServer(host, federation)  # any node answers dial-backs
        # ``reachable = "auto"``: what the dial-back probe found, and from whom
        self.reachability: tuple[Reachability, dict[str, str]] | None = None
        # streams opened either way, per peer and per kind of connection they rode
        self.link_streams: dict[str, dict[str, int]] = {}
        # seconds from this transport's start (the node's) to its first stream with each peer
        self.first_contact: dict[str, float] = {}
        self.clock = clock
        self.started = clock()
        self.listen = list(listen)
        self.traffic = traffic
        self.policy = policy
        self.reaper = reaper
        self.routes: dict[str, multiaddr.Multiaddr] = {
            peer: _transport_part(multiaddr.Multiaddr(addr), peer)
            for peer, addr in (routes or {}).items()
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[list[str]]:
        """Listen (on the addresses given at construction) until the block ends; yields the
        addresses the host listens on."""
        async with self.host.run(listen_addrs=self.listen):
            self.host.set_stream_handler(PROTO_DIALBACK, self.dialback.on_stream)
            listening = [str(a) for a in self.host.get_addrs()]
            if self.circuits is None:
                yield listening
                return
            config = self.circuits.config
            private = config.private
            if config.reachable is Reachability.AUTO:  # found out before announcing anything
                self.reachability = await probe(self.host, self.federation,
                                                self.circuits.relays, listening)
                private = self.reachability[0] is Reachability.PRIVATE
            async with self.circuits.running(private) as relayed:
                yield announced(listening, relayed, private, config.announce_listen)

    def _count(self, peer: str, stream: Any) -> None:
        if peer not in self.link_streams and len(self.link_streams) >= LINK_PEERS:
            return  # a crowd of strangers does not grow the table
        if peer not in self.link_streams:
            self.first_contact[peer] = round(self.clock() - self.started, 3)
        kinds = self.link_streams.setdefault(peer, {})
        kind = stream_link_kind(stream).value
        kinds[kind] = kinds.get(kind, 0) + 1

    def relay_summary(self) -> dict[str, Any]:
        """The relay roles' figures (when the node has any, or dialled through a relay) and,
        per peer, the streams that rode a direct or a relayed connection and the seconds from
        the node's start to its first stream with that peer (``first_contact``)."""
        roles = {} if self.circuits is None else self.circuits.summary()
        if self.reachability is not None:
            roles["reachable"] = self.reachability[0].value
            roles["dialback"] = dict(self.reachability[1])  # peer asked → what came of it
        return {**roles, "dialbacks_answered": dict(self.dialback.counts),
                "resources": resource_stats(self.host),
                "handshake_failures": handshake_failures(self.host),
                "link_streams": self.link_streams,
                "first_contact": self.first_contact,
                "relayed_peers": sorted(p for p, kinds in self.link_streams.items()
                                        if kinds.get(LinkKind.RELAYED.value))}

    def serve(self, protocol: str, handler: Callable[[Channel], Awaitable[None]]) -> None:
        """Serve ``protocol``: each stream a peer opens is handed to ``handler`` as a
        :class:`Channel` (its frames read under the read policy)."""
        async def on_stream(stream: INetStream) -> None:
            self._count(str(stream.muxed_conn.peer_id), stream)
            await handler(Channel(stream, self.traffic, self.policy))

        self.host.set_stream_handler(protocol, on_stream)

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
            if is_circuit(addr):  # dialled by the relay roles, never by the swarm
                continue
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
        self._pin(pid, [route])
        return [route]

    def _pin(self, pid: ID, maddrs: list[multiaddr.Multiaddr]) -> None:
        peerstore = self.host.get_peerstore()
        peerstore.clear_addrs(pid)
        if maddrs:
            peerstore.add_addrs(pid, maddrs, ADDR_TTL_SECONDS)

    def _certified(self, peer_id: str) -> bool:
        return self.policy is None or self.policy.is_member(peer_id)

    async def open(self, peer_id: str, addrs: tuple[str, ...], protocol: str) -> Channel:
        """Connect (if not connected already) and open a stream for ``protocol``."""
        pid, maddrs = self.remember(peer_id, addrs)
        if self.reaper is not None:
            self.reaper.touch(peer_id, trio.current_time())
        # Our callers pace their own retries (heartbeat and re-link intervals, each under a
        # deadline). libp2p blocks a peer whose dials all failed for 60 s, which would keep a
        # healed partition or a restarted peer apart long after it answers again.
        unblock = getattr(self.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(pid)
        # An uncertified peer (a bootstrap address, hearsay) is dialled only at the addresses
        # our caller gives, never at those it (or anyone) announced through libp2p's identify.
        pinned = peer_id not in self.routes and not self._certified(peer_id)
        if pinned:
            self._pin(pid, maddrs)
        await self._connect(pid, peer_id, maddrs, addrs)
        if peer_id in self.routes:
            self._pin_route(pid, peer_id)  # new_stream redials from the peerstore if need be
        elif pinned:
            self._pin(pid, maddrs)
        stream = await self._new_stream(pid, peer_id, protocol)
        self._count(peer_id, stream)
        return Channel(stream, self.traffic, self.policy)

    async def _new_stream(self, pid: ID, peer_id: str, protocol: str) -> INetStream:
        """A stream for ``protocol`` on the connection to ``pid``. Over a relayed connection,
        within ``RELAYED_STREAM_SECONDS``: a relay that stops forwarding keeps both ends'
        connections to it open, so nothing else would ever close the silent circuit (every
        stream on it hangs to its caller's deadline, and the swarm never dials again while it
        holds it). Past that, the relayed connections to ``pid`` are closed (CircuitError)."""
        circuits = self.circuits
        if circuits is None or not circuits.relayed_to(pid):
            return await self.host.new_stream(pid, [protocol])
        with trio.move_on_after(RELAYED_STREAM_SECONDS):
            return await self.host.new_stream(pid, [protocol])
        closed = await circuits.drop_silent(pid)
        raise CircuitError(f"no stream to {peer_id} over its relayed link within "
                           f"{RELAYED_STREAM_SECONDS} s: closed {closed} silent relayed "
                           f"connection(s); the next stream re-links")

    async def _connect(self, pid: ID, peer_id: str, maddrs: list[multiaddr.Multiaddr],
                       addrs: tuple[str, ...]) -> None:
        """Dial ``peer_id`` (no-op when connected): directly, then through its relays."""
        prune_closed(self.host, pid)
        circuits = () if peer_id in self.routes else \
            usable_circuits(addrs, str(self.host.get_id()))
        if not circuits or self.host.get_network().get_connections(pid):
            await self.host.connect(PeerInfo(pid, maddrs))
            return
        if maddrs:
            try:
                with trio.fail_after(DIRECT_BEFORE_RELAY_SECONDS):
                    await self.host.connect(PeerInfo(pid, maddrs))
                return
            except Exception as error:
                log.debug("direct dial of %s failed (%s): trying its relays", peer_id, error)
        if self.circuits is None:  # a node with no relay role of its own: a dialer only
            self.circuits = Circuits(self.host, RelayConfig())
        await self.circuits.dial(peer_id, circuits)

    def open_streams(self) -> dict[str, int]:
        """Each connected peer and the streams open on its connections."""
        counts: dict[str, int] = {}
        for pid, conns in self.host.get_network().get_connections_map().items():
            peer = str(pid)
            if self.circuits is not None and self.circuits.keep(peer, self._certified(peer)):
                continue  # a relay of ours, or a member reserved on us: never reaped
            counts[peer] = sum(len(conn.get_streams()) for conn in conns)
        return counts

    async def disconnect(self, peer_id: str) -> None:
        try:
            await self.host.disconnect(ID.from_base58(peer_id))
        except Exception:
            log.debug("disconnecting %s failed", peer_id, exc_info=True)


def prune_closed(host: IHost, pid: ID) -> int:
    """Drop ``pid``'s closed connections from the swarm's records; returns how many.

    py-libp2p 0.8.1 can keep a closed connection filed under its peer (seen with a relayed
    connection whose relay was killed): the swarm then neither uses it (every stream fails
    with "No valid connections available") nor dials again (it returns the connections it
    holds), so the peer stays unreachable for good."""
    network = host.get_network()
    remove = getattr(network, "remove_conn", None)
    dead = 0
    for conn in network.get_connections(pid):
        if not _closed(conn) or remove is None:
            continue
        with contextlib.suppress(Exception):
            remove(conn)
            dead += 1
    if dead:
        log.info("dropped %d closed connection(s) to %s", dead, pid)
    return dead


def _closed(conn: Any) -> bool:
    try:
        return bool(conn.is_closed or conn.muxed_conn.is_closed)
    except Exception:
        return False


def _transport_part(maddr: multiaddr.Multiaddr, peer_id: str) -> multiaddr.Multiaddr:
    """``maddr`` without a trailing ``/p2p/<peer_id>`` (the peerstore adds the peer id)."""
    with contextlib.suppress(Exception):
        maddr = maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{peer_id}"))
    return maddr
