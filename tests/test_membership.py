"""Tests for gossipfl.gossip.membership: the member table with ages, merged from heartbeats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.gossip.membership import GOSSIP_WINDOW, MAX_FEDERATION, Membership
from gossipfl.gossip.wire import MAX_MEMBERS, MemberInfo

FAST = settings(max_examples=60, deadline=None)
ADDR_A = ("/ip4/127.0.0.1/tcp/4001",)
ADDR_A2 = ("/ip4/10.0.0.1/tcp/4001",)
ADDR_B = ("/ip4/127.0.0.1/tcp/4002",)


def _ages(table: Membership, now: float) -> dict[str, float]:
    return {m.peer_id: m.age for m in table.snapshot(now)}


def test_defaults_leave_room_for_self() -> None:
    table = Membership("me", timeout=10.0)
    assert table.capacity == MAX_FEDERATION - 1
    assert len(table) == 0 and table.ids() == [] and table.snapshot(0.0) == ()


def test_heard_from_adds_then_refreshes() -> None:
    table = Membership("me", timeout=10.0)
    assert table.heard_from("a", ADDR_A, now=100.0) is True
    assert "a" in table and len(table) == 1
    assert table.addrs("a") == ADDR_A
    assert _ages(table, 103.0) == {"a": 3.0}

    assert table.heard_from("a", ADDR_A2, now=105.0) is False  # known: refreshed, not new
    assert len(table) == 1
    assert table.addrs("a") == ADDR_A2
    assert _ages(table, 106.0) == {"a": 1.0}

    # An empty address list refreshes the time but keeps the known addresses.
    assert table.heard_from("a", (), now=107.0) is False
    assert table.addrs("a") == ADDR_A2
    assert _ages(table, 107.0) == {"a": 0.0}


def _relayed(table: Membership, now: float) -> dict[str, tuple[str, ...]]:
    """The addresses our heartbeats give for each member."""
    return {m.peer_id: m.addrs for m in table.snapshot(now)}


def test_heard_from_self_is_ignored() -> None:
    table = Membership("me", timeout=10.0)
    assert table.heard_from("me", ADDR_A, now=1.0) is False
    assert "me" not in table and len(table) == 0


def test_unknown_peer_has_no_addrs() -> None:
    assert Membership("me", timeout=10.0).addrs("nobody") == ()


def test_merge_adds_hearsay_with_its_age() -> None:
    table = Membership("me", timeout=10.0)
    new = table.merge(
        (MemberInfo("a", ADDR_A, 2.0), MemberInfo("b", ADDR_B, 0.0)),
        now=50.0, reporter="r", vouched=True,
    )
    assert sorted(new) == ["a", "b"]
    assert table.ids() == ["a", "b"]
    assert _ages(table, 51.0) == {"a": 3.0, "b": 1.0}
    assert table.addrs("b") == ()  # a reporter's claim (no stamp signs it): never dialled
    assert _relayed(table, 51.0)["b"] == ADDR_B  # relayed as claimed
    assert not table.is_direct("a") and table.is_vouched("a")


def test_merge_ignores_self_and_entries_at_or_over_the_timeout() -> None:
    table = Membership("me", timeout=10.0)
    new = table.merge(
        (
            MemberInfo("me", ADDR_A, 0.0),
            MemberInfo("old", ADDR_A, 10.0),
            MemberInfo("older", ADDR_A, 25.0),
            MemberInfo("fresh", ADDR_B, 9.5),
        ),
        now=100.0,
    )
    assert new == ["fresh"]
    assert table.ids() == ["fresh"]


def test_merge_never_makes_a_member_older_or_changes_addrs_with_older_news() -> None:
    table = Membership("me", timeout=10.0)
    table.merge((MemberInfo("a", ADDR_A, 0.0),), now=100.0, reporter="r", vouched=True)
    # Someone heard of "a" 4 s ago (at 96): older than what we know; nothing changes.
    assert table.merge((MemberInfo("a", ADDR_A2, 4.0),), now=100.0, reporter="s") == []
    assert _ages(table, 100.0) == {"a": 0.0}
    assert _relayed(table, 100.0)["a"] == ADDR_A
    # Someone heard of it 1 s ago at 104, we last heard at 100: fresher news wins.
    assert table.merge((MemberInfo("a", ADDR_A2, 1.0),), now=105.0, reporter="s") == []
    assert _ages(table, 105.0) == {"a": 1.0}
    assert _relayed(table, 105.0)["a"] == ADDR_A2
    assert table.addrs("a") == ()  # claims only: never dialled


def test_hearsay_refreshes_a_direct_member_but_never_moves_its_addrs() -> None:
    table = Membership("me", timeout=10.0)
    table.heard_from("a", ADDR_A, now=100.0)
    assert table.merge((MemberInfo("a", ("/ip4/6.6.6.6/tcp/1",), 0.0),), now=104.0,
                       reporter="liar", vouched=True) == []
    assert _ages(table, 104.0) == {"a": 0.0}
    assert table.addrs("a") == ADDR_A  # what "a" itself said, not what others claim
    assert table.is_direct("a")


def test_prune_forgets_silent_members() -> None:
    table = Membership("me", timeout=10.0)
    table.heard_from("a", ADDR_A, now=0.0)
    table.heard_from("b", ADDR_B, now=5.0)
    assert table.prune(9.9) == []
    assert table.prune(10.0) == ["a"]  # exactly timeout seconds of silence is too long
    assert table.ids() == ["b"]
    assert table.addrs("a") == ()
    assert table.prune(14.0) == []
    assert table.prune(15.0) == ["b"]
    assert len(table) == 0


def test_forget() -> None:
    table = Membership("me", timeout=10.0)
    table.heard_from("a", ADDR_A, now=0.0)
    table.forget("a")
    table.forget("a")
    assert "a" not in table
    assert table.heard_from("a", ADDR_A, now=1.0) is True  # comes back as a new member


def test_capacity_is_respected() -> None:
    table = Membership("me", timeout=10.0, capacity=3)
    assert [table.heard_from(p, (), now=0.0) for p in "abcd"] == [True, True, True, False]
    assert table.ids() == ["a", "b", "c"]
    assert table.merge((MemberInfo("e", (), 0.0), MemberInfo("a", (), 0.0)), now=1.0,
                       reporter="a") == []
    assert len(table) == 3 and "e" not in table
    # Known members are still refreshed at capacity.
    assert table.heard_from("b", ADDR_B, now=2.0) is False
    assert table.addrs("b") == ADDR_B and _ages(table, 2.0)["b"] == 0.0
    # Room again once a member is gone.
    table.forget("c")
    assert table.heard_from("d", (), now=3.0) is True
    assert table.ids() == ["a", "b", "d"]


def test_a_table_larger_than_a_heartbeat_is_gossiped_in_windows() -> None:
    table = Membership("me", timeout=10.0)
    ids = [f"p{i:04d}" for i in range(2 * GOSSIP_WINDOW + 10)]
    for peer in ids:
        table.heard_from(peer, (), now=0.0)
    assert len(table) == len(ids)
    windows = [[m.peer_id for m in table.snapshot(0.0)] for _ in range(3)]
    assert all(len(w) == GOSSIP_WINDOW <= MAX_MEMBERS for w in windows)
    assert set(windows[0]) | set(windows[1]) | set(windows[2]) == set(ids)  # all, in 3 beats
    assert windows[0] == ids[:GOSSIP_WINDOW]
    assert windows[2][-1] == ids[GOSSIP_WINDOW * 3 - len(ids) - 1]  # wrapped round


def test_the_default_table_stops_at_its_capacity() -> None:
    table = Membership("me", timeout=10.0)
    for i in range(MAX_FEDERATION + 10):
        table.heard_from(f"p{i:05d}", (), now=0.0)
    assert len(table) == MAX_FEDERATION - 1


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "me"]),
            st.floats(0, 1000),  # when heard directly
            st.floats(0, 30),  # hearsay age
            st.booleans(),  # direct or hearsay
        ),
        max_size=30,
    ),
    st.floats(0, 100),
)
def test_snapshot_ages_are_non_negative_and_sorted(
    events: list[tuple[str, float, float, bool]], later: float
) -> None:
    table = Membership("me", timeout=10.0)
    latest = 0.0
    for peer, when, age, direct in events:
        if direct:
            table.heard_from(peer, (), now=when)
        else:
            table.merge((MemberInfo(peer, (), age),), now=when, vouched=True)
        latest = max(latest, when)
    # Including "now" earlier than a member's last_heard (clock skew between callers).
    for now in (0.0, latest, latest + later):
        snapshot = table.snapshot(now)
        assert all(m.age >= 0 for m in snapshot)
        assert [m.peer_id for m in snapshot] == table.ids()
    assert "me" not in table


# -- many tables gossiping -------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [3.0, 5.0, 10.0])
def test_dead_member_is_forgotten_everywhere(timeout: float) -> None:
    """Three live members swap snapshots every second; X stopped sending at t=0."""
    names = ["a", "b", "c"]
    tables = {n: Membership(n, timeout=timeout) for n in names}
    for n in names:
        tables[n].heard_from("x", ("/x",), now=0.0)
        for m in names:
            tables[n].heard_from(m, (f"/{m}",), now=0.0)
    # The live members keep hearing each other; X is only repeated as hearsay.
    t = 0.0
    seen_x_until = 0.0
    while t < timeout + 4:
        t += 1.0
        for sender in names:
            snapshot = tables[sender].snapshot(t)
            for receiver in names:
                if receiver == sender:
                    continue
                tables[receiver].heard_from(sender, (f"/{sender}",), now=t)
                tables[receiver].merge(snapshot, now=t)
        for n in names:
            tables[n].prune(t)
        if any("x" in tables[n] for n in names):
            seen_x_until = t
        for n in names:
            ages = _ages(tables[n], t)
            if "x" in ages:  # hearsay never makes X younger than its real silence
                assert ages["x"] == pytest.approx(t, abs=1e-9)
    assert seen_x_until == pytest.approx(timeout - 1.0)  # known until the last tick before
    for n in names:
        assert "x" not in tables[n], n
        others = sorted(set(names) - {n})
        assert tables[n].ids() == others  # live members are all still known


def test_dead_member_is_not_revived_by_a_late_hearsay() -> None:
    a = Membership("a", timeout=5.0)
    b = Membership("b", timeout=5.0)
    a.heard_from("x", (), now=0.0)
    b.heard_from("x", (), now=0.0)
    assert a.prune(5.0) == ["x"]
    # b has not pruned yet; its snapshot says X was heard 6 s ago: a must not re-add X.
    assert a.merge(b.snapshot(6.0), now=6.0) == []
    assert "x" not in a


# -- one member cannot flood the table -------------------------------------------------------------


def _fakes(n: int, prefix: str = "fake") -> tuple[MemberInfo, ...]:
    return tuple(MemberInfo(f"{prefix}{i:03d}", ("/ip4/6.6.6.6/tcp/666",), 0.0) for i in range(n))


def test_a_heartbeat_of_255_made_up_ids_does_not_displace_a_genuine_direct_member() -> None:
    table = Membership("me", timeout=10.0)
    table.heard_from("liar", ADDR_A, now=0.0)
    new = table.merge(_fakes(MAX_MEMBERS - 1), now=0.0, reporter="liar")  # not vouched
    more = table.merge(_fakes(2 * MAX_MEMBERS)[MAX_MEMBERS:], now=0.0, reporter="liar")
    assert len(new) + len(more) == table.per_reporter == MAX_MEMBERS - 1  # its share, no more
    assert table.heard_from("genuine", ADDR_B, now=1.0) is True
    assert "genuine" in table and table.is_direct("genuine")
    # the made-up ids are never re-gossiped: only vouched members go into our heartbeat
    assert [m.peer_id for m in table.snapshot(1.0)] == ["genuine", "liar"]


def test_hearsay_is_capped_per_reporter_and_overall() -> None:
    table = Membership("me", timeout=10.0, capacity=10, per_reporter=3)
    for reporter in ("a", "b"):
        table.heard_from(reporter, (), now=0.0)
    assert table.merge(_fakes(8, "x"), now=0.0, reporter="a", vouched=True) == [
        "x000", "x001", "x002"]
    assert len(table.merge(_fakes(8, "y"), now=0.0, reporter="b", vouched=True)) == 3
    assert table.reported_counts() == {"a": 3, "b": 3}
    # a known id repeated by another reporter takes no new slot and changes no one's share
    assert table.merge((MemberInfo("x000", (), 0.0),), now=1.0, reporter="b") == []
    assert table.reported_counts() == {"a": 3, "b": 3}
    # overall: 3 direct + 6 hearsay = 9 of 10; a third reporter gets the last slot, not its 3
    table.heard_from("c", (), now=0.0)
    assert len(table.merge(_fakes(8, "z"), now=0.0, reporter="c", vouched=True)) == 1
    assert len(table) == table.capacity


def test_hearsay_never_evicts_or_refuses_a_direct_member() -> None:
    table = Membership("me", timeout=10.0, capacity=4, per_reporter=4)
    table.heard_from("r", (), now=0.0)
    assert len(table.merge(_fakes(5), now=0.0, reporter="r", vouched=True)) == 3  # full now
    # direct members arrive: each takes a hearsay slot, never another direct member's
    for peer in ("d1", "d2", "d3"):
        assert table.heard_from(peer, (), now=1.0) is True
    assert sorted(table.ids()) == ["d1", "d2", "d3", "r"]
    # a full table of direct members refuses hearsay and refuses a fifth direct member
    assert table.merge(_fakes(3, "h"), now=2.0, reporter="r", vouched=True) == []
    assert table.heard_from("d4", (), now=2.0) is False
    assert sorted(table.ids()) == ["d1", "d2", "d3", "r"]


def test_eviction_takes_the_oldest_entry_of_the_reporter_holding_most() -> None:
    table = Membership("me", timeout=10.0, capacity=7, per_reporter=3)
    table.heard_from("big", (), now=0.0)
    table.heard_from("small", (), now=0.0)
    table.merge((MemberInfo("b1", (), 3.0), MemberInfo("b2", (), 1.0), MemberInfo("b3", (), 2.0)),
                now=5.0, reporter="big", vouched=True)
    table.merge((MemberInfo("s1", (), 4.0), MemberInfo("s2", (), 0.0)), now=5.0,
                reporter="small", vouched=True)
    assert len(table) == 7
    assert table.heard_from("new", (), now=6.0) is True
    assert "b1" not in table  # big holds 3 (most); b1 was heard of longest ago
    assert all(p in table for p in ("b2", "b3", "s1", "s2"))


def test_hearsay_heard_directly_becomes_direct_and_frees_its_reporters_share() -> None:
    table = Membership("me", timeout=10.0, per_reporter=2)
    table.merge(_fakes(2, "m"), now=0.0, reporter="r")
    assert table.snapshot(0.0) == () and not table.is_vouched("m000")
    assert table.merge(_fakes(3, "n"), now=0.0, reporter="r") == []  # r's share is full
    table.heard_from("m000", ADDR_B, now=1.0)
    assert table.is_direct("m000") and table.is_vouched("m000")
    assert [m.peer_id for m in table.snapshot(1.0)] == ["m000"]
    assert table.addrs("m000") == ADDR_B
    assert table.reported_counts() == {"r": 1}
    assert table.merge(_fakes(3, "n"), now=1.0, reporter="r") == ["n000"]


def test_a_reporter_cannot_vouch_for_itself_or_for_us() -> None:
    table = Membership("me", timeout=10.0)
    assert table.merge((MemberInfo("r", ADDR_A, 0.0), MemberInfo("me", ADDR_A, 0.0)), now=0.0,
                       reporter="r", vouched=True) == []
    assert len(table) == 0
