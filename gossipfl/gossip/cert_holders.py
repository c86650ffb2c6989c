"""Which members' certificates a peer holds, so that heartbeats to it need not carry them.

With admission on, each entry of a heartbeat's member list carried the member's certificate
(183 bytes, against ~180 for the rest of an entry), every time the entry changed, which its
liveness stamp makes it do every few heartbeats: on ``peer_task`` with int4 compression about
40% of the membership bytes. A peer that listed member M in a heartbeat to us holds M's
certificate (with admission on, a member lists only the members it holds a valid certificate
for, :meth:`gossipfl.gossip.membership.Membership.delta`; and certificates are kept until they
expire or are revoked, :class:`gossipfl.node.security.NodeSecurity`), and a peer holds its own.
So an entry about M to such a peer goes without the certificate; the peer takes it on the
certificate it holds (:meth:`NodeSecurity.hearsay`). And an entry that would tell the peer
nothing goes not at all: the one about the peer itself, and one about M whose liveness stamp
is no newer than the stamp of M the peer itself listed to us (:meth:`CertHolders.current`).

What this trusts, and who it stops: nothing about who is a member. A receiver still takes an
entry only for a member whose certificate it checked. A peer that lists members it holds no
certificate for (it deviates) gets entries it cannot use: it only hurts itself. A peer that
restarted lost the certificates it held; its table's epoch changes with the restart, and its
record here is then started afresh.

Bounded: at most :data:`MAX_PEERS` peers are tracked (the least lately heard is dropped) and
:data:`MAX_MEMBERS_A_PEER` members a peer (beyond that, certificates go as before). Pure state,
no clock and no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MAX_MEMBERS_A_PEER", "MAX_PEERS", "STAMP_KEY_BYTES", "CertHolders"]

MAX_PEERS = 32
"""Peers whose held certificates are tracked: a node heartbeats its neighbours and a few
others a cycle, so these are the ones its heartbeats go to most."""

MAX_MEMBERS_A_PEER = 256
"""Members tracked per peer (a heartbeat lists at most 256)."""

STAMP_KEY_BYTES = 16
"""A liveness stamp's epoch and sequence (8 bytes each, big-endian) open it."""


@dataclass
class CertHolders:
    """Per peer: the epoch of its member table when last heard, and the members whose
    certificates it holds."""

    # per peer: its table's epoch, and per member it listed the stamp's (epoch, seq) prefix
    _held: dict[str, tuple[int, dict[str, bytes]]] = field(default_factory=dict)

    def note(self, peer: str, epoch: int, members: Iterable[tuple[str, bytes]]) -> None:
        """``peer`` (its table at ``epoch``) listed ``members`` (id, stamp) to us: it holds
        their certificates, and its own, and those stamps.

        >>> holders = CertHolders()
        >>> holders.note("r", 1, [("m", b"")])
        >>> holders.holds("r", "m"), holders.holds("r", "r"), holders.holds("r", "x")
        (True, True, False)
        >>> holders.note("r", 2, [])  # it restarted: what it held is gone
        >>> holders.holds("r", "m")
        False
        """
        known = self._held.pop(peer, None)
        held = known[1] if known is not None and known[0] == epoch else {peer: b""}
        for member, stamp in members:
            if member not in held and len(held) >= MAX_MEMBERS_A_PEER:
                continue
            key = bytes(stamp[:STAMP_KEY_BYTES])
            held[member] = max(held.get(member, b""), key)
        self._held[peer] = (epoch, held)  # most lately heard last
        while len(self._held) > MAX_PEERS:
            del self._held[next(iter(self._held))]

    def holds(self, peer: str, member: str) -> bool:
        """Whether ``peer`` is known to hold ``member``'s certificate."""
        known = self._held.get(peer)
        return known is not None and member in known[1]

    def current(self, peer: str, member: str, stamp: bytes) -> bool:
        """Whether an entry about ``member`` with ``stamp`` would tell ``peer`` nothing: it is
        ``peer`` itself, or ``peer`` listed a stamp of ``member`` at least as new. (The first
        16 bytes of a stamp are its epoch and sequence, big-endian: bytes order as they do.)

        >>> holders = CertHolders()
        >>> holders.note("r", 1, [("m", bytes(8) + (5).to_bytes(8, "big") + bytes(64))])
        >>> [holders.current("r", "m", bytes(8) + (s).to_bytes(8, "big")) for s in (4, 5, 6)]
        [True, True, False]
        >>> holders.current("r", "r", b""), holders.current("r", "m", b"")
        (True, False)
        """
        if member == peer:
            return True
        known = self._held.get(peer)
        held = known[1].get(member, b"") if known is not None else b""
        return bool(stamp) and bool(held) and held >= bytes(stamp[:STAMP_KEY_BYTES])

    def forget(self, peer: str) -> None:
        self._held.pop(peer, None)

    def __len__(self) -> int:
        return len(self._held)
