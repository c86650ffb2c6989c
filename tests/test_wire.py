"""Tests for gossipfl.gossip.wire (messages, frames, validation) and gossipfl.gossip.framing."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.gossip import wire
from gossipfl.gossip.framing import (
    StreamClosed,
    StreamEnded,
    read_exactly,
    read_frame,
    write_frame,
)
from gossipfl.gossip.wire import (
    HEADER,
    HEADER_BYTES,
    MAX_MEMBERS,
    Ack,
    Contribution,
    Heartbeat,
    LinkReply,
    LinkRequest,
    MemberInfo,
    Tensor,
    WireError,
    decode_body,
    decode_frame,
    encode_body,
    encode_frame,
    frame_length,
)
from gossipfl.gossip.wire_contribution import ORIGIN_BYTES

FAST = settings(max_examples=60, deadline=None)

PEER_A = "12D3KooWA"
PEER_B = "12D3KooWB"


def _tensor(name: str = "w", values: Any = ((1.0, -2.5), (0.0, 3.25))) -> Tensor:
    return Tensor.from_array(name, np.asarray(values, dtype=np.float32))


HEARTBEAT = Heartbeat(
    federation="fed",
    sender=PEER_A,
    addrs=("/ip4/127.0.0.1/tcp/4001",),
    members=(
        MemberInfo(PEER_B, ("/ip4/127.0.0.1/tcp/4002",), 1.5),
        MemberInfo("12D3KooWC", (), 0.0),
    ),
    round=3,
    degree=2,
    status="training",
)
LINK_REQUEST = LinkRequest(federation="fed", sender=PEER_A, topology_digest="ab" * 16)
LINK_REPLY = LinkReply(federation="fed", sender=PEER_B, status="not_ready", reason="joining")
CONTRIBUTION = Contribution(
    federation="fed",
    round=5,
    sender=PEER_A,
    receiver=PEER_B,
    degree=4,
    kind="delta",
    base_round=4,
    disagreement=0.125,
    done=False,
    tensors=(_tensor("w"), _tensor("b", (0.5, -0.5, 7.0))),
)
FULL_CONTRIBUTION = Contribution(
    federation="fed",
    round=0,
    sender=PEER_A,
    receiver=PEER_B,
    degree=1,
    kind="full",
    base_round=-1,
    disagreement=0.0,
    done=True,
    tensors=(_tensor("scalar", 2.0),),
)
ACK = Ack(federation="fed", round=5, sender=PEER_B, status="need_full", reason="lost base")

ALL_MESSAGES = [HEARTBEAT, LINK_REQUEST, LINK_REPLY, CONTRIBUTION, FULL_CONTRIBUTION, ACK]


def _body_dict(message: Any) -> dict[str, Any]:
    """The valid message's body as a plain dict, to break one rule at a time."""
    return wire.named(encode_body(message))


def _pack(body: Any) -> bytes:
    return wire.from_named(body)


def _assert_same_contribution(got: Contribution, want: Contribution) -> None:
    assert got == want
    assert len(got.tensors) == len(want.tensors)
    for a, b in zip(got.tensors, want.tensors, strict=True):
        assert a.to_array().dtype == np.float32
        assert np.array_equal(a.to_array(), b.to_array())
        assert a.to_array().shape == b.to_array().shape


# -- round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip_body_and_frame(message: Any) -> None:
    cls = type(message)
    assert decode_body(encode_body(message), cls) == message
    frame = encode_frame(message)
    assert frame_length(frame[:HEADER_BYTES], 1 << 30) == len(frame) - HEADER_BYTES
    decoded = decode_frame(frame, cls)
    assert decoded == message
    if isinstance(message, Contribution):
        _assert_same_contribution(decoded, message)


def test_body_carries_version_kind_and_federation() -> None:
    body = _body_dict(ACK)
    assert body["v"] == wire.WIRE_VERSION
    assert body["t"] == "ack"
    assert body["fed"] == "fed"


ids = st.text(min_size=1, max_size=wire.MAX_PEER_ID_CHARS)
finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    array = draw(hnp.arrays(np.float32, shape, elements=finite_f32))
    return Tensor.from_array(draw(st.text(max_size=wire.MAX_NAME_CHARS)), array)


