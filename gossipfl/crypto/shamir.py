"""Shamir secret sharing of 32-byte secrets, for the secure-aggregation round.

A 32-byte secret ``s`` (read as a big-endian integer, ``s < 2**256``) is the constant term of a
random polynomial ``f`` of degree ``threshold - 1`` over the prime field GF(p), with ``p = 2**256
+ 297``, the least prime above ``2**256`` (so the whole secret is one field element and no
chunking is needed, and a share is no longer than it must be). The share for id ``x`` (a small
positive integer, the x-coordinate; never 0, since ``f(0)`` is the secret) is ``f(x)``, written as
a 33-byte big-endian integer. Any ``threshold`` shares give ``f(0)`` back by Lagrange
interpolation; fewer give no information about it (whatever the field's size).

Shares travel as :data:`SHARE_BYTES`-long records made by :func:`encode_share`: a 2-byte big-endian
share id followed by the 33-byte value. Until 2026-12-04 the field was GF(2**521 - 1) (66-byte
values): an interpolation of corrupted or mixed shares then almost always came out above
``2**256`` and was refused as no 32-byte secret. Now only extra shares beyond the threshold
catch such (:func:`combine_shares`); neither ever stopped a member that crafts its share (it can
shift the result by a small amount it picks, through the public Lagrange coefficient), and the
shares' encryption binds each to its dealer, holder and round (``crypto/secagg.py``).

All functions are pure: randomness comes from the ``rng_bytes`` argument (``os.urandom`` unless a
test passes something deterministic), and nothing is kept between calls.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

PRIME = 2**256 + 297
"""The field modulus: the least prime above 2**256 (``openssl prime`` agrees)."""

SECRET_BYTES = 32
"""Length of a secret that can be shared."""

VALUE_BYTES = (PRIME.bit_length() + 7) // 8  # 33
"""Length of one share value f(x), big-endian."""

ID_BYTES = 2
MAX_SHARE_ID = 2 ** (8 * ID_BYTES) - 1
"""Share ids are x-coordinates in 1..MAX_SHARE_ID."""

SHARE_BYTES = ID_BYTES + VALUE_BYTES  # 35
"""Length of an encoded share (id and value)."""

MIN_THRESHOLD = 2
"""Smallest threshold accepted: with threshold 1 every share would equal the secret."""


def _check_share_id(share_id: object) -> int:
    if isinstance(share_id, bool) or not isinstance(share_id, int):
        raise ValueError(f"share id must be an int, got {type(share_id).__name__}")
    if share_id == 0:
        raise ValueError("share id must not be 0: f(0) is the secret itself")
    if not 1 <= share_id <= MAX_SHARE_ID:
        raise ValueError(f"share id must be in 1..{MAX_SHARE_ID}, got {share_id}")
    return share_id


def _check_threshold(threshold: object) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise ValueError(f"threshold must be an int, got {type(threshold).__name__}")
    if threshold < MIN_THRESHOLD:
        raise ValueError(
            f"threshold must be at least {MIN_THRESHOLD} (threshold 1 hands the secret to every "
            f"share holder), got {threshold}"
        )
    return threshold


def _random_field_element(rng_bytes: Callable[[int], bytes]) -> int:
    """A uniform element of GF(p), by rejection sampling 257-bit integers (each kept with
    probability about 1/2; 64 draws all rejected: 2^-64)."""
    mask = (1 << PRIME.bit_length()) - 1
    for _ in range(64):
        raw = rng_bytes(VALUE_BYTES)
        if len(raw) != VALUE_BYTES:
            raise ValueError(f"rng_bytes({VALUE_BYTES}) returned {len(raw)} bytes")
        value = int.from_bytes(raw, "big") & mask
        if value < PRIME:
            return value
    raise ValueError("rng_bytes keeps returning the same rejected value; it is not random")


def _lagrange_at(points: Sequence[tuple[int, int]], x: int) -> int:
    """Value at ``x`` of the unique polynomial of degree < len(points) through ``points``."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num = 1
        den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (x - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def split_secret(
    secret: bytes,
    threshold: int,
    share_ids: Sequence[int],
    rng_bytes: Callable[[int], bytes] = os.urandom,
) -> dict[int, bytes]:
    """Split ``secret`` into one share per id, any ``threshold`` of which rebuild it.

    Args:
        secret: the 32-byte secret (a seed or an X25519 private key).
        threshold: how many shares are needed to rebuild the secret; at least 2 and at most
            ``len(share_ids)``.
        share_ids: distinct x-coordinates in 1..65535, one per share holder.
        rng_bytes: source of random bytes for the polynomial's coefficients; must be a
            cryptographic source outside tests.

    Returns:
        A dict from share id to its :data:`VALUE_BYTES`-long share value.

    Raises:
        ValueError: if the secret is not 32 bytes, the threshold is out of range, or a share id
            is 0, out of range or repeated.
    """
    if not isinstance(secret, bytes | bytearray) or len(secret) != SECRET_BYTES:
        raise ValueError(f"secret must be {SECRET_BYTES} bytes")
    _check_threshold(threshold)
    ids = [_check_share_id(share_id) for share_id in share_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("share ids must be distinct")
    if threshold > len(ids):
        raise ValueError(
            f"threshold ({threshold}) must not exceed the number of shares ({len(ids)})"
        )
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [_random_field_element(rng_bytes) for _ in range(threshold - 1)]
    shares: dict[int, bytes] = {}
    for x in ids:
        y = 0
        for coefficient in reversed(coefficients):  # Horner
            y = (y * x + coefficient) % PRIME
        shares[x] = y.to_bytes(VALUE_BYTES, "big")
    return shares


def combine_shares(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """Rebuild the secret from at least ``threshold`` shares.

    The ``threshold`` shares with the smallest ids are interpolated at 0; any further shares are
    checked to lie on the same polynomial, so a corrupted or foreign share is reported rather
    than silently giving a wrong secret.

    Args:
        shares: share id to share value (as made by :func:`split_secret`).
        threshold: the threshold the secret was split with.

    Returns:
        The 32-byte secret.

    Raises:
        ValueError: if there are fewer than ``threshold`` shares, a share id or value is
            malformed, the shares do not lie on one polynomial of degree ``threshold - 1``, or
            they do not encode a 32-byte secret.
    """
    _check_threshold(threshold)
    if len(shares) < threshold:
        raise ValueError(
            f"need at least threshold={threshold} shares to rebuild the secret, got {len(shares)}"
        )
    points: list[tuple[int, int]] = []
    for share_id, value in sorted(shares.items()):
        _check_share_id(share_id)
        if not isinstance(value, bytes | bytearray) or len(value) != VALUE_BYTES:
            raise ValueError(f"share {share_id} must be {VALUE_BYTES} bytes")
        y = int.from_bytes(value, "big")
        if y >= PRIME:
            raise ValueError(f"share {share_id} is not an element of the field")
        points.append((share_id, y))
    basis, extra = points[:threshold], points[threshold:]
    for x, y in extra:
        if _lagrange_at(basis, x) != y:
            raise ValueError(
                f"share {x} is inconsistent with the others (corrupted, or from another secret)"
            )
    secret = _lagrange_at(basis, 0)
    if secret >= 1 << (8 * SECRET_BYTES):
        raise ValueError(
            "shares do not encode a 32-byte secret (wrong threshold, corrupted or mixed shares)"
        )
    return secret.to_bytes(SECRET_BYTES, "big")


def encode_share(share_id: int, value: bytes) -> bytes:
    """Encode one share as :data:`SHARE_BYTES` bytes: 2-byte big-endian id, then the value.

    Raises:
        ValueError: if the id is out of range or the value is not :data:`VALUE_BYTES` long.
    """
    _check_share_id(share_id)
    if not isinstance(value, bytes | bytearray) or len(value) != VALUE_BYTES:
        raise ValueError(f"share value must be {VALUE_BYTES} bytes")
    return share_id.to_bytes(ID_BYTES, "big") + bytes(value)


def decode_share(data: bytes) -> tuple[int, bytes]:
    """Decode a share made by :func:`encode_share` into ``(share_id, value)``.

    Raises:
        ValueError: if ``data`` is not :data:`SHARE_BYTES` long, the id is 0 or the value is not
            a field element.
    """
    if not isinstance(data, bytes | bytearray) or len(data) != SHARE_BYTES:
        raise ValueError(f"an encoded share must be {SHARE_BYTES} bytes")
    share_id = _check_share_id(int.from_bytes(data[:ID_BYTES], "big"))
    value = bytes(data[ID_BYTES:])
    if int.from_bytes(value, "big") >= PRIME:
        raise ValueError(f"share {share_id} is not an element of the field")
    return share_id, value


def share_ids_for(members: Iterable[str]) -> dict[str, int]:
    """Shamir x-coordinates for a neighbourhood: 1, 2, ... in sorted member-id order
    (ValueError: an id repeated or empty, or too many members)."""
    ordered = list(members)
    if len(set(ordered)) != len(ordered):
        raise ValueError("member ids must be distinct")
    if any(not isinstance(m, str) or not m for m in ordered):
        raise ValueError("member ids must be non-empty strings")
    if len(ordered) > MAX_SHARE_ID:
        raise ValueError(f"at most {MAX_SHARE_ID} members can hold shares")
    return {member: index + 1 for index, member in enumerate(sorted(ordered))}
