"""Admission: only members holding a certificate signed by the federation key take part.

The federation key is an Ed25519 key pair kept exactly like a node identity: the 32-byte seed, hex
encoded, in a file of mode 0600 (``federation.key``); a key file that group or others can read is
refused. Its public half is written, hex encoded, to ``federation.pub``, the file nodes are given.
The federation's name is kept beside them in ``federation.name``, so that :func:`admit` needs only
the directory.

A :class:`MembershipCertificate` says, under the federation key's signature: peer ``peer_id`` is a
member of ``federation`` from ``issued_at`` to ``expires_at`` (Unix seconds), and its long-term
encryption key is ``x25519_public``. The signed bytes are the canonical msgpack encoding of a
fixed-order list ``[version, federation, peer_id, x25519_public, issued_at, expires_at]`` (times
always float64), prefixed with a domain-separation context so that no other signature made with
the same key can pass for a certificate. The transported form appends the signature to that list.

Member encryption key: each node derives its long-term X25519 key pair from its Ed25519 identity
seed with HKDF-SHA256 (RFC 5869; salt and info are fixed gossipfl labels), see
:func:`member_x25519_keypair`. No second key file is needed, and the X25519 secret is
cryptographically independent of the signing key (no reliance on the joint security of one scalar
used both for Ed25519 signatures and for X25519; the birational Ed25519→X25519 map would also make
the encryption key a public function of the peer id, which the certificate makes unnecessary: it
carries and signs the X25519 public key).

Every error is an :class:`AdmissionError` whose ``reason`` is a short code (``malformed``,
``bad_signature``, ``wrong_federation``, ``wrong_peer``, ``expired``, ``not_yet_valid``,
``key_file``, ``exists``) and whose message names the broken rule. Secrets (seeds, private keys)
never appear in messages or reprs.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID
from nacl.exceptions import BadSignatureError
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from gossipfl.crypto.identity import Identity, IdentityError, load_or_create_identity

KEY_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
FEDERATION_KEY_FILE = "federation.key"
FEDERATION_PUB_FILE = "federation.pub"
FEDERATION_NAME_FILE = "federation.name"
CERT_SUFFIX = ".cert"

CERT_VERSION = 1
#: Certificates are small; anything longer is refused before parsing.
MAX_CERT_BYTES = 1024
MAX_NAME_CHARS = 128
MAX_PEER_ID_CHARS = 128
X25519_KEY_BYTES = 32
ED25519_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SECONDS_PER_DAY = 86_400.0

_SEED_BYTES = 32
_CERT_CONTEXT = b"gossipfl/membership-certificate/v1\x00"
_HKDF_SALT = b"gossipfl/hkdf-salt/v1"
_HKDF_INFO = b"gossipfl/member-x25519/v1"
# An Ed25519 libp2p peer id is the identity multihash (0x00, length 0x24) of the protobuf
# PublicKey {Type: Ed25519 (0x08 0x01), Data: 32 bytes (0x12 0x20 ...)}.
_ED25519_PEER_ID_PREFIX = bytes.fromhex("002408011220")
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")


class AdmissionError(ValueError):
    """A certificate, key or admission request that breaks a rule.

    Attributes:
        reason: a short, stable code for the broken rule (for counting rejections by reason).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FederationKeyError(AdmissionError):
    """A federation key file (or its directory) that cannot be used as it is."""


def _malformed(detail: str) -> AdmissionError:
    return AdmissionError("malformed", f"malformed certificate: {detail}")


# -- field checks ----------------------------------------------------------------------------------


def _invalid(detail: str) -> AdmissionError:
    return AdmissionError("malformed", detail)


