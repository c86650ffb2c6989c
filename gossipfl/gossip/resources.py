"""The libp2p resource manager with the node's own limits (issue 14).

py-libp2p 0.8.1's ``new_host`` installs ``libp2p.rcmgr.new_resource_manager()`` when given
none: 1000 connections, 512 MiB, 10,000 streams for all peers together. What its swarm really
consults (read in ``network/swarm.py`` and ``network/connection/swarm_connection.py``, checked
on loopback in ``tests/test_resources.py``):

* connections: ``ResourceLimits.max_connections`` (every connection, while it is upgraded and
  after; over it, one is closed before Noise), and the per-peer connection rate
  (``connections_per_peer_per_sec``). ``ConnectionLimits`` (``max_established_per_peer``,
  ``..._total``, ...) are checked too, once a connection is upgraded, but a connection they
  refuse keeps its count in ``max_connections`` for good (its scope is filed on the muxed
  connection, which no one closes): past that many refusals every connection, a member's too,
  is refused. So they are left off here, and connections per peer are counted by this module;
* streams: ``ResourceLimits.max_streams`` alone, one count for all peers and both directions,
  before a stream's protocol is negotiated. ``set_resource_manager`` also makes a semaphore of
  that size, and a stream over it *waits* for a slot (an inbound one until the dialer gives up,
  an outbound one of the node's own as long as the crowd holds its streams) rather than being
  refused. The per-peer and per-protocol stream limits (``set_protocol_peer_stream_limit`` and
  kin, ``acquire_scoped_stream``) are never called by the swarm or the host;
* memory: ``acquire_memory`` is never called outside the manager, so ``max_memory_bytes`` bounds
  nothing (the node's own bound is its in-flight byte budget, ``gossipfl.gossip.ratelimit``);
* its graceful degradation *lowers* the connection and stream limits (to half at most) each time
  they are reached: under a crowd of strangers, the members' share shrinks. Turned off here.

So :class:`NodeResourceManager` keeps py-libp2p's connection checks with limits derived from the
node's configuration (:func:`host_limits`), and adds what the swarm's calls already give it the
means for (peer id and direction): connections per peer, streams per peer and inbound streams
all together are bounded, each refused at once (a stream is reset), so a stranger's crowd
cannot take the streams the node opens itself. The stream semaphore is left out
(:func:`install`).
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libp2p.abc import IHost
from libp2p.rcmgr import Direction, ResourceLimits, ResourceManager

from gossipfl.gossip.wire_fields import MAX_MEMBERS
from gossipfl.relay_config import MAX_RELAYS, RelayConfig, relay_candidates

if TYPE_CHECKING:
    from gossipfl.config import NodeConfig

#: streams a peer's libp2p services may hold open beside gossipfl's own (identify, identify
#: push, ping, DCUtR, a relay reservation)
LIBP2P_STREAMS = 8
#: connections beyond the members': strangers being reaped, joiners not yet admitted
STRANGER_CONNECTIONS = 16
#: connections one peer may hold to us at once: direct, relayed and hole-punched, plus one being
#: made (py-libp2p's own ConnectionConfig trims above 3 once they are up)
CONNECTIONS_PER_PEER = 4


@dataclass(frozen=True)
class HostLimits:
    """What one host holds at most (derived by :func:`host_limits`)."""

    connections: int  # connections up at once, all peers, both directions (see the manager)
    connections_per_peer: int
    peer_streams: int  # streams one peer may hold open to us
    relay_streams: int  # more inbound streams a relay of ours may hold (its circuits' stop streams)
    inbound_streams: int  # inbound streams, all peers together
    streams: int  # streams, both directions, all peers together
    memory_bytes: int  # passed on; py-libp2p 0.8.1 never checks it (module docstring)
    serving: bool = False  # this host relays: any peer may hold relay_streams more (hop streams)
    relays: tuple[str, ...] = ()  # peer ids of the relays this host reserves on
    connection_rate: float = 10.0  # new connections a second from one peer (py-libp2p's)
    connection_burst: float = 50.0


def _members(config: NodeConfig) -> int:
    """Members this node may have to talk to: twice the federation it expects (joiners beyond
    ``expected_members``), at least its degree and late links, at most ``MAX_MEMBERS``;
    ``MAX_MEMBERS`` where it names no size (neither ``expected_members`` nor ``node_count``)."""
    if config.expected_members == 0 and config.node_count <= 1:
        return MAX_MEMBERS
    expected = max(config.expected_members, config.node_count,
                   config.topology.degree + config.protocol.extra_links + 1)
    return min(MAX_MEMBERS, 2 * expected)


def relay_host_limits(relay: RelayConfig, memory_bytes: int = 512 << 20,
                      peer_streams: int = 16, members: int = 0) -> HostLimits:
    """A host's limits for its relay role alone (``members`` more peers for a member)."""
    relays = MAX_RELAYS if relay.may_be_private else 0
    held = relay.reservations if relay.serve else 0  # each reserved peer keeps a connection
    peers = members + relays + held
    # a circuit is a hop stream from its dialer and a stop stream to its target at the relay,
    # and a stop stream from the relay at the target: one stream per relayed peer
    circuits = relay.reservations * relay.circuits_per_peer if relay.serve else 0
    relay_streams = max(members, relay.circuits_per_peer) if (relays or relay.serve) else 0
    per_peer = peer_streams + LIBP2P_STREAMS
    inbound = peers * per_peer + relays * relay_streams + circuits
    return HostLimits(
        connections=CONNECTIONS_PER_PEER * peers + STRANGER_CONNECTIONS,
        connections_per_peer=CONNECTIONS_PER_PEER, peer_streams=per_peer,
        relay_streams=relay_streams, inbound_streams=inbound, streams=2 * inbound + circuits,
        memory_bytes=memory_bytes, serving=relay.serve)


