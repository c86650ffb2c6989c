"""Serving peers safely: the guard around every stream handler (a deadline, the read policy,
per-peer rate limits, members-only protocols, no exception ever escaping into the transport),
and the loop that closes strangers' and idle connections."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from gossipfl.gossip.framing import Overloaded, StreamClosed, StreamEnded
from gossipfl.gossip.peers import Channel
from gossipfl.gossip.wire import WireError
from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.node")

Handler = Callable[[Channel], Awaitable[None]]


def guard(node: Node, handler: Handler, timeout: float | None = None, *,
          members_only: bool = False, what: str | None = None) -> Handler:
    """Wrap a stream handler: a deadline, and no exception ever escapes into libp2p.

    Frames are read under the node's ``read_policy`` (payload-sized only from certified members,
    all within the in-flight cap). With ``members_only`` (and admission on), a peer without
    a valid certificate gets its stream reset and its connection closed before a byte is
    read."""
    limit = node.protocol.request_timeout if timeout is None else timeout
    if what is None:  # on_heartbeat (or a partial of it, on this node) → "heartbeat"
        named = getattr(handler, "func", handler)
        what = getattr(named, "__name__", "stream").removeprefix("_").removeprefix("on_")

    async def guarded(channel: Channel) -> None:
        remote = channel.remote
        node.reaper.touch(remote, trio.current_time())
        if members_only and node.security.enabled and not node.security.is_member(remote):
            node.flood(remote, f"{what} stream without a valid certificate: disconnected",
                       key="not_member")
            await channel.reset()
            if node.net is not None:
                await node.net.disconnect(remote)
            return
        if not node.limiter.allow(remote, trio.current_time()):
            node.flood(remote, "more streams a second than allowed")
            await channel.reset()
            return
        if not node.limiter.open(remote):
            node.flood(remote, f"more than {node.limiter.max_open} streams open at once")
            await channel.reset()
            return
        try:
            await serve(channel, remote)
        finally:
            node.limiter.close(remote)

    async def serve(channel: Channel, remote: str) -> None:
        try:
            with trio.move_on_after(limit) as scope:
                await handler(channel)
            if scope.cancelled_caught:
                node.timeouts += 1
                log.warning("timed out serving %s", remote)
                await channel.reset()
                return
        except WireError as error:
            node.reject(remote, "frame", "malformed", str(error))
            await channel.reset()
            return
        except Overloaded as error:
            node.flood(remote, str(error), key="in_flight")
            await channel.reset()
            return
        except StreamClosed:
            await channel.close()
            return
        except (StreamEnded, ConnectionError) as error:
            log.info("stream from %s ended early: %s", remote, error)
            await channel.reset()
            return
        except Exception as error:  # a broken stream must not take the node down
            log.warning("error serving %s: %s: %s", remote, type(error).__name__, error)
            await channel.reset()
            return
        await channel.close()

    return guarded


async def close_idle_connections(node: Node) -> None:
    """Close the connections of peers without a certificate after ``request_timeout``, and
    any connection without a stream for the node's ``idle_timeout`` (see
    :class:`ConnectionReaper`)."""
    assert node.net is not None
    is_member = node.security.is_member if node.security.enabled else None
    while True:
        await trio.sleep(min(node.protocol.request_timeout, 5.0))
        try:
            closing = node.reaper.sweep(trio.current_time(), node.net.open_streams(),
                                        is_member)
        except Exception as error:  # libp2p's connection table: never take the node down
            log.warning("could not list connections: %s: %s", type(error).__name__, error)
            continue
        for peer, why in closing:
            log.info("closing the %s connection of %s", why.value, peer)
            with trio.move_on_after(node.protocol.request_timeout):
                await node.net.disconnect(peer)
