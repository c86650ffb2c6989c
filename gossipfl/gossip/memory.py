"""An in-memory transport: every node of a federation in one trio process, no sockets.

A :class:`MemoryNetwork` joins the nodes' :class:`MemoryTransport` objects by peer id. A stream
is a pair of byte pipes; what goes through them are the same wire frames the libp2p transport
carries, read by the same :class:`~gossipfl.gossip.peers.Channel` (frame caps, the in-flight
budget, the members-only read policy), so the node's code does not know which transport it has.

Faults are the network's, injected where a real network would show them:

* **kill** (:meth:`MemoryNetwork.kill`): the peer is unreachable and its streams are reset, as
  when its process dies; :meth:`MemoryNetwork.revive` makes it reachable again (a restart).
* **partition** (:meth:`MemoryNetwork.cut`, :meth:`MemoryNetwork.partition`): streams across
  the cut are reset and new ones refused until :meth:`MemoryNetwork.restore`; a *silent* cut
  refuses nothing and holds every write (a path that drops packets: only timeouts tell).
* **delay** (:class:`Link` ``latency``, ``jitter``): each write waits (virtual seconds under
  ``MockClock``).
* **drop** (:class:`Link` ``reset_rate``): streams are reset as a Poisson process (a lost
  connection: a reliable stream never loses a frame silently), drawn from the network's seeded
  generator.

The network counts what happens on each ordered pair of peers (:class:`LinkEvent`: streams
opened, opens refused, streams reset by a fault), as a run's relays count connections
(:meth:`MemoryNetwork.totals`).

Nothing here reads a wall clock: under ``trio.testing.MockClock`` a run is deterministic.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import trio

from gossipfl.gossip.peers import Channel, ReadPolicy, Traffic
from gossipfl.gossip.transport import Handler

log = logging.getLogger(__name__)


class LinkSpec(Protocol):
    """A scenario's ``[[links]]`` entry, as far as the network reads it."""

    latency: float
    jitter: float
    reset_rate: float

    def pairs(self) -> set[tuple[int, int]]: ...


class ScenarioLinks(Protocol):
    seed: int
    links: Sequence[LinkSpec]

PIPE_CHUNKS = 8  # writes buffered one way before the writer waits for the reader


class LinkEvent(Enum):
    """What the network counts per ordered pair of peers (opener or local end first)."""

    ACCEPTED = "accepted"  # a stream opened
    REFUSED = "refused"  # an open refused (peer down, link cut, not served, not running)
    RESETS = "resets"  # a stream end reset by a fault (kill, cut, a link's reset rate)


class StreamReset(ConnectionResetError):
    """The stream was reset (by either end, or by a fault of the network)."""


class _Pipe:
    """One direction of a stream: whole writes as chunks, read in any sizes."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](PIPE_CHUNKS)
        self.pending = memoryview(b"")


@dataclass(eq=False)
class MemoryStream:
    """One end of an in-memory stream (the :class:`~gossipfl.gossip.framing.ByteStream` a
    Channel reads and writes)."""

    network: MemoryNetwork
    local: str
    remote: str
    incoming: _Pipe
    outgoing: _Pipe
    peer_end: MemoryStream | None = None
    broken: bool = False
    last_write: float = 0.0  # virtual time of its last write (or its opening)

    async def read(self, n: int | None = None) -> bytes:
        if self.broken:
            raise StreamReset(f"stream with {self.remote} reset")
        pipe = self.incoming
        if not pipe.pending:
            try:
                pipe.pending = memoryview(await pipe.receive.receive())
            except trio.EndOfChannel:
                return b""  # the writer closed its side: end of stream
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise StreamReset(f"stream with {self.remote} reset") from None
        size = len(pipe.pending) if n is None else min(n, len(pipe.pending))
        chunk, pipe.pending = pipe.pending[:size], pipe.pending[size:]
        return bytes(chunk)

    async def write(self, data: bytes) -> None:
        if self.broken:
            raise StreamReset(f"stream with {self.remote} reset")
        await self.network.carry(self)
        try:
            await self.outgoing.send.send(bytes(data))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise StreamReset(f"stream with {self.remote} reset") from None

    async def close(self) -> None:
        """End our side (the reader sees the end of the stream after what was written)."""
        await self.outgoing.send.aclose()
        self.network.ended(self)

    async def reset(self) -> None:
        """Break the stream both ways, at once, for both ends."""
        self.network.break_ends([self] if self.peer_end is None else [self, self.peer_end])


@dataclass(frozen=True)
class Link:
    """The faults of one direction of a link: each write waits ``latency ± jitter`` (uniform,
    floored at 0) seconds; resets come as a Poisson process of ``reset_rate`` per second of a
    stream's life (drawn at its writes)."""

    latency: float = 0.0
    jitter: float = 0.0
    reset_rate: float = 0.0


