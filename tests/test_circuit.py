"""Circuit relay v2 in the node's transport (gossipfl/gossip/circuit.py, PeerNet) and the
``[relay]`` config (gossipfl/relay_config.py).

Root-free: the pure parts, and three libp2p hosts on loopback (a relay, a "private" member that
announces only its relayed address, a dialer), so the relayed path is the only one the dialer is
given. Real NAT is in tests/test_natlab_nodes.py (root)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.abc import INetStream
from libp2p.security.noise import io as noise_io

from gossipfl.config import ConfigError, NodeConfig, from_dict
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.circuit import (
    CircuitError,
    Circuits,
    CountingRelay,
    LinkKind,
    announced,
    circuit_addr,
    circuit_relay,
    is_circuit,
    link_kind,
    relay_limits,
    split_addrs,
    usable_circuits,
)
from gossipfl.gossip.host import make_host
from gossipfl.gossip.peers import Channel, PeerNet, Traffic
from gossipfl.relay_config import (
    Reachability,
    RelayConfig,
    check_relay,
    concrete_listen,
    relay_address,
    relay_candidates,
)

RELAY = "12D3KooWJCxzLo186KUwzw9SMhoxRFq4UEGWiBgrGw4fiivMaShx"
SELF = "12D3KooWNFtpuW3sXv3Tdi4qm6DWyrBxbB4kpm2wrgNuvC2ZMw5N"
RELAY_ADDR = f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}"
ECHO = "/gossipfl-test/echo/1"


# -- config ----------------------------------------------------------------------------------------

def test_relay_config_defaults_parse_and_limits() -> None:
    config = from_dict(NodeConfig, {"relay": {"serve": True, "reservations": 4,
                                              "circuit_bytes": 1 << 20,
                                              "circuit_seconds": 60}})
    assert config.relay.serve and config.relay.reachable is Reachability.PUBLIC
    limits = relay_limits(config.relay)
    assert (limits.max_reservations, limits.data, limits.duration) == (4, 1 << 20, 60)
    assert limits.max_circuit_conns == config.relay.circuits_per_peer
    private = from_dict(NodeConfig, {"bootstrap": [RELAY_ADDR],
                                     "relay": {"reachable": "private"}})
    assert private.relay.private and private.relay.reachable is Reachability.PRIVATE
    assert NodeConfig().relay == RelayConfig()  # off unless asked


@pytest.mark.parametrize(("relay", "top", "says"), [
    ({"reachable": "hidden"}, {}, "relay.reachable must be"),
    ({"reservations": 0}, {}, "relay.reservations must be a positive integer"),
    ({"circuit_seconds": -1}, {}, "relay.circuit_seconds must be a positive integer"),
    ({"circuit_bytes": 1000}, {}, "relay.circuit_bytes must be at least 65536"),
    ({"check_seconds": 0}, {}, "relay.check_seconds must be positive"),
    ({"serve": True, "reachable": "private", "use": [RELAY_ADDR]}, {},
     "relay.serve needs a node that can be dialled"),
    ({"use": [f"{RELAY_ADDR}/p2p-circuit/p2p/{SELF}"]}, {}, "is a relayed address"),
    ({"use": ["/ip4/198.18.0.1/tcp/4001"]}, {}, "PEER_ID"),
    ({"use": ["not an address"]}, {}, "is not a multiaddr"),
    ({"use": [f"/ip4/0.0.0.0/tcp/4001/p2p/{RELAY}"]}, {}, "unspecified address"),
    ({"reachable": "private"}, {}, "needs a relay"),
    ({"serve": True}, {"listen": ["/ip4/0.0.0.0/tcp/4001"]}, "needs a concrete IP"),
    ({"hole_punch": True}, {"listen": ["/ip4/0.0.0.0/tcp/4001"]}, "needs a concrete IP"),
])
def test_bad_relay_config_is_refused_with_a_clear_message(
        relay: dict[str, Any], top: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        from_dict(NodeConfig, {**top, "relay": relay})


def test_relay_candidates_come_from_use_else_the_bootstrap_list() -> None:
    other = f"/ip4/198.18.0.2/tcp/4001/p2p/{SELF}"
    assert relay_candidates(RelayConfig(use=(RELAY_ADDR,)), [other]) == [(RELAY, RELAY_ADDR)]
    assert relay_candidates(RelayConfig(), [other, RELAY_ADDR]) == [(SELF, other),
                                                                    (RELAY, RELAY_ADDR)]
    # a bootstrap entry that cannot be a relay is skipped, not fatal
    assert relay_candidates(RelayConfig(), ["/ip4/1.2.3.4/tcp/1"]) == []
    assert relay_address(RELAY_ADDR, "x") == (RELAY, RELAY_ADDR)
    assert concrete_listen(["/ip4/0.0.0.0/tcp/1", "/ip4/10.0.0.1/tcp/1"])
    assert not concrete_listen(["/ip4/0.0.0.0/tcp/1", "/ip6/::/tcp/1"])
    check_relay(RelayConfig(serve=True), ["/ip4/127.0.0.1/tcp/0"], [])  # no error


# -- addresses -------------------------------------------------------------------------------------

def test_relayed_addresses_are_built_split_and_filtered() -> None:
    relayed = circuit_addr(RELAY_ADDR, SELF)
    assert relayed == f"{RELAY_ADDR}/p2p-circuit/p2p/{SELF}"
    assert is_circuit(relayed) and not is_circuit(RELAY_ADDR)
    assert circuit_relay(relayed) == RELAY and circuit_relay(RELAY_ADDR) is None
    assert circuit_relay(f"/p2p-circuit/p2p/{SELF}") is None  # names no relay
    direct = "/ip4/10.66.0.2/tcp/4001"
    assert split_addrs([direct, relayed]) == ((direct,), (relayed,))
    # a relay does not dial through itself; a malformed relayed address is not dialled
    assert usable_circuits([direct, relayed], SELF) == (relayed,)
    assert usable_circuits([relayed, f"/p2p-circuit/p2p/{SELF}"], RELAY) == ()
    # what a node signs: a private one its relayed addresses only
    assert announced([direct], [relayed], private=True) == [relayed]
    assert announced([direct], [], private=False) == [direct]
    assert link_kind([f"/p2p/{RELAY}/p2p-circuit/p2p/{SELF}"]) is LinkKind.RELAYED
    assert link_kind(["/ip4/1.2.3.4/tcp/5"]) is LinkKind.DIRECT


# -- three hosts on loopback -----------------------------------------------------------------------

class TamperingRelay(CountingRelay):
    """A relay that flips one bit in every chunk it relays after the first 4 KiB (the Noise
    handshake passes; the data after it is altered)."""

    async def _read_stream_with_retry(self, stream: INetStream,
                                      max_retries: int = 3) -> bytes | None:
        before = self.relayed_bytes
        data = await super()._read_stream_with_retry(stream, max_retries)
        if data and before > 4096:
            data = bytes([data[0] ^ 0x01]) + data[1:]
        return data


class DroppingRelay(CountingRelay):
    """A relay that forwards the first 4 KiB, then holds everything (a black hole)."""

    async def _read_stream_with_retry(self, stream: INetStream,
                                      max_retries: int = 3) -> bytes | None:
        if self.relayed_bytes > 4096:
            await trio.sleep_forever()
        return await super()._read_stream_with_retry(stream, max_retries)


async def _echo(channel: Channel, got: list[bytes]) -> None:
    with trio.move_on_after(10):
        (size,) = struct.unpack(">I", await _read_exactly(channel, 4))
        payload = await _read_exactly(channel, size)
        got.append(payload)
        await channel.stream.write(struct.pack(">I", size) + payload)


async def _read_exactly(channel: Channel, n: int) -> bytes:
    data = b""
    for _ in range(n + 1):  # each read returns at least one byte, or ends the stream
        if len(data) >= n:
            break
        chunk = await channel.stream.read(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


def _relayed_echo(tmp_path: Path, payload: bytes,
                  relay_class: type[CountingRelay] = CountingRelay,
                  wait: float = 20.0) -> dict[str, Any]:
    keys = {name: load_or_create_identity(tmp_path / f"{name}.key")[0]
            for name in ("relay", "private", "dialer")}
    found: dict[str, Any] = {"got": []}

    async def main() -> None:
        hosts = {name: make_host(identity, ["/ip4/127.0.0.1/tcp/0"])
                 for name, identity in keys.items()}
        relay_host, relay_listen = hosts["relay"]
        relay_net = PeerNet(relay_host, Traffic(), listen=relay_listen, circuits=Circuits(
            relay_host, RelayConfig(serve=True), relay_protocol=relay_class))
        async with relay_net.running() as relay_addrs, trio.open_nursery() as nursery:
            relay_addr = f"{relay_addrs[0]}"
            relay_id = str(keys["relay"].peer_id)
            private_host, private_listen = hosts["private"]
            private_config = RelayConfig(reachable=Reachability.PRIVATE, use=(relay_addr,))
            private_net = PeerNet(private_host, Traffic(), listen=private_listen,
                                  circuits=Circuits(private_host, private_config,
                                                    [(relay_id, relay_addr)]))
            dialer_host, dialer_listen = hosts["dialer"]
            # no relay role of its own: it makes a dialer when it first needs one
            dialer_net = PeerNet(dialer_host, Traffic(), listen=dialer_listen)
            async with private_net.running() as private_addrs, \
                    dialer_net.running():
                found["private_addrs"] = private_addrs
                found["relay_addr"] = relay_addr

                async def serve(channel: Channel) -> None:
                    await _echo(channel, found["got"])

                private_net.serve(ECHO, serve)
                with trio.move_on_after(wait):  # the dialer's deadline, as a node's
                    try:
                        channel = await dialer_net.open(str(keys["private"].peer_id),
                                                        tuple(private_addrs), ECHO)
                        await channel.stream.write(struct.pack(">I", len(payload)) + payload)
                        (size,) = struct.unpack(">I", await _read_exactly(channel, 4))
                        found["back"] = await _read_exactly(channel, size)
                    except Exception as error:
                        found["error"] = f"{type(error).__name__}: {error}"
                found["dialer"] = dialer_net.relay_summary()
                found["private"] = private_net.relay_summary()
                found["relay"] = relay_net.relay_summary()
                found["relay_keeps_private"] = relay_net.circuits.keep(  # type: ignore[union-attr]
                    str(keys["private"].peer_id))
                found["private_keeps_relay"] = private_net.circuits.keep(  # type: ignore[union-attr]
                    relay_id, certified=False)  # its own relay, member or not
                found["relay_keeps_stranger"] = relay_net.circuits.keep(  # type: ignore[union-attr]
                    str(keys["private"].peer_id), certified=False)
                found["reaper_sees"] = set(private_net.open_streams())
                found["ids"] = {name: str(k.peer_id) for name, k in keys.items()}
            nursery.cancel_scope.cancel()

    async def bounded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(bounded)
    return found


def test_a_private_member_is_reached_through_the_relay_end_to_end(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 256  # 64 KiB
    found = _relayed_echo(tmp_path, payload)
    ids = found["ids"]
    # the private member announced its relayed address only
    assert found["private_addrs"] == [circuit_addr(found["relay_addr"], ids["private"])]
    assert "error" not in found, found.get("error")
    assert found["back"] == payload and found["got"] == [payload]
    # the dialer went through the relay (its one way in), which carried at least the payload
    # both ways, as ciphertext (Noise adds bytes)
    assert found["dialer"]["relayed_dials"] == {"ok": 1, "failed": 0}
    assert found["dialer"]["link_streams"][ids["private"]] == {LinkKind.RELAYED.value: 1}
    assert found["private"]["link_streams"][ids["dialer"]] == {LinkKind.RELAYED.value: 1}
    # each end noted when it first exchanged with the other (seconds from its own start)
    assert found["dialer"]["first_contact"][ids["private"]] >= 0
    assert found["private"]["first_contact"][ids["dialer"]] >= 0
    assert found["relay"]["relayed_bytes"] > 2 * len(payload)
    assert found["private"]["reserved_on"] == [ids["relay"]]
    assert found["relay"]["reservations_held"] == 1
    # the reservation's connection is never reaped, on either side
    assert found["relay_keeps_private"] and found["private_keeps_relay"]
    assert not found["relay_keeps_stranger"]  # a stranger's reservation is no reason to stay
    assert ids["relay"] not in found["reaper_sees"]


def test_a_relay_that_alters_bytes_is_caught_by_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay carries Noise ciphertext: a flipped bit fails the receiver's authentication,
    the connection ends, and nothing altered is delivered (nor any payload at all)."""
    refused: list[str] = []
    decrypt = noise_io.NoiseTransportReadWriter.decrypt

    def watched(self: Any, data: bytes) -> bytes:
        try:
            return decrypt(self, data)
        except Exception as error:
            refused.append(type(error).__name__)
            raise

    monkeypatch.setattr(noise_io.NoiseTransportReadWriter, "decrypt", watched)
    payload = bytes(range(256)) * 256
    found = _relayed_echo(tmp_path, payload, TamperingRelay)
    assert found["relay"]["relayed_bytes"] > 4096  # it did tamper
    assert "NoiseInvalidMessage" in refused  # the far end's Noise refused the altered frame
    assert found["got"] == []  # the private member's handler never saw the payload
    assert "back" not in found and "error" in found