@st.composite
def contributions(draw: st.DrawFn) -> Contribution:
    kind = draw(st.sampled_from(["delta", "full"]))
    round_ = draw(st.integers(1 if kind == "delta" else 0, wire.MAX_ROUND))
    base = draw(st.integers(0, round_ - 1)) if kind == "delta" else -1
    return Contribution(
        federation=draw(st.text(max_size=wire.MAX_NAME_CHARS)),
        round=round_,
        sender=draw(ids),
        receiver=draw(ids),
        degree=draw(st.integers(0, MAX_MEMBERS)),
        kind=kind,
        base_round=base,
        disagreement=draw(st.floats(allow_nan=False, allow_infinity=False)),
        done=draw(st.booleans()),
        tensors=tuple(draw(st.lists(tensors(), max_size=4))),
    )


@FAST
@given(contributions())
def test_contribution_round_trip_property(message: Contribution) -> None:
    _assert_same_contribution(decode_frame(encode_frame(message), Contribution), message)


@FAST
@given(
    st.lists(
        st.builds(
            MemberInfo,
            ids,
            st.lists(st.text(max_size=40), max_size=3).map(tuple),
            st.floats(0, 1e6, allow_nan=False),
        ),
        max_size=MAX_MEMBERS,
    ),
    st.integers(-1, wire.MAX_ROUND),
    st.sampled_from(["joining", "training", "consensus", "done"]),
)
def test_heartbeat_round_trip_property(members: list[MemberInfo], round_: int, status: str) -> None:
    message = Heartbeat("fed", PEER_A, (), tuple(members), round_, len(members), status)
    assert decode_body(encode_body(message), Heartbeat) == message


def test_tensor_from_array_refuses_other_dtypes() -> None:
    with pytest.raises(WireError, match="dtype float64 is not allowed"):
        Tensor.from_array("w", np.zeros(3, dtype=np.float64))
    with pytest.raises(WireError, match="dtype float64 is not allowed"):
        Tensor.from_array("w", np.zeros(3, dtype=">f8"))


@pytest.mark.parametrize("copy", [True, False])
def test_a_big_endian_array_goes_on_the_wire_as_its_values(copy: bool) -> None:
    # its name is "float32" too; its bytes are not the wire's little-endian ones
    values = np.array([0.0, 1.5, -2.25], dtype=">f4")
    tensor = Tensor.from_array("w", values, copy=copy)
    assert tensor.dtype == "float32"
    np.testing.assert_array_equal(tensor.to_array(), values)
    message = Contribution("fed", 1, PEER_A, PEER_B, 2, "full", -1, 0.1, False, (tensor,))
    [back] = decode_body(encode_body(message), Contribution).tensors
    np.testing.assert_array_equal(back.to_array(), values)


# -- frame-level rejections ------------------------------------------------------------------------


def test_frame_length_refuses_header_over_cap() -> None:
    with pytest.raises(WireError, match="frame of 1025 bytes exceeds the 1024 cap"):
        frame_length(HEADER.pack(1025), 1024)
    # The header alone decides: a full-size announcement of 4 GiB is refused, nothing allocated.
    with pytest.raises(WireError, match=r"exceeds the \d+ cap"):
        frame_length(HEADER.pack(2**32 - 1), wire.DEFAULT_MAX_PAYLOAD_BYTES)
    assert frame_length(HEADER.pack(1024), 1024) == 1024


def test_frame_length_refuses_short_header() -> None:
    with pytest.raises(WireError, match="frame header must be 4 bytes"):
        frame_length(b"\x00\x01", 1024)


def test_encode_frame_refuses_over_cap() -> None:
    size = len(encode_body(CONTRIBUTION))
    assert encode_frame(CONTRIBUTION, max_bytes=size)
    with pytest.raises(WireError, match=f"contribution frame of {size} bytes exceeds the"):
        encode_frame(CONTRIBUTION, max_bytes=size - 1)


def test_decode_frame_refuses_over_cap_before_decoding() -> None:
    frame = encode_frame(CONTRIBUTION)
    with pytest.raises(WireError, match="exceeds the 16 cap"):
        decode_frame(frame, Contribution, max_bytes=16)


