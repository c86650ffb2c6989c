"""msgpack without copies (gossipfl.gossip.wire_views): the pieces a large message is encoded to,
and the views its binaries are decoded as, on hostile input too."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gossipfl.crypto.admission import member_x25519_keypair, peer_id_of, verify_key_from_peer_id
from gossipfl.crypto.envelope import open_envelope, seal
from gossipfl.gossip.framing import write_frame
from gossipfl.gossip.wire import (
    MAX_TENSORS,
    SEALED_IMPLIED,
    Contribution,
    MaskedInput,
    Packed,
    Sealed,
    Tensor,
    WireError,
    decode_body,
    encode_body,
    encode_body_pieces,
    encode_frame,
    encode_frame_pieces,
)
from gossipfl.gossip.wire_views import VIEW_MIN_BYTES, bin_header, pack_pieces

BIG = VIEW_MIN_BYTES // 4 + 10  # float32 parameters: a tensor just over the view threshold


def contribution(*sizes: int, packed: Packed | None = None) -> Contribution:
    rng = np.random.default_rng(sum(sizes))
    tensors = tuple(Tensor.from_array(f"t{i}", rng.normal(size=n).astype(np.float32))
                    for i, n in enumerate(sizes))
    return Contribution(federation="fed", round=3, sender="a", receiver="b", degree=4,
                        kind="delta" if packed else "full", base_round=2 if packed else -1,
                        disagreement=0.5, done=False, tensors=tensors, packed=packed,
                        examples=12)


def masked(words: int) -> MaskedInput:
    return MaskedInput(federation="fed", round=3, sender="a", aggregator="b", weight=0.25,
                       disagreement=0.1, done=False, data=bytes(range(256)) * (words // 64),
                       shares=(("c", b"s" * 40), ("d", b"t" * 40)))


def sealed(size: int) -> Sealed:
    return Sealed("fed", 3, bytearray(b"\x07" * size))


MESSAGES = [contribution(BIG, 10, BIG), contribution(3, 5), contribution(BIG),
            contribution(packed=Packed("sparse", 3 * BIG, 0.0, b"\x00" * 4 * BIG,
                                       np.arange(BIG, dtype="<u4").tobytes())),
            masked(BIG), masked(8), sealed(3 * VIEW_MIN_BYTES), sealed(100)]


# -- encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES)
def test_pieces_are_the_msgpack_bytes(message: Any) -> None:
    pieces = encode_body_pieces(message)
    assert b"".join(pieces) == encode_body(message)
    large = [p for p in pieces if len(p) >= VIEW_MIN_BYTES]
    assert all(isinstance(p, memoryview) for p in large)  # referred to, never copied
    assert b"".join(encode_frame_pieces(message)) == encode_frame(message)
    if not large:  # nothing to refer to: msgpack's own packer, in one piece
        assert pieces == [encode_body(message)]


def test_pieces_refer_to_the_binaries_without_copying() -> None:
    data = bytearray(b"\x01" * (2 * VIEW_MIN_BYTES))
    pieces = pack_pieces({"a": [1, "x", data, 2.5], "b": b"small", "c": data})
    assert [type(p) for p in pieces] == [bytes, memoryview, bytes, memoryview]
    data[0] = 9  # the pieces see the change: they are the data itself
    assert pieces[1][0] == 9 and pieces[3][0] == 9
    assert b"".join(pieces) == msgpack.packb({"a": [1, "x", data, 2.5], "b": b"small",
                                              "c": data}, use_bin_type=True)
    for length in (0, 255, 256, 65535, 65536):
        assert bin_header(length) == msgpack.packb(b"\x00" * length)[: len(bin_header(length))]


def test_a_large_sealed_frame_is_its_prefix_then_the_envelope_itself() -> None:
    message = sealed(3 * VIEW_MIN_BYTES)
    pieces = encode_frame_pieces(message)
    assert len(pieces) == 2 and isinstance(pieces[1], memoryview)
    assert pieces[1].obj is message.data

    class Recorder:
        def __init__(self) -> None:
            self.writes: list[Any] = []

        async def write(self, data: Any) -> None:
            self.writes.append(data)

    stream = Recorder()
    size = trio.run(write_frame, stream, message, 1 << 26)
    assert size == len(encode_frame(message))
    assert len(stream.writes) == 2 and stream.writes[1].obj is message.data
    assert b"".join(stream.writes) == encode_frame(message)


# -- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("message", MESSAGES)
def test_decoded_as_views_equals_the_message(message: Any) -> None:
    body = bytearray(encode_body(message))
    decoded = decode_body(body, type(message))
    assert decoded == message
    binaries = [t.data for t in getattr(decoded, "tensors", ())]
    binaries += [getattr(decoded, "data", b"")]
    if getattr(decoded, "packed", None) is not None:
        binaries += [decoded.packed.values, decoded.packed.indices]
    for binary in binaries:
        if len(binary) >= VIEW_MIN_BYTES:
            assert isinstance(binary, memoryview) and binary.readonly
            assert binary.obj is body  # a view of the frame: not copied
        else:
            assert isinstance(binary, bytes)


def test_decoded_arrays_are_read_only_views_of_the_frame() -> None:
    message = contribution(BIG)
    body = bytearray(encode_body(message))
    tensor = decode_body(body, Contribution).tensors[0]
    array = tensor.to_array()
    assert not array.flags.writeable
    np.testing.assert_array_equal(array, message.tensors[0].to_array())


LARGE_BODY = encode_body(contribution(BIG, 3, BIG))


@pytest.mark.parametrize("end", sorted({0, 1, 5, 60, 150, len(LARGE_BODY) // 2,
                                        len(LARGE_BODY) - 4 * BIG - 3, len(LARGE_BODY) - 1}))
def test_a_truncated_body_is_refused(end: int) -> None:
    with pytest.raises(WireError):
        decode_body(LARGE_BODY[:end], Contribution)
    if end >= VIEW_MIN_BYTES:  # walked: refused before msgpack's decoder sees it
        with pytest.raises(WireError, match="truncated"):
            decode_body(LARGE_BODY[:end], Contribution)


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(WireError, match="extra data"):
        decode_body(LARGE_BODY + b"\x00", Contribution)


def _with_field(extra: bytes) -> bytes:
    """LARGE_BODY's array with one more element ``<extra>`` (its array header bumped)."""
    if LARGE_BODY[0] == 0xDC:  # array16
        (count,) = struct.unpack(">H", LARGE_BODY[1:3])
        rest = LARGE_BODY[3:]
    else:
        assert 0x90 <= LARGE_BODY[0] <= 0x9F  # fixarray
        count, rest = LARGE_BODY[0] & 0x0F, LARGE_BODY[1:]
    return b"\xdc" + struct.pack(">H", count + 1) + rest + extra


