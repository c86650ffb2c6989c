"""Tests for gossipfl.crypto.shamir: Shamir sharing of 32-byte secrets over GF(2**256 + 297)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.crypto import shamir
from gossipfl.crypto.shamir import (
    MAX_SHARE_ID,
    PRIME,
    SHARE_BYTES,
    VALUE_BYTES,
    combine_shares,
    decode_share,
    encode_share,
    split_secret,
)

FAST = settings(max_examples=60, deadline=None)
SECRET = bytes(range(32))


def _rng_bytes(seed: int):
    return random.Random(seed).randbytes


@st.composite
def sharings(draw: st.DrawFn) -> tuple[bytes, int, list[int], list[int], int]:
    """A secret, a threshold, share ids, a threshold-sized subset of them and an rng seed."""
    secret = draw(st.binary(min_size=32, max_size=32))
    n = draw(st.integers(2, 9))
    threshold = draw(st.integers(2, n))
    ids = draw(st.lists(st.integers(1, MAX_SHARE_ID), min_size=n, max_size=n, unique=True))
    subset = draw(st.permutations(ids))[:threshold]
    seed = draw(st.integers(0, 2**32))
    return secret, threshold, ids, subset, seed


@FAST
@given(sharings())
def test_any_threshold_subset_reconstructs(case: tuple[bytes, int, list[int], list[int], int]):
    secret, threshold, ids, subset, seed = case
    shares = split_secret(secret, threshold, ids, _rng_bytes(seed))
    assert sorted(shares) == sorted(ids)
    assert all(len(value) == VALUE_BYTES for value in shares.values())
    assert combine_shares({x: shares[x] for x in subset}, threshold) == secret
    # All shares at once: the extra ones are checked against the polynomial and agree.
    assert combine_shares(shares, threshold) == secret


@FAST
@given(sharings())
def test_fewer_than_threshold_is_refused_or_wrong(
    case: tuple[bytes, int, list[int], list[int], int],
):
    secret, threshold, ids, subset, seed = case
    shares = split_secret(secret, threshold, ids, _rng_bytes(seed))
    too_few = {x: shares[x] for x in subset[:-1]}
    with pytest.raises(ValueError, match="at least threshold"):
        combine_shares(too_few, threshold)
    if len(too_few) >= shamir.MIN_THRESHOLD:
        # Interpolating t - 1 shares as if the threshold were t - 1 does not give the secret.
        try:
            wrong = combine_shares(too_few, len(too_few))
        except ValueError:
            pass  # not even a 32-byte value
        else:
            assert wrong != secret


def test_threshold_shares_are_not_the_secret_and_differ_per_rng():
    ids = [1, 2, 3]
    a = split_secret(SECRET, 2, ids, _rng_bytes(1))
    b = split_secret(SECRET, 2, ids, _rng_bytes(2))
    assert a == split_secret(SECRET, 2, ids, _rng_bytes(1))  # deterministic given the rng
    assert a != b
    assert all(SECRET not in value for value in a.values())
    assert combine_shares({1: a[1], 3: a[3]}, 2) == combine_shares({2: b[2], 3: b[3]}, 2) == SECRET


def test_default_rng_is_os_random():
    first = split_secret(SECRET, 3, [1, 2, 3, 4])
    second = split_secret(SECRET, 3, [1, 2, 3, 4])
    assert first != second
    assert combine_shares({2: first[2], 3: first[3], 4: first[4]}, 3) == SECRET


@pytest.mark.parametrize("ids", [[1, 2, 2], [3, 1, 3, 4]])
def test_duplicate_share_ids_refused(ids: list[int]):
    with pytest.raises(ValueError, match="distinct"):
        split_secret(SECRET, 2, ids)


@pytest.mark.parametrize("bad", [0, -1, MAX_SHARE_ID + 1])
def test_zero_negative_and_large_share_ids_refused(bad: int):
    with pytest.raises(ValueError, match="share id"):
        split_secret(SECRET, 2, [1, 2, bad])
    shares = split_secret(SECRET, 2, [1, 2])
    with pytest.raises(ValueError, match="share id"):
        combine_shares({1: shares[1], bad: shares[2]}, 2)


def test_bad_thresholds_and_secrets_refused():
    with pytest.raises(ValueError, match="at least 2"):
        split_secret(SECRET, 1, [1, 2, 3])
    with pytest.raises(ValueError, match="must not exceed"):
        split_secret(SECRET, 4, [1, 2, 3])
    with pytest.raises(ValueError, match="32 bytes"):
        split_secret(SECRET[:31], 2, [1, 2, 3])
    with pytest.raises(ValueError, match="32 bytes"):
        split_secret(SECRET + b"\0", 2, [1, 2, 3])


def test_corrupted_or_mixed_shares_detected():
    shares = split_secret(SECRET, 3, [1, 2, 3, 4, 5], _rng_bytes(7))
    corrupted = dict(shares)
    corrupted[5] = ((int.from_bytes(shares[5], "big") + 1) % PRIME).to_bytes(VALUE_BYTES, "big")
    with pytest.raises(ValueError, match="inconsistent"):
        combine_shares(corrupted, 3)
    other = split_secret(bytes(32), 3, [1, 2, 3, 4, 5], _rng_bytes(8))
    mixed = {1: shares[1], 2: shares[2], 3: other[3]}
    try:  # at the threshold nothing can tell: a wrong secret (or, rarely, no 32-byte one)
        assert combine_shares(mixed, 3) not in (SECRET, bytes(32))
    except ValueError as error:
        assert "32-byte secret" in str(error)
    # one more share than the threshold: the mix is caught
    with pytest.raises(ValueError, match="inconsistent"):
        combine_shares({**mixed, 4: shares[4]}, 3)
    with pytest.raises(ValueError, match="field"):
        combine_shares({1: shares[1], 2: (PRIME).to_bytes(VALUE_BYTES, "big")}, 2)
    with pytest.raises(ValueError, match="bytes"):
        combine_shares({1: shares[1], 2: shares[2][:-1]}, 2)


@FAST
@given(st.integers(1, MAX_SHARE_ID), st.integers(0, PRIME - 1))
def test_encode_decode_round_trip_fixed_length(share_id: int, y: int):
    value = y.to_bytes(VALUE_BYTES, "big")
    data = encode_share(share_id, value)
    assert len(data) == SHARE_BYTES == 35
    assert decode_share(data) == (share_id, value)


def test_decode_refuses_bad_records():
    good = encode_share(3, (5).to_bytes(VALUE_BYTES, "big"))
    with pytest.raises(ValueError, match="35 bytes"):
        decode_share(good[:-1])
    with pytest.raises(ValueError, match="must not be 0"):
        decode_share(b"\0\0" + good[2:])
    with pytest.raises(ValueError, match="field"):
        decode_share(good[:2] + PRIME.to_bytes(VALUE_BYTES, "big"))
    with pytest.raises(ValueError, match="must not be 0"):
        encode_share(0, good[2:])
    with pytest.raises(ValueError, match="33 bytes"):
        encode_share(1, b"short")


def test_encoded_shares_reconstruct():
    shares = split_secret(SECRET, 3, [4, 9, 17, 200], _rng_bytes(3))
    wire = [encode_share(x, v) for x, v in shares.items()]
    decoded = dict(decode_share(data) for data in wire[1:])
    assert combine_shares(decoded, 3) == SECRET
