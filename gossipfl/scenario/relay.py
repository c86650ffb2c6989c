"""A fault-injecting TCP relay on loopback, and a fleet of them run from synchronous code.

A scenario routes the links it wants to disturb through relays: a node dials the relay's port
instead of its peer's, and the relay forwards the bytes (libp2p's Noise handshake runs end to end
through it, so a relay sees only ciphertext). Each relay applies its current :class:`LinkFaults`:

* ``latency`` and ``jitter``: every chunk read from one side is written to the other at
  ``arrival + max(0, latency + U(-jitter, +jitter))``, but never before the chunk read before it
  (TCP keeps order; see :func:`delivery_times`). ``latency = 0.02, jitter = 0.01`` is 20 ± 10 ms.
* ``reset_rate``: each connection is reset (RST on both sides: ``SO_LINGER`` 0 then close) after
  an exponentially distributed time with this rate (per second), re-drawn when the faults change.
* ``blackhole``: connections are accepted and kept, but everything read is dropped.
* ``stall``: nothing moves either way, and new connections wait before they are forwarded, until
  the fault is lifted; then everything held goes through intact (a path that drops packets: TCP
  retransmits, so a connection that neither end gave up on resumes where it stopped).
* ``cut``: every open connection is reset, and new ones are accepted and reset at once.

Relays stay on 127.0.0.0/8 and hold at most ``max_connections`` connections and ``queue_bytes``
in flight per direction (a full queue stops its pump reading: a slow reader pushes back, as TCP).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import random
import socket
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import trio

log = logging.getLogger("gossipfl.relay")

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
CHUNK_BYTES = 64 * 1024
MAX_DELAY_SECONDS = 60.0
CONNECT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 1.0
CONTROL_TIMEOUT = 10.0
ACCEPT_BACKOFF = 0.1


def require_loopback(host: str, what: str) -> str:
    """``host`` as a canonical IPv4 literal, or ValueError unless it lies in 127.0.0.0/8."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{what} {host!r} is not an IP address: relays use 127.0.0.0/8 "
                         "literals only") from None
    if address.version != 4 or address not in LOOPBACK:
        raise ValueError(f"{what} {host} is outside 127.0.0.0/8: relays never leave loopback")
    return str(address)


@dataclass(frozen=True)
class LinkFaults:
    """What a relay does to the traffic it carries (seconds, per-second rates, switches)."""

    latency: float = 0.0
    jitter: float = 0.0  # each chunk's delay is latency + U(-jitter, +jitter), floored at 0
    reset_rate: float = 0.0  # per connection, per second: Poisson resets
    blackhole: bool = False
    cut: bool = False
    stall: bool = False

    def __post_init__(self) -> None:
        for name in ("latency", "jitter", "reset_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0")
        if self.latency + self.jitter > MAX_DELAY_SECONDS:
            raise ValueError(f"latency + jitter must be at most {MAX_DELAY_SECONDS:.0f} s")
        if not all(isinstance(getattr(self, n), bool) for n in ("blackhole", "cut", "stall")):
            raise ValueError("blackhole, cut and stall must be true or false")


# -- the schedule (pure) -----------------------------------------------------------------------


def next_delivery(arrival: float, latency: float, offset: float, previous: float) -> float:
    """When a chunk that arrived at ``arrival`` goes out: its own delay, and never before the
    chunk before it (delivered at ``previous``)."""
    return max(previous, arrival + max(0.0, latency + offset))


def delivery_times(arrivals: Sequence[float], latency: float, jitters: Sequence[float],
                   previous: float = -math.inf) -> list[float]:
    """Delivery time of each chunk: ``t_k = max(t_{k-1}, a_k + max(0, latency + j_k))``.

    ``jitters`` are the per-chunk offsets already drawn (see :func:`draw_offset`). The result is
    non-decreasing and never earlier than a chunk's arrival plus its own delay.

    >>> delivery_times([0.0, 0.001, 0.5], 0.1, [0.05, -0.05, 0.0])
    [0.15000000000000002, 0.15000000000000002, 0.6]
    """
    if len(arrivals) != len(jitters):
        raise ValueError("one jitter offset per arrival")
    times = []
    for arrival, offset in zip(arrivals, jitters, strict=True):
        previous = next_delivery(arrival, latency, offset, previous)
        times.append(previous)
    return times