def test_empty_frame() -> None:
    with pytest.raises(WireError, match="empty frame"):
        frame_length(HEADER.pack(0), 1024)
    with pytest.raises(WireError, match="empty frame"):
        decode_frame(HEADER.pack(0), Ack)


def test_truncated_frame() -> None:
    frame = encode_frame(ACK)
    announced = len(frame) - HEADER_BYTES
    with pytest.raises(
        WireError, match=f"announces {announced} body bytes but carries {announced - 3}"
    ):
        decode_frame(frame[:-3], Ack)


def test_frame_with_trailing_bytes() -> None:
    frame = encode_frame(ACK)
    with pytest.raises(WireError, match="body bytes but carries"):
        decode_frame(frame + b"\x00", Ack)


def _garbage_outcome(data: bytes, cls: type) -> str:
    """Decode hostile bytes: a WireError that names its rule, or a message the encoder gives
    back unchanged (nothing the encoder cannot produce gets through). Any other exception fails.
    """
    try:
        decoded = decode_body(data, cls)
    except WireError as error:
        assert str(error), "a WireError must say which rule was broken"
        return "wire_error"
    assert type(decoded) is cls
    assert decode_body(encode_body(decoded), cls) == decoded
    return "decoded"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_garbage_body_raises_only_wire_error(data: bytes) -> None:
    _garbage_outcome(data, Contribution)


@FAST
@given(st.binary(max_size=64), st.sampled_from([Heartbeat, LinkRequest, LinkReply, Ack]))
def test_garbage_after_valid_prefix_raises_only_wire_error(tail: bytes, cls: type) -> None:
    # A valid map header followed by garbage reaches deeper into the decoder; three entries
    # cannot be all the keys of any of these kinds.
    assert _garbage_outcome(b"\x83\xa1v\x01\xa1t" + tail, cls) == "wire_error"


def test_malformed_msgpack() -> None:
    with pytest.raises(WireError, match="malformed msgpack"):
        decode_body(b"\xc1", Ack)  # 0xc1 is never used in msgpack
    with pytest.raises(WireError, match="malformed msgpack"):
        decode_body(encode_body(ACK) + b"\x00", Ack)  # extra data


def test_non_map_body() -> None:
    with pytest.raises(WireError, match="frame body must be an array"):
        decode_body(msgpack.packb({"v": wire.WIRE_VERSION, "t": "ack", "fed": "fed"}), Ack)
    with pytest.raises(WireError, match="frame body must be an array"):
        decode_body(msgpack.packb(7), Ack)
    with pytest.raises(WireError, match="frame body must be an array"):
        decode_body(msgpack.packb([wire.WIRE_VERSION, 4]), Ack)


# -- body-level rejections: each breaks exactly one rule -------------------------------------


def _decode_modified(message: Any, **changes: Any) -> Any:
    body = _body_dict(message)
    for key, value in changes.items():
        body[key] = value
    return decode_body(_pack(body), type(message))


def test_unmodified_body_decodes() -> None:
    assert _decode_modified(CONTRIBUTION) == CONTRIBUTION


def test_wrong_version() -> None:
    with pytest.raises(WireError, match="wire version 2 is not supported"):
        _decode_modified(ACK, v=2)  # the one before digests (have)
    body = _body_dict(ACK)
    del body["v"]
    with pytest.raises(WireError, match="wire version None is not supported"):
        decode_body(_pack(body), Ack)
    for lookalike in (True, 1.0):  # equal to 1 in Python, but not the integer 1
        with pytest.raises(WireError, match="is not supported"):
            _decode_modified(ACK, v=lookalike)


def test_unknown_kind() -> None:
    with pytest.raises(WireError, match="message kind 'gossip' is unknown"):
        _decode_modified(ACK, t="gossip")
    with pytest.raises(WireError, match="message kind 99 is unknown"):
        _decode_modified(ACK, t=99)
    with pytest.raises(WireError, match="message kind True is unknown"):
        _decode_modified(ACK, t=True)


def test_kind_different_from_expected() -> None:
    with pytest.raises(WireError, match="expected a contribution message, got ack"):
        decode_body(encode_body(ACK), Contribution)
    with pytest.raises(WireError, match="expected a heartbeat message, got link_request"):
        decode_frame(encode_frame(LINK_REQUEST), Heartbeat)


