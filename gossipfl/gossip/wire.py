"""The wire: every message gossipfl sends, as frozen dataclasses with explicit encode/decode.

A frame is a 4-byte big-endian body length followed by a msgpack array: the wire version, the
message kind's code (its place in the registry), the federation, then the dataclass's fields by
place (:func:`wire_order`: those it must carry, then its optional ones, an absent one as nil
and trailing absent ones left off), so that no field's name travels. :func:`named` reads a
body as a map of field names (for tools and tests), :func:`from_named` packs one back.
Nothing else in gossipfl builds or parses bytes: the network layer calls :func:`encode_frame`,
:func:`frame_length` and :func:`decode_body`.

Decoding treats its input as hostile. It refuses an over-long frame before allocating it, an
unknown version or kind, a missing or extra key, a value of the wrong type, an array whose data
does not match its dtype and shape, and non-finite parameters, always with a :class:`WireError`
that says which rule was broken.

The wire is defined in one place, this module, which the rest of gossipfl imports every wire name
from. For size it is written in seven files, none of which imports anything else of gossipfl:

- this module: the codec, i.e. the version, the frame header and frame caps, the registry of
  message kinds (:data:`Message`), encode and decode; it re-exports the names of those below;
- :mod:`gossipfl.gossip.wire_fields`: :class:`WireError`, the per-field caps and field checks;
- :mod:`gossipfl.gossip.wire_membership`: heartbeats and link requests and replies;
- :mod:`gossipfl.gossip.wire_contribution`: tensors, compressed deltas, contributions, acks
  and sealed contributions;
- :mod:`gossipfl.gossip.wire_secagg`: the secure-aggregation messages;
- :mod:`gossipfl.gossip.wire_views`: msgpack without copying large binaries (the pieces a
  sealed or large frame is written from, and the views its binaries are read as);
- :mod:`gossipfl.gossip.wire_limits`: each kind's decode limits and the bounded decoder.

A new message kind gets its dataclass in one of the message modules and its entries in
:data:`Message`, :data:`M`, the registry and :data:`DECODE_LIMITS` here.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

import msgpack

from gossipfl.gossip.wire_contribution import (
    PACKED_CODECS,
    Ack,
    Contribution,
    Packed,
    Sealed,
    Tensor,
)
from gossipfl.gossip.wire_fields import (
    ALLOWED_DTYPES,
    MAX_ADDR_CHARS,
    MAX_ADDRS,
    MAX_CERTIFICATE_BYTES,
    MAX_DEPTH,
    MAX_MEMBERS,
    MAX_NAME_CHARS,
    MAX_PEER_ID_CHARS,
    MAX_REVOCATION_BYTES,
    MAX_ROUND,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
    MAX_TENSORS,
    STAMP_BYTES,
    WireError,
    check_str,
)
from gossipfl.gossip.wire_limits import (
    DECODE_LIMITS,
    DEFAULT_DECODE_LIMITS,
    DecodeLimits,
    unpack_bounded,
)
from gossipfl.gossip.wire_membership import (
    MAX_DIGEST_MEMBERS,
    DialbackReply,
    DialbackRequest,
    Heartbeat,
    LinkReply,
    LinkRequest,
    MemberInfo,
    decode_digest,
    encode_digest,
    member_tag,
)
from gossipfl.gossip.wire_secagg import (
    MAX_SHARE_CIPHERTEXT,
    SIGNATURE_BYTES,
    ConsistencyRequest,
    ConsistencyResponse,
    Known,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
    table_of,
)
from gossipfl.gossip.wire_views import VIEW_MIN_BYTES, Buffer, item_len, pack_pieces, unpack_views

__all__ = (
    "ALLOWED_DTYPES",
    "DECODE_LIMITS",
    "DEFAULT_DECODE_LIMITS",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "HEADER",
    "HEADER_BYTES",
    "MAX_ADDRS",
    "MAX_ADDR_CHARS",
    "MAX_CERTIFICATE_BYTES",
    "MAX_CONTROL_BYTES",
    "MAX_DEPTH",
    "MAX_DIGEST_MEMBERS",
    "MAX_MEMBERS",
    "MAX_NAME_CHARS",
    "MAX_PEER_ID_CHARS",
    "MAX_REVOCATION_BYTES",
    "MAX_ROUND",
    "MAX_SHARE_CIPHERTEXT",
    "MAX_TENSORS",
    "MAX_TENSOR_DIMS",
    "MAX_TENSOR_ELEMENTS",
    "PACKED_CODECS",
    "SIGNATURE_BYTES",
    "STAMP_BYTES",
    "WIRE_VERSION",
    "Ack",
    "ConsistencyRequest",
    "ConsistencyResponse",
    "Contribution",
    "DecodeLimits",
    "DialbackReply",
    "DialbackRequest",
    "Heartbeat",
    "Known",
    "LinkReply",
    "LinkRequest",
    "M",
    "MaskedInput",
    "MemberInfo",
    "Message",
    "Packed",
    "Sealed",
    "Tensor",
    "UnmaskRequest",
    "UnmaskResponse",
    "WireError",
    "decode_body",
    "decode_digest",
    "decode_frame",
    "encode_body",
    "encode_body_pieces",
    "encode_digest",
    "encode_frame",
    "encode_frame_parts",
    "encode_frame_pieces",
    "frame_length",
    "member_tag",
    "unpack_bounded",
)

# What each version changed is listed in the README ("The wire"); 10: a
# body is an array of the fields by place (wire_order), its kind a small code, no field's name
# travelling, and a sealed message's inside leaves its sender and receiver to the envelope
WIRE_VERSION = 10
HEADER = struct.Struct(">I")
HEADER_BYTES = HEADER.size

#: Size cap for control frames (heartbeats, link requests, acks).
MAX_CONTROL_BYTES = 256 * 1024
#: Default size cap for frames that carry parameters; nodes may configure another.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

# -- the registry of message kinds -----------------------------------------------------------------

#: Any wire message; :data:`M` is one given kind.
Message = (Heartbeat | LinkRequest | LinkReply | Contribution | Ack | Sealed | MaskedInput
           | UnmaskRequest | UnmaskResponse | ConsistencyRequest | ConsistencyResponse
           | DialbackRequest | DialbackReply)
M = TypeVar("M", Heartbeat, LinkRequest, LinkReply, Contribution, Ack, Sealed, MaskedInput,
            UnmaskRequest, UnmaskResponse, ConsistencyRequest, ConsistencyResponse,
            DialbackRequest, DialbackReply)
#: The registry, in the order that gives each kind its code on the wire (append only).
_REGISTRY: tuple[type[Any], ...] = (
    Heartbeat, LinkRequest, LinkReply, Contribution, Ack, Sealed, MaskedInput, UnmaskRequest,
    UnmaskResponse, ConsistencyRequest, ConsistencyResponse, DialbackRequest, DialbackReply)
_KINDS: dict[str, type[Any]] = {cls.KIND: cls for cls in _REGISTRY}
_CODES: dict[type[Any], int] = {cls: code for code, cls in enumerate(_REGISTRY)}


def _shape(cls: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    """A kind's wire fields: all it may carry (its dataclass fields, and ``WIRE_ONLY`` ones
    such as a peer table, which decoding folds into the others), and those it must."""
    names = frozenset(f.name for f in fields(cls)) - {"federation"}
    return (names | getattr(cls, "WIRE_ONLY", frozenset()),
            names - getattr(cls, "OPTIONAL", frozenset()))


def wire_order(cls: type[Any]) -> tuple[str, ...]:
    """A kind's fields in the places they travel: those it must carry (in its dataclass's
    order), then its optional ones, then its ``WIRE_ONLY`` ones (sorted), so that the optional
    ones a message leaves out are mostly trailing and take no byte."""
    names = [f.name for f in fields(cls) if f.name != "federation"]
    optional = getattr(cls, "OPTIONAL", frozenset())
    return (*(n for n in names if n not in optional), *(n for n in names if n in optional),
            *sorted(getattr(cls, "WIRE_ONLY", frozenset())))


#: Each kind's :func:`_shape` and :func:`wire_order`, taken once: ``dataclasses.fields`` walks a
#: class at every call, which was a fifth of decoding a frame (a py-spy sample of a 32-node run).
_SHAPES: dict[type[Any], tuple[frozenset[str], frozenset[str]]] = {
    cls: _shape(cls) for cls in _REGISTRY}
_ORDERS: dict[type[Any], tuple[str, ...]] = {cls: wire_order(cls) for cls in _REGISTRY}


# -- frames ----------------------------------------------------------------------------------------


#: The fields a sealed message's inside leaves to its envelope, whose signed header names its
#: sender and receiver (``crypto/envelope.py``): each peer id travels once a sealed frame.
SEALED_IMPLIED: dict[type[Any], tuple[str, str]] = {Contribution: ("sender", "receiver"),
                                                    MaskedInput: ("sender", "aggregator")}


def _positional(cls: type[Any], federation: str, named: dict[str, Any],
                leave: tuple[str, ...] = ()) -> list[Any]:
    """The body's array: version, kind code, federation, then ``named``'s values by place (an
    absent one, or one named in ``leave``, nil; trailing absent ones left off)."""
    values = [None if name in leave else named.get(name) for name in _ORDERS[cls]]
    while values and values[-1] is None:
        values.pop()
    return [WIRE_VERSION, _CODES[cls], federation, *values]


#: The kinds that may name their peers by place in a :class:`Known` table, and the field of
#: each that is the table's owner (left out with it).
TABLED = (MaskedInput, UnmaskRequest)
OWNER_FIELD: dict[type[Any], str] = {MaskedInput: "aggregator", UnmaskRequest: "sender"}


def _body(message: Message, leave: tuple[str, ...], known: Known | None) -> list[Any]:
    """``message``'s body array: less the fields named in ``leave``, and for a :data:`TABLED`
    kind with a ``known`` table its peers by place in it and its owner's field left out."""
    if known is not None and isinstance(message, TABLED):
        named = message._fields_to_wire(known)
        leave = (*leave, OWNER_FIELD[type(message)])
    else:
        named = message._fields_to_wire()
    return _positional(type(message), message.federation, named, leave)


