"""The fault-injecting relay, on real loopback sockets (timings are lower bounds only)."""

from __future__ import annotations

import contextlib
import itertools
import math
import socket
import threading
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.scenario.relay import (
    CHUNK_BYTES,
    LinkFaults,
    Relay,
    RelayFleet,
    delivery_times,
    next_delivery,
    require_loopback,
)

# -- the schedule ------------------------------------------------------------------------------


def test_delivery_times_small_exact_examples() -> None:
    # no jitter: arrival + latency
    assert delivery_times([0.0, 1.0, 2.0], 0.5, [0.0, 0.0, 0.0]) == [0.5, 1.5, 2.5]
    # a chunk whose own delay ends earlier waits for the chunk before it (order kept)
    assert delivery_times([0.0, 0.1], 0.5, [0.25, -0.25]) == [0.75, 0.75]
    # a negative offset larger than the latency is floored at "no delay"
    assert delivery_times([1.0], 0.1, [-0.3]) == [1.0]
    # the previous chunk of an earlier batch still holds this one back
    assert delivery_times([0.0], 0.0, [0.0], previous=2.0) == [2.0]
    assert next_delivery(3.0, 0.25, 0.0, previous=1.0) == 3.25
    with pytest.raises(ValueError, match="one jitter offset per arrival"):
        delivery_times([0.0, 1.0], 0.1, [0.0])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 10), st.floats(-0.2, 0.2)), min_size=1, max_size=40),
    st.floats(0, 0.5),
)
def test_delivery_times_are_monotone_and_never_early(pairs: list[tuple[float, float]],
                                                     latency: float) -> None:
    gaps, jitters = zip(*pairs, strict=True)
    arrivals = [sum(gaps[: k + 1]) for k in range(len(gaps))]  # arrivals never go back in time
    times = delivery_times(arrivals, latency, list(jitters))
    assert all(b >= a for a, b in itertools.pairwise(times))
    for arrival, offset, at in zip(arrivals, jitters, times, strict=True):
        assert at >= arrival + max(0.0, latency + offset)
        assert at >= arrival
    # and it is tight: each time is its own deadline or the previous chunk's
    for k, at in enumerate(times):
        own = arrivals[k] + max(0.0, latency + jitters[k])
        assert at == own or (k > 0 and at == times[k - 1])


def test_with_no_jitter_delivery_is_at_least_arrival_plus_latency() -> None:
    arrivals = [0.0, 0.0, 0.3, 0.31]
    assert all(t >= a + 0.2 for a, t in zip(arrivals, delivery_times(arrivals, 0.2, [0.0] * 4),
                                            strict=True))


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"latency": -0.1}, "latency must be finite and >= 0"),
        ({"jitter": math.nan}, "jitter must be finite and >= 0"),
        ({"reset_rate": math.inf}, "reset_rate must be finite and >= 0"),
        ({"latency": 50.0, "jitter": 20.0}, "latency \\+ jitter must be at most 60 s"),
        ({"cut": 1}, "blackhole, cut and stall must be true or false"),
        ({"stall": "yes"}, "blackhole, cut and stall must be true or false"),
    ],
)
def test_link_faults_are_validated(kwargs: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        LinkFaults(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"target_host": "10.0.0.1"}, "relay target 10.0.0.1 is outside 127.0.0.0/8"),
        ({"target_host": "192.168.1.7"}, "outside 127.0.0.0/8"),
        ({"target_host": "::1"}, "relay target ::1 is outside 127.0.0.0/8"),
        ({"target_host": "localhost"}, "not an IP address"),
        ({"listen_host": "0.0.0.0"}, "relay listen address 0.0.0.0 is outside 127.0.0.0/8"),
    ],
)
def test_relays_refuse_anything_outside_loopback(kwargs: dict[str, Any], rule: str) -> None:
    with pytest.raises(ValueError, match=rule):
        Relay("x", 4001, **kwargs)


def test_loopback_addresses_are_accepted() -> None:
    assert require_loopback("127.0.0.1", "x") == "127.0.0.1"
    assert require_loopback("127.1.2.3", "x") == "127.1.2.3"
    with pytest.raises(ValueError, match="ports must be in"):
        Relay("x", 0)


# -- on real sockets ---------------------------------------------------------------------------


async def _echo(stream: trio.SocketStream) -> None:
    try:
        while data := await stream.receive_some(CHUNK_BYTES):
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def _sink(stream: trio.SocketStream) -> None:
    """Accepts and never reads (a peer that has stopped taking data)."""
    await trio.sleep_forever()