def test_federation_must_be_a_string() -> None:
    with pytest.raises(WireError, match="federation must be a string"):
        _decode_modified(ACK, fed=1)


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_missing_field(message: Any) -> None:
    body = _body_dict(message)
    del body["sender"]
    with pytest.raises(WireError, match=r"fields wrong: missing \['sender'\], unexpected \[\]"):
        decode_body(_pack(body), type(message))


@pytest.mark.parametrize("message", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_extra_field(message: Any) -> None:
    with pytest.raises(WireError, match=r"fields wrong: \d+ fields, unexpected past"):
        _decode_modified(message, signature=b"x")


def test_federation_is_not_a_field_key() -> None:
    # the federation travels in its own place; sending it as a field too is an extra one
    with pytest.raises(WireError, match=r"unexpected past"):
        _decode_modified(ACK, federation="fed")


@pytest.mark.parametrize(
    ("message", "changes", "rule"),
    [
        (CONTRIBUTION, {"round": "5"}, "round must be an integer"),
        (ACK, {"round": "5"}, "round must be an integer"),
        (CONTRIBUTION, {"done": 1}, "done must be a boolean"),
        (CONTRIBUTION, {"degree": True}, "degree must be an integer"),
        (CONTRIBUTION, {"round": False, "base_round": -1, "kind": "full"},
         "round must be an integer"),
        (HEARTBEAT, {"degree": 2.0}, "degree must be an integer"),
        (HEARTBEAT, {"round": 3.0}, "round must be an integer"),
        (CONTRIBUTION, {"disagreement": "0.1"}, "disagreement must be a number"),
        (CONTRIBUTION, {"disagreement": True}, "disagreement must be a number"),
        (CONTRIBUTION, {"disagreement": math.nan}, "disagreement must be finite"),
        (CONTRIBUTION, {"disagreement": math.inf}, "disagreement must be finite"),
        (CONTRIBUTION, {"sender": b"peer"}, "sender must be a string"),
        (CONTRIBUTION, {"receiver": None}, r"missing \[.receiver.\]"),  # nil: absent
        (CONTRIBUTION, {"sender": "p" * 129}, "sender is longer than 128 characters"),
        (CONTRIBUTION, {"tensors": {"w": 1}}, "tensors must be a list of at most"),
        (CONTRIBUTION, {"kind": "sparse"}, "contribution kind 'sparse' is unknown"),
        (HEARTBEAT, {"addrs": "/ip4/1.2.3.4"}, "addrs must be a list of at most 16"),
        (HEARTBEAT, {"addrs": ["a"] * 17}, "addrs must be a list of at most 16"),
        (HEARTBEAT, {"addrs": [1]}, "addrs entry must be a string"),
        (HEARTBEAT, {"status": "sleeping"}, "status 'sleeping' is unknown"),
        (LINK_REPLY, {"status": "maybe"}, "link status 'maybe' is unknown"),
        (ACK, {"status": "fine"}, "ack status 'fine' is unknown"),
        (LINK_REQUEST, {"topology_digest": 12}, "topology digest must be a string"),
    ],
)
def test_wrong_types_and_values(message: Any, changes: dict[str, Any], rule: str) -> None:
    with pytest.raises(WireError, match=rule):
        _decode_modified(message, **changes)


@pytest.mark.parametrize(
    ("message", "changes", "rule"),
    [
        (CONTRIBUTION, {"round": -1, "base_round": -1, "kind": "full"},
         r"round -1 is outside \[0, 2147483647\]"),
        (HEARTBEAT, {"round": -2}, r"round -2 is outside \[-1, 2147483647\]"),
        (ACK, {"round": -2}, r"round -2 is outside \[-1, "),
        (CONTRIBUTION, {"round": 2**31, "kind": "full", "base_round": -1},
         r"round 2147483648 is outside"),
        (CONTRIBUTION, {"degree": -1}, r"degree -1 is outside \[0, 256\]"),
        (HEARTBEAT, {"degree": MAX_MEMBERS + 1}, r"degree 257 is outside"),
        (CONTRIBUTION, {"base_round": -2}, r"base round -2 is outside"),
    ],
)
def test_out_of_range_ints(message: Any, changes: dict[str, Any], rule: str) -> None:
    with pytest.raises(WireError, match=rule):
        _decode_modified(message, **changes)


def test_delta_base_round_must_precede_round() -> None:
    with pytest.raises(WireError, match="delta base round 5 must precede round 5"):
        _decode_modified(CONTRIBUTION, base_round=5)
    with pytest.raises(WireError, match="delta base round 9 must precede round 5"):
        _decode_modified(CONTRIBUTION, base_round=9)
    with pytest.raises(WireError, match="delta base round -1 must precede round 5"):
        _decode_modified(CONTRIBUTION, base_round=-1)


def test_a_first_delta_names_the_initial_model_it_applies_to() -> None:
    origin = b"\x07" * ORIGIN_BYTES
    first = _decode_modified(CONTRIBUTION, base_round=-1, origin=origin)
    assert (first.base_round, first.origin) == (-1, origin)
    assert decode_body(_pack(_body_dict(first)), Contribution) == first  # round trip
    for bad in (b"\x07" * (ORIGIN_BYTES - 1), "x" * ORIGIN_BYTES, b""):
        with pytest.raises(WireError, match="origin must be"):
            _decode_modified(CONTRIBUTION, base_round=-1, origin=bad)
    with pytest.raises(WireError, match="origin must be"):  # only on a delta on base -1
        _decode_modified(CONTRIBUTION, origin=origin)
    with pytest.raises(WireError, match="origin must be"):
        _decode_modified(FULL_CONTRIBUTION, origin=origin)
    assert "origin" not in _body_dict(CONTRIBUTION)  # absent on the wire when empty


def test_full_contribution_has_base_round_minus_one() -> None:
    with pytest.raises(WireError, match="a full contribution has base round -1"):
        _decode_modified(FULL_CONTRIBUTION, base_round=0)
    with pytest.raises(WireError, match="a full contribution has base round -1"):
        _decode_modified(CONTRIBUTION, kind="full")  # base_round stays 4


def test_oversized_member_list() -> None:
    entry = [PEER_B, [], 0.0]
    assert len(_decode_modified(HEARTBEAT, members=[entry] * MAX_MEMBERS).members) == MAX_MEMBERS
    # refused from the array's msgpack header, before one entry is built
    with pytest.raises(WireError, match=r"257 exceeds max_array_len\(256\)"):
        _decode_modified(HEARTBEAT, members=[entry] * (MAX_MEMBERS + 1))


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ([PEER_B, []], r"member entry must be \[peer_id, addrs, age\]"),
        ({"peer": PEER_B}, r"member entry must be \[peer_id, addrs, age\]"),
        ([PEER_B, [], -0.5], "member age must not be negative"),
        ([PEER_B, [], math.inf], "member age must be finite"),
        ([PEER_B, [], "1"], "member age must be a number"),
        ([7, [], 1.0], "member peer id must be a string"),
        ([PEER_B, "addr", 1.0], "member addrs must be a list"),
    ],
)
def test_bad_member_entry(entry: Any, rule: str) -> None:
    with pytest.raises(WireError, match=rule):
        _decode_modified(HEARTBEAT, members=[entry])


