"""Membership certificates: the :class:`AdmissionError` of all admission rules, the field
checks, and the certificate itself (its form, issuing, verifying).

Part of admission, which :mod:`gossipfl.crypto.admission` describes and re-exports (import from
there): this module is its base and imports nothing of gossipfl; member keys are in
:mod:`gossipfl.crypto.member_keys`, the federation's files in
:mod:`gossipfl.crypto.federation_files`. A certificate's signed bytes are the canonical msgpack
encoding of ``[version, federation, peer_id, x25519_public, issued_at, expires_at]`` (times always
float64), prefixed with a domain-separation context; its transported form appends the signature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

CERT_VERSION = 1
#: Certificates are small; anything longer is refused before parsing.
MAX_CERT_BYTES = 1024
MAX_NAME_CHARS = 128
MAX_PEER_ID_CHARS = 128
X25519_KEY_BYTES = 32
ED25519_KEY_BYTES = 32
SIGNATURE_BYTES = 64

_CERT_CONTEXT = b"gossipfl/membership-certificate/v1\x00"


class AdmissionError(ValueError):
    """A certificate, key or admission request that breaks a rule.

    Attributes:
        reason: a short, stable code for the broken rule (for counting rejections by reason).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _malformed(detail: str) -> AdmissionError:
    return AdmissionError("malformed", f"malformed certificate: {detail}")


# -- field checks: each returns the value if it keeps the rule, else raises AdmissionError


def _invalid(detail: str) -> AdmissionError:
    return AdmissionError("malformed", detail)


