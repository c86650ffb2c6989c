"""Compressed secure aggregation with quantised deltas (issue 10): int8/int4 levels at a public
step, masked as integer-weighted words of a 6/8/12/16-bit ring (gossipfl/crypto/secagg_sparse.py,
the width-parametrised masks of gossipfl/crypto/secagg.py, gossipfl/node/secure_sparse.py)."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import secagg_loopback as loop
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.aggregation.compress import Codec, decode
from gossipfl.config import CompressionConfig, SecAggConfig
from gossipfl.crypto import secagg
from gossipfl.crypto.secagg_sparse import (
    CONSENSUS_LEVELS,
    NINE,
    QUANTISED_LEVELS,
    RING_WIDTHS,
    consensus_mix,
    decode_ring_sum,
    delta_step,
    fits,
    integer_weights,
    mask_modulus,
    pack_words,
    packed_bytes,
    public_quantised,
    quantise_levels,
    ring_dtype,
    ring_modulus,
    ring_width,
    to_ring,
    unpack_words,
)
from gossipfl.gossip import wire
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import MaskedInput
from gossipfl.node import secure_round, secure_sparse
from gossipfl.node.runtime import Node

MEMBERS = "bcde"


def _pair_seeds(me: str, names: str, r: int = 1) -> dict[str, bytes]:
    keys = {n: bytes([ord(n)]) * 32 for n in names}
    publics = {n: secagg.crypto_scalarmult_base(k) for n, k in keys.items()}
    context = secagg.seed_context("fed", "agg", r)
    return {o: secagg.agree_seed(keys[me], publics[o], context=context)
            for o in names if o != me}


SEEDS = {n: _pair_seeds(n, MEMBERS) for n in MEMBERS}
SELF = {n: bytes([0x40 + i]) * 32 for i, n in enumerate(MEMBERS)}

# -- pure: levels, integer weights, ring width ---------------------------------------------------


def test_levels_are_exact_on_the_grid_and_clipped_at_the_edge() -> None:
    rng = np.random.default_rng(0)
    step = delta_step(0.07, 7)
    assert step == np.float32(0.01)
    grid = np.array([-3, 0, 2, 7], np.float64) * step
    assert quantise_levels(grid, 0.07, 7, rng).tolist() == [-3, 0, 2, 7]
    assert quantise_levels(np.array([5.0, -5.0]), 0.07, 7, rng).tolist() == [7, -7]
    with pytest.raises(ValueError):
        quantise_levels(np.array([np.nan]), 0.07, 7, rng)


def test_levels_are_unbiased_inside_the_clip() -> None:
    rng = np.random.default_rng(1)
    delta = np.full(200_000, 0.0123)
    levels = quantise_levels(delta, 0.05, 7, rng)
    assert set(np.unique(levels)) == {1, 2}
    assert abs(levels.mean() * delta_step(0.05, 7) - 0.0123) < 2e-4


def test_public_quantised_decodes_to_step_times_levels() -> None:
    rng = np.random.default_rng(2)
    delta = rng.normal(0, 0.02, 1000)
    encoded = public_quantised(delta, 0.05, QUANTISED_LEVELS["int4"], np.random.default_rng(3))
    levels = quantise_levels(delta, 0.05, 7, np.random.default_rng(3))
    assert encoded.codec is Codec.INT8 and encoded.scale == delta_step(0.05, 7)
    assert np.array_equal(decode(encoded), (levels * np.float32(encoded.scale)).astype(np.float32))


def test_integer_weights_are_exact() -> None:
    assert integer_weights({j: Fraction(1, 5) for j in "bcde"}) == ({j: 1 for j in "bcde"}, 5)
    counts, k = integer_weights({"b": Fraction(1, 4), "c": Fraction(1, 6), "d": Fraction(1, 3)})
    assert (counts, k) == ({"b": 3, "c": 2, "d": 4}, 12)
    with pytest.raises(ValueError):
        integer_weights({"b": 0.2})  # type: ignore[dict-item]


@settings(deadline=None)
@given(st.dictionaries(st.text("bcdefgh", min_size=1, max_size=2),
                       st.integers(1, 40), min_size=1, max_size=8))
def test_integer_weights_over_a_common_denominator(denominators: dict[str, int]) -> None:
    weights = {j: Fraction(1, d) for j, d in denominators.items()}
    counts, k = integer_weights(weights)
    assert all(Fraction(counts[j], k) == w for j, w in weights.items())


def test_delta_clip_is_validated() -> None:
    with pytest.raises(ValueError, match="delta_clip"):
        SecAggConfig(delta_clip=0.0)
    with pytest.raises(ValueError, match="delta_clip"):
        SecAggConfig(delta_clip=9.0)  # past secagg.clip


def test_ring_width_table_and_wrap_refused() -> None:
    # degree-4 regular graph: Σ c = 4 (K = 5); int4 fits 6 bits (±28), int8 12 (±508), and
    # a consensus round's deltas 12 (±2,044)
    assert ring_width(QUANTISED_LEVELS["int4"], 4) == 6 and ring_width(7, 5) == 8
    assert ring_width(QUANTISED_LEVELS["int8"], 4) == 12
    assert ring_width(CONSENSUS_LEVELS, 4) == 12 and ring_width(CONSENSUS_LEVELS, 5) == 16
    assert ring_width(127, 1) == 8 and ring_width(127, 2) == 12
    assert ring_width(127, 16) == 12 and ring_width(127, 17) == 16
    assert ring_width(7, 18) == 8 and ring_width(7, 19) == 12
    assert ring_width(127, 258) == 16 and ring_width(127, 259) == 32
    assert not fits(7, 19, 8) and fits(7, 19, 12)
    with pytest.raises(ValueError, match="could wrap"):
        ring_width(2**30, 2)
    with pytest.raises(ValueError, match="width"):
        fits(7, 4, 10)


@settings(deadline=None)
@given(st.integers(0, 2**20), st.integers(0, 2**12))
def test_fits_is_exactly_the_signed_range(levels: int, weight_sum: int) -> None:
    for width in RING_WIDTHS:
        bound = 5 if width == NINE else 2 ** (width - 1)  # Z_9 holds -4..4
        assert fits(levels, weight_sum, width) == (levels * weight_sum < bound)


def test_the_nine_value_ring_masks_uniformly_packs_five_to_two_bytes_and_sums_exactly() -> None:
    """One level each side at Σc = 4: sums within ±4, held exactly modulo 9; masks are 64-bit
    keystream words modulo 9 (uniform: a chi-square over 90,000 words), a masked vector
    travels five words to two bytes, and a group past 9^5 - 1 is refused."""
    assert ring_width(1, 4) == NINE and ring_width(1, 5) == 4 and ring_width(2, 2) == NINE
    words = secagg._mask_words(bytes(range(32)), 90_000, ring_dtype(NINE), 9)
    counts = np.bincount(words, minlength=9)
    assert counts.size == 9 and ((counts - 10_000) ** 2 / 10_000).sum() < 26.1  # p = 0.001
    rng = np.random.default_rng(9)
    inputs = {j: rng.integers(-1, 2, 1001) for j in MEMBERS}
    masked = _masked(inputs, dict.fromkeys(MEMBERS, 1), NINE)
    assert all(int(y.max()) <= 8 for y in masked.values())
    travelled = {j: unpack_words(pack_words(y, NINE).tobytes(), NINE, 1001)
                 for j, y in masked.items()}
    assert len(pack_words(masked["b"], NINE)) == 2 * 201
    total = secagg.unmask_sum(travelled, survivors_self_seeds=SELF, dropped_pair_seeds={},
                              modulus=9)
    decoded = decode_ring_sum(total, width=NINE, levels=1, weight_sum=4, step=1.0,
                              denominator=1)
    assert np.array_equal(decoded, sum(inputs.values()).astype(np.float32))
    with pytest.raises(ValueError, match="9\\^5"):
        unpack_words(b"\xff\xff", NINE, 5)
    with pytest.raises(ValueError, match="below the modulus"):
        secagg.mask_input(np.full(3, 9, np.uint8), my_id="b", self_seed=SELF["b"],
                          pair_seeds=SEEDS["b"], modulus=9)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(RING_WIDTHS), st.integers(0, 41), st.integers(0, 2**32 - 1))
def test_words_packed_for_the_wire_come_back_modulo_their_ring(width: int, count: int,
                                                               seed: int) -> None:
    """6-bit words travel four to three bytes and 12-bit words two (each modulo its ring),
    the others as they are."""
    words = np.random.default_rng(seed).integers(0, 2**32, count, dtype=np.uint64).astype(
        ring_dtype(width))
    packed = pack_words(words, width)
    assert packed.dtype == np.uint8 and packed.size == packed_bytes(count, width)
    back = unpack_words(packed.tobytes(), width, count)
    assert back.dtype == ring_dtype(width)
    assert np.array_equal(back, words % ring_modulus(width) if width in (NINE, 4, 6, 12)
                          else words)
    with pytest.raises(ValueError, match="do not hold"):
        unpack_words(packed.tobytes() + b"\0", width, count)


def test_narrow_words_read_a_prefix_of_the_keystream() -> None:
    seed = bytes(range(32))
    wide = secagg.prg_mask(seed, 8).astype("<u4").tobytes()
    for width in (8, 16):
        narrow = secagg._keystream_words(seed, 8 * 4 * 8 // width // 4, ring_dtype(width))
        assert narrow.astype(ring_dtype(width).newbyteorder("<")).tobytes() == wide[:narrow.nbytes]


# -- pure: masking and unmasking at each width ----------------------------------------------------


def _masked(levels: dict[str, np.ndarray], counts: dict[str, int],
            width: int) -> dict[str, np.ndarray]:
    return {j: secagg.mask_input(to_ring(counts[j] * levels[j].astype(np.int64), width),
                                 my_id=j, self_seed=SELF[j], pair_seeds=SEEDS[j],
                                 modulus=mask_modulus(width))
            for j in levels}


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([("int4", (1, 1, 1, 1), 5), ("int8", (1, 1, 1, 1), 5),
                        ("int4", (3, 2, 4, 3), 12), ("int8", (3, 2, 4, 1), 12),
                        ("consensus", (1, 1, 1, 1), 5), ("consensus", (3, 2, 4, 3), 12)]),
       st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_masked_sums_unmask_to_the_weighted_levels(case: tuple[str, tuple[int, ...], int],
                                                   length: int, seed: int) -> None:
    kind, weights, k = case
    levels = CONSENSUS_LEVELS if kind == "consensus" else QUANTISED_LEVELS[kind]
    counts = dict(zip(MEMBERS, weights, strict=True))
    width = ring_width(levels, sum(weights))
    rng = np.random.default_rng(seed)
    inputs = {j: rng.integers(-levels, levels + 1, length) for j in MEMBERS}
    masked = _masked(inputs, counts, width)
    assert all(y.dtype == ring_dtype(width) for y in masked.values())
    # as they travel: 6-bit words each modulo 64, four to three bytes
    masked = {j: unpack_words(pack_words(y, width).tobytes(), width, length)
              for j, y in masked.items()}
    total = secagg.unmask_sum(masked, survivors_self_seeds=SELF, dropped_pair_seeds={},
                              modulus=mask_modulus(width))
    expected = sum(counts[j] * inputs[j] for j in MEMBERS)
    step = delta_step(0.05, levels)
    decoded = decode_ring_sum(total, width=width, levels=levels, weight_sum=sum(weights),
                              step=step, denominator=k)
    assert np.allclose(decoded, expected * (step / k), rtol=1e-6, atol=1e-9)
    # the integer sum itself is exact: signed words
    signed = total.astype(np.int64) % 2**width
    signed[signed >= 2 ** (width - 1)] -= 2**width
    assert np.array_equal(signed, expected)


@pytest.mark.parametrize("width", RING_WIDTHS)
def test_a_dropout_is_recovered_at_each_width(width: int) -> None:
    levels = {NINE: 1, 4: 2, 6: 7, 8: 7, 12: 127, 16: 1000, 32: 100_000}[width]
    rng = np.random.default_rng(width)
    inputs = {j: rng.integers(-levels, levels + 1, 33) for j in MEMBERS}
    counts = dict.fromkeys(MEMBERS, 1)
    masked = _masked(inputs, counts, width)
    survivors = {j: masked[j] for j in "cde"}  # b masked, then dropped
    dropped = {(j, "b"): SEEDS[j]["b"] for j in "cde"}
    total = secagg.unmask_sum(survivors, survivors_self_seeds={j: SELF[j] for j in "cde"},
                              dropped_pair_seeds=dropped, modulus=mask_modulus(width))
    decoded = decode_ring_sum(total, width=width, levels=levels, weight_sum=3, step=1.0,
                              denominator=1)
    assert np.array_equal(decoded, sum(inputs[j] for j in "cde").astype(np.float32))
    with pytest.raises(ValueError):  # without b's pair masks removed: not such a sum
        noisy = secagg.unmask_sum(survivors, survivors_self_seeds={j: SELF[j] for j in "cde"},
                                  dropped_pair_seeds={}, modulus=mask_modulus(width))
        decode_ring_sum(noisy, width=width, levels=levels, weight_sum=3, step=1.0,
                        denominator=1)


def test_unmasking_refuses_mixed_widths_and_the_decoder_a_wrap() -> None:
    masked = {j: np.zeros(4, np.uint8) for j in "bcd"}
    masked["d"] = np.zeros(4, np.uint16)
    with pytest.raises(ValueError, match="one width"):
        secagg.unmask_sum(masked, survivors_self_seeds={j: SELF[j] for j in "bcd"},
                          dropped_pair_seeds={})
    with pytest.raises(ValueError, match="wrap"):
        decode_ring_sum(np.zeros(3, np.uint8), width=8, levels=127, weight_sum=4, step=1.0,
                        denominator=5)
    with pytest.raises(ValueError, match="uint16"):
        decode_ring_sum(np.zeros(3, np.uint8), width=16, levels=127, weight_sum=4, step=1.0,
                        denominator=5)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6), st.integers(1, 8),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_a_consensus_step_stays_in_the_hull_of_the_estimates(raw: list[float], size: int,
                                                             dropped: bool, seed: int) -> None:
    """consensus_mix is a convex combination of the public estimates: whatever each one is
    (a clipped delta left it short of its model), no coordinate leaves their range, where
    CHOCO's additive step keeps moving the model by the same stale differences."""
    rng = np.random.default_rng(seed)
    weights = np.array(raw) / (sum(raw) + (0.5 if dropped else 0.0))  # a dropout: Σw < 1
    estimates = rng.uniform(-1, 1, (len(raw) + 1, size)).astype(np.float32)  # row 0: our own
    own = estimates[0]
    running = sum(w * e for w, e in zip(weights, estimates[1:], strict=True))
    mixed = consensus_mix(own, running.astype(np.float32), float(weights.sum()))
    assert np.all(mixed >= estimates.min(axis=0) - 1e-5)
    assert np.all(mixed <= estimates.max(axis=0) + 1e-5)
    if not dropped:
        assert np.allclose(mixed, running, atol=1e-6)


