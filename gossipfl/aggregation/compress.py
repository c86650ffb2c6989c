"""Compressors for the CHOCO delta q = x½ − x̂ (issue 10): pure functions, arrays in, arrays out.

The public estimate x̂ is CHOCO's error feedback (Koloskova et al. 2019): the sender adds exactly
the decoded q̃ = decode(encode(q)) to its own x̂ and every neighbour adds the same q̃, so what a
round's compression drops stays in x½ − x̂ and is sent in a later round. Each compressor returns
an :class:`Encoded` (what goes on the wire) and :func:`decode` gives back the float32 q̃ both sides
apply.

- ``int8``: stochastic rounding to 255 levels with one scale for the whole vector
  (scale = max|q| / 127); unbiased, E[Q(q)] = q.
- ``int4``: stochastic rounding to 15 levels (−7..7) with one scale per block of
  :data:`INT4_BLOCK` coordinates (scale = max|q| over the block / 7, so a layer of small values
  is not rounded away by another's large ones); two levels a byte; unbiased.
- ``fp16``: half precision (values beyond ±65504 saturate).
- ``topk``: the ``ceil(ratio · n)`` coordinates of largest |q|, as indices and float32 values.
- ``randk``: as many coordinates drawn uniformly from a seed derived from (federation, sender,
  round) (:func:`shared_seed`), so a receiver could draw the same index set; the indices are
  sent for now. Not rescaled by n/k: CHOCO's error feedback wants the contractive form.

No I/O, no global state: the random generator is passed in.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

INT8_LEVELS = 127
INT4_LEVELS = 7
INT4_BLOCK = 128
"""Coordinates that share one int4 scale (a float32 each: 1/32 of a byte per coordinate)."""
FP16_MAX = float(np.finfo(np.float16).max)


class CompressionKind(StrEnum):
    """``[compression] kind``."""

    NONE = "none"
    INT8 = "int8"
    INT4 = "int4"
    FP16 = "fp16"
    TOPK = "topk"
    RANDK = "randk"


class Codec(StrEnum):
    """How an :class:`Encoded` vector is laid out (top-k and random-k are both sparse)."""

    INT8 = "int8"
    INT4 = "int4"
    FP16 = "fp16"
    SPARSE = "sparse"


@dataclass(frozen=True)
class Encoded:
    """A compressed vector of ``size`` float32 values.

    ``int8``: ``values`` int8 of length ``size``, q̃ = values · ``scale``; ``int4``: ``values``
    uint8 of length ⌈size / 2⌉, two levels a byte (low nibble first, level + 7, a last odd
    byte's high nibble 0) and ``scales`` float32, one per block of :data:`INT4_BLOCK`;
    ``fp16``: ``values`` float16 of length ``size``; ``sparse``: ``indices`` uint32 (strictly
    increasing, < size) and ``values`` float32 of the same length, every other coordinate 0.
    """

    codec: Codec
    size: int
    values: np.ndarray
    indices: np.ndarray | None = None
    scale: float = 0.0
    scales: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        """The payload bytes on the wire (values, indices or block scales, and a 4-byte scale
        for int8)."""
        extra = sum(0 if a is None else a.nbytes for a in (self.indices, self.scales))
        return self.values.nbytes + extra + (4 if self.codec is Codec.INT8 else 0)


def quantise_int8(q: np.ndarray, rng: np.random.Generator) -> Encoded:
    """Stochastic int8 rounding with one scale: each x = q/scale is rounded to ⌊x⌋ or ⌊x⌋ + 1
    with probabilities that make the expectation x."""
    q = np.asarray(q, np.float32).reshape(-1)
    peak = float(np.max(np.abs(q))) if q.size else 0.0
    scale = float(np.float32(peak / INT8_LEVELS))
    if scale == 0.0 or not math.isfinite(scale):
        return Encoded(Codec.INT8, q.size, np.zeros(q.size, np.int8), scale=0.0)
    x = q.astype(np.float64) / scale
    low = np.floor(x)
    levels = low + (rng.random(q.size) < (x - low))
    return Encoded(Codec.INT8, q.size,
                   np.clip(levels, -INT8_LEVELS, INT8_LEVELS).astype(np.int8), scale=scale)


def int4_blocks(size: int) -> int:
    """How many int4 scales a vector of ``size`` has: ⌈size / INT4_BLOCK⌉."""
    return -(-size // INT4_BLOCK)


def quantise_int4(q: np.ndarray, rng: np.random.Generator) -> Encoded:
    """Stochastic rounding to −7..7 with one scale per block of :data:`INT4_BLOCK` (its
    max|q| / 7), packed two levels a byte; E[decode] = q."""
    q = np.asarray(q, np.float32).reshape(-1)
    blocks = int4_blocks(q.size)
    padded = np.zeros(blocks * INT4_BLOCK, np.float64)
    padded[:q.size] = q
    padded = padded.reshape(blocks, INT4_BLOCK)
    peak = np.max(np.abs(padded), axis=1) if blocks else np.zeros(0)
    scales = (peak / INT4_LEVELS).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).astype(np.float64)[:, None]
    x = padded / safe
    low = np.floor(x)
    levels = np.clip(low + (rng.random(x.shape) < (x - low)), -INT4_LEVELS, INT4_LEVELS)
    nibbles = (levels.reshape(-1)[:q.size] + INT4_LEVELS).astype(np.uint8)
    if q.size % 2:
        nibbles = np.append(nibbles, np.uint8(INT4_LEVELS))  # level 0, dropped on decoding
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    if q.size % 2:
        packed[-1] &= 0x0F  # the pad nibble is sent as 0
    return Encoded(Codec.INT4, q.size, packed.astype(np.uint8), scales=scales)


def int4_levels(values: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` levels (−7..7, int8) packed in ``values`` two a byte."""
    nibbles = np.empty(2 * values.size, np.int8)
    nibbles[0::2] = values & 0x0F
    nibbles[1::2] = values >> 4
    return nibbles[:size] - INT4_LEVELS


def to_fp16(q: np.ndarray) -> Encoded:
    """Half precision, saturating at ±65504 (never infinite)."""
    q = np.asarray(q, np.float32).reshape(-1)
    return Encoded(Codec.FP16, q.size, np.clip(q, -FP16_MAX, FP16_MAX).astype(np.float16))


def kept(size: int, ratio: float) -> int:
    """How many coordinates top-k and random-k keep: ceil(ratio · size), at least 1."""
    return min(size, max(1, math.ceil(ratio * size))) if size else 0


def top_k(q: np.ndarray, ratio: float) -> Encoded:
    """The :func:`kept` coordinates of largest |q| (ties: the lower index first)."""
    q = np.asarray(q, np.float32).reshape(-1)
    k = kept(q.size, ratio)
    order = np.argsort(-np.abs(q), kind="stable")[:k]
    indices = np.sort(order).astype(np.uint32)
    return Encoded(Codec.SPARSE, q.size, q[indices].astype(np.float32), indices=indices)


def random_k(q: np.ndarray, ratio: float, rng: np.random.Generator) -> Encoded:
    """:func:`kept` coordinates drawn uniformly without replacement from ``rng`` (seeded with
    :func:`shared_seed`, so the receiver can draw the same set)."""
    q = np.asarray(q, np.float32).reshape(-1)
    indices = np.sort(rng.choice(q.size, kept(q.size, ratio), replace=False)).astype(np.uint32)
    return Encoded(Codec.SPARSE, q.size, q[indices].astype(np.float32), indices=indices)


def decode(encoded: Encoded) -> np.ndarray:
    """The float32 q̃ an :class:`Encoded` stands for (what sender and receivers add to x̂)."""
    if encoded.codec is Codec.INT8:
        return (encoded.values.astype(np.float32) * np.float32(encoded.scale)).astype(np.float32)
    if encoded.codec is Codec.INT4:
        assert encoded.scales is not None
        levels = int4_levels(encoded.values, encoded.size).astype(np.float32)
        per = np.repeat(encoded.scales.astype(np.float32), INT4_BLOCK)[:encoded.size]
        return (levels * per).astype(np.float32)
    if encoded.codec is Codec.FP16:
        return encoded.values.astype(np.float32)
    out = np.zeros(encoded.size, np.float32)
    assert encoded.indices is not None
    out[encoded.indices.astype(np.int64)] = encoded.values
    return out


def shared_seed(federation: str, sender: str, round_: int, salt: str = "") -> int:
    """A 64-bit seed from (federation, sender, round): anyone who knows them draws the same."""
    digest = hashlib.sha256(f"{federation}\0{sender}\0{round_}\0{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def compress(kind: CompressionKind, q: np.ndarray, ratio: float,
             rng: np.random.Generator) -> Encoded | None:
    """Encode q with ``kind`` (None for ``none``: send q itself as float32)."""
    if kind is CompressionKind.NONE:
        return None
    if kind is CompressionKind.INT8:
        return quantise_int8(q, rng)
    if kind is CompressionKind.INT4:
        return quantise_int4(q, rng)
    if kind is CompressionKind.FP16:
        return to_fp16(q)
    if kind is CompressionKind.TOPK:
        return top_k(q, ratio)
    return random_k(q, ratio, rng)
