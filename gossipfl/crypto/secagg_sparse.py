"""Compressed secure aggregation (issue 10): random-k, or int8/int4 levels at a public step in a
narrow ring, CHOCO deltas under additive masking.

Pure functions; no I/O, no global state. The protocol that uses them is
:mod:`gossipfl.node.secure_sparse` (with :mod:`gossipfl.node.secure_round`).

Random-k with a coordinate set shared by the whole federation for the round composes with the
masks of :mod:`gossipfl.crypto.secagg`: every member draws the same ``k`` coordinates
(:func:`round_coordinates`, from federation and round only, so the set is the same for all the
aggregators a member contributes to and one public estimate x̂ per member still holds), takes its
CHOCO delta ``x½ − x̂`` on those coordinates (:func:`sparse_delta`), and masks the ``k`` weighted
values as a vector of its own (:func:`mask_sparse`): the pair and self seeds are expanded to
``k`` words, so pair masks cancel in the sum over the same ``k`` positions and dropout recovery
rebuilds ``k``-word masks. The aggregator adds the unmasked sum into its running sum
``S_i = Σ_j w_ij x̂_j`` at those coordinates only (:func:`add_at`); every member adds the same
delta to its x̂, so what the round left out stays in ``x½ − x̂`` for later rounds (CHOCO's error
feedback). No index travels: the set is public and derived, a masked value is 4 bytes.

The set is public (anyone can derive it): it says which coordinates move this round, nothing about
their values, which stay masked and quantised as in full rounds.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from fractions import Fraction

import numpy as np
from numpy.typing import NDArray

from gossipfl.aggregation.compress import Codec, Encoded, kept
from gossipfl.crypto import secagg

_LABEL = "gossipfl/secagg/randk/v1"


def coordinate_seed(federation: str, round_: int) -> int:
    """The 64-bit seed of round ``round_``'s shared coordinate set (federation ‖ round)."""
    if not federation or round_ < 0:
        raise ValueError("federation must be non-empty and round_ >= 0")
    digest = hashlib.sha256(f"{_LABEL}\0{federation}\0{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def round_coordinates(federation: str, round_: int, size: int,
                      ratio: float) -> NDArray[np.uint32]:
    """The ``kept(size, ratio)`` coordinates every member of the federation sends in round
    ``round_``: drawn uniformly without replacement, sorted, the same for everyone who knows the
    federation, the round, the model size and the ratio.

    >>> a = round_coordinates("fed", 3, 1000, 0.1)
    >>> a.size, bool((a == round_coordinates("fed", 3, 1000, 0.1)).all())
    (100, True)
    """
    if size < 1 or not 0 < ratio <= 1:
        raise ValueError(f"size must be >= 1 and ratio in (0, 1], got {size}, {ratio}")
    rng = np.random.default_rng(coordinate_seed(federation, round_))
    return np.sort(rng.choice(size, kept(size, ratio), replace=False)).astype(np.uint32)


def sparse_delta(delta: np.ndarray, indices: NDArray[np.uint32]) -> Encoded:
    """The delta on the shared coordinates, as a sparse :class:`Encoded` (what x̂ adds)."""
    delta = np.asarray(delta, np.float32).reshape(-1)
    return Encoded(Codec.SPARSE, delta.size, delta[indices.astype(np.int64)].astype(np.float32),
                   indices=indices)


def mask_sparse(values: np.ndarray, weight: float, *, clip: float, scale: int, my_id: str,
                self_seed: bytes, pair_seeds: Mapping[str, bytes]) -> NDArray[np.uint32]:
    """Quantise ``weight · values`` (the ``k`` kept coordinates) and mask it with ``k``-word
    self and pair masks (:func:`gossipfl.crypto.secagg.mask_input`)."""
    q = secagg.quantise(weight * np.asarray(values, np.float64), clip, scale)
    return secagg.mask_input(q.reshape(-1), my_id=my_id, self_seed=self_seed,
                             pair_seeds=pair_seeds)


def add_at(running: np.ndarray, indices: NDArray[np.uint32], total: np.ndarray) -> np.ndarray:
    """The running sum with the unmasked ``k``-coordinate sum added at ``indices`` (a copy)."""
    if total.shape != indices.shape:
        raise ValueError(f"{total.size} summed values for {indices.size} coordinates")
    out = np.array(running, np.float32)
    out[indices.astype(np.int64)] += np.asarray(total, np.float32)
    return out