# -- wire ------------------------------------------------------------------------------------------


def test_the_width_travels_and_the_decoder_refuses_a_bad_one() -> None:
    base = MaskedInput("fed", 3, "s", "a", 0.2, 0.0, False, b"\0" * 6, (("x", b"c"),),
                       sparse=True)
    for width in (NINE, 6, 8, 12, 16):  # 6 bytes: 15 nine-value words, 8 six-bit, ...
        frame = wire.encode_frame(dataclasses.replace(base, width=width), 1 << 20)
        assert wire.decode_frame(frame, MaskedInput, 1 << 20).width == width
    frame = wire.encode_frame(dataclasses.replace(base, data=b"\0" * 8), 1 << 20)
    assert "width" not in wire.named(frame[wire.HEADER_BYTES:])  # 32 bits: left off
    assert wire.decode_frame(frame, MaskedInput, 1 << 20).width == 32
    for bad in (dataclasses.replace(base, width=10), dataclasses.replace(base, width=32),
                dataclasses.replace(base, width=6, data=b"\0" * 4),
                dataclasses.replace(base, width=12, data=b"\0" * 4),
                dataclasses.replace(base, width=NINE, data=b"\0" * 5),
                dataclasses.replace(base, width=2)):
        # 10, 2: no such ring; 6 bytes are no uint32 words; 6- and 12-bit words travel in 3
        # bytes, nine-value ones in 2
        with pytest.raises(wire.WireError):
            wire.decode_frame(wire.encode_frame(bad, 1 << 20), MaskedInput, 1 << 20)


