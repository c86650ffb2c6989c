"""Secure aggregation over one node's neighbourhood: pure building blocks (Bonawitz et al.,
CCS 2017, adapted to gossip: node *i* sums its neighbours' weighted vectors and must learn only
``Σ_{j∈U} v_j``). No I/O, no global state; keys and randomness are arguments.

* **Quantisation** (:func:`quantise`, :func:`dequantise_sum`, :func:`check_no_wrap`): each
  input is clipped to ``[-clip, clip]`` and mapped to ``q = round(clip(v) · scale) + offset``
  in ``Z_{2^32}``, ``offset = ceil(clip · scale)``; ``count`` inputs cannot wrap while
  ``count · 2 · offset <= 2**32 − 1`` (:func:`max_contributors`). Defaults as in Flower's
  SecAgg+: ``clip = 8``, ``scale = 2**18`` (up to 1023 inputs, resolution ``2**-18``).
  Rounding is stochastic (unbiased, error < ``1/scale``) with an ``rng``, else to nearest.
* **Key agreement** (:func:`agree_seed`): X25519, then HKDF-SHA256 over the shared secret,
  both public keys in sorted order and a context (federation ‖ aggregator ‖ round,
  :func:`seed_context`), so pair seeds are fresh per round and neighbourhood.
* **PRG** (:func:`prg_mask`): the ChaCha20 keystream under the 32-byte seed (zero nonce), read
  as little-endian uint32 (or uint8/uint16 for a narrower ring): a stream cipher, not numpy's
  PCG64/Philox whose state leaks.
* **Double masking** (:func:`mask_input`, :func:`unmask_sum`):
  ``y_j = q_j + PRG(b_j) + Σ_{k≠j} s_jk · PRG(p_jk) mod 2**w``, ``s_jk = +1`` if
  ``id_j < id_k`` else ``-1``, so pair masks cancel in the sum. The ring ``Z_{2^w}`` is the
  inputs' dtype (uint32 here, uint8/uint16 for :mod:`gossipfl.crypto.secagg_sparse`'s
  deltas), or ``Z_9`` (``modulus``) for its one-level ring.
* **Shares** (:func:`encrypt_seed_share`, :func:`decrypt_seed_share`, :mod:`.shamir`): each
  member Shamir-splits its self seed ``b_j`` and seals each share to its holder (NaCl Box).

The protocol that drives these blocks is :mod:`gossipfl.node.secure_round` (one implementation:
the node, the privacy audit and the cost benchmark all run it)."""

from __future__ import annotations

import hashlib
import math
import operator
import os
from collections.abc import Callable, Mapping

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.secret import SecretBox
from numpy.typing import NDArray

from gossipfl.crypto import shamir

MODULUS = 2**32
"""Masked values live in Z_{2^32}, as uint32 with wrap-around arithmetic."""

DEFAULT_CLIP = 8.0
"""Inputs are clipped to [-DEFAULT_CLIP, DEFAULT_CLIP] before quantisation."""

DEFAULT_SCALE = 2**18
"""Quantisation levels per unit: 2**22 levels over [-8, 8], as Flower's SecAgg+ default."""

MIN_CONTRIBUTORS = 3
"""Fewer contributors than this are refused: with two, each learns the other's input."""

SEED_BYTES = 32
KEY_BYTES = 32
_NONCE = bytes(16)  # ChaCha20 counter ‖ nonce; each seed keys exactly one stream
_KDF_LABEL = b"gossipfl/secagg/pair-seed/v1"
_SHARES_LABEL = b"gossipfl/secagg/shares/v4"
SHARE_NONCE_BYTES = 8  # a sealed share's nonce (encrypt_seed_share)


# --------------------------------------------------------------------------- checks


def check_contributors(count: int) -> None:
    """Refuse (ValueError) an aggregation over fewer than :data:`MIN_CONTRIBUTORS`."""
    if operator.index(count) < MIN_CONTRIBUTORS:
        raise ValueError(
            f"secure aggregation needs at least MIN_CONTRIBUTORS={MIN_CONTRIBUTORS} "
            f"contributors, got {count}"
        )


