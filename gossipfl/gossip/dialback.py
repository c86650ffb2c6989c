"""Can peers dial this node? A dial-back probe (``[relay] reachable = "auto"``), after AutoNAT.

A node that does not know whether it sits behind a NAT asks up to :data:`SERVERS` of its
bootstrap peers (or the relays it would use) to dial it back. Each peer it asks opens a *new*
libp2p connection (TCP, Noise, yamux: the far end must prove the requester's peer id) to the IP
the request came from and the port the requester listens on, answers ``dialled`` or ``failed``,
and closes that connection :data:`HOLD_SECONDS` later. The node is public only if it *saw* such
a connection arrive: a new inbound connection from the peer that says it dialled. So a peer
that lies can only make it private (it then reserves on a relay, slower but as safe); no peer
can make a node that cannot be dialled announce addresses nobody reaches. A dial-back proves the
node reachable from the peer that made it, no more: a peer on the node's own LAN reaches it over
the LAN, so a node behind a NAT asks relays (``[relay] use``), which are public.

Who is dialled, and how often (a server's rules, against its use as an amplifier or a port
scanner): only the IP the request arrived from (never an address the request names), only over
a direct connection (over a relay the observed IP is the relay's: refused), at most
:data:`PARALLEL` dial-backs at once (more wait for a slot within the request's deadline), each
requester and each address at most once per :data:`REQUESTER_GAP` seconds (a table of at most
:data:`MAX_REMEMBERED` entries). A node whose peers all refuse or do not answer takes itself
for private.

Why not py-libp2p's AutoNAT (``libp2p.host.autonat``, 0.8.1): its server dials back with
``host.connect``, which returns at once when a connection to the requester exists, and the
request itself came over one; so it answers "reachable" to a node behind any NAT
(``tests/test_dialback.py`` shows it).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import multiaddr
import trio

from gossipfl.gossip.circuit import LinkKind, stream_link_kind
from gossipfl.gossip.codes import DialbackCode
from gossipfl.gossip.framing import read_frame, write_frame
from gossipfl.gossip.wire import DialbackReply, DialbackRequest
from gossipfl.relay_config import Reachability

log = logging.getLogger("gossipfl.dialback")

PROTO_DIALBACK = "/gossipfl/dialback/1.0.0"
SERVERS = 3  # peers asked at most
ASK_SECONDS = 10.0  # one question, answer included
DIAL_SECONDS = 4.0  # the server's dial-back
HOLD_SECONDS = 2.0  # the server keeps the dial-back connection open this long after answering
SEEN_SECONDS = 1.5  # the requester waits this long after "dialled" for the connection to show
REQUESTER_GAP = 10.0
MAX_REMEMBERED = 1024
PARALLEL = 4  # dial-backs a server makes at once (more requests wait for a slot)
FRAME_BYTES = 1024  # a dial-back frame's cap (they are a few dozen bytes)


def dialback_target(observed: tuple[str, int] | None, port: int) -> str | None:
    """The address a server dials back: the requester's observed IP at its listen ``port``
    (None when the request's IP is unknown or not an IP)."""
    if observed is None or not 1 <= port <= 65535:
        return None
    try:
        ip = ipaddress.ip_address(observed[0])
    except ValueError:
        return None
    return f"/ip{ip.version}/{ip}/tcp/{port}"


def verdict(dialled_and_seen: Sequence[bool]) -> Reachability:
    """Public when at least one peer's dial-back was seen arriving; else private."""
    return Reachability.PUBLIC if any(dialled_and_seen) else Reachability.PRIVATE


def listen_port(listening: Sequence[str]) -> int | None:
    """The TCP port this node listens on (the first address that has one)."""
    for addr in listening:
        try:
            return int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))
        except Exception:  # an address without tcp: try the next
            continue
    return None


def _is_relayed(stream: Any) -> bool:
    return stream_link_kind(stream) is LinkKind.RELAYED


def _observed(stream: Any) -> tuple[str, int] | None:
    try:
        return stream.muxed_conn.get_remote_address()  # type: ignore[no-any-return]
    except Exception:
        return None


def inbound_from(host: Any, peer: Any) -> set[int]:
    """Ids of the inbound connections ``host`` holds from ``peer``."""
    from libp2p.rcmgr import Direction

    return {id(conn) for conn in host.get_network().get_connections(peer)
            if getattr(conn, "direction", None) == Direction.INBOUND}