Pair = tuple[str, str]


@dataclass
class MemoryNetwork:
    """Joins in-memory transports by peer id, and injects the faults.

    Args:
        links: The faults of each ordered pair of peers (absent: none).
        rng: Where delays and resets are drawn from (seeded by the caller: runs repeat).
    """

    links: dict[Pair, Link] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    transports: dict[str, MemoryTransport] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    cuts: Counter[Pair] = field(default_factory=Counter)  # pair → partitions cutting it
    stalls: Counter[Pair] = field(default_factory=Counter)  # pair → silent partitions
    streams: dict[MemoryStream, None] = field(default_factory=dict)  # an ordered set
    events: Counter[tuple[Pair, LinkEvent]] = field(default_factory=Counter)
    _unstalled: trio.Event = field(default_factory=trio.Event)

    @classmethod
    def for_scenario(cls, scenario: ScenarioLinks, peers: list[str]) -> MemoryNetwork:
        """The network of a scenario: its ``[[links]]`` faults between ``peers`` (by index),
        drawn from a generator seeded by the scenario's seed."""
        links = {(peers[a], peers[b]): Link(link.latency, link.jitter, link.reset_rate)
                 for link in scenario.links for a, b in link.pairs()}
        return cls(links=links, rng=random.Random(scenario.seed * 7907 + 3))

    def attach(self, peer_id: str, traffic: Traffic, policy: ReadPolicy | None = None,
               addrs: tuple[str, ...] = ()) -> MemoryTransport:
        """The transport of the node ``peer_id`` (one per node; a restarted node attaches
        again and replaces its old one)."""
        transport = MemoryTransport(self, peer_id, traffic, policy, list(addrs))
        self.transports[peer_id] = transport
        return transport

    def reachable(self, a: str, b: str) -> bool:
        return a not in self.down and b not in self.down and not self.cuts[(a, b)]

    def count(self, pair: Pair, event: LinkEvent) -> None:
        self.events[(pair, event)] += 1

    def totals(self, pairs: Iterable[Pair] | None = None) -> dict[str, int]:
        """Each :class:`LinkEvent` counted so far over ``pairs`` (every pair by default)."""
        chosen = None if pairs is None else set(pairs)
        total = dict.fromkeys((e.value for e in LinkEvent), 0)
        for (pair, event), n in self.events.items():
            if chosen is None or pair in chosen:
                total[event.value] += n
        return total

    # -- faults ------------------------------------------------------------------------------

    def kill(self, peer_id: str) -> None:
        """``peer_id`` is gone: unreachable, and every stream it had is reset."""
        self.down.add(peer_id)
        self._reset_where(lambda s: peer_id in (s.local, s.remote))

    def revive(self, peer_id: str) -> None:
        self.down.discard(peer_id)

    def cut(self, pairs: Iterable[Pair], *, silent: bool = False) -> None:
        """Cut the links between these ordered pairs: streams across are reset and new ones
        refused; with ``silent``, nothing is refused and nothing moves (writes wait) until
        :meth:`restore`, so only timeouts tell the nodes."""
        pairs = set(pairs)
        (self.stalls if silent else self.cuts).update(pairs)
        if not silent:
            self._reset_where(lambda s: (s.local, s.remote) in pairs)

    def restore(self, pairs: Iterable[Pair]) -> None:
        """Undo one :meth:`cut` of these pairs (a pair another cut holds stays cut)."""
        for pair in set(pairs):
            for table in (self.cuts, self.stalls):
                if table[pair]:
                    table[pair] -= 1
        self._unstalled.set()
        self._unstalled = trio.Event()

    def partition(self, sides: Iterable[Iterable[str]]) -> set[Pair]:
        """Cut every link between different ``sides``; returns the pairs (for restore)."""
        groups = [list(side) for side in sides]
        pairs = {(a, b) for i, g in enumerate(groups) for j, h in enumerate(groups) if i != j
                 for a in g for b in h}
        self.cut(pairs)
        return pairs

    def _reset_where(self, broken: Callable[[MemoryStream], bool]) -> None:
        hit = [s for s in self.streams if broken(s)]
        for stream in hit:
            self.count((stream.local, stream.remote), LinkEvent.RESETS)
        self.break_ends([end for s in hit for end in (s, s.peer_end) if end is not None])

    def break_ends(self, ends: list[MemoryStream]) -> None:
        """Reset these stream ends. Every reading side is closed before any writing side, so
        a reader blocked on one sees a reset, never the clean end of a stream that a closed
        writing side would give it."""
        ends = [e for e in dict.fromkeys(ends) if not e.broken]
        for end in ends:
            end.broken = True
            end.incoming.receive.close()
        for end in ends:
            end.outgoing.send.close()
            self.ended(end)

    # -- streams -----------------------------------------------------------------------------

    async def carry(self, stream: MemoryStream) -> None:
        """The network's part in one write: the link's delay, and the faults on the way."""
        pair = (stream.local, stream.remote)
        link = self.links.get(pair)
        if link is not None and (link.latency or link.jitter):
            delay = link.latency + self.rng.uniform(-link.jitter, link.jitter)
            await trio.sleep(max(0.0, delay))
        while self.stalls[pair] and self.reachable(*pair):
            await self._unstalled.wait()
        if not self.reachable(*pair):
            self.count(pair, LinkEvent.RESETS)
            await stream.reset()
            raise StreamReset(f"{stream.remote} cannot be reached from {stream.local}")
        now = trio.current_time()
        if link is not None and link.reset_rate > 0:
            alive = now - stream.last_write
            if self.rng.random() < 1.0 - math.exp(-link.reset_rate * alive):
                self.count(pair, LinkEvent.RESETS)
                await stream.reset()
                raise StreamReset(f"connection to {stream.remote} lost")
        stream.last_write = now
        await trio.lowlevel.checkpoint()

    def ended(self, stream: MemoryStream) -> None:
        self.streams.pop(stream, None)
        transport = self.transports.get(stream.local)
        if transport is not None:
            transport.forget(stream)

    def pair(self, local: str, remote: str) -> tuple[MemoryStream, MemoryStream]:
        forward, backward = _Pipe(), _Pipe()
        now = trio.current_time()
        mine = MemoryStream(self, local, remote, incoming=backward, outgoing=forward,
                            last_write=now)
        theirs = MemoryStream(self, remote, local, incoming=forward, outgoing=backward,
                              last_write=now)
        mine.peer_end, theirs.peer_end = theirs, mine
        self.streams.update(dict.fromkeys((mine, theirs)))
        return mine, theirs