def _check_clip_scale(clip: float, scale: int) -> int:
    """Validate clip and scale; return the quantisation offset."""
    if not (isinstance(clip, int | float | np.floating) and math.isfinite(clip) and clip > 0):
        raise ValueError(f"clip must be a finite number > 0, got {clip!r}")
    if isinstance(scale, bool) or not isinstance(scale, int | np.integer) or scale < 1:
        raise ValueError(f"scale must be an int >= 1 (levels per unit), got {scale!r}")
    offset = math.ceil(float(clip) * int(scale))
    if 2 * offset > MODULUS - 1:
        raise ValueError(
            f"2 * ceil(clip * scale) = {2 * offset} must be below 2**32 for one input to fit"
        )
    return offset


def quantisation_offset(clip: float, scale: int) -> int:
    """The offset ``ceil(clip * scale)`` added to each quantised coordinate."""
    return _check_clip_scale(clip, scale)


def max_contributors(clip: float, scale: int) -> int:
    """The most inputs whose quantised sum cannot wrap modulo 2**32 (1023 by default)."""
    offset = _check_clip_scale(clip, scale)
    return (MODULUS - 1) // (2 * offset)


def check_no_wrap(count: int, clip: float, scale: int) -> None:
    """Refuse a number of inputs whose quantised sum could wrap modulo 2**32.

    Raises:
        ValueError: if ``count < 1`` or ``count * 2 * ceil(clip * scale) > 2**32 - 1``.
    """
    count = operator.index(count)
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    limit = max_contributors(clip, scale)
    if count > limit:
        raise ValueError(
            f"the sum of {count} inputs could wrap modulo 2**32: with clip={clip} and "
            f"scale={scale} at most {limit} inputs fit (lower clip or scale)"
        )


def _check_bytes(name: str, value: object, length: int) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")
    return bytes(value)


RING_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.uint32))
"""The rings masks work in, by the inputs' dtype: Z_{2^8}, Z_{2^16}, Z_{2^32}."""


def _check_vector(name: str, value: object) -> NDArray[np.unsignedinteger]:
    if not isinstance(value, np.ndarray) or value.dtype not in RING_DTYPES or value.ndim != 1:
        raise ValueError(f"{name} must be a 1-D numpy uint8, uint16 or uint32 array")
    return value


# --------------------------------------------------------------------------- quantisation


def quantise(v: NDArray[np.floating], clip: float, scale: int, *,
             rng: np.random.Generator | None = None) -> NDArray[np.uint32]:
    """Clip ``v`` to ``[-clip, clip]`` and map it to ``Z_{2^32}``: each coordinate becomes
    ``round(clip(x) * scale) + ceil(clip * scale)``, an integer in ``[0, 2 * ceil(clip *
    scale)]``, in a uint32 array of ``v``'s shape. ``v`` is a finite real array, ``clip > 0``,
    ``scale >= 1``; with ``rng``, stochastic rounding ``floor(x + u)``, ``u ~ U[0, 1)``, else
    round half to even.

    Raises:
        ValueError: if ``v`` is not a finite real array, or clip/scale are invalid.
    """
    offset = _check_clip_scale(clip, scale)
    array = np.asarray(v)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"v must be a real array, got dtype {array.dtype}")
    x = array.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("v must be finite (no NaN or inf)")
    np.clip(x, -clip, clip, out=x)
    x *= scale
    if rng is None:
        np.rint(x, out=x)
    else:
        x += rng.random(x.shape)
        np.floor(x, out=x)
        # x + u can round up to the next integer in float64; keep within the range.
        np.clip(x, -offset, offset, out=x)
    x += offset
    return x.astype(np.uint32)


