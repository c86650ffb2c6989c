"""The libp2p host: TCP, yamux, and Noise only (never plaintext, never secio)."""

from __future__ import annotations

from collections.abc import Sequence

import multiaddr
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.network.config import ConnectionConfig
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport

from gossipfl.crypto.identity import Identity

#: gossipfl dials whom it needs (members, neighbours) itself: py-libp2p's auto-connector, which by
#: default keeps dialling every known address to hold 100+ connections, only burns CPU here.
CONNECTIONS = ConnectionConfig(min_connections=0, low_watermark=0)

#: The only secure channel a gossipfl host offers or accepts.
SECURITY_PROTOCOLS = (str(NOISE_PROTOCOL_ID),)


def make_host(identity: Identity, listen: Sequence[str]) -> tuple[IHost, list[multiaddr.Multiaddr]]:
    """A host for ``identity`` that negotiates Noise and nothing else.

    py-libp2p's default host also accepts plaintext, secio and TLS; here ``sec_opt`` names Noise
    alone, so a peer offering anything else fails the security handshake and is disconnected.
    """
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
    )
    return host, listen_addrs
