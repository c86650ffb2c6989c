"""Digest and pull: a heartbeat to a peer that holds none of our table carries our freshest
changes and a digest of what we hold (8-byte member tags); the answer leaves out what the
digest names. The wire field, its caps, and that a federation's join costs each member about
the entries it lacks (linear in the members), not a full window from every partner it meets.
Deterministic: tables with explicit clocks, partners from a seeded generator."""

from __future__ import annotations

import random

import pytest

from gossipfl.gossip.membership import EXTRA_WINDOW, GOSSIP_WINDOW, Membership
from gossipfl.gossip.wire import (
    MAX_DIGEST_MEMBERS,
    Heartbeat,
    MemberInfo,
    WireError,
    decode_body,
    decode_digest,
    encode_body,
    encode_digest,
    from_named,
    member_tag,
    named,
)
from gossipfl.node.membership_loop import HEARTBEAT_FANOUT
from tests.test_liveness import TIMEOUT

BEAT = Heartbeat("fed", "a", (), (MemberInfo("b", (), 1.0),), 0, 1, "training",
                 have=encode_digest([1, 2]))


def test_a_member_tag_is_the_first_eight_bytes_of_its_ids_blake2b_little_endian() -> None:
    assert member_tag("a") == 0x2F42665B399EF840
    assert member_tag("a") != member_tag("b")


def test_a_digest_is_eight_bytes_a_tag_and_decodes_to_the_set_of_tags() -> None:
    assert encode_digest([1, 2**64 - 1]).hex() == "0100000000000000" + "ff" * 8
    assert decode_digest(encode_digest([7, 3, 7])) == frozenset({3, 7})
    assert decode_digest(b"") == frozenset()


def _decode_with(**fields: object) -> Heartbeat:
    body = named(encode_body(BEAT))
    body.update(fields)
    return decode_body(from_named(body), Heartbeat)


def test_a_heartbeat_carries_its_digest_and_leaves_an_empty_one_off_the_wire() -> None:
    assert decode_body(encode_body(BEAT), Heartbeat) == BEAT
    plain = Heartbeat("fed", "a", (), (), 0, 1, "training")
    assert "have" not in named(encode_body(plain))
    assert decode_body(encode_body(plain), Heartbeat).have == b""
    most = encode_digest(range(MAX_DIGEST_MEMBERS))
    assert len(_decode_with(have=most).have) == 8 * MAX_DIGEST_MEMBERS


@pytest.mark.parametrize(("have", "message"), [
    (b"1234567", "whole number of 8-byte tags"),
    (b"\x00" * 8 * (MAX_DIGEST_MEMBERS + 1), f"more than {MAX_DIGEST_MEMBERS} members"),
    ("tags", "whole number of 8-byte tags"),
    ([1, 2], "whole number of 8-byte tags"),
    (b"", "must not be empty when present"),
])
def test_a_malformed_digest_is_refused(have: object, message: str) -> None:
    with pytest.raises(WireError, match=message):
        _decode_with(have=have)


def _table(name: str) -> Membership:
    return Membership(name, TIMEOUT, epoch=1, refresh=TIMEOUT / 8)


def test_the_digest_names_the_vouched_members_and_this_node_and_follows_changes() -> None:
    table = _table("me")
    table.heard_from("a", (), 0.0)
    table.merge((MemberInfo("b", (), 0.0),), 0.0, reporter="a", vouched=True)
    table.merge((MemberInfo("c", (), 0.0),), 0.0, reporter="a")  # not vouched: not named
    assert decode_digest(table.digest()) == {member_tag(p) for p in ("me", "a", "b")}
    assert table.digest() is table.digest()  # kept while the table is unchanged
    table.heard_from("c", (), 1.0)  # heard directly: vouched now
    assert member_tag("c") in decode_digest(table.digest())


def _absorb(receiver: Membership, sender: Membership, said: tuple, now: float) -> int:
    """``receiver`` takes ``sender``'s heartbeat (as ``membership_loop.absorb`` does);
    returns the entries it carried."""
    members, versions, _ = said
    receiver.heard_from(sender.self_id, (), now)
    receiver.acked(sender.self_id, sender.ack_for(receiver.self_id))
    receiver.merge(members, now, reporter=sender.self_id, vouched=True)
    receiver.took_table(sender.self_id, versions, receiver.deferred == 0)
    return len(members)