def dequantise_sum(s: NDArray[np.uint32], count: int, clip: float,
                   scale: int) -> NDArray[np.float32]:
    """Recover the float sum of ``count`` quantised inputs from ``s``, the sum modulo 2**32 of
    ``count`` outputs of :func:`quantise` with the same ``clip`` and ``scale``.

    Returns:
        ``(s - count * offset) / scale`` as float32. Against the sum of the clipped inputs, the
        error per coordinate is below ``count / scale`` (stochastic rounding) or at most
        ``count / (2 * scale)`` (round to nearest), plus the float32 rounding of the result.

    Raises:
        ValueError: if ``count`` inputs could wrap (:func:`check_no_wrap`), ``s`` is not a
            uint32 array, or a coordinate exceeds ``count * 2 * offset`` (so ``s`` is not such a
            sum: wrong count, wrong masks or bad inputs).
    """
    check_no_wrap(count, clip, scale)
    offset = quantisation_offset(clip, scale)
    if not isinstance(s, np.ndarray) or s.dtype != np.uint32:
        raise ValueError("s must be a numpy uint32 array")
    if s.size and int(s.max()) > count * 2 * offset:
        raise ValueError(
            f"s is not the sum of {count} quantised inputs (a coordinate exceeds "
            f"count * 2 * offset = {count * 2 * offset}): wrong count, masks or inputs"
        )
    total = s.astype(np.int64) - count * offset
    return (total / scale).astype(np.float32)


# --------------------------------------------------------------------------- keys and PRG


def _length_prefixed(*parts: bytes) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def seed_context(federation: str, aggregator_id: str, round_number: int) -> bytes:
    """The ``context`` for :func:`agree_seed`: federation ‖ aggregator id ‖ round, unambiguous
    (ValueError: a name empty or the round negative)."""
    if not federation or not aggregator_id:
        raise ValueError("federation and aggregator_id must be non-empty")
    round_number = operator.index(round_number)
    if not 0 <= round_number < 2**64:
        raise ValueError(f"round_number must be in 0..2**64-1, got {round_number}")
    return _length_prefixed(
        federation.encode(), aggregator_id.encode(), round_number.to_bytes(8, "big")
    )


def agree_seed(my_private: bytes, their_public: bytes, *, context: bytes) -> bytes:
    """The 32-byte pair seed shared by two members: X25519, then HKDF-SHA256.

    ``HKDF(salt=None, info=label ‖ min(pk_a, pk_b) ‖ max(pk_a, pk_b) ‖ context)`` over the X25519
    shared secret, so both sides get the same seed, and a different one for each context.
    ``my_private``, ``their_public``: 32-byte X25519 keys; ``context``: federation ‖ aggregator
    id ‖ round (see :func:`seed_context`), non-empty. A member that agrees with the same peers
    round after round keeps the X25519 step (:class:`gossipfl.crypto.pair_keys.PairKeys`).

    Raises:
        ValueError: if a key is not 32 bytes, the context is empty, both keys are the same
            member's, or ``their_public`` is a low-order point (all-zero shared secret).
    """
    my_public, shared = x25519_shared(my_private, their_public)
    return seed_from_shared(my_public, their_public, shared, context=context)


def x25519_shared(my_private: bytes, their_public: bytes) -> tuple[bytes, bytes]:
    """(my public key, the X25519 shared secret), checked as :func:`agree_seed` says."""
    my_private = _check_bytes("my_private", my_private, KEY_BYTES)
    their_public = _check_bytes("their_public", their_public, KEY_BYTES)
    my_public = crypto_scalarmult_base(my_private)
    if my_public == their_public:
        raise ValueError("cannot agree a pair seed with oneself (both public keys are equal)")
    try:
        shared = crypto_scalarmult(my_private, their_public)
    except NaclRuntimeError as exc:
        raise ValueError("their_public is a low-order point: the shared secret is zero") from exc
    if shared == bytes(KEY_BYTES):
        raise ValueError("their_public is a low-order point: the shared secret is zero")
    return my_public, shared


def seed_from_shared(my_public: bytes, their_public: bytes, shared: bytes, *,
                     context: bytes) -> bytes:
    """The pair seed from a checked X25519 shared secret (:func:`x25519_shared`)."""
    if not isinstance(context, bytes | bytearray) or not context:
        raise ValueError("context must be non-empty bytes (federation ‖ aggregator ‖ round)")
    low, high = sorted((my_public, bytes(their_public)))
    info = _KDF_LABEL + _length_prefixed(low, high, bytes(context))
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(shared)


