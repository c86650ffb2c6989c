"""Routed peers: PeerNet dials a routed peer through its relay only (real libp2p hosts)."""

from __future__ import annotations

from pathlib import Path

import multiaddr
import pytest
import trio

from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.host import make_host
from gossipfl.gossip.peers import PeerNet, Traffic
from gossipfl.scenario.relay import LinkFaults, Relay

PROTO = "/gossipfl-test/echo/1"


async def _echo(stream) -> None:  # type: ignore[no-untyped-def]
    try:
        data = await stream.read(5)
        await stream.write(data)
    finally:
        await stream.close()


async def _ping(net: PeerNet, peer: str, addrs: tuple[str, ...]) -> bytes:
    channel = await net.open(peer, addrs, PROTO)
    try:
        await channel.stream.write(b"hello")
        return await channel.stream.read(5)
    finally:
        await channel.close()


def test_a_routed_peer_is_reached_through_its_relay_only(tmp_path: Path) -> None:
    a_id, _ = load_or_create_identity(tmp_path / "a.key")
    b_id, _ = load_or_create_identity(tmp_path / "b.key")
    b_peer = str(b_id.peer_id)
    seen: dict[str, object] = {}

    async def main() -> None:
        with trio.fail_after(30):
            host_a, listen_a = make_host(a_id, ["/ip4/127.0.0.1/tcp/0"])
            host_b, listen_b = make_host(b_id, ["/ip4/127.0.0.1/tcp/0"])
            async with host_a.run(listen_addrs=listen_a), host_b.run(listen_addrs=listen_b), \
                    trio.open_nursery() as nursery:
                host_b.set_stream_handler(PROTO, _echo)
                b_addrs = tuple(str(a) for a in host_b.get_addrs())  # what B advertises
                b_port = int(multiaddr.Multiaddr(b_addrs[0]).value_for_protocol("tcp"))
                relay = Relay("a->b", b_port)
                relay_port = await nursery.start(relay.run)
                route = f"/ip4/127.0.0.1/tcp/{relay_port}/p2p/{b_peer}"
                net = PeerNet(host_a, Traffic(), {b_peer: route})

                # B's own addresses are offered (as a heartbeat would), the relay is used
                assert await _ping(net, b_peer, b_addrs) == b"hello"
                assert relay.stats.accepted == 1 and relay.stats.bytes_to_target > 0
                store = host_a.get_peerstore()
                # identify (or anyone) may add B's real address later; a redial still goes
                # through the relay
                store.add_addrs(b_id.peer_id, [multiaddr.Multiaddr(b_addrs[0]).decapsulate(
                    multiaddr.Multiaddr(f"/p2p/{b_peer}"))], 3600)
                await host_a.disconnect(b_id.peer_id)
                assert await _ping(net, b_peer, b_addrs) == b"hello"
                assert relay.stats.accepted == 2
                assert [str(a) for a in store.addrs(b_id.peer_id)] == [
                    f"/ip4/127.0.0.1/tcp/{relay_port}"]

                # a cut link fails the dial rather than falling back to B's real address
                relay.set_faults(LinkFaults(cut=True))
                await trio.sleep(0.2)  # the reset reaches host A
                with trio.move_on_after(15):
                    try:
                        seen["cut"] = await _ping(net, b_peer, b_addrs)
                    except Exception as error:
                        seen["cut"] = type(error).__name__
                seen["refused"] = relay.stats.refused
                seen["resets"] = relay.stats.resets
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert seen["cut"] != b"hello", "the cut link was bypassed"
    assert seen["resets"] == 1
    assert seen["refused"] >= 1  # the redial went to the relay, which refused it


def test_routes_must_parse() -> None:
    with pytest.raises(ValueError, match="Invalid MultiAddr 'not an address'"):
        PeerNet(None, Traffic(), {"Qm": "not an address"})  # type: ignore[arg-type]


@pytest.mark.parametrize("identify", [True, False])
def test_a_host_without_identify_never_starts_one_and_still_talks(tmp_path: Path,
                                                                  identify: bool) -> None:
    from libp2p.identity.identify.identify import ID as IDENTIFY

    a_id, _ = load_or_create_identity(tmp_path / "a.key")
    b_id, _ = load_or_create_identity(tmp_path / "b.key")
    asked: list[str] = []

    async def counted(stream) -> None:  # type: ignore[no-untyped-def]
        asked.append(str(stream.muxed_conn.peer_id))
        await stream.reset()

    async def main() -> bytes:
        with trio.fail_after(30):
            host_a, listen_a = make_host(a_id, ["/ip4/127.0.0.1/tcp/0"], identify=identify)
            host_b, listen_b = make_host(b_id, ["/ip4/127.0.0.1/tcp/0"], identify=False)
            async with host_a.run(listen_addrs=listen_a), host_b.run(listen_addrs=listen_b):
                host_b.set_stream_handler(PROTO, _echo)
                host_b.set_stream_handler(IDENTIFY, counted)  # who asks B to identify itself
                b_addrs = tuple(str(a) for a in host_b.get_addrs())
                answer = await _ping(PeerNet(host_a, Traffic()), str(b_id.peer_id), b_addrs)
                await trio.sleep(0.5)  # an identify A started would have reached B by now
                return answer

    assert trio.run(main) == b"hello"
    # py-libp2p's host asks on connecting (and again if refused); one without identify never
    assert set(asked) == ({str(a_id.peer_id)} if identify else set())
