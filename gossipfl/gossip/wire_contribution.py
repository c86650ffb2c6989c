"""Wire messages of plain (not secure) aggregation: the :class:`Tensor` arrays, a compressed
delta (:class:`Packed`), a neighbour's :class:`Contribution`, its :class:`Ack`, and the
:class:`Sealed` (signed, encrypted) form.

Part of the wire, which :mod:`gossipfl.gossip.wire` defines: it holds the codec (version,
framing, decode limits, the registry of message kinds) and re-exports these classes, so import
them from there. The caps and field checks used here live in :mod:`gossipfl.gossip.wire_fields`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire_fields import (
    ALLOWED_DTYPES,
    MAX_DEPTH,
    MAX_MEMBERS,
    MAX_NAME_CHARS,
    MAX_PEER_ID_CHARS,
    MAX_ROUND,
    MAX_TENSOR_DIMS,
    MAX_TENSOR_ELEMENTS,
    MAX_TENSORS,
    ORIGIN_BYTES,
    Binary,
    WireError,
    check_bool,
    check_code,
    check_float,
    check_int,
    check_str,
    is_binary,
)

# -- arrays -------------------------------------------------------------------------------------

_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}  # built once: np.dtype(str) is slow
# and back: ``dtype.name`` is computed in Python each time (6 % of a 1,000-member simulation's
# rounds, where every contribution names the dtype of each of its tensors)
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


@dataclass(frozen=True)
class Tensor:
    """One named array, framework independent: ``{name, dtype, shape, data}``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: Binary  # a large array's data, as decoded, is a read-only view of its frame

    @classmethod
    def from_array(cls, name: str, array: np.ndarray, *, copy: bool = True) -> Tensor:
        """The tensor of ``array``: its bytes copied, or (``copy=False``) a read-only view of
        them (of a C-contiguous array's own memory): then the message must be encoded (sent or
        sealed) before anything writes to ``array``."""
        contiguous = np.ascontiguousarray(array)
        dtype = _NAMES.get(contiguous.dtype)
        if dtype is None and _NAMES.get(contiguous.dtype.newbyteorder("=")):
            # the wire's arrays are little-endian native ones: another byte order is converted
            contiguous = contiguous.astype(contiguous.dtype.newbyteorder("="))
            dtype = _NAMES[contiguous.dtype]
        if dtype is None:
            raise WireError(f"tensor {name!r}: dtype {contiguous.dtype.name} is not allowed")
        data = contiguous.tobytes() if copy else memoryview(contiguous).cast("B").toreadonly()
        return cls(name, dtype, tuple(contiguous.shape), data)

    def to_array(self) -> np.ndarray:
        """The array (read-only view over the frame's bytes)."""
        return np.frombuffer(self.data, dtype=_DTYPES[self.dtype]).reshape(self.shape)

    def _to_wire(self) -> list[Any]:
        return [self.name, self.dtype, list(self.shape), self.data]

    @classmethod
    def _from_wire(cls, value: Any) -> Tensor:
        if not isinstance(value, list) or len(value) != 4:
            raise WireError("tensor must be [name, dtype, shape, data]")
        name, dtype, shape, data = value
        name = check_str(name, "tensor name", MAX_NAME_CHARS)
        dtype = check_str(dtype, f"tensor {name!r} dtype", 16)
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r}: dtype {dtype!r} is not allowed")
        if not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS:
            raise WireError(f"tensor {name!r}: shape must be a list of at most "
                            f"{MAX_TENSOR_DIMS} dimensions")
        dims = tuple(check_int(d, f"tensor {name!r} dimension", 0, 2**31) for d in shape)
        if math.prod(max(d, 1) for d in dims) > MAX_TENSOR_ELEMENTS:
            raise WireError(f"tensor {name!r}: shape {dims} is too large")
        if not is_binary(data):
            raise WireError(f"tensor {name!r}: data must be bytes")
        expected = math.prod(dims) * _DTYPES[dtype].itemsize
        if len(data) != expected:
            raise WireError(
                f"tensor {name!r}: {len(data)} data bytes do not match shape {dims} of {dtype}"
            )
        tensor = cls(name, dtype, dims, data)
        if not np.isfinite(tensor.to_array()).all():
            raise WireError(f"tensor {name!r}: holds NaN or infinite values")
        return tensor


