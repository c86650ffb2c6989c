"""Envelopes: one frame payload, signed by its sender and encrypted end to end to its receiver.

Layout (all lengths big-endian)::

    envelope  = MAGIC (b"GFE\\x05") ‖ ephemeral X25519 public (32) ‖ nonce (12)
                ‖ AES-256-GCM(plaintext, tag 16)
    key       = HKDF-SHA256(X25519(ephemeral, receiver), salt = ephemeral ‖ receiver public)
    nonce     = 96 random bits, drawn for each envelope
    plaintext = u16 header length ‖ header ‖ Ed25519 signature (64) ‖ payload
    header    = msgpack [version, round]
    signature = Ed25519_sign(sender, CONTEXT ‖ BLAKE3-256(u16 length ‖ bound ‖ payload))
    bound     = msgpack [version, federation, round, sender, receiver]

The bound header is signed, not sent: the receiver rebuilds it from its federation, the
stream's Noise-authenticated peer and its own id (version 5; version 4 sent it, 110-odd bytes
of names an envelope), so an envelope for another federation or receiver, or from another
sender, fails its signature.

(BLAKE3 in its key-derivation mode, under its own context string.)

Design:

* **Sign, then encrypt, with the names inside both.** The signed header binds the federation,
  the round, the sender and the receiver (only version and round travel: the receiver knows
  the rest). The sender signs a BLAKE3 digest of header ‖ payload (one pass
  over the payload at each end; Ed25519 over 40 MB would hash it twice with SHA-512 and PyNaCl
  would copy it; BLAKE3, a 256-bit cryptographic hash, ran at 9 GB/s here against SHA-256's
  2 GB/s with the CPU's SHA instructions), prefixed with a gossipfl
  context string so the signature cannot be confused with any other
  signature the identity key makes (libp2p's own included). Because the receiver's name is signed,
  a receiver cannot re-encrypt a frame it got to a third node ("surreptitious forwarding"): that
  node finds itself not named and refuses the frame as redirected.
* **An ephemeral sender key (as libsodium's sealed box), not Box(sender, receiver).** An
  envelope's key comes from an ephemeral X25519 key pair, so (a) a stolen *sender* long-term
  key decrypts nothing it sent, (b) the sender needs no X25519 secret of its own, only its
  signing key and the receiver's certified X25519 public key, and (c) no static pairwise key
  is used. With :class:`~gossipfl.crypto.sessions.SealKeys` (as a node seals) one ephemeral
  key serves at most ``SESSION_ENVELOPES`` envelopes to one receiver, each under its own
  random nonce, and :class:`~gossipfl.crypto.sessions.OpenKeys` memoises the receiver's side:
  the X25519 agreements were half of a small envelope's cost (:mod:`.sessions` says what this
  gives up). Without them, every envelope has a fresh ephemeral key. Sender
  authentication comes from the Ed25519 signature, which, unlike Box's MAC, is not deniable by
  the sender and can be checked against the peer id. The cipher is AES-256-GCM (the
  ``cryptography`` package, OpenSSL: 20-40 times faster here than PyNaCl's sealed box, whose
  XSalsa20-Poly1305 and buffer copies cost 9 ms to seal 4 MB). The GCM tag covers the whole
  plaintext and, as associated data, the magic and both public keys (the nonce is GCM's own
  input), so any change to the header or payload fails decryption; the header is then
  compared with what the receiver expects and the signature checked. (Version 1 used
  ``crypto_box_seal`` and BLAKE2b, version 2 this layout with SHA-256 for the digest, version
  3 one ephemeral key and one fixed nonce an envelope; all are refused with a message that
  names their version.)
* **No copy of the payload to seal or open it.** :func:`seal` takes the payload as one buffer
  or as a list of pieces (a message's msgpack with its arrays referred to, not copied:
  :func:`gossipfl.gossip.wire.encode_body_pieces`), hashes them one after the other and
  encrypts them straight into the one buffer it returns; :func:`open_envelope` decrypts into one
  buffer and returns the payload as a read-only view of it.
* **Limits before crypto.** :func:`seal` refuses a payload over ``max_payload_bytes`` and
  :func:`open_envelope` refuses an envelope longer than ``max_payload_bytes`` plus the fixed
  overhead before any hashing, signing or decryption.

Replay: an envelope is bound to its round, but a captured envelope opens again. Refusing replays
is the caller's job: after :func:`open_envelope`, check the returned round against the last round
accepted from that sender, e.g. with :class:`ReplayGuard`.

Every error is an :class:`EnvelopeError` whose ``reason`` is a short code (``oversized``,
``malformed``, ``decryption_failed``, ``bad_signature`` (since version 5 also for another
federation, receiver or sender), ``round_mismatch``, ``replayed``) and whose message names the
broken rule.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import blake3
import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from gossipfl.crypto.sessions import OpenKeys, SealKeys, derive_key, fresh_key

ENVELOPE_MAGIC = b"GFE\x05"
ENVELOPE_VERSION = 5
#: The magic of envelope versions this node no longer opens, and why.
_RETIRED = {b"GFE\x01": "version 1 (sealed box, BLAKE2b)", b"GFE\x02": "version 2 (SHA-256)",
            b"GFE\x03": "version 3 (a fixed nonce)",
            b"GFE\x04": "version 4 (the names sent in the header)"}
#: Default payload cap, the same as the wire's default cap for parameter frames.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_NAME_CHARS = 128
MAX_PEER_ID_CHARS = 128
MAX_ROUND = 2**31 - 1
MAX_HEADER_BYTES = 1024
SIGNATURE_BYTES = 64
X25519_KEY_BYTES = 32

_LENGTH = struct.Struct(">H")
_DIGEST_CONTEXT = "gossipfl 2026 envelope v5 payload digest"  # BLAKE3 derive_key context
_SIGN_CONTEXT = b"gossipfl/envelope/v5\x00"
NONCE_BYTES = 12
_TAG_BYTES = 16
#: Bytes the encryption adds to the plaintext: the ephemeral public key, nonce and GCM tag.
SEAL_BYTES = X25519_KEY_BYTES + NONCE_BYTES + _TAG_BYTES
#: Bytes an envelope adds to its payload, at most.
MAX_OVERHEAD_BYTES = (
    len(ENVELOPE_MAGIC) + SEAL_BYTES + _LENGTH.size + MAX_HEADER_BYTES + SIGNATURE_BYTES
)
_MIN_ENVELOPE_BYTES = len(ENVELOPE_MAGIC) + SEAL_BYTES + _LENGTH.size + SIGNATURE_BYTES


class EnvelopeError(ValueError):
    """An envelope that cannot be sealed or opened; the message names the broken rule.

    Attributes:
        reason: a short, stable code for the broken rule (for counting rejections by reason).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _malformed(detail: str) -> EnvelopeError:
    return EnvelopeError("malformed", f"malformed envelope: {detail}")