def _exchange(a: Membership, b: Membership, now: float, digest: bool = True) -> int:
    """``a`` heartbeats ``b``, ``b`` answers (with ``a``'s digest, if it sent one). Without
    ``digest``: as before digests, a full window of what changed since the peer's ack."""
    if not digest:
        def said(x: Membership, y: Membership) -> tuple:
            members, since, upto = x.delta(now, x.since_for(y.self_id), GOSSIP_WINDOW)
            return members, (x.epoch, since, upto), b""
        carried = _absorb(b, a, said(a, b), now)
        return carried + _absorb(a, b, said(b, a), now)
    sent = a.outgoing(now, b.self_id, wide=True)
    carried = _absorb(b, a, sent, now)
    held = decode_digest(sent[2]) if sent[2] else None
    return carried + _absorb(a, b, b.outgoing(now, a.self_id, wide=True, held=held), now)


def test_a_peer_met_first_is_pushed_the_freshest_changes_and_answers_what_we_lack() -> None:
    a, b = _table("a"), _table("b")
    for i in range(100):
        a.heard_from(f"x{i}", (), 0.0)
    for i in range(50, 150):
        b.heard_from(f"x{i}", (), 0.0)
    members, versions, have = a.outgoing(1.0, "b", wide=True)
    assert len(members) == EXTRA_WINDOW and have == a.digest()  # blind: freshest, and a digest
    _absorb(b, a, (members, versions, have), 1.0)
    members, versions, have = b.outgoing(1.0, "a", wide=True, held=decode_digest(have))
    sent = {m.peer_id for m in members}
    assert sent == {f"x{i}" for i in range(100, 150)} and have == b""
    _absorb(a, b, (members, versions, have), 1.0)
    assert a.ack_for("b") == (1, b.version)  # the answer was complete: a holds b's table
    assert len(a) == 151  # x0..x149 and b
    members, _, have = a.outgoing(2.0, "b", wide=True)  # a holds b's table now: no digest
    assert have == b""


def _join(n: int, digest: bool = True, seed: int = 0,
          fanout: int = HEARTBEAT_FANOUT) -> tuple[int, int]:
    """``n`` members join from one bootstrap member, each heartbeating up to ``fanout`` members
    it knows a second, one after another; returns the seconds until every table holds everyone
    and the entries all heartbeats carried meanwhile."""
    rng = random.Random(seed)
    tables = [_table(f"m{i:03}") for i in range(n)]
    by_id = {t.self_id: t for t in tables}
    carried = 0
    for second in range(1, 30):
        now = float(second)
        for table in tables:
            known = table.ids() or ["m000"]
            for peer in rng.sample(known, min(fanout, len(known))):
                if peer != table.self_id:
                    carried += _exchange(table, by_id[peer], now, digest)
        if all(len(t) == n - 1 for t in tables):
            return second, carried
    raise AssertionError("the join did not complete")


def test_a_join_sends_each_member_about_the_entries_it_lacks_linear_in_the_members() -> None:
    per_member = {}
    for fanout in (HEARTBEAT_FANOUT, 16):  # the node's, and the wide one it had before
        for n in (24, 96):
            for digest in (True, False):
                seconds, carried = _join(n, digest, fanout=fanout)
                assert seconds <= 3
                per_member[fanout, n, digest] = carried / n
    # with digests, a member is sent a few entries more for each member more (the pushes of
    # freshest changes are a constant a partner): the join's total grows about as n²/2 + c·n
    for fanout in (HEARTBEAT_FANOUT, 16):
        grown = per_member[fanout, 96, True] - per_member[fanout, 24, True]
        assert grown <= 4 * (96 - 24), per_member
        assert per_member[fanout, 96, True] < per_member[fanout, 96, False] / 3, per_member
    # without (a full window from each partner met), about 30 entries per member more
    assert per_member[16, 96, False] - per_member[16, 24, False] > 20 * (96 - 24), per_member
    assert per_member[16, 96, True] < per_member[16, 96, False] / 4
    # the node's fanout: as quick (above), and fewer entries carried than the wide one
    assert per_member[HEARTBEAT_FANOUT, 96, True] < per_member[16, 96, True] / 2, per_member
