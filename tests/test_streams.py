"""Persistent request streams (gossipfl/node/streams.py): reuse, one replacement, refusals."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
from libp2p.stream_muxer.exceptions import MuxedStreamReset

from gossipfl.config import ProtocolConfig
from gossipfl.gossip.framing import StreamClosed
from gossipfl.node import streams
from gossipfl.node.runtime import NeighbourState

PEER, PROTO = "peer-b", "/test/request/1.0.0"


class FakeChannel:
    def __init__(self, n: int) -> None:
        self.n, self.closed, self.was_reset = n, False, False

    async def close(self) -> None:
        self.closed = True

    async def reset(self) -> None:
        self.was_reset = True


@dataclass
class FakeNet:
    opened: list[FakeChannel] = field(default_factory=list)

    async def open(self, peer: str, addrs: tuple[str, ...], protocol: str) -> FakeChannel:
        assert (peer, protocol) == (PEER, PROTO)
        self.opened.append(FakeChannel(len(self.opened)))
        return self.opened[-1]


@dataclass
class FakeNode:
    net: FakeNet = field(default_factory=FakeNet)
    neighbours: dict[str, NeighbourState] = field(
        default_factory=lambda: {PEER: NeighbourState()})

    def addrs_of(self, peer: str) -> tuple[str, ...]:
        return ()


def test_requests_reuse_one_stream_per_neighbour_and_protocol() -> None:
    node = FakeNode()

    async def main() -> list[int]:
        async def exchange(channel: FakeChannel) -> int:
            return channel.n
        return [await streams.request(node, PEER, PROTO, exchange) for _ in range(3)]

    assert trio.run(main) == [0, 0, 0]
    assert len(node.net.opened) == 1
    trio.run(streams.close_streams, node.neighbours[PEER])
    assert node.net.opened[0].closed and node.neighbours[PEER].streams == {}


@pytest.mark.parametrize(("error", "opens", "answered"), [
    (MuxedStreamReset("reset"), 2, True),  # a broken stream: replaced once
    (StreamClosed("closed"), 1, False),  # the peer ended it rather than answer: not asked again
])
def test_a_reused_stream_that_fails_is_replaced_once_unless_closed_cleanly(
    error: Exception, opens: int, answered: bool
) -> None:
    node, calls = FakeNode(), []

    async def exchange(channel: FakeChannel) -> int:
        calls.append(channel.n)
        if len(calls) == 2:
            raise error
        return channel.n

    async def main() -> None:
        await streams.request(node, PEER, PROTO, exchange)
        if answered:
            assert await streams.request(node, PEER, PROTO, exchange) == 1
        else:
            with pytest.raises(StreamClosed):
                await streams.request(node, PEER, PROTO, exchange)

    trio.run(main)
    assert len(node.net.opened) == opens
    assert node.net.opened[0].was_reset


def test_a_failure_on_a_fresh_stream_raises_and_a_timeout_resets_it() -> None:
    node = FakeNode()

    async def broken(channel: FakeChannel) -> None:
        raise MuxedStreamReset("reset")

    async def silent(channel: FakeChannel) -> None:
        await trio.sleep_forever()

    async def main() -> None:
        with pytest.raises(MuxedStreamReset):
            await streams.request(node, PEER, PROTO, broken)
        with trio.move_on_after(0.05):
            await streams.request(node, PEER, PROTO, silent)

    trio.run(main)
    assert [c.was_reset for c in node.net.opened] == [True, True]
    assert node.neighbours[PEER].streams == {}


class Limiter:
    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def allow(self, peer: str, now: float) -> bool:
        self.tokens -= 1
        return self.tokens >= 0


@dataclass
class ServingNode:
    limiter: Limiter
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    timeouts: int = 0
    flooded: int = 0
    idle_timeout: float = 60.0

    def flood(self, peer: str, detail: str) -> None:
        self.flooded += 1


class ServedChannel(FakeChannel):
    remote = "peer-a"


@pytest.mark.parametrize(("answers", "tokens", "served", "reset", "flooded"), [
    ([True, True, False], 10, 3, False, 0),  # a refusal ends the stream cleanly
    ([True, True, True, True], 2, 3, True, 1),  # the third frame spends the last token
])
def test_the_server_answers_frame_after_frame_within_its_limits(
    answers: list[bool], tokens: int, served: int, reset: bool, flooded: int
) -> None:
    node, channel, calls = ServingNode(Limiter(tokens)), ServedChannel(0), []

    async def handler(channel: ServedChannel) -> bool:
        calls.append(1)
        return answers[len(calls) - 1]

    trio.run(streams.serve_requests, node, channel, handler)
    assert (len(calls), channel.was_reset, node.flooded) == (served, reset, flooded)


def test_an_idle_request_stream_is_reset() -> None:
    node, channel, calls = ServingNode(Limiter(10)), ServedChannel(0), []

    async def handler(channel: ServedChannel) -> bool:
        calls.append(1)
        if len(calls) == 2:
            await trio.sleep_forever()
        return True

    async def main() -> None:
        await streams.serve_requests(node, channel, handler)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert len(calls) == 2 and channel.was_reset and node.timeouts == 0


@dataclass
class Bare:
    """Just what :func:`streams.until_enough` reads of a node."""

    background: trio.Nursery | None = None


def _answers(delays: dict[str, float], got: list[str]) -> list:
    async def answer(peer: str, delay: float) -> None:
        await trio.sleep(delay)
        got.append(peer)
    return [lambda p=p, d=d: answer(p, d) for p, d in delays.items()]


def test_until_enough_returns_at_the_quorum_and_the_rest_go_on_in_the_nodes_nursery() -> None:
    delays = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 9.0}
    seen: dict[str, object] = {}

    async def main() -> None:
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            node = Bare(nursery)
            rest = await streams.until_enough(node, _answers(delays, got), lambda: len(got) >= 3)
            seen["at_quorum"] = (trio.current_time(), list(got))
            await rest()  # the slow one still answers, in the node's nursery
            seen["at_end"] = (trio.current_time(), list(got))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert seen["at_quorum"] == (3.0, ["a", "b", "c"])
    assert seen["at_end"] == (9.0, ["a", "b", "c", "d"])


def test_until_enough_waits_for_every_task_when_the_quorum_is_never_reached() -> None:
    got: list[str] = []
    times: list[float] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await streams.until_enough(Bare(nursery), _answers({"a": 1.0, "b": 4.0}, got),
                                       lambda: len(got) >= 3)
            times.append(trio.current_time())
            assert await streams.until_enough(Bare(nursery), [], lambda: False) is not None

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert times == [4.0] and got == ["a", "b"]


def test_until_enough_without_a_running_node_waits_for_all() -> None:
    got: list[str] = []
    times: list[float] = []

    async def main() -> None:
        await streams.until_enough(Bare(None), _answers({"a": 1.0, "b": 5.0}, got),
                                   lambda: len(got) >= 1)
        times.append(trio.current_time())

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert times == [5.0] and got == ["a", "b"]