def _check_str(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str) or not value:
        raise _malformed(f"{what} must be a non-empty string")
    if len(value) > max_chars:
        raise _malformed(f"{what} is longer than {max_chars} characters")
    return value


def _check_round(value: Any, what: str = "round") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _malformed(f"{what} must be an integer")
    if not 0 <= value <= MAX_ROUND:
        raise _malformed(f"{what} {value} is outside [0, {MAX_ROUND}]")
    return value


def _check_max(max_payload_bytes: Any) -> int:
    if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int):
        raise _malformed("max_payload_bytes must be an integer")
    if max_payload_bytes < 0:
        raise _malformed("max_payload_bytes must not be negative")
    return max_payload_bytes


Buffer = bytes | bytearray | memoryview


def _digest(length_and_header: bytes, payload: Sequence[Buffer]) -> bytes:
    hasher = blake3.blake3(derive_key_context=_DIGEST_CONTEXT)
    hasher.update(length_and_header)
    for piece in payload:
        hasher.update(piece)
    return hasher.digest()


def _encrypt_into(receiver_x25519_public: bytes, pieces: Sequence[Buffer], out: bytearray,
                  start: int, keys: SealKeys | None = None) -> None:
    """Encrypt the concatenation of ``pieces`` to a receiver's X25519 key, anonymously (an
    ephemeral key: a fresh one, or ``keys``' current one for that receiver), into
    ``out[start:]``: ephemeral public ‖ nonce ‖ ciphertext ‖ tag, which must fill it exactly.
    Each piece is encrypted where it lies, none is joined. Raises ValueError for an unusable
    receiver key."""
    if not isinstance(receiver_x25519_public, bytes) or len(receiver_x25519_public) != 32:
        raise ValueError(f"receiver X25519 key must be {X25519_KEY_BYTES} bytes")
    ephemeral_public, key = (fresh_key(receiver_x25519_public) if keys is None
                             else keys.key_for(receiver_x25519_public))
    nonce = os.urandom(NONCE_BYTES)
    encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    encryptor.authenticate_additional_data(ENVELOPE_MAGIC + ephemeral_public
                                           + receiver_x25519_public)
    view = memoryview(out)
    view[start:start + X25519_KEY_BYTES] = ephemeral_public
    at = start + X25519_KEY_BYTES
    view[at:at + NONCE_BYTES] = nonce
    at += NONCE_BYTES
    for piece in pieces:  # GCM is a stream mode: each piece's ciphertext is as long as it
        at += encryptor.update_into(piece, view[at:])  # the room behind includes the tag's
    encryptor.finalize()
    if at + _TAG_BYTES != len(out):
        raise AssertionError("the envelope's buffer does not fit its ciphertext")
    view[at:] = encryptor.tag