def choco_mix(half_step: np.ndarray, own_estimate: np.ndarray, running: np.ndarray,
              weights: float, gamma: float) -> np.ndarray:
    """CHOCO's consensus step from a masked running sum:
    ``x = x½ + γ (Σ_j w_ij x̂_j − (Σ_j w_ij) x̂_i)`` = ``x½ + γ Σ_j w_ij (x̂_j − x̂_i)``."""
    return (np.asarray(half_step, np.float32)
            + np.float32(gamma) * (running - np.float32(weights) * own_estimate)
            ).astype(np.float32)


# -- quantised deltas in a narrow ring (int8, int4) ------------------------------------------
#
# A delta round can instead send every coordinate, stochastically rounded to a few levels of a
# scale the whole federation shares (public: from the config and the round, never chosen per
# member), so integer levels from different members add up. Member j sends aggregator i the
# levels times an integer weight, ``c_ij · L_j``, where ``w_ij = c_ij / K`` over a common
# denominator K of i's neighbourhood (:func:`integer_weights`); the sum ``Σ_j c_ij L_j`` lies in
# ``[-levels · Σ_j c_ij, levels · Σ_j c_ij]``, so words of the smallest ring whose signed range
# holds that (:func:`ring_width`: 6 bits for int4 on a degree-4 graph, 12 for int8) sum without
# wrapping, and the masks are words of that ring (:func:`gossipfl.crypto.secagg.mask_input`).
# The aggregator reads the unmasked sum as signed and gets ``Σ_j w_ij s L_j`` exactly
# (:func:`decode_ring_sum`).

NINE = 3
"""The ring of 9 values, ``Z_9``, named by width 3 (its words are below 2^3.17): one level each
side at degree 4 (``Σc = 4``) sums within ±4, which it holds exactly; five words travel in two
bytes (base 9: 59,049 < 65,536), 3.2 bits a word against the 4-bit ring's 4. Its masks are
64-bit keystream words reduced modulo 9 and its sums reduced after each step
(``secagg.mask_input``'s ``modulus``): no dtype wraps at 9."""

RING_WIDTHS = (NINE, 4, 6, 8, 12, 16, 32)
"""The ring widths in bits, narrowest first (uint8, uint8, uint8, uint8, uint16, uint16, uint32
words; :data:`NINE` the 9-value ring). A 6-bit word is held in a uint8 whose arithmetic wraps at
256, a multiple of 64, so masking and unmasking run as at 8 bits and reduce modulo 64 where the
words go on the wire (:func:`pack_words`) and where a sum is read (:func:`decode_ring_sum`):
int4 on a degree-4 graph, whose sums lie within ±28, sends 3 bytes for 4 coordinates. A 4-bit
word likewise (six in three bytes): one level each side (``secagg.delta_levels = 1``) with
integer weights summing to 5-7, sums within ±7 (at degree 4, ±4: :data:`NINE`). A 12-bit word
lives in a uint16 (65,536 is a multiple of 4,096) and travels two to three bytes: int8 on a
degree-4 graph (sums within ±508) and a consensus round's deltas (±2,044)."""

PACKED = {4: 6, 6: 4, 12: 2}
"""The widths that travel packed: how many words each group of 3 bytes holds (:data:`NINE`'s
words go five to two bytes)."""


def ring_modulus(width: int) -> int:
    """The ring's size: ``2**width``, or 9 for :data:`NINE`."""
    return 9 if width == NINE else 1 << width


def mask_modulus(width: int) -> int:
    """What ``secagg.mask_input`` and ``unmask_sum`` take as ``modulus`` for this ring: 9 for
    :data:`NINE`, else 0 (the words' dtype wraps at a multiple of ``2**width``)."""
    return 9 if width == NINE else 0

QUANTISED_LEVELS = {"int8": 127, "int4": 7}
"""Levels each side of zero per compression kind: L ∈ [-levels, levels]."""

CONSENSUS_LEVELS = 511
"""Levels each side of zero of a consensus round's delta (``secagg.consensus_deltas``): with
no training left the deltas shrink round by round, and int4's step would stall the consensus
at its rounding noise; 511 levels of the same clip sum in 12-bit words while the weights'
integers add up to at most 4 (``fits``: a degree-4 graph at equal weights), in 16-bit words
up to 64, and in 32-bit words beyond. (2,047 levels in 16-bit words ended in as many rounds
at the same accuracy on ``secagg_int4.toml``; see the README.)"""