#: The codecs of a :class:`Packed` delta (gossipfl.aggregation.compress.Codec) and the
#: little-endian dtype of their values.
PACKED_CODECS = {"int8": np.dtype("<i1"), "int4": np.dtype("<u1"), "fp16": np.dtype("<f2"),
                 "sparse": np.dtype("<f4")}
_INDEX_DTYPE = np.dtype("<u4")
_SCALE_DTYPE = np.dtype("<f4")
INT4_BLOCK = 128  # coordinates per int4 scale (gossipfl.aggregation.compress.INT4_BLOCK)


@dataclass(frozen=True)
class Packed:
    """A compressed delta of ``size`` parameters (the whole flat vector; issue 10):
    ``[codec, size, scale, values, indices]`` on the wire.

    ``int8``: ``values`` holds ``size`` int8 levels, the delta is levels × ``scale`` (finite,
    ≥ 0); ``int4``: ``values`` holds ⌈size / 2⌉ bytes of two levels each (low nibble first,
    level + 7 in 0..14; a last odd byte's high nibble 0) and the fifth slot (``indices``) holds
    the float32 block scales (finite, ≥ 0), one per 128 coordinates; ``fp16``: ``size`` finite
    float16 values; ``sparse`` (top-k, random-k): k ≤ size float32 values and k uint32
    ``indices``, strictly increasing and below ``size``, every other coordinate 0. Unused parts
    are empty (``indices``) or 0 (``scale``).
    """

    codec: str
    size: int
    scale: float
    values: Binary
    indices: Binary = b""

    def values_array(self) -> np.ndarray:
        return np.frombuffer(self.values, dtype=PACKED_CODECS[self.codec])

    def indices_array(self) -> np.ndarray:
        return np.frombuffer(self.indices, dtype=_INDEX_DTYPE)

    def scales_array(self) -> np.ndarray:
        """int4: the block scales (carried in the fifth slot)."""
        return np.frombuffer(self.indices, dtype=_SCALE_DTYPE)

    @property
    def nbytes(self) -> int:
        return len(self.values) + len(self.indices) + (4 if self.codec == "int8" else 0)

    def _to_wire(self) -> list[Any]:
        return [self.codec, self.size, self.scale, self.values, self.indices]

    @classmethod
    def _from_wire(cls, value: Any) -> Packed:
        if not isinstance(value, list) or len(value) != 5:
            raise WireError("packed must be [codec, size, scale, values, indices]")
        codec, size, scale, values, indices = value
        codec = check_str(codec, "packed codec", 16)
        if codec not in PACKED_CODECS:
            raise WireError(f"packed codec {codec!r} is unknown")
        size = check_int(size, "packed size", 0, MAX_TENSOR_ELEMENTS)
        scale = check_float(scale, "packed scale")
        if not is_binary(values) or not is_binary(indices):
            raise WireError("packed values and indices must be bytes")
        itemsize = PACKED_CODECS[codec].itemsize
        if len(values) % itemsize:
            raise WireError(f"packed {codec} values: {len(values)} bytes is not a whole count")
        count = len(values) // itemsize
        packed = cls(codec, size, scale, values, indices)
        if codec == "sparse":
            if count > size or len(indices) != count * _INDEX_DTYPE.itemsize:
                raise WireError(f"packed sparse: {count} values, {len(indices)} index bytes, "
                                f"size {size}")
            index = packed.indices_array()
            if count and (int(index[-1]) >= size or (count > 1 and not (np.diff(
                    index.astype(np.int64)) > 0).all())):
                raise WireError("packed sparse indices must be strictly increasing and below "
                                "the size")
        elif codec == "int4":
            _check_int4(packed)
        elif count != size or indices:
            raise WireError(f"packed {codec}: {count} values for size {size}")
        if codec == "int8" and scale < 0:
            raise WireError("packed int8 scale must be >= 0")
        if codec != "int8" and scale != 0:
            raise WireError(f"packed {codec} has no scale (0)")
        if codec in ("fp16", "sparse") and not np.isfinite(packed.values_array()).all():
            raise WireError(f"packed {codec} values hold NaN or infinite values")
        return packed