def run_with_relay(test: Callable[[Relay, trio.Nursery], Awaitable[None]], *,
                   faults: LinkFaults | None = None, handler: Any = _echo,
                   **relay_kwargs: Any) -> Relay:
    """Start a server and a relay to it, run ``test(relay, nursery)``, tear both down."""
    box: list[Relay] = []

    async def main() -> None:
        with trio.fail_after(15):  # a hang fails the test instead of blocking the suite
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(
                    partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
                relay = Relay("test", port, faults=faults, **relay_kwargs)
                box.append(relay)
                await nursery.start(relay.run)
                await test(relay, nursery)
                nursery.cancel_scope.cancel()

    trio.run(main)
    return box[0]


async def _connect(relay: Relay) -> trio.SocketStream:
    assert relay.port is not None
    return await trio.open_tcp_stream("127.0.0.1", relay.port)


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


async def _is_reset_or_closed(stream: trio.SocketStream) -> bool:
    """True once the stream ends (EOF or reset); raises TooSlowError if it never does."""
    with trio.fail_after(5):
        try:
            while await stream.receive_some(CHUNK_BYTES):
                pass
        except trio.BrokenResourceError:
            return True
    return True


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(1, 200_000), min_size=1, max_size=6), st.integers(0, 2**31))
def test_bytes_arrive_intact_and_in_order_through_latency_and_jitter(sizes: list[int],
                                                                     seed: int) -> None:
    import random

    rng = random.Random(seed)
    chunks = [rng.randbytes(size) for size in sizes]
    payload = b"".join(chunks)
    received: list[bytes] = []

    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        stream = await _connect(relay)
        async with stream:
            async def send() -> None:
                for chunk in chunks:
                    await stream.send_all(chunk)

            nursery.start_soon(send)
            received.append(await _receive_exactly(stream, len(payload)))

    relay = run_with_relay(test, faults=LinkFaults(latency=0.002, jitter=0.002),
                           queue_bytes=CHUNK_BYTES, seed=seed)
    assert received == [payload]
    assert relay.stats.bytes_to_target == len(payload)
    assert relay.stats.bytes_from_target == len(payload)
    assert relay.stats.accepted == 1 and relay.stats.refused == 0


def test_latency_delays_each_way_by_at_least_the_configured_time() -> None:
    rtts: list[float] = []

    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        stream = await _connect(relay)
        async with stream:
            for _ in range(3):
                start = trio.current_time()
                await stream.send_all(b"ping")
                assert await _receive_exactly(stream, 4) == b"ping"
                rtts.append(trio.current_time() - start)

    run_with_relay(test, faults=LinkFaults(latency=0.1))
    assert min(rtts) >= 0.2  # 0.1 s each way; a lower bound only


def test_cut_resets_open_connections_refuses_new_ones_and_heals() -> None:
    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        stream = await _connect(relay)
        await stream.send_all(b"hello")
        assert await _receive_exactly(stream, 5) == b"hello"
        relay.set_faults(LinkFaults(cut=True))
        assert await _is_reset_or_closed(stream)
        await stream.aclose()
        # while cut: accepted by the kernel, then reset at once; nothing comes back
        refused = await _connect(relay)
        with pytest.raises(trio.BrokenResourceError):
            for _ in range(50):  # the reset reaches the sender's socket within a few writes
                await refused.send_all(b"x" * 1000)
                await trio.sleep(0.01)
        await refused.aclose()
        assert relay.stats.refused >= 1
        # healed: a new connection works again
        relay.set_faults(LinkFaults())
        healed = await _connect(relay)
        async with healed:
            await healed.send_all(b"again")
            assert await _receive_exactly(healed, 5) == b"again"

    relay = run_with_relay(test)
    assert relay.stats.resets == 1
    assert relay.stats.accepted == 2  # the first connection and the healed one


def test_blackhole_forwards_nothing_but_keeps_the_connection() -> None:
    echoed: list[bytes] = []

    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        relay.set_faults(LinkFaults(blackhole=True))
        stream = await _connect(relay)
        async with stream:
            await stream.send_all(b"into the void")
            with trio.move_on_after(0.3):
                echoed.append(await stream.receive_some(100))
            assert relay.stats.bytes_dropped == len(b"into the void")
            # the connection was kept: lifting the blackhole lets new bytes through it
            relay.set_faults(LinkFaults())
            await stream.send_all(b"back")
            assert await _receive_exactly(stream, 4) == b"back"

    relay = run_with_relay(test)
    assert echoed == []
    assert relay.stats.bytes_to_target == 4 and relay.stats.resets == 0


def test_a_stall_holds_everything_and_lets_it_through_intact_when_lifted() -> None:
    echoed: list[bytes] = []

    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        before = await _connect(relay)  # open before the stall
        relay.set_faults(LinkFaults(stall=True))
        async with before:
            await before.send_all(b"held ")
            later_stream: list[trio.SocketStream] = []

            async def connect_during_stall() -> None:
                later_stream.append(await _connect(relay))  # accepted, not forwarded yet

            nursery.start_soon(connect_during_stall)
            with trio.move_on_after(0.3):
                echoed.append(await before.receive_some(100))
            assert relay.stats.bytes_to_target == 0 and relay.stats.accepted == 1
            await before.send_all(b"then more")
            relay.set_faults(LinkFaults())
            assert await _receive_exactly(before, 14) == b"held then more"  # nothing lost
            await trio.sleep(0.1)
            [later] = later_stream
            async with later:
                await later.send_all(b"late")
                assert await _receive_exactly(later, 4) == b"late"

    relay = run_with_relay(test)
    assert echoed == []
    assert relay.stats.accepted == 2 and relay.stats.resets == 0
    assert relay.stats.bytes_dropped == 0