class DialbackServer:
    """Answers dial-back requests on a libp2p host (see the module docstring's rules)."""

    def __init__(self, host: Any, federation: str | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``federation``: the one whose members it answers (None: any, as a public relay)."""
        self.host, self.federation, self.clock = host, federation, clock
        # when each requester, and each address, was last dialled back: a requester with many
        # peer ids at one IP still gets one dial-back per address and gap
        self.last: dict[str, float] = {}
        self.slots = trio.Semaphore(PARALLEL)
        self.counts = {code.value: 0 for code in DialbackCode}

    def _refusal(self, stream: Any, requester: str, target: str | None) -> str | None:
        if _is_relayed(stream):
            return "asked over a relay"
        if target is None:
            return "the request's IP is unknown"
        now = self.clock()
        keys = (requester, target)
        if any(now - self.last.get(key, -REQUESTER_GAP) < REQUESTER_GAP for key in keys):
            return f"dialled back less than {REQUESTER_GAP:.0f} s ago"
        if len(self.last) >= MAX_REMEMBERED:  # forget the oldest: bounded
            for old in sorted(self.last, key=self.last.__getitem__)[:MAX_REMEMBERED // 4]:
                del self.last[old]
        self.last.update(dict.fromkeys(keys, now))
        return None

    async def on_stream(self, stream: Any) -> None:
        """One request: read it, dial back (or refuse), answer; every step under a deadline."""
        requester = str(stream.muxed_conn.peer_id)
        held = None
        try:
            with trio.fail_after(ASK_SECONDS):
                request, _ = await read_frame(stream, DialbackRequest, FRAME_BYTES)
                fed = request.federation
                target = dialback_target(_observed(stream), request.port)
                refusal = "another federation" if self.federation not in (None, fed) \
                    else self._refusal(stream, requester, target)
                if refusal is not None:
                    reply = DialbackReply(fed, DialbackCode.REFUSED, refusal)
                else:
                    async with self.slots:
                        held, reply = await self._dial(fed, requester, str(target))
                self.counts[reply.code.value] += 1
                await write_frame(stream, reply, FRAME_BYTES)
            log.info("dial-back for %s: %s %s", requester, reply.code.value, reply.reason)
            if held is not None:
                await trio.sleep(HOLD_SECONDS)  # the requester looks for it meanwhile
        except Exception as error:  # a bad frame, a deadline, a closed stream: logged, dropped
            log.info("dial-back request from %s dropped: %s: %s", requester,
                     type(error).__name__, error)
        finally:
            if held is not None:
                with trio.move_on_after(2):
                    await held.close()
            with trio.move_on_after(2):
                await stream.close()

    async def _dial(self, fed: str, requester: str, target: str) -> tuple[Any, DialbackReply]:
        from libp2p.peer.id import ID

        try:
            with trio.fail_after(DIAL_SECONDS):
                conn = await self.host.get_network().dial_addr(
                    multiaddr.Multiaddr(target), ID.from_base58(requester))
        except Exception as error:
            return None, DialbackReply(fed, DialbackCode.FAILED,
                                       f"{target}: {type(error).__name__}"[:256])
        return conn, DialbackReply(fed, DialbackCode.DIALLED, target)


async def ask(host: Any, federation: str, peer: str, port: int) -> tuple[DialbackCode, bool]:
    """Ask ``peer`` (connected or dialable from the peerstore) to dial us back at ``port``:
    its answer, and whether its new connection was seen arriving."""
    from libp2p.peer.id import ID

    pid = ID.from_base58(peer)
    before = inbound_from(host, pid)
    stream = await host.new_stream(pid, [PROTO_DIALBACK])
    try:
        await write_frame(stream, DialbackRequest(federation, port), FRAME_BYTES)
        reply, _ = await read_frame(stream, DialbackReply, FRAME_BYTES)
    finally:
        with trio.move_on_after(2):
            await stream.close()
    seen = False
    if reply.code is DialbackCode.DIALLED:
        with trio.move_on_after(SEEN_SECONDS):
            while not (seen := bool(inbound_from(host, pid) - before)):
                await trio.sleep(0.05)
    return reply.code, seen


async def probe(host: Any, federation: str, servers: Sequence[tuple[str, str]],
                listening: Sequence[str]) -> tuple[Reachability, dict[str, str]]:
    """Ask up to :data:`SERVERS` of ``servers`` ((peer id, address)) at once; the verdict and,
    per peer asked, what came of it."""
    port = listen_port(listening)
    outcomes: dict[str, str] = {}
    seen: list[bool] = []
    if port is None:
        return Reachability.PRIVATE, outcomes

    async def one(peer: str, addr: str) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        try:
            with trio.fail_after(ASK_SECONDS):
                maddr = multiaddr.Multiaddr(addr).decapsulate(multiaddr.Multiaddr(f"/p2p/{peer}"))
                await host.connect(PeerInfo(ID.from_base58(peer), [maddr]))
                code, came = await ask(host, federation, peer, port)
        except Exception as error:  # unreachable, no answer in time, a bad frame
            outcomes[peer] = f"no answer ({type(error).__name__})"
            return
        seen.append(came)
        outcomes[peer] = code.value if code is not DialbackCode.DIALLED or came \
            else "said dialled, but no connection came"

    async with trio.open_nursery() as nursery:
        for peer, addr in list(servers)[:SERVERS]:
            nursery.start_soon(one, peer, addr)
    found = verdict(seen)
    log.info("reachability: %s (dial-backs: %s)", found.value,
             ", ".join(f"{p[-8:]} {o}" for p, o in outcomes.items()) or "none asked")
    return found, outcomes


__all__ = ["PROTO_DIALBACK", "DialbackServer", "ask", "dialback_target", "inbound_from",
           "listen_port", "probe", "verdict"]
