"""Non-members cannot spend a node's memory (issue 8, point 7): the read caps, the in-flight
budget, the log gate, the connection reaper, and the host's connection limits.

Pure state and fake streams, except the last two tests, which run real libp2p hosts on loopback.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import multiaddr
import pytest
import trio

from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip import host as host_module
from gossipfl.gossip.framing import READ_CHUNK, Overloaded
from gossipfl.gossip.host import CONNECTIONS, NoAutoConnector, make_host
from gossipfl.gossip.peers import Channel, ConnectionReaper, Idle, PeerNet, ReadPolicy, Traffic
from gossipfl.gossip.ratelimit import InFlight, LogGate
from gossipfl.gossip.wire import (
    MAX_CONTROL_BYTES,
    MAX_MEMBERS,
    Sealed,
    WireError,
    encode_frame,
)

MIB = 1024 * 1024


class RecordingStream:
    """A stream from ``peer`` serving ``data``, recording how many bytes were read."""

    def __init__(self, peer: str, data: bytes) -> None:
        self.muxed_conn = SimpleNamespace(peer_id=peer)
        self.data = data
        self.position = 0

    async def read(self, n: int | None = None) -> bytes:
        assert n is not None
        chunk = self.data[self.position:self.position + n]
        self.position += len(chunk)
        return chunk

    async def write(self, data: bytes) -> None:
        pass


def _sealed_frame(size: int) -> bytes:
    return encode_frame(Sealed("fed", 1, b"\0" * size), 64 * MIB)


# -- read caps -----------------------------------------------------------------------------------


def test_a_non_members_payload_frame_is_refused_from_its_header() -> None:
    frame = _sealed_frame(4 * MIB)
    in_flight = InFlight(limit=64 * MIB, stranger_limit=8 * MIB)
    stream = RecordingStream("stranger", frame)
    channel = Channel(stream, Traffic(), ReadPolicy(lambda peer: False, in_flight))  # type: ignore[arg-type]

    with pytest.raises(WireError, match=r"exceeds the 262144 cap \(not a certified member"):
        trio.run(channel.receive, Sealed, 64 * MIB)
    assert stream.position == 4  # the header only: not a byte of the payload
    assert in_flight.held == 0 and in_flight.peak == 0


def test_a_members_payload_frame_is_read_and_released() -> None:
    frame = _sealed_frame(4 * MIB)
    in_flight = InFlight(limit=64 * MIB, stranger_limit=8 * MIB)
    stream = RecordingStream("member", frame)
    channel = Channel(stream, Traffic(), ReadPolicy(lambda peer: True, in_flight))  # type: ignore[arg-type]

    message = trio.run(channel.receive, Sealed, 64 * MIB)
    assert len(message.data) == 4 * MIB and stream.position == len(frame)
    assert in_flight.held == 0 and in_flight.peak == len(frame) - 4


def test_a_frame_past_the_in_flight_cap_is_refused_before_its_body() -> None:
    in_flight = InFlight(limit=8 * MIB, stranger_limit=MIB)
    assert in_flight.reserve(6 * MIB, member=True)
    stream = RecordingStream("member", _sealed_frame(4 * MIB))
    channel = Channel(stream, Traffic(), ReadPolicy(lambda peer: True, in_flight))  # type: ignore[arg-type]
    with pytest.raises(Overloaded):
        trio.run(channel.receive, Sealed, 64 * MIB)
    # refused from its header: its 4 MiB body never read (a member's channel reads ahead at
    # most one chunk, framing.BufferedReader), the budget untouched
    assert 4 <= stream.position <= 4 + READ_CHUNK
    assert in_flight.held == 6 * MIB and in_flight.refused == 1


# -- the in-flight budget ------------------------------------------------------------------------


def test_many_fresh_identities_cannot_add_up() -> None:
    in_flight = InFlight(limit=256 * MIB, stranger_limit=32 * MIB)
    frame = MAX_CONTROL_BYTES  # the most one stranger's frame may announce
    taken = sum(in_flight.reserve(frame, member=False) for _ in range(10_000))
    assert taken == 32 * MIB // frame == 128
    assert in_flight.held_by_strangers == 32 * MIB and in_flight.refused == 10_000 - 128
    # the members' room is untouched by strangers: a payload still fits, and the total holds
    assert in_flight.reserve(64 * MIB, member=True)
    assert sum(in_flight.reserve(64 * MIB, member=True) for _ in range(4)) == 2
    assert in_flight.held == 224 * MIB and in_flight.reserve(32 * MIB, member=True)
    in_flight.release(frame, member=False)
    assert in_flight.reserve(frame, member=True)
    assert not in_flight.reserve(1, member=False)  # the total is full: nobody gets in
    in_flight.release(64 * MIB, member=True)
    assert in_flight.reserve(frame, member=False)


def test_in_flight_rejects_a_stranger_share_above_the_limit() -> None:
    with pytest.raises(ValueError, match="stranger_limit must be in"):
        InFlight(limit=MIB, stranger_limit=2 * MIB)


# -- the log gate ----------------------------------------------------------------------------------


def test_log_gate_once_a_second_a_key_and_ten_lines_a_second_in_all() -> None:
    gate = LogGate()
    assert gate.allow("a", 0.0) and not gate.allow("a", 0.5) and gate.allow("a", 1.0)
    lines = sum(gate.allow(("flood", f"fresh-{i}"), 2.0 + i / 10_000) for i in range(5_000))
    assert lines == 10
    assert gate.allow("b", 3.5)


def test_log_gate_memory_is_bounded() -> None:
    gate = LogGate(max_lines=10**9, max_keys=100)
    for i in range(10_000):
        gate.allow(i, i * 0.001)
    assert len(gate._last) <= 100


# -- the connection reaper ------------------------------------------------------------------------


def test_reaper_closes_strangers_after_the_grace_and_idle_connections_after_idle_after() -> None:
    reaper = ConnectionReaper(stranger_grace=10.0, idle_after=60.0)
    members = {"m1", "m2"}

    def sweep(now: float, streams: dict[str, int]) -> list[tuple[str, Idle]]:
        return reaper.sweep(now, streams, members.__contains__)

    assert sweep(0.0, {"m1": 0, "m2": 1, "x": 0}) == []
    assert sweep(9.0, {"m1": 0, "m2": 1, "x": 3}) == []
    assert sweep(10.0, {"m1": 0, "m2": 1, "x": 3}) == [("x", Idle.STRANGER)]  # streams or not
    reaper.touch("m1", 30.0)  # a heartbeat stream came and went
    assert sweep(61.0, {"m1": 0, "m2": 1}) == []
    assert sweep(90.0, {"m1": 0, "m2": 0}) == [("m1", Idle.IDLE), ("m2", Idle.IDLE)]
    assert sweep(91.0, {}) == [] and not reaper._first_seen  # forgotten once gone
    # admission off (no certificates): only idleness counts
    assert reaper.sweep(200.0, {"x": 0}, None) == []
    assert reaper.sweep(260.0, {"x": 0}, None) == [("x", Idle.IDLE)]


# -- the host --------------------------------------------------------------------------------------


def test_host_connection_limits_and_no_auto_connector(tmp_path: Path) -> None:
    assert CONNECTIONS.min_connections == 0 and CONNECTIONS.low_watermark == 0
    assert CONNECTIONS.high_watermark == CONNECTIONS.max_connections == MAX_MEMBERS + 44
    identity, _ = load_or_create_identity(tmp_path / "a.key")
    host, _ = make_host(identity, ["/ip4/127.0.0.1/tcp/0"])
    network = host.get_network()
    assert isinstance(network.auto_connector, NoAutoConnector)  # type: ignore[attr-defined]
    assert network.connection_config.high_watermark == host_module.MAX_CONNECTIONS  # type: ignore[attr-defined]


class Trap:
    """A TCP listener that counts who dials it."""

    def __init__(self) -> None:
        self.accepted = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        self.accepted += 1
        await stream.aclose()


def test_the_node_never_dials_announced_addresses_of_strangers(tmp_path: Path) -> None:
    """Addresses in the peerstore (as identify puts them there) are dialled neither by libp2p's
    auto-connector nor by PeerNet for an uncertified peer; its own dial goes where told."""
    a_id, _ = load_or_create_identity(tmp_path / "a.key")
    b_id, _ = load_or_create_identity(tmp_path / "b.key")
    c_id, _ = load_or_create_identity(tmp_path / "c.key")
    trap = Trap()
    seen: dict[str, object] = {}

    async def main() -> None:
        with trio.fail_after(30):
            host_a, listen_a = make_host(a_id, ["/ip4/127.0.0.1/tcp/0"])
            host_b, listen_b = make_host(b_id, ["/ip4/127.0.0.1/tcp/0"])
            async with host_a.run(listen_addrs=listen_a), host_b.run(listen_addrs=listen_b), \
                    trio.open_nursery() as nursery:
                listeners = await nursery.start(functools.partial(
                    trio.serve_tcp, trap.serve, 0, host="127.0.0.1"))
                port = listeners[0].socket.getsockname()[1]
                trap_addr = multiaddr.Multiaddr(f"/ip4/127.0.0.1/tcp/{port}")
                seen["trap_port"] = port
                store = host_a.get_peerstore()
                # a stranger announced itself (c) and a trap address for b
                store.add_addrs(c_id.peer_id, [trap_addr], 3600)
                store.add_addrs(b_id.peer_id, [trap_addr], 3600)
                await host_a.get_network().auto_connector.maybe_connect()  # type: ignore[attr-defined]
                b_addr = str(host_b.get_addrs()[0])
                net = PeerNet(host_a, Traffic(), policy=ReadPolicy(lambda p: False,
                                                                   InFlight(MIB, MIB)))
                with trio.move_on_after(10):
                    try:
                        channel = await net.open(str(b_id.peer_id), (b_addr,), "/x/1")
                        await channel.close()
                    except Exception as error:  # b serves no such protocol: the dial is what counts
                        seen["open"] = type(error).__name__
                seen["connected"] = bool(host_a.get_network().get_connections(b_id.peer_id))
                seen["addrs"] = [str(a) for a in store.addrs(b_id.peer_id)]
                await trio.sleep(0.2)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert trap.accepted == 0
    assert seen["connected"]
    trap_port = f"/tcp/{seen['trap_port']}"
    assert not any(a.endswith(trap_port) for a in seen["addrs"])  # type: ignore[attr-defined]
