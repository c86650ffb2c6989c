"""Tests for gossipfl.gossip.membership: the member table with ages, merged from heartbeats."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.gossip.membership import Membership
from gossipfl.gossip.wire import MAX_MEMBERS, MemberInfo

FAST = settings(max_examples=60, deadline=None)
ADDR_A = ("/ip4/127.0.0.1/tcp/4001",)
ADDR_A2 = ("/ip4/10.0.0.1/tcp/4001",)
ADDR_B = ("/ip4/127.0.0.1/tcp/4002",)


def _ages(table: Membership, now: float) -> dict[str, float]:
    return {m.peer_id: m.age for m in table.snapshot(now)}


def test_defaults_leave_room_for_self() -> None:
    table = Membership("me", timeout=10.0)
    assert table.capacity == MAX_MEMBERS - 1
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
    assert table.addrs("b") == ADDR_B
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
    assert table.addrs("a") == ADDR_A
    # Someone heard of it 1 s ago at 104, we last heard at 100: fresher news wins.
    assert table.merge((MemberInfo("a", ADDR_A2, 1.0),), now=105.0, reporter="s") == []
    assert _ages(table, 105.0) == {"a": 1.0}
    assert table.addrs("a") == ADDR_A2


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


def test_default_capacity_fits_a_heartbeat() -> None:
    table = Membership("me", timeout=10.0)
    for i in range(MAX_MEMBERS + 10):
        table.heard_from(f"p{i:03d}", (), now=0.0)
    assert len(table) == MAX_MEMBERS - 1
    assert len(table.snapshot(0.0)) == MAX_MEMBERS - 1


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
