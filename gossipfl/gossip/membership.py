"""Who is in the federation: a table of members learnt from heartbeats, with ages.

Pure state with the clock passed in. A member is known either directly (it sent us a heartbeat)
or by hearsay (another member, its *reporter*, listed it, with how long ago it heard of it). Ages
travel with the hearsay, so a member that died is forgotten everywhere once no one has heard of it
for ``timeout`` seconds, instead of being kept alive by members repeating each other.

One member cannot flood the table (the rules below hold against a reporter that lies):

- A member heard from directly is never evicted or refused because of hearsay: when the table
  is full, a new direct member takes the slot of a hearsay entry (one from the reporter holding
  the most hearsay entries, its oldest first). Hearsay never changes a direct member's addresses.
- Hearsay entries are capped per reporter (``per_reporter``: a quarter of the table, at most
  one heartbeat's worth, by default) and overall (the table's capacity less the direct
  members).
- Hearsay is *vouched* when the caller says so (the node vouches for ids whose membership
  certificate it verified), or once the member is heard from directly. Only vouched members go
  into :meth:`snapshot`, so unvouched hearsay is never re-gossiped: made-up ids stay in the
  tables of the nodes their inventor talks to, within its share.

Liveness is not hearsay. A relayed age says how long ago the reporter *claims* it heard of a
member; a liar can keep claiming "just now" for a member that died. So the table also keeps,
per member, the highest signed liveness stamp verified (:mod:`gossipfl.crypto.liveness`) and
:meth:`live_at`, the local time that number last grew or the member was heard from directly.
That, not the age, is what the churn excuse of secure aggregation reads, and what keeps a
member that ever carried a stamp from being pruned. Relayed stamps are checked only when higher
than the one held, at most ``MAX_STAMP_CHECKS`` per heartbeat (``JOINING_CHECKS`` while the
node joins), and not past the first forged one in a heartbeat. A member pruned for silence
leaves a *tombstone* (its held stamp number): hearsay brings it back only with a verified
stamp above that, so a liar cannot put a dead member back into the table (and the topology)
with age 0. Unsigned hearsay still serves for discovery, with ages, as before.

Addresses are signed too: a member's stamp signs where it listens, and an entry heard of is
dialled (:meth:`addrs`) only at the addresses its held stamp signs, relayed with that stamp;
a reporter's claim alone (no stamp, a stamp that does not verify for the addresses beside it,
or the held stamp replayed beside others) is never dialled, so a member cannot point others'
dials at an address of its choice, and a member's own heartbeat (authenticated) is where its
addresses come from once it is heard directly.

Heartbeats carry *deltas* of the table. Every change worth gossiping (a new entry, a newer
stamp held, new addresses, an entry vouched for, an unstamped entry's age refreshed) gives the
entry the table's next *version* (within its *epoch*: the node's run); entries are kept in
version order. A heartbeat lists the vouched entries changed after the version the peer says
it holds (its *ack*), oldest first, a heartbeat's worth at most, and through which version the
list is complete; the receiver acks it only if the list started at its ack and every entry was
judged, so a lost heartbeat, a restart or a budget cut is sent again. A peer holding none of
our table (one met while joining) is sent our freshest changes and a *digest* (8-byte tags)
of what we hold, and its answer leaves out what we hold (:meth:`Membership.outgoing`). A newer
stamp of a member, relayed or its own, is taken (verified, held, relayed: a change) at most
once per ``refresh`` (a node's: ``STAMP_REFRESH`` of its timeout): a live member still makes
progress within ``refresh`` plus a few heartbeats, far inside ``timeout``, so a delta holds
about ``members × interval / refresh`` entries.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from gossipfl.crypto import liveness
from gossipfl.crypto.liveness import Stamp, StampError, StampKey, StampVerdict
from gossipfl.gossip.member_entry import Budget, Entry, Verifier, cached_verify, shared
from gossipfl.gossip.wire import (
    MAX_DIGEST_MEMBERS,
    MAX_MEMBERS,
    MemberInfo,
    encode_digest,
    member_tag,
)

log = logging.getLogger(__name__)

#: Members one table holds at most by default (itself included): a heartbeat lists at most
#: ``MAX_MEMBERS`` of them, so a larger federation is gossiped in windows (:meth:`snapshot`).
MAX_FEDERATION = MAX_DIGEST_MEMBERS
#: Members one heartbeat lists at most: a table larger than this goes out in windows.
GOSSIP_WINDOW = MAX_MEMBERS
#: A node's table takes a member's newer stamp at most once per this fraction of its timeout.
STAMP_REFRESH = 1 / 4
#: Entries a heartbeat to a member that is not a neighbour lists at most (its freshest changes).
EXTRA_WINDOW = 32
SILENT_INTERVALS = 3  # heartbeat intervals without news of a peer: it has gone silent
#: Relayed stamps one heartbeat may make us verify. Past it, the rest of that heartbeat's new
#: stamps are ignored (not held, not progress); the next heartbeats carry them, and each
#: checked one is then held, so a heartbeat's window of members is covered in a few heartbeats.
MAX_STAMP_CHECKS = 64
#: A node still joining (no topology yet) checks up to a whole member list a heartbeat, of
#: stamps here and of certificates (``node/security.py``): at 64 a heartbeat, a member of a
#: 1,000-member federation took some six heartbeat intervals to hold every member.
JOINING_CHECKS = MAX_MEMBERS

@dataclass
class Membership:
    """The members this node knows, itself excluded."""

    self_id: str
    timeout: float
    capacity: int = MAX_FEDERATION - 1
    per_reporter: int = 0  # hearsay one reporter may fill (0: capacity/4, ≤ MAX_MEMBERS - 1)
    federation: str = ""  # what liveness stamps must name
    verify: Verifier = cached_verify
    _members: dict[str, Entry] = field(default_factory=dict)
    _tombstones: dict[str, StampKey] = field(default_factory=dict)  # pruned: their last stamp
    _window: int = 0  # where the next snapshot's window starts (a table larger than a heartbeat)
    #: stamps refused since last drained: (reporter, member, reason); the node logs them
    forged: list[tuple[str, str, str]] = field(default_factory=list)
    epoch: int = 0  # this table's epoch (the node's run): versions count within it
    refresh: float = 0.0  # a member's newer stamp is taken at most this often (0: always;
    # a node's table: STAMP_REFRESH of its timeout)
    deferred: int = 0  # entries of the last merge left for a later heartbeat (check budget)
    _version: int = 0
    _acked: dict[str, tuple[int, int]] = field(default_factory=dict)  # peer: our table it holds
    _have: dict[str, tuple[int, int]] = field(default_factory=dict)  # peer: its table we hold
    _digest: tuple[tuple[int, int], bytes] = ((-1, -1), b"")  # (version, size): digest()

    def __post_init__(self) -> None:
        if self.per_reporter <= 0:
            self.per_reporter = max(1, min(self.capacity // 4, MAX_MEMBERS - 1))

    def _touch(self, peer_id: str, entry: Entry) -> None:
        """A change to gossip: the entry takes the next version and moves to the end (the
        table is kept in version order)."""
        self._version += 1
        entry.version = self._version
        entry.gossiped_heard = entry.last_heard
        self._members[peer_id] = self._members.pop(peer_id, entry)

    def _aged(self, peer_id: str, entry: Entry) -> None:
        """An unstamped entry's age is its only sign of life: gossip it again once it has
        grown fresher by ``refresh`` (a stamped one lives by its stamps)."""
        if entry.stamp_key is None and entry.last_heard - entry.gossiped_heard >= self.refresh:
            self._touch(peer_id, entry)

    def heard_from(self, peer_id: str, addrs: tuple[str, ...], now: float,
                   stamp: bytes = b"") -> bool:
        """Record a heartbeat (or message) straight from ``peer_id`` (an admitted peer, the
        channel authenticates it: that is liveness in itself), with its own ``stamp`` if it
        sent one; returns True if it is a new member. Evicts a hearsay entry when the table is
        full; refuses only when every slot holds a direct member."""
        if peer_id == self.self_id:
            return False
        self._tombstones.pop(peer_id, None)
        entry = self._members.get(peer_id)
        new = entry is None
        if entry is None:
            if len(self._members) >= self.capacity and not self._evict_hearsay():
                return False
            peer_id, addrs = shared(peer_id, addrs)
            entry = self._members[peer_id] = Entry(addrs, now, True, True, None, since=now,
                                                   tag=member_tag(peer_id))
            self._touch(peer_id, entry)
        elif not entry.vouched:
            self._touch(peer_id, entry)
        entry.direct, entry.vouched, entry.reporter = True, True, None
        entry.live = now if entry.live is None else max(entry.live, now)
        if stamp:
            self._take_stamp(peer_id, entry, stamp, now, peer_id, addrs)
        if new:
            return True
        if now >= entry.last_heard:
            entry.last_heard = now
        if addrs and addrs != entry.addrs:
            entry.addrs = addrs
            self._touch(peer_id, entry)
        else:
            self._aged(peer_id, entry)
        return False

    def merge(self, members: tuple[MemberInfo, ...], now: float, *, reporter: str = "",
              vouched: bool = False, checks: int = MAX_STAMP_CHECKS) -> list[str]:
        """Merge the member list of ``reporter``'s heartbeat; returns the peers that were new.

        ``vouched``: the caller vouches for every id in ``members`` (it checked their
        certificates), so they may be re-gossiped; otherwise they are until heard directly.
        ``checks``: the stamp checks this heartbeat may cost (``JOINING_CHECKS`` while joining).
        """
        new = []
        held: Counter[str] | None = None  # counted at the first new entry: a heartbeat listing
        # only members already held (most, once a table is full) then costs no pass over it
        budget = Budget(checks)
        self.deferred = 0
        for info in members:
            if info.peer_id in (self.self_id, reporter) or info.age >= self.timeout:
                continue
            heard = now - info.age
            entry = self._members.get(info.peer_id)
            if entry is not None:
                if vouched and not entry.vouched:
                    entry.vouched = True
                    self._touch(info.peer_id, entry)
                if info.stamp:
                    self._take_stamp(info.peer_id, entry, info.stamp, now, reporter, info.addrs,
                                     budget)
                if heard > entry.last_heard:
                    entry.last_heard = heard
                    if (info.addrs and not entry.direct and not entry.stamp
                            and info.addrs != entry.addrs):  # a claim (never dialled)
                        entry.addrs = info.addrs
                        self._touch(info.peer_id, entry)
                    self._aged(info.peer_id, entry)
                continue
            if held is None:
                held = self.reported_counts()
            if held[reporter] >= self.per_reporter or len(self._members) >= self.capacity:
                continue
            peer_id, addrs = shared(info.peer_id, info.addrs)
            entry = Entry(addrs, heard, False, vouched, reporter, since=now,
                          tag=member_tag(peer_id))
            tomb = self._tombstones.get(peer_id)
            if tomb is not None:  # pruned for silence: back only with a newer verified stamp
                entry.stamp_key = tomb
                if not info.stamp or self._take_stamp(
                        peer_id, entry, info.stamp, now, reporter, addrs,
                        budget) is not StampVerdict.PROGRESS:
                    continue
                del self._tombstones[peer_id]
            elif info.stamp:
                self._take_stamp(peer_id, entry, info.stamp, now, reporter, addrs, budget)
            self._members[peer_id] = entry
            self._touch(peer_id, entry)
            held[reporter] += 1
            new.append(peer_id)
        return new

    def _take_stamp(self, peer_id: str, entry: Entry, data: bytes, now: float,
                    reporter: str, addrs: tuple[str, ...],
                    budget: Budget | None = None) -> StampVerdict:
        """Hold ``data`` for ``peer_id`` if it verifies and is higher than the stamp held; it is
        progress (``live`` = now) when a stamp was held before or the entry is a tombstone's.
        A first stamp of a member only heard of is held, not progress: a replayed old stamp
        makes no one live."""
        if data == entry.stamp:  # the stamp held (relayed again): nothing to parse
            return StampVerdict.STALE
        if now - entry.stamp_at < self.refresh:
            # one taken lately (relayed, or its own: hearing it is liveness already); each
            # is a signature check and a change that heartbeats to neighbours carry
            return StampVerdict.STALE
        try:
            key = Stamp.from_bytes(data).key
        except StampError as error:
            return self._forged(reporter, peer_id, str(error), budget)
        if not liveness.is_progress(entry.stamp_key, key):
            return StampVerdict.STALE
        if budget is not None and budget.spent():
            self.deferred += 1
            return StampVerdict.UNCHECKED
        try:
            self.verify(data, self.federation, peer_id, addrs)
        except StampError as error:
            return self._forged(reporter, peer_id, str(error), budget)
        if entry.stamp_key is not None or entry.direct:
            entry.live = now
        entry.stamp, entry.stamp_key, entry.stamp_at = bytes(data), key, now
        entry.stamp_addrs = shared(peer_id, addrs)[1]
        if peer_id in self._members:  # a new entry is touched once it is in
            self._touch(peer_id, entry)
        return StampVerdict.PROGRESS

    def _forged(self, reporter: str, peer_id: str, reason: str,
                budget: Budget | None) -> StampVerdict:
        """One refused stamp: recorded for the node to log; no more checks in this heartbeat
        (an honest relay only relays stamps it verified)."""
        self.forged.append((reporter, peer_id, reason))
        del self.forged[:-MAX_MEMBERS]
        if budget is not None:
            budget.left = 0
        return StampVerdict.FORGED

    def take_forged(self) -> list[tuple[str, str, str]]:
        forged, self.forged = self.forged, []
        return forged

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
        """Forget members not heard of for ``timeout`` seconds; returns them. A member that
        ever carried a verified stamp is kept only by stamp progress or direct hearing (relayed
        ages do not count), and leaves a tombstone; one that never did, by its ages as
        before."""
        gone = []
        for peer_id, entry in self._members.items():
            if entry.stamp_key is not None:
                last = max(entry.since, entry.live if entry.live is not None else entry.since)
            else:
                last = entry.last_heard
            if now - last >= self.timeout:
                gone.append(peer_id)
        for peer_id in gone:
            self._acked.pop(peer_id, None)
            self._have.pop(peer_id, None)
            key = self._members.pop(peer_id).stamp_key
            if key is not None:
                self._tombstones[peer_id] = key
                while len(self._tombstones) > self.capacity:
                    del self._tombstones[next(iter(self._tombstones))]
        return gone

    def forget(self, peer_id: str) -> None:
        self._members.pop(peer_id, None)
        self._tombstones.pop(peer_id, None)
        self._acked.pop(peer_id, None)
        self._have.pop(peer_id, None)

    def addrs(self, peer_id: str) -> tuple[str, ...]:
        """Where ``peer_id`` may be dialled: the addresses it gave us itself, or the ones its
        held stamp signs; none while all we have is a reporter's claim."""
        entry = self._members.get(peer_id)
        return entry.dial_addrs if entry else ()

    def last_heard(self, peer_id: str) -> float | None:
        """When we last had news of ``peer_id`` (its own heartbeat, or relayed with its age)."""
        entry = self._members.get(peer_id)
        return entry.last_heard if entry else None

    def live_at(self, peer_id: str) -> float | None:
        """When ``peer_id`` last proved itself alive to us: the local time its verified stamps
        last grew, or it was heard from directly (None: never). Relayed ages do not count."""
        entry = self._members.get(peer_id)
        return entry.live if entry else None

    def stamp_key(self, peer_id: str) -> StampKey | None:
        entry = self._members.get(peer_id)
        return entry.stamp_key if entry else None

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

    def snapshot(self, now: float, limit: int = GOSSIP_WINDOW) -> tuple[MemberInfo, ...]:
        """Vouched members, at most ``limit``, the next window in id order each call
        (wrapping): the whole table, as heartbeats listed it before deltas (the flooding
        adversary and the tests read it)."""
        vouched = [(p, e) for p, e in sorted(self._members.items()) if e.vouched]
        if len(vouched) > limit:
            start = self._window % len(vouched)
            self._window = start + limit
            vouched = (vouched + vouched)[start:start + limit]
        return tuple(MemberInfo(p, e.relayed_addrs, max(0.0, now - e.last_heard), stamp=e.stamp)
                     for p, e in vouched)

    @property
    def version(self) -> int:
        return self._version

    def digest(self) -> bytes:
        """The tags of the vouched members and our own (:func:`wire.encode_digest`), for a
        partner to leave out of its answer; built again only when the table changed."""
        key = (self._version, len(self._members))
        if self._digest[0] != key:
            tags = [e.tag for e in self._members.values() if e.vouched]
            tags.append(member_tag(self.self_id))
            self._digest = (key, encode_digest(tags))
        return self._digest[1]

    def delta(self, now: float, since: int = 0, limit: int = GOSSIP_WINDOW, *,
              freshest: bool = False, held: frozenset[int] = frozenset(),
              certificate: Callable[[str], bytes] | None = None,
              known: Callable[[str], bool] | None = None,
              current: Callable[[str, bytes], bool] | None = None,
              ) -> tuple[tuple[MemberInfo, ...], int, int]:
        """The vouched entries changed after version ``since`` (0: the whole table), oldest
        change first, at most ``limit`` of them, but those whose tag is in ``held`` (the
        receiver holds them); with ``since`` and ``upto``: every such entry changed after
        ``since`` through ``upto``. ``freshest``: the ``limit`` latest changes instead
        (``since`` then moves up to just before them). ``certificate``: each entry's
        certificate to carry (an entry without one is left out, as uncertified); ``known``:
        whether the receiver holds a member's certificate already (its entry then goes
        without it; :mod:`gossipfl.gossip.cert_holders`); ``current(member, stamp)``: whether
        the receiver holds what the entry says (it is left out, as held).

        >>> table = Membership("me", timeout=10.0)
        >>> for i in range(4):
        ...     _ = table.heard_from(f"p{i}", (), 0.0)
        >>> [m.peer_id for m in table.delta(1.0, 0, 3)[0]], table.delta(1.0, 0, 3)[1:]
        (['p0', 'p1', 'p2'], (0, 3))
        >>> _ = table.heard_from("p1", ("/new",), 1.0)  # new addresses: a change
        >>> [m.peer_id for m in table.delta(1.0, 3)[0]], table.delta(1.0, 3)[1:]
        (['p3', 'p1'], (3, 5))
        """
        if since > self._version:  # another epoch's, or made up: start over
            since = 0
        changed = []
        for peer_id in reversed(self._members):  # newest change first
            entry = self._members[peer_id]
            if entry.version <= since:
                break
            if entry.vouched and entry.tag not in held and not (
                    current is not None and current(peer_id, entry.stamp)):
                changed.append((peer_id, entry))
            if freshest and len(changed) == limit:
                since = max(since, entry.version - 1)
                break
        changed.reverse()
        upto = self._version
        if len(changed) > limit:
            changed = changed[:limit]
            upto = changed[-1][1].version
        if certificate is None:
            return (tuple(MemberInfo(p, e.relayed_addrs, max(0.0, now - e.last_heard),
                                     stamp=e.stamp)
                          for p, e in changed), since, upto)
        held_by_receiver = known or (lambda _: False)
        return (tuple(MemberInfo(p, e.relayed_addrs, max(0.0, now - e.last_heard),
                                 b"" if held_by_receiver(p) else cert, e.stamp)
                      for p, e in changed if (cert := certificate(p))), since, upto)

    def outgoing(self, now: float, peer_id: str, *, wide: bool,
                 held: frozenset[int] | None = None,
                 certificate: Callable[[str], bytes] | None = None,
                 known: Callable[[str], bool] | None = None,
                 current: Callable[[str, bytes], bool] | None = None,
                 ) -> tuple[tuple[MemberInfo, ...], tuple[int, int, int], bytes]:
        """What a heartbeat to ``peer_id`` says of the table: (members, (epoch, since, upto),
        digest); ``wide``: a heartbeat's worth may go, else the freshest ``EXTRA_WINDOW``.
        ``held``: the digest of the heartbeat we answer; its members are left out. Else, to a
        peer holding none of our table, only our freshest changes go (we cannot tell what it
        lacks), and while we hold none of its table, our digest: its answer brings what we
        lack (digest and pull), so a member joining n is sent about the n entries it lacks."""
        since = self.since_for(peer_id)
        blind = held is None and since == 0
        members, since, upto = self.delta(
            now, since, GOSSIP_WINDOW if wide and not blind else EXTRA_WINDOW,
            freshest=not wide or blind, held=held or frozenset(), certificate=certificate,
            known=known, current=current)
        pull = held is None and wide and self.ack_for(peer_id)[1] == 0
        return members, (self.epoch, since, upto), self.digest() if pull else b""

    def since_for(self, peer_id: str) -> int:
        """The version of this table ``peer_id`` says it holds (0: none, or another epoch's)."""
        epoch, version = self._acked.get(peer_id, (0, 0))
        return version if epoch == self.epoch else 0

    def acked(self, peer_id: str, ack: tuple[int, int]) -> None:
        """``peer_id`` (a member, heard from directly) says it holds our table through
        ``ack`` = (epoch, version). A lie only costs the liar what we send it."""
        if peer_id in self._members:
            self._acked[peer_id] = ack

    def ack_for(self, peer_id: str) -> tuple[int, int]:
        """How much of ``peer_id``'s table we hold: (its epoch, version), (0, 0) for none."""
        return self._have.get(peer_id, (0, 0))

    def took_table(self, peer_id: str, table: tuple[int, int, int], complete: bool) -> None:
        """``peer_id``'s heartbeat held its table's changes after ``since`` through ``upto``
        (``table`` = (epoch, since, upto)); we hold them all if the list started where we
        stood and every entry was judged (``complete``: none left to a later heartbeat)."""
        if peer_id not in self._members:
            return
        epoch, since, upto = table
        held_epoch, held = self._have.get(peer_id, (0, 0))
        if epoch != held_epoch:  # it restarted (or we never heard its table)
            held = 0
        if complete and since <= held:
            held = max(held, upto)
        self._have[peer_id] = (epoch, held)