# -- tensors ---------------------------------------------------------------------------------------


def _decode_with_tensor(raw: Any) -> Contribution:
    return _decode_modified(CONTRIBUTION, tensors=[raw])


def _raw_tensor(values: Any = (1.0, 2.0, 3.0), dtype: str = "float32") -> list[Any]:
    array = np.asarray(values, dtype=dtype)
    return ["w", dtype, list(array.shape), array.tobytes()]


def test_valid_raw_tensor_decodes() -> None:
    message = _decode_with_tensor(_raw_tensor())
    assert np.array_equal(message.tensors[0].to_array(), np.float32([1, 2, 3]))


def test_tensor_data_length_must_match_shape() -> None:
    raw = _raw_tensor()
    raw[2] = [4]
    with pytest.raises(WireError, match=r"12 data bytes do not match shape \(4,\) of float32"):
        _decode_with_tensor(raw)
    raw = _raw_tensor()
    raw[3] = raw[3][:-1]
    with pytest.raises(WireError, match=r"11 data bytes do not match shape \(3,\)"):
        _decode_with_tensor(raw)


@pytest.mark.parametrize("dtype", ["float64", "int32", "float16", "object"])
def test_tensor_dtype_other_than_float32(dtype: str) -> None:
    raw = _raw_tensor()
    raw[1] = dtype
    with pytest.raises(WireError, match=f"dtype '{dtype}' is not allowed"):
        _decode_with_tensor(raw)
    # ... even when the data length matches the announced dtype.
    if dtype in ("float64", "int32", "float16"):
        with pytest.raises(WireError, match=f"dtype '{dtype}' is not allowed"):
            _decode_with_tensor(_raw_tensor(dtype=dtype))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_tensor_non_finite_values(bad: float) -> None:
    with pytest.raises(WireError, match="holds NaN or infinite values"):
        _decode_with_tensor(_raw_tensor((0.0, bad, 1.0)))


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (["w", "float32", [1]], r"tensor must be \[name, dtype, shape, data\]"),
        ({"name": "w"}, r"tensor must be \[name, dtype, shape, data\]"),
        ([1, "float32", [1], b"\0" * 4], "tensor name must be a string"),
        (["w", "float32", 1, b"\0" * 4], "shape must be a list of at most 8 dimensions"),
        (["w", "float32", [1] * 9, b"\0" * 4], "shape must be a list of at most 8 dimensions"),
        (["w", "float32", [-1], b""], r"dimension -1 is outside"),
        (["w", "float32", [1.0], b"\0" * 4], "dimension must be an integer"),
        (["w", "float32", [1], "\0" * 4], "data must be bytes"),
    ],
)
def test_malformed_tensor(raw: Any, rule: str) -> None:
    with pytest.raises(WireError, match=rule):
        _decode_with_tensor(raw)