def encode_body(message: Message, leave: tuple[str, ...] = (),
                known: Known | None = None) -> bytes:
    """The msgpack body of ``message`` (no length header), less the fields named in ``leave``
    (a sealed inside: :data:`SEALED_IMPLIED`), its peers by place in ``known`` where its kind
    is :data:`TABLED`."""
    return msgpack.packb(_body(message, leave, known), use_bin_type=True, strict_types=False)


def encode_body_pieces(message: Message, leave: tuple[str, ...] = (),
                       known: Known | None = None) -> list[Buffer]:
    """:func:`encode_body` as pieces: each binary field of :data:`VIEW_MIN_BYTES` or more
    (tensor data, an envelope) referred to, not copied; ``b"".join`` of them is
    :func:`encode_body`'s bytes."""
    if not _has_large_binary(message):  # msgpack's own packer: faster for small fields
        return [encode_body(message, leave, known)]
    return pack_pieces(_body(message, leave, known))


def _has_large_binary(message: Message) -> bool:
    """Whether ``message`` holds a binary field of :data:`VIEW_MIN_BYTES` or more (only
    contributions, sealed messages and masked inputs carry any)."""
    if isinstance(message, (Sealed, MaskedInput)):
        return item_len(message.data) >= VIEW_MIN_BYTES
    if isinstance(message, Contribution):
        packed = message.packed
        return (any(item_len(t.data) >= VIEW_MIN_BYTES for t in message.tensors)
                or (packed is not None and max(item_len(packed.values),
                                               item_len(packed.indices)) >= VIEW_MIN_BYTES))
    return False