def draw_offset(rng: random.Random, jitter: float) -> float:
    """One chunk's jitter offset, uniform in [-jitter, +jitter]."""
    return rng.uniform(-jitter, jitter) if jitter > 0 else 0.0


# -- one relay ---------------------------------------------------------------------------------


@dataclass
class RelayStats:
    """Counters of one relay (bytes are payload bytes forwarded, not TCP overhead)."""

    accepted: int = 0  # connections forwarded to the target
    refused: int = 0  # accepted and reset at once: cut, or over the connection cap
    failed: int = 0  # the target could not be reached
    resets: int = 0  # forwarded connections reset by a fault (reset_rate or cut)
    bytes_to_target: int = 0
    bytes_from_target: int = 0
    bytes_dropped: int = 0  # blackholed


def _abort_stream(stream: trio.SocketStream) -> None:
    """Make the next close send RST rather than FIN (best effort)."""
    with contextlib.suppress(OSError, trio.ClosedResourceError):
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def _close_streams(streams: Iterable[trio.SocketStream], *, abort: bool) -> None:
    with trio.move_on_after(CLOSE_TIMEOUT) as scope:
        scope.shield = True  # a relay being cancelled still closes its sockets
        for stream in streams:
            if abort:
                _abort_stream(stream)
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                await stream.aclose()


class _Direction:
    """One way of a connection: chunks queued with their delivery time, and the queue's size."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queued = 0
        self.space = trio.Event()


class _Connection:
    def __init__(self, relay: Relay, client: trio.SocketStream,
                 server: trio.SocketStream) -> None:
        self.relay = relay
        self.client = client
        self.server = server
        self.scope = trio.CancelScope()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True
        self.scope.cancel()

    async def run(self) -> None:
        try:
            with self.scope:
                async with trio.open_nursery() as outer:
                    outer.start_soon(self._reset_clock)
                    async with trio.open_nursery() as pumps:
                        pumps.start_soon(self._pump, self.client, self.server,
                                         _Direction("bytes_to_target"))
                        pumps.start_soon(self._pump, self.server, self.client,
                                         _Direction("bytes_from_target"))
                    outer.cancel_scope.cancel()  # both ways ended cleanly
        finally:
            await _close_streams((self.client, self.server), abort=self.aborted)

    async def _pump(self, source: trio.SocketStream, dest: trio.SocketStream,
                    way: _Direction) -> None:
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._deliver, receive, dest, way)
            await self._read(source, send, way)

    def _broken(self, way: _Direction, error: Exception) -> None:
        log.debug("relay %s: %s broke: %s", self.relay.name, way.name, error)
        self.abort()  # one side reset or vanished: pass the reset on to the other

    async def _read(self, source: trio.SocketStream,
                    send: trio.MemorySendChannel[tuple[float, bytes]], way: _Direction) -> None:
        relay = self.relay
        previous = -math.inf
        # a BrokenResourceError from ``send``: the deliverer's end broke, and it has left
        with send, contextlib.suppress(trio.BrokenResourceError):
            while True:
                while way.queued >= relay.queue_bytes:  # backpressure: stop reading
                    way.space = trio.Event()
                    await way.space.wait()
                await relay.unstalled()
                try:
                    data = await source.receive_some(CHUNK_BYTES)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                    self._broken(way, error)
                    return
                if not data:
                    return  # EOF: the deliverer flushes what is queued, then passes it on
                faults = relay.faults
                if faults.blackhole:
                    relay.stats.bytes_dropped += len(data)
                    continue
                offset = draw_offset(relay.rng, faults.jitter)
                previous = next_delivery(trio.current_time(), faults.latency, offset, previous)
                way.queued += len(data)
                send.send_nowait((previous, data))

    async def _deliver(self, receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
                       dest: trio.SocketStream, way: _Direction) -> None:
        relay = self.relay
        try:
            async with receive:
                async for at, data in receive:
                    await trio.sleep_until(at)
                    await relay.unstalled()
                    way.queued -= len(data)
                    way.space.set()
                    if relay.faults.blackhole:
                        relay.stats.bytes_dropped += len(data)
                        continue
                    await dest.send_all(data)
                    setattr(relay.stats, way.name, getattr(relay.stats, way.name) + len(data))
            await dest.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
            self._broken(way, error)

    async def _reset_clock(self) -> None:
        """Reset this connection at the fault's rate (memoryless: re-drawn on every change)."""
        relay = self.relay
        while True:
            changed = relay.changed
            rate = relay.faults.reset_rate
            if rate <= 0:
                await changed.wait()
                continue
            with trio.move_on_after(relay.rng.expovariate(rate)) as wait:
                await changed.wait()
            if wait.cancelled_caught:
                relay.stats.resets += 1
                log.debug("relay %s: resetting a connection (reset_rate %.3g/s)", relay.name,
                          rate)
                self.abort()
                return


