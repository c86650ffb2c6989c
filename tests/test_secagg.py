"""Tests for gossipfl.crypto.secagg: quantisation, key agreement, PRG, double masking, rounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from gossipfl.crypto import shamir
from gossipfl.crypto.secagg import (
    DEFAULT_CLIP,
    DEFAULT_SCALE,
    MIN_CONTRIBUTORS,
    RoundKeys,
    agree_seed,
    check_contributors,
    check_no_wrap,
    check_threshold,
    decrypt_shares,
    dequantise_sum,
    encrypt_shares,
    fresh_self_seed,
    mask_input,
    max_contributors,
    pair_sign,
    prg_mask,
    quantisation_offset,
    quantise,
    run_simulation,
    seed_context,
    share_ids_for,
    simulate_round,
    unmask_sum,
)

FAST = settings(max_examples=40, deadline=None)
CONTEXT = seed_context("fed", "node-i", 7)


def _keys(seed: int) -> RoundKeys:
    rng = np.random.default_rng(seed)
    return RoundKeys.from_private(rng.bytes(32), rng.bytes(32))


def _f32_slack(values: np.ndarray) -> np.ndarray:
    """Room for the float32 rounding of a returned sum (one ulp, generously)."""
    return np.abs(values) * 2.0**-23 + 1e-30


def _uniform_p_value(words: np.ndarray, shift: int) -> float:
    """Chi-square p-value of the byte at ``shift`` of uint32 words against uniform."""
    counts = np.bincount(
        ((words >> np.uint32(shift)) & np.uint32(0xFF)).astype(np.int64), minlength=256
    )
    return float(stats.chisquare(counts).pvalue)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


# --------------------------------------------------------------------------- quantisation

QUANT = st.tuples(
    st.sampled_from([0.5, 1.0, 3.3, DEFAULT_CLIP]),
    st.sampled_from([2**10, 1000, DEFAULT_SCALE, 2**20]),
    st.integers(1, 12),
    st.integers(1, 300),
    st.integers(0, 2**32),
)


@FAST
@given(QUANT)
def test_round_to_nearest_sum_within_count_over_two_scale(case: tuple) -> None:
    clip, scale, count, length, seed = case
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(-clip, clip, size=(count, length)).astype(np.float32)
    total = np.zeros(length, dtype=np.uint32)
    for v in inputs:
        total += quantise(v, clip, scale)
    got = dequantise_sum(total, count, clip, scale)
    assert got.dtype == np.float32
    plain = inputs.astype(np.float64).sum(axis=0)
    bound = count / (2 * scale) + _f32_slack(plain)
    assert np.all(np.abs(got - plain) <= bound)


@FAST
@given(QUANT)
def test_stochastic_rounding_sum_within_count_over_scale(case: tuple) -> None:
    clip, scale, count, length, seed = case
    rng = np.random.default_rng(seed)
    inputs = rng.uniform(-clip, clip, size=(count, length)).astype(np.float32)
    total = np.zeros(length, dtype=np.uint32)
    for v in inputs:
        total += quantise(v, clip, scale, rng=rng)
    got = dequantise_sum(total, count, clip, scale)
    plain = inputs.astype(np.float64).sum(axis=0)
    assert np.all(np.abs(got - plain) < count / scale + _f32_slack(plain))


def test_stochastic_rounding_is_unbiased_and_nearest_is_not() -> None:
    scale = 2**10
    v = np.full(200_000, 0.25 / scale, dtype=np.float64)  # a quarter of a level
    offset = quantisation_offset(1.0, scale)
    nearest = quantise(v, 1.0, scale).astype(np.int64) - offset
    stochastic = quantise(v, 1.0, scale, rng=np.random.default_rng(0)).astype(np.int64) - offset
    assert np.all(nearest == 0)
    assert set(np.unique(stochastic)) == {0, 1}
    assert abs(stochastic.mean() - 0.25) < 0.01


def test_clipping_and_range() -> None:
    clip, scale = 2.0, 2**16
    offset = quantisation_offset(clip, scale)
    q = quantise(np.array([-1e9, -2.5, -2.0, 0.0, 2.0, 3.0, np.finfo(np.float32).max]), clip, scale)
    assert q.dtype == np.uint32
    assert q.tolist() == [0, 0, 0, offset, 2 * offset, 2 * offset, 2 * offset]
    back = dequantise_sum(q[[1, 5]], 1, clip, scale)
    assert back.tolist() == [-clip, clip]  # values outside were clipped to the range
    for rng in (None, np.random.default_rng(1)):
        wide = np.random.default_rng(2).normal(0, 10, 10_000)
        got = quantise(wide, clip, scale, rng=rng)
        assert got.min() >= 0 and got.max() <= 2 * offset
    assert quantise(np.zeros((2, 3)), clip, scale).shape == (2, 3)


def test_non_finite_and_bad_parameters_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        quantise(np.array([0.0, np.nan]), 8.0, 2**18)
    with pytest.raises(ValueError, match="finite"):
        quantise(np.array([np.inf]), 8.0, 2**18)
    with pytest.raises(ValueError, match="clip"):
        quantise(np.zeros(3), 0.0, 2**18)
    with pytest.raises(ValueError, match="scale"):
        quantise(np.zeros(3), 8.0, 0)
    with pytest.raises(ValueError, match="below 2\\*\\*32"):
        quantise(np.zeros(3), 8.0, 2**28)  # one input alone would not fit


def test_default_parameters_fit_1023_contributors_and_no_more() -> None:
    assert quantisation_offset(DEFAULT_CLIP, DEFAULT_SCALE) == 2**21
    assert max_contributors(DEFAULT_CLIP, DEFAULT_SCALE) == 1023
    check_no_wrap(1023, DEFAULT_CLIP, DEFAULT_SCALE)
    with pytest.raises(ValueError, match="could wrap"):
        check_no_wrap(1024, DEFAULT_CLIP, DEFAULT_SCALE)
    with pytest.raises(ValueError, match="at least 1"):
        check_no_wrap(0, DEFAULT_CLIP, DEFAULT_SCALE)
    top = quantise(np.array([DEFAULT_CLIP, -DEFAULT_CLIP]), DEFAULT_CLIP, DEFAULT_SCALE)
    total = np.zeros(2, dtype=np.uint32)
    for _ in range(1023):
        total += top
    assert dequantise_sum(total, 1023, DEFAULT_CLIP, DEFAULT_SCALE).tolist() == [
        1023 * DEFAULT_CLIP,
        -1023 * DEFAULT_CLIP,
    ]
    assert int((top[0].astype(np.uint64) * 1024) % 2**32) == 0  # one more wraps to zero
    with pytest.raises(ValueError, match="could wrap"):
        dequantise_sum(total, 1024, DEFAULT_CLIP, DEFAULT_SCALE)


@FAST
@given(st.floats(0.01, 100.0), st.integers(1, 2**22))
def test_max_contributors_is_the_exact_no_wrap_limit(clip: float, scale: int) -> None:
    offset = quantisation_offset(clip, scale)
    if 2 * offset > 2**32 - 1:
        with pytest.raises(ValueError):
            max_contributors(clip, scale)
        return
    limit = max_contributors(clip, scale)
    assert limit * 2 * offset <= 2**32 - 1 < (limit + 1) * 2 * offset
    check_no_wrap(limit, clip, scale)
    with pytest.raises(ValueError, match="could wrap"):
        check_no_wrap(limit + 1, clip, scale)


def test_dequantise_refuses_impossible_sums() -> None:
    offset = quantisation_offset(DEFAULT_CLIP, DEFAULT_SCALE)
    s = np.array([3 * 2 * offset + 1], dtype=np.uint32)
    with pytest.raises(ValueError, match="not the sum of 3"):
        dequantise_sum(s, 3, DEFAULT_CLIP, DEFAULT_SCALE)
    with pytest.raises(ValueError, match="uint32"):
        dequantise_sum(s.astype(np.int64), 3, DEFAULT_CLIP, DEFAULT_SCALE)


# --------------------------------------------------------------------------- keys and PRG


def test_agree_seed_is_symmetric_and_per_context() -> None:
    a, b, c = _keys(1), _keys(2), _keys(3)
    ab = agree_seed(a.mask_private, b.mask_public, context=CONTEXT)
    assert len(ab) == 32
    assert ab == agree_seed(b.mask_private, a.mask_public, context=CONTEXT)
    assert ab != agree_seed(a.mask_private, c.mask_public, context=CONTEXT)
    others = [
        seed_context("fed", "node-i", 8),  # next round
        seed_context("fed", "node-j", 7),  # another aggregator
        seed_context("fed2", "node-i", 7),  # another federation
    ]
    seeds = {agree_seed(a.mask_private, b.mask_public, context=ctx) for ctx in others}
    assert len(seeds) == 3 and ab not in seeds
    # The share keys give a different seed than the mask keys.
    assert ab != agree_seed(a.share_private, b.share_public, context=CONTEXT)


def test_seed_context_is_unambiguous() -> None:
    assert seed_context("ab", "c", 1) != seed_context("a", "bc", 1)
    assert seed_context("a", "b", 1) != seed_context("a", "b", 256)
    with pytest.raises(ValueError, match="non-empty"):
        seed_context("", "b", 1)
    with pytest.raises(ValueError, match="round_number"):
        seed_context("a", "b", -1)


def test_agree_seed_refuses_bad_keys() -> None:
    a = _keys(1)
    with pytest.raises(ValueError, match="oneself"):
        agree_seed(a.mask_private, a.mask_public, context=CONTEXT)
    with pytest.raises(ValueError, match="low-order"):
        agree_seed(a.mask_private, bytes(32), context=CONTEXT)
    with pytest.raises(ValueError, match="their_public must be 32 bytes"):
        agree_seed(a.mask_private, bytes(31), context=CONTEXT)
    with pytest.raises(ValueError, match="context"):
        agree_seed(a.mask_private, _keys(2).mask_public, context=b"")


def test_prg_mask_is_chacha20_deterministic_and_prefix_stable() -> None:
    # RFC 8439 A.1 test vector 1: key and nonce all zero, block counter 0.
    expected = bytes.fromhex("76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7")
    assert prg_mask(bytes(32), 8).astype("<u4").tobytes() == expected
    seed = bytes(range(32))
    long = prg_mask(seed, 1000)
    assert long.dtype == np.uint32 and long.shape == (1000,)
    assert np.array_equal(long, prg_mask(seed, 1000))
    assert np.array_equal(long[:17], prg_mask(seed, 17))
    assert not np.array_equal(long, prg_mask(bytes(31) + b"\1", 1000))
    assert prg_mask(seed, 0).shape == (0,)
    long[0] += 1  # the result is an ordinary writable array
    with pytest.raises(ValueError, match="seed must be 32 bytes"):
        prg_mask(b"short", 4)
    with pytest.raises(ValueError, match="length"):
        prg_mask(seed, -1)


def test_prg_mask_looks_uniform() -> None:
    words = prg_mask(bytes(range(32)), 100_000)
    assert _uniform_p_value(words, 24) > 0.001
    assert _uniform_p_value(words, 0) > 0.001


def test_round_keys() -> None:
    keys = RoundKeys.generate()
    assert keys != RoundKeys.generate()
    assert RoundKeys.from_private(keys.mask_private, keys.share_private) == keys
    assert keys.mask_private.hex() not in repr(keys)
    assert keys.share_private.hex() not in repr(keys)
    with pytest.raises(ValueError, match="public half"):
        RoundKeys(keys.mask_private, keys.share_public, keys.share_private, keys.share_public)
    with pytest.raises(ValueError, match="must differ"):
        RoundKeys.from_private(keys.mask_private, keys.mask_private)
    seed = fresh_self_seed()
    assert len(seed) == 32 and seed != fresh_self_seed()
    with pytest.raises(ValueError, match="32 bytes"):
        fresh_self_seed(lambda n: bytes(n - 1))


def test_sealed_shares_open_only_for_their_recipient_and_round() -> None:
    alice, bob, eve = _keys(1), _keys(2), _keys(3)
    b_share = shamir.encode_share(2, bytes(65) + b"\1")
    c_share = shamir.encode_share(2, bytes(65) + b"\2")
    sealed = encrypt_shares(
        sender="alice",
        recipient="bob",
        context=CONTEXT,
        self_seed_share=b_share,
        mask_key_share=c_share,
        sender_share_private=alice.share_private,
        recipient_share_public=bob.share_public,
    )
    assert b_share not in sealed and c_share not in sealed
    opened = decrypt_shares(
        sealed,
        sender="alice",
        recipient="bob",
        context=CONTEXT,
        recipient_share_private=bob.share_private,
        sender_share_public=alice.share_public,
    )
    assert opened == (b_share, c_share)
    with pytest.raises(ValueError, match="authenticate"):  # the relay cannot open it
        decrypt_shares(
            sealed,
            sender="alice",
            recipient="bob",
            context=CONTEXT,
            recipient_share_private=eve.share_private,
            sender_share_public=alice.share_public,
        )
    with pytest.raises(ValueError, match="this round"):  # replayed into another round
        decrypt_shares(
            sealed,
            sender="alice",
            recipient="bob",
            context=seed_context("fed", "node-i", 8),
            recipient_share_private=bob.share_private,
            sender_share_public=alice.share_public,
        )


# --------------------------------------------------------------------------- masking


def _three_members(length: int, seed: int = 0):
    members = ["a", "b", "c"]
    keys = {m: _keys(seed * 10 + i) for i, m in enumerate(members)}
    self_seeds = {
        m: np.random.default_rng(seed * 10 + 5 + i).bytes(32) for i, m in enumerate(members)
    }
    pair = {
        m: {
            k: agree_seed(keys[m].mask_private, keys[k].mask_public, context=CONTEXT)
            for k in members
            if k != m
        }
        for m in members
    }
    rng = np.random.default_rng(seed)
    qs = {m: rng.integers(0, 2**20, length, dtype=np.uint32) for m in members}
    masked = {
        m: mask_input(qs[m], my_id=m, self_seed=self_seeds[m], pair_seeds=pair[m]) for m in members
    }
    return members, self_seeds, pair, qs, masked


def test_pair_sign() -> None:
    assert pair_sign("a", "b") == 1 and pair_sign("b", "a") == -1
    with pytest.raises(ValueError, match="itself"):
        pair_sign("a", "a")


def test_masks_cancel_exactly_without_dropouts() -> None:
    members, self_seeds, _, qs, masked = _three_members(5000)
    for m in members:
        assert not np.array_equal(masked[m], qs[m])
    total = unmask_sum(masked, survivors_self_seeds=self_seeds, dropped_pair_seeds={})
    assert np.array_equal(total, qs["a"] + qs["b"] + qs["c"])
    # Without removing the self masks the sum is garbage.
    wrong = unmask_sum(
        masked, survivors_self_seeds={**self_seeds, "a": bytes(32)}, dropped_pair_seeds={}
    )
    assert not np.array_equal(wrong, total)


@pytest.mark.parametrize("dropped", [["a"], ["c"], ["b", "d"], ["a", "e"]])
def test_unmask_sum_signs_with_dropped_members(dropped: list[str]) -> None:
    members = ["a", "b", "c", "d", "e"]
    keys = {m: _keys(i + 20) for i, m in enumerate(members)}
    self_seeds = {m: bytes([i + 1]) * 32 for i, m in enumerate(members)}
    rng = np.random.default_rng(3)
    qs = {m: rng.integers(0, 2**20, 3000, dtype=np.uint32) for m in members}

    def seed(x: str, y: str) -> bytes:
        return agree_seed(keys[x].mask_private, keys[y].mask_public, context=CONTEXT)

    masked = {
        m: mask_input(
            qs[m],
            my_id=m,
            self_seed=self_seeds[m],
            pair_seeds={k: seed(m, k) for k in members if k != m},
        )
        for m in members
    }
    survivors = [m for m in members if m not in dropped]
    total = unmask_sum(
        {m: masked[m] for m in survivors},
        survivors_self_seeds={m: self_seeds[m] for m in survivors},
        # Rebuilt by the aggregator from the dropped member's mask key: (survivor, dropped).
        dropped_pair_seeds={(j, d): seed(d, j) for j in survivors for d in dropped},
    )
    expected = np.zeros(3000, dtype=np.uint32)
    for m in survivors:
        expected += qs[m]
    assert np.array_equal(total, expected)


def test_mask_input_refusals() -> None:
    q = np.zeros(10, dtype=np.uint32)
    seeds = {"b": bytes(32), "c": bytes([1]) * 32}
    with pytest.raises(ValueError, match="MIN_CONTRIBUTORS"):
        mask_input(q, my_id="a", self_seed=bytes(32), pair_seeds={"b": bytes(32)})
    with pytest.raises(ValueError, match="itself"):
        mask_input(q, my_id="a", self_seed=bytes(32), pair_seeds={**seeds, "a": bytes(32)})
    with pytest.raises(ValueError, match="uint32"):
        mask_input(q.astype(np.int64), my_id="a", self_seed=bytes(32), pair_seeds=seeds)
    with pytest.raises(ValueError, match="self_seed"):
        mask_input(q, my_id="a", self_seed=bytes(16), pair_seeds=seeds)
    with pytest.raises(ValueError, match="pair seed 'c'"):
        mask_input(q, my_id="a", self_seed=bytes(32), pair_seeds={**seeds, "c": b"x"})


def test_unmask_sum_refusals() -> None:
    _, self_seeds, _, _, masked = _three_members(10)
    with pytest.raises(ValueError, match="MIN_CONTRIBUTORS"):
        unmask_sum(
            {"a": masked["a"], "b": masked["b"]},
            survivors_self_seeds={"a": self_seeds["a"], "b": self_seeds["b"]},
            dropped_pair_seeds={},
        )
    with pytest.raises(ValueError, match="one seed per masked input"):
        unmask_sum(masked, survivors_self_seeds={"a": self_seeds["a"]}, dropped_pair_seeds={})
    with pytest.raises(ValueError, match="is a survivor"):
        unmask_sum(
            masked, survivors_self_seeds=self_seeds, dropped_pair_seeds={("a", "b"): bytes(32)}
        )
    with pytest.raises(ValueError, match="not a survivor"):
        unmask_sum(
            masked, survivors_self_seeds=self_seeds, dropped_pair_seeds={("x", "d"): bytes(32)}
        )
    with pytest.raises(ValueError, match="missing pair seeds"):
        unmask_sum(
            masked,
            survivors_self_seeds=self_seeds,
            dropped_pair_seeds={("a", "d"): bytes(32), ("b", "d"): bytes(32)},
        )
    with pytest.raises(ValueError, match="same length"):
        unmask_sum(
            {**masked, "c": masked["c"][:5]}, survivors_self_seeds=self_seeds, dropped_pair_seeds={}
        )


def test_single_masked_contribution_is_uniform_and_uncorrelated() -> None:
    rng = np.random.default_rng(12345)
    n = 100_000
    inputs = {m: rng.normal(0, 1, n).astype(np.float32) for m in ("a", "b", "c", "d")}
    transcript = run_simulation(inputs, 3, set(), rng=rng)
    for m, y in transcript.masked.items():
        assert _uniform_p_value(y, 24) > 0.001
        assert _uniform_p_value(y, 0) > 0.001
        assert abs(_pearson(y, inputs[m])) < 0.02
    # The same checks fail for the unmasked quantised input: they can tell.
    q = quantise(inputs["a"], DEFAULT_CLIP, DEFAULT_SCALE)
    assert _uniform_p_value(q, 24) < 1e-10
    assert _pearson(q, inputs["a"]) > 0.99


# --------------------------------------------------------------------------- whole rounds


@settings(max_examples=12, deadline=None)
@given(st.integers(MIN_CONTRIBUTORS, 8), st.integers(1, 2000), st.integers(0, 2**32))
def test_secure_sum_equals_plain_sum(count: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    inputs = {f"peer-{i}": rng.uniform(-2, 2, length).astype(np.float32) for i in range(count)}
    got = simulate_round(inputs, count // 2 + 1, set(), rng=rng)
    plain = np.sum([v.astype(np.float64) for v in inputs.values()], axis=0)
    assert got.dtype == np.float32 and got.shape == (length,)
    assert np.all(np.abs(got - plain) < count / DEFAULT_SCALE + _f32_slack(plain))


def test_inputs_outside_the_clip_range_are_clipped_in_the_sum() -> None:
    inputs = {m: np.array([100.0, -100.0, 0.5], dtype=np.float32) for m in "abc"}
    got = simulate_round(inputs, 2, set(), clip=1.0, scale=2**16, rng=np.random.default_rng(0))
    assert np.allclose(got, [3.0, -3.0, 1.5], atol=3 / 2**16)


@pytest.mark.parametrize(
    ("count", "threshold", "dropped"),
    [(4, 3, {"p1"}), (5, 3, {"p0"}), (5, 3, {"p1", "p4"}), (6, 4, {"p2", "p3"}), (8, 5, {"p7"})],
)
def test_dropouts_after_masking_still_give_the_survivors_sum(
    count: int, threshold: int, dropped: set[str]
) -> None:
    rng = np.random.default_rng(count * 100 + len(dropped))
    inputs = {f"p{i}": rng.normal(0, 1, 4000).astype(np.float32) for i in range(count)}
    transcript = run_simulation(inputs, threshold, dropped, rng=rng)
    assert set(transcript.dropped) == dropped
    assert len(transcript.responders) == threshold
    survivors_sum = np.sum([inputs[m].astype(np.float64) for m in transcript.survivors], axis=0)
    everyone = np.sum([v.astype(np.float64) for v in inputs.values()], axis=0)
    bound = len(transcript.survivors) / DEFAULT_SCALE + _f32_slack(survivors_sum)
    assert np.all(np.abs(transcript.result - survivors_sum) < bound)
    assert not np.allclose(transcript.result, everyone, atol=1e-3)


def test_fewer_survivors_than_threshold_cannot_unmask() -> None:
    rng = np.random.default_rng(1)
    inputs = {f"p{i}": rng.normal(0, 1, 100).astype(np.float32) for i in range(6)}
    with pytest.raises(ValueError, match="fewer than threshold=4"):
        simulate_round(inputs, 4, {"p0", "p1", "p2"}, rng=rng)
    # The same at the share level: the shares of threshold - 1 survivors do not rebuild a seed.
    transcript = run_simulation(inputs, 4, {"p0", "p1"}, rng=rng)
    owner = transcript.survivors[0]
    shares = dict(shamir.decode_share(data) for data in transcript.self_seed_shares[owner].values())
    assert len(shares) == 4
    assert shamir.combine_shares(shares, 4) == transcript.member_secrets[owner][1]
    with pytest.raises(ValueError, match="at least threshold"):
        shamir.combine_shares(dict(list(shares.items())[:3]), 4)


def test_late_input_of_a_dropped_member_stays_masked() -> None:
    rng = np.random.default_rng(100)
    n = 100_000
    inputs = {f"p{i}": rng.normal(0, 1, n).astype(np.float32) for i in range(5)}
    late = "p2"
    transcript = run_simulation(inputs, 3, {late}, rng=rng)

    # The aggregator never holds both kinds of share for one member.
    assert set(transcript.self_seed_shares).isdisjoint(transcript.mask_key_shares)
    assert set(transcript.self_seed_shares) == set(transcript.survivors)
    assert set(transcript.mask_key_shares) == {late}
    assert all(len(s) == 3 for s in transcript.self_seed_shares.values())
    assert len(transcript.mask_key_shares[late]) == 3

    # It can rebuild the late member's mask key, hence all of its pair masks ...
    points = dict(shamir.decode_share(d) for d in transcript.mask_key_shares[late].values())
    mask_private = shamir.combine_shares(points, 3)
    keys, self_seed = transcript.member_secrets[late]
    assert mask_private == keys.mask_private
    z = transcript.late_masked[late].copy()
    for other in transcript.members:
        if other != late:
            seed = agree_seed(
                mask_private, transcript.public_keys[other][0], context=b"gossipfl-simulation"
            )
            if pair_sign(late, other) > 0:
                z -= prg_mask(seed, n)
            else:
                z += prg_mask(seed, n)
    # ... but what is left, q + PRG(b), still looks uniform and says nothing about the input.
    # (Fixed seeds: each chi-square check at p > 0.001 fails for about 1 seed in 1000.)
    assert _uniform_p_value(z, 24) > 0.001
    assert abs(_pearson(z, inputs[late])) < 0.02
    assert not np.array_equal(z, quantise(inputs[late], DEFAULT_CLIP, DEFAULT_SCALE))
    # Only the self seed, which the aggregator has no share of, is missing.
    q = z - prg_mask(self_seed, n)
    recovered = dequantise_sum(q, 1, DEFAULT_CLIP, DEFAULT_SCALE)
    assert np.all(np.abs(recovered - inputs[late]) < 1 / DEFAULT_SCALE + _f32_slack(inputs[late]))


def test_fewer_than_min_contributors_refused() -> None:
    assert MIN_CONTRIBUTORS == 3
    check_contributors(3)
    with pytest.raises(ValueError, match="MIN_CONTRIBUTORS"):
        check_contributors(2)
    rng = np.random.default_rng(0)
    two = {m: rng.normal(0, 1, 10).astype(np.float32) for m in "ab"}
    with pytest.raises(ValueError, match="MIN_CONTRIBUTORS"):
        simulate_round(two, 2, set(), rng=rng)
    three = {**two, "c": rng.normal(0, 1, 10).astype(np.float32)}
    with pytest.raises(ValueError, match="MIN_CONTRIBUTORS"):  # one drops: two survivors
        simulate_round(three, 2, {"c"}, rng=rng)


def test_threshold_and_membership_rules() -> None:
    check_threshold(3, 5)
    check_threshold(5, 5)
    for bad in (2, 6, 0):
        with pytest.raises(ValueError, match="strict majority"):
            check_threshold(bad, 5)
    rng = np.random.default_rng(0)
    inputs = {m: rng.normal(0, 1, 10).astype(np.float32) for m in "abcd"}
    with pytest.raises(ValueError, match="strict majority"):
        simulate_round(inputs, 2, set(), rng=rng)
    with pytest.raises(ValueError, match="non-members"):
        simulate_round(inputs, 3, {"z"}, rng=rng)
    with pytest.raises(ValueError, match="one length"):
        simulate_round({**inputs, "e": np.zeros(11, np.float32)}, 3, set(), rng=rng)
    assert share_ids_for(["c", "a", "b"]) == {"a": 1, "b": 2, "c": 3}
    with pytest.raises(ValueError, match="distinct"):
        share_ids_for(["a", "a"])
