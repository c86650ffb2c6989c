"""msgpack without copying large binaries: encoding to a list of pieces that refer to them, and
decoding that leaves them as read-only views of the frame.

Part of the wire, which :mod:`gossipfl.gossip.wire` defines and re-exports. msgpack-python copies
every ``bin`` it packs and every ``bin`` it unpacks; for a contribution of 1M parameters that is
4 MB twice at each end, on top of the envelope's own buffers. Here:

* :func:`pack_pieces` packs a value as msgpack (byte for byte what ``msgpack.packb(value,
  use_bin_type=True)`` gives) into a list of pieces, each binary of at least
  :data:`VIEW_MIN_BYTES` a piece of its own, referred to and not copied; the small pieces
  between them are joined. A sender hashes and encrypts the pieces one after the other.
* :func:`unpack_views` decodes a msgpack body whose large binaries come back as read-only
  ``memoryview`` slices of ``body``. It walks the body once in Python (header bytes only:
  strings and binaries are skipped by their announced lengths) to find the large binaries,
  within an element budget and refusing any ``ext`` object; then the body with each large
  binary replaced by a 6-byte ``ext`` placeholder goes to msgpack's own (C) decoder with the
  caller's limits, which turns the placeholders back into views. A body that is not exactly one
  msgpack object, or is truncated, or uses ``ext`` types, is refused with a :class:`WireError`.
  The views keep ``body`` alive for as long as the decoded message lives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack

from gossipfl.gossip.wire_fields import WireError

#: A binary at least this long is a piece (encoding) or a view (decoding) of its own.
VIEW_MIN_BYTES = 64 * 1024  # below it, a copy costs less than walking the body in Python

Buffer = bytes | bytearray | memoryview

_PLACEHOLDER = 0x7F  # the ext type code of a view placeholder (never on the wire: ext refused)
_U8, _U16, _U32 = struct.Struct(">B"), struct.Struct(">H"), struct.Struct(">I")

# Per type byte of a fixed-size scalar, the bytes it takes (type byte included).
_FIXED = {0xC0: 1, 0xC2: 1, 0xC3: 1, 0xCA: 5, 0xCB: 9, 0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9,
          0xD0: 2, 0xD1: 3, 0xD2: 5, 0xD3: 9}
# Per type byte of a string or binary with an explicit length: the length's struct.
_SIZED = {0xC4: _U8, 0xC5: _U16, 0xC6: _U32, 0xD9: _U8, 0xDA: _U16, 0xDB: _U32}
_BINS = frozenset({0xC4, 0xC5, 0xC6})
# Per type byte of an array or a map with an explicit count: (the count's struct, is a map).
_CONTAINERS = {0xDC: (_U16, False), 0xDD: (_U32, False), 0xDE: (_U16, True), 0xDF: (_U32, True)}


def bin_header(length: int) -> bytes:
    """The msgpack header of a binary of ``length`` bytes (as msgpack-python chooses it)."""
    if length < 1 << 8:
        return b"\xc4" + _U8.pack(length)
    if length < 1 << 16:
        return b"\xc5" + _U16.pack(length)
    return b"\xc6" + _U32.pack(length)


def pack_pieces(value: Any) -> list[Buffer]:
    """``value`` as msgpack pieces: large binaries referred to, the bytes between them joined.

    ``b"".join(pack_pieces(v)) == msgpack.packb(v, use_bin_type=True)`` for the values the wire
    sends (maps, lists and tuples, strings, numbers, booleans, None, bytes-like)."""
    packer = msgpack.Packer(use_bin_type=True, strict_types=False)
    pieces: list[Buffer] = []
    small: list[bytes] = []

    def walk(item: Any) -> None:
        if isinstance(item, dict):
            small.append(packer.pack_map_header(len(item)))
            for key, inner in item.items():
                small.append(packer.pack(key))
                walk(inner)
        elif isinstance(item, (list, tuple)):
            small.append(packer.pack_array_header(len(item)))
            for inner in item:
                walk(inner)
        elif isinstance(item, (bytes, bytearray, memoryview)) and item_len(item) >= VIEW_MIN_BYTES:
            view = memoryview(item).cast("B")
            small.append(bin_header(len(view)))
            pieces.append(b"".join(small))
            small.clear()
            pieces.append(view)
        else:
            small.append(packer.pack(item))

    walk(value)
    if small:
        pieces.append(b"".join(small))
    return [piece for piece in pieces if len(piece)]


def item_len(item: bytes | bytearray | memoryview) -> int:
    """The length in bytes of a bytes-like object (a memoryview's ``nbytes``)."""
    return item.nbytes if isinstance(item, memoryview) else len(item)


def _large_bins(view: memoryview, limits: Any) -> list[tuple[int, int]]:
    """Where the large binaries of the one msgpack object in ``view`` lie, as (header start,
    end) ranges; WireError for a truncated body, trailing bytes, an ext object, a
    reserved type byte, an array or map longer than ``limits`` allow, or more than
    ``limits.max_elements`` elements (list items, map keys and values)."""
    end = len(view)
    found: list[tuple[int, int]] = []
    at, pending, budget = 0, 1, limits.max_elements
    while pending:
        if at >= end:
            raise WireError("malformed msgpack: truncated")
        kind = view[at]
        pending -= 1
        if kind <= 0x7F or kind >= 0xE0:  # fixints
            at += 1
            continue
        if kind <= 0x9F:  # fixmap (0x80..0x8f), fixarray (0x90..0x9f)
            count, is_map = kind & 0x0F, kind <= 0x8F
            at += 1
        elif kind <= 0xBF:  # fixstr
            at += 1 + (kind & 0x1F)
            continue
        elif kind in _FIXED:
            at += _FIXED[kind]
            continue
        elif kind in _SIZED:
            size = _SIZED[kind]
            if at + 1 + size.size > end:
                raise WireError("malformed msgpack: truncated")
            (length,) = size.unpack_from(view, at + 1)
            start = at + 1 + size.size
            if start + length > end:
                raise WireError("malformed msgpack: truncated")
            if kind in _BINS and length >= VIEW_MIN_BYTES:
                found.append((at, start + length))
            at = start + length
            continue
        elif kind in _CONTAINERS:
            size, is_map = _CONTAINERS[kind]
            if at + 1 + size.size > end:
                raise WireError("malformed msgpack: truncated")
            (count,) = size.unpack_from(view, at + 1)
            at += 1 + size.size
        else:  # 0xc1 (never used) and the ext types
            raise WireError(f"malformed msgpack: type byte 0x{kind:02x} is not accepted")
        cap, what = ((limits.max_map_len, "max_map_len") if is_map
                     else (limits.max_array_len, "max_array_len"))
        if count > cap:  # msgpack's own words, as its decoder refuses it
            raise WireError(f"malformed msgpack: {count} exceeds {what}({cap})")
        count *= 2 if is_map else 1
        budget -= count
        if budget < 0:
            raise WireError("frame structure expands beyond this message kind's element cap")
        pending += count
    if at != end:
        raise WireError("malformed msgpack: extra data after the message")
    return found


def unpack_views(body: Buffer, limits: Any,
                 unpack: Callable[[Buffer, Callable[[int, bytes], Any] | None], Any]) -> Any:
    """Decode ``body`` with its large binaries as read-only views of it (see the module).

    ``unpack(compact, ext_hook)`` is the caller's bounded msgpack decode (its limits: the
    placeholders are ``ext`` objects of 4 bytes; ``None``: no ext accepted); ``limits`` (a
    :class:`~gossipfl.gossip.wire.DecodeLimits`) bound the walk as they bound that decode."""
    view = memoryview(body).cast("B").toreadonly()
    ranges = _large_bins(view, limits)
    if not ranges:
        return unpack(view, None)
    views: list[memoryview] = []
    parts: list[Buffer] = []
    at = 0
    for index, (start, stop) in enumerate(ranges):
        header = _SIZED[view[start]]
        data = start + 1 + header.size
        parts.append(view[at:start])
        parts.append(b"\xd6" + _U8.pack(_PLACEHOLDER) + _U32.pack(index))  # fixext 4
        views.append(view[data:stop])
        at = stop
    parts.append(view[at:])

    def ext_hook(code: int, data: bytes) -> memoryview:
        if code != _PLACEHOLDER or len(data) != 4:
            raise WireError("malformed msgpack: ext types are not accepted")
        return views[_U32.unpack(data)[0]]

    return unpack(b"".join(parts), ext_hook)


__all__ = ["VIEW_MIN_BYTES", "Buffer", "bin_header", "item_len", "pack_pieces", "unpack_views"]
