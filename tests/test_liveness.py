"""Signed liveness stamps: the stamp bytes, forgeries, the progress rule, and the membership
table against a member that relays lies (old stamps, no stamps, forged stamps, floods)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gossipfl.adversary.flood import fresh_identity
from gossipfl.crypto.admission import admit_identity, identity_signing_key, init_federation
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.crypto.liveness import (
    StampError,
    is_progress,
    sign_stamp,
    silent,
    verify_stamp,
)
from gossipfl.gossip import wire
from gossipfl.gossip.membership import JOINING_CHECKS, MAX_STAMP_CHECKS, Membership
from gossipfl.gossip.wire import (
    MAX_CONTROL_BYTES,
    MAX_MEMBERS,
    STAMP_BYTES,
    Heartbeat,
    MemberInfo,
    WireError,
)

FED = "fed"
TIMEOUT = 10.0
SILENCE = 5.0  # secagg_state.excused's threshold with the default protocol (1 s, 10 s)


class Member:
    """A real Ed25519 identity that signs its own stamps."""

    def __init__(self, epoch: int = 1) -> None:
        identity = fresh_identity()
        self.id, self.key, self.epoch, self.seq = str(identity.peer_id), identity_signing_key(
            identity), epoch, 0

    addrs = ("/ip4/10.0.0.1/tcp/1",)  # where it listens: its stamps sign it

    def stamp(self, seq: int | None = None, epoch: int | None = None, fed: str = FED) -> bytes:
        if seq is None:
            self.seq += 1
        return sign_stamp(fed, self.id, self.epoch if epoch is None else epoch,
                          self.seq if seq is None else seq, self.key, self.addrs)

    def info(self, stamp: bytes = b"", age: float = 0.0,
             addrs: tuple[str, ...] | None = None) -> MemberInfo:
        return MemberInfo(self.id, self.addrs if addrs is None else addrs, age, stamp=stamp)


class Counting:
    """A verifier that counts its signature checks."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, data: bytes, federation: str, peer_id: str, addrs: tuple[str, ...]):
        self.calls += 1
        return verify_stamp(data, federation=federation, peer_id=peer_id, addrs=addrs)


def _table(verify=None) -> Membership:
    table = Membership("me", TIMEOUT, federation=FED)
    if verify is not None:
        table.verify = verify
    return table


# -- the stamp ----------------------------------------------------------------------------------


def test_a_stamp_verifies_only_for_its_member_federation_and_bytes() -> None:
    m, other = Member(), Member()
    good = m.stamp()
    assert len(good) == STAMP_BYTES
    assert verify_stamp(good, federation=FED, peer_id=m.id, addrs=m.addrs).key == (1, 1)
    forgeries = {
        "another key": sign_stamp(FED, m.id, 1, 1, other.key),
        "another federation": m.stamp(fed="other"),
        "truncated": good[:-1],
    }
    for position in (0, 7, 8, 15, 16, STAMP_BYTES - 1):  # epoch, seq and signature bytes
        flipped = bytearray(good)
        flipped[position] ^= 0x01
        forgeries[f"bit {position}"] = bytes(flipped)
    for what, data in forgeries.items():
        with pytest.raises(StampError):
            verify_stamp(data, federation=FED, peer_id=m.id, addrs=m.addrs)
            pytest.fail(what)
    with pytest.raises(StampError):  # another member's stamp, relabelled
        verify_stamp(good, federation=FED, peer_id=other.id, addrs=m.addrs)
    with pytest.raises(StampError):  # an id that names no Ed25519 key
        verify_stamp(good, federation=FED, peer_id="made-up", addrs=m.addrs)
    # the addresses are signed: beside others (a trap), or none, or reordered, it is refused
    for addrs in (("/ip4/6.6.6.6/tcp/1",), (), (*m.addrs, "/ip4/6.6.6.6/tcp/1"),
                  ("/ip4/6.6.6.6/tcp/1", *m.addrs)):
        with pytest.raises(StampError):
            verify_stamp(good, federation=FED, peer_id=m.id, addrs=addrs)


def test_progress_is_a_higher_epoch_then_sequence() -> None:
    assert is_progress(None, (1, 1))
    assert is_progress((1, 1), (1, 2))
    assert not is_progress((1, 2), (1, 2))  # the same stamp, relayed again
    assert not is_progress((1, 2), (1, 1))  # a replay
    assert is_progress((1, 999), (2, 1))  # a restart: a later run's first stamp
    assert not is_progress((2, 1), (1, 1000))  # the earlier run's stamps, replayed after it
    assert silent(None, 10.0, SILENCE) and silent(4.0, 10.0, SILENCE)
    assert not silent(5.0, 10.0, SILENCE)