def _check_name(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{what} must be a string")
    if not value:
        raise _invalid(f"{what} must not be empty")
    if len(value) > max_chars:
        raise _invalid(f"{what} is longer than {max_chars} characters")
    if not value.isprintable():
        raise _invalid(f"{what} holds non-printable characters")
    return value


def _check_key_bytes(value: Any, what: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise _invalid(f"{what} must be {size} bytes")
    return value


def _check_time(value: Any, what: str) -> float:
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
            _check_name(self.federation, "federation", MAX_NAME_CHARS)
            _check_name(self.peer_id, "peer id", MAX_PEER_ID_CHARS)
            _check_key_bytes(self.x25519_public, "x25519 public key", X25519_KEY_BYTES)
            if self.x25519_public == bytes(X25519_KEY_BYTES):
                raise _invalid("x25519 public key is all zeros")
            issued = _check_time(self.issued_at, "issued_at")
            expires = _check_time(self.expires_at, "expires_at")
            if expires <= issued:
                raise _invalid("expires_at must be after issued_at")
            _check_key_bytes(self.signature, "signature", SIGNATURE_BYTES)
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
    now = _check_time(now, "now")
    valid_for = _check_time(valid_for, "valid_for")
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

    Raises:
        AdmissionError: with reason ``malformed``, ``bad_signature``, ``wrong_federation``,
            ``wrong_peer``, ``not_yet_valid`` or ``expired``.
    """
    if not isinstance(cert, MembershipCertificate):
        raise _malformed("not a MembershipCertificate")
    _check_key_bytes(federation_public, "federation public key", ED25519_KEY_BYTES)
    now = _check_time(now, "now")
    leeway = _check_time(leeway, "leeway")
    try:
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


# -- member keys -----------------------------------------------------------------------------------


def _hkdf_sha256(key_material: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869), extract then expand."""
    prk = hmac.new(salt, key_material, hashlib.sha256).digest()
    output = b""
    block = b""
    counter = 1
    while len(output) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        output += block
        counter += 1
    return output[:length]


def member_x25519_keypair(identity_seed: bytes) -> tuple[PrivateKey, bytes]:
    """The member's long-term X25519 key pair, derived from its Ed25519 identity seed.

    ``private = HKDF-SHA256(ikm=seed, salt="gossipfl/hkdf-salt/v1",
    info="gossipfl/member-x25519/v1", L=32)`` (X25519 clamps the scalar itself). Deterministic,
    so a node recomputes it from its key file on every start; independent of the signing key.

    Args:
        identity_seed: the 32-byte Ed25519 seed held in the node's key file.

    Returns:
        ``(private_key, public_key_bytes)``.
    """
    if not isinstance(identity_seed, bytes) or len(identity_seed) != _SEED_BYTES:
        raise AdmissionError("key_file", f"identity seed must be {_SEED_BYTES} bytes")
    secret = _hkdf_sha256(identity_seed, salt=_HKDF_SALT, info=_HKDF_INFO, length=32)
    private = PrivateKey(secret)
    return private, bytes(private.public_key)


def identity_signing_key(identity: Identity) -> SigningKey:
    """The PyNaCl signing key of a node identity (to sign envelopes with)."""
    seed = identity.key_pair.private_key.to_bytes()
    signing_key = SigningKey(seed)
    if bytes(signing_key.verify_key) != identity.key_pair.public_key.to_bytes():
        raise AdmissionError("key_file", "identity is not an Ed25519 seed key")
    return signing_key


def identity_x25519_keypair(identity: Identity) -> tuple[PrivateKey, bytes]:
    """:func:`member_x25519_keypair` of a loaded node identity."""
    return member_x25519_keypair(bytes(identity_signing_key(identity)))


def verify_key_from_peer_id(peer_id: str) -> VerifyKey:
    """The Ed25519 verify key inlined in an Ed25519 libp2p peer id (``12D3KooW…``).

    Raises:
        AdmissionError: reason ``wrong_peer`` when ``peer_id`` is not an Ed25519 peer id.
    """
    if (
        not isinstance(peer_id, str)
        or len(peer_id) > MAX_PEER_ID_CHARS
        or not _BASE58.fullmatch(peer_id)
    ):
        raise AdmissionError("wrong_peer", "peer id is not a base58 libp2p peer id")
    try:
        raw = ID.from_base58(peer_id).to_bytes()
    except Exception:  # base58 raises ValueError; be strict about anything else too
        raise AdmissionError("wrong_peer", f"peer id {peer_id} is not valid base58") from None
    if len(raw) != len(_ED25519_PEER_ID_PREFIX) + 32 or not raw.startswith(
        _ED25519_PEER_ID_PREFIX
    ):
        raise AdmissionError("wrong_peer", f"peer id {peer_id} is not an Ed25519 libp2p peer id")
    return VerifyKey(raw[len(_ED25519_PEER_ID_PREFIX) :])


def peer_id_of(verify_key: VerifyKey) -> str:
    """The libp2p peer id (base58) of an Ed25519 verify key."""
    return ID.from_pubkey(Ed25519PublicKey(verify_key)).to_base58()


# -- key files -------------------------------------------------------------------------------------


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` and write ``data`` durably."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FederationKeyError(
            "exists", f"{path} already exists; refusing to overwrite"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def create_federation_key(path: str | os.PathLike[str]) -> SigningKey:
    """Create a fresh federation key in ``path`` (mode 0600, hex seed); refuse an existing file.

    Raises:
        FederationKeyError: reason ``exists`` when ``path`` exists.
    """
    key_path = Path(path)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    signing_key = SigningKey.generate()
    _write_new_file(key_path, bytes(signing_key).hex().encode("ascii") + b"\n", KEY_FILE_MODE)
    return signing_key


def load_federation_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load the federation key in ``path``.

    Raises:
        FederationKeyError: reason ``key_file`` when the file is missing, readable by group or
            others, or does not hold a hex 32-byte seed.
    """
    key_path = Path(path)
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
    except FileNotFoundError:
        raise FederationKeyError(
            "key_file", f"federation key file {key_path} does not exist"
        ) from None
    if mode & 0o077:
        raise FederationKeyError(
            "key_file",
            f"federation key file {key_path} has mode {mode:o}; it must be readable by its owner "
            f"only (chmod 600 {key_path})",
        )
    try:
        seed = bytes.fromhex(key_path.read_bytes()[:256].decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise FederationKeyError(
            "key_file", f"federation key file {key_path} does not hold a hex Ed25519 seed"
        ) from None
    if len(seed) != _SEED_BYTES:
        raise FederationKeyError(
            "key_file",
            f"federation key file {key_path} holds {len(seed)} bytes, expected {_SEED_BYTES}",
        )
    return SigningKey(seed)


def load_or_create_federation_key(path: str | os.PathLike[str]) -> tuple[SigningKey, bool]:
    """Load the federation key in ``path``, or create it; returns the key and whether it was
    created now."""
    try:
        return create_federation_key(path), True
    except FederationKeyError as error:
        if error.reason != "exists":
            raise
    return load_federation_key(path), False


def load_federation_public(path: str | os.PathLike[str]) -> bytes:
    """Load a federation public key file (hex, 32 bytes).

    Raises:
        FederationKeyError: reason ``key_file`` when missing or malformed.
    """
    pub_path = Path(path)
    try:
        text = pub_path.read_bytes()[:256].decode("ascii").strip()
        public = bytes.fromhex(text)
    except FileNotFoundError:
        raise FederationKeyError(
            "key_file", f"federation public key file {pub_path} does not exist"
        ) from None
    except ValueError:
        raise FederationKeyError(
            "key_file", f"federation public key file {pub_path} does not hold hex"
        ) from None
    if len(public) != ED25519_KEY_BYTES:
        raise FederationKeyError(
            "key_file",
            f"federation public key file {pub_path} holds {len(public)} bytes, "
            f"expected {ED25519_KEY_BYTES}",
        )
    return public


def load_federation_name(directory: str | os.PathLike[str]) -> str:
    """The federation name kept in ``directory/federation.name``."""
    name_path = Path(directory) / FEDERATION_NAME_FILE
    try:
        name = name_path.read_bytes()[: 4 * MAX_NAME_CHARS + 2].decode("utf-8").strip("\n")
    except FileNotFoundError:
        raise FederationKeyError(
            "key_file", f"federation name file {name_path} does not exist"
        ) from None
    except ValueError:
        raise FederationKeyError(
            "key_file", f"federation name file {name_path} is not UTF-8"
        ) from None
    try:
        return _check_name(name, "federation name", MAX_NAME_CHARS)
    except AdmissionError as error:
        raise FederationKeyError("key_file", f"{name_path}: {error}") from None


def load_certificate(path: str | os.PathLike[str]) -> MembershipCertificate:
    """Read and parse a ``.cert`` file (reads at most :data:`MAX_CERT_BYTES` + 1 bytes)."""
    cert_path = Path(path)
    try:
        with cert_path.open("rb") as handle:
            data = handle.read(MAX_CERT_BYTES + 1)
    except FileNotFoundError:
        raise AdmissionError("malformed", f"certificate file {cert_path} does not exist") from None
    return MembershipCertificate.from_bytes(data)


# -- federation administration (the CLI calls these) ----------------------------------------------


def init_federation(directory: str | os.PathLike[str], name: str) -> Path:
    """Create a federation in ``directory``: ``federation.key`` (0600), ``federation.pub`` (0644,
    hex public key, the file nodes are given) and ``federation.name``.

    Returns:
        The path of ``federation.pub``.

    Raises:
        FederationKeyError: reason ``exists`` when any of the three files already exists (nothing
            is overwritten or created then).
        AdmissionError: reason ``malformed`` for an empty, over-long or non-printable name.
    """
    _check_name(name, "federation name", MAX_NAME_CHARS)
    root = Path(directory)
    paths = [root / FEDERATION_KEY_FILE, root / FEDERATION_PUB_FILE, root / FEDERATION_NAME_FILE]
    for path in paths:
        if path.exists():
            raise FederationKeyError("exists", f"{path} already exists; refusing to overwrite")
    signing_key = create_federation_key(paths[0])
    public_hex = bytes(signing_key.verify_key).hex()
    _write_new_file(paths[1], public_hex.encode("ascii") + b"\n", PUBLIC_FILE_MODE)
    _write_new_file(paths[2], name.encode("utf-8") + b"\n", PUBLIC_FILE_MODE)
    return paths[1]


def _write_public_atomically(path: Path, data: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), PUBLIC_FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def admit(
    directory: str | os.PathLike[str],
    peer_id: str,
    x25519_public_hex: str,
    *,
    valid_days: float,
    now: float,
) -> Path:
    """Issue a certificate for ``peer_id`` with the federation key in ``directory``.

    Writes ``directory/<peer_id>.cert`` atomically (a renewal replaces the earlier certificate).

    Args:
        directory: a directory made by :func:`init_federation`.
        peer_id: the member's Ed25519 libp2p peer id.
        x25519_public_hex: the member's X25519 public key, 64 hex characters.
        valid_days: validity in days, > 0.
        now: issue time, Unix seconds.

    Returns:
        The path of the certificate file.

    Raises:
        AdmissionError: bad peer id or key (``wrong_peer``, ``malformed``); FederationKeyError for
            an unusable federation directory, or a key that does not match ``federation.pub``.
    """
    root = Path(directory)
    verify_key_from_peer_id(peer_id)  # also guarantees a safe file name (base58 only)
    try:
        x25519_public = bytes.fromhex(x25519_public_hex)
    except (TypeError, ValueError):
        raise _invalid("x25519 public key must be hex") from None
    valid_days = _check_time(valid_days, "valid_days")
    if valid_days <= 0:
        raise _invalid("valid_days must be positive")
    signing_key = load_federation_key(root / FEDERATION_KEY_FILE)
    name = load_federation_name(root)
    if load_federation_public(root / FEDERATION_PUB_FILE) != bytes(signing_key.verify_key):
        raise FederationKeyError(
            "key_file", f"{root / FEDERATION_PUB_FILE} does not match {FEDERATION_KEY_FILE}"
        )
    cert = issue_certificate(
        signing_key, name, peer_id, x25519_public, now=now, valid_for=valid_days * SECONDS_PER_DAY
    )
    cert_path = root / f"{peer_id}{CERT_SUFFIX}"
    _write_public_atomically(cert_path, cert.to_bytes())
    return cert_path


def admit_identity(
    directory: str | os.PathLike[str],
    key_file: str | os.PathLike[str],
    *,
    valid_days: float,
    now: float,
) -> Path:
    """:func:`admit` the node whose identity file is ``key_file``.

    The peer id and the X25519 key (:func:`member_x25519_keypair` of the seed) both come from the
    identity file, which must exist, be mode 0600 and hold a valid seed.

    Returns:
        The path of the certificate file.
    """
    key_path = Path(key_file)
    if not key_path.is_file():
        raise AdmissionError("key_file", f"identity file {key_path} does not exist")
    try:
        identity, _ = load_or_create_identity(key_path)
    except IdentityError as error:
        raise AdmissionError("key_file", str(error)) from None
    _, x25519_public = identity_x25519_keypair(identity)
    return admit(
        directory,
        identity.peer_id.to_base58(),
        x25519_public.hex(),
        valid_days=valid_days,
        now=now,
    )
