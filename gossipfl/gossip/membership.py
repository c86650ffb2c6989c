"""Who is in the federation: a table of members learnt from heartbeats, with ages.

Pure state with the clock passed in. A member is known either directly (it sent us a heartbeat)
or by hearsay (another member, its *reporter*, listed it, with how long ago it heard of it). Ages
travel with the hearsay, so a member that died is forgotten everywhere once no one has heard of it
for ``timeout`` seconds, instead of being kept alive by members repeating each other.

One member cannot flood the table (the rules below hold against a reporter that lies):

- A member heard from directly is never evicted or refused because of hearsay: when the table
  is full, a new direct member takes the slot of a hearsay entry (one from the reporter holding
  the most hearsay entries, its oldest first). Hearsay never changes a direct member's addresses.
- Hearsay entries are capped per reporter (``per_reporter``, a quarter of the table by default)
  and overall (the table's capacity less the direct members).
- Hearsay is *vouched* when the caller says so (the node vouches for ids whose membership
  certificate it verified), or once the member is heard from directly. Only vouched members go
  into :meth:`snapshot`, so unvouched hearsay is never re-gossiped: made-up ids stay in the
  tables of the nodes their inventor talks to, within its share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gossipfl.gossip.wire import MAX_MEMBERS, MemberInfo

SILENT_INTERVALS = 3  # heartbeat intervals without news of a peer: it has gone silent


@dataclass
class _Entry:
    addrs: tuple[str, ...]
    last_heard: float
    direct: bool  # heard from directly (then also vouched)
    vouched: bool
    reporter: str | None  # who told us, while the entry is hearsay


@dataclass
class Membership:
    """The members this node knows, itself excluded."""

    self_id: str
    timeout: float
    capacity: int = MAX_MEMBERS - 1
    per_reporter: int = 0  # hearsay entries one reporter may fill; 0: a quarter of the capacity
    _members: dict[str, _Entry] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.per_reporter <= 0:
            self.per_reporter = max(1, self.capacity // 4)

    def heard_from(self, peer_id: str, addrs: tuple[str, ...], now: float) -> bool:
        """Record a heartbeat straight from ``peer_id`` (an admitted peer); returns True if it
        is a new member. Evicts a hearsay entry when the table is full; refuses only when every
        slot holds a direct member."""
        if peer_id == self.self_id:
            return False
        entry = self._members.get(peer_id)
        if entry is None:
            if len(self._members) >= self.capacity and not self._evict_hearsay():
                return False
            self._members[peer_id] = _Entry(addrs, now, True, True, None)
            return True
        entry.direct, entry.vouched, entry.reporter = True, True, None
        if now >= entry.last_heard:
            entry.last_heard = now
        if addrs:
            entry.addrs = addrs
        return False

    def merge(self, members: tuple[MemberInfo, ...], now: float, *, reporter: str = "",
              vouched: bool = False) -> list[str]:
        """Merge the member list of ``reporter``'s heartbeat; returns the peers that were new.

        ``vouched``: the caller vouches for every id in ``members`` (it checked their
        certificates), so they may be re-gossiped; otherwise they are until heard directly.
        """
        new = []
        held = self.reported_counts()
        for info in members:
            if info.peer_id in (self.self_id, reporter) or info.age >= self.timeout:
                continue
            heard = now - info.age
            entry = self._members.get(info.peer_id)
            if entry is not None:
                entry.vouched = entry.vouched or vouched
                if heard > entry.last_heard:
                    entry.last_heard = heard
                    if info.addrs and not entry.direct:
                        entry.addrs = info.addrs
                continue
            if held[reporter] >= self.per_reporter or len(self._members) >= self.capacity:
                continue
            self._members[info.peer_id] = _Entry(info.addrs, heard, False, vouched, reporter)
            held[reporter] += 1
            new.append(info.peer_id)
        return new

    def _evict_hearsay(self) -> bool:
        """Free one slot held by hearsay: the oldest entry of the reporter holding the most."""
        held = self.reported_counts()
        if not held:
            return False
        top = max(held.values())
        victim = min(
            (p for p, e in self._members.items() if not e.direct and held[e.reporter or ""] == top),
            key=lambda p: (self._members[p].last_heard, p),
        )
        del self._members[victim]
        return True

    def reported_counts(self) -> Counter[str]:
        """Hearsay entries held per reporter."""
        return Counter(e.reporter or "" for e in self._members.values() if not e.direct)

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

    def last_heard(self, peer_id: str) -> float | None:
        """When we last had news of ``peer_id`` (its own heartbeat, or relayed with its age)."""
        entry = self._members.get(peer_id)
        return entry.last_heard if entry else None

    def is_direct(self, peer_id: str) -> bool:
        entry = self._members.get(peer_id)
        return entry is not None and entry.direct

    def is_vouched(self, peer_id: str) -> bool:
        entry = self._members.get(peer_id)
        return entry is not None and entry.vouched

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._members

    def __len__(self) -> int:
        return len(self._members)

    def ids(self) -> list[str]:
        return sorted(self._members)

    def snapshot(self, now: float) -> tuple[MemberInfo, ...]:
        """The member list to put in our heartbeat: vouched members only."""
        return tuple(
            MemberInfo(p, e.addrs, max(0.0, now - e.last_heard))
            for p, e in sorted(self._members.items())
            if e.vouched
        )
