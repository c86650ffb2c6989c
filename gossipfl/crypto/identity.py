"""Node identity: an Ed25519 key kept in a 0600 file, created on first start and reused after.

The file holds the 32-byte Ed25519 seed, hex encoded, and nothing else. The seed is a secret: it is
never logged, and a key file that other users can read is refused rather than silently used.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

KEY_FILE_MODE = 0o600
_SEED_BYTES = 32


class IdentityError(RuntimeError):
    """A key file that cannot be used as it is."""


@dataclass(frozen=True)
class Identity:
    """A node's long-term libp2p identity."""

    key_pair: KeyPair
    peer_id: ID

    def __repr__(self) -> str:  # never print the key
        return f"Identity(peer_id={self.peer_id})"


def _key_pair_from_seed(seed: bytes) -> KeyPair:
    return create_new_key_pair(seed)


def _fresh_seed() -> bytes:
    for _ in range(100):
        seed = secrets.token_bytes(_SEED_BYTES)
        try:
            _key_pair_from_seed(seed)
        except ValueError:
            continue
        return seed
    raise IdentityError("could not generate a valid Ed25519 key")


def load_or_create_identity(path: str | os.PathLike[str]) -> tuple[Identity, bool]:
    """Load the identity in ``path``, or create it there (mode 0600) if the file does not exist.

    Returns the identity and whether it was created now. Raises :class:`IdentityError` when the
    file is readable by group or others, or does not hold a valid key.
    """
    key_path = Path(path)
    created = False
    if not key_path.exists():
        key_path.parent.mkdir(parents=True, exist_ok=True)
        seed = _fresh_seed()
        try:
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        except FileExistsError:  # another process won the race: use its key
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(seed.hex() + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            created = True
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise IdentityError(
            f"key file {key_path} has mode {mode:o}; it must be readable by its owner only "
            f"(chmod 600 {key_path})"
        )
    try:
        seed = bytes.fromhex(key_path.read_bytes().decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise IdentityError(f"key file {key_path} does not hold a hex Ed25519 seed") from None
    if len(seed) != _SEED_BYTES:
        raise IdentityError(f"key file {key_path} holds {len(seed)} bytes, expected {_SEED_BYTES}")
    try:
        key_pair = _key_pair_from_seed(seed)
    except ValueError as error:
        raise IdentityError(f"key file {key_path} holds an invalid key: {error}") from None
    return Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key)), created
