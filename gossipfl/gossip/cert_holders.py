"""Which members' certificates a peer holds, so that heartbeats to it need not carry them.

With admission on, each entry of a heartbeat's member list carried the member's certificate
(183 bytes, against ~180 for the rest of an entry), every time the entry changed, which its
liveness stamp makes it do every few heartbeats: on ``peer_task`` with int4 compression about
40% of the membership bytes. A peer that listed member M in a heartbeat to us holds M's
certificate (with admission on, a member lists only the members it holds a valid certificate
for, :meth:`gossipfl.gossip.membership.Membership.delta`; and certificates are kept until they
expire or are revoked, :class:`gossipfl.node.security.NodeSecurity`), and a peer holds its own.
So an entry about M to such a peer goes without the certificate; the peer takes it on the
certificate it holds (:meth:`NodeSecurity.hearsay`).

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

__all__ = ["MAX_MEMBERS_A_PEER", "MAX_PEERS", "CertHolders"]

MAX_PEERS = 32
"""Peers whose held certificates are tracked: a node heartbeats its neighbours and a few
others a cycle, so these are the ones its heartbeats go to most."""

MAX_MEMBERS_A_PEER = 256
"""Members tracked per peer (a heartbeat lists at most 256)."""


@dataclass
class CertHolders:
    """Per peer: the epoch of its member table when last heard, and the members whose
    certificates it holds."""

    _held: dict[str, tuple[int, set[str]]] = field(default_factory=dict)

    def note(self, peer: str, epoch: int, members: Iterable[str]) -> None:
        """``peer`` (its table at ``epoch``) listed ``members`` to us: it holds their
        certificates, and its own.

        >>> holders = CertHolders()
        >>> holders.note("r", 1, ["m"])
        >>> holders.holds("r", "m"), holders.holds("r", "r"), holders.holds("r", "x")
        (True, True, False)
        >>> holders.note("r", 2, [])  # it restarted: what it held is gone
        >>> holders.holds("r", "m")
        False
        """
        known = self._held.pop(peer, None)
        held = known[1] if known is not None and known[0] == epoch else {peer}
        for member in members:
            if len(held) >= MAX_MEMBERS_A_PEER:
                break
            held.add(member)
        self._held[peer] = (epoch, held)  # most lately heard last
        while len(self._held) > MAX_PEERS:
            del self._held[next(iter(self._held))]

    def holds(self, peer: str, member: str) -> bool:
        """Whether ``peer`` is known to hold ``member``'s certificate."""
        known = self._held.get(peer)
        return known is not None and member in known[1]

    def forget(self, peer: str) -> None:
        self._held.pop(peer, None)

    def __len__(self) -> int:
        return len(self._held)
