"""Member keys: a member's long-term X25519 key pair derived from its Ed25519 identity seed
(HKDF-SHA256), its identity's signing key, and peer id ↔ Ed25519 verify key.

Part of admission, which :mod:`gossipfl.crypto.admission` describes (why the X25519 key is
derived this way) and re-exports: import from there.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re

from libp2p.crypto.ed25519 import Ed25519PublicKey
from libp2p.peer.id import ID
from nacl.public import PrivateKey
from nacl.signing import SigningKey, VerifyKey

from gossipfl.crypto.certificates import MAX_PEER_ID_CHARS, AdmissionError
from gossipfl.crypto.identity import Identity

#: An Ed25519 identity seed (the content of a node's or the federation's key file).
SEED_BYTES = 32
_HKDF_SALT = b"gossipfl/hkdf-salt/v1"
_HKDF_INFO = b"gossipfl/member-x25519/v1"
# An Ed25519 libp2p peer id is the identity multihash (0x00, length 0x24) of the protobuf
# PublicKey {Type: Ed25519 (0x08 0x01), Data: 32 bytes (0x12 0x20 ...)}.
_ED25519_PEER_ID_PREFIX = bytes.fromhex("002408011220")
_BASE58 = re.compile(r"[1-9A-HJ-NP-Za-km-z]+")


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
    if not isinstance(identity_seed, bytes) or len(identity_seed) != SEED_BYTES:
        raise AdmissionError("key_file", f"identity seed must be {SEED_BYTES} bytes")
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


@functools.lru_cache(maxsize=1024)  # a pure function; each signature check calls it
def verify_key_from_peer_id(peer_id: str) -> VerifyKey:
    """The Ed25519 verify key inlined in an Ed25519 libp2p peer id (``12D3KooW…``); the
    last 1,024 ids' keys are kept (an id that fails is parsed each time).

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