def encode_frame_pieces(message: Message, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                        known: Known | None = None) -> list[Buffer]:
    """The frame as pieces: for a sealed message, the header and the msgpack up to its
    envelope, then the envelope itself, not copied (see :func:`encode_body_pieces`); for any
    other kind, the header and the body. Raises :class:`WireError` if the frame would exceed
    ``max_bytes``."""
    if not isinstance(message, Sealed) or not _has_large_binary(message):
        return list(encode_frame_parts(message, max_bytes, known))
    pieces = encode_body_pieces(message)
    length = sum(item_len(piece) for piece in pieces)
    if length > max_bytes:
        raise WireError(f"{message.KIND} frame of {length} bytes exceeds the {max_bytes} cap")
    return [HEADER.pack(length) + pieces[0], *pieces[1:]]


def encode_frame_parts(message: Message, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                       known: Known | None = None) -> tuple[bytes, bytes]:
    """The frame's header and body, apart (a large body is written without copying it behind
    its header). Raises :class:`WireError` if the frame would exceed ``max_bytes``."""
    body = encode_body(message, known=known)
    if len(body) > max_bytes:
        raise WireError(f"{message.KIND} frame of {len(body)} bytes exceeds the {max_bytes} cap")
    return HEADER.pack(len(body)), body


def encode_frame(message: Message, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Header + body. Raises :class:`WireError` if the frame would exceed ``max_bytes``."""
    header, body = encode_frame_parts(message, max_bytes)
    return header + body


def frame_length(header: bytes | bytearray, max_bytes: int) -> int:
    """Parse a frame header and check the announced length against ``max_bytes``."""
    if len(header) != HEADER_BYTES:
        raise WireError(f"frame header must be {HEADER_BYTES} bytes")
    (length,) = HEADER.unpack(header)
    if length == 0:
        raise WireError("empty frame")
    if length > max_bytes:
        raise WireError(f"frame of {length} bytes exceeds the {max_bytes} cap")
    return length


#: The kinds whose large binaries (tensor data, an envelope, masked words) are decoded as
#: read-only views of the frame (:func:`~gossipfl.gossip.wire_views.unpack_views`), not copied.
VIEW_KINDS = frozenset({"contribution", "sealed", "masked_input"})


def _limits_of(kinds: tuple[type[Message], ...]) -> DecodeLimits:
    """The decode limits of one of several kinds: each cap the largest of theirs."""
    each = [DECODE_LIMITS.get(k.KIND, DEFAULT_DECODE_LIMITS) for k in kinds]
    return DecodeLimits(*(max(getattr(limit, f.name) for limit in each)
                          for f in fields(DecodeLimits)))


def decode_body(body: Buffer, expected: type[M] | tuple[type[Message], ...],
                given: Mapping[str, Any] | None = None, known: Known | None = None) -> M:
    """Decode one frame body into a message of type ``expected`` (within its
    :data:`DECODE_LIMITS`), or of one of the types in a tuple (within the largest of their
    limits). A contribution's, sealed message's or masked input's binaries of
    :data:`VIEW_MIN_BYTES` or more are read-only ``memoryview`` slices of ``body``. ``given``:
    fields the body leaves to its envelope (:data:`SEALED_IMPLIED`), by name, with the values
    the envelope was opened with (a body that carries one of them is refused). ``known``: the
    table a :data:`TABLED` kind may name its peers by place in (one whose digest differs, or
    none given, is refused)."""
    if isinstance(expected, tuple):
        if any(k.KIND in VIEW_KINDS for k in expected):
            raise ValueError("kinds decoded as views are decoded alone")
        return _decode(body, expected, _limits_of(expected), given,  # type: ignore[return-value]
                       known)
    return _decode(body, (expected,), DECODE_LIMITS.get(expected.KIND, DEFAULT_DECODE_LIMITS),
                   given, known)


def _decode(body: Buffer, kinds: tuple[type[Message], ...], limits: DecodeLimits,
            given: Mapping[str, Any] | None = None, known: Known | None = None) -> Any:
    expected = kinds[0]
    if expected.KIND in VIEW_KINDS and len(body) >= VIEW_MIN_BYTES:
        data = unpack_views(body, limits,
                            lambda compact, hook: unpack_bounded(compact, limits, hook))
    else:
        data = unpack_bounded(body, limits)
    cls, federation, named = _read(data)
    if cls not in kinds:
        raise WireError(f"expected a {' or '.join(k.KIND for k in kinds)} message, got "
                        f"{cls.KIND}")
    for name, value in (given or {}).items():
        if name in named:
            raise WireError(f"{cls.KIND} {name} travels in its envelope, not inside it")
        named[name] = value
    # by place in a known table (its digest checked, else refused): its owner's field left out
    if cls in TABLED and table_of(named, known, cls.KIND) is not None and known is not None:
        named.setdefault(OWNER_FIELD[cls], known.owner)
    wanted, required = _SHAPES[cls]
    keys = set(named)
    if not required <= keys <= wanted:
        missing = sorted(required - keys)
        extra = sorted(str(k) for k in keys - wanted)
        raise WireError(f"{cls.KIND} fields wrong: missing {missing}, unexpected {extra}")
    if cls in TABLED:
        return cls._fields_from_wire(federation, named, known)
    return cls._fields_from_wire(federation, named)


def _read(data: Any) -> tuple[type[Any], str, dict[str, Any]]:
    """A decoded body's kind, federation and fields by name; WireError if it is no body of
    this version (not an array, another version, an unknown kind, more fields than its kind's)."""
    if not isinstance(data, list) or len(data) < 3:
        raise WireError("frame body must be an array of version, kind, federation and fields")
    version, code, federation = data[:3]
    if isinstance(version, bool) or not isinstance(version, int) or version != WIRE_VERSION:
        raise WireError(f"wire version {version!r} is not supported (expected {WIRE_VERSION})")
    ok = isinstance(code, int) and not isinstance(code, bool) and 0 <= code < len(_REGISTRY)
    if not ok:
        raise WireError(f"message kind {code!r} is unknown")
    cls = _REGISTRY[code]
    order = _ORDERS[cls]
    if len(data) > 3 + len(order):
        raise WireError(f"{cls.KIND} fields wrong: {len(data) - 3} fields, unexpected past "
                        f"its kind's {len(order)}")
    federation = check_str(federation, "federation", MAX_NAME_CHARS)
    return cls, federation, {name: value for name, value in zip(order, data[3:], strict=False)
                             if value is not None}  # nil: absent (refused if required)


def named(body: Buffer) -> dict[str, Any]:
    """A body as a map: ``v``, ``t`` (the kind's name), ``fed`` and each field present by its
    name (for tools and tests; :func:`from_named` packs one back). WireError as decoding."""
    cls, federation, fields_ = _read(unpack_bounded(body, DEFAULT_DECODE_LIMITS))
    return {"v": WIRE_VERSION, "t": cls.KIND, "fed": federation, **fields_}


def from_named(body: dict[str, Any]) -> bytes:
    """:func:`named`'s inverse: the body of the kind ``body["t"]`` names (any other value in
    its place as it is), ``v`` and ``fed`` as given; a key its kind has no place for goes past
    its last place (as a peer adding a field would send it: refused)."""
    kind = body.get("t")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    order = _ORDERS[cls] if cls is not None else ()
    fields_ = {k: v for k, v in body.items() if k not in ("v", "t", "fed")}
    values = [fields_.get(name) for name in order]
    extra = [v for k, v in fields_.items() if k not in order]
    if not extra:
        while values and values[-1] is None:
            values.pop()
    code = _CODES[cls] if cls is not None else kind  # another value as it is: refused
    values = [body.get("v"), code, body.get("fed"), *values, *extra]
    return msgpack.packb(values, use_bin_type=True, strict_types=False)


def decode_frame(frame: bytes, expected: type[M], max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> M:
    """Decode a whole frame (header + body), as read from a stream."""
    length = frame_length(frame[:HEADER_BYTES], max_bytes)
    if len(frame) - HEADER_BYTES != length:
        raise WireError(
            f"frame announces {length} body bytes but carries {len(frame) - HEADER_BYTES}"
        )
    return decode_body(frame[HEADER_BYTES:], expected)