def check_name(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{what} must be a string")
    if not value:
        raise _invalid(f"{what} must not be empty")
    if len(value) > max_chars:
        raise _invalid(f"{what} is longer than {max_chars} characters")
    if not value.isprintable():
        raise _invalid(f"{what} holds non-printable characters")
    return value


def check_key_bytes(value: Any, what: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise _invalid(f"{what} must be {size} bytes")
    return value


def check_time(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid(f"{what} must be a number")
    if not math.isfinite(value):
        raise _invalid(f"{what} must be finite")
    return float(value)


# -- certificates ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MembershipCertificate:
    """The federation's signed statement that ``peer_id`` is a member, with its X25519 key.

    Construction validates the fields' types and sizes (raising :class:`AdmissionError` with reason
    ``malformed``); it does not check the signature: that is :func:`verify_certificate`'s job.
    """

    federation: str
    peer_id: str
    x25519_public: bytes
    issued_at: float
    expires_at: float
    signature: bytes

    def __post_init__(self) -> None:
        try:
            check_name(self.federation, "federation", MAX_NAME_CHARS)
            check_name(self.peer_id, "peer id", MAX_PEER_ID_CHARS)
            check_key_bytes(self.x25519_public, "x25519 public key", X25519_KEY_BYTES)
            if self.x25519_public == bytes(X25519_KEY_BYTES):
                raise _invalid("x25519 public key is all zeros")
            issued = check_time(self.issued_at, "issued_at")
            expires = check_time(self.expires_at, "expires_at")
            if expires <= issued:
                raise _invalid("expires_at must be after issued_at")
            check_key_bytes(self.signature, "signature", SIGNATURE_BYTES)
        except AdmissionError as error:
            raise _malformed(str(error)) from None
        object.__setattr__(self, "issued_at", issued)
        object.__setattr__(self, "expires_at", expires)

    def __repr__(self) -> str:
        return (
            f"MembershipCertificate(federation={self.federation!r}, peer_id={self.peer_id!r}, "
            f"x25519_public={self.x25519_public.hex()[:16]}…, issued_at={self.issued_at}, "
            f"expires_at={self.expires_at})"
        )

    def _fields(self) -> list[Any]:
        return [
            CERT_VERSION,
            self.federation,
            self.peer_id,
            self.x25519_public,
            float(self.issued_at),
            float(self.expires_at),
        ]

    def signed_bytes(self) -> bytes:
        """The exact bytes the federation key signs: context ‖ canonical msgpack of the fields."""
        return _CERT_CONTEXT + msgpack.packb(self._fields(), use_bin_type=True)

    def to_bytes(self) -> bytes:
        """The transported form: msgpack ``[version, federation, peer_id, x25519, issued,
        expires, signature]``."""
        return msgpack.packb([*self._fields(), self.signature], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> MembershipCertificate:
        """Parse a certificate, treating ``data`` as hostile.

        Raises:
            AdmissionError: reason ``malformed`` for anything but a well-formed version-1
                certificate of at most :data:`MAX_CERT_BYTES` bytes. Never another exception type.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _malformed("must be bytes")
        if len(data) > MAX_CERT_BYTES:
            raise _malformed(f"{len(data)} bytes exceed the {MAX_CERT_BYTES}-byte cap")
        if len(data) == 0:
            raise _malformed("empty")
        try:
            value = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
        except Exception as error:  # msgpack raises several unrelated types on garbage
            raise _malformed(f"not msgpack ({type(error).__name__})") from None
        if not isinstance(value, list) or len(value) != 7:
            raise _malformed("must be a list of 7 fields")
        version = value[0]
        if isinstance(version, bool) or not isinstance(version, int) or version != CERT_VERSION:
            raise _malformed(f"version {version!r} is not supported (expected {CERT_VERSION})")
        federation, peer_id, x25519_public, issued_at, expires_at, signature = value[1:]
        # Canonical form only: times are always float64 on the wire.
        if not isinstance(issued_at, float) or not isinstance(expires_at, float):
            raise _malformed("issued_at and expires_at must be floats")
        return cls(
            federation=federation,
            peer_id=peer_id,
            x25519_public=x25519_public,
            issued_at=issued_at,
            expires_at=expires_at,
            signature=signature,
        )


def issue_certificate(
    federation_key: SigningKey,
    federation: str,
    peer_id: str,
    x25519_public: bytes,
    *,
    now: float,
    valid_for: float,
) -> MembershipCertificate:
    """Sign a certificate admitting ``peer_id`` to ``federation`` for ``valid_for`` seconds.

    Args:
        federation_key: the federation's Ed25519 signing key.
        federation: the federation's name.
        peer_id: the member's libp2p peer id (base58 text).
        x25519_public: the member's 32-byte long-term X25519 public key.
        now: issue time, Unix seconds (``issued_at``).
        valid_for: validity in seconds, > 0 (``expires_at = now + valid_for``).

    Raises:
        AdmissionError: reason ``malformed`` for a bad field or validity.
    """
    now = check_time(now, "now")
    valid_for = check_time(valid_for, "valid_for")
    if valid_for <= 0:
        raise _invalid("valid_for must be positive")
    unsigned = MembershipCertificate(
        federation=federation,
        peer_id=peer_id,
        x25519_public=x25519_public,
        issued_at=now,
        expires_at=now + valid_for,
        signature=bytes(SIGNATURE_BYTES),
    )
    signature = federation_key.sign(unsigned.signed_bytes()).signature
    return MembershipCertificate(
        federation=unsigned.federation,
        peer_id=unsigned.peer_id,
        x25519_public=unsigned.x25519_public,
        issued_at=unsigned.issued_at,
        expires_at=unsigned.expires_at,
        signature=signature,
    )


def verify_certificate(
    cert: MembershipCertificate,
    federation_public: bytes,
    *,
    federation: str,
    peer_id: str,
    now: float,
    leeway: float = 0.0,
    signature_checked: bool = False,
) -> None:
    """Check that ``cert`` admits ``peer_id`` to ``federation`` at time ``now``.

    Checks, in this order: the certificate and key are well formed; the signature is the
    federation key's over the canonical fields; the federation; the peer id; ``issued_at <= now
    + leeway``; ``now - leeway < expires_at``.

    Args:
        cert: the certificate presented by the peer.
        federation_public: the federation's 32-byte Ed25519 public key.
        federation: the federation this node belongs to.
        peer_id: the Noise-authenticated peer id of the peer presenting ``cert``.
        now: the current time, Unix seconds.
        leeway: tolerated clock difference in seconds (default 0).
        signature_checked: the caller verified the signature of these very bytes already
            (a kept result): only the other checks run.

    Raises:
        AdmissionError: with reason ``malformed``, ``bad_signature``, ``wrong_federation``,
            ``wrong_peer``, ``not_yet_valid`` or ``expired``.
    """
    if not isinstance(cert, MembershipCertificate):
        raise _malformed("not a MembershipCertificate")
    check_key_bytes(federation_public, "federation public key", ED25519_KEY_BYTES)
    now = check_time(now, "now")
    leeway = check_time(leeway, "leeway")
    try:
        if not signature_checked:
            VerifyKey(federation_public).verify(cert.signed_bytes(), cert.signature)
    except (BadSignatureError, ValueError):
        raise AdmissionError(
            "bad_signature", "bad signature: certificate is not signed by the federation key"
        ) from None
    if cert.federation != federation:
        raise AdmissionError(
            "wrong_federation",
            f"wrong federation: certificate is for {cert.federation!r}, expected {federation!r}",
        )
    if cert.peer_id != peer_id:
        raise AdmissionError(
            "wrong_peer", f"wrong peer: certificate is for {cert.peer_id}, presented by {peer_id}"
        )
    if now + leeway < cert.issued_at:
        raise AdmissionError(
            "not_yet_valid",
            f"not yet valid: certificate is valid from {cert.issued_at:.0f}, now is {now:.0f}",
        )
    if now - leeway >= cert.expires_at:
        raise AdmissionError(
            "expired", f"expired: certificate expired at {cert.expires_at:.0f}, now is {now:.0f}"
        )
