"""Tests for gossipfl.crypto.envelope: sign-then-encrypt envelopes and the replay guard."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gossipfl.crypto import envelope
from gossipfl.crypto.admission import member_x25519_keypair, peer_id_of, verify_key_from_peer_id
from gossipfl.crypto.envelope import (
    ENVELOPE_MAGIC,
    MAX_OVERHEAD_BYTES,
    MAX_ROUND,
    EnvelopeError,
    ReplayGuard,
    open_envelope,
    seal,
)

SENDER_KEY = SigningKey(b"\x01" * 32)
RECEIVER_KEY = SigningKey(b"\x02" * 32)
THIRD_KEY = SigningKey(b"\x03" * 32)
SENDER = peer_id_of(SENDER_KEY.verify_key)
RECEIVER = peer_id_of(RECEIVER_KEY.verify_key)
THIRD = peer_id_of(THIRD_KEY.verify_key)
RECEIVER_PRIVATE, RECEIVER_PUBLIC = member_x25519_keypair(bytes(RECEIVER_KEY))
THIRD_PRIVATE, THIRD_PUBLIC = member_x25519_keypair(bytes(THIRD_KEY))
FED = "fed"
PAYLOAD = b"model delta " * 8


def _seal(payload: bytes = PAYLOAD, **overrides: object) -> bytes:
    args: dict[str, object] = {
        "federation": FED,
        "round": 7,
        "sender": SENDER,
        "receiver": RECEIVER,
        "sender_signing_key": SENDER_KEY,
        "receiver_x25519_public": RECEIVER_PUBLIC,
    }
    args.update(overrides)
    return seal(payload, **args)  # type: ignore[arg-type]


def _open(data: bytes, **overrides: object) -> tuple[int, bytes]:
    args: dict[str, object] = {
        "federation": FED,
        "expected_round": 7,
        "expected_sender": SENDER,
        "receiver": RECEIVER,
        "receiver_x25519_private": RECEIVER_PRIVATE,
        "sender_verify_key": verify_key_from_peer_id(SENDER),
    }
    args.update(overrides)
    return open_envelope(data, **args)  # type: ignore[arg-type]


def _reason(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(EnvelopeError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


ENVELOPE = _seal()


# -- round trips -----------------------------------------------------------------------------------


def test_round_trip() -> None:
    assert ENVELOPE.startswith(ENVELOPE_MAGIC)
    assert PAYLOAD not in ENVELOPE  # encrypted
    assert _open(ENVELOPE) == (7, PAYLOAD)
    assert _open(ENVELOPE, expected_round=None) == (7, PAYLOAD)
    assert _seal() != ENVELOPE  # a fresh ephemeral key every time
    assert len(ENVELOPE) - len(PAYLOAD) <= MAX_OVERHEAD_BYTES


@settings(max_examples=100, deadline=None)
@given(
    payload=st.binary(max_size=20_000),
    round_=st.integers(0, MAX_ROUND),
    federation=st.text(min_size=1, max_size=128),
)
def test_round_trip_any_payload(payload: bytes, round_: int, federation: str) -> None:
    data = _seal(payload, round=round_, federation=federation)
    assert _open(data, expected_round=round_, federation=federation) == (round_, payload)


def test_empty_and_bytes_like_payloads() -> None:
    assert _open(_seal(b"")) == (7, b"")
    assert _open(_seal(bytearray(b"abc"))) == (7, b"abc")
    assert _open(_seal(memoryview(b"abcdef")[2:])) == (7, b"cdef")


# -- tampering and truncation ----------------------------------------------------------------------


def test_every_single_byte_change_is_refused() -> None:
    for index in range(len(ENVELOPE)):
        for bit in (0x01, 0x80):
            broken = bytearray(ENVELOPE)
            broken[index] ^= bit
            with pytest.raises(EnvelopeError) as info:
                _open(bytes(broken))
            expected = "malformed" if index < len(ENVELOPE_MAGIC) else "decryption_failed"
            assert info.value.reason == expected


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_single_byte_change_is_refused(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(ENVELOPE) - 1))
    xor = data.draw(st.integers(1, 255))
    broken = bytearray(ENVELOPE)
    broken[index] ^= xor
    with pytest.raises(EnvelopeError) as info:
        _open(bytes(broken))
    expected = "malformed" if index < len(ENVELOPE_MAGIC) else "decryption_failed"
    assert info.value.reason == expected


def test_truncated_or_extended_envelopes_are_refused() -> None:
    for end in range(len(ENVELOPE)):
        expected = "malformed" if end < envelope._MIN_ENVELOPE_BYTES else "decryption_failed"
        assert _reason(_open, ENVELOPE[:end]) == expected, end
    assert _reason(_open, ENVELOPE + b"\x00") == "decryption_failed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_envelope_error(data: bytes) -> None:
    # too short or not our magic: refused before any crypto; else no sealed box opens
    for candidate in (data, ENVELOPE_MAGIC + data):
        readable = (len(candidate) >= envelope._MIN_ENVELOPE_BYTES
                    and candidate.startswith(ENVELOPE_MAGIC))
        assert _reason(_open, candidate) == ("decryption_failed" if readable else "malformed")


def _seal_raw(plaintext: bytes, public: bytes = RECEIVER_PUBLIC) -> bytes:
    """What an attacker can do: encrypt anything to the receiver (the encryption is anonymous)."""
    return ENVELOPE_MAGIC + envelope.encrypt_to(public, plaintext)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_plaintext_raises_only_envelope_error(plaintext: bytes) -> None:
    with pytest.raises(EnvelopeError) as info:
        _open(_seal_raw(plaintext))
    assert info.value.reason in ("malformed", "bad_signature")


@pytest.mark.parametrize(
    "header",
    [
        [1, FED, 7, SENDER, RECEIVER],  # version 1's header, inside a version 5 envelope
        [4, FED, 7, SENDER, RECEIVER],  # version 4's: the names sent
        [5, FED, 7, SENDER, RECEIVER],
        [4, 7],
        [6, 7],
        [True, 7],
        [5, -1],
        [5, "7"],
        [5],
        {"v": 1},
    ],
)
def test_bad_headers_are_malformed(header: object) -> None:
    packed = msgpack.packb(header)
    plaintext = len(packed).to_bytes(2, "big") + packed + b"\x00" * 64 + b"payload"
    assert _reason(_open, _seal_raw(plaintext)) == "malformed"
    too_long = (5000).to_bytes(2, "big") + packed + b"\x00" * 64
    assert _reason(_open, _seal_raw(too_long)) == "malformed"


# -- binding: receiver, sender, federation, round --------------------------------------------------


def test_redirected_to_another_receiver_key_fails_decryption() -> None:
    assert _reason(_open, ENVELOPE, receiver_x25519_private=THIRD_PRIVATE) == "decryption_failed"
    assert _reason(_open, ENVELOPE, receiver=THIRD,
                   receiver_x25519_private=THIRD_PRIVATE) == "decryption_failed"
    assert _reason(_open, ENVELOPE, receiver_x25519_private=PrivateKey.generate()) == (
        "decryption_failed"
    )


def test_opened_under_another_receiver_name_is_bad_signature() -> None:
    # the receiver's name is signed, not sent: a node opening it as another reads a signature
    # over another header
    with pytest.raises(EnvelopeError, match="redirected") as info:
        _open(ENVELOPE, receiver=THIRD)
    assert info.value.reason == "bad_signature"
    header = envelope.decrypt_with(RECEIVER_PRIVATE, ENVELOPE[len(ENVELOPE_MAGIC):])
    length = int.from_bytes(header[:2], "big")
    assert msgpack.unpackb(header[2:2 + length]) == [5, 7]  # no name travels
    assert SENDER.encode() not in header and RECEIVER.encode() not in header


def test_receiver_cannot_forward_a_frame_as_if_sent_to_a_third_node() -> None:
    # The receiver decrypts and re-encrypts the signed plaintext to a third member.
    plaintext = envelope.decrypt_with(RECEIVER_PRIVATE, ENVELOPE[len(ENVELOPE_MAGIC):])
    forwarded = _seal_raw(plaintext, THIRD_PUBLIC)
    with pytest.raises(EnvelopeError) as info:
        _open(forwarded, receiver=THIRD, receiver_x25519_private=THIRD_PRIVATE)
    assert info.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("changes", "to_third"),
    [({"federation": "other-fed"}, False), ({"expected_round": 8}, False),
     ({"expected_sender": THIRD}, False), ({"receiver": THIRD}, True)],
    ids=["federation", "round", "sender", "receiver"],
)
def test_header_rewritten_under_the_original_signature_is_bad_signature(
    changes: dict, to_third: bool
) -> None:
    # A receiver (or anyone who saw the plaintext) keeps the signature and re-encrypts, for
    # another federation, round, sender or receiver: the signature covers the bound header,
    # so the change is caught (a round by the sent header's round, rewritten to match)
    plaintext = envelope.decrypt_with(RECEIVER_PRIVATE, ENVELOPE[len(ENVELOPE_MAGIC):])
    length = int.from_bytes(plaintext[:2], "big")
    header = msgpack.unpackb(plaintext[2 : 2 + length])
    header[1] = changes.get("expected_round", header[1])
    packed = msgpack.packb(header)
    rewritten = len(packed).to_bytes(2, "big") + packed + plaintext[2 + length :]
    expect = {**changes, "sender_verify_key": SENDER_KEY.verify_key,
              "receiver_x25519_private": THIRD_PRIVATE if to_third else RECEIVER_PRIVATE}
    data = _seal_raw(rewritten, THIRD_PUBLIC if to_third else RECEIVER_PUBLIC)
    assert _reason(_open, data, **expect) == "bad_signature"


def test_payload_rewritten_under_the_original_signature_is_bad_signature() -> None:
    plaintext = envelope.decrypt_with(RECEIVER_PRIVATE, ENVELOPE[len(ENVELOPE_MAGIC):])
    assert _reason(_open, _seal_raw(plaintext[:-1] + b"!")) == "bad_signature"
    assert _reason(_open, _seal_raw(plaintext + b"more")) == "bad_signature"


def test_wrong_sender_verify_key_is_bad_signature() -> None:
    assert _reason(_open, ENVELOPE, sender_verify_key=THIRD_KEY.verify_key) == "bad_signature"


def test_impersonation_is_bad_signature() -> None:
    # A third member names the sender in the header but can only sign with its own key.
    forged = _seal(sender_signing_key=THIRD_KEY)
    assert _reason(_open, forged) == "bad_signature"


def test_wrong_sender_name() -> None:
    assert _reason(_open, ENVELOPE, expected_sender=THIRD,
                   sender_verify_key=THIRD_KEY.verify_key) == "bad_signature"
    assert _reason(_open, _seal(sender=THIRD)) == "bad_signature"


def test_wrong_federation() -> None:
    assert _reason(_open, ENVELOPE, federation="other") == "bad_signature"
    assert _reason(_open, _seal(federation="other")) == "bad_signature"


def test_round_mismatch() -> None:
    with pytest.raises(EnvelopeError, match="round mismatch") as info:
        _open(ENVELOPE, expected_round=8)
    assert info.value.reason == "round_mismatch"
    assert _reason(_open, _seal(round=6)) == "round_mismatch"
    assert _reason(_open, ENVELOPE, expected_round=-1) == "malformed"


def test_seal_refuses_bad_fields() -> None:
    assert _reason(_seal, round=-1) == "malformed"
    assert _reason(_seal, round=MAX_ROUND + 1) == "malformed"
    assert _reason(_seal, round=True) == "malformed"
    assert _reason(_seal, federation="") == "malformed"
    assert _reason(_seal, sender="x" * 129) == "malformed"
    assert _reason(_seal, receiver_x25519_public=RECEIVER_PUBLIC[:31]) == "malformed"
    assert _reason(_seal, receiver_x25519_public=bytes(32)) == "malformed"  # low-order point
    assert _reason(_seal, "text") == "malformed"


# -- size limits -----------------------------------------------------------------------------------


class _NoCrypto:
    """Stands in for every crypto object: any use fails the test."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("crypto ran on an oversized input")

    def sign(self, *args: object) -> None:
        raise AssertionError("crypto ran on an oversized input")


