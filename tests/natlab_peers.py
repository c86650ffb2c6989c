"""py-libp2p 0.8.1 peers for the NAT lab test (tests/test_natlab.py), one role per process:
each runs inside its namespace (``ip netns exec NS python tests/natlab_peers.py ROLE ...``),
with a hard overall deadline, and writes what happened as JSON into the shared folder.

* ``relay``: a public host serving circuit relay v2 (HOP) reservations and circuits (each
  circuit capped at ``--data-limit`` bytes).
* ``listener``: a private host; dials the relay, reserves a slot, answers an echo protocol.
* ``dialer``: another private host; tries the listener directly (its private address, its
  router's public address), then through the relay (``/p2p/RELAY/p2p-circuit/p2p/LISTENER``),
  and sends one length-prefixed frame there and back.

Hosts are plain ``libp2p.new_host`` with Noise only and yamux, as gossipfl builds them; peer ids
come from fixed seeds so each process knows the others' ids without talking first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import struct
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import IHost, INetStream
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.relay.circuit_v2 import dcutr as dcutr_module
from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID as HOP_PROTOCOL_ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.relay.circuit_v2.transport import CircuitV2Transport
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

PORT = 4001
SEEDS = {"relay": 1, "listener": 2, "dialer": 3}
ECHO = TProtocol("/gossipfl-natlab/echo/1")
MAX_FRAME = 1 << 20
PAYLOAD = bytes(range(256)) * 64  # 16 KiB
BIG = bytes(range(256)) * 4096  # 1 MiB, timed (a figure, not asserted)
DIRECT_TIMEOUT = 2.0  # a direct dial inside the lab connects in milliseconds or never
# DCUtR waits up to 5 s a round (3 rounds, 2 s apart) for a punched connection; inside the lab
# one is made in milliseconds or never, and a punch that misses (symmetric or resetting routers)
# waited out all three: 34-35 s of the test run's wall time for each such case
PUNCH_ROUND_TIMEOUT = 2.0
dcutr_module._HOLE_PUNCH_ROUND_TIMEOUT = PUNCH_ROUND_TIMEOUT  # py-libp2p 0.8.1's, private
LIMITS = RelayLimits(duration=120, data=16 * MAX_FRAME, max_circuit_conns=4, max_reservations=4)


def key_pair(role: str) -> Any:
    return create_new_key_pair(bytes([SEEDS[role]]) * 32)


def peer_id(role: str) -> ID:
    return ID.from_pubkey(key_pair(role).public_key)


def make_host(role: str) -> IHost:
    pair = key_pair(role)
    noise = NoiseTransport(libp2p_keypair=pair,
                           noise_privkey=create_x25519_key_pair().private_key)
    return new_host(key_pair=pair, sec_opt={NOISE_PROTOCOL_ID: noise},
                    muxer_preference="YAMUX", enable_mDNS=False, enable_quic=False)


def write(out: Path, name: str, data: dict[str, Any]) -> None:
    tmp = out / f".{name}.json"
    tmp.write_text(json.dumps(data, indent=1))
    tmp.rename(out / f"{name}.json")


def error_text(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__name__}: {error}"


async def read_exactly(stream: INetStream, n: int) -> bytes:
    data = b""
    for _ in range(n + 1):  # every read returns at least one byte, or EOF
        if len(data) >= n:
            break
        chunk = await stream.read(n - len(data))
        if not chunk:
            raise EOFError(f"stream ended after {len(data)} of {n} bytes")
        data += chunk
    return data


async def echo(stream: INetStream) -> None:
    try:
        with trio.move_on_after(20):
            (size,) = struct.unpack(">I", await read_exactly(stream, 4))
            if size > MAX_FRAME:
                raise ValueError(f"frame of {size} bytes")
            await stream.write(struct.pack(">I", size) + await read_exactly(stream, size))
    except Exception:
        logging.exception("echo")
    finally:
        with trio.move_on_after(2):
            await stream.close()


def relay_addr(relay_ip: str) -> multiaddr.Multiaddr:
    return multiaddr.Multiaddr(f"/ip4/{relay_ip}/tcp/{PORT}/p2p/{peer_id('relay')}")


def relay_info(relay_ip: str) -> PeerInfo:
    return PeerInfo(peer_id("relay"), [multiaddr.Multiaddr(f"/ip4/{relay_ip}/tcp/{PORT}")])


def remote_addrs(host: IHost) -> dict[str, list[str]]:
    """Per connected peer, the remote address of each connection (what the NAT shows)."""
    seen: dict[str, list[str]] = {}
    for pid, conns in host.get_network().connections.items():
        for conn in conns if isinstance(conns, list) else [conns]:
            try:
                addr = conn.muxed_conn.get_remote_address()  # type: ignore[attr-defined]
            except Exception as error:
                addr = error_text(error)
            seen.setdefault(str(pid), []).append(str(addr))
    return seen


async def run_relay(out: Path, relay_ip: str, hold: float, data_limit: int) -> None:
    host = make_host("relay")
    listen = multiaddr.Multiaddr(f"/ip4/{relay_ip}/tcp/{PORT}")
    limits = dataclasses.replace(LIMITS, data=data_limit)
    async with host.run(listen_addrs=[listen]):
        protocol = CircuitV2Protocol(host, limits=limits, allow_hop=True)
        async with background_trio_service(protocol):
            await protocol.event_started.wait()
            write(out, "relay-ready", {"peer": str(host.get_id()),
                                       "addrs": [str(a) for a in host.get_addrs()]})
            last: dict[str, list[str]] = {}
            with trio.move_on_after(hold):
                while not (out / "dialer.json").exists():
                    last = remote_addrs(host) or last
                    await trio.sleep(0.2)
            write(out, "relay", {"remote_addrs": last or remote_addrs(host),
                                 "reservations": len(protocol.resource_manager._reservations)})


async def run_listener(out: Path, relay_ip: str, own_ip: str, hold: float) -> None:
    host = make_host("listener")
    result: dict[str, Any] = {"peer": str(host.get_id())}
    async with host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/{own_ip}/tcp/{PORT}")]):
        host.set_stream_handler(ECHO, echo)
        protocol = CircuitV2Protocol(host, limits=LIMITS, allow_hop=False)
        dcutr = DCUtRProtocol(host, read_timeout=10, write_timeout=10, dial_timeout=5)
        async with background_trio_service(protocol), background_trio_service(dcutr):
            await protocol.event_started.wait()
            transport = CircuitV2Transport(
                host, protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT,
                                            limits=LIMITS))
            async with trio.open_nursery() as nursery:
                try:
                    with trio.fail_after(15):
                        await host.connect(relay_info(relay_ip))
                        stream = await host.new_stream(peer_id("relay"), [HOP_PROTOCOL_ID])
                        result["reserved"] = await transport.reserve(stream, peer_id("relay"),
                                                                     nursery)
                    result["relayed_addr"] = (
                        f"{relay_addr(relay_ip)}/p2p-circuit/p2p/{host.get_id()}")
                except Exception as error:
                    result["reserve_error"] = error_text(error)
                    result["traceback"] = traceback.format_exc()
                write(out, "listener-ready", result)
                with trio.move_on_after(hold):
                    while not (out / "dialer.json").exists():
                        await trio.sleep(0.2)
                result["remote_addrs"] = remote_addrs(host)
                write(out, "listener", result)
                nursery.cancel_scope.cancel()


async def try_direct(host: IHost, addr: str) -> str:
    """``connected``, or the error of a direct dial of the listener at ``addr``."""
    try:
        with trio.fail_after(DIRECT_TIMEOUT):
            await host.connect(PeerInfo(peer_id("listener"), [multiaddr.Multiaddr(addr)]))
        return "connected"
    except trio.TooSlowError:
        return f"timeout after {DIRECT_TIMEOUT} s"
    except Exception as error:
        return error_text(error)


async def echo_round(host: IHost, payload: bytes = PAYLOAD) -> tuple[bool, str]:
    """One frame to the listener's echo protocol and back: whether it came back intact, and
    the remote address of the connection the stream went over."""
    stream = await host.new_stream(peer_id("listener"), [ECHO])
    await stream.write(struct.pack(">I", len(payload)) + payload)
    (size,) = struct.unpack(">I", await read_exactly(stream, 4))
    back = await read_exactly(stream, min(size, MAX_FRAME))
    remote = str(stream.muxed_conn.get_remote_address())  # type: ignore[attr-defined]
    with trio.move_on_after(2):
        await stream.close()
    return back == payload, remote


async def timed_mib(host: IHost) -> float | None:
    """Seconds for one 1 MiB frame there and back (None if it did not come back intact)."""
    started = time.monotonic()
    ok, _ = await echo_round(host, BIG)
    return round(time.monotonic() - started, 3) if ok else None


async def try_dcutr(host: IHost) -> dict[str, Any]:
    """DCUtR (hole punching) from an open relayed connection: what it returned, and the
    remote address of every connection to the listener after it."""
    found: dict[str, Any] = {}
    dcutr = DCUtRProtocol(host, read_timeout=10, write_timeout=10, dial_timeout=5)
    try:
        async with background_trio_service(dcutr):
            await dcutr.event_started.wait()
            with trio.fail_after(40):
                found["initiate_hole_punch"] = await dcutr.initiate_hole_punch(
                    peer_id("listener"))
                found["remote_addrs"] = remote_addrs(host).get(str(peer_id("listener")), [])
                found["echo_ok"], found["stream_remote"] = await echo_round(host)
                found["mib_echo_seconds"] = await timed_mib(host)
    except Exception as error:
        found["error"] = error_text(error)
    return found


async def run_dialer(out: Path, relay_ip: str, own_ip: str, listener_ip: str,
                     listener_wan: str) -> None:
    host = make_host("dialer")
    result: dict[str, Any] = {"peer": str(host.get_id())}
    async with host.run(listen_addrs=[multiaddr.Multiaddr(f"/ip4/{own_ip}/tcp/{PORT}")]):
        result["direct_private"] = await try_direct(host, f"/ip4/{listener_ip}/tcp/{PORT}")
        result["direct_wan"] = await try_direct(host, f"/ip4/{listener_wan}/tcp/{PORT}")
        # forget the unreachable addresses, so only the circuit is left to use
        host.get_peerstore().clear_addrs(peer_id("listener"))
        protocol = CircuitV2Protocol(host, limits=LIMITS, allow_hop=False)
        async with background_trio_service(protocol):
            await protocol.event_started.wait()
            transport = CircuitV2Transport(
                host, protocol, RelayConfig(roles=RelayRole.STOP | RelayRole.CLIENT,
                                            limits=LIMITS))
            circuit = multiaddr.Multiaddr(
                f"{relay_addr(relay_ip)}/p2p-circuit/p2p/{peer_id('listener')}")
            result["circuit_addr"] = str(circuit)
            step = "transport.dial"
            try:
                with trio.fail_after(20):
                    started = time.monotonic()
                    conn = await transport.dial(circuit)
                    result["dial_seconds"] = round(time.monotonic() - started, 3)
                    result["conn"] = type(conn).__name__
                    step = "echo"
                    result["echo_ok"], result["stream_remote"] = await echo_round(host)
                    step = "1 MiB echo"
                    result["mib_echo_seconds"] = await timed_mib(host)
            except Exception as error:
                result["relay_error"] = {"step": step, "error": error_text(error),
                                         "traceback": traceback.format_exc()}
            if "relay_error" not in result:
                result["dcutr"] = await try_dcutr(host)
    write(out, "dialer", result)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=sorted(SEEDS))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--relay-ip", required=True)
    parser.add_argument("--own-ip", default="")
    parser.add_argument("--listener-ip", default="")
    parser.add_argument("--listener-wan", default="")
    parser.add_argument("--hold", type=float, default=60.0)
    parser.add_argument("--data-limit", type=int, default=LIMITS.data,
                        help="relay: bytes a circuit may carry, both ways together")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.role == "relay":
        trio.run(run_relay, args.out, args.relay_ip, args.hold, args.data_limit)
    elif args.role == "listener":
        trio.run(run_listener, args.out, args.relay_ip, args.own_ip, args.hold)
    else:
        trio.run(run_dialer, args.out, args.relay_ip, args.own_ip, args.listener_ip,
                 args.listener_wan)


if __name__ == "__main__":
    main(sys.argv[1:])