# -- real nodes: a full round, then int4 rounds ----------------------------------------------------

NOW = 1000.0
CLIP = 0.05


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    """Aggregator a with neighbours b, c, d, e (each of which also neighbours the others): a
    degree-4 graph, every weight 1/5."""
    tmp = tmp_path_factory.mktemp("secagg_ring")
    config = SecAggConfig(enabled=True, min_contributors=3, full_every=10, delta_clip=CLIP)
    return loop.link_star({name: loop.secagg_node(tmp, name, config, CompressionConfig(kind="int4"))
                      for name in "abcde"}, NOW)


@pytest.fixture(autouse=True)
def _fresh_state(request: pytest.FixtureRequest) -> None:
    if "star" in request.fixturenames:
        loop.reset_star(request.getfixturevalue("star"), NOW)


def _publish(star: dict[str, Node], r: int, seed: int) -> dict[str, np.ndarray]:
    return loop.publish_round(star, r, seed, 0.02)


def _inputs(star: dict[str, Node], senders: str, r: int) -> dict[str, MaskedInput]:
    a = star["a"]
    out = {}
    for name in senders:
        node = star[name]
        chosen = secure_sparse.input_for(node, a.peer_id, r, node.own.vector, node.own.vector)
        assert chosen is not None
        out[name] = secure_round.masked_input(node, a.peer_id, r, chosen[0], False, chosen[1])
    return out