def _check_int4(packed: Packed) -> None:
    """An int4 delta's shape and values (see :class:`Packed`); WireError if malformed."""
    size, values = packed.size, packed.values_array()
    blocks = -(-size // INT4_BLOCK)
    if len(values) != -(-size // 2) or len(packed.indices) != blocks * _SCALE_DTYPE.itemsize:
        raise WireError(f"packed int4: {len(values)} value bytes and {len(packed.indices)} scale "
                        f"bytes for size {size}")
    scales = packed.scales_array()
    if not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise WireError("packed int4 scales must be finite and >= 0")
    if ((values & 0x0F) > 14).any() or ((values >> 4) > 14).any():
        raise WireError("packed int4 levels must be 0..14 (level + 7)")
    if size % 2 and values[-1] >> 4:
        raise WireError("packed int4: the pad nibble of an odd size must be 0")


MAX_EXAMPLES = 2**40  # the largest example count a contribution may report


def origin_digest(vector: np.ndarray) -> bytes:
    """The :data:`ORIGIN_BYTES`-byte digest that names an initial model (its float32 bytes)."""
    data = np.ascontiguousarray(vector, dtype=np.float32)
    return hashlib.sha256(data.tobytes()).digest()[:ORIGIN_BYTES]


# -- messages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Contribution:
    """A node's public model estimate for one round, sent to one neighbour.

    ``kind`` is ``"delta"`` (add ``tensors`` to the estimate the receiver holds for the sender at
    ``base_round``) or ``"full"`` (the estimate itself, ``base_round`` = -1). ``degree`` is the
    sender's neighbour count, for Metropolis–Hastings weights; ``disagreement`` its relative
    distance to its neighbours after its previous round; ``done`` says it has stopped;
    ``depth`` and ``horizon`` are its settled depth and the depth it finishes at, ``waiting``
    0, or 1 + how many hops from it a member awaits a missing wanted neighbour
    (:mod:`gossipfl.node.termination`; absent on the wire: 0, not settled, not waiting).
    ``examples`` is the sender's example count as it reports it (``protocol.weighting =
    examples``, rounded as ``examples_rounding`` says; absent: 0, unweighted).
    """

    KIND: ClassVar[str] = "contribution"
    federation: str
    round: int
    sender: str
    receiver: str
    degree: int
    kind: str
    base_round: int
    disagreement: float
    done: bool
    tensors: tuple[Tensor, ...]
    training: bool = True  # the sender is still in its training rounds
    depth: int = 0
    horizon: int = 0
    waiting: int = 0  # 0, or 1 + hops to a member that awaits a missing wanted neighbour
    packed: Packed | None = None  # a compressed delta, instead of ``tensors`` (absent: none)
    examples: int = 0  # the sender's reported example count (absent: 0, unweighted)
    origin: bytes = b""  # the initial model a delta on base round -1 applies to (absent: none)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"depth", "horizon", "waiting", "packed",
                                                    "examples", "origin"})

    def _fields_to_wire(self) -> dict[str, Any]:
        packed = {} if self.packed is None else {"packed": self.packed._to_wire()}
        examples = {"examples": self.examples} if self.examples else {}
        origin = {"origin": self.origin} if self.origin else {}
        return {
            **packed,
            **examples,
            **origin,
            "depth": self.depth,
            "horizon": self.horizon,
            "waiting": self.waiting,
            "training": self.training,
            "round": self.round,
            "sender": self.sender,
            "receiver": self.receiver,
            "degree": self.degree,
            "kind": self.kind,
            "base_round": self.base_round,
            "disagreement": self.disagreement,
            "done": self.done,
            "tensors": [t._to_wire() for t in self.tensors],
        }

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> Contribution:
        kind = check_str(body["kind"], "kind", 16)
        if kind not in ("delta", "full"):
            raise WireError(f"contribution kind {kind!r} is unknown")
        raw = body["tensors"]
        if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
            raise WireError(f"tensors must be a list of at most {MAX_TENSORS}")
        round_ = check_int(body["round"], "round", 0, MAX_ROUND)
        base_round = check_int(body["base_round"], "base round", -1, MAX_ROUND)
        origin = body.get("origin", b"")
        if "origin" in body and (not isinstance(origin, bytes) or len(origin) != ORIGIN_BYTES
                                 or kind != "delta" or base_round != -1):
            raise WireError(f"origin must be {ORIGIN_BYTES} bytes, on a delta on base round -1")
        if kind == "delta" and not (0 <= base_round < round_ or (base_round == -1 and origin)):
            raise WireError(f"delta base round {base_round} must precede round {round_} "
                            "(-1: with the origin it applies to)")
        if kind == "full" and base_round != -1:
            raise WireError("a full contribution has base round -1")
        packed = None
        if "packed" in body:
            packed = Packed._from_wire(body["packed"])
            if kind != "delta" or raw:
                raise WireError("a packed contribution is a delta without tensors")
        return cls(
            federation=federation,
            round=round_,
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            receiver=check_str(body["receiver"], "receiver", MAX_PEER_ID_CHARS),
            degree=check_int(body["degree"], "degree", 0, MAX_MEMBERS),
            kind=kind,
            base_round=base_round,
            disagreement=check_float(body["disagreement"], "disagreement"),
            done=check_bool(body["done"], "done"),
            tensors=tuple(Tensor._from_wire(t) for t in raw),
            training=check_bool(body["training"], "training"),
            depth=check_int(body.get("depth", 0), "depth", 0, MAX_DEPTH),
            horizon=check_int(body.get("horizon", 0), "horizon", 0, MAX_DEPTH),
            waiting=check_int(body.get("waiting", 0), "waiting", 0, MAX_DEPTH),
            packed=packed,
            examples=check_int(body.get("examples", 0), "examples", 0, MAX_EXAMPLES),
            origin=origin,
        )