def encrypt_to(receiver_x25519_public: bytes, plaintext: bytes | bytearray | memoryview) -> bytes:
    """Encrypt ``plaintext`` to a receiver's X25519 key, anonymously (a fresh ephemeral key):
    ephemeral public ‖ nonce ‖ ciphertext ‖ tag, the part of an envelope after its magic. Raises
    ValueError for an unusable receiver key."""
    out = bytearray(SEAL_BYTES + len(memoryview(plaintext).cast("B")))
    _encrypt_into(receiver_x25519_public, [plaintext], out, 0)
    return bytes(out)


def _decrypt(receiver_x25519_private: PrivateKey, sealed: memoryview,
             keys: OpenKeys | None = None) -> memoryview:
    if len(sealed) < SEAL_BYTES:
        raise ValueError("too short")
    ephemeral_public = bytes(sealed[:X25519_KEY_BYTES])
    receiver_public = bytes(receiver_x25519_private.public_key)
    key = (derive_key(bytes(receiver_x25519_private), ephemeral_public, ephemeral_public,
                      receiver_public) if keys is None
           else keys.key_for(receiver_x25519_private, ephemeral_public))
    nonce = bytes(sealed[X25519_KEY_BYTES:X25519_KEY_BYTES + NONCE_BYTES])
    associated = ENVELOPE_MAGIC + ephemeral_public + receiver_public
    size = len(sealed) - SEAL_BYTES
    decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce, bytes(sealed[-_TAG_BYTES:])),
                       ).decryptor()
    decryptor.authenticate_additional_data(associated)
    # update_into wants room for a block less one beyond its output; none of it is returned
    plaintext = bytearray(size + 15)
    body = sealed[X25519_KEY_BYTES + NONCE_BYTES:-_TAG_BYTES]
    if decryptor.update_into(body, plaintext) != size:
        raise AssertionError("GCM returned a ciphertext's plaintext of another length")
    try:
        decryptor.finalize()  # checks the tag: nothing of the plaintext is used before
    except InvalidTag:
        raise ValueError("the tag does not verify") from None
    return memoryview(plaintext)[:size]


def decrypt_with(receiver_x25519_private: PrivateKey,
                 sealed: bytes | bytearray | memoryview) -> bytes:
    """The plaintext of :func:`encrypt_to`'s output; ValueError if it does not open with this
    key (tampered, truncated, or encrypted to another key)."""
    return bytes(_decrypt(receiver_x25519_private, memoryview(sealed).cast("B")))


def _bound(federation: str, round_: int, sender: str, receiver: str) -> bytes:
    """The header an envelope's signature binds (sent as its version and round only)."""
    return msgpack.packb([ENVELOPE_VERSION, federation, round_, sender, receiver],
                         use_bin_type=True)


