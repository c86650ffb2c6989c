"""Addresses signed by their member (issue 8: the membership flooder's trap dials).

A member's liveness stamp signs where it listens; a table dials a member it has not heard from
directly only at the addresses its held stamp signs, and relays the stamp beside exactly those.
Against a reporter that lies: a member announced at a trap (with no stamp, with its genuine
stamp, the held one replayed, or a newer one) is never dialled there, and a member pruned for
silence does not come back at the trap. Deterministic: tables with explicit clocks."""

from __future__ import annotations

from gossipfl.crypto.liveness import verify_stamp
from gossipfl.gossip.membership import Membership
from tests.test_liveness import FED, TIMEOUT, Member

TRAP = ("/ip4/6.6.6.6/tcp/6666",)
REFRESH = TIMEOUT / 8


def _table(name: str = "me", refresh: float = 0.0) -> Membership:
    return Membership(name, TIMEOUT, federation=FED, refresh=refresh)


def _relayed(table: Membership, now: float) -> dict[str, tuple[tuple[str, ...], bytes]]:
    return {m.peer_id: (m.addrs, m.stamp) for m in table.snapshot(now)}


def test_a_member_announced_at_a_trap_is_never_dialled_there() -> None:
    m, table = Member(), _table()
    first = m.stamp()
    # the liar's claims: no stamp, then m's genuine stamp beside the trap
    table.merge((m.info(addrs=TRAP),), 0.0, reporter="liar", vouched=True)
    assert m.id in table and table.addrs(m.id) == ()  # known of; not dialled
    table.merge((m.info(first, addrs=TRAP),), 1.0, reporter="liar", vouched=True)
    assert table.addrs(m.id) == () and table.stamp_key(m.id) is None
    assert [(r, p) for r, p, _ in table.take_forged()] == [("liar", m.id)]
    # an honest relay brings the stamp with the addresses it signs: dialled there
    table.merge((m.info(first),), 2.0, reporter="honest", vouched=True)
    assert table.addrs(m.id) == m.addrs and table.stamp_key(m.id) == (1, 1)
    # the held stamp replayed beside the trap, a newer one beside it, or a fresh claim: the
    # signed addresses stay
    table.merge((m.info(first, addrs=TRAP),), 3.0, reporter="liar")
    table.merge((m.info(m.stamp(), addrs=TRAP),), 4.0, reporter="liar")
    table.merge((m.info(addrs=TRAP),), 5.0, reporter="liar")
    assert table.addrs(m.id) == m.addrs and table.stamp_key(m.id) == (1, 1)
    assert [(r, p) for r, p, _ in table.take_forged()] == [("liar", m.id)]  # the newer one
    # what we relay is the stamp beside the addresses it signs: it verifies elsewhere
    addrs, stamp = _relayed(table, 5.0)[m.id]
    assert addrs == m.addrs and verify_stamp(stamp, federation=FED, peer_id=m.id, addrs=addrs)
    other = _table("other")
    other.merge(tuple(table.snapshot(5.0)), 5.0, reporter="me", vouched=True)
    assert other.addrs(m.id) == m.addrs and other.take_forged() == []


def test_a_member_heard_directly_is_dialled_where_it_said() -> None:
    m, table = Member(), _table()
    table.merge((m.info(addrs=TRAP),), 0.0, reporter="liar", vouched=True)
    table.heard_from(m.id, m.addrs, 1.0, m.stamp())
    assert table.addrs(m.id) == m.addrs and table.is_direct(m.id)
    table.merge((m.info(m.stamp(), addrs=TRAP),), 2.0, reporter="liar")
    assert table.addrs(m.id) == m.addrs


def test_a_member_that_moved_is_relayed_with_the_addresses_its_held_stamp_signs() -> None:
    m, table = Member(), _table(refresh=REFRESH)
    table.heard_from(m.id, m.addrs, 0.0, m.stamp())
    moved = ("/ip4/10.0.0.2/tcp/2",)
    m.addrs = moved  # it listens elsewhere now; its new stamp signs that
    table.heard_from(m.id, moved, REFRESH / 2, m.stamp())  # too soon for its stamp
    assert table.addrs(m.id) == moved  # heard directly: dialled where it said
    addrs, stamp = _relayed(table, REFRESH / 2)[m.id]
    assert addrs == Member.addrs  # relayed beside the stamp held, as signed
    verify_stamp(stamp, federation=FED, peer_id=m.id, addrs=addrs)
    table.heard_from(m.id, moved, REFRESH, m.stamp())
    addrs, stamp = _relayed(table, REFRESH)[m.id]
    assert addrs == moved
    verify_stamp(stamp, federation=FED, peer_id=m.id, addrs=moved)


def test_a_pruned_member_does_not_come_back_at_a_trap() -> None:
    m, table = Member(), _table()
    table.merge((m.info(m.stamp()),), 0.0, reporter="honest", vouched=True)
    table.merge((m.info(m.stamp()),), 1.0, reporter="honest", vouched=True)
    assert table.prune(1.0 + TIMEOUT) == [m.id]
    # the liar holds m's later genuine stamp and sets it beside the trap, "heard just now"
    table.merge((m.info(m.stamp(), addrs=TRAP),), 2.0 + TIMEOUT, reporter="liar", vouched=True)
    assert m.id not in table
    table.merge((m.info(m.stamp()),), 3.0 + TIMEOUT, reporter="honest", vouched=True)
    assert table.addrs(m.id) == m.addrs
