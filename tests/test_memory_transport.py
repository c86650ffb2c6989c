"""The in-memory transport (gossipfl/gossip/memory.py) under trio's MockClock: frames through
the node's Channel, and each fault the network injects (kill, cut, silent stall, latency,
resets), in virtual time."""

from __future__ import annotations

import contextvars
import random
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.framing import Overloaded
from gossipfl.gossip.memory import Link, MemoryNetwork, MemoryTransport
from gossipfl.gossip.peers import Channel, ReadPolicy, Traffic
from gossipfl.gossip.ratelimit import InFlight
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Ack, Contribution, Tensor, WireError

FED, PROTO = "fed", "/test/echo/1.0.0"
BIG = 4 * MAX_CONTROL_BYTES  # a payload cap well above the control cap


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn, clock=trio.testing.MockClock(autojump_threshold=0))


def ack(round_: int, sender: str = "a") -> Ack:
    return Ack(FED, round_, sender, AckCode.OK, "")


def payload(sender: str, floats: int) -> Contribution:
    return Contribution(FED, 1, sender, "b", 1, "full", -1, 0.0, False,
                        (Tensor.from_array("w", np.ones(floats, np.float32)),))


def echo_server(network: MemoryNetwork, name: str = "b") -> MemoryTransport:
    """A transport that answers every Ack with the next round's."""
    transport = network.attach(name, Traffic())

    async def echo(channel: Channel) -> None:
        try:
            while True:
                message = await channel.receive(Ack, MAX_CONTROL_BYTES)
                await channel.send(ack(message.round + 1, name), MAX_CONTROL_BYTES)
        except ConnectionError:  # the other end closed or reset the stream
            return
        finally:
            await channel.close()

    transport.serve(PROTO, echo)
    return transport


async def round_trip(channel: Channel, round_: int) -> int:
    await channel.send(ack(round_), MAX_CONTROL_BYTES)
    return (await channel.receive(Ack, MAX_CONTROL_BYTES)).round


def test_a_stream_carries_whole_frames_both_ways_and_counts_them() -> None:
    network = MemoryNetwork()
    a, b = network.attach("a", Traffic()), echo_server(network)

    async def main() -> list[int]:
        async with a.running(), b.running():
            channel = await a.open("b", (), PROTO)
            assert channel.remote == "b"
            return [await round_trip(channel, r) for r in (1, 5, 9)]

    assert run(main) == [2, 6, 10]
    assert a.traffic.messages_sent == b.traffic.messages_received == 3
    assert a.traffic.bytes_sent == b.traffic.bytes_received > 0
    assert b.traffic.by_kind_sent == {"ack": a.traffic.bytes_received}
    assert network.totals() == {"accepted": 1, "refused": 0, "resets": 0}


