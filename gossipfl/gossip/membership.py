"""Who is in the federation: a table of members learnt from heartbeats, with ages.

Pure state with the clock passed in. A member is known either directly (it sent us a heartbeat)
or by hearsay (another member listed it, with how long ago it heard of it). Ages travel with the
hearsay, so a member that died is forgotten everywhere once no one has heard of it for
``timeout`` seconds, instead of being kept alive by members repeating each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gossipfl.gossip.wire import MAX_MEMBERS, MemberInfo


@dataclass
class _Entry:
    addrs: tuple[str, ...]
    last_heard: float


@dataclass
class Membership:
    """The members this node knows, itself excluded."""

    self_id: str
    timeout: float
    capacity: int = MAX_MEMBERS - 1
    _members: dict[str, _Entry] = field(default_factory=dict)

    def heard_from(self, peer_id: str, addrs: tuple[str, ...], now: float) -> bool:
        """Record a heartbeat straight from ``peer_id``; returns True if it is a new member."""
        return self._update(peer_id, addrs, now)

    def merge(self, members: tuple[MemberInfo, ...], now: float) -> list[str]:
        """Merge a heartbeat's member list; returns the peers that were new."""
        new = []
        for info in members:
            if info.peer_id == self.self_id or info.age >= self.timeout:
                continue
            if self._update(info.peer_id, info.addrs, now - info.age):
                new.append(info.peer_id)
        return new

    def _update(self, peer_id: str, addrs: tuple[str, ...], heard: float) -> bool:
        if peer_id == self.self_id:
            return False
        entry = self._members.get(peer_id)
        if entry is None:
            if len(self._members) >= self.capacity:
                return False
            self._members[peer_id] = _Entry(addrs, heard)
            return True
        if heard > entry.last_heard:
            entry.last_heard = heard
            if addrs:
                entry.addrs = addrs
        return False

    def prune(self, now: float) -> list[str]:
        """Forget members not heard of for ``timeout`` seconds; returns them."""
        gone = [p for p, e in self._members.items() if now - e.last_heard >= self.timeout]
        for peer_id in gone:
            del self._members[peer_id]
        return gone

    def forget(self, peer_id: str) -> None:
        self._members.pop(peer_id, None)

    def addrs(self, peer_id: str) -> tuple[str, ...]:
        entry = self._members.get(peer_id)
        return entry.addrs if entry else ()

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._members

    def __len__(self) -> int:
        return len(self._members)

    def ids(self) -> list[str]:
        return sorted(self._members)

    def snapshot(self, now: float) -> tuple[MemberInfo, ...]:
        """The member list to put in our heartbeat."""
        return tuple(
            MemberInfo(p, e.addrs, max(0.0, now - e.last_heard))
            for p, e in sorted(self._members.items())
        )
