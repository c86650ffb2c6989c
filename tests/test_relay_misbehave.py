"""A public relay that tampers or drops (``[[public.faults]]`` kinds ``tamper`` and ``drop``),
without root: the configuration, the relay's command and signal, what the relay does to a
chunk once switched on, and how a node tells which relay carried a silent connection. The run
across real NAT is tests/test_e2e_relay_faults.py."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest
import trio
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from test_circuit import private_member_net

from gossipfl.config import ConfigError, from_dict
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.circuit import CircuitError, Circuits, CountingRelay, carrier_peer
from gossipfl.gossip.host import make_host
from gossipfl.gossip.peers import PeerNet, Traffic
from gossipfl.relay_config import RelayConfig
from gossipfl.scenario import relay_node, sites
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.relay_misbehave import (
    MisbehavingRelay,
    Misbehaviour,
    relay_class,
    tampered,
)
from gossipfl.scenario.sites_config import RelayFaultKind


def scenario(faults: list[dict[str, Any]], relays: int = 2) -> ScenarioConfig:
    return from_dict(ScenarioConfig, {
        "nodes": 4, "sites": [{"nodes": 2}, {"nodes": 2}],
        "public": {"relays": relays, "faults": faults}})


def test_tamper_and_drop_are_relay_faults_that_keep_the_relay_up() -> None:
    config = scenario([{"relay": 0, "kind": "tamper", "at_round": 2},
                       {"relay": 1, "kind": "drop", "at_seconds": 5.0}], relays=3)
    kinds = [f.kind for f in config.public.faults]
    assert kinds == [RelayFaultKind.TAMPER, RelayFaultKind.DROP]
    assert all(k.misbehaves for k in kinds)
    assert not RelayFaultKind.KILL.misbehaves and not RelayFaultKind.TERMINATE.misbehaves
    assert sites.misbehaving_relays(config.public) == {0: RelayFaultKind.TAMPER,
                                                       1: RelayFaultKind.DROP}


@pytest.mark.parametrize(("faults", "message"), [
    ([{"relay": 0, "kind": "flip", "at_round": 1}],
     r"public.faults.kind must be one of \['kill', 'terminate', 'tamper', 'drop'\], not 'flip'"),
    ([{"relay": 0, "kind": "tamper", "at_round": 1}, {"relay": 1, "kind": "drop",
                                                       "at_round": 1}],
     "at least one must stay faithful"),
    ([{"relay": "0", "kind": "tamper", "at_round": 1}], r"relay must be an integer"),
    ([{"relay": True, "kind": "tamper", "at_round": 1}], r"relay must be an integer"),
    ([{"relay": 0, "kind": "drop"}], "exactly one of at_round"),
])
def test_bad_misbehaviour_is_refused_clearly(faults: list[dict[str, Any]],
                                             message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        scenario(faults)


class FakeProcess:
    def __init__(self) -> None:
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return None  # a misbehaving relay stays up

    def send_signal(self, signum: int) -> None:
        self.signals.append(signum)


def test_the_runner_starts_only_the_faulty_relay_ready_to_misbehave_and_signals_it_once(
        tmp_path: Path) -> None:
    config = scenario([{"relay": 0, "kind": "drop", "at_round": 2}])
    plan = sites.lab_plan(config.sites, config.public, "t14")
    session = sites.SitesSession(config, tmp_path, plan)
    place = session.relays[0].place
    command = sites.relay_command(place, tmp_path / "k", tmp_path, 1 << 20, 60.0,
                                  RelayFaultKind.DROP)
    assert command[-2:] == ["--misbehave", "drop"]
    assert "--misbehave" not in sites.relay_command(place, tmp_path / "k", tmp_path, 1 << 20,
                                                    60.0)
    fakes = [FakeProcess(), FakeProcess()]
    for relay, fake in zip(session.relays, fakes, strict=True):
        relay.process = fake  # type: ignore[assignment]
    assert session.step([1, 1, 1, 1], 10.0) == []
    (event,) = session.step([2, 1, 1, 1], 12.0)
    assert event == {"relay": 0, "event": "drop", "max_round": 2, "seconds": 2.0}
    assert session.step([5, 5, 5, 5], 13.0) == []
    assert fakes[0].signals == [signal.SIGUSR1] and fakes[1].signals == []
    # it stays up: a misbehaving relay, not a relay down
    assert session.relays[0].misbehaving == {"kind": "drop", "max_round": 2, "seconds": 2.0}
    assert session.relays[0].down is None


def test_the_relay_process_refuses_an_unknown_misbehaviour(capsys: Any) -> None:
    with pytest.raises(SystemExit) as leaving:
        relay_node.main(["--key", "k", "--listen", "/ip4/1.2.3.4/tcp/1", "--out", "o",
                         "--misbehave", "flip"])
    assert leaving.value.code == 2
    assert "invalid choice: 'flip'" in capsys.readouterr().err


def test_tampering_flips_one_bit_of_each_chunk() -> None:
    assert tampered(b"") == b""
    assert tampered(b"\x00") == b"\x01"
    assert tampered(b"abc") == b"abb"
    assert relay_class(None) is CountingRelay
    for mode in Misbehaviour:
        cls = relay_class(mode)
        assert issubclass(cls, MisbehavingRelay) and cls.mode is mode


def _relay(mode: Misbehaviour, chunks: list[bytes], monkeypatch: pytest.MonkeyPatch
           ) -> MisbehavingRelay:
    """A relay of ``mode`` whose streams yield ``chunks`` (then the end), without a host."""
    feed = iter(chunks)

    async def read(self: Any, stream: Any, max_retries: int = 3) -> bytes | None:
        return next(feed, b"")

    monkeypatch.setattr(CircuitV2Protocol, "_read_stream_with_retry", read)
    relay = relay_class(mode).__new__(relay_class(mode))
    relay.since, relay.tampered_chunks, relay.dropped_chunks, relay.dropped_bytes = \
        None, 0, 0, 0
    return relay  # type: ignore[return-value]


def _read_all(relay: MisbehavingRelay) -> list[bytes | None]:
    got: list[bytes | None] = []

    async def main() -> None:
        for _ in range(10):
            data = await relay._read_stream_with_retry(None)  # type: ignore[arg-type]
            got.append(data)
            if not data:
                return
            if len(got) == 1:
                relay.misbehave()  # faithful for the first chunk only

    trio.run(main)
    return got


def test_a_tampering_relay_alters_every_chunk_once_switched_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    relay = _relay(Misbehaviour.TAMPER, [b"ok", b"x\x00", b"yz"], monkeypatch)
    assert _read_all(relay) == [b"ok", b"x\x01", b"y{", b""]
    assert relay.tampered_chunks == 2 and relay.relayed_bytes == 6
    assert relay.misbehaviour()["misbehave"] == "tamper"
    assert relay.misbehaviour()["misbehaving_since"] is not None


def test_a_dropping_relay_forwards_nothing_once_switched_on_but_reads_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    relay = _relay(Misbehaviour.DROP, [b"ok", b"lost", b"gone"], monkeypatch)
    # the dropped chunks are read (the sender's writes succeed), never returned; the end of
    # the stream still ends the circuit
    assert _read_all(relay) == [b"ok", b""]
    assert relay.dropped_chunks == 2 and relay.dropped_bytes == 8


class Layer:
    def __init__(self, **attrs: Any) -> None:
        self.__dict__.update(attrs)


def test_a_relayed_connection_names_the_relay_it_rides() -> None:
    relay_stream = Layer(muxed_conn=Layer(peer_id="RELAY"))
    raw = Layer(stream=relay_stream)
    noise = Layer(conn=raw)
    conn = Layer(muxed_conn=Layer(peer_id="PEER", secured_conn=Layer(conn=noise)))
    assert carrier_peer(conn) == "RELAY"  # not the peer at the far end of the connection
    direct = Layer(muxed_conn=Layer(peer_id="PEER", secured_conn=Layer(conn=Layer())))
    assert carrier_peer(direct) is None
    assert carrier_peer(object()) is None


def test_a_silent_relayed_link_is_closed_and_blamed_on_its_relay(tmp_path: Path) -> None:
    """Three hosts on loopback: a relay, a private member reserved on it, a dialer. A first
    stream through the relay works; once the relay drops everything, the next stream is not
    negotiated: after ``RELAYED_STREAM_SECONDS`` the dialer closes the silent connection
    (CircuitError), counts it, and blames the relay (its next dial tries other relays first)."""
    keys = {name: load_or_create_identity(tmp_path / f"{name}.key")[0]
            for name in ("relay", "private", "dialer")}
    found: dict[str, Any] = {}
    echo = "/gossipfl-test/echo/1"

    async def main() -> None:
        hosts = {name: make_host(k, ["/ip4/127.0.0.1/tcp/0"]) for name, k in keys.items()}
        relay_host, relay_listen = hosts["relay"]
        relay_circuits = Circuits(relay_host, RelayConfig(serve=True),
                                  relay_protocol=relay_class(Misbehaviour.DROP))
        relay_net = PeerNet(relay_host, Traffic(), listen=relay_listen, circuits=relay_circuits)
        async with relay_net.running() as relay_addrs:
            private_net = private_member_net(hosts["private"], keys["relay"], relay_addrs[0])
            dialer_host, dialer_listen = hosts["dialer"]
            dialer_net = PeerNet(dialer_host, Traffic(), listen=dialer_listen)
            async with private_net.running() as private_addrs, dialer_net.running():
                async def serve(channel: Any) -> None:
                    await channel.stream.write(await channel.stream.read(2))

                private_net.serve(echo, serve)
                target = str(keys["private"].peer_id)
                channel = await dialer_net.open(target, tuple(private_addrs), echo)
                await channel.stream.write(b"hi")
                found["first"] = await channel.stream.read(2)
                relay_circuits.protocol.misbehave()  # type: ignore[attr-defined]
                try:
                    await dialer_net.open(target, tuple(private_addrs), echo)
                except CircuitError as error:
                    found["error"] = str(error)
                assert dialer_net.circuits is not None
                found["summary"] = dialer_net.circuits.summary()
                found["relayed"] = dialer_net.circuits.relayed_to(keys["private"].peer_id)

    async def bounded() -> None:
        with trio.fail_after(60):
            await main()

    trio.run(bounded)
    assert found["first"] == b"hi"
    assert "closed 1 silent relayed connection(s)" in found["error"]
    assert found["summary"]["silent_links_closed"] == 1
    assert found["summary"]["relay_failures"] == {str(keys["relay"].peer_id): 1}
    assert found["relayed"] is False  # the silent connection is gone: the next stream re-dials
