"""Envelope keys: agreed once, used for a few envelopes to the same receiver.

An envelope's AES-256-GCM key is HKDF-SHA256 of an X25519 agreement between an ephemeral key
of the sender's and the receiver's certified X25519 key (:mod:`gossipfl.crypto.envelope`). The
agreement is the costly part of sealing and opening a small envelope (two X25519 operations to
seal, one to open, against one GCM pass and one Ed25519 signature or check): at 1,000 simulated
members and 8,000 envelopes a round, it was about half of the crypto of a round.

* :class:`SealKeys` (the sender's): one ephemeral key per receiver key, used for at most
  ``uses`` envelopes (``SESSION_ENVELOPES``), then a fresh one. Only the derived AES key is
  kept, never the ephemeral secret. Every envelope draws its own random 96-bit GCM nonce, so a
  key used ``uses`` times repeats a nonce with probability about ``uses² / 2⁹⁷``.
* :class:`OpenKeys` (the receiver's): a bounded memo of the key each ephemeral public key
  gives under this node's X25519 key. The key is a pure function of the two, so the memo
  changes nothing but the cost: an envelope under an unknown ephemeral key costs one agreement,
  as every envelope did before.

Who this stops, and what it gives up: a sender that reuses an ephemeral key harms only its own
envelopes' secrecy (every envelope is still signed and bound to its round, sender and receiver,
and replays are refused by round). A sender that sends each envelope under a fresh ephemeral
key (or floods made-up ones) costs the receiver one agreement each, as before, and evicts
older memo entries: the memo holds at most ``capacity`` keys. A copy of a sender's memory
(not its long-term keys, which never enter an envelope's key) opens the envelopes of its
current sessions: at most ``uses`` envelopes to each receiver; one of the receiver's memory
opens what its long-term X25519 key opens anyway.
"""

from __future__ import annotations

from collections import OrderedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult
from nacl.public import PrivateKey

#: Envelopes one ephemeral key seals to one receiver at most.
SESSION_ENVELOPES = 32
#: Keys a :class:`SealKeys` or :class:`OpenKeys` holds at most (the least recently used go).
MAX_SESSIONS = 4096
KDF_INFO = b"gossipfl/envelope/v4 aes-256-gcm"


def derive_key(secret: bytes, other_public: bytes, ephemeral_public: bytes,
               receiver_public: bytes) -> bytes:
    """An envelope key: HKDF-SHA256 of the X25519 shared secret of ``secret`` and
    ``other_public``, salted with the ephemeral and the receiver's public keys. Raises
    ValueError for a low-order public key (an all-zero shared secret)."""
    try:
        shared = crypto_scalarmult(secret, other_public)
    except Exception:  # libsodium refuses a result of all zeros (low-order points)
        raise ValueError("X25519 key is not usable") from None
    return HKDF(hashes.SHA256(), 32, ephemeral_public + receiver_public, KDF_INFO).derive(shared)


def fresh_key(receiver_public: bytes) -> tuple[bytes, bytes]:
    """A new ephemeral key's public half and the envelope key it agrees with
    ``receiver_public`` (the ephemeral secret is dropped here)."""
    ephemeral = PrivateKey.generate()
    ephemeral_public = bytes(ephemeral.public_key)
    return ephemeral_public, derive_key(bytes(ephemeral), receiver_public, ephemeral_public,
                                        receiver_public)


def _check(uses: int, capacity: int) -> None:
    if isinstance(uses, bool) or not isinstance(uses, int) or uses < 1:
        raise ValueError(f"uses must be a positive integer, not {uses!r}")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"capacity must be a positive integer, not {capacity!r}")


class SealKeys:
    """A sender's envelope keys, one per receiver key, each for ``uses`` envelopes.

    >>> keys = SealKeys(uses=2)
    >>> receiver = bytes(PrivateKey.generate().public_key)
    >>> first, second, third = (keys.key_for(receiver) for _ in range(3))
    >>> first == second, second == third
    (True, False)
    """

    def __init__(self, uses: int = SESSION_ENVELOPES, capacity: int = MAX_SESSIONS) -> None:
        _check(uses, capacity)
        self.uses, self.capacity = uses, capacity
        self._held: OrderedDict[bytes, list] = OrderedDict()  # receiver → [eph, key, left]
        self.agreed = 0  # ephemeral keys made (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._held)

    def key_for(self, receiver_public: bytes) -> tuple[bytes, bytes]:
        """(ephemeral public key, envelope key) for the next envelope to ``receiver_public``.
        Raises ValueError for an unusable receiver key."""
        held = self._held.get(receiver_public)
        if held is None or held[2] <= 0:
            held = [*fresh_key(receiver_public), self.uses]
            self.agreed += 1
            self._held[receiver_public] = held
            while len(self._held) > self.capacity:
                self._held.popitem(last=False)
        self._held.move_to_end(receiver_public)
        held[2] -= 1
        return held[0], held[1]


class OpenKeys:
    """A receiver's memo: the envelope key of each ephemeral public key met lately (at most
    ``capacity``), under the receiver's X25519 key.

    >>> receiver = PrivateKey.generate()
    >>> ephemeral, key = fresh_key(bytes(receiver.public_key))
    >>> keys = OpenKeys()
    >>> keys.key_for(receiver, ephemeral) == key, keys.key_for(receiver, ephemeral) == key
    (True, True)
    >>> keys.agreed
    1
    """

    def __init__(self, capacity: int = MAX_SESSIONS) -> None:
        _check(1, capacity)
        self.capacity = capacity
        self._held: OrderedDict[bytes, bytes] = OrderedDict()
        self.agreed = 0

    def __len__(self) -> int:
        return len(self._held)

    def key_for(self, private: PrivateKey, ephemeral_public: bytes) -> bytes:
        """The envelope key ``ephemeral_public`` agrees with ``private``; ValueError for a
        low-order ephemeral key (never kept)."""
        receiver_public = bytes(private.public_key)
        name = ephemeral_public + receiver_public
        key = self._held.get(name)
        if key is None:
            key = derive_key(bytes(private), ephemeral_public, ephemeral_public, receiver_public)
            self.agreed += 1
            self._held[name] = key
            while len(self._held) > self.capacity:
                self._held.popitem(last=False)
        else:
            self._held.move_to_end(name)
        return key


__all__ = ["KDF_INFO", "MAX_SESSIONS", "SESSION_ENVELOPES", "OpenKeys", "SealKeys",
           "derive_key", "fresh_key"]