def test_a_high_reset_rate_resets_connections() -> None:
    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        streams = [await _connect(relay) for _ in range(3)]
        for stream in streams:
            with contextlib.suppress(trio.BrokenResourceError):  # it may be reset already
                await stream.send_all(b"x")
            assert await _is_reset_or_closed(stream)
            await stream.aclose()

    relay = run_with_relay(test, faults=LinkFaults(reset_rate=50.0))
    assert relay.stats.resets == 3
    assert relay.stats.accepted == 3


def test_the_connection_cap_refuses_extra_connections() -> None:
    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        kept = [await _connect(relay) for _ in range(2)]
        for stream in kept:  # both forwarded (an echo proves the relay holds them)
            await stream.send_all(b"k")
            assert await _receive_exactly(stream, 1) == b"k"
        extra = await _connect(relay)
        assert await _is_reset_or_closed(extra)
        for stream in [*kept, extra]:
            await stream.aclose()

    relay = run_with_relay(test, max_connections=2)
    assert relay.stats.accepted == 2 and relay.stats.refused == 1


def test_a_reader_that_stops_pushes_back_on_the_sender() -> None:
    sent: list[int] = []

    async def test(relay: Relay, nursery: trio.Nursery) -> None:
        stream = await _connect(relay)
        total = 0
        with trio.move_on_after(1.0):
            while True:
                await stream.send_all(b"\0" * CHUNK_BYTES)
                total += CHUNK_BYTES
        sent.append(total)
        await stream.aclose()

    relay = run_with_relay(test, handler=_sink, queue_bytes=CHUNK_BYTES)
    # Unbounded, the relay would swallow hundreds of MB a second; bounded, the sender stalls once
    # the relay's queue and the kernel's socket buffers are full.
    assert sent[0] < 16 * 2**20
    assert relay.stats.bytes_to_target <= sent[0]


def test_an_unreachable_target_is_counted_and_the_client_reset() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]

    async def main() -> Relay:
        relay = Relay("dead", dead_port)
        async with trio.open_nursery() as nursery:
            await nursery.start(relay.run)
            stream = await _connect(relay)
            assert await _is_reset_or_closed(stream)
            await stream.aclose()
            relay.close()
        return relay

    relay = trio.run(main)
    assert relay.stats.failed == 1 and relay.stats.accepted == 0


# -- the fleet, from plain threads -------------------------------------------------------------


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                try:
                    while data := conn.recv(65536):
                        conn.sendall(data)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload)
        data = b""
        while len(data) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


def test_fleet_is_controlled_from_plain_threads() -> None:
    server, _ = _echo_server()
    target = server.getsockname()[1]
    try:
        with RelayFleet(seed=3) as fleet:
            port = fleet.add("a->b", target, LinkFaults(latency=0.01))
            assert fleet.port("a->b") == port != target
            assert _round_trip(port, b"through the relay") == b"through the relay"
            with pytest.raises(ValueError, match="exists already"):
                fleet.add("a->b", target)
            # control from another plain thread
            worker = threading.Thread(
                target=fleet.set_faults, args=(["a->b"], LinkFaults(cut=True)))
            worker.start()
            worker.join(5)
            assert fleet.faults("a->b").cut
            with pytest.raises(ConnectionError):  # reset or closed, not a timeout
                reply = _round_trip(port, b"cut off")
                if not reply:  # the reset may read as an orderly close
                    raise ConnectionResetError("no reply")
            fleet.set_faults(["a->b"], LinkFaults())
            assert _round_trip(port, b"healed") == b"healed"
            with pytest.raises(KeyError, match="no relay named nope"):
                fleet.set_faults(["nope"], LinkFaults())
            stats = fleet.stats()["a->b"]
            assert stats["accepted"] == 2 and stats["refused"] == 1
            assert stats["bytes_to_target"] == len(b"through the relay") + len(b"healed")
            assert stats["bytes_from_target"] == stats["bytes_to_target"]
            assert stats["target_port"] == target and stats["faults"]["cut"] is False
        with pytest.raises(RuntimeError, match="not running"):
            fleet.stats()
        fleet.close()  # idempotent
    finally:
        server.close()


def test_a_reader_whose_deliverer_has_left_stops_quietly() -> None:
    # the deliverer found its end broken and left (closing its channel) while the reader had a
    # chunk in hand: the reader must stop, not raise BrokenResourceError out of the relay (a
    # crash of the whole fleet, seen once in a partition run)
    from gossipfl.scenario.relay import _Connection, _Direction

    async def main() -> None:
        relay = Relay("r", 9)
        client, server = trio.testing.memory_stream_pair()
        connection = _Connection(relay, client, server)  # type: ignore[arg-type]
        source_in, source = trio.testing.memory_stream_one_way_pair()
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        await receive.aclose()
        await source_in.send_all(b"chunk")
        with trio.fail_after(5):
            await connection._read(source, send, _Direction("bytes_to_target"))  # type: ignore[arg-type]

    trio.run(main)