@pytest.mark.parametrize("ext", [
    b"\xd6\x7f" + struct.pack(">I", 0),  # a forged view placeholder
    b"\xd6\x7f" + struct.pack(">I", 7),
    b"\xd4\x01\x00", b"\xc7\x01\x05\x00", b"\xc8\x00\x01\x05\x00", b"\xc1",
])
def test_ext_types_and_reserved_bytes_are_refused(ext: bytes) -> None:
    with pytest.raises(WireError, match="not accepted"):
        decode_body(_with_field(ext), Contribution)


def test_announced_lengths_beyond_the_body_or_the_caps_are_refused() -> None:
    with pytest.raises(WireError, match="truncated"):  # a binary longer than the frame
        decode_body(_with_field(b"\xc6" + struct.pack(">I", 1 << 30)), Contribution)
    with pytest.raises(WireError, match="truncated"):  # a string longer than the frame
        decode_body(_with_field(b"\xdb" + struct.pack(">I", 1 << 30)), Contribution)
    with pytest.raises(WireError, match="max_array_len"):
        decode_body(_with_field(b"\xdd" + struct.pack(">I", MAX_TENSORS + 1)), Contribution)
    with pytest.raises(WireError, match="max_map_len"):
        decode_body(_with_field(b"\xdf" + struct.pack(">I", 1 << 20)), Contribution)
    with pytest.raises(WireError, match="element cap"):  # many small arrays
        decode_body(_with_field(b"\xdc\x03\xff" + (b"\x9f" + b"\x00" * 15) * 1023),
                    Contribution)


def test_a_tensor_of_the_wrong_length_is_still_refused_as_a_view() -> None:
    body = bytearray(LARGE_BODY)
    message = contribution(BIG, 3, BIG)
    header = bin_header(4 * BIG) + bytes(message.tensors[0].data[:8])
    at = bytes(body).index(header)
    body[at + 1: at + 5] = struct.pack(">I", 4 * BIG - 4)  # announce 4 bytes fewer
    with pytest.raises(WireError):
        decode_body(body, Contribution)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_changes_raise_only_wire_error(data: st.DataObject) -> None:
    body = bytearray(LARGE_BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, 200))  # the structure lies in the first bytes
        body[index] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_body(body, Contribution)
    except WireError:
        return
    assert isinstance(decoded, Contribution)


# -- a large envelope, end to end --------------------------------------------------------------


def test_a_large_contribution_seals_and_opens_without_joining() -> None:
    sender_key, receiver_key = SigningKey(b"\x05" * 32), SigningKey(b"\x06" * 32)
    sender, receiver = peer_id_of(sender_key.verify_key), peer_id_of(receiver_key.verify_key)
    private, public = member_x25519_keypair(bytes(receiver_key))
    message = dataclasses.replace(contribution(BIG, 7, 3 * BIG), sender=sender,
                                  receiver=receiver)
    implied = SEALED_IMPLIED[Contribution]
    data = seal(encode_body_pieces(message, implied), federation="fed", round=3, sender=sender,
                receiver=receiver, sender_signing_key=sender_key,
                receiver_x25519_public=public)
    frame = bytearray(encode_frame(Sealed("fed", 3, data)))
    outer = decode_body(frame[4:], Sealed)
    assert isinstance(outer.data, memoryview) and outer.data == data
    _, payload = open_envelope(outer.data, federation="fed", expected_round=3,
                               expected_sender=sender, receiver=receiver,
                               receiver_x25519_private=private,
                               sender_verify_key=verify_key_from_peer_id(sender))
    assert decode_body(payload, Contribution, dict(zip(implied, (sender, receiver),
                                                       strict=True))) == message
