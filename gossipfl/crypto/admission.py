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

Admission is written in four modules; this one holds the federation administration the CLI
calls (:func:`init_federation`, :func:`admit`, :func:`admit_identity`) and re-exports every name
of the other three, so that ``gossipfl.crypto.admission`` stays the one import path:
:mod:`gossipfl.crypto.certificates` (the error type, field checks, the certificate: issuing and
verifying), :mod:`gossipfl.crypto.member_keys` (X25519 derivation, identity signing key, peer id
↔ verify key) and :mod:`gossipfl.crypto.federation_files` (key, name and certificate files).
"""

from __future__ import annotations

import os
from pathlib import Path

from gossipfl.crypto.certificates import (
    CERT_VERSION,
    ED25519_KEY_BYTES,
    MAX_CERT_BYTES,
    MAX_NAME_CHARS,
    MAX_PEER_ID_CHARS,
    SIGNATURE_BYTES,
    X25519_KEY_BYTES,
    AdmissionError,
    MembershipCertificate,
    check_key_bytes,
    check_name,
    check_time,
    issue_certificate,
    verify_certificate,
)
from gossipfl.crypto.federation_files import (
    CERT_SUFFIX,
    FEDERATION_KEY_FILE,
    FEDERATION_NAME_FILE,
    FEDERATION_PUB_FILE,
    KEY_FILE_MODE,
    PUBLIC_FILE_MODE,
    FederationKeyError,
    create_federation_key,
    load_certificate,
    load_federation_key,
    load_federation_name,
    load_federation_public,
    load_or_create_federation_key,
    write_new_file,
    write_public_atomically,
)
from gossipfl.crypto.identity import IdentityError, load_or_create_identity
from gossipfl.crypto.member_keys import (
    SEED_BYTES,
    identity_signing_key,
    identity_x25519_keypair,
    member_x25519_keypair,
    peer_id_of,
    verify_key_from_peer_id,
)

__all__ = (
    "CERT_SUFFIX",
    "CERT_VERSION",
    "ED25519_KEY_BYTES",
    "FEDERATION_KEY_FILE",
    "FEDERATION_NAME_FILE",
    "FEDERATION_PUB_FILE",
    "KEY_FILE_MODE",
    "MAX_CERT_BYTES",
    "MAX_NAME_CHARS",
    "MAX_PEER_ID_CHARS",
    "PUBLIC_FILE_MODE",
    "SECONDS_PER_DAY",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "X25519_KEY_BYTES",
    "AdmissionError",
    "FederationKeyError",
    "MembershipCertificate",
    "admit",
    "admit_identity",
    "check_key_bytes",
    "check_name",
    "check_time",
    "create_federation_key",
    "identity_signing_key",
    "identity_x25519_keypair",
    "init_federation",
    "issue_certificate",
    "load_certificate",
    "load_federation_key",
    "load_federation_name",
    "load_federation_public",
    "load_or_create_federation_key",
    "member_x25519_keypair",
    "peer_id_of",
    "verify_certificate",
    "verify_key_from_peer_id",
    "write_new_file",
    "write_public_atomically",
)

SECONDS_PER_DAY = 86_400.0


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
    check_name(name, "federation name", MAX_NAME_CHARS)
    root = Path(directory)
    paths = [root / FEDERATION_KEY_FILE, root / FEDERATION_PUB_FILE, root / FEDERATION_NAME_FILE]
    for path in paths:
        if path.exists():
            raise FederationKeyError("exists", f"{path} already exists; refusing to overwrite")
    signing_key = create_federation_key(paths[0])
    public_hex = bytes(signing_key.verify_key).hex()
    write_new_file(paths[1], public_hex.encode("ascii") + b"\n", PUBLIC_FILE_MODE)
    write_new_file(paths[2], name.encode("utf-8") + b"\n", PUBLIC_FILE_MODE)
    return paths[1]


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
        raise AdmissionError("malformed", "x25519 public key must be hex") from None
    valid_days = check_time(valid_days, "valid_days")
    if valid_days <= 0:
        raise AdmissionError("malformed", "valid_days must be positive")
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
    write_public_atomically(cert_path, cert.to_bytes())
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