def _round(star: dict[str, Node], r: int, senders: str, gone: str = "") -> Any:
    a = star["a"]
    a.round = r - 1
    loop.wire_up(star, gone)
    for name, message in _inputs(star, senders, r).items():
        assert secure_round.accept_masked(a, star[name].peer_id, message)[0] is AckCode.OK
    return loop.run_secure_sum(a, r)


def test_full_then_int4_rounds_keep_the_running_sum_exactly(star) -> None:
    a = star["a"]
    loop.random_estimates(star, 5)
    estimates = _publish(star, 10, seed=10)
    result = _round(star, 10, MEMBERS)
    assert result is not None
    secure_sparse.mix(a, 10, a.own.vector.copy(), result, {}, [])
    assert np.abs(a.secagg.running - loop.weighted_sum(star, estimates, MEMBERS)).max() < 1e-5
    # round 11: int4 levels in 6-bit words (every weight 1/5: c = 1, K = 5, Σc = 4)
    assert secure_sparse.sparse_round(a, 11) and secure_sparse.width(a, a.peer_id, 11) == 6
    assert secure_sparse.words(a, a.peer_id, 11) == a.layout.size
    estimates = _publish(star, 11, seed=11)
    assert star["b"].own.last_encoded.scale == delta_step(CLIP, 7)
    messages = _inputs(star, "b", 11)
    assert messages["b"].width == 6
    assert len(messages["b"].data) == packed_bytes(a.layout.size, 6) == 12  # 15 words, 16 slots
    result = _round(star, 11, MEMBERS, gone="b")  # b masked, then vanished
    assert result is not None and len(result[2]) == 4
    record: dict[str, Any] = {}
    secure_sparse.mix(a, 11, a.own.vector.copy(), result, record, [])
    assert record["secure_aggregation"] == "4 contributors (int4)"
    # x̂ moved by exactly s·L on every side; the sum decodes Σ w s L exactly
    assert np.abs(a.secagg.running - loop.weighted_sum(star, estimates, MEMBERS)).max() < 1e-5


