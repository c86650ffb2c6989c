"""Circuit relay v2 inside a gossipfl host (py-libp2p 0.8.1's ``libp2p.relay.circuit_v2``).

What each node runs, by its ``[relay]`` section (``gossipfl/relay_config.py``):

* every node: the STOP role (it accepts a connection a relay forwards to it, and upgrades it with
  Noise and yamux end to end: the relay carries ciphertext) and a dialer for relayed addresses
  (``/ip4/R/tcp/P/p2p/RELAY/p2p-circuit/p2p/PEER``). py-libp2p's swarm skips such addresses (it
  has no relay transport), so :class:`Circuits` dials them itself and the swarm then holds the
  connection like any other: streams to that peer ride it.
* ``serve = true``: the HOP role, with the configured limits (reservations, circuits per peer,
  bytes and seconds per circuit), and a count of the bytes it relayed.
* ``hole_punch = true``: DCUtR beside (:class:`HolePunch`), which upgrades a relayed link to a
  direct one where both NATs allow it.
* ``reachable = "private"``: a reservation on each relay it can reach at start (``use``, else the
  bootstrap list's nodes; one that does not relay refuses and is skipped), kept afterwards (the
  link checked every ``check_seconds``, re-reserved when lost); the node announces only the
  relayed addresses, which its liveness stamp signs, so members dial it there.

Connections the node must keep (to its relays; on a relay, of the peers holding a reservation:
the relay reaches them over it) are left out of what the idle reaper sees.

The pure helpers (address building and splitting, limits, link kinds) need no network.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2.config import RelayConfig as Libp2pRelayConfig
from libp2p.relay.circuit_v2.config import RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.tools.anyio_service import background_trio_service

from gossipfl.relay_config import RelayConfig

log = logging.getLogger("gossipfl.relay")

CIRCUIT = "p2p-circuit"
RESERVE_TIMEOUT = 15.0  # seconds for one reservation (connect, stream, answer)
DIAL_TIMEOUT = 20.0  # seconds for one relayed dial (the caller's deadline may be shorter)
KEPT_ADDR_SECONDS = 3600  # a peer's direct addresses, kept when its relayed ones are dropped


class CircuitError(ConnectionError):
    """A private node that could not reserve a slot on any relay, or a relayed dial that
    failed through every relay named."""


class LinkKind(enum.Enum):
    """How a stream's connection was made."""

    DIRECT = "direct"
    RELAYED = "relayed"


# -- pure helpers ---------------------------------------------------------------------------------

def is_circuit(addr: str) -> bool:
    """Whether ``addr`` is a relayed address (has a ``/p2p-circuit`` part)."""
    return f"/{CIRCUIT}" in addr


def circuit_addr(relay_addr: str, peer_id: str) -> str:
    """The relayed address of ``peer_id`` through the relay at ``relay_addr``
    (``/ip4/IP/tcp/PORT/p2p/RELAY``)."""
    return f"{relay_addr.rstrip('/')}/{CIRCUIT}/p2p/{peer_id}"


def circuit_relay(addr: str) -> str | None:
    """The relay's peer id in a relayed address (None if it is not one, or names none)."""
    if not is_circuit(addr):
        return None
    head = addr.split(f"/{CIRCUIT}", 1)[0]
    parts = head.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "p2p":
            return parts[i + 1] or None
    return None


