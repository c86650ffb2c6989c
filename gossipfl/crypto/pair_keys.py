"""A member's X25519 agreements with the other members, each made once.

Every round a contributor agrees a pair seed with each co-neighbour of each aggregator and seals
a share of its self seed to each (:mod:`gossipfl.crypto.secagg`); a member answering an unmask
request opens the shares sealed to it. Each is an X25519 scalar multiplication (two, with the
public key recomputed) over the same long-term certified keys, round after round: dozens a round
at degree 4. :class:`PairKeys` keeps, per peer public key, the checked shared secret and the NaCl
Box, so a round costs only the per-round KDF and the symmetric encryption; its results are
:func:`~gossipfl.crypto.secagg.agree_seed`'s and the share functions' exactly (they stay the
reference, and the tests compare). It holds what the private key it is made from already gives;
at most ``max_peers`` peers are kept (then it starts again).
"""

from __future__ import annotations

from nacl.public import Box, PrivateKey, PublicKey

from gossipfl.crypto import secagg


class PairKeys:
    """One member's X25519 agreements, cached by the peer's public key."""

    def __init__(self, my_private: bytes, max_peers: int = 1024) -> None:
        self._private = bytes(my_private)
        self.public = bytes(PrivateKey(self._private).public_key)
        self.max_peers = max_peers
        self._shared: dict[bytes, bytes] = {}
        self._boxes: dict[bytes, Box] = {}

    def _keep(self, table: dict[bytes, object]) -> None:
        if len(table) >= self.max_peers:
            table.clear()

    def agree_seed(self, their_public: bytes, *, context: bytes) -> bytes:
        """:func:`secagg.agree_seed` with our private key (same checks, same seed)."""
        their_public = bytes(their_public)
        shared = self._shared.get(their_public)
        if shared is None:
            _, shared = secagg.x25519_shared(self._private, their_public)
            self._keep(self._shared)  # type: ignore[arg-type]
            self._shared[their_public] = shared
        return secagg.seed_from_shared(self.public, their_public, shared, context=context)

    def box(self, their_public: bytes) -> Box:
        """The NaCl Box between our key and ``their_public``."""
        their_public = bytes(their_public)
        box = self._boxes.get(their_public)
        if box is None:
            box = Box(PrivateKey(self._private), PublicKey(their_public))
            self._keep(self._boxes)  # type: ignore[arg-type]
            self._boxes[their_public] = box
        return box

    def encrypt_seed_share(self, *, sender: str, recipient: str, context: bytes, share: bytes,
                           recipient_public: bytes) -> bytes:
        """:func:`secagg.encrypt_seed_share` from us to ``recipient``."""
        return secagg.encrypt_seed_share(
            sender=sender, recipient=recipient, context=context, share=share,
            sender_private=self._private, recipient_public=recipient_public,
            box=self.box(recipient_public))

    def decrypt_seed_share(self, ciphertext: bytes, *, sender: str, recipient: str,
                           context: bytes, sender_public: bytes) -> bytes:
        """:func:`secagg.decrypt_seed_share` of a share ``sender`` sealed to us."""
        return secagg.decrypt_seed_share(
            ciphertext, sender=sender, recipient=recipient, context=context,
            recipient_private=self._private, sender_public=sender_public,
            box=self.box(sender_public))


__all__ = ["PairKeys"]