@pytest.mark.parametrize("dtype", [["float32"], {"a": 1}])
def test_tensor_unhashable_dtype_is_a_wire_error(dtype: Any) -> None:
    raw = _raw_tensor()
    raw[1] = dtype
    with pytest.raises(WireError, match="dtype"):
        _decode_with_tensor(raw)


# Any msgpack value in place of one top-level field: accepted, or refused with a WireError.
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(ALL_MESSAGES),
    st.data(),
    msgpack_values,
)
def test_any_value_in_any_field_raises_only_wire_error(
    message: Any, data: st.DataObject, value: Any
) -> None:
    body = _body_dict(message)
    key = data.draw(st.sampled_from(sorted(body)))
    body[key] = value
    try:
        decoded = decode_body(_pack(body), type(message))
    except WireError as error:
        assert str(error), "a WireError must say which rule was broken"
        return
    # accepted: a value valid for that field; the message is a fixed point of the codec and
    # every other field is the original's
    assert type(decoded) is type(message)
    assert decode_body(encode_body(decoded), type(message)) == decoded
    again = _body_dict(decoded)
    assert {k: v for k, v in again.items() if k != key} == {
        k: v for k, v in _body_dict(message).items() if k != key}


# -- framing over a fake stream -------------------------------------------------------------------


class FakeStream:
    """An in-memory stream whose reads return at most ``chunk`` bytes; records each read size."""

    def __init__(self, data: bytes = b"", chunk: int = 1 << 30) -> None:
        self.buffer = bytearray(data)
        self.chunk = chunk
        self.reads: list[int | None] = []
        self.written = bytearray()

    async def read(self, n: int | None = None) -> bytes:
        self.reads.append(n)
        await trio.lowlevel.checkpoint()
        take = min(self.chunk, len(self.buffer) if n is None else n)
        out = bytes(self.buffer[:take])
        del self.buffer[:take]
        return out

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.written += data


def test_read_frame_in_one_byte_chunks() -> None:
    frame = encode_frame(CONTRIBUTION)
    stream = FakeStream(frame + b"next", chunk=1)

    async def main() -> tuple[Contribution, int]:
        return await read_frame(stream, Contribution, max_bytes=len(frame))

    message, size = trio.run(main)
    _assert_same_contribution(message, CONTRIBUTION)
    assert size == len(frame)
    assert bytes(stream.buffer) == b"next"  # read exactly one frame, nothing beyond
    assert len(stream.reads) == len(frame)
    assert all(n is not None and n >= 1 for n in stream.reads)