def seal(
    payload: Buffer | Sequence[Buffer],
    *,
    federation: str,
    round: int,
    sender: str,
    receiver: str,
    sender_signing_key: SigningKey,
    receiver_x25519_public: bytes,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    keys: SealKeys | None = None,
) -> bytearray:
    """Sign ``payload`` as ``sender`` and encrypt it to ``receiver``.

    Args:
        payload: the frame payload (bytes-like), or its pieces in order (a list or tuple of
            bytes-like, hashed and encrypted where they lie), at most ``max_payload_bytes``
            long in all.
        federation: the federation name (bound into the signed, encrypted header).
        round: the sender's round, 0 … 2³¹−1.
        sender: the sender's peer id (must be the peer id of ``sender_signing_key``'s public key
            for receivers to accept it).
        receiver: the receiver's peer id.
        sender_signing_key: the sender's Ed25519 identity key.
        receiver_x25519_public: the receiver's 32-byte X25519 key, from its verified membership
            certificate.
        max_payload_bytes: the payload cap, checked before any crypto.
        keys: the sender's envelope keys (an ephemeral key per receiver for a few
            envelopes); None: a fresh ephemeral key for this envelope.

    Returns:
        The envelope, in one buffer.

    Raises:
        EnvelopeError: reason ``oversized`` for a payload over the cap, ``malformed`` for a bad
            field or receiver key.
    """
    pieces = [payload] if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    if not isinstance(pieces, (list, tuple)) or not all(
            isinstance(piece, (bytes, bytearray, memoryview)) for piece in pieces):
        raise _malformed("payload must be bytes or a list of bytes")
    views = [memoryview(piece).cast("B") for piece in pieces]
    size = sum(len(view) for view in views)
    limit = _check_max(max_payload_bytes)
    if size > limit:
        raise EnvelopeError(
            "oversized", f"oversized: payload of {size} bytes exceeds the {limit} cap"
        )
    bound = _bound(_check_str(federation, "federation", MAX_NAME_CHARS), _check_round(round),
                   _check_str(sender, "sender", MAX_PEER_ID_CHARS),
                   _check_str(receiver, "receiver", MAX_PEER_ID_CHARS))
    if len(bound) > MAX_HEADER_BYTES:  # cannot happen with the limits above; keep it checked
        raise _malformed(f"header of {len(bound)} bytes exceeds {MAX_HEADER_BYTES}")
    if not isinstance(receiver_x25519_public, bytes) or len(receiver_x25519_public) != 32:
        raise _malformed(f"receiver X25519 key must be {X25519_KEY_BYTES} bytes")
    signature = sender_signing_key.sign(
        _SIGN_CONTEXT + _digest(_LENGTH.pack(len(bound)) + bound, views)
    ).signature
    header = msgpack.packb([ENVELOPE_VERSION, round], use_bin_type=True)
    head = _LENGTH.pack(len(header)) + header + signature
    out = bytearray(len(ENVELOPE_MAGIC) + SEAL_BYTES + len(head) + size)
    out[: len(ENVELOPE_MAGIC)] = ENVELOPE_MAGIC
    try:
        _encrypt_into(receiver_x25519_public, [head, *views], out, len(ENVELOPE_MAGIC), keys)
    except ValueError:  # a low-order public key
        raise _malformed("receiver X25519 key is not usable") from None
    return out


