"""Heartbeats leave out the certificates their receiver holds (gossip/cert_holders.py)."""

from __future__ import annotations

from gossipfl.gossip import cert_holders
from gossipfl.gossip.cert_holders import CertHolders
from gossipfl.gossip.membership import Membership

CERT = b"c" * 183


def test_a_peer_holds_what_it_listed_and_its_own_until_it_restarts() -> None:
    holders = CertHolders()
    holders.note("r", 7, [("a", b""), ("b", b"")])
    holders.note("r", 7, [("c", b"")])  # the same table: what it listed before still holds
    assert [holders.holds("r", m) for m in ("a", "b", "c", "r", "x")] == [True] * 4 + [False]
    assert not holders.holds("other", "a")
    holders.note("r", 8, [("c", b"")])  # a new epoch: it restarted and holds only what it lists now
    assert (holders.holds("r", "a"), holders.holds("r", "c")) == (False, True)
    holders.forget("r")
    assert not holders.holds("r", "c")


def test_what_is_tracked_stays_bounded() -> None:
    holders = CertHolders()
    many = [(f"m{j}", b"") for j in range(cert_holders.MAX_MEMBERS_A_PEER + 9)]
    for i in range(cert_holders.MAX_PEERS + 5):
        holders.note(f"p{i}", 1, many)
    assert len(holders) == cert_holders.MAX_PEERS
    assert not holders.holds("p0", "m0")  # the least lately heard went first
    last = f"p{cert_holders.MAX_PEERS + 4}"
    held = [m for m in (f"m{j}" for j in range(cert_holders.MAX_MEMBERS_A_PEER + 9))
            if holders.holds(last, m)]
    assert len(held) == cert_holders.MAX_MEMBERS_A_PEER - 1  # its own id takes one place


def test_entries_go_without_the_certificates_the_receiver_holds() -> None:
    table = Membership("me", timeout=10.0)
    for peer in ("a", "b", "c"):
        table.heard_from(peer, (f"/ip4/10.0.0.1/tcp/1/p2p/{peer}",), 0.0)
    holders = CertHolders()
    holders.note("r", 1, [("a", b"")])
    members, _, _ = table.delta(1.0, 0, certificate=lambda p: CERT,
                                known=lambda m: holders.holds("r", m))
    sent = {m.peer_id: m.certificate for m in members}
    assert sent == {"a": b"", "b": CERT, "c": CERT}
    # no certificate known for a member: the entry is left out, as before
    members, _, _ = table.delta(1.0, 0, certificate=lambda p: b"" if p == "c" else CERT,
                                known=lambda m: holders.holds("r", m))
    assert sorted(m.peer_id for m in members) == ["a", "b"]


def stamp(seq: int) -> bytes:
    return (1).to_bytes(8, "big") + seq.to_bytes(8, "big") + bytes(64)


def test_entries_that_tell_the_receiver_nothing_are_left_out() -> None:
    table = Membership("me", timeout=10.0)
    for peer in ("a", "b", "r"):
        table.heard_from(peer, (f"/ip4/10.0.0.1/tcp/1/p2p/{peer}",), 0.0)
    held = {p: stamp(5) for p in ("a", "b", "r")}
    holders = CertHolders()
    holders.note("r", 1, [("a", stamp(5)), ("b", stamp(4))])  # r listed a at 5, b at 4

    def entries() -> list[str]:
        members, _, _ = table.delta(
            1.0, 0, certificate=lambda p: CERT, known=lambda m: holders.holds("r", m),
            current=lambda m, s: holders.current("r", m, held[m]))
        return sorted(m.peer_id for m in members)

    # r's own entry never goes to r; a's stamp 5 it holds already; b's 5 is news to it
    assert entries() == ["b"]
    held["a"] = stamp(6)  # a's stamp moved on: news again
    assert entries() == ["a", "b"]
