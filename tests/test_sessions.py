"""Envelope keys kept for a few envelopes (gossipfl.crypto.sessions) and envelopes sealed and
opened with them: the same envelopes open, each under its own nonce, and the receiver's memo
stays bounded whatever a sender sends."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gossipfl.crypto.admission import member_x25519_keypair, peer_id_of, verify_key_from_peer_id
from gossipfl.crypto.envelope import (
    ENVELOPE_MAGIC,
    NONCE_BYTES,
    X25519_KEY_BYTES,
    EnvelopeError,
    ReplayGuard,
    open_envelope,
    seal,
)
from gossipfl.crypto.sessions import OpenKeys, SealKeys

SENDER_KEY = SigningKey(b"\x11" * 32)
SENDER = peer_id_of(SENDER_KEY.verify_key)
RECEIVERS = {}
for seed in (b"\x12", b"\x13"):
    key = SigningKey(seed * 32)
    RECEIVERS[peer_id_of(key.verify_key)] = member_x25519_keypair(bytes(key))
RECEIVER, THIRD = list(RECEIVERS)
FED = "fed"
EPHEMERAL = slice(len(ENVELOPE_MAGIC), len(ENVELOPE_MAGIC) + X25519_KEY_BYTES)
NONCE = slice(EPHEMERAL.stop, EPHEMERAL.stop + NONCE_BYTES)


def _seal(keys: SealKeys | None, round_: int = 7, receiver: str = RECEIVER,
          payload: bytes = b"delta " * 20) -> bytearray:
    return seal(payload, federation=FED, round=round_, sender=SENDER, receiver=receiver,
                sender_signing_key=SENDER_KEY, receiver_x25519_public=RECEIVERS[receiver][1],
                keys=keys)


def _open(data: bytes, keys: OpenKeys | None, round_: int | None = 7,
          receiver: str = RECEIVER) -> tuple[int, bytes]:
    got, payload = open_envelope(
        bytes(data), federation=FED, expected_round=round_, expected_sender=SENDER,
        receiver=receiver, receiver_x25519_private=RECEIVERS[receiver][0],
        sender_verify_key=verify_key_from_peer_id(SENDER), keys=keys)
    return got, bytes(payload)


def test_one_ephemeral_key_serves_uses_envelopes_to_a_receiver_then_a_fresh_one() -> None:
    """With ``uses = 3``, seven envelopes to one receiver go under three ephemeral keys (3, 3,
    1); each opens with the receiver's memo (one agreement per ephemeral key) and without it."""
    keys, memo = SealKeys(uses=3), OpenKeys()
    sealed = [_seal(keys, round_=r) for r in range(7)]
    ephemerals = [bytes(s[EPHEMERAL]) for s in sealed]
    assert [ephemerals.index(e) for e in ephemerals] == [0, 0, 0, 3, 3, 3, 6]
    assert keys.agreed == 3
    for r, data in enumerate(sealed):
        assert _open(data, memo, r) == (r, b"delta " * 20)
        assert _open(data, None, r) == (r, b"delta " * 20)
    assert memo.agreed == 3 and len(memo) == 3


def test_every_envelope_draws_its_own_nonce() -> None:
    """Two envelopes of one session with the same payload and round differ in nonce and
    ciphertext (a fixed nonce under a reused key would repeat the keystream)."""
    keys = SealKeys()
    first, second = _seal(keys), _seal(keys)
    assert first[EPHEMERAL] == second[EPHEMERAL]
    assert first[NONCE] != second[NONCE]
    assert first[NONCE.stop:] != second[NONCE.stop:]


def test_each_receiver_has_its_own_key_and_cannot_open_anothers() -> None:
    keys = SealKeys()
    to_receiver, to_third = _seal(keys), _seal(keys, receiver=THIRD)
    assert to_receiver[EPHEMERAL] != to_third[EPHEMERAL]
    assert _open(to_third, OpenKeys(), receiver=THIRD)[0] == 7
    with pytest.raises(EnvelopeError) as info:  # redirected: not encrypted to this key
        _open(to_receiver, OpenKeys(), receiver=THIRD)
    assert info.value.reason == "decryption_failed"


def test_a_flood_of_fresh_ephemeral_keys_keeps_the_memo_bounded() -> None:
    """A deviating sender that seals every envelope under a fresh ephemeral key costs the
    receiver one agreement each (as without the memo) and never grows it past its capacity;
    an honest session evicted by the flood still opens (its key is agreed again)."""
    memo = OpenKeys(capacity=8)
    honest = SealKeys()
    _open(_seal(honest), memo)
    for r in range(50):
        assert _open(_seal(None, round_=r), memo, r)[0] == r
    assert memo.agreed == 51 and len(memo) == 8
    assert _open(_seal(honest, round_=9), memo, 9)[0] == 9
    assert memo.agreed == 52 and len(memo) == 8


def test_a_senders_keys_are_bounded_too() -> None:
    keys = SealKeys(capacity=1)
    _seal(keys), _seal(keys, receiver=THIRD), _seal(keys)
    assert len(keys) == 1 and keys.agreed == 3


def test_a_tampered_nonce_or_a_low_order_ephemeral_key_fails_and_is_not_kept() -> None:
    memo = OpenKeys()
    data = _seal(SealKeys())
    nonce_flipped = bytearray(data)
    nonce_flipped[NONCE.start] ^= 1
    zero_key = bytearray(data)
    zero_key[EPHEMERAL] = bytes(X25519_KEY_BYTES)
    for forged in (nonce_flipped, zero_key):
        with pytest.raises(EnvelopeError) as info:
            _open(forged, memo)
        assert info.value.reason == "decryption_failed"
    assert len(memo) == 1  # the flipped nonce's key (a valid one); the low-order key: none
    assert _open(data, memo)[0] == 7


def test_a_replay_under_a_kept_key_still_opens_and_is_refused_by_its_round() -> None:
    """The memo changes no verdict: a captured envelope opens again, as it did, and the
    round guard refuses it."""
    memo, guard = OpenKeys(), ReplayGuard()
    data = _seal(SealKeys())
    round_, _ = _open(data, memo)
    guard.check_and_record(SENDER, round_)
    round_, _ = _open(data, memo)
    with pytest.raises(EnvelopeError) as info:
        guard.check_and_record(SENDER, round_)
    assert info.value.reason == "replayed"


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_sizes_must_be_positive_integers(bad: object) -> None:
    with pytest.raises(ValueError):
        SealKeys(uses=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        OpenKeys(capacity=bad)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.lists(st.sampled_from([RECEIVER, THIRD]), min_size=1,
                                   max_size=12))
def test_any_sequence_of_receivers_opens_at_its_own_receiver_only(
        uses: int, receivers: list[str]) -> None:
    keys = SealKeys(uses=uses)
    memos = {name: OpenKeys() for name in RECEIVERS}
    for r, receiver in enumerate(receivers):
        data = _seal(keys, round_=r, receiver=receiver, payload=bytes([r]) * 33)
        assert _open(data, memos[receiver], r, receiver) == (r, bytes([r]) * 33)
        other = THIRD if receiver == RECEIVER else RECEIVER
        with pytest.raises(EnvelopeError):
            _open(data, memos[other], r, other)
    sent = {name: receivers.count(name) for name in RECEIVERS}
    assert keys.agreed == sum(-(-count // uses) for count in sent.values())