def split_addrs(addrs: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(direct addresses, relayed addresses), each in the order given."""
    addrs = tuple(addrs)
    return (tuple(a for a in addrs if not is_circuit(a)), tuple(a for a in addrs if is_circuit(a)))


def usable_circuits(addrs: Iterable[str], own_id: str) -> tuple[str, ...]:
    """The relayed addresses this node can dial: not through itself (a relay reaches the peers
    that reserved on it over their own connection to it)."""
    return tuple(a for a in addrs if is_circuit(a) and circuit_relay(a) not in (None, own_id))


def circuit_order(circuits: Iterable[str], live_relays: Iterable[str],
                  failing: Mapping[str, int] | None = None) -> list[str]:
    """The relayed addresses to try, in order: through relays whose dials failed fewer times
    in a row (``failing``: relay peer id → failures since its last success) first; among
    those, through a relay this node holds an open connection to first; else in the order
    given.

    A relay that died is found out only when dialled, and py-libp2p's swarm retries a refused
    dial with back-off, for longer than a round's deadline: with the dead relay first in every
    peer's announcement, a dial would never reach the next relay in time. A relay that tampers
    or drops stays connected: its circuits are made, then die in Noise's handshake or in
    silence, so it goes last once a dial through it failed."""
    live = set(live_relays)
    failing = failing or {}
    return sorted(circuits, key=lambda a: (failing.get(circuit_relay(a) or "", 0),
                                           circuit_relay(a) not in live))


def announced(listen: Sequence[str], relayed: Sequence[str], private: bool,
              with_listen: bool = False) -> list[str]:
    """The addresses a node signs and announces: a private node's relayed ones only (its listen
    addresses cannot be dialled from outside its network) or, ``with_listen``, its listen
    addresses (for peers on its LAN) and then the relayed ones; else where it listens."""
    if not private:
        return list(listen)
    return [*listen, *relayed] if with_listen else list(relayed)


def relay_limits(config: RelayConfig) -> RelayLimits:
    """py-libp2p's limits for the HOP role, from ``[relay]``."""
    return RelayLimits(duration=config.circuit_seconds, data=config.circuit_bytes,
                       max_circuit_conns=config.circuits_per_peer,
                       max_reservations=config.reservations,
                       reservation_ttl=config.reservation_seconds)


def link_kind(transport_addrs: Iterable[Any]) -> LinkKind:
    """A connection's kind from its transport addresses (a relayed one names /p2p-circuit)."""
    return (LinkKind.RELAYED if any(is_circuit(str(a)) for a in transport_addrs)
            else LinkKind.DIRECT)


def stream_link_kind(stream: Any) -> LinkKind:
    """The kind of the connection a libp2p stream rides (direct when it cannot tell)."""
    try:
        return link_kind(stream.muxed_conn.get_transport_addresses())
    except Exception:
        return LinkKind.DIRECT


def _relays_of(conn: Any) -> set[str | None]:
    """The relays a connection runs through (None: relayed through one it does not name);
    empty for a direct connection."""
    try:
        addrs = [str(a) for a in conn.muxed_conn.get_transport_addresses()]
    except Exception:
        return set()
    return {circuit_relay(a) for a in addrs if is_circuit(a)}


def carrier_peer(conn: Any) -> str | None:
    """The peer at the far end of the stream a relayed connection rides (yamux, secure session,
    Noise, raw connection, the relay's stream): its relay either way (an accepted circuit's
    address names this host as relay), or None when it cannot tell."""
    layer = getattr(getattr(conn, "muxed_conn", None), "secured_conn", None)
    for _ in range(6):
        if layer is None:
            return None
        carrier = getattr(getattr(layer, "muxed_conn", None), "peer_id", None)
        if carrier is not None:
            return str(carrier)
        layer = next((getattr(layer, name) for name in ("conn", "stream")
                      if getattr(layer, name, None) is not None), None)
    return None


# -- the running part ------------------------------------------------------------------------------

class CountingRelay(CircuitV2Protocol):
    """py-libp2p's relay protocol, counting the bytes it relays (both ways, all circuits), with
    one circuit's end confined to that circuit.

    py-libp2p 0.8.1 keeps its open circuits by peer id (``_active_relays``), and each relaying
    task, when it ends, closes the streams filed under its peer's id: those of the latest
    circuit to that peer, often another one. So when one of two circuits to a private member
    ended (its peer left, or a connection was reaped as idle), the other died with it, and a new
    circuit made at once could be closed by the old one's clean-up (both seen on loopback).
    :meth:`_relay_data` here is py-libp2p's loop (duration and data limits, write timeout) whose
    end closes only its own circuit's two streams and drops only that circuit's entries.
    """

    relayed_bytes = 0

    async def _read_stream_with_retry(self, stream: INetStream,
                                      max_retries: int = 3) -> bytes | None:
        data = await super()._read_stream_with_retry(stream, max_retries)
        if data:
            self.relayed_bytes += len(data)
        return data

    async def _relay_data(self, src_stream: INetStream, dst_stream: INetStream, peer_id: ID,
                          deadline: float | None = None,
                          circuit_data_limit: list[int] | None = None) -> None:
        try:
            while True:
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("relay: circuit of %s past its duration limit: reset", peer_id)
                    await src_stream.reset()
                    await dst_stream.reset()
                    return
                data = await self._read_stream_with_retry(src_stream)
                if not data:
                    break
                if circuit_data_limit is not None:
                    if len(data) > circuit_data_limit[0]:
                        log.warning("relay: circuit of %s past its data limit: reset", peer_id)
                        await src_stream.reset()
                        await dst_stream.reset()
                        return
                    circuit_data_limit[0] -= len(data)
                with trio.fail_after(self.write_timeout):
                    await dst_stream.write(data)
        except Exception as error:  # a stream reset or closed, a write timed out: it ends
            log.debug("relay: circuit of %s ends: %s: %s", peer_id, type(error).__name__, error)
        finally:
            for key, (first, second) in list(self._active_relays.items()):
                if first in (src_stream, dst_stream) or second in (src_stream, dst_stream):
                    del self._active_relays[key]
            with trio.move_on_after(self.close_timeout):
                await self._close_stream(src_stream)
                await self._close_stream(dst_stream)


