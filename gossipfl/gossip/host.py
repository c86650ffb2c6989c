"""The libp2p host: TCP, yamux, and Noise only (never plaintext, never secio)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from gossipfl.crypto.identity import Identity
from gossipfl.gossip.resources import HostLimits, NodeResourceManager, install, relay_host_limits
from gossipfl.gossip.wire_fields import MAX_MEMBERS
from gossipfl.relay_config import RelayConfig

#: Connections a node holds at most (inbound and outbound): a member talks to at most
#: MAX_MEMBERS others; libp2p prunes idle ones above this.
MAX_CONNECTIONS = MAX_MEMBERS + 44

#: gossipfl dials whom it needs (members, neighbours) itself. py-libp2p 0.8.1's auto-connector
#: dials peerstore entries until it holds (low_watermark + high_watermark) / 2 connections (150
#: with the default high watermark of 300), whoever put them there: any peer's identify announces
#: addresses that land in the peerstore. No watermark setting turns it off without the pruner
#: closing our own links (high = low = 0 prunes everything above 0), so the watermarks only bound
#: what the node holds, and :func:`make_host` replaces the auto-connector with one that never
#: starts.
CONNECTIONS = ConnectionConfig(min_connections=0, low_watermark=0,
                               high_watermark=MAX_CONNECTIONS, max_connections=MAX_CONNECTIONS)


class NoAutoConnector(AutoConnector):
    """An auto-connector that never dials: ``start`` leaves it stopped, so its periodic task
    never runs and ``maybe_connect`` (also called by the swarm on every disconnect) returns at
    once."""

    async def start(self) -> None:
        self._started = False

#: py-libp2p 0.8.1's yamux reads its tuning from ``PY_YAMUX_*`` environment variables when it
#: uses them. With ``RELEASE_ON_READ`` on (its default) a stream returns receive credit with a
#: WINDOW_UPDATE frame after every read: one more Noise-encrypted frame, written, read and
#: decrypted, for every message a member reads whole (a heartbeat, a contribution, an ack). Off,
#: it still returns credit on a read that finds the window short of its target, but counts the
#: bytes read twice doing so, so the next read owes none: a frame every other read
#: (tests/test_yamux_credit.py). A sender keeps the whole window in flight either way. Measured:
#: 14 % less CPU a 36 KB message (benchmarks/bench_overhead.py --send-only, alternated runs). A
#: value the user set is kept.
YAMUX_TUNING = {"PY_YAMUX_RELEASE_ON_READ": "0"}


def tune_yamux() -> None:
    """Batch yamux's credit (see :data:`YAMUX_TUNING`) for this process's hosts."""
    for name, value in YAMUX_TUNING.items():
        os.environ.setdefault(name, value)


#: The only secure channel a gossipfl host offers or accepts.
SECURITY_PROTOCOLS = (str(NOISE_PROTOCOL_ID),)


class CountedHandshakes:
    """The swarm's ``upgrade_security`` (Noise, on every connection: direct and relayed, both
    ways), counting the connections it failed: the handshake failed (a message that does not
    authenticate, e.g. altered by a relay, raises the ``noise`` package's own exception, which
    py-libp2p passes on unwrapped) or was never agreed (another security protocol, garbage), or
    the far end was not the peer dialled. The swarm closes each such connection."""

    def __init__(self, inner: Callable[..., Awaitable[Any]]) -> None:
        self.inner = inner
        self.failed = {"inbound": 0, "outbound": 0}

    async def __call__(self, raw_conn: Any, is_initiator: bool, peer_id: Any = None) -> Any:
        try:
            return await self.inner(raw_conn, is_initiator, peer_id)
        except Exception:  # SecurityUpgradeFailure, NoiseInvalidMessage, a closed stream...
            self.failed["outbound" if is_initiator else "inbound"] += 1
            raise


def handshake_failures(host: IHost | None) -> dict[str, int]:
    """Connections ``host`` closed after a failed security handshake, by direction."""
    upgrader = getattr(getattr(host, "get_network", lambda: None)(), "upgrader", None)
    counted = getattr(upgrader, "upgrade_security", None)
    return dict(counted.failed) if isinstance(counted, CountedHandshakes) else {}


def make_host(identity: Identity, listen: Sequence[str], *, identify: bool = True,
              limits: HostLimits | None = None,
              ) -> tuple[IHost, list[multiaddr.Multiaddr]]:
    """A host for ``identity`` that negotiates Noise and nothing else.

    py-libp2p's default host also accepts plaintext, secio and TLS; here ``sec_opt`` names Noise
    alone, so a peer offering anything else fails the security handshake and is disconnected.

    With ``identify`` off, the host never starts libp2p's identify exchange on a new
    connection (it still answers one a peer starts). gossipfl takes a member's addresses from
    its own heartbeats and signed stamps, never from identify (peers.py), so a node without a
    relay role needs none of it; py-libp2p runs it on every connection, each a stream and a
    signed peer record both ways, which a federation whose members all meet while joining
    pays n(n − 1) times. The relay roles (circuit.py) keep it: relay v2 and hole punching
    learn a peer's protocols and observed addresses through it.

    Yamux returns a stream's credit in batches (:data:`YAMUX_TUNING`).

    ``limits`` (default: a plain member's with py-libp2p's defaults for the rest,
    :func:`~gossipfl.gossip.resources.relay_host_limits`) go to the host's resource manager
    (:class:`~gossipfl.gossip.resources.NodeResourceManager`), never py-libp2p's loose defaults.
    """
    tune_yamux()
    manager = NodeResourceManager(limits or relay_host_limits(RelayConfig(), members=MAX_MEMBERS))
    noise = NoiseTransport(
        libp2p_keypair=identity.key_pair,
        noise_privkey=create_x25519_key_pair().private_key,
    )
    listen_addrs = [multiaddr.Multiaddr(a) for a in listen]
    host = new_host(
        key_pair=identity.key_pair,
        sec_opt={NOISE_PROTOCOL_ID: noise},
        muxer_preference="YAMUX",
        enable_mDNS=False,
        enable_quic=False,
        connection_config=CONNECTIONS,
        resource_manager=manager,
    )
    install(host, manager)
    network = host.get_network()
    network.auto_connector = NoAutoConnector(network)  # type: ignore[attr-defined]
    upgrader = network.upgrader  # type: ignore[attr-defined]
    upgrader.upgrade_security = CountedHandshakes(upgrader.upgrade_security)
    if not identify:  # py-libp2p 0.8.1 has no setting for it: its own check says no
        host._should_identify_peer = lambda peer_id: False  # type: ignore[attr-defined]
    return host, listen_addrs