def test_oversized_input_is_refused_before_crypto(monkeypatch: pytest.MonkeyPatch) -> None:
    at_cap = _seal(b"x" * 100, max_payload_bytes=100)
    monkeypatch.setattr(envelope, "Cipher", _NoCrypto)
    monkeypatch.setattr(envelope, "derive_key", _NoCrypto)
    monkeypatch.setattr(envelope, "fresh_key", _NoCrypto)
    monkeypatch.setattr(envelope.blake3, "blake3", _NoCrypto)
    with pytest.raises(EnvelopeError, match="oversized") as info:
        _seal(b"x" * 101, max_payload_bytes=100, sender_signing_key=_NoCrypto.__new__(_NoCrypto))
    assert info.value.reason == "oversized"
    too_long = b"\x00" * (100 + MAX_OVERHEAD_BYTES + 1)
    assert _reason(_open, too_long, max_payload_bytes=100) == "oversized"
    monkeypatch.undo()
    assert _open(at_cap, max_payload_bytes=100) == (7, b"x" * 100)
    assert _reason(_open, _seal(b"x" * 5000), max_payload_bytes=100) == "oversized"


# -- replay guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("magic", "named"), [(b"GFE\x01", "version 1"),
                                              (b"GFE\x02", "version 2"),
                                              (b"GFE\x03", "version 3"),
                                              (b"GFE\x04", "version 4")])
