"""Membership gossiped as deltas: versions, acks (per-peer high-water marks), windows, the
stamp refresh, and that forged or stale entries are still refused. Deterministic: tables
with explicit clocks, heartbeats passed by hand."""

from __future__ import annotations

from gossipfl.crypto.liveness import StampVerdict, sign_stamp
from gossipfl.gossip.membership import GOSSIP_WINDOW, MAX_STAMP_CHECKS, Membership
from gossipfl.gossip.wire import MemberInfo
from tests.test_liveness import FED, TIMEOUT, Counting, Member

REFRESH = TIMEOUT / 8


def _table(name: str, epoch: int = 1, verify: Counting | None = None) -> Membership:
    table = Membership(name, TIMEOUT, federation=FED, epoch=epoch, refresh=REFRESH)
    if verify is not None:
        table.verify = verify
    return table


def _send(sender: Membership, receiver: Membership, now: float, *, lost: bool = False,
          limit: int = GOSSIP_WINDOW) -> tuple[MemberInfo, ...]:
    """One heartbeat from ``sender`` to ``receiver`` (each heard from the other directly), as
    the node builds and absorbs it: the delta since what the receiver acked, then the
    receiver's ack."""
    receiver.heard_from(sender.self_id, (), now)
    sender.heard_from(receiver.self_id, (), now)
    members, since, upto = sender.delta(now, sender.since_for(receiver.self_id), limit)
    # what it says of others (the receiver's own entry, heard directly, ages: listed too)
    told = tuple(m for m in members if m.peer_id != receiver.self_id)
    if lost:
        return told
    receiver.merge(members, now, reporter=sender.self_id, vouched=True)
    receiver.took_table(sender.self_id, (sender.epoch, since, upto), receiver.deferred == 0)
    sender.acked(receiver.self_id, receiver.ack_for(sender.self_id))
    return told


def test_a_heartbeat_carries_only_what_changed_since_the_peer_s_ack() -> None:
    a, b = _table("a"), _table("b")
    for i in range(5):
        a.heard_from(f"p{i}", (f"/ip4/10.0.0.{i}/tcp/1",), 0.0)
    first = _send(a, b, 1.0)
    assert {m.peer_id for m in first} == {f"p{i}" for i in range(5)}
    assert b.ack_for("a") == (1, a.version)
    assert _send(a, b, 2.0) == ()  # nothing changed: nothing listed
    a.heard_from("p3", ("/ip4/10.9.9.9/tcp/1",), 3.0)  # new addresses: a change
    assert [m.peer_id for m in _send(a, b, 3.0)] == ["p3"]
    relayed = {m.peer_id: m.addrs for m in b.snapshot(3.0)}
    assert relayed["p3"] == ("/ip4/10.9.9.9/tcp/1",)
    assert b.addrs("p3") == ()  # unstamped hearsay: relayed, never dialled


def test_a_lost_heartbeat_is_sent_again() -> None:
    a, b = _table("a"), _table("b")
    _send(a, b, 0.0)
    a.heard_from("p0", (), 1.0)
    assert [m.peer_id for m in _send(a, b, 1.0, lost=True)] == ["p0"]
    assert "p0" not in b
    assert [m.peer_id for m in _send(a, b, 2.0)] == ["p0"]  # b's ack did not move
    assert "p0" in b and _send(a, b, 3.0) == ()


def test_a_member_that_never_gets_a_full_table_learns_everyone_in_windows() -> None:
    """600 members, a heartbeat's worth at a time: b holds them all after ⌈600 / 255⌉
    heartbeats, and its ack then says so."""
    a, b = _table("a"), _table("b")
    b.per_reporter = b.capacity  # the per-reporter cap is another test's
    ids = [f"m{i:03d}" for i in range(600)]
    for peer in ids:
        a.heard_from(peer, (), 0.0)
    sizes = [len(_send(a, b, 1.0 + k)) for k in range(4)]
    assert sizes == [GOSSIP_WINDOW, GOSSIP_WINDOW, 600 - 2 * GOSSIP_WINDOW, 0]
    assert set(ids) <= set(b.ids())
    assert b.ack_for("a") == (1, a.version)


def test_hearsay_spreads_along_a_line_of_deltas() -> None:
    """a - b - c: c hears of a's members through b only, in b's deltas."""
    a, b, c = _table("a"), _table("b"), _table("c")
    for i in range(10):
        a.heard_from(f"p{i}", (), 0.0)
    for now in (1.0, 2.0):
        _send(a, b, now)
        _send(b, c, now)
    assert {f"p{i}" for i in range(10)} | {"a"} <= set(c.ids())


def test_a_restart_is_sent_the_whole_table() -> None:
    a, b = _table("a"), _table("b")
    for i in range(3):
        a.heard_from(f"p{i}", (), 0.0)
    _send(a, b, 1.0)
    assert _send(a, b, 2.0) == ()
    b_again = _table("b", epoch=2)  # b restarted: an empty table that acks nothing of a's
    a.acked("b", b_again.ack_for("a"))
    assert {m.peer_id for m in _send(a, b_again, 3.0)} >= {"p0", "p1", "p2"}
    a_again = _table("a", epoch=7)  # a restarted: b's ack names a's old epoch
    a_again.heard_from("q", (), 4.0)
    _send(a_again, b_again, 4.0)
    assert b_again.ack_for("a") == (7, a_again.version)


