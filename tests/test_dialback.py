"""Reachability found by dial-back (gossipfl/gossip/dialback.py, ``[relay] reachable = "auto"``):
the pure rules, the wire messages, and real libp2p hosts on loopback, against honest peers and
peers that lie or refuse. Behind a real NAT: tests/test_natlab_nodes.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from gossipfl.config_io import ConfigError
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip import dialback
from gossipfl.gossip.codes import DialbackCode
from gossipfl.gossip.dialback import (
    PROTO_DIALBACK,
    DialbackServer,
    ask,
    dialback_target,
    listen_port,
    probe,
    verdict,
)
from gossipfl.gossip.framing import read_frame, write_frame
from gossipfl.gossip.host import make_host
from gossipfl.gossip.wire import (
    DialbackReply,
    DialbackRequest,
    WireError,
    decode_frame,
    encode_frame,
)
from gossipfl.relay_config import Reachability, RelayConfig

FED = "fed-a"


def test_the_target_is_the_requesters_own_ip_at_its_port() -> None:
    assert dialback_target(("198.18.0.10", 51234), 4001) == "/ip4/198.18.0.10/tcp/4001"
    assert dialback_target(("::1", 5), 4001) == "/ip6/::1/tcp/4001"
    assert dialback_target(None, 4001) is None
    assert dialback_target(("not-an-ip", 1), 4001) is None
    assert dialback_target(("10.0.0.1", 1), 0) is None
    assert listen_port(["/ip4/1.2.3.4/udp/9", "/ip4/1.2.3.4/tcp/4002"]) == 4002
    assert listen_port(["/ip4/1.2.3.4/tcp/4001"]) == 4001
    assert listen_port([]) is None


def test_public_only_when_a_dial_back_was_seen() -> None:
    assert verdict([]) is Reachability.PRIVATE
    assert verdict([False, False]) is Reachability.PRIVATE
    assert verdict([False, True]) is Reachability.PUBLIC


def test_the_wire_refuses_a_bad_port_or_code() -> None:
    request = DialbackRequest(FED, 4001)
    assert decode_frame(encode_frame(request), DialbackRequest) == request
    reply = DialbackReply(FED, DialbackCode.FAILED, "no route")
    assert decode_frame(encode_frame(reply), DialbackReply) == reply
    with pytest.raises(WireError):
        decode_frame(encode_frame(DialbackRequest(FED, 0)), DialbackRequest)
    with pytest.raises(WireError):
        decode_frame(encode_frame(DialbackReply(FED, "maybe", "")), DialbackReply)  # type: ignore[arg-type]


def test_auto_is_configured_like_private() -> None:
    assert RelayConfig(reachable="auto").may_be_private
    assert not RelayConfig(reachable="auto").private
    assert RelayConfig(reachable="auto", announce_listen=True).announce_listen
    with pytest.raises(ConfigError, match="public"):
        RelayConfig(reachable="auto", serve=True)
    with pytest.raises(ConfigError, match="auto"):
        RelayConfig(reachable="sometimes")


def _hosts(tmp_path: Path, *names: str) -> dict[str, tuple[Any, list[Any]]]:
    return {n: make_host(load_or_create_identity(tmp_path / f"{n}.key")[0],
                         ["/ip4/127.0.0.1/tcp/0"], identify=False) for n in names}


async def _connect(a: Any, b: Any) -> None:
    await a.connect(PeerInfo(b.get_id(), b.get_addrs()))


def test_a_listening_node_is_found_public_and_a_wrong_port_private(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, "server", "node")

    async def main() -> dict[str, Any]:
        (server, s_listen), (node, n_listen) = hosts["server"], hosts["node"]
        async with server.run(s_listen), node.run(n_listen):
            answering = DialbackServer(server, FED)
            server.set_stream_handler(PROTO_DIALBACK, answering.on_stream)
            listening = [str(a) for a in node.get_addrs()]
            peer = (str(server.get_id()), f"{server.get_addrs()[0]}/p2p/{server.get_id()}")
            found = await probe(node, FED, [peer], listening)
            # asked again at once: refused (a requester is dialled back once per gap)
            again = await ask(node, FED, peer[0], listen_port(listening) or 0)
            answering.last.clear()
            # a port nothing listens on: the server tries and fails; nothing arrives
            closed = await ask(node, FED, peer[0], 1)
            return {"found": found, "again": again, "closed": closed,
                    "counts": dict(answering.counts)}

    got = trio.run(main)
    reachability, outcomes = got["found"]
    assert reachability is Reachability.PUBLIC
    assert list(outcomes.values()) == ["dialled"]
    assert got["again"] == (DialbackCode.REFUSED, False)
    assert got["closed"] == (DialbackCode.FAILED, False)
    assert got["counts"] == {"dialled": 1, "failed": 1, "refused": 1}


def test_a_peer_that_says_dialled_without_dialling_cannot_make_a_node_public(
        tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, "liar", "node")

    asked: list[int] = []

    async def lie(stream: Any) -> None:
        request, _ = await read_frame(stream, DialbackRequest, 1024)
        asked.append(request.port)
        await write_frame(stream, DialbackReply(FED, DialbackCode.DIALLED, "trust me"), 1024)
        await stream.close()

    async def main() -> tuple[Reachability, dict[str, str]]:
        (liar, l_listen), (node, n_listen) = hosts["liar"], hosts["node"]
        async with liar.run(l_listen), node.run(n_listen):
            liar.set_stream_handler(PROTO_DIALBACK, lie)
            peer = (str(liar.get_id()), f"{liar.get_addrs()[0]}/p2p/{liar.get_id()}")
            return await probe(node, FED, [peer], [str(a) for a in node.get_addrs()])

    reachability, outcomes = trio.run(main)
    assert len(asked) == 1 and asked[0] > 0  # it was asked, and said it dialled
    assert reachability is Reachability.PRIVATE
    assert list(outcomes.values()) == ["said dialled, but no connection came"]


def test_many_peer_ids_at_one_address_get_one_dial_back_per_gap(tmp_path: Path) -> None:
    hosts = _hosts(tmp_path, "server", "node", "sybil")

    async def main() -> list[Any]:
        (server, s_listen), (node, n_listen), (sybil, y_listen) = (
            hosts["server"], hosts["node"], hosts["sybil"])
        async with server.run(s_listen), node.run(n_listen), sybil.run(y_listen):
            answering = DialbackServer(server, FED)
            server.set_stream_handler(PROTO_DIALBACK, answering.on_stream)
            await _connect(node, server)
            await _connect(sybil, server)
            port = listen_port([str(a) for a in node.get_addrs()]) or 0
            first = await ask(node, FED, str(server.get_id()), port)
            # another peer id at the same IP, asking for the same port: refused
            again = await ask(sybil, FED, str(server.get_id()), port)
            return [first, again]

    first, again = trio.run(main)
    assert first == (DialbackCode.DIALLED, True)
    assert again == (DialbackCode.REFUSED, False)


def test_a_server_refuses_another_federation_and_answers_garbage_with_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dialback, "ASK_SECONDS", 3.0)
    hosts = _hosts(tmp_path, "server", "node")

    async def main() -> tuple[Any, Any, dict[str, int]]:
        (server, s_listen), (node, n_listen) = hosts["server"], hosts["node"]
        async with server.run(s_listen), node.run(n_listen):
            answering = DialbackServer(server, FED)
            server.set_stream_handler(PROTO_DIALBACK, answering.on_stream)
            await _connect(node, server)
            port = listen_port([str(a) for a in node.get_addrs()]) or 0
            other = await ask(node, "fed-b", str(server.get_id()), port)
            stream = await node.new_stream(server.get_id(), [PROTO_DIALBACK])
            await stream.write(b"\x00\x00\x10\x00" + b"x" * 64)  # a 4 KiB frame announced
            from libp2p.network.stream.exceptions import StreamEOF

            left = b"?"
            with trio.move_on_after(5):
                try:
                    left = await stream.read(10)
                except StreamEOF:
                    left = b""
            return other, left, dict(answering.counts)

    other, left, counts = trio.run(main)
    assert other == (DialbackCode.REFUSED, False)
    assert left == b""  # the oversized frame: the stream closed, no answer, nothing dialled
    assert counts == {"dialled": 0, "failed": 0, "refused": 1}


def test_py_libp2ps_autonat_server_says_reachable_over_the_connection_that_asked(
        tmp_path: Path) -> None:
    """Why gossipfl has its own: py-libp2p 0.8.1's AutoNAT server "dials back" with
    ``host.connect``, which returns at once over the connection the request came on, so it
    answers OK even for an address where nothing listens."""
    from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService
    from libp2p.host.autonat.pb.autonat_pb2 import Message

    hosts = _hosts(tmp_path, "server", "node")

    async def main() -> tuple[int, bool]:
        (server, s_listen), (node, n_listen) = hosts["server"], hosts["node"]
        async with server.run(s_listen), node.run(n_listen):
            service = AutoNATService(server)
            server.set_stream_handler(AUTONAT_PROTOCOL_ID, service.handle_stream)
            await _connect(node, server)
            client = AutoNATService(node)
            # an address at the node's own IP where nothing listens
            nowhere = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/1").to_bytes()
            status, _ = await client.query_server(server.get_id(), [nowhere])
            return status, status == int(Message.OK)

    status, ok = trio.run(main)
    assert ok, f"py-libp2p's AutoNAT answered {status}: it may have been fixed; re-check"