def test_older_envelope_versions_are_refused_by_name(magic: bytes, named: str) -> None:
    """Version 1 (sealed box, BLAKE2b), version 2 (SHA-256 digest), version 3 (one fixed
    nonce) and version 4 (the names sent in the header) are not opened as version 5: refused
    before any crypto, with a message that names the version."""
    assert ENVELOPE_MAGIC == b"GFE\x05"
    with pytest.raises(EnvelopeError, match=f"{named} .*no longer accepted") as info:
        _open(magic + ENVELOPE[len(ENVELOPE_MAGIC):])
    assert info.value.reason == "malformed"
    with pytest.raises(EnvelopeError, match="unknown magic"):
        _open(b"GFE\x06" + ENVELOPE[4:])


def test_a_payload_in_pieces_seals_as_the_joined_payload() -> None:
    """Pieces are hashed and encrypted one after the other: the envelope opens to their
    concatenation, under the same signature rules (a piece changed, moved or dropped after
    signing breaks it), and the payload comes back as a read-only view."""
    pieces = [b"head", memoryview(bytearray(b"x" * 5000)), bytearray(b"mid"), b"", b"tail"]
    joined = b"".join(bytes(p) for p in pieces)
    round_, payload = _open(_seal(pieces))
    assert (round_, bytes(payload)) == (7, joined)
    assert payload.readonly
    assert _open(_seal(tuple(pieces)))[1] == joined
    plaintext = envelope.decrypt_with(RECEIVER_PRIVATE, _seal(pieces)[len(ENVELOPE_MAGIC):])
    assert plaintext.endswith(joined)
    swapped = plaintext[: -len(joined)] + b"tail" + joined[:-4]
    assert _reason(_open, _seal_raw(swapped)) == "bad_signature"
    for bad in ([b"ok", "text"], {b"a"}, [b"ok", 3]):
        assert _reason(_seal, bad) == "malformed"
    assert _reason(_seal, [b"x" * 60, b"y" * 41], max_payload_bytes=100) == "oversized"