def host_limits(config: NodeConfig, payload_cap: int) -> HostLimits:
    """A member's host limits from its configuration: the members it may talk to (federation
    size, degree), ``protocol.peer_streams`` per peer, its relay roles, and its in-flight byte
    budget (``payload_cap`` bytes a frame at most)."""
    memory = config.protocol.max_in_flight_bytes or 4 * payload_cap
    limits = relay_host_limits(config.relay, memory_bytes=memory,
                               peer_streams=config.protocol.peer_streams,
                               members=_members(config))
    if not config.relay.may_be_private:
        return limits
    relays = tuple(peer for peer, _ in relay_candidates(config.relay, config.bootstrap))
    return dataclasses.replace(limits, relays=relays)


class NodeResourceManager(ResourceManager):
    """py-libp2p's resource manager, with the node's limits and per-peer and inbound stream
    bounds of its own (the swarm calls ``acquire_stream(peer, direction)`` for every stream
    before its protocol is negotiated, and ``release_stream`` when it closes)."""

    def __init__(self, limits: HostLimits) -> None:
        super().__init__(
            # the swarm counts a connection being upgraded once with no peer, and once more,
            # with its peer, just before it lets go of the first: + 1 makes ``connections``
            # connections up at once possible (fewer while others are being upgraded)
            limits=ResourceLimits(max_connections=limits.connections + 1,
                                  max_memory_mb=max(1, limits.memory_bytes >> 20),
                                  max_streams=limits.streams),
            enable_connection_tracking=False, enable_metrics=False, enable_circuit_breaker=False,
            enable_graceful_degradation=False,
            connections_per_peer_per_sec=limits.connection_rate,
            burst_connections_per_peer=limits.connection_burst)
        self.host_limits = limits
        self.relays = set(limits.relays)  # peers whose stop streams carry our circuits
        self.refused_streams = 0
        self.refused_connections = 0
        self._peer_connections: dict[str, int] = {}
        self._inbound: dict[str, int] = {}
        self._inbound_total = 0
        self._peer_lock = threading.Lock()

    def _peer_cap(self, peer: str) -> int:
        limits = self.host_limits
        relayed = limits.serving or peer in self.relays
        return limits.peer_streams + (limits.relay_streams if relayed else 0)

    def acquire_connection(self, peer_id: str = "", endpoint_ip: str | None = None,
                           direction: str = "inbound") -> bool:
        """py-libp2p's checks, then (for an upgraded connection, whose peer is known) at most
        ``connections_per_peer`` to one peer."""
        peer = str(peer_id)
        with self._peer_lock:
            if peer and self._peer_connections.get(peer, 0) >= \
                    self.host_limits.connections_per_peer:
                self.refused_connections += 1
                return False
            if not super().acquire_connection(peer_id, endpoint_ip, direction):
                self.refused_connections += 1
                return False
            if peer:
                self._peer_connections[peer] = self._peer_connections.get(peer, 0) + 1
            return True

    def release_connection(self, peer_id: str = "", endpoint_ip: str | None = None,
                           direction: str = "inbound") -> None:
        peer = str(peer_id)
        with self._peer_lock:
            count = self._peer_connections.get(peer, 0)
            if count > 1:
                self._peer_connections[peer] = count - 1
            elif count == 1:
                del self._peer_connections[peer]
        super().release_connection(peer_id, endpoint_ip, direction)

    def acquire_stream(self, peer_id: str, direction: Direction) -> bool:
        if direction == Direction.INBOUND:
            peer = str(peer_id)
            with self._peer_lock:
                if (self._inbound_total >= self.host_limits.inbound_streams
                        or self._inbound.get(peer, 0) >= self._peer_cap(peer)):
                    self.refused_streams += 1
                    return False
                if not super().acquire_stream(peer_id, direction):
                    self.refused_streams += 1
                    return False
                self._inbound[peer] = self._inbound.get(peer, 0) + 1
                self._inbound_total += 1
                return True
        return super().acquire_stream(peer_id, direction)

    def release_stream(self, peer_id: str, direction: Direction) -> None:
        if direction == Direction.INBOUND:
            peer = str(peer_id)
            with self._peer_lock:
                count = self._inbound.get(peer, 0)
                if count > 0:
                    self._inbound_total -= 1
                    if count == 1:
                        del self._inbound[peer]
                    else:
                        self._inbound[peer] = count - 1
        super().release_stream(peer_id, direction)

    def stats(self) -> dict[str, int]:
        """Counts for the node's report: what is held now and what was refused."""
        return {"connections": self._current_connections, "streams": self._current_streams,
                "inbound_streams": self._inbound_total,
                "refused_connections": self.refused_connections,
                "refused_streams": self.refused_streams}


def resource_stats(host: IHost | None) -> dict[str, int]:
    """``host``'s resource manager's counts (``{}`` where it runs another manager, or none)."""
    network = getattr(host, "get_network", lambda: None)()
    manager = getattr(network, "_resource_manager", None)
    return manager.stats() if isinstance(manager, NodeResourceManager) else {}


def install(host: IHost, manager: NodeResourceManager) -> None:
    """Put ``manager`` on ``host``'s swarm without py-libp2p's stream semaphore (a stream over the
    limit is then refused at once, not queued)."""
    host.get_network().set_resource_manager(  # type: ignore[attr-defined]
        manager, enable_stream_semaphore=False)
