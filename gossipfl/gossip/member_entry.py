"""One member's entry in the membership table (``membership.py``), the cached stamp check
and a heartbeat's budget of checks."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

from gossipfl.crypto import liveness
from gossipfl.crypto.liveness import Stamp, StampKey

#: (stamp, federation, peer id, the addresses relayed with it) → Stamp, or StampError
Verifier = Callable[[bytes, str, str, tuple[str, ...]], Stamp]


@functools.lru_cache(maxsize=1 << 16)
def cached_verify(data: bytes, federation: str, peer_id: str, addrs: tuple[str, ...]) -> Stamp:
    """A pure function of its arguments, so its results are kept (refused stamps raise and are
    not): in a simulation, every node that is handed the same stamp checks it once for all."""
    return liveness.verify_stamp(data, federation=federation, peer_id=peer_id, addrs=addrs)


@dataclass(slots=True)
class Entry:
    addrs: tuple[str, ...]  # its own (direct), else the signed ones or the reporter's claim
    last_heard: float
    direct: bool  # heard from directly (then also vouched)
    vouched: bool
    reporter: str | None  # who told us, while the entry is hearsay
    since: float = 0.0  # local time the entry was made (not anyone's claim)
    live: float | None = None  # local time of its last stamp progress or direct hearing
    stamp: bytes = b""  # the freshest verified stamp (relayed in our heartbeats)
    stamp_addrs: tuple[str, ...] = ()  # the addresses that stamp signs (relayed with it)
    stamp_key: StampKey | None = None
    stamp_at: float = -math.inf  # local time the held stamp was taken
    version: int = 0  # the table's version at the entry's last gossiped change
    gossiped_heard: float = -math.inf  # last_heard at that change (unstamped entries' ages)
    tag: int = 0  # the member's digest tag (wire.member_tag of its id)

    @property
    def relayed_addrs(self) -> tuple[str, ...]:
        """The addresses our heartbeats give for it: with a stamp, the ones it signed."""
        return self.stamp_addrs if self.stamp else self.addrs

    @property
    def dial_addrs(self) -> tuple[str, ...]:
        """Where it may be dialled: its own addresses (heard directly) or the ones it signed;
        none for a claim only (a reporter's word is never dialled)."""
        if self.direct:
            return self.addrs
        return self.stamp_addrs if self.stamp else ()


def shared(peer_id: str, addrs: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Interned: the tables of a process (a simulation's) hold one copy of each string."""
    return sys.intern(peer_id), tuple(sys.intern(a) for a in addrs)


@dataclass
class Budget:
    """Signature checks left for one heartbeat."""

    left: int

    def spent(self) -> bool:
        if self.left <= 0:
            return True
        self.left -= 1
        return False