class HolePunch(DCUtRProtocol):
    """py-libp2p's DCUtR, noting the outcome of each upgrade it started (peer id → whether a
    direct connection came of it; its auto-drive loop starts them, every 2 s, towards each
    peer it holds a relayed connection with, at most 3 attempts a peer)."""

    def __init__(self, host: IHost, **timeouts: Any) -> None:
        super().__init__(host, **timeouts)
        self.outcomes: dict[str, bool] = {}

    async def initiate_hole_punch(self, peer_id: ID) -> bool:
        ok = await super().initiate_hole_punch(peer_id)
        self.outcomes[str(peer_id)] = ok or self.outcomes.get(str(peer_id), False)
        if ok:
            log.info("direct link to %s (hole punched or dialled)", peer_id)
        return ok


class Circuits:
    """A host's relay roles: HOP when serving, STOP always, a relayed dialer, and (private)
    reservations kept on its relays."""

    def __init__(self, host: IHost, config: RelayConfig,
                 relays: Sequence[tuple[str, str]] = (), *,
                 relay_protocol: type[CountingRelay] = CountingRelay) -> None:
        """``relays``: (peer id, address) of the relays a private node reserves on;
        ``relay_protocol``: the relay roles' class (a test's faulty relay)."""
        self.host = host
        self.config = config
        self.own_id = str(host.get_id())
        self.relays = [(peer, addr) for peer, addr in relays if peer != self.own_id]
        self.protocol = relay_protocol(host, limits=relay_limits(config), allow_hop=config.serve)
        self.transport = CircuitV2Transport(
            host, self.protocol, Libp2pRelayConfig(roles=RelayRole.STOP,
                                                   limits=relay_limits(config)))
        self.dcutr = HolePunch(host, read_timeout=10, write_timeout=10, dial_timeout=5) \
            if config.hole_punch else None
        self.reserved: list[str] = []  # relay peer ids holding our reservation
        self.reservations_made = 0
        self.dials = {"ok": 0, "failed": 0}
        self.relay_failures: dict[str, int] = {}  # relay → dials through it that failed
        self._failing: dict[str, int] = {}  # relay → failures since its last good dial
        self.silent_links = 0  # relayed connections closed for silence (drop_silent)
        self._dialling: dict[str, trio.Lock] = {}

    @contextlib.asynccontextmanager
    async def running(self, private: bool | None = None) -> AsyncIterator[list[str]]:
        """Run the roles until the block ends (``private``: as found, else as configured);
        yields this node's relayed addresses (none for a public node). CircuitError when a
        private node reserves on no relay."""
        async with background_trio_service(self.protocol), trio.open_nursery() as nursery:
            await self.protocol.event_started.wait()
            if self.dcutr is not None:
                await nursery.start(self._run_dcutr)
            relayed: list[str] = []
            if self.config.private if private is None else private:
                relayed = await self._reserve_all(nursery)
                nursery.start_soon(self._keep_reserved, nursery)
            try:
                yield relayed
            finally:
                nursery.cancel_scope.cancel()

    async def _run_dcutr(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        assert self.dcutr is not None
        async with background_trio_service(self.dcutr):
            await self.dcutr.event_started.wait()
            task_status.started()
            await trio.sleep_forever()

    async def _reserve_all(self, nursery: trio.Nursery) -> list[str]:
        if not self.relays:
            raise CircuitError("relay.reachable = \"private\" but no relay to reserve on")
        relayed = []
        for peer, addr in self.relays:
            if await self._reserve(peer, addr, nursery):
                self.reserved.append(peer)
                relayed.append(circuit_addr(addr, self.own_id))
        if not relayed:
            raise CircuitError(
                f"relay.reachable = \"private\": no relay accepted a reservation (tried "
                f"{', '.join(a for _, a in self.relays)}); a relay needs [relay] serve = true "
                f"and must be reachable from here")
        log.info("reserved on %d relay(s); announcing %s", len(relayed), ", ".join(relayed))
        return relayed

    async def _reserve(self, peer: str, addr: str, nursery: trio.Nursery) -> bool:
        pid = ID.from_base58(peer)
        maddr = multiaddr.Multiaddr(addr).decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))
        stream = None
        ok: bool | None
        try:
            with trio.fail_after(RESERVE_TIMEOUT):
                await self.host.connect(PeerInfo(pid, [maddr]))
                stream = await self.host.new_stream(pid, [HOP_PROTOCOL_ID])
                ok = await self.transport.reserve(stream, pid, nursery)
        except Exception as error:
            log.warning("no reservation on relay %s: %s: %s", addr, type(error).__name__, error)
            ok = None
        if stream is not None:
            with trio.move_on_after(2), contextlib.suppress(Exception):
                await stream.close()
        if ok:
            self.reservations_made += 1
        elif ok is not None:
            log.warning("relay %s refused a reservation", addr)
        return bool(ok)

    async def _keep_reserved(self, nursery: trio.Nursery) -> None:
        """Every ``check_seconds``: re-link to a relay we lost (our reservation lives as long
        as our connection to it) and reserve again."""
        addr_of = dict(self.relays)
        while True:
            await trio.sleep(self.config.check_seconds)
            for peer in self.reserved:
                connections = self.host.get_network().get_connections(ID.from_base58(peer))
                if not connections:
                    log.info("lost the link to relay %s: reserving again", peer)
                    await self.drop_relayed_through(peer)
                    await self._reserve(peer, addr_of[peer], nursery)

    async def drop_relayed_through(self, relay: str) -> int:
        """Close every relayed connection through ``relay`` (or through a relay it cannot
        tell); returns how many. py-libp2p 0.8.1 leaves a relayed connection open when its
        relay dies (seen with a relay killed mid-run): streams on it then hang until their
        deadline, and the swarm never dials the peer again while it holds it. Closed, the next
        stream to that peer dials afresh, through a relay that is still there."""
        dropped = 0
        for conns in list(self.host.get_network().get_connections_map().values()):
            for conn in list(conns):
                if relay not in _relays_of(conn) and None not in _relays_of(conn):
                    continue
                await self._close(conn)
                dropped += 1
        if dropped:
            log.info("closed %d relayed connection(s) through lost relay %s", dropped, relay)
        return dropped

    def relayed_to(self, pid: ID) -> bool:
        """Whether a connection to ``pid`` runs through a relay."""
        return any(_relays_of(c) for c in self.host.get_network().get_connections(pid))

    async def drop_silent(self, pid: ID) -> int:
        """Close the relayed connections to ``pid`` (their relay forwards nothing: see
        :meth:`gossipfl.gossip.peers.PeerNet._new_stream`) and count a failure against each
        relay they ran through, so the next dial tries the others first; returns how many."""
        closed = 0
        named: set[str] = set()
        for conn in list(self.host.get_network().get_connections(pid)):
            relays = _relays_of(conn)
            if not relays:
                continue
            relay = carrier_peer(conn) or next(iter(relays)) or "?"
            self._failed(relay)
            named.add(relay)
            await self._close(conn)
            closed += 1
        self.silent_links += closed
        log.warning("closed %d silent relayed connection(s) to %s through %s", closed, pid,
                    ", ".join(sorted(named)))
        return closed

    async def _close(self, conn: Any) -> None:
        """Close ``conn`` and drop it from the swarm's records."""
        with trio.move_on_after(2), contextlib.suppress(Exception):
            await conn.close()
        remove = getattr(self.host.get_network(), "remove_conn", None)
        if remove is not None:
            with contextlib.suppress(Exception):
                remove(conn)

    def _failed(self, relay: str) -> None:
        self.relay_failures[relay] = self.relay_failures.get(relay, 0) + 1
        self._failing[relay] = self._failing.get(relay, 0) + 1

    def keep(self, peer: str, certified: bool = True) -> bool:
        """Whether the connection with ``peer`` must stay open: a relay of ours (named in our
        config), or, on a relay, a ``certified`` peer holding a reservation (a stranger's is
        reaped like any stranger's connection, and its reservation lapses with it)."""
        if peer in self.reserved:
            return True
        if not (self.config.serve and certified):
            return False
        try:
            return self.protocol.resource_manager.get_reservation(ID.from_base58(peer)) \
                is not None
        except Exception:
            return False

    def _connected(self, pid: ID) -> bool:
        """Whether a connection to ``pid`` is open (a closed one the swarm still files, e.g.
        through a relay that died, does not count)."""
        return any(not getattr(c, "is_closed", False)
                   for c in self.host.get_network().get_connections(pid))

    async def dial(self, peer_id: str, circuits: Sequence[str]) -> None:
        """Connect to ``peer_id`` through the first relay that forwards (no-op when
        connected). CircuitError when none does."""
        pid = ID.from_base58(peer_id)
        lock = self._dialling.setdefault(peer_id, trio.Lock())
        async with lock:  # two channels opened at once make one circuit, not two
            if self._connected(pid):
                return
            errors = []
            usable = usable_circuits(circuits, self.own_id)
            live = {r for r in filter(None, map(circuit_relay, usable))
                    if self._connected(ID.from_base58(r))}
            for addr in circuit_order(usable, live, self._failing):
                relay = circuit_relay(addr) or ""
                # each attempt through its own relay: py-libp2p's transport would first retry
                # the circuit an earlier attempt filed (a tampering relay's, every time)
                self._forget_circuits(pid)
                try:
                    with trio.fail_after(DIAL_TIMEOUT):
                        await self.transport.dial(multiaddr.Multiaddr(addr))
                    self.dials["ok"] += 1
                    self._failing.pop(relay, None)
                    log.info("linked to %s through %s", peer_id, addr)
                    return
                except Exception as error:
                    errors.append(f"{addr}: {type(error).__name__}: {error}")
                    self._failed(relay)
            self.dials["failed"] += 1
            raise CircuitError(f"no relay reached {peer_id}: " + ("; ".join(errors)
                                                                  or "no usable relayed address"))

    def _forget_circuits(self, pid: ID) -> None:
        """Drop the relayed addresses py-libp2p's transport filed for ``pid`` after an earlier
        dial: it tries them before the relay it is asked to use, so a dead relay's would come
        first again (and take the dial's whole deadline)."""
        peerstore = self.host.get_peerstore()
        try:
            kept = [a for a in peerstore.addrs(pid) if not is_circuit(str(a))]
        except Exception:
            return
        peerstore.clear_addrs(pid)
        if kept:
            peerstore.add_addrs(pid, kept, KEPT_ADDR_SECONDS)

    def summary(self) -> dict[str, Any]:
        """What the relay roles did (for the node's relay.json)."""
        found: dict[str, Any] = {
            "reachable": self.config.reachable.value, "serve": self.config.serve,
            "reserved_on": list(self.reserved), "reservations_made": self.reservations_made,
            "relayed_dials": dict(self.dials), "relay_failures": dict(self.relay_failures),
            "silent_links_closed": self.silent_links,
        }
        if self.dcutr is not None:
            found["hole_punch"] = dict(self.dcutr.outcomes)
        if self.config.serve:
            manager = self.protocol.resource_manager
            found["reservations_held"] = len(getattr(manager, "_reservations", {}))
            found["relayed_bytes"] = self.protocol.relayed_bytes
        return found


__all__ = ["CIRCUIT", "CircuitError", "Circuits", "CountingRelay", "HolePunch", "LinkKind",
           "announced", "circuit_addr", "circuit_order", "circuit_relay", "is_circuit",
           "link_kind", "relay_limits", "split_addrs", "stream_link_kind", "usable_circuits"]
