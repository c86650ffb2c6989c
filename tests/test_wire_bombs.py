"""Decoding that cannot be bombed: a crafted frame of many empty arrays, maps or short strings is
refused in time and memory that do not grow with the frame (issue 8, point 7).

Before, a 4 MiB frame of empty arrays on the sealed contribution protocol raised a node's RSS by
about 280 MiB (a Python list per byte); here each shape is decoded under tracemalloc.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest

from gossipfl.gossip.wire import (
    DECODE_LIMITS,
    MAX_ADDRS,
    MAX_MEMBERS,
    MAX_TENSOR_DIMS,
    MAX_TENSORS,
    ConsistencyRequest,
    ConsistencyResponse,
    Contribution,
    Heartbeat,
    MaskedInput,
    MemberInfo,
    Sealed,
    Tensor,
    UnmaskRequest,
    UnmaskResponse,
    WireError,
    decode_body,
    encode_body,
)

FRAME = 4 * 1024 * 1024
PEER = "12D3KooW" + "x" * 44


def _array_header(n: int) -> bytes:
    return b"\xdc" + struct.pack(">H", n) if n < 2**16 else b"\xdd" + struct.pack(">I", n)


def _map_header(n: int) -> bytes:
    return b"\xde" + struct.pack(">H", n)


def _repeat(element: bytes, size: int, width: int = 1024) -> bytes:
    """Arrays of ``width`` copies of ``element``, in arrays of ``width`` such arrays, in an outer
    array: about ``size`` bytes, and no array longer than ``width``."""
    inner = _array_header(width) + element * width
    middle = _array_header(width) + inner * width
    count = max(1, size // len(middle))
    return _array_header(count) + middle * count


def flat_empty_arrays(size: int) -> bytes:
    """The issue's bomb: one array32 of N empty arrays."""
    n = size - 5
    return _array_header(n) + b"\x90" * n


def nested_empty_arrays(size: int) -> bytes:
    """Arrays of 1024 empty arrays, each within any per-array cap, as ``tensors``."""
    return _contribution_with("tensors", _repeat(b"\x90", size))


def nested_empty_maps(size: int) -> bytes:
    return _contribution_with("tensors", _repeat(b"\x80", size))


def nested_short_strings(size: int) -> bytes:
    return _contribution_with("tensors", _repeat(b"\xa2ab", size))


def nested_floats(size: int) -> bytes:
    return _contribution_with("tensors", _repeat(b"\xcb" + struct.pack(">d", 0.5), size))


def deep_arrays(size: int) -> bytes:
    """Arrays nested as deep as the decoder goes, then wide."""
    return b"\x91" * 100_000 + b"\x90"


def heartbeat_member_bomb(size: int) -> bytes:
    """A heartbeat whose members hold addrs lists of empty arrays."""
    entry = b"\x93" + msgpack.packb(PEER) + _array_header(MAX_ADDRS) + b"\x90" * MAX_ADDRS + b"\x00"
    members = _array_header(MAX_MEMBERS) + entry * MAX_MEMBERS
    return _map_header(1) + msgpack.packb("members") + members


def _contribution_with(key: str, raw_value: bytes) -> bytes:
    return _map_header(4) + msgpack.packb("v") + b"\x01" + msgpack.packb("t") + msgpack.packb(
        "contribution") + msgpack.packb("fed") + msgpack.packb("f") + msgpack.packb(key) + raw_value


BOMBS: list[Callable[[int], bytes]] = [
    flat_empty_arrays, nested_empty_arrays, nested_empty_maps, nested_short_strings, nested_floats,
    deep_arrays, heartbeat_member_bomb,
]


def _measure(body: bytes, expected: type[Any]) -> tuple[str, int, float]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        decode_body(body, expected)
        outcome = "decoded"
    except WireError as error:
        outcome = str(error)
    finally:
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return outcome, peak, elapsed


@pytest.mark.parametrize("bomb", BOMBS, ids=lambda b: b.__name__)
@pytest.mark.parametrize("expected", [Contribution, Sealed, Heartbeat, MaskedInput, UnmaskRequest])
def test_bomb_frames_are_refused_in_bounded_time_and_memory(
    bomb: Callable[[int], bytes], expected: type[Any]
) -> None:
    body = bomb(FRAME)
    outcome, peak, _ = _measure(body, expected)
    assert outcome != "decoded"
    # a few MB of objects at most, whatever the frame (before: ~70 bytes of objects a byte)
    assert peak < FRAME // 2, f"{bomb.__name__}: peak {peak} bytes ({outcome})"
    elapsed = min(_timed(body, expected) for _ in range(3))  # best of 3: the machine is shared
    assert elapsed < 0.25, f"{bomb.__name__}: {elapsed:.2f} s"


def _timed(body: bytes, expected: type[Any]) -> float:
    started = time.perf_counter()
    with pytest.raises(WireError):
        decode_body(body, expected)
    return time.perf_counter() - started


def test_the_element_cap_not_the_frame_cap_stops_a_nested_bomb() -> None:
    outcome, _, _ = _measure(nested_empty_arrays(FRAME), Contribution)
    assert "element cap" in outcome
    outcome, _, _ = _measure(flat_empty_arrays(FRAME), Contribution)
    assert "exceeds max_array_len(1024)" in outcome  # refused from the array's header


def _tensor(i: int) -> Tensor:
    return Tensor.from_array(f"t{i}", np.zeros((1,) * MAX_TENSOR_DIMS, dtype=np.float32))


def _largest_messages() -> list[Any]:
    members = tuple(MemberInfo(f"{PEER}{i:03d}", tuple(f"/ip4/10.0.0.1/tcp/{j}"
                                                       for j in range(MAX_ADDRS)), 1.0, b"m" * 300)
                    for i in range(MAX_MEMBERS))
    peers = tuple(f"{PEER}{i:03d}" for i in range(MAX_MEMBERS))
    pairs = tuple((p, b"s" * 32) for p in peers)
    return [
        Heartbeat("fed", PEER, tuple(f"/ip4/10.0.0.1/tcp/{j}" for j in range(MAX_ADDRS)), members,
                  3, 4, "training", b"c" * 1024, b"r" * 1024),
        Contribution("fed", 5, PEER, PEER, 4, "full", -1, 0.5, False,
                     tuple(_tensor(i) for i in range(MAX_TENSORS))),
        MaskedInput("fed", 1, PEER, PEER, 0.5, 0.1, False, b"\0" * 64, pairs,
                    next_shares=pairs, early=pairs),
        UnmaskRequest("fed", 1, PEER, peers[:128], peers[128:], pairs,
                      tuple((p, b"g" * 64) for p in peers), next_shares=pairs),
        UnmaskResponse("fed", 1, PEER, pairs, pairs),
        ConsistencyRequest("fed", 1, PEER, peers, peers),
        ConsistencyResponse("fed", 1, PEER, b"g" * 64, ""),
    ]


@pytest.mark.parametrize("message", _largest_messages(), ids=lambda m: type(m).__name__)
def test_the_largest_legitimate_messages_still_decode(message: Any) -> None:
    assert message.KIND in DECODE_LIMITS
    assert decode_body(encode_body(message), type(message)) == message


def test_trailing_bytes_cost_at_most_one_copy() -> None:
    body = msgpack.packb({"v": 1}) + b"\x90" * FRAME
    outcome, peak, elapsed = _measure(body, Contribution)
    assert "extra data" in outcome
    assert peak < 1.5 * FRAME and elapsed < 0.5