@dataclass(frozen=True)
class Ack:
    """The receiver's answer to a contribution: ``ok``, ``need_full`` or ``rejected``; the
    reason is text for logs, or a code peers act on (:class:`gossipfl.gossip.codes.AckReason`)."""

    KIND: ClassVar[str] = "ack"
    federation: str
    round: int
    sender: str
    status: AckCode
    reason: str

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender, "status": self.status,
                "reason": self.reason}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> Ack:
        status = check_code(body["status"], "ack status", AckCode)
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", -1, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            status=status,
            reason=check_str(body["reason"], "reason", 512),
        )


@dataclass(frozen=True)
class Sealed:
    """A contribution or masked input signed by its sender and encrypted to its receiver.

    ``data`` is an envelope (:mod:`gossipfl.crypto.envelope`) whose payload is the msgpack body
    of the message less its sender and receiver (``wire.SEALED_IMPLIED``): those travel once,
    in the envelope's signed header, and are the stream's authenticated peer and the one node
    that can open it. The clear fields here (federation, round) must match the inside."""

    KIND: ClassVar[str] = "sealed"
    federation: str
    round: int
    data: Binary | bytearray  # as decoded, a large envelope is a read-only view of its frame

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "data": self.data}  # data last: a frame's pieces are its
        # header and the envelope

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> Sealed:
        data = body["data"]
        if not is_binary(data):
            raise WireError("sealed data must be bytes")
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", 0, MAX_ROUND),
            data=data,
        )