class Relay:
    """Forwards TCP connections from ``listen_host:listen_port`` to ``target_host:target_port``.

    Run it with ``port = await nursery.start(relay.run)``; change its faults (from the trio thread
    that runs it) with :meth:`set_faults`; stop it with :meth:`close` or by cancelling.
    """

    def __init__(self, name: str, target_port: int, *, target_host: str = "127.0.0.1",
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 faults: LinkFaults | None = None, max_connections: int = 64,
                 queue_bytes: int = 4 * 2**20, seed: int | str = 0) -> None:
        self.name = name
        self.target_host = require_loopback(target_host, "relay target")
        self.listen_host = require_loopback(listen_host, "relay listen address")
        if not 0 < target_port < 65536 or not 0 <= listen_port < 65536:
            raise ValueError("ports must be in 1..65535 (listen_port 0: any free port)")
        if max_connections < 1 or queue_bytes < CHUNK_BYTES:
            raise ValueError(f"max_connections must be >= 1 and queue_bytes >= {CHUNK_BYTES}")
        self.target_port = target_port
        self.listen_port = listen_port
        self.max_connections = max_connections
        self.queue_bytes = queue_bytes
        self.faults = faults or LinkFaults()
        self.rng = random.Random(f"{seed}:{name}")
        self.stats = RelayStats()
        self.port: int | None = None
        self.changed = trio.Event()
        self._connections: set[_Connection] = set()
        self._waiting = 0  # accepted while stalled, not forwarded yet
        self._scope = trio.CancelScope()

    async def unstalled(self) -> None:
        """Return once the relay is not stalled (at once when it is not)."""
        while self.faults.stall:
            await self.changed.wait()

    def set_faults(self, faults: LinkFaults) -> None:
        """Apply ``faults`` now (call from the trio thread running the relay)."""
        self.faults = faults
        if faults.cut:
            for connection in list(self._connections):
                if not connection.aborted:
                    self.stats.resets += 1
                    connection.abort()
        changed, self.changed = self.changed, trio.Event()
        changed.set()

    def snapshot(self) -> dict[str, Any]:
        return {**asdict(self.stats), "active": len(self._connections), "port": self.port,
                "target_port": self.target_port, "faults": asdict(self.faults)}

    def close(self) -> None:
        self._scope.cancel()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with self._scope:
            listeners = await trio.open_tcp_listeners(self.listen_port, host=self.listen_host)
            try:
                self.port = int(listeners[0].socket.getsockname()[1])
                log.debug("relay %s: 127.0.0.1:%d -> %s:%d", self.name, self.port,
                          self.target_host, self.target_port)
                task_status.started(self.port)
                async with trio.open_nursery() as nursery:
                    while True:
                        try:
                            stream = await listeners[0].accept()
                        except OSError as error:  # out of file descriptors, say: back off
                            log.warning("relay %s: accept failed: %s", self.name, error)
                            await trio.sleep(ACCEPT_BACKOFF)
                            continue
                        nursery.start_soon(self._handle, stream)
            finally:
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()

    async def _handle(self, client: trio.SocketStream) -> None:
        if self.faults.cut or len(self._connections) + self._waiting >= self.max_connections:
            self.stats.refused += 1
            await _close_streams((client,), abort=True)
            return
        if self.faults.stall:  # the "SYN" is held: forward once the stall is lifted
            self._waiting += 1
            try:
                await self.unstalled()
            finally:
                self._waiting -= 1
            if self.faults.cut:
                self.stats.refused += 1
                await _close_streams((client,), abort=True)
                return
        server = None
        with trio.move_on_after(CONNECT_TIMEOUT):
            try:
                server = await trio.open_tcp_stream(self.target_host, self.target_port)
            except OSError as error:
                log.debug("relay %s: target unreachable: %s", self.name, error)
        if server is None or self.faults.cut:
            if server is None:
                self.stats.failed += 1
            else:
                self.stats.refused += 1
            await _close_streams([s for s in (client, server) if s is not None], abort=True)
            return
        self.stats.accepted += 1
        connection = _Connection(self, client, server)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)


