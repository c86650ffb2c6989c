"""Bootstrap addresses: the peer id a ``/p2p/`` multiaddress names, direct or relayed."""

from __future__ import annotations

import multiaddr

from gossipfl.gossip.circuit import CIRCUIT, is_circuit


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """'/ip4/../tcp/../p2p/ID' → (ID, the whole address); of a relayed address
    ('.../p2p/RELAY/p2p-circuit/p2p/ID'), the peer's ID, not the relay's. Raises ValueError
    without /p2p/."""
    maddr = multiaddr.Multiaddr(addr)
    peer_id = maddr.value_for_protocol("p2p")
    if is_circuit(addr):
        tail = addr.rstrip("/").split(f"/{CIRCUIT}", 1)[1]
        peer_id = multiaddr.Multiaddr(tail).value_for_protocol("p2p") if tail else None
    if not peer_id:
        raise ValueError(f"bootstrap address {addr} has no /p2p/<peer id> part")
    return str(peer_id), addr


__all__ = ["split_p2p_addr"]