# -- the table: progress, replays, forgeries ---------------------------------------------------


def test_a_replayed_old_stamp_is_not_progress() -> None:
    m, table = Member(), _table()
    first, second = m.stamp(), m.stamp()
    table.merge((m.info(first),), 0.0, reporter="r")
    assert table.live_at(m.id) is None  # a first stamp only heard of proves nothing yet
    table.merge((m.info(second),), 1.0, reporter="r")
    assert table.live_at(m.id) == 1.0
    for t in (2.0, 4.0, 6.0, 8.0):  # a liar replays them, "heard just now"
        table.merge((m.info(first),), t, reporter="liar")
        table.merge((m.info(second),), t, reporter="liar")
        table.merge((m.info(),), t, reporter="liar")
    assert table.last_heard(m.id) == 8.0  # the hearsay age moved...
    assert table.live_at(m.id) == 1.0  # ...the proof of life did not
    assert silent(table.live_at(m.id), 8.0, SILENCE)
    assert table.take_forged() == []  # replays are not forgeries: never checked


def test_forged_stamps_are_refused_recorded_and_stop_the_checks() -> None:
    m, n, other = Member(), Member(), Member()
    verify = Counting()
    table = _table(verify)
    for member in (m, n):
        table.heard_from(member.id, member.addrs, 0.0, member.stamp())
    assert verify.calls == 2 and table.live_at(m.id) == 0.0
    forged = sign_stamp(FED, m.id, 1, 50, other.key)
    table.merge((m.info(forged), n.info(n.stamp())), 3.0, reporter="liar")
    assert table.live_at(m.id) == 0.0 and table.stamp_key(m.id) == (1, 1)
    # the first forgery ends this heartbeat's checks: n's (valid) stamp waits for another one
    assert verify.calls == 3 and table.stamp_key(n.id) == (1, 1)
    assert [(r, p) for r, p, _ in table.take_forged()] == [("liar", m.id)]
    assert table.take_forged() == []
    table.merge((n.info(n.stamp(2)),), 4.0, reporter="honest")
    assert table.live_at(n.id) == 4.0