def _keystream_words(seed: bytes, length: int,
                     dtype: np.dtype = RING_DTYPES[2]) -> NDArray[np.unsignedinteger]:
    """The keystream's first ``length`` words of ``dtype`` (its first ``length * itemsize``
    bytes, little-endian): a narrower ring reads a prefix of the same stream."""
    out = np.zeros(length, dtype=dtype.newbyteorder("<"))
    if length:
        view = memoryview(out).cast("B")
        encryptor = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
        encryptor.update_into(view, view)  # keystream XOR zeros, in place
    return out


def prg_mask(seed: bytes, length: int) -> NDArray[np.uint32]:
    """Expand a 32-byte seed to ``length`` pseudorandom uint32 words: the ChaCha20 keystream
    under key ``seed`` and an all-zero 16-byte counter ‖ nonce, read little-endian
    (deterministic on every platform). ValueError: a seed not 32 bytes, a negative length."""
    seed = _check_bytes("seed", seed, SEED_BYTES)
    length = operator.index(length)
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    return _keystream_words(seed, length).astype(np.uint32, copy=False)


def pair_sign(my_id: str, other_id: str) -> int:
    """+1 if ``my_id < other_id`` (string order), -1 if greater: the sign of the pair mask
    (ValueError if the ids are equal)."""
    if my_id == other_id:
        raise ValueError(f"a member has no pair mask with itself ({my_id!r})")
    return 1 if my_id < other_id else -1


def _mask_words(seed: bytes, length: int, dtype: np.dtype,
                modulus: int) -> NDArray[np.unsignedinteger]:
    """A mask's words: the keystream as ``dtype`` words (``Z_{2^w}``), or for a ``modulus``
    64-bit ones reduced modulo it (uniform to within ``modulus / 2^64``)."""
    if not modulus:
        return _keystream_words(seed, length, dtype)
    return (_keystream_words(seed, length, np.dtype(np.uint64)) % np.uint64(modulus)).astype(
        dtype)


def _add_signed(acc: NDArray[np.unsignedinteger], words: NDArray[np.unsignedinteger],
                sign: int, modulus: int = 0) -> None:
    if modulus:  # a ring whose size no dtype wraps at: reduced after each step
        acc[:] = np.mod(acc.astype(np.int64) + sign * words.astype(np.int64), modulus)
        return
    words = words.astype(acc.dtype, copy=False)  # native order: wraps modulo 2**w
    if sign > 0:
        np.add(acc, words, out=acc)
    else:
        np.subtract(acc, words, out=acc)