# -- a fleet, controlled from synchronous code -------------------------------------------------


class RelayFleet:
    """Relays run by one ``trio.run`` in a background thread, driven from synchronous code.

    >>> fleet = RelayFleet(seed=1)
    >>> fleet.start()
    >>> port = fleet.add("0->1", target_port=4001)  # dial 127.0.0.1:port to reach 4001
    >>> fleet.set_faults(["0->1"], LinkFaults(cut=True))
    >>> fleet.stats()["0->1"]["accepted"]
    0
    >>> fleet.close()
    """

    def __init__(self, *, seed: int = 0, max_connections: int = 64,
                 queue_bytes: int = 4 * 2**20) -> None:
        self.seed = seed
        self.max_connections = max_connections
        self.queue_bytes = queue_bytes
        self._relays: dict[str, Relay] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> RelayFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, timeout: float = CONTROL_TIMEOUT) -> None:
        if self._thread is not None:
            raise RuntimeError("the relay fleet is already started")
        self._thread = threading.Thread(target=self._thread_main, name="relay-fleet",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._token is None:
            raise RuntimeError(f"the relay fleet did not start: {self._error!r}")

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as error:  # reported by start() or close()
            self._error = error
            log.error("relay fleet stopped: %r", error)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _call(self, function: Any, *args: Any) -> Any:
        if self._token is None or self._thread is None or not self._thread.is_alive():
            raise RuntimeError(f"the relay fleet is not running ({self._error!r})")
        return trio.from_thread.run_sync(function, *args, trio_token=self._token)

    def add(self, name: str, target_port: int, faults: LinkFaults | None = None, *,
            target_host: str = "127.0.0.1") -> int:
        """Start relay ``name`` towards ``target_host:target_port``; returns its listen port."""
        relay = Relay(name, target_port, target_host=target_host, faults=faults,
                      max_connections=self.max_connections, queue_bytes=self.queue_bytes,
                      seed=self.seed)

        async def start() -> int:
            assert self._nursery is not None
            if name in self._relays:
                raise ValueError(f"relay {name!r} exists already")
            with trio.fail_after(CONTROL_TIMEOUT):
                port = await self._nursery.start(relay.run)
            self._relays[name] = relay
            return int(port)

        if self._token is None:
            raise RuntimeError("start the relay fleet before adding relays")
        return int(trio.from_thread.run(start, trio_token=self._token))

    def set_faults(self, names: Iterable[str], faults: LinkFaults) -> None:
        """Give every named relay ``faults`` (replacing what it had)."""
        names = list(names)

        def apply() -> None:
            unknown = [n for n in names if n not in self._relays]
            if unknown:
                raise KeyError(f"no relay named {', '.join(unknown)}")
            for name in names:
                self._relays[name].set_faults(faults)

        self._call(apply)

    def faults(self, name: str) -> LinkFaults:
        return self._call(lambda: self._relays[name].faults)

    def port(self, name: str) -> int:
        return self._call(lambda: self._relays[name].port)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Every relay's counters, faults and ports, by name."""
        return self._call(lambda: {n: r.snapshot() for n, r in self._relays.items()})

    def close(self, timeout: float = CONTROL_TIMEOUT) -> None:
        """Stop every relay (their connections are closed) and the thread; idempotent."""
        thread = self._thread
        if thread is None:
            return
        if thread.is_alive() and self._stop is not None and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        thread.join(timeout)
        if thread.is_alive():
            log.error("the relay fleet did not stop within %.0f s", timeout)


__all__ = ["LinkFaults", "Relay", "RelayFleet", "RelayStats", "delivery_times", "draw_offset",
           "next_delivery", "require_loopback"]