def test_the_read_policy_holds_a_stranger_to_control_frames_from_the_header() -> None:
    """A payload-sized frame is read from a member, refused from a stranger by its announced
    length (before a byte of its body is taken from the budget); a member's frame larger than
    the in-flight budget is refused too."""
    network = MemoryNetwork()
    in_flight = InFlight(limit=2 * MAX_CONTROL_BYTES, stranger_limit=MAX_CONTROL_BYTES // 2)
    policy = ReadPolicy(is_member=lambda peer: peer in ("member", "glutton"),
                        in_flight=in_flight)
    server = network.attach("b", Traffic(), policy)
    outcomes: dict[str, str] = {}

    async def take(channel: Channel) -> None:
        try:
            message = await channel.receive(Contribution, BIG)
            outcomes[channel.remote] = f"read {message.tensors[0].to_array().size}"
        except (WireError, Overloaded) as error:
            outcomes[channel.remote] = f"{type(error).__name__}: {error}"

    server.serve(PROTO, take)
    floats = MAX_CONTROL_BYTES // 4 + 1000  # a frame just over the control cap
    senders = {"member": floats, "stranger": floats, "glutton": 0}
    glutton = network.attach("glutton", Traffic())  # a member: too big for the budget

    async def main() -> None:
        transports = [network.attach(n, Traffic()) for n in ("member", "stranger")]
        async with server.running(), transports[0].running(), transports[1].running(), \
                glutton.running():
            for transport in transports:
                channel = await transport.open("b", (), PROTO)
                await channel.send(payload(transport.peer_id, senders[transport.peer_id]), BIG)
            channel = await glutton.open("b", (), PROTO)
            await channel.send(payload("glutton", 3 * MAX_CONTROL_BYTES // 4), BIG)
            await trio.sleep(1)

    run(main)
    assert outcomes["member"] == f"read {floats}"
    assert outcomes["stranger"].startswith("WireError: frame of ")
    assert f"exceeds the {MAX_CONTROL_BYTES} cap (not a certified member" in outcomes["stranger"]
    assert outcomes["glutton"].startswith("Overloaded: no room for a frame")
    # the stranger's frame never reached the budget; the glutton's was refused by it
    assert in_flight.refused == 1 and in_flight.held == 0 and in_flight.held_by_strangers == 0
    assert in_flight.peak > MAX_CONTROL_BYTES  # the member's frame was held while read


def test_kill_resets_the_open_streams_refuses_new_ones_and_revive_undoes_it() -> None:
    network = MemoryNetwork()
    a, b, c = network.attach("a", Traffic()), echo_server(network), echo_server(network, "c")

    async def main() -> None:
        async with a.running(), b.running(), c.running():
            to_b, to_c = await a.open("b", (), PROTO), await a.open("c", (), PROTO)
            assert await round_trip(to_b, 1) == 2
            network.kill("b")
            with pytest.raises(ConnectionResetError):
                await round_trip(to_b, 3)
            with pytest.raises(ConnectionRefusedError, match="cannot reach b"):
                await a.open("b", (), PROTO)
            assert a.open_streams().get("b", 0) == 0 and a.open_streams()["c"] == 1
            assert await round_trip(to_c, 7) == 8  # the others' streams carry on
            network.revive("b")
            assert await round_trip(await a.open("b", (), PROTO), 11) == 12

    run(main)
    totals = network.totals([("a", "b"), ("b", "a")])
    assert totals == {"accepted": 2, "refused": 1, "resets": 2}  # both ends of the stream
    assert network.totals([("a", "c"), ("c", "a")]) == {"accepted": 1, "refused": 0, "resets": 0}


def test_a_cut_resets_and_refuses_only_the_pairs_it_cuts_until_restored() -> None:
    network = MemoryNetwork()
    a, b, c = network.attach("a", Traffic()), echo_server(network), echo_server(network, "c")
    a.serve(PROTO, b.handlers[PROTO])

    async def main() -> None:
        async with a.running(), b.running(), c.running():
            to_b, to_c = await a.open("b", (), PROTO), await a.open("c", (), PROTO)
            from_b = await b.open("a", (), PROTO)
            pairs = network.partition([["a"], ["b", "c"]]) - {("a", "c"), ("c", "a")}
            network.restore([("a", "c"), ("c", "a")])  # only a–b stays cut
            assert pairs == {("a", "b"), ("b", "a")}
            for channel in (to_b, from_b):
                with pytest.raises(ConnectionResetError):
                    await round_trip(channel, 1)
            for src, dst in (("a", "b"), ("b", "a")):
                with pytest.raises(ConnectionRefusedError):
                    await network.transports[src].open(dst, (), PROTO)
            # a–c was cut and restored: its open stream was reset, new ones are accepted
            with pytest.raises(ConnectionResetError):
                await round_trip(to_c, 1)
            assert await round_trip(await a.open("c", (), PROTO), 3) == 4
            assert await round_trip(await c.open("b", (), PROTO), 5) == 6  # never cut
            network.restore(pairs)
            assert await round_trip(await a.open("b", (), PROTO), 7) == 8

    run(main)
    assert network.totals([("a", "b"), ("b", "a")])["refused"] == 2


@pytest.mark.parametrize("fault", ["reset", "kill", "cut"])
def test_a_reader_blocked_when_its_stream_breaks_sees_a_reset_not_an_end(fault: str) -> None:
    """However a stream breaks (the other end resets it, the other peer dies, the link is
    cut), a reader waiting on it then is told of a reset, never of a clean end of stream."""
    network = MemoryNetwork()
    a, b = network.attach("a", Traffic()), network.attach("b", Traffic())
    seen: list[str] = []

    async def wait(channel: Channel) -> None:
        try:
            await channel.receive(Ack, MAX_CONTROL_BYTES)
        except ConnectionError as error:
            seen.append(type(error).__name__)

    b.serve(PROTO, wait)

    async def main() -> None:
        async with a.running(), b.running():
            channel = await a.open("b", (), PROTO)
            await trio.testing.wait_all_tasks_blocked()  # b's handler waits for a frame
            if fault == "reset":
                await channel.reset()
            elif fault == "kill":
                network.kill("a")
            else:
                network.cut([("a", "b")])  # one way: the stream breaks for both ends
            await trio.testing.wait_all_tasks_blocked()
            assert seen == ["StreamReset"]
            with pytest.raises(ConnectionResetError):
                await channel.send(ack(1), MAX_CONTROL_BYTES)

    run(main)


def test_a_one_way_cut_and_overlapping_cuts_each_need_their_restore() -> None:
    network = MemoryNetwork()
    a, b = echo_server(network, "a"), echo_server(network)

    async def main() -> None:
        async with a.running(), b.running():
            network.cut([("a", "b")])
            network.cut([("a", "b")])  # a second partition over the same link
            with pytest.raises(ConnectionRefusedError):
                await a.open("b", (), PROTO)
            channel = await b.open("a", (), PROTO)  # the other way opens ...
            with pytest.raises(ConnectionResetError):  # ... but a's answer cannot pass
                await round_trip(channel, 1)
            network.restore([("a", "b")])
            with pytest.raises(ConnectionRefusedError):  # the other cut still holds
                await a.open("b", (), PROTO)
            network.restore([("a", "b")])
            assert await round_trip(await a.open("b", (), PROTO), 3) == 4

    run(main)


def test_a_silent_cut_holds_writes_until_restored_and_only_timeouts_tell() -> None:
    network = MemoryNetwork()
    a, b = network.attach("a", Traffic()), echo_server(network)

    async def main() -> tuple[float, float, int]:
        async with a.running(), b.running():
            channel = await a.open("b", (), PROTO)
            start = trio.current_time()
            network.cut([("a", "b"), ("b", "a")], silent=True)
            held = await a.open("b", (), PROTO)  # nothing is refused ...
            with trio.move_on_after(30) as scope:  # ... and nothing moves
                await round_trip(held, 1)
            assert scope.cancelled_caught
            timed_out = trio.current_time() - start
            answer: list[int] = []

            async def ask() -> None:
                answer.append(await round_trip(channel, 5))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.sleep(12)
                assert answer == []  # still held after 12 more seconds
                network.restore([("a", "b"), ("b", "a")])
            return timed_out, trio.current_time() - start, answer[0]

    timed_out, total, answer = run(main)
    assert timed_out == 30  # exactly the timeout: no error came before it
    assert total == 42 and answer == 6  # delivered at the restore, intact
    assert network.totals() == {"accepted": 2, "refused": 0, "resets": 0}


def test_link_latency_costs_virtual_time_exactly_one_way() -> None:
    network = MemoryNetwork(links={("a", "b"): Link(latency=0.25)})
    a, b = network.attach("a", Traffic()), echo_server(network)

    async def main() -> list[float]:
        async with a.running(), b.running():
            channel = await a.open("b", (), PROTO)
            times = []
            for r in range(3):
                start = trio.current_time()
                await round_trip(channel, r)
                times.append(trio.current_time() - start)
            return times

    assert run(main) == [0.25, 0.25, 0.25]  # the reply way (b→a) has no delay


def jitter_delays(seed: int) -> list[float]:
    network = MemoryNetwork(links={("a", "b"): Link(latency=1.0, jitter=0.5)},
                            rng=random.Random(seed))
    a, b = network.attach("a", Traffic()), echo_server(network)

    async def main() -> list[float]:
        async with a.running(), b.running():
            channel = await a.open("b", (), PROTO)
            delays = []
            for r in range(20):
                start = trio.current_time()
                await round_trip(channel, r)
                delays.append(trio.current_time() - start)
            return delays

    return run(main)  # type: ignore[no-any-return]


def test_jitter_is_drawn_from_the_networks_seeded_generator() -> None:
    delays = jitter_delays(3)
    assert all(0.5 <= d <= 1.5 for d in delays) and len(set(delays)) == 20
    assert jitter_delays(3) == delays
    assert jitter_delays(4) != delays


def reset_times(seed: int, rate: float) -> list[float]:
    """When each of 10 streams, writing every 0.1 s, was reset by the link (in virtual s)."""
    network = MemoryNetwork(links={("a", "b"): Link(reset_rate=rate)}, rng=random.Random(seed))
    a, b = network.attach("a", Traffic()), echo_server(network)

    async def main() -> list[float]:
        lost = []
        async with a.running(), b.running():
            for _ in range(10):
                channel, start = await a.open("b", (), PROTO), trio.current_time()
                try:
                    for r in range(100):
                        await round_trip(channel, r)
                        await trio.sleep(0.1)
                except ConnectionResetError:
                    lost.append(round(trio.current_time() - start, 6))
                else:
                    lost.append(float("inf"))
        return lost

    times: list[float] = run(main)
    assert network.totals()["resets"] == sum(t != float("inf") for t in times)
    return times


def test_resets_come_at_the_links_rate_and_repeat_with_the_seed() -> None:
    times = reset_times(11, rate=2.0)
    assert reset_times(11, rate=2.0) == times
    assert reset_times(12, rate=2.0) != times
    assert all(t < 10 for t in times)  # 100 writes 0.1 s apart: every stream lost
    assert 0.1 < float(np.mean(times)) < 2.0  # mean life 1 / rate = 0.5 s, give or take
    assert reset_times(11, rate=0.0) == [float("inf")] * 10  # no rate: never


def test_open_streams_and_disconnect_count_each_peers_streams() -> None:
    network = MemoryNetwork()
    a, b, c = network.attach("a", Traffic()), echo_server(network), echo_server(network, "c")

    async def main() -> None:
        async with a.running(), b.running(), c.running():
            first, second = await a.open("b", (), PROTO), await a.open("b", (), PROTO)
            await a.open("c", (), PROTO)
            assert a.open_streams() == {"b": 2, "c": 1}
            assert b.open_streams() == {"a": 2} and c.open_streams() == {"a": 1}
            await first.close()  # our end; b's handler sees the end of the stream, closes its
            assert a.open_streams() == {"b": 1, "c": 1}
            await trio.testing.wait_all_tasks_blocked()
            assert b.open_streams() == {"a": 1}
            await a.disconnect("b")
            assert a.open_streams() == {"c": 1} and b.open_streams() == {}
            with pytest.raises(ConnectionResetError):
                await round_trip(second, 1)
            await a.disconnect("nobody")  # nothing to do
            assert await round_trip(await a.open("b", (), PROTO), 2) == 3

    run(main)


def test_no_stream_to_a_peer_that_is_not_running_or_does_not_serve_the_protocol() -> None:
    network = MemoryNetwork()
    a, b = network.attach("a", Traffic()), echo_server(network)

    async def main() -> None:
        async with a.running():
            with pytest.raises(ConnectionRefusedError, match="cannot reach b"):
                await a.open("b", (), PROTO)  # attached, not listening
            with pytest.raises(ConnectionRefusedError, match="cannot reach z"):
                await a.open("z", (), PROTO)  # unknown
            async with b.running():
                with pytest.raises(ConnectionRefusedError, match="does not serve"):
                    await a.open("b", (), "/other/1.0.0")

    run(main)
    assert network.totals() == {"accepted": 0, "refused": 3, "resets": 0}


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_a_handler_runs_in_the_servers_nursery_and_context() -> None:
    """The handler of a stream lives and dies with the *server's* transport (not the opener's
    task), and sees the server's context (a simulated node's log routing relies on it)."""
    network = MemoryNetwork()
    a, b = network.attach("a", Traffic()), network.attach("b", Traffic())
    seen: list[str] = []

    async def hold(channel: Channel) -> None:
        seen.append(f"{WHO.get()} serves {channel.remote}")
        try:
            await trio.sleep_forever()
        finally:
            seen.append(f"ended at {trio.current_time() - start:.0f}")

    b.serve(PROTO, hold)
    b_up, b_done = trio.Event(), trio.Event()
    start = 0.0

    async def server() -> None:
        WHO.set("b")
        async with b.running():
            b_up.set()
            await trio.sleep(10)
        b_done.set()

    async def main() -> None:
        nonlocal start
        start = trio.current_time()
        WHO.set("a")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            await b_up.wait()
            async with a.running():
                await a.open("b", (), PROTO)  # and the opener goes on
                await trio.sleep(1)
                assert seen == ["b serves a"]  # still running after the opener moved on
                await b_done.wait()
                assert seen == ["b serves a", "ended at 10"]

    run(main)