def test_a_relay_that_drops_bytes_delivers_nothing(tmp_path: Path) -> None:
    """A relay that stops forwarding: the exchange ends at the dialer's deadline (a node's
    request timeout, as for any peer that stops answering) and nothing is delivered."""
    payload = bytes(range(256)) * 256
    found = _relayed_echo(tmp_path, payload, DroppingRelay, wait=3.0)
    assert found["dialer"]["relayed_dials"] == {"ok": 1, "failed": 0}  # the circuit was made
    assert found["got"] == [] and "back" not in found


def test_a_private_member_without_a_relay_says_so(tmp_path: Path) -> None:
    identity, _ = load_or_create_identity(tmp_path / "a.key")

    async def main() -> None:
        host, listen = make_host(identity, ["/ip4/127.0.0.1/tcp/0"])
        # a closed port: nothing serves there
        dead = f"/ip4/127.0.0.1/tcp/9/p2p/{RELAY}"
        net = PeerNet(host, Traffic(), listen=listen, circuits=Circuits(
            host, RelayConfig(reachable=Reachability.PRIVATE, use=(dead,)), [(RELAY, dead)]))
        with trio.fail_after(40):
            async with net.running():
                pytest.fail("a private member with no reservation must not start")

    with pytest.raises((CircuitError, BaseExceptionGroup)) as caught:
        trio.run(main)
    leaves = _leaves(caught.value)
    assert [type(e) for e in leaves] == [CircuitError]
    assert "no relay accepted a reservation" in str(leaves[0])


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def test_a_private_member_reserves_again_when_its_relay_link_is_lost(tmp_path: Path) -> None:
    keys = {name: load_or_create_identity(tmp_path / f"{name}.key")[0]
            for name in ("relay", "private")}
    found: dict[str, Any] = {}

    async def main() -> None:
        relay_host, relay_listen = make_host(keys["relay"], ["/ip4/127.0.0.1/tcp/0"])
        relay_net = PeerNet(relay_host, Traffic(), listen=relay_listen,
                            circuits=Circuits(relay_host, RelayConfig(serve=True)))
        async with relay_net.running() as relay_addrs:
            relay_id = str(keys["relay"].peer_id)
            host, listen = make_host(keys["private"], ["/ip4/127.0.0.1/tcp/0"])
            config = RelayConfig(reachable=Reachability.PRIVATE, use=(relay_addrs[0],),
                                 check_seconds=0.2)
            net = PeerNet(host, Traffic(), listen=listen,
                          circuits=Circuits(host, config, [(relay_id, relay_addrs[0])]))
            async with net.running():
                circuits = net.circuits
                assert circuits is not None
                found["first"] = circuits.reservations_made
                await net.disconnect(relay_id)  # the link (and with it the reservation) lost
                found["lost"] = not host.get_network().get_connections(
                    keys["relay"].peer_id)
                for _ in range(100):  # bounded: 100 looks, 0.1 s apart
                    if circuits.reservations_made > found["first"]:
                        break
                    await trio.sleep(0.1)
                found["again"] = circuits.reservations_made
                found["held"] = relay_net.relay_summary()["reservations_held"]
                found["relay_keeps"] = relay_net.circuits.keep(  # type: ignore[union-attr]
                    str(keys["private"].peer_id))

    async def bounded() -> None:
        with trio.fail_after(40):
            await main()

    trio.run(bounded)
    assert found["first"] == 1 and found["lost"]
    assert found["again"] == 2  # linked and reserved again by itself
    assert found["held"] == 1 and found["relay_keeps"]  # the relay holds it (connected again)