NARROW_LEVELS = (1, 7, 31)
"""The levels each side of zero an aggregator may hold its members' consensus deltas to in a
round it narrowed (``gossipfl.node.secure_sparse.narrowing``: its sums had shrunk), at the
consensus step: at degree 4 (Σc ≤ 4) its sum's words are then of :data:`NINE`, 6 or 8 bits (±4,
±28, ±124) instead of 12; what the bound clips stays in x½ − x̂ for later rounds, as any clip
does."""


def round_levels(kind: str, training_rounds: int, round_: int, own: int = 0,
                 coarse: tuple[int, ...] = ()) -> int:
    """The levels each side of zero of a quantised delta in round ``round_``: the kind's own in
    training rounds (or ``own``, ``secagg.delta_levels``, where not 0), :data:`CONSENSUS_LEVELS`
    in consensus rounds (from ``training_rounds`` on), but ``coarse[k]`` in the k-th
    (``secagg.coarse_consensus``); 0 for a kind without levels (random-k).

    >>> round_levels("int4", 30, 29), round_levels("int4", 30, 31), round_levels("randk", 30, 31)
    (7, 511, 0)
    >>> round_levels("int4", 30, 29, own=1), round_levels("int4", 30, 31, own=1)
    (1, 511)
    >>> [round_levels("int4", 30, r, 1, (7, 31, 31)) for r in range(29, 35)]
    [1, 7, 31, 31, 511, 511]
    """
    levels = QUANTISED_LEVELS.get(kind, 0)
    if levels and 0 < training_rounds <= round_ < training_rounds + len(coarse):
        return coarse[round_ - training_rounds]
    if levels and 0 < training_rounds <= round_:
        return CONSENSUS_LEVELS
    return own if levels and own else levels


def delta_step(clip: float, levels: int) -> float:
    """The public quantisation step ``s = clip / levels`` (as float32, the value x̂ adds)."""
    if not (clip > 0 and levels >= 1):
        raise ValueError(f"clip must be > 0 and levels >= 1, got {clip}, {levels}")
    return float(np.float32(clip / levels))


def quantise_levels(delta: np.ndarray, clip: float, levels: int,
                    rng: np.random.Generator, bound: int | None = None) -> NDArray[np.int16]:
    """``L = stochastic_round(clip(Δ, ±clip) / s)``, ``s`` = :func:`delta_step`: each coordinate
    goes to ⌊x⌋ or ⌊x⌋ + 1 with the probabilities that make E[s L] = clip(Δ); in
    ``[-levels, levels]``, int16. ``bound`` (at most ``levels``): Δ is clipped at ``bound · s``
    instead, the levels within ``±bound`` at the same step.

    >>> quantise_levels(np.array([0.5, -1.0, 9.0]), 1.0, 2, np.random.default_rng(0)).tolist()
    [1, -2, 2]
    >>> quantise_levels(np.array([0.5, -1.0, 9.0]), 1.0, 4, np.random.default_rng(0), 1).tolist()
    [1, -1, 1]
    """
    step = delta_step(clip, levels)
    if bound is not None:
        if not 1 <= bound <= levels:
            raise ValueError(f"bound must be in 1..{levels}, got {bound}")
        levels, clip = bound, bound * step
    x = np.clip(np.asarray(delta, np.float64).reshape(-1), -clip, clip) / step
    if not np.isfinite(x).all():
        raise ValueError("delta must be finite")
    low = np.floor(x)
    out = low + (rng.random(x.size) < (x - low))
    return np.clip(out, -levels, levels).astype(np.int16)


def integer_weights(weights: Mapping[str, Fraction]) -> tuple[dict[str, int], int]:
    """Exact integers ``c_j`` and one denominator ``K`` (the least) with ``w_j = c_j / K``.

    >>> integer_weights({"a": Fraction(1, 5), "b": Fraction(1, 4)})
    ({'a': 4, 'b': 5}, 20)
    """
    if any(not isinstance(w, Fraction) or not 0 < w <= 1 for w in weights.values()):
        raise ValueError("weights must be Fractions in (0, 1]")
    denominator = math.lcm(*(w.denominator for w in weights.values())) if weights else 1
    return {j: int(w * denominator) for j, w in weights.items()}, denominator


def fits(levels: int, weight_sum: int, width: int) -> bool:
    """Whether every ``Σ_j c_j L_j`` with ``|L_j| <= levels`` and ``Σ_j c_j = weight_sum`` lies
    in the signed range of ``width``-bit words (so the sum modulo ``2**width`` never wraps).

    >>> fits(7, 4, 8), fits(127, 4, 8), fits(127, 4, 16), fits(31, 4, 8), fits(32, 4, 8)
    (True, False, True, True, False)
    >>> fits(1, 4, NINE), fits(1, 5, NINE), fits(2, 2, NINE)
    (True, False, True)
    """
    if width not in RING_WIDTHS or levels < 0 or weight_sum < 0:
        raise ValueError(f"width must be one of {RING_WIDTHS}, levels and weight_sum >= 0")
    return levels * weight_sum <= (ring_modulus(width) - 1) // 2


