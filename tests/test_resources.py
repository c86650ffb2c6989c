"""The host's resource manager with the node's own limits (gossipfl/gossip/resources.py): the
limits derived from a node's configuration, and a real host pair (and crowd) on loopback."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr

from gossipfl.config import NodeConfig, ProtocolConfig, TopologyConfig
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.host import handshake_failures, make_host
from gossipfl.gossip.resources import (
    CONNECTIONS_PER_PEER,
    LIBP2P_STREAMS,
    STRANGER_CONNECTIONS,
    HostLimits,
    NodeResourceManager,
    host_limits,
    relay_host_limits,
)
from gossipfl.gossip.wire_fields import MAX_MEMBERS
from gossipfl.relay_config import RelayConfig

HELD = TProtocol("/gossipfl-test/held/1")


def test_limits_follow_the_federation_peer_streams_and_relay_roles() -> None:
    small = host_limits(NodeConfig(node_count=8, expected_members=8,
                                   protocol=ProtocolConfig(peer_streams=5)), 1 << 20)
    assert small.peer_streams == 5 + LIBP2P_STREAMS
    assert small.connections == CONNECTIONS_PER_PEER * 16 + STRANGER_CONNECTIONS  # 2 × 8 members
    assert small.inbound_streams == 16 * small.peer_streams
    assert small.streams == 2 * small.inbound_streams
    assert small.memory_bytes == 4 << 20  # the in-flight budget: four payloads
    assert small.relay_streams == 0 and not small.serving and small.relays == ()
    # a degree larger than the federation named still counts (its neighbours and late links)
    wide = host_limits(NodeConfig(node_count=2, topology=TopologyConfig(degree=10)), 1 << 20)
    assert wide.connections == CONNECTIONS_PER_PEER * 2 * (10 + 2 + 1) + STRANGER_CONNECTIONS
    # no size named: the most members a federation may have
    unknown = host_limits(NodeConfig(), 1 << 20)
    assert unknown.connections == CONNECTIONS_PER_PEER * MAX_MEMBERS + STRANGER_CONNECTIONS
    assert host_limits(NodeConfig(node_count=1000), 1 << 20) == unknown  # capped
    # a relay: a connection per reservation, a circuit's two streams within the stream budget
    serve = relay_host_limits(RelayConfig(serve=True, reservations=10, circuits_per_peer=3))
    assert serve.serving and serve.relay_streams == 3
    assert serve.connections == CONNECTIONS_PER_PEER * 10 + STRANGER_CONNECTIONS
    assert serve.inbound_streams == 10 * (16 + LIBP2P_STREAMS) + 30
    assert serve.streams == 2 * serve.inbound_streams + 30
    # a private member: its relays (named, else the bootstrap list) may carry a circuit from
    # each member (14: twice the degree and late links), or as many as a relay's default allows
    relay_id = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
    private = host_limits(NodeConfig(
        node_count=4, expected_members=4, relay=RelayConfig(reachable="private"),
        bootstrap=(f"/ip4/198.18.0.1/tcp/4001/p2p/{relay_id}",)), 1 << 20)
    assert private.relays == (relay_id,) and private.relay_streams == 16


def _held_streams(tmp_path: Path) -> dict[str, Any]:
    """A server with tiny limits; three strangers; streams held open by the server's handler."""
    ids = {n: load_or_create_identity(tmp_path / f"{n}.key")[0] for n in ("srv", "s1", "s2", "s3")}
    limits = HostLimits(connections=2, connections_per_peer=2, peer_streams=3, relay_streams=0,
                        inbound_streams=5, streams=20, memory_bytes=1 << 20)
    found: dict[str, Any] = {}

    async def main() -> None:
        hosts = {n: make_host(i, ["/ip4/127.0.0.1/tcp/0"], identify=False,
                              limits=limits if n == "srv" else None) for n, i in ids.items()}
        srv = hosts["srv"][0]
        manager = srv.get_network()._resource_manager  # type: ignore[attr-defined]
        assert isinstance(manager, NodeResourceManager)
        release = trio.Event()

        async def hold(stream: Any) -> None:
            await release.wait()
            await stream.close()

        for host, _ in hosts.values():
            host.set_stream_handler(HELD, hold)

        async def open_streams(name: str, n: int) -> list[str]:
            outcome = []
            for _ in range(n):
                try:
                    with trio.fail_after(10):  # a queued stream would wait; a refused one fails
                        stream = await hosts[name][0].new_stream(srv.get_id(), [HELD])
                        await stream.write(b"x")
                    outcome.append("ok")
                except trio.TooSlowError:
                    outcome.append("waited")
                except Exception:
                    outcome.append("refused")
            return outcome

        async def connect_s3() -> bool:
            s3 = hosts["s3"][0]
            with contextlib.suppress(Exception), trio.fail_after(10):
                await s3.connect(info_from_p2p_addr(srv.get_addrs()[0]))
            with trio.move_on_after(1):  # a refused one is closed by the server
                while ids["s3"].peer_id in srv.get_network().get_connections_map():
                    await trio.sleep(0.05)
            held = ids["s3"].peer_id in srv.get_network().get_connections_map()
            if not held:
                with contextlib.suppress(Exception):
                    await s3.disconnect(srv.get_id())
            return held

        async with hosts["srv"][0].run(hosts["srv"][1]), hosts["s1"][0].run(hosts["s1"][1]), \
                hosts["s2"][0].run(hosts["s2"][1]), hosts["s3"][0].run(hosts["s3"][1]):
            srv_addr = info_from_p2p_addr(srv.get_addrs()[0])
            for name in ("s1", "s2"):
                await hosts[name][0].connect(srv_addr)
            found["s1"] = await open_streams("s1", 4)  # its own cap is 3
            found["s2"] = await open_streams("s2", 3)  # inbound, all peers: 5
            # the server's own streams are not the crowd's to take
            with trio.fail_after(10):
                out = await srv.new_stream(hosts["s2"][0].get_id(), [HELD])
                await out.write(b"y")
            found["own_outbound"] = "ok"
            found["held"] = manager.stats()
            # a third stranger, again and again: over the connections (2)
            s3_held = []
            for _ in range(4):
                found["s3_held"] = await connect_s3()
                s3_held.append(found["s3_held"])
            found["s3_held"] = s3_held
            found["after_refusals"] = manager.stats()
            release.set()
            with trio.fail_after(10):  # the refusals' counts come back as the streams close
                while manager.stats()["inbound_streams"]:
                    await trio.sleep(0.05)
            found["again"] = await open_streams("s1", 1)  # and the server still serves
            # a stranger leaves: its place is free (no refusal kept a count)
            await hosts["s2"][0].disconnect(srv.get_id())
            with trio.fail_after(10):
                while ids["s2"].peer_id in srv.get_network().get_connections_map():
                    await trio.sleep(0.05)
            found["s3_later"] = await connect_s3()
            found["final"] = manager.stats()

    trio.run(main)
    return found