def test_a_dropout_before_masking_is_recovered_in_the_narrow_ring(star) -> None:
    a = star["a"]
    held = {name: node.own.vector.copy() for name, node in star.items()}
    a.secagg.running = loop.weighted_sum(star, held, MEMBERS).astype(np.float32)
    a.secagg.running_weight = 0.8
    a.secagg.base = frozenset(secure_round.neighbourhood(a, a.peer_id))
    estimates = _publish(star, 13, seed=13)
    result = _round(star, 13, "bce")  # d masked nothing: its 8-bit pair masks are rebuilt
    assert result is not None and len(result[2]) == 3
    expected = sum(0.2 * (estimates[n] - held[n]) for n in "bce")
    assert np.abs(result[0] - expected).max() < 1e-6


def test_words_of_the_wrong_width_or_length_are_refused(star, caplog) -> None:
    a = star["a"]
    a.round = 14
    _publish(star, 15, seed=15)
    good = _inputs(star, "c", 15)["c"]
    sender = star["c"].peer_id
    wide = dataclasses.replace(good, width=16, data=bytes(2 * len(good.data)))
    # a ring that exists, the right length for it, in a round whose ring is another
    twelve = dataclasses.replace(good, width=12, data=bytes(packed_bytes(a.layout.size, 12)))
    short = dataclasses.replace(good, data=bytes(len(good.data) - 1))
    before = a.rejections["layout"]
    with caplog.at_level("WARNING", logger="gossipfl"):
        for bad in (wide, twelve, short):
            status, reason = secure_round.accept_masked(a, sender, bad)
            assert status is AckCode.REJECTED and "6-bit words" in reason
    assert a.rejections["layout"] == before + 3
    assert caplog.text.count("masked input") >= 2 and "layout" in caplog.text
    assert secure_round.accept_masked(a, sender, good)[0] is AckCode.OK