def open_envelope(
    data: bytes,
    *,
    federation: str,
    expected_round: int | None,
    expected_sender: str,
    receiver: str,
    receiver_x25519_private: PrivateKey,
    sender_verify_key: VerifyKey,
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    keys: OpenKeys | None = None,
) -> tuple[int, memoryview]:
    """Decrypt and authenticate an envelope; return ``(round, payload)``, the payload a
    read-only view of the one buffer it was decrypted into.

    The caller passes as ``expected_sender`` the Noise-authenticated peer of the stream and as
    ``sender_verify_key`` that peer's Ed25519 key (see
    :func:`gossipfl.crypto.admission.verify_key_from_peer_id`). The returned round must still be
    checked against the last round accepted from that sender (:class:`ReplayGuard`): an envelope
    captured earlier opens again.

    Args:
        data: the envelope.
        federation: this node's federation.
        expected_round: the round the caller expects, or ``None`` to accept any round.
        expected_sender: the peer id the envelope must come from.
        receiver: this node's peer id.
        receiver_x25519_private: this node's long-term X25519 key.
        sender_verify_key: the sender's Ed25519 verify key.
        max_payload_bytes: the payload cap; longer envelopes are refused before any crypto.
        keys: this node's memo of envelope keys by ephemeral key (None: none kept).

    Raises:
        EnvelopeError: reasons, in the order checked: ``oversized``, ``malformed`` (too short,
            unknown magic, bad header), ``decryption_failed`` (tampered, or not encrypted to
            this key), ``bad_signature`` (another signer, federation or receiver: forged,
            relayed or redirected), ``round_mismatch``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _malformed("must be bytes")
    view = memoryview(data).cast("B")
    limit = _check_max(max_payload_bytes) + MAX_OVERHEAD_BYTES
    if len(view) > limit:
        raise EnvelopeError(
            "oversized", f"oversized: envelope of {len(view)} bytes exceeds the {limit} cap"
        )
    if len(view) < _MIN_ENVELOPE_BYTES:
        raise _malformed(f"{len(view)} bytes is shorter than any envelope")
    magic = bytes(view[: len(ENVELOPE_MAGIC)])
    if magic != ENVELOPE_MAGIC:
        if magic in _RETIRED:
            raise _malformed(f"envelope {_RETIRED[magic]} is no longer accepted: this node "
                             f"opens version {ENVELOPE_VERSION} (the sender runs an older "
                             f"gossipfl)")
        raise _malformed("unknown magic or envelope version")
    if expected_round is not None:
        _check_round(expected_round, "expected round")
    try:
        plaintext = _decrypt(receiver_x25519_private, view[len(ENVELOPE_MAGIC):], keys)
    except ValueError:
        raise EnvelopeError(
            "decryption_failed",
            "decryption failed: ciphertext was tampered with or is not encrypted to this node",
        ) from None

    # The plaintext is authentic to *someone* holding this node's public key (anyone can seal to
    # it): parse it as hostile until the signature is checked.
    view = memoryview(plaintext)  # parsed where it lies: only the payload's view is returned
    (header_length,) = _LENGTH.unpack(view[: _LENGTH.size])
    body_start = _LENGTH.size + header_length
    if header_length > MAX_HEADER_BYTES or body_start + SIGNATURE_BYTES > len(plaintext):
        raise _malformed(f"header length {header_length} is out of range")
    try:
        header = msgpack.unpackb(view[_LENGTH.size : body_start], raw=False, use_list=True)
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise _malformed(f"header is not msgpack ({type(error).__name__})") from None
    if not isinstance(header, list) or len(header) != 2:
        raise _malformed("header must be [version, round]")
    version, h_round = header
    if isinstance(version, bool) or version != ENVELOPE_VERSION:
        raise _malformed(f"header version {version!r} is not supported")
    h_round = _check_round(h_round)
    bound = _bound(_check_str(federation, "federation", MAX_NAME_CHARS), h_round,
                   _check_str(expected_sender, "expected sender", MAX_PEER_ID_CHARS),
                   _check_str(receiver, "receiver", MAX_PEER_ID_CHARS))
    signature = bytes(view[body_start : body_start + SIGNATURE_BYTES])
    payload_view = view[body_start + SIGNATURE_BYTES :]
    digest = _digest(_LENGTH.pack(len(bound)) + bound, [payload_view])
    try:
        sender_verify_key.verify(_SIGN_CONTEXT + digest, signature)
    except (BadSignatureError, ValueError):
        raise EnvelopeError(
            "bad_signature", f"bad signature: envelope is not signed by {expected_sender} "
            "for this federation and this node (forged, relayed or redirected)") from None
    if expected_round is not None and h_round != expected_round:
        raise EnvelopeError(
            "round_mismatch", f"round mismatch: envelope is for round {h_round}, "
            f"expected {expected_round}"
        )
    return h_round, payload_view.toreadonly()


@dataclass
class ReplayGuard:
    """The last round accepted from each sender; refuses a round that is not newer.

    Pure bookkeeping (no I/O, no clock). Call :meth:`check_and_record` after
    :func:`open_envelope` succeeded, or :meth:`check` before and :meth:`record` only once the
    frame was accepted (so that a frame refused for another reason does not consume its round).
    Senders are tracked independently; memory grows with the number of distinct senders, which
    admission bounds to the federation's members.
    """

    _last: dict[str, int] = field(default_factory=dict, repr=False)

    def last_round(self, sender: str) -> int | None:
        """The last round recorded for ``sender``, or ``None``."""
        return self._last.get(sender)

    def check(self, sender: str, round: int) -> None:
        """Raise :class:`EnvelopeError` (reason ``replayed``) unless ``round`` is newer than the
        last round recorded for ``sender``."""
        last = self._last.get(sender)
        if last is not None and round <= last:
            raise EnvelopeError(
                "replayed",
                f"replayed or stale round: round {round} from {sender} is not after {last}",
            )

    def record(self, sender: str, round: int) -> None:
        """Record ``round`` as accepted from ``sender`` (never moves backwards)."""
        last = self._last.get(sender)
        if last is None or round > last:
            self._last[sender] = round

    def check_and_record(self, sender: str, round: int) -> None:
        """:meth:`check`, then :meth:`record`."""
        self.check(sender, round)
        self.record(sender, round)