def ring_width(levels: int, weight_sum: int) -> int:
    """The narrowest of :data:`RING_WIDTHS` that :func:`fits`; ValueError if none does (the sum
    could wrap even in 32 bits: refused)."""
    for width in RING_WIDTHS:
        if fits(levels, weight_sum, width):
            return width
    raise ValueError(f"levels {levels} times weights {weight_sum} could wrap even 32-bit words")


def ring_dtype(width: int) -> np.dtype:
    """The unsigned dtype of ``width``-bit words (native order, for arithmetic; uint8 for 6,
    uint16 for 12).

    >>> [ring_dtype(w).name for w in RING_WIDTHS]
    ['uint8', 'uint8', 'uint8', 'uint8', 'uint16', 'uint16', 'uint32']
    """
    if width not in RING_WIDTHS:
        raise ValueError(f"width must be one of {RING_WIDTHS}, got {width}")
    return np.dtype(f"uint{8 * -(-width // 8)}")


def packed_bytes(count: int, width: int) -> int:
    """The bytes ``count`` words of ``width`` bits take on the wire (4-bit words: 6 in 3;
    6-bit words: 4 in 3; 12-bit words: 2 in 3; :data:`NINE`'s: 5 in 2).

    >>> packed_bytes(8970, 4), packed_bytes(8970, 6), packed_bytes(8970, 12), packed_bytes(5, 16)
    (4485, 6729, 13455, 10)
    >>> packed_bytes(8970, NINE), packed_bytes(6, NINE)
    (3588, 4)
    """
    if width == NINE:
        return 2 * -(-count // 5)
    if width in PACKED:
        return 3 * -(-count // PACKED[width])
    return count * (width // 8)


def pack_words(words: np.ndarray, width: int) -> NDArray[np.uint8]:
    """Ring words as the bytes that travel: little-endian words, or for a :data:`PACKED`
    width each word modulo ``2**width``, low bits first, 24 bits to three bytes (4 bits: six
    words; 6 bits: four; 12 bits: two; the last group padded with zero words); for
    :data:`NINE`, each word modulo 9, five base-9 digits (the lowest first) to a little-endian
    uint16.

    >>> pack_words(np.array([1, 2, 0, 0, 8, 4], np.uint8), NINE).tolist()  # 1 + 2·9 + 8·9^4
    [27, 205, 4, 0]

    >>> pack_words(np.array([1, 2, 3, 63, 64 + 5], np.uint8), 6).tolist()
    [129, 48, 252, 5, 0, 0]
    >>> pack_words(np.array([0xABC, 0x123, 4096 + 1], np.uint16), 12).tolist()
    [188, 58, 18, 1, 0, 0]
    """
    words = np.asarray(words, ring_dtype(width)).reshape(-1)
    if width == NINE:  # five base-9 digits to a little-endian uint16, the lowest first
        digits = np.zeros(5 * -(-words.size // 5), np.uint16)
        digits[:words.size] = words % 9
        joined = digits.reshape(-1, 5) @ (9 ** np.arange(5, dtype=np.uint16))
        return np.ascontiguousarray(joined.astype("<u2")).view(np.uint8)
    if width not in PACKED:
        return np.ascontiguousarray(words, words.dtype.newbyteorder("<")).view(np.uint8)
    group = PACKED[width]
    v = np.zeros(group * -(-words.size // group), np.uint32)
    v[:words.size] = words & ((1 << width) - 1)
    v = v.reshape(-1, group)
    joined = np.zeros(len(v), np.uint32)
    for i in range(group):
        joined |= v[:, i] << (i * width)
    return np.stack([joined & 255, joined >> 8 & 255, joined >> 16], axis=1).astype(
        np.uint8).reshape(-1)


def unpack_words(data: bytes | memoryview, width: int, count: int) -> NDArray[np.unsignedinteger]:
    """The ``count`` ring words ``data`` holds (:func:`pack_words`' inverse, a packed width's
    words modulo ``2**width``); ValueError if its length is not :func:`packed_bytes`."""
    if len(data) != packed_bytes(count, width):
        raise ValueError(f"{len(data)} bytes do not hold {count} {width}-bit words")
    dtype = ring_dtype(width)
    if width == NINE:
        joined = np.frombuffer(data, dtype="<u2").astype(np.uint32)
        if joined.size and int(joined.max()) >= 9**5:
            raise ValueError("a group of base-9 words beyond 9^5 - 1")
        digits = np.stack([joined // 9**i % 9 for i in range(5)], axis=1)
        return digits.reshape(-1)[:count].astype(dtype)
    if width not in PACKED:
        return np.frombuffer(data, dtype=dtype.newbyteorder("<")).astype(dtype)
    b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.uint32)
    joined = b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16
    mask = (1 << width) - 1
    v = np.stack([joined >> (i * width) & mask for i in range(PACKED[width])], axis=1)
    return v.reshape(-1)[:count].astype(dtype)


def to_ring(values: np.ndarray, width: int) -> NDArray[np.unsignedinteger]:
    """Signed integers as words of the ring ``width`` names, modulo its size (two's complement
    at a power of two)."""
    dtype = ring_dtype(width)
    values = np.asarray(values)
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError("ring values must be integers")
    return (values.astype(np.int64) % ring_modulus(width)).astype(dtype).reshape(-1)


def decode_ring_sum(total: np.ndarray, *, width: int, levels: int, weight_sum: int,
                    step: float, denominator: int) -> NDArray[np.float32]:
    """``Σ_j w_j s L_j`` as float32 from ``total``, the unmasked ``Σ_j c_j L_j mod 2**width``:
    read as signed, times ``s / K``.

    Raises:
        ValueError: if the sum could wrap at this width (:func:`fits`), ``total`` is not words
            of it, or a coordinate lies beyond ``levels · weight_sum`` (not such a sum: wrong
            masks, count or inputs).
    """
    if not fits(levels, weight_sum, width):
        raise ValueError(f"levels {levels} times weights {weight_sum} could wrap {width}-bit "
                         "words")
    if not isinstance(total, np.ndarray) or total.dtype != ring_dtype(width):
        raise ValueError(f"the sum must be {ring_dtype(width)} words")
    modulus = ring_modulus(width)
    signed = total.astype(np.int64) % modulus  # a 6-bit sum wrapped at 256 in uint8
    signed[signed > (modulus - 1) // 2] -= modulus
    if signed.size and int(np.abs(signed).max()) > levels * weight_sum:
        raise ValueError(f"a coordinate of the sum exceeds levels · Σc = {levels * weight_sum}: "
                         "wrong masks, count or inputs")
    return (signed * (float(step) / denominator)).astype(np.float32)


def public_quantised(delta: np.ndarray, clip: float, levels: int,
                     rng: np.random.Generator, bound: int | None = None) -> Encoded:
    """The delta a member publishes in a quantised delta round: levels at the public step, as
    an int8 :class:`Encoded` (decoded: ``s · L``, what x̂ adds on every side; its values int16
    for :data:`CONSENSUS_LEVELS`: it is only ever masked, never sent as a plain contribution);
    ``bound``: held to ``±bound`` levels at that step (:func:`quantise_levels`).
    """
    dtype = np.int8 if levels <= np.iinfo(np.int8).max else np.int16
    return Encoded(Codec.INT8, int(np.asarray(delta).size),
                   quantise_levels(delta, clip, levels, rng, bound).astype(dtype),
                   scale=delta_step(clip, levels))


def consensus_mix(own_estimate: np.ndarray, running: np.ndarray, weights: float) -> np.ndarray:
    """A consensus delta round's step: the neighbourhood's mean of public estimates,
    ``Σ_j w_ij x̂_j + (1 − Σ_j w_ij) x̂_i`` from the running sum over the neighbours j
    (``weights`` = ``Σ_j w_ij``: node i's own weight is the rest, and a missing neighbour's
    weight stays on x̂_i).

    Unlike CHOCO's ``x + γ Σ_j w_ij (x̂_j − x̂_i)`` it does not add to x: a delta that was
    clipped leaves x̂ short of x, and CHOCO would then keep moving x by the same stale
    differences (measured: a 5-node logistic regression diverged); here x is a convex
    combination of the x̂, and x̂ moves toward x, so no estimate leaves the hull of the last
    round's.

    >>> consensus_mix(np.array([1.0]), np.array([0.5]), 0.75).tolist()
    [0.75]
    """
    return (np.asarray(running, np.float32)
            + np.float32(1.0 - weights) * np.asarray(own_estimate, np.float32)
            ).astype(np.float32)