async def _echo_once(net: PeerNet, peer: str, addrs: list[str], payload: bytes) -> bool:
    channel = await net.open(peer, tuple(addrs), ECHO)
    await channel.stream.write(struct.pack(">I", len(payload)) + payload)
    (size,) = struct.unpack(">I", await _read_exactly(channel, 4))
    return await _read_exactly(channel, size) == payload


def private_member_net(host_listen: tuple[Any, Any], relay: Any, relay_addr: str) -> PeerNet:
    """A private member's PeerNet (``make_host``'s host and listen addresses) that reserves a
    slot on the relay of identity ``relay`` at ``relay_addr``."""
    host, listen = host_listen
    return PeerNet(host, Traffic(), listen=listen, circuits=Circuits(host, RelayConfig(
        reachable=Reachability.PRIVATE, use=(relay_addr,)), [(str(relay.peer_id), relay_addr)]))


def test_one_circuits_end_leaves_another_to_the_same_member_open(tmp_path: Path) -> None:
    """Two members reach a private one through the relay; one of the two links is closed. In
    py-libp2p 0.8.1 the relay then also closed the other circuit (its circuits are filed by
    peer id); CountingRelay confines each circuit's end to itself."""
    keys = {name: load_or_create_identity(tmp_path / f"{name}.key")[0]
            for name in ("relay", "private", "a", "c")}
    found: dict[str, Any] = {"got": []}

    async def main() -> None:
        hosts = {name: make_host(k, ["/ip4/127.0.0.1/tcp/0"]) for name, k in keys.items()}
        relay_host, relay_listen = hosts["relay"]
        relay_net = PeerNet(relay_host, Traffic(), listen=relay_listen,
                            circuits=Circuits(relay_host, RelayConfig(serve=True)))
        async with relay_net.running() as relay_addrs:
            private_net = private_member_net(hosts["private"], keys["relay"], relay_addrs[0])
            a_net = PeerNet(hosts["a"][0], Traffic(), listen=hosts["a"][1])
            c_net = PeerNet(hosts["c"][0], Traffic(), listen=hosts["c"][1])
            async with private_net.running() as private_addrs, a_net.running(), \
                    c_net.running():
                async def serve(channel: Channel) -> None:
                    await _echo(channel, found["got"])

                private_net.serve(ECHO, serve)
                private = str(keys["private"].peer_id)
                payload = b"x" * 1000
                found["a"] = await _echo_once(a_net, private, private_addrs, payload)
                found["c"] = await _echo_once(c_net, private, private_addrs, payload)
                await private_net.disconnect(str(keys["a"].peer_id))  # a's link ends
                for _ in range(10):  # bounded: 10 looks, 0.1 s apart (the relay's clean-up)
                    if not a_net.host.get_network().get_connections(keys["private"].peer_id):
                        break
                    await trio.sleep(0.1)
                await trio.sleep(0.5)
                found["c_still"] = len(c_net.host.get_network().get_connections(
                    keys["private"].peer_id))
                with trio.move_on_after(10):
                    found["c_again"] = await _echo_once(c_net, private, private_addrs, payload)
                found["c_dials"] = c_net.relay_summary()["relayed_dials"]

    async def bounded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(bounded)
    assert found["a"] and found["c"]
    assert found["c_still"] == 1  # c's circuit outlived a's
    assert found.get("c_again") is True and found["c_dials"] == {"ok": 1, "failed": 0}