def test_int8_rounds_use_12_bit_words(star) -> None:
    a = star["a"]
    int8 = dataclasses.replace(a.config, compression=CompressionConfig(kind="int8"))
    old = a.config
    a.config = int8
    try:
        assert secure_sparse.width(a, a.peer_id, 11) == 12
        assert secure_sparse.width(a, a.peer_id, 10) == 32  # full rounds stay 32-bit
        assert secure_sparse.step(a, 11) == delta_step(CLIP, 127)
    finally:
        a.config = old


def test_consensus_delta_rounds_send_finer_levels_in_12_bit_words(star) -> None:
    """``secagg.consensus_deltas``: the first consensus round is a delta round like the
    others (though a multiple of ``full_every`` here), the next multiple R is full, R + 1 sends
    deltas of CONSENSUS_LEVELS levels of the same clip in 12-bit words (Σc = 4 at degree 4),
    the sum decodes exactly, and the aggregator moves to the neighbourhood's mean of public
    estimates."""
    old = {name: node.config for name, node in star.items()}
    for node in star.values():
        node.config = dataclasses.replace(node.config, secagg=dataclasses.replace(
            node.config.secagg, consensus_deltas=True))
    a = star["a"]
    first, every = a.config.rounds, a.config.secagg.full_every
    last = first + every - first % every  # the first full consensus round
    try:
        assert first % every == 0 and secure_sparse.sparse_round(a, first)
        assert secure_sparse.width(a, a.peer_id, first) == 12
        assert not secure_sparse.sparse_round(a, last)
        assert secure_sparse.sparse_round(a, last + 1)
        assert secure_sparse.width(a, a.peer_id, last + 1) == 12
        assert secure_sparse.width(a, a.peer_id, first - 1) == 6  # training rounds keep int4
        loop.random_estimates(star, 21)
        _publish(star, last, seed=21)
        result = _round(star, last, MEMBERS)
        assert result is not None
        secure_sparse.mix(a, last, a.own.vector.copy(), result, {}, [])
        estimates = _publish(star, last + 1, seed=22)
        assert star["b"].own.last_encoded.scale == delta_step(CLIP, CONSENSUS_LEVELS)
        message = _inputs(star, "b", last + 1)["b"]
        assert message.width == 12 and len(message.data) == packed_bytes(a.layout.size, 12)
        result = _round(star, last + 1, MEMBERS)
        assert result is not None
        record: dict[str, Any] = {}
        secure_sparse.mix(a, last + 1, a.own.vector.copy(), result, record, [])
        assert record["secure_aggregation"] == "4 contributors (consensus deltas)"
        expected = loop.weighted_sum(star, estimates, MEMBERS)
        assert np.abs(a.secagg.running - expected).max() < 1e-5
        # the mean of the five public estimates (a's own weight 1/5), not x + Σ w (x̂_j − x̂_a)
        mean = expected + 0.2 * estimates["a"]
        assert np.abs(a.model - mean).max() < 1e-5
    finally:
        for name, node in star.items():
            node.config = old[name]