def test_the_encryption_binds_its_public_keys() -> None:
    """The ephemeral key is associated data: swapping it (or the ciphertext behind another
    one) fails the tag, and a low-order ephemeral key is refused, never an all-zero key."""
    sealed = envelope.encrypt_to(RECEIVER_PUBLIC, b"plaintext")
    assert envelope.decrypt_with(RECEIVER_PRIVATE, sealed) == b"plaintext"
    other = envelope.encrypt_to(RECEIVER_PUBLIC, b"plaintext")
    for forged in (other[:32] + sealed[32:], sealed[:32] + other[32:], bytes(32) + sealed[32:]):
        with pytest.raises(ValueError):
            envelope.decrypt_with(RECEIVER_PRIVATE, forged)
    with pytest.raises(ValueError):
        envelope.encrypt_to(bytes(32), b"plaintext")  # a low-order receiver key


def test_replay_guard_per_sender() -> None:
    guard = ReplayGuard()
    assert guard.last_round("a") is None
    guard.check_and_record("a", 1)
    guard.check_and_record("a", 2)
    guard.check_and_record("b", 1)  # senders are independent
    guard.check_and_record("a", 5)  # gaps are fine
    with pytest.raises(EnvelopeError, match="replayed or stale round") as info:
        guard.check_and_record("a", 5)  # replayed
    assert info.value.reason == "replayed"
    with pytest.raises(EnvelopeError, match="replayed or stale round"):
        guard.check_and_record("a", 3)  # stale
    assert guard.last_round("a") == 5
    guard.check_and_record("b", 2)
    assert (guard.last_round("a"), guard.last_round("b")) == (5, 2)


def test_replay_guard_check_does_not_record() -> None:
    guard = ReplayGuard()
    guard.check("a", 3)
    guard.check("a", 3)
    assert guard.last_round("a") is None
    guard.record("a", 3)
    guard.record("a", 1)  # never moves backwards
    assert guard.last_round("a") == 3
    assert repr(guard) == "ReplayGuard()"  # no per-sender state in logs


def test_replayed_envelope_is_caught_by_the_guard() -> None:
    guard = ReplayGuard()
    round_, _ = _open(ENVELOPE, expected_round=None)
    guard.check_and_record(SENDER, round_)
    round_again, _ = _open(ENVELOPE, expected_round=None)  # the envelope itself opens again
    assert _reason(guard.check_and_record, SENDER, round_again) == "replayed"
