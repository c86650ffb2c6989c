"""Persistent request/answer streams, one per (neighbour, protocol) and direction.

Opening a libp2p stream costs a multistream-select round trip and notable CPU, so the secure
aggregation exchanges (masked input, survivor-set signature, unmask) keep one stream a
neighbour open across rounds, as contributions do: the opener sends a request frame and reads
its answer, again and again; the server answers frame after frame under the idle timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from gossipfl.gossip.framing import StreamClosed
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Known, Message

if TYPE_CHECKING:
    from gossipfl.config import ProtocolConfig
    from gossipfl.gossip.peers import Channel
    from gossipfl.gossip.ratelimit import PeerLimiter


class NeighbourState(Protocol):
    """What this module keeps per neighbour (``state.NeighbourState`` has it)."""

    streams: dict[str, Channel]
    stream_locks: dict[str, trio.Lock]


class Node(Protocol):
    """What this module uses of a node (``runtime.Node``), named here so that it needs no
    import of the runtime."""

    neighbours: Mapping[str, NeighbourState]
    net: Any  # PeerNet, or None before the host runs
    protocol: ProtocolConfig
    limiter: PeerLimiter
    timeouts: int
    background: trio.Nursery | None  # the node's own nursery while it runs

    @property
    def idle_timeout(self) -> float: ...

    def channel_to(self, peer: str, protocol: str, addrs: tuple[str, ...] | None = None,
                   ) -> AbstractAsyncContextManager[Channel]: ...

    def addrs_of(self, peer: str) -> tuple[str, ...]: ...

    async def send_payload(self, channel: Channel, message: Any) -> None: ...

    def flood(self, peer: str, detail: str) -> None: ...


log = logging.getLogger("gossipfl.streams")
T = TypeVar("T")
M = TypeVar("M", bound=Message)


async def request(node: Node, peer: str, protocol: str,
                  exchange: Callable[[Channel], Awaitable[T]],
                  held: NeighbourState | None = None) -> T:
    """Run ``exchange`` (send a request, read its answer) on our open ``protocol`` stream to
    neighbour ``peer`` (or to the member whose streams ``held`` keeps), opening it if needed.
    A broken stream (the peer restarted, or reset it as idle) is replaced once; a failure on a
    fresh stream raises, and so does a clean close (the peer ended the stream rather than
    answer: a refusal, never asked twice). Requests on one stream are sequential; a cancelled
    or failed exchange resets its stream.

    A test's transport (``node.channel_to`` replaced), or a peer that is no
    neighbour and has no ``held``, gets a new stream for the one request, closed after."""
    state = held if held is not None else node.neighbours.get(peer)
    if state is None or node.net is None or "channel_to" in vars(node):
        async with node.channel_to(peer, protocol) as channel:
            return await exchange(channel)
    async with state.stream_locks.setdefault(protocol, trio.Lock()):
        for attempt in (1, 2):
            channel = state.streams.get(protocol)
            fresh = channel is None
            try:
                if channel is None:
                    channel = await node.net.open(peer, node.addrs_of(peer), protocol)
                    state.streams[protocol] = channel
                return await exchange(channel)
            except BaseException as error:
                await _discard(state, protocol, channel)
                if fresh or attempt == 2 or not isinstance(error, Exception) \
                        or isinstance(error, StreamClosed):
                    raise
                log.debug("replacing the %s stream to %s: %s", protocol, peer, error)
    raise AssertionError("unreachable")


async def ask(node: Node, peer: str, protocol: str, message: Message, expected: type[M], *,
              payload: bool = False, written: trio.Event | None = None,
              known: Known | None = None) -> M:
    """Send ``message`` (as a payload: sealed when payloads are) on the persistent stream and
    return the control-sized answer (see :func:`request`); ``written`` is set once the
    request's frame is written (a caller may go on while the answer is read); ``known``: the
    table an unmask request names its peers by place in."""
    async def exchange(channel: Channel) -> M:
        if payload:
            await node.send_payload(channel, message)  # type: ignore[arg-type]
        else:
            await channel.send(message, MAX_CONTROL_BYTES, known)
        if written is not None:
            written.set()
        return await channel.receive(expected, MAX_CONTROL_BYTES)

    return await request(node, peer, protocol, exchange)


async def until_enough(node: Node, tasks: list[Callable[[], Awaitable[None]]],
                       enough: Callable[[], bool]) -> Callable[[], Awaitable[None]]:
    """Run ``tasks`` (each bounded by its own timeout) and return once ``enough()`` holds or
    every one has ended; those still running go on in the node's own nursery (an answer that
    comes later is kept by its task, and cancelling it would reset its stream). Returns an
    awaitable that waits for the rest (for a caller that finds it needs them after all).
    Without a running node (a test's fake) it waits for every task."""
    left = len(tasks)
    enough_now, all_done = trio.Event(), trio.Event()

    async def run(task: Callable[[], Awaitable[None]]) -> None:
        nonlocal left
        try:
            await task()
        finally:
            left -= 1
            if left == 0:
                all_done.set()
            if left == 0 or enough():
                enough_now.set()

    if not tasks:
        all_done.set()
        enough_now.set()
    elif getattr(node, "background", None) is None:  # a test's fake node has none
        async with trio.open_nursery() as nursery:
            for task in tasks:
                nursery.start_soon(run, task)
    else:
        for task in tasks:
            node.background.start_soon(run, task)  # type: ignore[union-attr]
        if enough():  # enough already: the tasks go on in the background
            enough_now.set()
    await enough_now.wait()
    return all_done.wait


async def _discard(state: NeighbourState, protocol: str, channel: Channel | None) -> None:
    if channel is None:
        return
    if state.streams.get(protocol) is channel:
        del state.streams[protocol]
    with trio.move_on_after(1) as scope:
        scope.shield = True  # also when the exchange was cancelled (a timeout)
        await channel.reset()


async def close_streams(state: NeighbourState, *, reset: bool = False) -> None:
    """Close (or reset) every request stream we hold to one neighbour."""
    streams, state.streams = state.streams, {}
    for channel in streams.values():
        await (channel.reset() if reset else channel.close())


async def serve_requests(node: Node, channel: Channel,
                         handler: Callable[[Channel], Awaitable[bool | None]]) -> None:
    """Serve a request stream: ``handler`` reads one frame and answers it, and again; a
    handler that returns False (it refused without an answer) ends the stream cleanly.

    The first request must be served within the request timeout (as a one-request stream
    was); each later one within ``idle_timeout`` of the last answer, else the stream is reset
    (so that the opener never takes it for a refusal; it opens a new one when it next needs
    to). Every later frame takes a token of the peer's rate limit, as each stream does."""
    remote = channel.remote
    with trio.move_on_after(node.protocol.request_timeout) as scope:
        going = await handler(channel)
    if scope.cancelled_caught:
        node.timeouts += 1
        log.warning("timed out serving %s", remote)
        await channel.reset()
        return
    while going is not False:
        if not node.limiter.allow(remote, trio.current_time()):
            node.flood(remote, "more frames a second than allowed")
            await channel.reset()
            return
        with trio.move_on_after(node.idle_timeout) as scope:
            going = await handler(channel)
        if scope.cancelled_caught:
            log.debug("resetting an idle request stream from %s", remote)
            await channel.reset()
            return