def test_each_heartbeat_costs_at_most_the_check_cap() -> None:
    members = [Member() for _ in range(MAX_MEMBERS - 1)]
    verify = Counting()
    table = _table(verify)
    for m in members:
        table.heard_from(m.id, (), 0.0)
    assert verify.calls == 0
    beat = tuple(m.info(m.stamp()) for m in members)
    table.merge(beat, 1.0, reporter="r")
    assert verify.calls == MAX_STAMP_CHECKS
    heartbeats = 1
    while any(table.stamp_key(m.id) is None for m in members):  # the same list, from others
        table.merge(beat, 1.0, reporter="r")
        heartbeats += 1
    assert heartbeats == -(-len(members) // MAX_STAMP_CHECKS) and verify.calls == len(members)
    table.merge(beat, 2.0, reporter="r")  # nothing new: nothing checked
    assert verify.calls == len(members)
    # a flood of high-numbered forgeries costs one check per heartbeat
    liar = Member()
    table.merge(tuple(m.info(sign_stamp(FED, m.id, 9, 9, liar.key)) for m in members), 3.0,
                reporter="liar")
    assert verify.calls == len(members) + 1


def test_a_joining_heartbeat_may_cost_a_whole_member_list_and_no_more() -> None:
    """With ``checks = JOINING_CHECKS`` (a node still joining) a whole member list is checked
    in one heartbeat; a liar's forgeries still end that heartbeat's checks at the first one."""
    members = [Member() for _ in range(MAX_MEMBERS - 1)]
    verify = Counting()
    table = _table(verify)
    for m in members:
        table.heard_from(m.id, (), 0.0)
    table.merge(tuple(m.info(m.stamp()) for m in members), 1.0, reporter="r",
                checks=JOINING_CHECKS)
    assert verify.calls == len(members) <= JOINING_CHECKS
    assert all(table.stamp_key(m.id) is not None for m in members)
    liar = Member()
    table.merge(tuple(m.info(sign_stamp(FED, m.id, 9, 9, liar.key)) for m in members), 2.0,
                reporter="liar", checks=JOINING_CHECKS)
    assert verify.calls == len(members) + 1


# -- the table: a liar keeps no dead member alive ------------------------------------------------


def test_a_dead_member_announced_heard_just_now_goes_silent_and_is_pruned() -> None:
    dead, table = Member(), _table()
    old = dead.stamp()
    table.heard_from(dead.id, dead.addrs, 0.0, old)
    forgotten_at, silent_at = None, None
    for t in range(1, 31):  # dead at 0; a liar announces it at age 0 every second
        table.merge((dead.info(old if t % 2 else b""),), float(t), reporter="liar")
        if silent_at is None and silent(table.live_at(dead.id), float(t), SILENCE):
            silent_at = t
        if table.prune(float(t)) == [dead.id]:
            forgotten_at = t
    assert silent_at == SILENCE + 1  # silent once the silence time has passed, despite the liar
    assert forgotten_at == TIMEOUT  # pruned on time, and not put back by the liar since
    assert dead.id not in table
    # it comes back only with a stamp of its own newer than the last one held
    table.merge((dead.info(dead.stamp()),), 31.0, reporter="honest")
    assert dead.id in table and table.live_at(dead.id) == 31.0


def test_without_stamps_membership_keeps_its_hearsay_ages() -> None:
    """An id that never carried a stamp (as before stamps) lives by relayed ages, as before."""
    table = _table()
    table.merge((MemberInfo("x", (), 0.0),), 0.0, reporter="r")
    for t in range(1, 20):
        table.merge((MemberInfo("x", (), 1.0),), float(t), reporter="r")
        assert table.prune(float(t)) == []
    assert table.live_at("x") is None  # but it never proved itself alive


def test_a_live_member_relayed_through_a_third_node_stays_live() -> None:
    m, table = Member(), _table()
    table.heard_from(m.id, (), 0.0, m.stamp())
    for t in range(1, 40):  # no longer heard directly: its stamps arrive via r, a cycle late
        table.merge((m.info(m.stamp(), age=1.0),), float(t), reporter="r")
        assert table.live_at(m.id) == float(t) and table.prune(float(t)) == []


def test_a_restarted_member_s_new_stamps_are_accepted_and_old_ones_are_not() -> None:
    m, table = Member(epoch=1_000), _table()
    table.heard_from(m.id, (), 0.0, m.stamp(seq=500))
    old_run = m.stamp(seq=499)
    m.epoch, m.seq = 2_000, 0  # restarted: a later start time, its counter from 1
    table.merge((m.info(m.stamp()),), 3.0, reporter="r")
    assert table.stamp_key(m.id) == (2_000, 1) and table.live_at(m.id) == 3.0
    table.merge((m.info(old_run),), 4.0, reporter="liar")
    assert table.live_at(m.id) == 3.0
    # restarted after being pruned: its tombstone gives way to the new run's stamps only
    table.prune(20.0)
    assert m.id not in table
    table.merge((m.info(old_run),), 21.0, reporter="liar")
    assert m.id not in table
    m.epoch, m.seq = 3_000, 0
    table.merge((m.info(m.stamp()),), 22.0, reporter="r")
    assert table.stamp_key(m.id) == (3_000, 1) and table.live_at(m.id) == 22.0


# -- the wire ----------------------------------------------------------------------------------


def test_a_heartbeat_of_255_stamped_members_fits_the_control_cap(tmp_path: Path) -> None:
    federation = tmp_path / "federation"
    init_federation(federation, FED)
    key_file = tmp_path / "node.key"
    load_or_create_identity(key_file)
    certificate = admit_identity(federation, key_file, valid_days=1, now=time.time()).read_bytes()
    members = [Member() for _ in range(MAX_MEMBERS - 1)]
    addr = "/ip4/192.168.100.200/tcp/45678"
    beat = Heartbeat(FED, members[0].id, (addr,), tuple(
        MemberInfo(m.id, (addr, addr), 12.5, certificate, m.stamp()) for m in members),
        7, 4, "training", certificate, b"", members[0].stamp())
    frame = wire.encode_frame(beat, MAX_CONTROL_BYTES)
    print(f"heartbeat of {len(members)} stamped members: {len(frame)} bytes")
    assert len(frame) < MAX_CONTROL_BYTES * 0.6, len(frame)
    assert wire.decode_frame(frame, Heartbeat, MAX_CONTROL_BYTES) == beat
    # stampless heartbeats (as before) still decode, and a bad stamp is refused
    plain = Heartbeat(FED, "s", (), (MemberInfo("x", (), 0.0),), 1, 0, "training")
    assert wire.decode_frame(wire.encode_frame(plain), Heartbeat) == plain
    for bad in (Heartbeat(FED, "s", (), (), 1, 0, "training", stamp=b"x"),
                Heartbeat(FED, "s", (), (MemberInfo("x", (), 0.0, stamp=bytes(79)),), 1, 0,
                          "training")):
        with pytest.raises(WireError, match="stamp must be"):
            wire.decode_frame(wire.encode_frame(bad), Heartbeat)