def test_a_window_cut_short_by_the_check_budget_is_not_acked() -> None:
    """255 members with fresh stamps: 64 checks a heartbeat. b holds back its ack until every
    entry was judged, so a sends them again and b takes them all within a few heartbeats,
    each stamp checked once."""
    verify = Counting()
    a, b = _table("a"), _table("b", verify=verify)
    members = [Member() for _ in range(GOSSIP_WINDOW - 1)]
    a.per_reporter = b.per_reporter = b.capacity
    for i in range(0, len(members), MAX_STAMP_CHECKS):  # a holds every stamp
        a.merge(tuple(m.info(m.stamp()) for m in members[i:i + MAX_STAMP_CHECKS]), 0.0,
                reporter="r", vouched=True)
    assert all(a.stamp_key(m.id) for m in members)
    rounds = 0
    while b.ack_for("a") != (1, a.version):
        _send(a, b, 1.0 + rounds)
        rounds += 1
        assert rounds <= 5
    assert rounds == -(-len(members) // MAX_STAMP_CHECKS)
    assert all(b.stamp_key(m.id) == (1, 1) for m in members)
    assert verify.calls == len(members)


def test_a_relayed_newer_stamp_is_taken_at_most_once_a_refresh() -> None:
    verify = Counting()
    table = _table("me", verify=verify)
    m = Member()
    table.merge((m.info(m.stamp()),), 0.0, reporter="r")
    version = table.version
    table.merge((m.info(m.stamp()),), REFRESH / 2, reporter="r")  # newer, but too soon
    assert table.stamp_key(m.id) == (1, 1) and verify.calls == 1
    assert table.version == version  # not a change: not gossiped again
    table.merge((m.info(m.stamp()),), REFRESH, reporter="r")
    assert table.stamp_key(m.id) == (1, 3) and table.live_at(m.id) == REFRESH
    assert verify.calls == 2 and table.version > version
    # a member's own heartbeat is liveness in itself; its stamp too is taken (checked,
    # gossiped again) at most once a refresh
    table.heard_from(m.id, m.addrs, REFRESH + 0.1, m.stamp())
    assert table.stamp_key(m.id) == (1, 3) and table.live_at(m.id) == REFRESH + 0.1
    assert verify.calls == 2
    table.heard_from(m.id, m.addrs, 2 * REFRESH, m.stamp())
    assert table.stamp_key(m.id) == (1, 5) and verify.calls == 3


def test_forged_and_stale_entries_are_still_refused_and_not_gossiped() -> None:
    verify = Counting()
    table, peer = _table("me", verify=verify), _table("peer")
    m, liar = Member(), Member()
    table.merge((m.info(m.stamp()),), 0.0, reporter="r", vouched=True)
    _send(table, peer, 0.5)
    held = table.stamp_key(m.id)
    forged_for_m = sign_stamp(FED, m.id, 1, 99, liar.key)  # m's id, the liar's key
    checks = verify.calls
    verdict = table._take_stamp(m.id, table._members[m.id], forged_for_m, 2 * REFRESH, "r",
                                m.addrs)
    assert verdict is StampVerdict.FORGED and table.stamp_key(m.id) == held
    assert table.take_forged() == [("r", m.id, "signature does not verify")]
    # a refused stamp is not kept: the same bytes are checked (and refused) again
    table._take_stamp(m.id, table._members[m.id], forged_for_m, 3 * REFRESH, "r", m.addrs)
    assert verify.calls == checks + 2 and table.take_forged()
    # a stale (lower) stamp costs no check and changes nothing
    table.merge((m.info(m.stamp(seq=0)),), 4 * REFRESH, reporter="r")
    assert verify.calls == checks + 2 and table.stamp_key(m.id) == held
    assert _send(table, peer, 5 * REFRESH) == ()  # nothing new to gossip


def test_a_peer_that_acks_more_than_we_have_is_sent_the_whole_table() -> None:
    a = _table("a")
    for i in range(3):
        a.heard_from(f"p{i}", (), 0.0)
    a.acked("p0", (1, 10**9))  # made up: it costs the liar a full table, no one else
    assert len(a.delta(1.0, a.since_for("p0"))[0]) == 3
    a.acked("p0", (99, 2))  # another epoch's: start over too
    assert a.since_for("p0") == 0


def test_the_kept_verifications_keep_no_refusal() -> None:
    """The default verifier keeps its results (a simulation's nodes share them): a forged
    stamp is refused by every table that is handed it, each time."""
    m, liar = Member(), Member()
    forged = sign_stamp(FED, m.id, 1, 5, liar.key)
    for name in ("x", "y"):
        table = Membership(name, TIMEOUT, federation=FED)
        table.merge((m.info(m.stamp()),), 0.0, reporter="r")
        table.merge((m.info(forged),), 1.0, reporter="liar")
        assert table.take_forged() == [("liar", m.id, "signature does not verify")]
        assert table.stamp_key(m.id) == (1, m.seq)