def test_the_resource_manager_refuses_a_crowds_streams_and_connections(tmp_path: Path) -> None:
    found = _held_streams(tmp_path)
    assert found["s1"] == ["ok", "ok", "ok", "refused"]  # refused at once, never queued
    assert found["s2"] == ["ok", "ok", "refused"]
    assert found["own_outbound"] == "ok"
    assert found["held"]["inbound_streams"] == 5 and found["held"]["refused_streams"] == 2
    assert found["s3_held"] == [False] * 4
    assert found["after_refusals"]["connections"] == 2  # refusals keep no count
    assert found["after_refusals"]["refused_connections"] >= 4
    assert found["again"] == ["ok"]
    assert found["s3_later"]


def test_connections_per_peer_are_counted_and_given_back() -> None:
    limits = HostLimits(connections=10, connections_per_peer=2, peer_streams=4, relay_streams=0,
                        inbound_streams=4, streams=8, memory_bytes=1 << 20)
    manager = NodeResourceManager(limits)
    peer, other = ("12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
                   "12D3KooWRzcFbkvPfLMRKechLnGYckmkY2iXiwDAAUuXoob3nKG5")
    assert manager.acquire_connection(peer) and manager.acquire_connection(peer)
    assert not manager.acquire_connection(peer)  # a third from one peer
    assert manager.acquire_connection(other) and manager.acquire_connection("")  # no peer yet
    manager.release_connection(peer)
    assert manager.acquire_connection(peer)
    assert manager.stats()["connections"] == 4 and manager.stats()["refused_connections"] == 1


@pytest.mark.parametrize("serve", [False, True])
def test_a_host_without_limits_gets_a_members_not_libp2ps_defaults(tmp_path: Path,
                                                                    serve: bool) -> None:
    identity = load_or_create_identity(tmp_path / "k.key")[0]
    limits = relay_host_limits(RelayConfig(serve=serve), members=0 if serve else MAX_MEMBERS)
    host, _ = make_host(identity, ["/ip4/127.0.0.1/tcp/0"], limits=limits if serve else None)
    network: Any = host.get_network()
    manager = network._resource_manager
    assert isinstance(manager, NodeResourceManager) and manager.host_limits == limits
    assert network._stream_semaphore is None  # refused at the limit, not queued
    assert manager.limits.max_streams == limits.streams
    assert manager.graceful_degradation is None  # never lowers the members' share


def test_connections_that_fail_the_noise_handshake_are_counted(tmp_path: Path) -> None:
    ids = {n: load_or_create_identity(tmp_path / f"{n}.key")[0] for n in ("a", "b", "c")}
    found: dict[str, Any] = {}

    async def main() -> None:
        hosts = {n: make_host(i, ["/ip4/127.0.0.1/tcp/0"], identify=False)
                 for n, i in ids.items()}
        a, b = hosts["a"][0], hosts["b"][0]
        async with a.run(hosts["a"][1]), b.run(hosts["b"][1]):
            addr = a.get_addrs()[0]
            port = int(addr.value_for_protocol("tcp"))
            # a stranger speaking no security protocol at all
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            await tcp.send_all(b"\x13/multistream/1.0.0\n\x10/plaintext/2.0.0\n" + bytes(64))
            with trio.move_on_after(10):
                await tcp.receive_some(1024)
                while not handshake_failures(a).get("inbound"):
                    await trio.sleep(0.05)
            await tcp.aclose()
            # b dials a's address expecting c there: Noise proves it is a, not c
            wrong = info_from_p2p_addr(addr.decapsulate(f"/p2p/{ids['a'].peer_id}")
                                       .encapsulate(f"/p2p/{ids['c'].peer_id}"))
            with contextlib.suppress(Exception), trio.fail_after(10):
                await b.connect(wrong)
            found["a"], found["b"] = handshake_failures(a), handshake_failures(b)

    trio.run(main)
    assert found["a"]["inbound"] >= 1 and found["a"]["outbound"] == 0
    # (py-libp2p's dialer tries again a few times: each attempt is a connection refused)
    assert found["b"]["inbound"] == 0 and found["b"]["outbound"] >= 1
