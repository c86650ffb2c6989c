"""A node's handling of sealed contributions: tampered, replayed, redirected, forged, non-member.

Node-level (no network): real keys, certificates and envelopes, fed straight to the handlers
that the contribution stream calls. The end-to-end tests cover the same paths over libp2p.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from nacl.signing import SigningKey

from gossipfl.config import DataConfig, ModelConfig, NodeConfig, ProtocolConfig, SecurityConfig
from gossipfl.crypto import liveness
from gossipfl.crypto.admission import (
    admit_identity,
    init_federation,
    load_federation_key,
    peer_id_of,
)
from gossipfl.crypto.certificates import issue_certificate
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.crypto.revocation import RevocationUpdate, revoke, sign_revocations
from gossipfl.gossip.membership import JOINING_CHECKS
from gossipfl.gossip.peers import Channel
from gossipfl.gossip.wire import (
    HEADER,
    HEADER_BYTES,
    MAX_CONTROL_BYTES,
    MAX_MEMBERS,
    Contribution,
    Heartbeat,
    MemberInfo,
    decode_frame,
    encode_frame,
)
from gossipfl.node.contributions import accept_contribution, on_contribution, open_sealed
from gossipfl.node.learner import LocalLearner
from gossipfl.node.links import known_members, on_link
from gossipfl.node.membership_loop import (
    HEARSAY_DIALS,
    absorb,
    admitted,
    heartbeat,
    heartbeat_targets,
    on_heartbeat,
    renew_stamp,
)
from gossipfl.node.runtime import NeighbourState, Node
from gossipfl.node.secure_round import on_masked_input, on_unmask_request
from gossipfl.node.security import MAX_HEARSAY_CHECKS, NodeSecurity, SecurityError
from gossipfl.node.serving import guard
from gossipfl.node.state_sync import on_state_request
from gossipfl.node.streams import serve_requests


def _config(tmp_path: Path, name: str, *, admitted: bool = True) -> tuple[NodeConfig, object]:
    federation = tmp_path / "federation"
    if not (federation / "federation.pub").exists():
        init_federation(federation, "fed")
    key_file = tmp_path / name / "node.key"
    identity, _ = load_or_create_identity(key_file)
    cert = tmp_path / name / "missing.cert"
    if admitted:
        cert = admit_identity(federation, key_file, valid_days=1, now=time.time())
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path / name),
        data=DataConfig(dataset="iris", partition="iid"),
        model=ModelConfig(name="logreg"),
        security=SecurityConfig(admission=True,
                                federation_public=str(federation / "federation.pub"),
                                certificate=str(cert)),
    )
    return config, identity


@pytest.fixture
def setup(tmp_path: Path):
    config_a, id_a = _config(tmp_path, "a")
    node = Node(config_a, id_a, LocalLearner(config_a))
    senders = {}
    for name in ("b", "c"):
        config, identity = _config(tmp_path, name)
        security = NodeSecurity(config, identity)
        # each sender has met every other member (their heartbeats carried the certificates)
        for other, other_security in [("a", node.security), *senders.values()]:
            del other
            security.admit(other_security.peer_id, other_security.own_certificate)
            other_security.admit(security.peer_id, security.own_certificate)
        senders[name] = (name, security)
    b, c = senders["b"][1], senders["c"][1]
    node.neighbours[b.peer_id] = NeighbourState()
    return node, b, c


def _contribution(sender: NodeSecurity, receiver: str, round_: int, node: Node) -> Contribution:
    vector = np.full(node.layout.size, float(round_), np.float32)
    return Contribution("fed", round_, sender.peer_id, receiver, 1, "full", -1, 0.5, False,
                        node.layout.to_tensors(vector))


def _deliver(node: Node, remote: str, sealed) -> str:
    opened = open_sealed(node, remote, sealed)
    if opened is None:
        return "dropped"
    return accept_contribution(node, remote, opened)[0]


def test_valid_then_replayed_tampered_redirected_forged_and_foreign_frames(
    setup, caplog: pytest.LogCaptureFixture
) -> None:
    trio.run(_frames_scenario, setup, caplog)


async def _frames_scenario(setup, caplog: pytest.LogCaptureFixture) -> None:
    node, b, c = setup
    caplog.set_level(logging.WARNING)
    me = node.peer_id

    first = b.seal(_contribution(b, me, 0, node))
    assert _deliver(node, b.peer_id, first) == "ok"
    held = node.estimates.peers[b.peer_id]
    assert held.round == 0 and np.all(held.vector == 0.0)

    # replayed: the same frame again opens, but its round is not newer than what we hold
    assert _deliver(node, b.peer_id, first) == "rejected"
    assert node.rejections["stale"] == 1

    # tampered: one flipped byte in the ciphertext
    second = b.seal(_contribution(b, me, 1, node))
    data = bytearray(second.data)
    data[len(data) // 2] ^= 0x01
    assert _deliver(node, b.peer_id, dataclasses.replace(second, data=bytes(data))) == "dropped"
    assert node.rejections["envelope_decryption_failed"] == 1

    # redirected: a frame sealed for c (its receiver named only in the envelope) cannot be
    # opened by us
    for_c = b.seal(_contribution(b, c.peer_id, 1, node))
    assert _deliver(node, b.peer_id, for_c) == "dropped"
    assert node.rejections["envelope_decryption_failed"] == 2

    # forged: c (a member, not our neighbour) relays b's genuine frame as if it were b
    assert _deliver(node, c.peer_id, second) == "dropped"
    assert node.rejections["envelope_bad_signature"] == 1  # its sender is signed, not sent

    # c's own frame: a member, but not a neighbour
    assert _deliver(node, c.peer_id, c.seal(_contribution(c, me, 1, node))) == "rejected"
    assert node.rejections["not_neighbour"] == 1

    # a peer with no certificate at all
    assert _deliver(node, "12D3KooWStrangerStrangerStranger", second) == "dropped"
    assert node.rejections["not_member"] == 1

    # every drop was logged, naming the peer and the reason
    text = caplog.text
    for reason in ("stale", "envelope_decryption_failed", "envelope_bad_signature",
                   "not_neighbour", "not_member"):
        assert reason in text
    assert b.peer_id in text and c.peer_id in text

    # and the node kept what it had and keeps working: b's genuine round 1 is accepted
    assert node.estimates.peers[b.peer_id].round == 0
    assert _deliver(node, b.peer_id, second) == "ok"
    assert node.estimates.peers[b.peer_id].round == 1
    assert np.all(node.estimates.peers[b.peer_id].vector == 1.0)


def test_a_node_without_a_valid_certificate_refuses_to_start(tmp_path: Path) -> None:
    config, identity = _config(tmp_path, "x", admitted=False)
    with pytest.raises(SecurityError, match="own certificate is not usable"):
        NodeSecurity(config, identity)


def test_heartbeat_certificates_decide_membership(setup) -> None:
    node, b, _ = setup
    node.security.certificates.pop(b.peer_id, None)  # whatever the setup let it hold
    node.security.hearsay_certificates.pop(b.peer_id, None)
    assert node.security.admit(b.peer_id, b"") is not None  # no certificate: refused
    assert not node.security.is_member(b.peer_id)
    assert node.security.admit(b.peer_id, b.own_certificate) is None
    assert node.security.is_member(b.peer_id)
    # once we hold its certificate it may leave it out (heartbeats: cert_holders.py)
    assert node.security.admit(b.peer_id, b"") is None
    # a stranger who presents none is refused
    assert node.security.admit("12D3KooWStrangerStrangerStranger", b"") is not None
    # a certificate presented by someone else is not theirs
    reason = node.security.admit("12D3KooWStrangerStrangerStranger", b.own_certificate)
    assert reason is not None and "wrong_peer" in reason


# -- membership that one member cannot flood; revocation ------------------------------------------

FAKE_ADDR = "/ip4/6.6.6.6/tcp/666"


class FakeChannel:
    """A membership stream: hands the node one heartbeat (through the wire codec and its size
    cap), keeps what the node answers."""

    def __init__(self, remote: str, incoming: Heartbeat) -> None:
        self.remote = remote
        self.incoming = incoming
        self.sent: list[Heartbeat] = []
        self.was_reset = False

    async def receive(self, expected: type, max_bytes: int, known: Any = None):
        return decode_frame(encode_frame(self.incoming, max_bytes), expected, max_bytes)

    async def send(self, message: Heartbeat, max_bytes: int, known: Any = None) -> None:
        self.sent.append(decode_frame(encode_frame(message, max_bytes), Heartbeat, max_bytes))

    async def reset(self) -> None:
        self.was_reset = True


def _beat(sender: NodeSecurity, members=(), revocations: bytes = b"") -> Heartbeat:
    return Heartbeat("fed", sender.peer_id, (f"/ip4/127.0.0.1/tcp/{len(sender.peer_id)}",),
                     tuple(members), -1, 0, "joining", certificate=sender.own_certificate,
                     revocations=revocations)


async def _heartbeat(node: Node, sender: NodeSecurity, members=(), revocations: bytes = b""
                     ) -> FakeChannel:
    channel = FakeChannel(sender.peer_id, _beat(sender, members, revocations))
    await on_heartbeat(node, channel)
    return channel


def _fake_ids(n: int) -> list[str]:
    return [peer_id_of(SigningKey(bytes([i % 256, i // 256]) * 16).verify_key) for i in range(n)]


@pytest.mark.parametrize("joining", [True, False])
def test_a_joining_node_takes_a_whole_member_list_a_heartbeat(setup, tmp_path: Path,
                                                               joining: bool) -> None:
    """A node still joining checks up to ``JOINING_CHECKS`` certificates and stamps of one
    heartbeat (a whole member list); once it has its topology, 64 of each, the rest waiting
    for later heartbeats. Every member listed here is genuine: certified and stamped."""
    node, b, _ = setup
    fed_key = load_federation_key(tmp_path / "federation" / "federation.key")
    keys = [SigningKey(bytes([i + 1, 7]) * 16) for i in range(100)]
    members = []
    for key in keys:
        peer = peer_id_of(key.verify_key)
        cert = issue_certificate(fed_key, "fed", peer, bytes(range(32)), now=time.time(),
                                 valid_for=3600.0)
        addrs = (f"/ip4/10.0.2.1/tcp/{len(members) + 1}",)
        stamp = liveness.sign_stamp("fed", peer, 1, 1, key, addrs)
        members.append(MemberInfo(peer, addrs, 0.1, cert.to_bytes(), stamp))
    if not joining:
        node.topology = {node.peer_id: frozenset()}
    assert JOINING_CHECKS >= len(members) > MAX_HEARSAY_CHECKS

    async def scenario() -> None:
        await _heartbeat(node, b, members)

    trio.run(scenario, clock=trio.testing.MockClock())
    listed = {m.peer_id for m in members}
    counted = listed & set(known_members(node, heard_of=True))
    assert len(counted) == (len(members) if joining else MAX_HEARSAY_CHECKS)
    assert node.security.hearsay_deferred == (0 if joining else len(members) - len(counted))


def test_a_heartbeat_of_255_made_up_ids_leaves_the_genuine_members_in(setup) -> None:
    node, b, c = setup

    async def scenario() -> None:
        # b (a certified member) lists 255 made-up ids at addresses it chose: without a
        # certificate, with b's own certificate, with a certificate for another id
        fakes = _fake_ids(MAX_MEMBERS - 1)
        certs = [b"", b.own_certificate, c.own_certificate]
        members = [MemberInfo(f, (FAKE_ADDR,), 0.0, certs[i % 3]) for i, f in enumerate(fakes)]
        reply = await _heartbeat(node, b, members)
        assert not reply.was_reset and reply.sent
        await _heartbeat(node, c)  # c's own heartbeat is recorded
        assert node.membership.ids() == sorted([b.peer_id, c.peer_id])
        assert sorted(known_members(node)) == sorted([b.peer_id, c.peer_id])
        targets = heartbeat_targets(node)
        assert set(targets) == {b.peer_id, c.peer_id}  # no made-up id is dialled
        assert FAKE_ADDR not in str(targets)
        gossiped = heartbeat(node).members  # nor re-gossiped
        assert {m.peer_id for m in gossiped} == {b.peer_id, c.peer_id}
        assert all(m.certificate for m in gossiped)

    trio.run(scenario, clock=trio.testing.MockClock())


def test_certified_hearsay_is_dialled_and_regossiped_but_cannot_move_a_member(setup) -> None:
    node, b, c = setup

    async def scenario() -> None:
        node.security.certificates.pop(c.peer_id)  # node has not met c yet
        c_addrs = ("/ip4/10.0.0.3/tcp/1",)
        c_info = MemberInfo(c.peer_id, c_addrs, 0.5, c.own_certificate)
        await _heartbeat(node, b, [c_info])
        assert c.peer_id in node.membership and not node.membership.is_direct(c.peer_id)
        # b's word alone (no stamp of c's signs those addresses): not dialled
        assert c.peer_id not in heartbeat_targets(node)
        c_stamp = liveness.sign_stamp("fed", c.peer_id, 1, 1, c.signing_key, c_addrs)
        await _heartbeat(node, b, [dataclasses.replace(c_info, stamp=c_stamp)])
        assert heartbeat_targets(node)[c.peer_id] == c_addrs  # where c signed it listens
        (relayed,) = [m for m in heartbeat(node).members if m.peer_id == c.peer_id]
        assert relayed.certificate == c.own_certificate
        assert c.peer_id not in known_members(node)  # in the topology once it heartbeats us
        await _heartbeat(node, c)
        own_addrs = node.membership.addrs(c.peer_id)
        await _heartbeat(node, b, [MemberInfo(c.peer_id, (FAKE_ADDR,), 0.0, c.own_certificate)])
        assert node.membership.addrs(c.peer_id) == own_addrs  # hearsay cannot redirect it

    trio.run(scenario, clock=trio.testing.MockClock())


def test_a_relayed_certificate_admits_only_the_peer_it_names_and_counts_with_its_stamp(
        setup) -> None:
    """A member known only by hearsay is a member (its certificate is the federation's
    signature over its id, whoever relays it), so its streams are served; a relay cannot pass
    one member's certificate off for another id; and the first topology counts the member only
    once its own liveness stamp is held."""
    node, b, c = setup

    async def scenario() -> None:
        node.security.certificates.pop(c.peer_id)  # node has not met c yet
        stranger = _fake_ids(1)[0]
        # b relays c's certificate, and also c's certificate under a made-up id
        await _heartbeat(node, b, [
            MemberInfo(c.peer_id, ("/ip4/10.0.0.3/tcp/1",), 0.5, c.own_certificate),
            MemberInfo(stranger, ("/ip4/10.0.0.4/tcp/1",), 0.5, c.own_certificate)])
        assert node.security.is_member(c.peer_id) and not node.security.presented(c.peer_id)
        assert not node.security.is_member(stranger) and stranger not in node.membership
        # no stamp of c held yet: not in the first topology, with or without hearsay counted
        assert c.peer_id not in known_members(node, heard_of=True)
        c_stamp = liveness.sign_stamp("fed", c.peer_id, 1, 1, c.signing_key,
                                      ("/ip4/10.0.0.3/tcp/1",))
        await _heartbeat(node, b, [MemberInfo(c.peer_id, ("/ip4/10.0.0.3/tcp/1",), 0.1,
                                              c.own_certificate, c_stamp)])
        assert c.peer_id in known_members(node, heard_of=True)
        assert c.peer_id not in known_members(node)  # a restart's rejoin still wants it direct

    trio.run(scenario, clock=trio.testing.MockClock())


def test_members_are_counted_at_once_as_one_by_one(setup) -> None:
    """``admitted_among`` (a table's members at once, the clock read once) keeps what the
    one-by-one checks keep, in order, and drops what they drop: an expired or revoked
    certificate, presented or relayed; relayed ones count only where ``heard_of`` holds."""
    node, b, c = setup
    security = node.security
    cert_b, cert_c = security.certificates[b.peer_id], security.certificates[c.peer_id]
    fake = _fake_ids(5)
    expired = dataclasses.replace(cert_b, issued_at=time.time() - 7200,
                                  expires_at=time.time() - 3600)

    def fill() -> None:
        security.certificates = {b.peer_id: cert_b, fake[0]: expired, fake[1]: cert_c}
        security.hearsay_certificates = {c.peer_id: cert_c, fake[2]: cert_c,
                                         fake[3]: expired, fake[4]: cert_b}
        security.revoked = frozenset({fake[1], fake[4]})

    peers = [fake[0], b.peer_id, *fake[1:], c.peer_id, "unknown"]
    stamped = {c.peer_id, fake[3], fake[4]}
    for heard in (None, stamped.__contains__):
        fill()
        one_by_one = [p for p in peers if security.presented(p) or (
            heard is not None and security.is_certified(p) and heard(p))]
        kept = (dict(security.certificates), dict(security.hearsay_certificates))
        fill()
        assert security.admitted_among(peers, heard) == one_by_one
        if heard is not None:
            assert (security.certificates, security.hearsay_certificates) == kept
    assert one_by_one == [b.peer_id, c.peer_id]
    assert set(security.certificates) == {b.peer_id}  # expired and revoked: dropped
    assert set(security.hearsay_certificates) == {c.peer_id, fake[2]}


SIGNED = 32  # made-up ids the liar signs stamps for (within a heartbeat's check budget)


def test_open_federation_caps_made_up_ids_per_reporter_and_dials_them_a_few_times(
        tmp_path: Path) -> None:
    config, identity = _config(tmp_path, "open")
    config = dataclasses.replace(config, security=SecurityConfig())
    node = Node(config, identity, LocalLearner(config))
    liar, honest = _fake_ids(MAX_MEMBERS + 1)[-2:]

    async def scenario() -> None:
        absorb(node, Heartbeat("fed", honest, ("/ip4/127.0.0.1/tcp/9",), (), -1, 0, "joining"))
        # the liar made up the ids, so it holds their keys: SIGNED of them carry stamps that
        # verify at its trap (an id only claimed there, with no stamp, is never dialled)
        ids = _fake_ids(MAX_MEMBERS - 1)
        keys = {f: SigningKey(bytes([i % 256, i // 256]) * 16) for i, f in enumerate(ids)}
        fakes = tuple(MemberInfo(f, (FAKE_ADDR,), 0.0, stamp=liveness.sign_stamp(
            "fed", f, 1, 1, keys[f], (FAKE_ADDR,)) if i < SIGNED else b"")
            for i, f in enumerate(ids))
        absorb(node, Heartbeat("fed", liar, ("/ip4/127.0.0.1/tcp/8",), fakes, -1, 0,
                               "joining"))
        assert len(node.membership) == 2 + node.membership.per_reporter
        assert sorted(known_members(node)) == sorted([liar, honest])  # fakes: not heard from
        assert {m.peer_id for m in heartbeat(node).members} == {liar, honest}
        dials: Counter[str] = Counter()
        for _ in range(100):  # each call dials up to 16 of them; 100 calls exhaust every budget
            dials.update(p for p, addrs in heartbeat_targets(node).items() if FAKE_ADDR in addrs)
        assert set(dials) == set(ids[:SIGNED])
        assert set(dials.values()) == {HEARSAY_DIALS}  # each made-up id: a few dials, then none
        assert set(heartbeat_targets(node)) == {liar, honest}  # heard from: dialled

    trio.run(scenario, clock=trio.testing.MockClock())


def test_a_revocation_list_arriving_by_gossip_is_honoured_at_once(
        setup, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node, b, c = setup
    fed = tmp_path / "federation"
    caplog.set_level(logging.INFO)

    async def scenario() -> None:
        me = node.peer_id
        await _heartbeat(node, b)
        node.wanted.add(b.peer_id)
        assert node.security.is_member(b.peer_id) and b.peer_id in node.membership
        assert _deliver(node, b.peer_id, b.seal(_contribution(b, me, 0, node))) == "ok"

        # a forged list (another key, a higher serial) is refused with a log line
        forged = sign_revocations(SigningKey.generate(), "fed", 5, {b.peer_id: ""}, now=1.0)
        await _heartbeat(node, c, revocations=forged.to_bytes())
        assert node.rejections["bad_revocations"] == 1 and "bad_signature" in caplog.text
        assert node.security.is_member(b.peer_id) and b.peer_id in node.neighbours

        # the genuine list, carried by c's heartbeat: b is out at once
        _, first = revoke(fed, b.peer_id, "left", now=time.time())
        reply = await _heartbeat(node, c, revocations=first.to_bytes())
        assert not node.security.is_member(b.peer_id)
        assert b.peer_id not in node.membership and b.peer_id not in known_members(node)
        assert b.peer_id not in node.neighbours and b.peer_id not in node.wanted
        assert node.dropped[-1]["reason"] == "revoked"
        assert reply.sent[0].revocations == first.to_bytes()  # passed on in our answer
        assert f"member {b.peer_id} revoked" in caplog.text

        # b's heartbeat, contribution and hearsay about b are refused from now on
        refused = await _heartbeat(node, b)
        assert refused.was_reset and not refused.sent
        assert node.rejections["not_member"] == 1 and "revoked" in caplog.text
        assert _deliver(node, b.peer_id, b.seal(_contribution(b, me, 1, node))) == "dropped"
        assert node.rejections["not_member"] == 2
        b_info = MemberInfo(b.peer_id, (FAKE_ADDR,), 0.0, b.own_certificate)
        await _heartbeat(node, c, [b_info])
        assert b.peer_id not in node.membership

        # a newer list wins; an older one is refused, logged, and changes nothing
        _, second = revoke(fed, _fake_ids(1)[0], now=time.time())
        await _heartbeat(node, c, revocations=second.to_bytes())
        assert node.security.revocations == second
        caplog.clear()
        await _heartbeat(node, c, revocations=first.to_bytes())
        assert node.security.revocations == second and "older revocation list" in caplog.text
        assert node.security.revoked == second.ids
        assert node.security.is_member(c.peer_id)

    trio.run(scenario, clock=trio.testing.MockClock())


def test_a_node_starts_from_its_configured_list_and_rereads_it(tmp_path: Path) -> None:
    config, identity = _config(tmp_path, "a")
    other, _ = _config(tmp_path, "b")
    fed = tmp_path / "federation"
    path, _ = revoke(fed, str(load_or_create_identity(Path(other.key_file))[0].peer_id),
                     now=time.time())
    with_list = dataclasses.replace(config, security=dataclasses.replace(
        config.security, revocations=str(path)))
    security = NodeSecurity(with_list, identity)
    assert security.revocations is not None and security.revocations.serial == 1
    assert security.poll_revocations_file()[0] is RevocationUpdate.SAME  # unchanged file
    _, second = revoke(fed, _fake_ids(1)[0], now=time.time())
    verdict, newly, _ = security.poll_revocations_file()
    assert verdict is RevocationUpdate.NEWER and newly == {_fake_ids(1)[0]}
    assert security.revocations == second
    # a list not signed by the federation key stops the node at start
    path.write_bytes(sign_revocations(SigningKey.generate(), "fed", 9, {}, now=1.0).to_bytes())
    with pytest.raises(SecurityError, match="revocation list is not usable"):
        NodeSecurity(with_list, identity)


def test_members_met_only_through_hearsay_are_found_through_their_certificates(
        tmp_path: Path) -> None:
    """Four admitted nodes in a star (each has met only the hub): the certificates carried in
    the hub's member list let the others dial each other, and all end up knowing all."""
    nodes = []
    for name in ("hub", "n1", "n2", "n3"):
        config, identity = _config(tmp_path, name)
        nodes.append(Node(config, identity, LocalLearner(config)))
    by_id = {n.peer_id: n for n in nodes}

    async def exchange(sender: Node, receiver: Node) -> None:
        channel = FakeChannel(sender.peer_id, heartbeat(sender))
        await on_heartbeat(receiver, channel)
        (reply,) = channel.sent
        assert admitted(sender, FakeChannel(receiver.peer_id, reply), "reply", reply)
        absorb(sender, reply)

    async def scenario() -> None:
        hub = nodes[0]
        for i, node in enumerate(nodes):  # as a running node: listening, its stamp signed
            node.addrs = [f"/ip4/10.0.1.{i}/tcp/1"]
            renew_stamp(node)
        for node in nodes[1:]:
            await exchange(node, hub)  # the bootstrap heartbeat
        for _ in range(2):  # heartbeat cycles: each node dials whom it may
            for node in nodes:
                for target in heartbeat_targets(node):
                    await exchange(node, by_id[target])
        for node in nodes:
            assert sorted(known_members(node)) == sorted(set(by_id) - {node.peer_id})
            assert sum(node.rejections.values()) == 0

    trio.run(scenario, clock=trio.testing.MockClock())


def test_a_revocation_list_needs_admission() -> None:
    from gossipfl.config import ConfigError

    with pytest.raises(ConfigError, match=r"security\.revocations needs security\.admission"):
        SecurityConfig(revocations="revocations.list")


# -- what a stranger can make the node read (issue 8, point 7) ----------------------------------

STRANGER = "12D3KooWStrangerStrangerStranger"
MIB = 1024 * 1024


class PeerStream:
    """An incoming stream from ``peer``: serves ``data``, stalling at ``stall_at`` until
    ``release`` is set; records what was read and whether it was reset."""

    def __init__(self, peer: str, data: bytes, stall_at: int | None = None,
                 release: trio.Event | None = None) -> None:
        self.muxed_conn = SimpleNamespace(peer_id=peer)
        self.data, self.position = data, 0
        self.stall_at, self.release = stall_at, release
        self.was_reset = self.closed = False

    async def read(self, n: int | None = None) -> bytes:
        assert n is not None
        if self.stall_at is not None and self.position >= self.stall_at:
            assert self.release is not None
            await self.release.wait()
            self.stall_at = None
        end = len(self.data) if self.stall_at is None else self.stall_at
        chunk = self.data[self.position:min(self.position + n, end)]
        self.position += len(chunk)
        return chunk

    async def write(self, data: bytes) -> None:
        pass

    async def reset(self) -> None:
        self.was_reset = True

    async def close(self) -> None:
        self.closed = True


class FakeNet:
    def __init__(self) -> None:
        self.disconnected: list[str] = []

    async def disconnect(self, peer: str) -> None:
        self.disconnected.append(peer)


def guarded(node: Node, handler: Any, **options: Any) -> Any:
    """The node's handler (called with the node and a channel) under the guard, fed a raw
    stream as its transport would hand it over."""
    serve = guard(node, functools.partial(handler, node), **options)
    return lambda stream: serve(Channel(stream, node.traffic, node.read_policy))


def _requests(handler: Any) -> Any:
    """A secure-aggregation handler served as a persistent request stream (as runtime does)."""
    return lambda node, channel: serve_requests(node, channel, functools.partial(handler, node))


def _frame(size: int) -> bytes:
    return HEADER.pack(size) + b"\x90" * size


@pytest.mark.parametrize("handler", [on_link, on_contribution, on_state_request,
                                     _requests(on_masked_input), _requests(on_unmask_request)])
def test_a_stranger_on_a_members_only_protocol_is_reset_and_disconnected_unread(
    setup, handler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    node, _, _ = setup
    node.net = FakeNet()
    caplog.set_level(logging.WARNING)
    stream = PeerStream(STRANGER, _frame(4 * MIB))
    trio.run(guarded(node, handler, members_only=True), stream)
    assert stream.was_reset and stream.position == 0  # not even the header was read
    assert node.net.disconnected == [STRANGER]
    assert node.rejections["not_member"] == 1
    assert "stream without a valid certificate: disconnected" in caplog.text


def test_a_strangers_heartbeat_is_held_to_the_control_cap_from_its_header(setup) -> None:
    node, b, _ = setup
    node.net = FakeNet()
    stream = PeerStream(STRANGER, _frame(4 * MIB))
    trio.run(guarded(node, on_heartbeat), stream)
    assert stream.was_reset and stream.position == HEADER_BYTES
    assert node.rejections["malformed"] == 1
    # a member's payload frame on its contribution stream is read past the header
    member = PeerStream(b.peer_id, _frame(4 * MIB)[: 1 * MIB])
    trio.run(guarded(node, on_contribution, members_only=True), member)
    assert member.position == MIB and node.net.disconnected == []


def test_a_members_bomb_frame_is_refused_in_bounded_memory(setup) -> None:
    node, b, _ = setup
    inner = b"\xdc\x04\x00" + b"\x90" * 1024
    bomb = b"\xdc\x04\x00" + inner * 1024  # a million empty arrays, within every array cap
    stream = PeerStream(b.peer_id, HEADER.pack(len(bomb)) + bomb)
    tracemalloc.start()
    try:
        trio.run(guarded(node, on_contribution, members_only=True), stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stream.was_reset and node.rejections["malformed"] == 1
    # the body read (this fake hands it over in one chunk, copied into one buffer) and a few
    # thousand objects, where a plain msgpack decode builds about 64 MB of lists
    assert peak < 2.5 * len(bomb), peak
    assert node.in_flight.held == 0


def test_fresh_identities_cannot_add_up_past_the_in_flight_cap(tmp_path: Path) -> None:
    config, identity = _config(tmp_path, "a")
    config = dataclasses.replace(config, protocol=ProtocolConfig(
        max_payload_bytes=MIB, max_in_flight_bytes=8 * MIB))
    node = Node(config, identity, LocalLearner(config))
    frame = MAX_CONTROL_BYTES - 1024  # the most a stranger may announce, nearly
    release = trio.Event()
    streams = [PeerStream(f"12D3KooWFresh{i:04d}", _frame(frame), HEADER_BYTES, release)
               for i in range(100)]
    seen: dict[str, int] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for stream in streams:
                nursery.start_soon(guarded(node, on_heartbeat), stream)
            await trio.testing.wait_all_tasks_blocked()
            seen["held_by_strangers"] = node.in_flight.held_by_strangers
            seen["refused"] = node.rejections["in_flight"]
            # a member's payload still fits beside them
            seen["member"] = node.in_flight.reserve(MIB, member=True)
            node.in_flight.release(MIB, member=True)
            release.set()

    trio.run(main, clock=trio.testing.MockClock())
    allowed = node.in_flight.stranger_limit // frame  # an eighth of 8 MiB: 4 frames
    assert allowed == 4
    assert seen["held_by_strangers"] == allowed * frame <= node.in_flight.stranger_limit
    assert seen["refused"] == 100 - allowed
    assert seen["member"] == 1
    assert sum(s.was_reset for s in streams) == 100  # refused or malformed, every one
    assert node.in_flight.held == 0 and node.in_flight.peak == allowed * frame + MIB


def test_a_heartbeat_leaves_out_certificates_its_receiver_holds_and_a_restart_gets_them_back(
        tmp_path: Path) -> None:
    """Once b answered a's heartbeat, a's heartbeats to b carry neither a's certificate nor
    those of the members b listed; b, restarted (it holds none), refuses one without counting a
    fault, and a's next heartbeat carries its certificate again."""
    nodes = {}
    for name in ("a", "b", "c"):
        config, identity = _config(tmp_path, name)
        nodes[name] = (config, identity, Node(config, identity, LocalLearner(config)))
    a, b, c = (nodes[n][2] for n in ("a", "b", "c"))

    async def exchange(sender: Node, receiver: Node) -> FakeChannel:
        channel = FakeChannel(sender.peer_id, heartbeat(sender, receiver.peer_id))
        await on_heartbeat(receiver, channel)
        if channel.sent:
            (reply,) = channel.sent
            if admitted(sender, FakeChannel(receiver.peer_id, reply), "reply", reply):
                absorb(sender, reply)
                sender.cert_holders.note(receiver.peer_id, reply.table[0],
                                         [(sender.peer_id, b"")])  # as send_heartbeat does
        else:
            sender.cert_holders.forget(receiver.peer_id)  # as send_heartbeat does on a reset
        return channel

    async def scenario() -> None:
        for i, node in enumerate((a, b, c)):
            node.addrs = [f"/ip4/10.0.1.{i}/tcp/1"]
            renew_stamp(node)
        await exchange(c, b)  # b now lists c to a
        first = heartbeat(a, b.peer_id)
        assert first.certificate == a.security.own_certificate
        await exchange(a, b)
        await exchange(b, a)  # b's heartbeat lists c: b holds c's certificate
        later = heartbeat(a, b.peer_id)
        assert later.certificate == b""  # b answered a: it holds a's
        assert all(m.certificate == b"" for m in later.members if m.peer_id == c.peer_id)
        assert b.peer_id not in [m.peer_id for m in later.members]  # nothing to tell b of b
        channel = await exchange(a, b)  # b holds a's certificate: taken without it
        assert channel.sent and not channel.was_reset
        # b restarts: a fresh node on b's key and folder holds no certificate of a
        config, identity, _ = nodes["b"]
        b2 = Node(config, identity, LocalLearner(config))
        channel = await exchange(a, b2)
        assert channel.was_reset and not channel.sent
        assert sum(b2.rejections.values()) == 0  # not a fault: it thought b held it
        assert heartbeat(a, b2.peer_id).certificate == a.security.own_certificate
        channel = await exchange(a, b2)
        assert channel.sent and b2.security.presented(a.peer_id)

    trio.run(scenario, clock=trio.testing.MockClock())
