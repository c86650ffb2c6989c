"""Tests for gossipfl.aggregation.compress (the CHOCO delta's compressors), the wire's Packed
delta (round trip and rejections) and the sender/receiver bookkeeping that composes them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.aggregation.compress import (
    Codec,
    CompressionKind,
    Encoded,
    compress,
    decode,
    int4_blocks,
    kept,
    quantise_int4,
    quantise_int8,
    random_k,
    shared_seed,
    to_fp16,
    top_k,
)
from gossipfl.config import CompressionConfig, ConfigError, NodeConfig, SecAggConfig
from gossipfl.gossip.wire import (
    Contribution,
    Packed,
    WireError,
    decode_body,
    encode_body,
    from_named,
    named,
)
from gossipfl.node.compression import compressor, from_packed, to_packed, vector_of
from gossipfl.node.estimates import OwnEstimate, PeerEstimates
from gossipfl.node.layout import Layout, LayoutError
from gossipfl.scenario.config import ScenarioConfig

FAST = settings(max_examples=60, deadline=None)
vectors = hnp.arrays(np.float32, st.integers(1, 200),
                     elements=st.floats(-1e4, 1e4, width=32, allow_nan=False))


# -- the compressors --------


def test_int8_exact_small_example() -> None:
    q = np.float32([1.27, -0.635, 0.0])
    encoded = quantise_int8(q, np.random.default_rng(0))
    assert encoded.codec is Codec.INT8 and encoded.scale == pytest.approx(0.01)
    # the peak is a level exactly, 0 stays 0; -63.5 rounds to -63 or -64
    assert encoded.values[0] == 127 and encoded.values[2] == 0
    assert encoded.values[1] in (-63, -64)
    assert encoded.nbytes == 3 + 4


def test_int8_of_zeros_is_zeros() -> None:
    encoded = quantise_int8(np.zeros(5, np.float32), np.random.default_rng(0))
    assert encoded.scale == 0.0 and not decode(encoded).any()


@FAST
@given(vectors, st.integers(0, 2**32 - 1))
def test_int8_error_is_within_one_level(q: np.ndarray, seed: int) -> None:
    encoded = quantise_int8(q, np.random.default_rng(seed))
    assert np.all(np.abs(decode(encoded) - q) <= encoded.scale * 1.0001 + 1e-30)


@settings(max_examples=15, deadline=None)
@given(hnp.arrays(np.float32, st.integers(2, 8),
                  elements=st.floats(-10, 10, width=32, allow_nan=False)),
       st.integers(0, 2**32 - 1))
def test_int8_stochastic_rounding_is_unbiased(q: np.ndarray, seed: int) -> None:
    rng = np.random.default_rng(seed)
    draws = 4000
    mean = np.mean([decode(quantise_int8(q, rng)) for _ in range(draws)], axis=0)
    scale = quantise_int8(q, rng).scale
    # each coordinate's error is a Bernoulli of at most one level: std ≤ scale / 2 / √draws
    assert np.all(np.abs(mean - q) <= 6 * (scale / 2) / np.sqrt(draws) + 1e-6)


@FAST
@given(vectors)
def test_fp16_round_trip_error_bound(q: np.ndarray) -> None:
    back = decode(to_fp16(q))
    assert back.dtype == np.float32 and np.isfinite(back).all()
    # half precision: 11 significant bits (relative error ≤ 2^-11), subnormals below 2^-14
    assert np.all(np.abs(back - q) <= np.abs(q) * 2.0**-11 + 2.0**-24)


def test_fp16_saturates_instead_of_overflowing() -> None:
    assert decode(to_fp16(np.float32([1e6, -1e6]))).tolist() == [65504.0, -65504.0]


def test_top_k_exact_small_example() -> None:
    encoded = top_k(np.float32([0.1, -5.0, 2.0, 0.3, -3.0]), 0.4)
    assert encoded.indices.tolist() == [1, 4] and encoded.values.tolist() == [-5.0, -3.0]
    assert decode(encoded).tolist() == [0.0, -5.0, 0.0, 0.0, -3.0]


@FAST
@given(vectors, st.floats(0.01, 1.0))
def test_top_k_keeps_the_k_largest(q: np.ndarray, ratio: float) -> None:
    encoded = top_k(q, ratio)
    k = kept(q.size, ratio)
    assert len(encoded.indices) == k and np.all(np.diff(encoded.indices.astype(int)) > 0)
    dropped = np.delete(np.abs(q), encoded.indices)
    if dropped.size:
        assert np.abs(encoded.values).min() >= dropped.max()
    back = decode(encoded)
    assert np.array_equal(back[encoded.indices], q[encoded.indices])


def test_random_k_is_drawn_from_the_shared_seed() -> None:
    q = np.arange(100, dtype=np.float32)
    seed = shared_seed("fed", "peer", 7)
    a = random_k(q, 0.1, np.random.default_rng(seed))
    b = random_k(q, 0.1, np.random.default_rng(shared_seed("fed", "peer", 7)))
    c = random_k(q, 0.1, np.random.default_rng(shared_seed("fed", "peer", 8)))
    assert len(a.indices) == 10 and np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert np.array_equal(a.values, q[a.indices])


def test_kept_is_at_least_one_and_at_most_all() -> None:
    assert kept(0, 0.5) == 0 and kept(10, 0.01) == 1 and kept(10, 1.0) == 10
    assert kept(10, 0.25) == 3


# -- decode(encode(q)) is what the sender applied and what the receiver applies --------


def test_int4_exact_small_example() -> None:
    # one block: scale = max|q| / 7 = 0.1; 0.7 and -0.7 are exact levels, 0.35 rounds to 3 or 4
    q = np.float32([0.7, -0.7, 0.0, 0.35, 0.1])
    encoded = quantise_int4(q, np.random.default_rng(0))
    assert encoded.codec is Codec.INT4 and encoded.values.dtype == np.uint8
    assert encoded.values.size == 3 and encoded.scales is not None
    assert encoded.scales.tolist() == [pytest.approx(0.1)]
    got = decode(encoded)
    assert got[:3].tolist() == pytest.approx([0.7, -0.7, 0.0])
    assert got[3] == pytest.approx(0.3) or got[3] == pytest.approx(0.4)
    assert got[4] == pytest.approx(0.1)
    assert encoded.values[-1] >> 4 == 0  # the odd size's pad nibble is 0
    assert encoded.nbytes == 3 + 4


def test_int4_scales_are_per_block() -> None:
    # a block of large values does not round away a block of small ones
    q = np.concatenate([np.full(128, 100.0), np.full(128, 0.01)]).astype(np.float32)
    encoded = quantise_int4(q, np.random.default_rng(0))
    assert int4_blocks(q.size) == 2 and encoded.scales is not None
    assert np.allclose(decode(encoded), q, rtol=1e-5)


@FAST
@given(vectors, st.integers(0, 2**32 - 1))
def test_int4_error_is_within_one_level_of_its_block(q: np.ndarray, seed: int) -> None:
    encoded = quantise_int4(q, np.random.default_rng(seed))
    assert encoded.scales is not None
    per = np.repeat(encoded.scales, 128)[:q.size]
    assert (np.abs(decode(encoded) - q) <= per * 1.0001 + 1e-6).all()


def test_int4_stochastic_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(5)
    q = rng.normal(size=300).astype(np.float32)
    draws = 3000
    mean = np.mean([decode(quantise_int4(q, rng)) for _ in range(draws)], axis=0)
    scale = float(np.max(quantise_int4(q, rng).scales))
    # each coordinate's rounding error has variance ≤ scale²/4: 6 standard errors of the mean
    assert np.abs(mean - q).max() < 6 * scale / 2 / np.sqrt(draws)


def test_int4_of_zeros_and_of_nothing() -> None:
    zeros = quantise_int4(np.zeros(5, np.float32), np.random.default_rng(0))
    assert decode(zeros).tolist() == [0.0] * 5
    empty = quantise_int4(np.zeros(0, np.float32), np.random.default_rng(0))
    assert decode(empty).size == 0 and empty.values.size == 0


def test_the_wire_and_the_compressor_agree_on_the_int4_block() -> None:
    from gossipfl.aggregation import compress as maths
    from gossipfl.gossip import wire_contribution
    assert maths.INT4_BLOCK == wire_contribution.INT4_BLOCK


@pytest.mark.parametrize("kind", ["int8", "int4", "fp16", "topk", "randk"])
def test_sender_and_receiver_apply_the_same_decoded_delta(kind: str) -> None:
    rng = np.random.default_rng(3)
    start = rng.normal(size=50).astype(np.float32)
    own = OwnEstimate(start.copy(), round=0)
    peer = PeerEstimates.empty(50)
    peer.apply(_message(1, "full", -1, None), start.copy())
    layout = Layout(("w",), ((50,),))
    for r in (1, 2, 3):
        half = (own.vector + rng.normal(size=50)).astype(np.float32)
        comp = compressor(CompressionConfig(kind=kind, ratio=0.2), "fed", "S", r)
        delta = own.publish(half, r, compress=comp)
        assert own.last_encoded is not None
        assert np.array_equal(delta, decode(own.last_encoded))
        packed = to_packed(own.last_encoded)
        message = decode_body(encode_body(_message(r + 1, "delta", r, packed)), Contribution)
        received = vector_of(layout, message)
        assert np.array_equal(received, delta)
        peer.apply(message, received)
        # the receiver's copy is bit-identical to the sender's public estimate
        assert np.array_equal(peer.peers["S"].vector, own.vector)
        own.round = r + 1  # keep the message rounds and the estimate's in step


def test_no_compression_publishes_the_float32_delta() -> None:
    own = OwnEstimate(np.zeros(3, np.float32))
    delta = own.publish(np.float32([1, 2, 3]), 0,
                        compress=compressor(CompressionConfig(), "f", "s", 0))
    assert own.last_encoded is None and delta.tolist() == [1, 2, 3]


def test_compress_none_is_none() -> None:
    assert compress(CompressionKind.NONE, np.ones(3, np.float32), 1.0,
                    np.random.default_rng(0)) is None


# -- the wire --------


def _message(round_: int, kind: str, base: int, packed: Packed | None) -> Contribution:
    return Contribution(federation="fed", round=round_, sender="S", receiver="R", degree=2,
                        kind=kind, base_round=base, disagreement=0.0, done=False, tensors=(),
                        packed=packed)


@pytest.mark.parametrize("encoded", [
    quantise_int8(np.float32([0.5, -1.0, 0.25]), np.random.default_rng(1)),
    quantise_int4(np.float32([0.5, -1.0, 0.25]), np.random.default_rng(1)),
    quantise_int4(np.arange(300, dtype=np.float32), np.random.default_rng(1)),
    to_fp16(np.float32([0.5, -1.0, 0.25])),
    top_k(np.float32([0.5, -1.0, 0.25]), 0.5),
])
def test_packed_round_trip(encoded: Encoded) -> None:
    message = _message(2, "delta", 1, to_packed(encoded))
    got = decode_body(encode_body(message), Contribution)
    assert got == message
    assert np.array_equal(from_packed(got.packed), decode(encoded))


def test_contribution_without_packed_has_no_packed_key() -> None:
    body = named(encode_body(_message(2, "full", -1, None)))
    assert "packed" not in body


def _with_packed(packed: Any, **changes: Any) -> Contribution:
    body = named(encode_body(_message(2, "delta", 1, None)))
    body.update(packed=packed, **changes)
    return decode_body(from_named(body), Contribution)


F32 = np.float32([1.0, 2.0]).tobytes()
U32 = np.uint32([0, 3]).tobytes()


@pytest.mark.parametrize(("packed", "rule"), [
    ("x", "must be \\[codec"),
    (["int8", 3, 0.1, b"\x01\x02"], "must be \\[codec"),
    (["zip", 2, 0.0, F32, b""], "unknown"),
    (["int8", 3, 0.1, b"\x01\x02", b""], "2 values for size 3"),
    (["int8", 2, float("nan"), b"\x01\x02", b""], "finite"),
    (["int8", 2, float("inf"), b"\x01\x02", b""], "finite"),
    (["int8", 2, -1.0, b"\x01\x02", b""], ">= 0"),
    (["int8", 2, 1.0, b"\x01\x02", U32], "values for size"),
    (["fp16", 2, 0.0, b"\x00\x3c\x00", b""], "whole count"),
    (["fp16", 2, 0.0, np.float16([1, np.inf]).tobytes(), b""], "NaN or infinite"),
    (["fp16", 2, 1.0, np.float16([1, 2]).tobytes(), b""], "no scale"),
    (["sparse", 4, 0.0, F32, U32[:4]], "index bytes"),
    (["sparse", 3, 0.0, F32, U32], "below the size"),
    (["sparse", 4, 0.0, F32, np.uint32([2, 2]).tobytes()], "strictly increasing"),
    (["sparse", 4, 0.0, F32, np.uint32([3, 1]).tobytes()], "strictly increasing"),
    (["sparse", 1, 0.0, F32, U32], "2 values"),
    (["sparse", 9, 0.0, np.float32([1, np.nan]).tobytes(), U32], "NaN or infinite"),
    (["sparse", -1, 0.0, b"", b""], "outside"),
    (["sparse", 2**40, 0.0, b"", b""], "outside"),
    (["int8", 2, 0.1, "ab", b""], "bytes"),
    (["int4", 3, 0.0, b"\x77", np.float32([1]).tobytes()], "value bytes"),
    (["int4", 3, 0.0, b"\x77\x07", b""], "scale bytes"),
    (["int4", 3, 0.0, b"\x77\x07", np.float32([1, 1]).tobytes()], "scale bytes"),
    (["int4", 3, 0.0, b"\x77\x07", np.float32([np.nan]).tobytes()], "finite"),
    (["int4", 3, 0.0, b"\x77\x07", np.float32([-1]).tobytes()], ">= 0"),
    (["int4", 2, 0.0, b"\xf7", np.float32([1]).tobytes()], "0..14"),
    (["int4", 2, 0.0, b"\x7f", np.float32([1]).tobytes()], "0..14"),
    (["int4", 3, 0.0, b"\x77\x17", np.float32([1]).tobytes()], "pad nibble"),
    (["int4", 2, 0.5, b"\x77", np.float32([1]).tobytes()], "no scale"),
])
def test_malformed_packed_is_rejected(packed: Any, rule: str) -> None:
    with pytest.raises(WireError, match=rule):
        _with_packed(packed)


def test_packed_only_on_a_delta_without_tensors() -> None:
    good = to_packed(to_fp16(np.float32([1.0])))._to_wire()
    with pytest.raises(WireError, match="delta without tensors"):
        _with_packed(good, kind="full", base_round=-1)
    with pytest.raises(WireError, match="delta without tensors"):
        _with_packed(good, tensors=[["w", "float32", [1], F32[:4]]])


def test_packed_of_the_wrong_size_is_a_layout_error() -> None:
    message = _message(2, "delta", 1, to_packed(to_fp16(np.float32([1.0, 2.0]))))
    with pytest.raises(LayoutError, match="2 parameters"):
        vector_of(Layout(("w",), ((3,),)), message)


# -- config --------


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"kind": "gzip"}, "compression.kind"),
    ({"kind": "topk", "ratio": 0.0}, "ratio"),
    ({"kind": "topk", "ratio": 1.5}, "ratio"),
])
def test_compression_config_is_validated(kwargs: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        CompressionConfig(**kwargs)


def test_compression_with_secagg_is_refused() -> None:
    # int8 and int4 are summed at a public step (gossipfl/node/secure_sparse.py); fp16 is not
    with pytest.raises(ConfigError, match="must be none, randk, int8 or int4"):
        NodeConfig(secagg=SecAggConfig(enabled=True),
                   compression=CompressionConfig(kind="fp16"))


def test_scenario_refuses_compression_with_secagg() -> None:
    with pytest.raises(ConfigError, match="must be none, randk, int8 or int4"):
        ScenarioConfig(secagg=SecAggConfig(enabled=True),
                       compression=CompressionConfig(kind="topk"))
    assert ScenarioConfig(compression=CompressionConfig(kind="topk")).compression.ratio == 0.1


@pytest.mark.parametrize(("kind", "gamma", "warns"), [
    ("int4", 1.0, True), ("int8", 1.0, True), ("topk", 1.0, True), ("randk", 1.0, True),
    ("int4", 0.7, False), ("randk", 0.3, False), ("fp16", 1.0, False), ("none", 1.0, False),
])
def test_a_lossy_compression_at_gamma_one_is_warned_of(kind: str, gamma: float,
                                                       warns: bool) -> None:
    from gossipfl.node.compression import gamma_warning

    warning = gamma_warning(kind, gamma)
    assert (warning is not None) is warns
    if warns:
        assert kind in warning and "protocol.gamma = 1" in warning