class MemoryTransport:
    """One node's end of a :class:`MemoryNetwork` (the :class:`Transport` interface)."""

    def __init__(self, network: MemoryNetwork, peer_id: str, traffic: Traffic,
                 policy: ReadPolicy | None, addrs: list[str]) -> None:
        self.network, self.peer_id = network, peer_id
        self.traffic, self.policy = traffic, policy
        self.addrs = addrs or [f"/memory/{peer_id}"]
        self.handlers: dict[str, Handler] = {}
        self.connected: dict[str, dict[MemoryStream, None]] = {}  # peer → ordered set
        self._nursery: trio.Nursery | None = None
        self._context = contextvars.copy_context()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[list[str]]:
        """Serve until the block ends. The handlers of the streams peers open run in this
        nursery, in the context of the task that entered the block (as a libp2p host's run
        under its listener), not in the opener's."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._context = contextvars.copy_context()
            try:
                yield list(self.addrs)
            finally:
                self._nursery = None
                for peer in list(self.connected):
                    await self.disconnect(peer)
                nursery.cancel_scope.cancel()

    def serve(self, protocol: str, handler: Handler) -> None:
        self.handlers[protocol] = handler

    async def open(self, peer_id: str, addrs: tuple[str, ...], protocol: str) -> Channel:
        await trio.lowlevel.checkpoint()
        there = self.network.transports.get(peer_id)
        pair = (self.peer_id, peer_id)
        if there is None or there._nursery is None or self._nursery is None \
                or not self.network.reachable(*pair):
            self.network.count(pair, LinkEvent.REFUSED)
            raise ConnectionRefusedError(f"cannot reach {peer_id}")
        if protocol not in there.handlers:
            self.network.count(pair, LinkEvent.REFUSED)
            raise ConnectionRefusedError(f"{peer_id} does not serve {protocol}")
        self.network.count(pair, LinkEvent.ACCEPTED)
        mine, theirs = self.network.pair(self.peer_id, peer_id)
        self.connected.setdefault(peer_id, {})[mine] = None
        there.connected.setdefault(self.peer_id, {})[theirs] = None
        # the new task copies the context current when it is spawned: the server's
        there._context.run(there._nursery.start_soon, there.handlers[protocol],
                           Channel(theirs, there.traffic, there.policy, remote=self.peer_id))
        return Channel(mine, self.traffic, self.policy, remote=peer_id)

    def forget(self, stream: MemoryStream) -> None:
        streams = self.connected.get(stream.remote)
        if streams is not None:
            streams.pop(stream, None)

    def open_streams(self) -> dict[str, int]:
        return {peer: len(streams) for peer, streams in self.connected.items()}

    async def disconnect(self, peer_id: str) -> None:
        for stream in list(self.connected.pop(peer_id, ())):
            await stream.reset()
        there = self.network.transports.get(peer_id)
        if there is not None and not there.connected.get(self.peer_id):
            there.connected.pop(self.peer_id, None)


__all__ = ["Link", "LinkEvent", "MemoryNetwork", "MemoryStream", "MemoryTransport",
           "StreamReset"]
