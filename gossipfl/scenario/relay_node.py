"""A public relay for ``[[sites]]`` scenarios: one process on a public host that serves circuit
relay v2 (the HOP role, :class:`gossipfl.gossip.circuit.Circuits` with ``serve = true``) and
answers dial-backs (:mod:`gossipfl.gossip.dialback`), nothing else. It is not a federation
member (no certificate, no data, no model): the private nodes reserve a slot on it and reach
each other's sites through it, end to end encrypted (Noise
between the two nodes; it carries ciphertext).

    ip netns exec NS python -m gossipfl.scenario.relay_node --key K --listen /ip4/IP/tcp/P \\
        --out DIR [--circuit-bytes N] [--seconds S] [--misbehave tamper|drop]

It writes ``DIR/relay.json`` once it serves (``status = "serving"``: the runner waits for it),
then every second and when it stops (SIGTERM, SIGINT or ``--seconds``): its peer id and
address, the reservations it holds, the bytes it relayed (both ways, all circuits), and the
peers connected to it. With ``--misbehave`` it relays faithfully until SIGUSR1, then tampers
with or drops what it relays (:mod:`gossipfl.scenario.relay_misbehave`; relay.json counts it).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import trio

from gossipfl.crypto.identity import Identity, load_or_create_identity
from gossipfl.gossip.circuit import Circuits
from gossipfl.gossip.dialback import PROTO_DIALBACK, DialbackServer
from gossipfl.gossip.host import handshake_failures, make_host
from gossipfl.gossip.resources import relay_host_limits, resource_stats
from gossipfl.node.checkpoint import atomic_write_json
from gossipfl.relay_config import RelayConfig
from gossipfl.scenario.relay_misbehave import MisbehavingRelay, Misbehaviour, relay_class

log = logging.getLogger("gossipfl.relay_node")

WRITE_SECONDS = 1.0
FILE = "relay.json"


def _state(circuits: Circuits, identity: Identity, listen: str, status: str,
           started: float) -> dict[str, Any]:
    host = circuits.host
    peers = sorted(str(p) for p in host.get_network().get_connections_map())
    protocol = circuits.protocol
    extra = protocol.misbehaviour() if isinstance(protocol, MisbehavingRelay) else {}
    return {"status": status, "peer_id": str(identity.peer_id),
            "addr": f"{listen}/p2p/{identity.peer_id}", "seconds": round(time.monotonic()
                                                                          - started, 3),
            "connected_peers": peers, "resources": resource_stats(host),
            "handshake_failures": handshake_failures(host), **circuits.summary(), **extra}


async def serve(identity: Identity, listen: str, out: Path, config: RelayConfig,
                seconds: float, misbehave: Misbehaviour | None = None) -> None:
    """Relay until SIGTERM, SIGINT or ``seconds`` have passed; write ``relay.json``. With
    ``misbehave``, tamper or drop from SIGUSR1 on."""
    host, maddrs = make_host(identity, [listen], limits=relay_host_limits(config))
    circuits = Circuits(host, config, relay_protocol=relay_class(misbehave))
    dialback = DialbackServer(host, None)  # nodes with reachable = "auto" ask it
    started = time.monotonic()
    state: dict[str, Any] = {}
    async with host.run(listen_addrs=maddrs), circuits.running():
        host.set_stream_handler(PROTO_DIALBACK, dialback.on_stream)
        status = "serving"
        with trio.move_on_after(seconds), \
                trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                          signal.SIGUSR1) as signals:
            async with trio.open_nursery() as nursery:
                async def on_signal() -> None:
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            if isinstance(circuits.protocol, MisbehavingRelay):
                                circuits.protocol.misbehave()
                            continue
                        log.info("relay: stopping on %s", signal.Signals(signum).name)
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(on_signal)
                while True:
                    state = {**_state(circuits, identity, listen, status, started),
                             "dialbacks_answered": dict(dialback.counts)}
                    atomic_write_json(out / FILE, state)
                    await trio.sleep(WRITE_SECONDS)
        # the resource counts as last seen serving (the host's shutdown leaves them half undone)
        atomic_write_json(out / FILE, {**_state(circuits, identity, listen, "stopped", started),
                                       "resources": state.get("resources", {}),
                                       "dialbacks_answered": dict(dialback.counts)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gossipfl.scenario.relay_node")
    parser.add_argument("--key", required=True, help="the relay's identity file")
    parser.add_argument("--listen", required=True, help="/ip4/IP/tcp/PORT (a concrete IP)")
    parser.add_argument("--out", required=True, help="folder for relay.json")
    parser.add_argument("--circuit-bytes", type=int, default=RelayConfig().circuit_bytes)
    parser.add_argument("--seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--misbehave", choices=[m.value for m in Misbehaviour],
                        help="from SIGUSR1 on, tamper with or drop what it relays")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = load_or_create_identity(args.key)[0]
    config = RelayConfig(serve=True, circuit_bytes=args.circuit_bytes)
    misbehave = Misbehaviour(args.misbehave) if args.misbehave else None
    trio.run(serve, identity, args.listen, out, config, args.seconds, misbehave)
    return 0


if __name__ == "__main__":
    sys.exit(main())