@FAST
@given(st.sampled_from(ALL_MESSAGES), st.integers(1, 64))
def test_write_then_read_frame_any_chunking(message: Any, chunk: int) -> None:
    async def main() -> tuple[Any, int, int]:
        out = FakeStream()
        written = await write_frame(out, message, max_bytes=1 << 20)
        back = FakeStream(bytes(out.written), chunk=chunk)
        decoded, size = await read_frame(back, type(message), max_bytes=1 << 20)
        return decoded, size, written

    decoded, size, written = trio.run(main)
    assert decoded == message
    assert size == written == len(encode_frame(message))


BODY_BYTES = len(encode_body(ACK))


@pytest.mark.parametrize(
    ("cut", "expected"),
    [
        (2, "after 2 of 4 bytes"),
        (HEADER_BYTES, f"after 0 of {BODY_BYTES} bytes"),
        (HEADER_BYTES + 5, f"after 5 of {BODY_BYTES} bytes"),
    ],
)
def test_read_frame_stream_ends_mid_frame(cut: int, expected: str) -> None:
    stream = FakeStream(encode_frame(ACK)[:cut], chunk=3)

    async def main() -> None:
        await read_frame(stream, Ack, max_bytes=1024)

    with pytest.raises(StreamEnded, match=f"stream ended {expected}") as caught:
        trio.run(main)
    assert not isinstance(caught.value, StreamClosed)


def test_read_frame_end_between_frames_is_a_clean_close() -> None:
    stream = FakeStream(b"", chunk=3)

    async def main() -> None:
        await read_frame(stream, Ack, max_bytes=1024)

    with pytest.raises(StreamClosed, match="between frames"):
        trio.run(main)


def test_read_exactly_reports_progress() -> None:
    stream = FakeStream(b"abc", chunk=2)

    async def main() -> bytes:
        return await read_exactly(stream, 5)

    with pytest.raises(StreamEnded, match="stream ended after 3 of 5 bytes"):
        trio.run(main)


def test_read_frame_refuses_over_cap_header_without_reading_body() -> None:
    stream = FakeStream(HEADER.pack(10_000) + b"\x00" * 10_000)

    async def main() -> None:
        await read_frame(stream, Contribution, max_bytes=1024)

    with pytest.raises(WireError, match="frame of 10000 bytes exceeds the 1024 cap"):
        trio.run(main)
    assert sum(n or 0 for n in stream.reads) <= HEADER_BYTES
    assert None not in stream.reads
    assert len(stream.buffer) == 10_000  # the body was left unread


def test_read_frame_wrong_kind_is_wire_error() -> None:
    stream = FakeStream(encode_frame(ACK), chunk=5)

    async def main() -> None:
        await read_frame(stream, Heartbeat, max_bytes=1024)

    with pytest.raises(WireError, match="expected a heartbeat message, got ack"):
        trio.run(main)


def test_write_frame_refuses_over_cap_without_writing() -> None:
    stream = FakeStream()

    async def main() -> None:
        await write_frame(stream, CONTRIBUTION, max_bytes=10)

    with pytest.raises(WireError, match="exceeds the 10 cap"):
        trio.run(main)
    assert stream.written == b""


def test_a_sealed_inside_leaves_its_sender_and_receiver_to_the_envelope() -> None:
    implied = wire.SEALED_IMPLIED[Contribution]
    inside = encode_body(CONTRIBUTION, implied)
    assert not set(implied) & set(wire.named(inside))
    assert len(inside) < len(encode_body(CONTRIBUTION)) - len(CONTRIBUTION.sender)
    given = {"sender": CONTRIBUTION.sender, "receiver": CONTRIBUTION.receiver}
    assert decode_body(inside, Contribution, given) == CONTRIBUTION
    # without them it lacks two required fields; an inside that names them is refused
    with pytest.raises(WireError, match="missing"):
        decode_body(inside, Contribution)
    with pytest.raises(WireError, match="sender travels in its envelope"):
        decode_body(encode_body(CONTRIBUTION), Contribution, given)