def fresh_self_seed(rng_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A new 32-byte self-mask seed ``b`` from ``rng_bytes`` (a CSPRNG outside tests);
    ValueError if ``rng_bytes`` does not return 32 bytes."""
    return _check_bytes("rng_bytes(32)", rng_bytes(SEED_BYTES), SEED_BYTES)


# --------------------------------------------------------------------------- masking


def mask_input(
    q: NDArray[np.unsignedinteger],
    *,
    my_id: str,
    self_seed: bytes,
    pair_seeds: Mapping[str, bytes],
    modulus: int = 0,
) -> NDArray[np.unsignedinteger]:
    """Mask one contributor's quantised input.

    ``y = q + PRG(self_seed) + Σ_k pair_sign(my_id, k) · PRG(pair_seeds[k]) mod 2**w``.

    Args:
        q: the quantised input (1-D uint32 from :func:`quantise`, or uint8/uint16 ring words
            from :func:`gossipfl.crypto.secagg_sparse.to_ring`: the masks are words of its
            dtype, the arithmetic modulo ``2**w``).
        my_id: this contributor's member id.
        self_seed: the 32-byte self-mask seed ``b``.
        pair_seeds: other member id to the 32-byte pair seed agreed with it; every other member
            of the neighbourhood that took part in the key round.
        modulus: the ring's size where it is no power of two (0: ``2**w`` of ``q``'s dtype;
            ``secagg_sparse.NINE``'s 9): masks and sums modulo it, ``q``'s words below it.

    Returns the masked vector ``y`` (a new array). ValueError: ``q`` not 1-D words (or not
    below ``modulus``), a seed not 32 bytes, ``my_id`` among ``pair_seeds``, fewer than
    :data:`MIN_CONTRIBUTORS` members.
    """
    q = _check_vector("q", q)
    if not isinstance(my_id, str) or not my_id:
        raise ValueError("my_id must be a non-empty string")
    self_seed = _check_bytes("self_seed", self_seed, SEED_BYTES)
    check_contributors(len(pair_seeds) + 1)
    if modulus and q.size and int(q.max()) >= modulus:
        raise ValueError(f"q's words must lie below the modulus {modulus}")
    y = q.copy()
    _add_signed(y, _mask_words(self_seed, q.size, q.dtype, modulus), +1, modulus)
    for other, seed in pair_seeds.items():
        sign = pair_sign(my_id, other)
        _add_signed(y, _mask_words(_check_bytes(f"pair seed {other!r}", seed, SEED_BYTES),
                                   q.size, q.dtype, modulus), sign, modulus)
    return y


def unmask_sum(
    masked: Mapping[str, NDArray[np.unsignedinteger]],
    *,
    survivors_self_seeds: Mapping[str, bytes],
    dropped_pair_seeds: Mapping[tuple[str, str], bytes],
    modulus: int = 0,
) -> NDArray[np.unsignedinteger]:
    """The aggregator's unmasking: ``Σ_{j∈V} q_j mod 2**w`` from the survivors' masked inputs
    (all of one dtype, uint8/16/32: the ring; the masks rebuilt as words of it).

    Pair masks between two survivors cancel in ``Σ y_j``. What is left is each survivor's self
    mask and, for each survivor ``j`` and dropped member ``d``, the term
    ``pair_sign(j, d) · PRG(p_jd)`` that ``j`` added; both are subtracted:
    ``Σ_j y_j - Σ_j PRG(b_j) - Σ_(j,d) pair_sign(j, d) · PRG(p_jd)``.

    Args:
        masked: survivor id to its masked input ``y`` (1-D, all the same length and dtype).
        survivors_self_seeds: survivor id to its rebuilt self seed ``b``; same ids as
            ``masked``.
        dropped_pair_seeds: ``(survivor, dropped)`` to the pair seed between them, which the
            aggregator rebuilds from the dropped member's Shamir-shared mask key; one entry for
            every survivor and every dropped member (empty if nobody dropped).
        modulus: as for :func:`mask_input` (a masked word at or above it is refused).

    Returns the survivors' quantised inputs' sum modulo ``2**w`` (or ``modulus``), of their
    dtype. ValueError: fewer than :data:`MIN_CONTRIBUTORS` survivors, self seeds not one per
    survivor, a pair key not (survivor, dropped), a pair missing, vectors of other shapes or
    widths.
    """
    check_contributors(len(masked))
    survivors = set(masked)
    if set(survivors_self_seeds) != survivors:
        raise ValueError("survivors_self_seeds must have exactly one seed per masked input")
    dropped: set[str] = set()
    for key in dropped_pair_seeds:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"dropped_pair_seeds keys must be (survivor, dropped), got {key!r}")
        survivor, gone = key
        if survivor not in survivors:
            raise ValueError(f"dropped_pair_seeds key {key!r}: {survivor!r} is not a survivor")
        if gone in survivors:
            raise ValueError(f"dropped_pair_seeds key {key!r}: {gone!r} is a survivor, not dropped")
        dropped.add(gone)
    missing = [
        (j, d)
        for j in sorted(survivors)
        for d in sorted(dropped)
        if (j, d) not in dropped_pair_seeds
    ]
    if missing:
        raise ValueError(f"missing pair seeds for (survivor, dropped) pairs {missing}")
    vectors = {j: _check_vector(f"masked[{j!r}]", y) for j, y in masked.items()}
    lengths = {y.size for y in vectors.values()}
    if len(lengths) != 1:
        raise ValueError(f"masked inputs must all have the same length, got {sorted(lengths)}")
    dtypes = {y.dtype for y in vectors.values()}
    if len(dtypes) != 1:
        raise ValueError(f"masked inputs must all have one width, got {sorted(map(str, dtypes))}")
    (length,), (dtype,) = lengths, dtypes
    if modulus and any(y.size and int(y.max()) >= modulus for y in vectors.values()):
        raise ValueError(f"masked words must lie below the modulus {modulus}")
    total = np.zeros(length, dtype=dtype)
    for j in sorted(vectors):
        _add_signed(total, vectors[j], +1, modulus)
        seed = _check_bytes(f"self seed of {j!r}", survivors_self_seeds[j], SEED_BYTES)
        _add_signed(total, _mask_words(seed, length, dtype, modulus), -1, modulus)
    for (j, d), seed in sorted(dropped_pair_seeds.items()):
        seed = _check_bytes(f"pair seed {(j, d)!r}", seed, SEED_BYTES)
        _add_signed(total, _mask_words(seed, length, dtype, modulus), -pair_sign(j, d), modulus)
    return total


# --------------------------------------------------------------------------- shares


def _share_box(box: Box, sender: str, recipient: str, context: bytes) -> SecretBox:
    """The key one share is sealed under: the pair's Box key bound (BLAKE2b, keyed by it) to
    sender, recipient and context; a share sealed for another binding fails its MAC."""
    return SecretBox(hashlib.blake2b(_SHARES_LABEL + _length_prefixed(
        sender.encode(), recipient.encode(), bytes(context)), key=box.shared_key(),
        digest_size=SecretBox.KEY_SIZE).digest())


def encrypt_seed_share(
    *,
    sender: str,
    recipient: str,
    context: bytes,
    share: bytes,
    sender_private: bytes,
    recipient_public: bytes,
    rng_bytes: Callable[[int], bytes] = os.urandom,
    box: Box | None = None,
) -> bytes:
    """Seal one encoded share of ``sender``'s self seed for ``recipient`` (NaCl Box's key,
    bound to sender, recipient and round: :func:`_share_box`, so the relaying aggregator can
    neither read a share nor replay it to another member or round; a fresh random nonce of
    :data:`SHARE_NONCE_BYTES`, zero-padded: a key seals one member's share to one member for
    one aggregator and round, a handful of messages at most, so 64 random bits do not repeat).
    Only the self seed is shared: pair masks come from the certified X25519 keys, and a
    survivor reveals a dropped member's round pair seed directly. ``box``: the pair's Box, made
    once (:class:`gossipfl.crypto.pair_keys.PairKeys`)."""
    box = box or Box(PrivateKey(_check_bytes("sender_private", sender_private, KEY_BYTES)),
                     PublicKey(_check_bytes("recipient_public", recipient_public, KEY_BYTES)))
    nonce = _check_bytes("rng_bytes(8)", rng_bytes(SHARE_NONCE_BYTES), SHARE_NONCE_BYTES)
    return nonce + _share_box(box, sender, recipient, context).encrypt(_check_bytes(
        "share", share, shamir.SHARE_BYTES), nonce.ljust(Box.NONCE_SIZE, b"\0")).ciphertext


def decrypt_seed_share(
    ciphertext: bytes,
    *,
    sender: str,
    recipient: str,
    context: bytes,
    recipient_private: bytes,
    sender_public: bytes,
    box: Box | None = None,
) -> bytes:
    """Open a share sealed by :func:`encrypt_seed_share` (``box``: as there); ValueError if it
    is not authentic (or sealed for another sender, recipient or round)."""
    box = box or Box(PrivateKey(_check_bytes("recipient_private", recipient_private, KEY_BYTES)),
                     PublicKey(_check_bytes("sender_public", sender_public, KEY_BYTES)))
    try:
        plaintext = _share_box(box, sender, recipient, context).decrypt(bytes(
            ciphertext[SHARE_NONCE_BYTES:]), bytes(ciphertext[:SHARE_NONCE_BYTES]).ljust(24, b"\0"))
    except CryptoError as exc:
        raise ValueError(f"share from {sender!r} to {recipient!r} does not authenticate (or "
                         f"was not sealed from it to them in this round)") from exc
    if len(plaintext) != shamir.SHARE_BYTES:
        raise ValueError(f"share from {sender!r} to {recipient!r} is not one encoded share")
    return plaintext
