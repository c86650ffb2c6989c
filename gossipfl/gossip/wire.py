"""The wire: every message gossipfl sends, as frozen dataclasses with explicit encode/decode.

A frame is a 4-byte big-endian body length followed by a msgpack map. The map always holds
``v`` (the wire version), ``t`` (the message kind) and ``fed`` (the federation); the other keys are
the fields of the dataclass. Nothing else in gossipfl builds or parses bytes: the network layer
calls :func:`encode_frame`, :func:`frame_length` and :func:`decode_body`.

Decoding treats its input as hostile. It refuses an over-long frame before allocating it, an
unknown version or kind, a missing or extra key, a value of the wrong type, an array whose data
does not match its dtype and shape, and non-finite parameters, always with a :class:`WireError`
that says which rule was broken.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

import msgpack
import numpy as np

from gossipfl.gossip.codes import HEARTBEAT_STATUSES, AckCode, LinkCode, NodeStatus

WIRE_VERSION = 1
HEADER = struct.Struct(">I")
HEADER_BYTES = HEADER.size

#: Size cap for control frames (heartbeats, link requests, acks).
MAX_CONTROL_BYTES = 256 * 1024
#: Default size cap for frames that carry parameters; nodes may configure another.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

MAX_NAME_CHARS = 128
MAX_PEER_ID_CHARS = 128
MAX_ADDRS = 16
MAX_ADDR_CHARS = 256
MAX_MEMBERS = 256
MAX_TENSORS = 1024
MAX_TENSOR_DIMS = 8
ALLOWED_DTYPES = frozenset({"float32"})
MAX_CERTIFICATE_BYTES = 1024
#: A signed revocation list carried in heartbeats (about 1,000 revoked ids).
MAX_REVOCATION_BYTES = 64 * 1024
MAX_TENSOR_ELEMENTS = 2**31
#: A signed liveness stamp (gossipfl.crypto.liveness): epoch (8) ‖ seq (8) ‖ Ed25519 signature.
STAMP_BYTES = 80


class WireError(ValueError):
    """A frame that breaks the wire rules; the message names the rule."""


# -- arrays -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    """One named array, framework independent: ``{name, dtype, shape, data}``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> Tensor:
        contiguous = np.ascontiguousarray(array)
        if contiguous.dtype.name not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r}: dtype {contiguous.dtype.name} is not allowed")
        return cls(name, contiguous.dtype.name, tuple(contiguous.shape), contiguous.tobytes())

    def to_array(self) -> np.ndarray:
        """The array (read-only view over the frame's bytes)."""
        return np.frombuffer(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)

    def _to_wire(self) -> list[Any]:
        return [self.name, self.dtype, list(self.shape), self.data]

    @classmethod
    def _from_wire(cls, value: Any) -> Tensor:
        if not isinstance(value, list) or len(value) != 4:
            raise WireError("tensor must be [name, dtype, shape, data]")
        name, dtype, shape, data = value
        name = _check_str(name, "tensor name", MAX_NAME_CHARS)
        dtype = _check_str(dtype, f"tensor {name!r} dtype", 16)
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r}: dtype {dtype!r} is not allowed")
        if not isinstance(shape, list) or len(shape) > MAX_TENSOR_DIMS:
            raise WireError(f"tensor {name!r}: shape must be a list of at most "
                            f"{MAX_TENSOR_DIMS} dimensions")
        dims = tuple(_check_int(d, f"tensor {name!r} dimension", 0, 2**31) for d in shape)
        if math.prod(max(d, 1) for d in dims) > MAX_TENSOR_ELEMENTS:
            raise WireError(f"tensor {name!r}: shape {dims} is too large")
        if not isinstance(data, bytes):
            raise WireError(f"tensor {name!r}: data must be bytes")
        expected = math.prod(dims) * np.dtype(dtype).itemsize
        if len(data) != expected:
            raise WireError(
                f"tensor {name!r}: {len(data)} data bytes do not match shape {dims} of {dtype}"
            )
        tensor = cls(name, dtype, dims, data)
        if not np.isfinite(tensor.to_array()).all():
            raise WireError(f"tensor {name!r}: holds NaN or infinite values")
        return tensor


# -- field checks ----------------------------------------------------------------------------------


def _check_str(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what} must be a string")
    if len(value) > max_chars:
        raise WireError(f"{what} is longer than {max_chars} characters")
    return value


def _check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{what} must be an integer")
    if not low <= value <= high:
        raise WireError(f"{what} {value} is outside [{low}, {high}]")
    return value


def _check_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{what} must be a number")
    if not math.isfinite(value):
        raise WireError(f"{what} must be finite")
    return float(value)


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"{what} must be a boolean")
    return value


C = TypeVar("C", bound=StrEnum)


def _check_code(value: Any, what: str, allowed: Iterable[C]) -> C:
    """A protocol code: a string that is the value of one of ``allowed`` (that member)."""
    text = _check_str(value, what, 16)
    for code in allowed:
        if code.value == text:
            return code
    raise WireError(f"{what} {text!r} is unknown")


def _check_addrs(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ADDRS:
        raise WireError(f"{what} must be a list of at most {MAX_ADDRS} addresses")
    return tuple(_check_str(a, f"{what} entry", MAX_ADDR_CHARS) for a in value)


MAX_ROUND = 2**31 - 1


# -- messages --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberInfo:
    """What a heartbeat says about one member: who, where, and how long ago it was heard of."""

    peer_id: str
    addrs: tuple[str, ...]
    age: float  # seconds since the sender last heard of this member
    certificate: bytes = b""  # the member's certificate, as the sender holds it (admission)
    stamp: bytes = b""  # the freshest liveness stamp the sender verified for it (or empty)

    def _to_wire(self) -> list[Any]:
        entry: list[Any] = [self.peer_id, list(self.addrs), self.age]
        if self.stamp:
            return [*entry, self.certificate, self.stamp]
        return [*entry, self.certificate] if self.certificate else entry


@dataclass(frozen=True)
class Heartbeat:
    """Membership gossip: the sender is alive, and these are the members it knows.

    Sent as a request on the membership protocol; the receiver answers with its own heartbeat.
    """

    KIND: ClassVar[str] = "heartbeat"
    federation: str
    sender: str
    addrs: tuple[str, ...]
    members: tuple[MemberInfo, ...]
    round: int
    degree: int
    status: NodeStatus  # one of HEARTBEAT_STATUSES (joining, training, consensus, done)
    certificate: bytes = b""  # the sender's membership certificate (empty without admission)
    revocations: bytes = b""  # the newest signed revocation list the sender holds (or empty)
    stamp: bytes = b""  # the sender's own latest liveness stamp (omitted on the wire if empty)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"stamp"})  # may be absent from a frame

    def _fields_to_wire(self) -> dict[str, Any]:
        return {
            **({"stamp": self.stamp} if self.stamp else {}),
            "certificate": self.certificate,
            "revocations": self.revocations,
            "sender": self.sender,
            "addrs": list(self.addrs),
            "members": [m._to_wire() for m in self.members],
            "round": self.round,
            "degree": self.degree,
            "status": self.status,
        }

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> Heartbeat:
        members_raw = body["members"]
        if not isinstance(members_raw, list) or len(members_raw) > MAX_MEMBERS:
            raise WireError(f"members must be a list of at most {MAX_MEMBERS} entries")
        members = []
        for entry in members_raw:
            if not isinstance(entry, list) or len(entry) not in (3, 4, 5):
                raise WireError("member entry must be [peer_id, addrs, age] (+ certificate "
                                "(+ stamp))")
            age = _check_float(entry[2], "member age")
            if age < 0:
                raise WireError("member age must not be negative")
            member_cert = entry[3] if len(entry) >= 4 else b""
            if (not isinstance(member_cert, bytes) or len(member_cert) > MAX_CERTIFICATE_BYTES
                    or (len(entry) == 4 and not member_cert)):
                raise WireError(f"member certificate must be 1 to {MAX_CERTIFICATE_BYTES} bytes")
            member_stamp = entry[4] if len(entry) == 5 else b""
            if not isinstance(member_stamp, bytes) or (len(entry) == 5
                                                       and len(member_stamp) != STAMP_BYTES):
                raise WireError(f"member stamp must be {STAMP_BYTES} bytes")
            members.append(
                MemberInfo(
                    _check_str(entry[0], "member peer id", MAX_PEER_ID_CHARS),
                    _check_addrs(entry[1], "member addrs"),
                    age,
                    member_cert,
                    member_stamp,
                )
            )
        status = _check_code(body["status"], "status", HEARTBEAT_STATUSES)
        certificate = body["certificate"]
        if not isinstance(certificate, bytes) or len(certificate) > MAX_CERTIFICATE_BYTES:
            raise WireError(f"certificate must be at most {MAX_CERTIFICATE_BYTES} bytes")
        revocations = body["revocations"]
        if not isinstance(revocations, bytes) or len(revocations) > MAX_REVOCATION_BYTES:
            raise WireError(f"revocations must be at most {MAX_REVOCATION_BYTES} bytes")
        stamp = body.get("stamp", b"")
        if not isinstance(stamp, bytes) or ("stamp" in body and len(stamp) != STAMP_BYTES):
            raise WireError(f"stamp must be {STAMP_BYTES} bytes")
        return cls(
            federation=federation,
            certificate=certificate,
            revocations=revocations,
            stamp=stamp,
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            addrs=_check_addrs(body["addrs"], "addrs"),
            members=tuple(members),
            round=_check_int(body["round"], "round", -1, MAX_ROUND),
            degree=_check_int(body["degree"], "degree", 0, MAX_MEMBERS),
            status=status,
        )


@dataclass(frozen=True)
class LinkRequest:
    """Ask the receiver to confirm a neighbour link that the sender's topology contains."""

    KIND: ClassVar[str] = "link_request"
    federation: str
    sender: str
    topology_digest: str  # hex digest of the sender's member set, for diagnosis
    round: int = -1  # the sender's current round (-1 before its first)
    rejoin: bool = False  # the sender restarted or re-links: forget what you held of it
    joining: bool = False  # the sender joined late: add it to your neighbours if you have room

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"sender": self.sender, "topology_digest": self.topology_digest,
                "round": self.round, "rejoin": self.rejoin, "joining": self.joining}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> LinkRequest:
        return cls(
            federation=federation,
            joining=_check_bool(body["joining"], "joining"),
            rejoin=_check_bool(body["rejoin"], "rejoin"),
            round=_check_int(body["round"], "round", -1, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            topology_digest=_check_str(body["topology_digest"], "topology digest", 128),
        )


@dataclass(frozen=True)
class LinkReply:
    """The answer to a :class:`LinkRequest`: ``accepted``, ``not_ready`` or ``rejected``."""

    KIND: ClassVar[str] = "link_reply"
    federation: str
    sender: str
    status: LinkCode
    reason: str
    round: int = -1  # the sender's current round (-1 before its first)

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"sender": self.sender, "status": self.status, "reason": self.reason,
                "round": self.round}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> LinkReply:
        status = _check_code(body["status"], "link status", LinkCode)
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", -1, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            status=status,
            reason=_check_str(body["reason"], "reason", 512),
        )


@dataclass(frozen=True)
class Contribution:
    """A node's public model estimate for one round, sent to one neighbour.

    ``kind`` is ``"delta"`` (add ``tensors`` to the estimate the receiver holds for the sender at
    ``base_round``) or ``"full"`` (the estimate itself, ``base_round`` = -1). ``degree`` is the
    sender's neighbour count, for Metropolis–Hastings weights; ``disagreement`` its relative
    distance to its neighbours after its previous round; ``done`` says it has stopped.
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

    def _fields_to_wire(self) -> dict[str, Any]:
        return {
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
        kind = _check_str(body["kind"], "kind", 16)
        if kind not in ("delta", "full"):
            raise WireError(f"contribution kind {kind!r} is unknown")
        raw = body["tensors"]
        if not isinstance(raw, list) or len(raw) > MAX_TENSORS:
            raise WireError(f"tensors must be a list of at most {MAX_TENSORS}")
        round_ = _check_int(body["round"], "round", 0, MAX_ROUND)
        base_round = _check_int(body["base_round"], "base round", -1, MAX_ROUND)
        if kind == "delta" and not 0 <= base_round < round_:
            raise WireError(f"delta base round {base_round} must precede round {round_}")
        if kind == "full" and base_round != -1:
            raise WireError("a full contribution has base round -1")
        return cls(
            federation=federation,
            round=round_,
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            receiver=_check_str(body["receiver"], "receiver", MAX_PEER_ID_CHARS),
            degree=_check_int(body["degree"], "degree", 0, MAX_MEMBERS),
            kind=kind,
            base_round=base_round,
            disagreement=_check_float(body["disagreement"], "disagreement"),
            done=_check_bool(body["done"], "done"),
            tensors=tuple(Tensor._from_wire(t) for t in raw),
            training=_check_bool(body["training"], "training"),
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
        status = _check_code(body["status"], "ack status", AckCode)
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", -1, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            status=status,
            reason=_check_str(body["reason"], "reason", 512),
        )


@dataclass(frozen=True)
class Sealed:
    """A contribution signed by its sender and encrypted to its receiver.

    ``data`` is an envelope (:mod:`gossipfl.crypto.envelope`) whose payload is the msgpack body
    of a :class:`Contribution`; the clear fields here only route it and must match the inside.
    """

    KIND: ClassVar[str] = "sealed"
    federation: str
    round: int
    sender: str
    receiver: str
    data: bytes

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender, "receiver": self.receiver,
                "data": self.data}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> Sealed:
        data = body["data"]
        if not isinstance(data, bytes):
            raise WireError("sealed data must be bytes")
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", 0, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            receiver=_check_str(body["receiver"], "receiver", MAX_PEER_ID_CHARS),
            data=data,
        )


def _check_pairs(value: Any, what: str, max_items: int, max_bytes: int) -> tuple[tuple[str, bytes],
                                                                                  ...]:
    """A list of [peer id, bytes] pairs with distinct peer ids."""
    if not isinstance(value, list) or len(value) > max_items:
        raise WireError(f"{what} must be a list of at most {max_items} [peer, bytes] pairs")
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise WireError(f"{what} entries must be [peer, bytes]")
        peer = _check_str(item[0], f"{what} peer", MAX_PEER_ID_CHARS)
        if not isinstance(item[1], bytes) or len(item[1]) > max_bytes:
            raise WireError(f"{what} values must be at most {max_bytes} bytes")
        pairs.append((peer, item[1]))
    if len({p for p, _ in pairs}) != len(pairs):
        raise WireError(f"{what} names a peer twice")
    return tuple(pairs)


def _check_peers(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise WireError(f"{what} must be a list of at most {MAX_MEMBERS} peer ids")
    peers = tuple(_check_str(p, f"{what} entry", MAX_PEER_ID_CHARS) for p in value)
    if len(set(peers)) != len(peers):
        raise WireError(f"{what} names a peer twice")
    return peers


MAX_SHARE_CIPHERTEXT = 512


@dataclass(frozen=True)
class MaskedInput:
    """Secure aggregation: one contributor's masked, weighted estimate for one aggregator's sum.

    ``data`` is a little-endian uint32 vector (the quantised ``weight · x̂`` plus masks, mod
    2^32), meaningless alone; ``shares`` are encrypted Shamir shares of the contributor's self
    seed, one per co-neighbour, which the aggregator relays but cannot read.
    """

    KIND: ClassVar[str] = "masked_input"
    federation: str
    round: int
    sender: str
    aggregator: str
    weight: float
    disagreement: float
    done: bool
    data: bytes
    shares: tuple[tuple[str, bytes], ...]

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender, "aggregator": self.aggregator,
                "weight": self.weight, "disagreement": self.disagreement, "done": self.done,
                "data": self.data, "shares": [[p, c] for p, c in self.shares]}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> MaskedInput:
        data = body["data"]
        if not isinstance(data, bytes) or len(data) % 4:
            raise WireError("masked data must be bytes holding uint32 words")
        weight = _check_float(body["weight"], "weight")
        if not 0.0 < weight <= 1.0:
            raise WireError(f"weight {weight} is outside (0, 1]")
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", 0, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            aggregator=_check_str(body["aggregator"], "aggregator", MAX_PEER_ID_CHARS),
            weight=weight,
            disagreement=_check_float(body["disagreement"], "disagreement"),
            done=_check_bool(body["done"], "done"),
            data=data,
            shares=_check_pairs(body["shares"], "shares", MAX_MEMBERS, MAX_SHARE_CIPHERTEXT),
        )


@dataclass(frozen=True)
class UnmaskRequest:
    """Secure aggregation: the aggregator fixes the survivors and asks one of them to unmask.

    ``shares`` are the encrypted self-seed shares addressed to the receiver, keyed by the
    contributor they belong to; ``signatures`` are survivors' Ed25519 signatures on this very
    survivor set (:mod:`gossipfl.crypto.consistency`), at least the Shamir threshold of them.
    """

    KIND: ClassVar[str] = "unmask_request"
    federation: str
    round: int
    sender: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    shares: tuple[tuple[str, bytes], ...]
    signatures: tuple[tuple[str, bytes], ...]

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender, "survivors": list(self.survivors),
                "dropped": list(self.dropped), "shares": [[p, c] for p, c in self.shares],
                "signatures": [[p, s] for p, s in self.signatures]}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> UnmaskRequest:
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", 0, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            survivors=_check_peers(body["survivors"], "survivors"),
            dropped=_check_peers(body["dropped"], "dropped"),
            shares=_check_pairs(body["shares"], "shares", MAX_MEMBERS, MAX_SHARE_CIPHERTEXT),
            signatures=_check_signatures(body["signatures"]),
        )


@dataclass(frozen=True)
class UnmaskResponse:
    """A survivor's answer: the shares it holds of the survivors' self seeds (its own share of
    its own seed included; never the seed itself), and its round pair seeds with the dropped
    members; never both kinds for one member.
    """

    KIND: ClassVar[str] = "unmask_response"
    federation: str
    round: int
    sender: str
    seed_shares: tuple[tuple[str, bytes], ...]
    pair_seeds: tuple[tuple[str, bytes], ...]

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender,
                "seed_shares": [[p, v] for p, v in self.seed_shares],
                "pair_seeds": [[p, v] for p, v in self.pair_seeds]}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> UnmaskResponse:
        pair_seeds = _check_pairs(body["pair_seeds"], "pair seeds", MAX_MEMBERS, 32)
        if any(len(v) != 32 for _, v in pair_seeds):
            raise WireError("pair seeds must be 32 bytes")
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", 0, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            seed_shares=_check_pairs(body["seed_shares"], "seed shares", MAX_MEMBERS, 128),
            pair_seeds=pair_seeds,
        )


SIGNATURE_BYTES = 64


def _check_signatures(value: Any) -> tuple[tuple[str, bytes], ...]:
    signatures = _check_pairs(value, "signatures", MAX_MEMBERS, SIGNATURE_BYTES)
    if any(len(s) != SIGNATURE_BYTES for _, s in signatures):
        raise WireError(f"signatures must be {SIGNATURE_BYTES} bytes")
    return signatures


@dataclass(frozen=True)
class ConsistencyRequest:
    """Secure aggregation: the aggregator announces the survivor set it fixed for a round and
    asks a survivor to sign it (Bonawitz's ConsistencyCheck)."""

    KIND: ClassVar[str] = "consistency_request"
    federation: str
    round: int
    sender: str
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender, "survivors": list(self.survivors),
                "dropped": list(self.dropped)}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> ConsistencyRequest:
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", 0, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            survivors=_check_peers(body["survivors"], "survivors"),
            dropped=_check_peers(body["dropped"], "dropped"),
        )


@dataclass(frozen=True)
class ConsistencyResponse:
    """A survivor's Ed25519 signature on the announced set, or (empty signature) its refusal
    code (:class:`gossipfl.crypto.consistency.Refusal`)."""

    KIND: ClassVar[str] = "consistency_response"
    federation: str
    round: int
    sender: str
    signature: bytes
    refusal: str

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender, "signature": self.signature,
                "refusal": self.refusal}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> ConsistencyResponse:
        signature = body["signature"]
        if not isinstance(signature, bytes) or len(signature) not in (0, SIGNATURE_BYTES):
            raise WireError(f"signature must be empty or {SIGNATURE_BYTES} bytes")
        refusal = _check_str(body["refusal"], "refusal", 32)
        if bool(signature) == bool(refusal):
            raise WireError("a consistency response holds a signature or a refusal, not both")
        return cls(
            federation=federation,
            round=_check_int(body["round"], "round", 0, MAX_ROUND),
            sender=_check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            signature=signature,
            refusal=refusal,
        )


Message = (Heartbeat | LinkRequest | LinkReply | Contribution | Ack | Sealed | MaskedInput
           | UnmaskRequest | UnmaskResponse | ConsistencyRequest | ConsistencyResponse)
M = TypeVar("M", Heartbeat, LinkRequest, LinkReply, Contribution, Ack, Sealed, MaskedInput,
            UnmaskRequest, UnmaskResponse, ConsistencyRequest, ConsistencyResponse)
_KINDS: dict[str, type[Any]] = {
    cls.KIND: cls for cls in (Heartbeat, LinkRequest, LinkReply, Contribution, Ack, Sealed,
                              MaskedInput, UnmaskRequest, UnmaskResponse,
                              ConsistencyRequest, ConsistencyResponse)
}


def _field_names(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls)) - {"federation"}


# -- frames ----------------------------------------------------------------------------------------


def encode_body(message: Message) -> bytes:
    """The msgpack body of ``message`` (no length header)."""
    body = {"v": WIRE_VERSION, "t": message.KIND, "fed": message.federation}
    body.update(message._fields_to_wire())
    return msgpack.packb(body, use_bin_type=True, strict_types=False)


def encode_frame(message: Message, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> bytes:
    """Header + body. Raises :class:`WireError` if the frame would exceed ``max_bytes``."""
    body = encode_body(message)
    if len(body) > max_bytes:
        raise WireError(f"{message.KIND} frame of {len(body)} bytes exceeds the {max_bytes} cap")
    return HEADER.pack(len(body)) + body


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


@dataclass(frozen=True)
class DecodeLimits:
    """How far one frame body may expand when decoded, whatever its size: caps on each array,
    map and string, and on all containers' elements together (list items plus map keys and
    values). Each container's length is checked from its msgpack header before it is built, and
    the elements are counted as containers complete, so a crafted frame of many empty arrays or
    maps is refused after at most ``max_elements`` objects, in time and memory that do not grow
    with the frame. Arrays of numbers travel as one ``bin`` blob (see :class:`Tensor`)."""

    max_array_len: int
    max_map_len: int = 32
    max_str_len: int = 512
    max_elements: int = 4096


#: For message kinds without their own entry in :data:`DECODE_LIMITS` (generous; add one).
DEFAULT_DECODE_LIMITS = DecodeLimits(max_array_len=MAX_TENSORS, max_map_len=64,
                                     max_str_len=4096, max_elements=65536)
#: Per message kind, from its caps: the longest list a field may hold and how many elements the
#: whole body may decode into (a heartbeat: 256 members of [id, ≤16 addrs, age, certificate,
#: stamp]; a
#: contribution: 1024 tensors of [name, dtype, ≤8 dims, data]; secure aggregation: ≤256
#: [peer, bytes] pairs).
DECODE_LIMITS: dict[str, DecodeLimits] = {
    "heartbeat": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + MAX_MEMBERS * (6 + MAX_ADDRS)
                              + MAX_ADDRS),
    "link_request": DecodeLimits(MAX_ADDRS, max_elements=64),
    "link_reply": DecodeLimits(MAX_ADDRS, max_elements=64),
    "contribution": DecodeLimits(MAX_TENSORS, max_elements=2 * 32
                                 + MAX_TENSORS * (5 + MAX_TENSOR_DIMS)),
    "ack": DecodeLimits(MAX_ADDRS, max_elements=64),
    "sealed": DecodeLimits(MAX_ADDRS, max_elements=64),
    "masked_input": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 3 * MAX_MEMBERS),
    # survivors, dropped, and ≤256 [peer, bytes] pairs each of shares and signatures
    "unmask_request": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 8 * MAX_MEMBERS),
    "unmask_response": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 6 * MAX_MEMBERS),
    "consistency_request": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 2 * MAX_MEMBERS),
    "consistency_response": DecodeLimits(MAX_ADDRS, max_elements=64),
}


class _ElementBudget:
    """msgpack hooks that count decoded elements and stop the decoder past the budget."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def _spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise WireError("frame structure expands beyond this message kind's element cap")

    def list_hook(self, value: list[Any]) -> list[Any]:
        self._spend(len(value))
        return value

    def object_hook(self, value: dict[Any, Any]) -> dict[Any, Any]:
        self._spend(2 * len(value))
        return value


def unpack_bounded(body: bytes | bytearray, limits: DecodeLimits) -> Any:
    """msgpack-decode ``body`` within ``limits`` (see :class:`DecodeLimits`); WireError if not."""
    budget = _ElementBudget(limits.max_elements)
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            list_hook=budget.list_hook, object_hook=budget.object_hook,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len,
            max_str_len=limits.max_str_len, max_bin_len=len(body), max_ext_len=0,
        )
    except WireError:
        raise
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise WireError(f"malformed msgpack: {str(error) or type(error).__name__}") from None
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise WireError(f"malformed msgpack: {type(error).__name__}") from None


def decode_body(body: bytes | bytearray, expected: type[M]) -> M:
    """Decode one frame body into a message of type ``expected`` (within its
    :data:`DECODE_LIMITS`)."""
    data = unpack_bounded(body, DECODE_LIMITS.get(expected.KIND, DEFAULT_DECODE_LIMITS))
    if not isinstance(data, dict):
        raise WireError("frame body must be a map")
    version = data.get("v")
    if isinstance(version, bool) or not isinstance(version, int) or version != WIRE_VERSION:
        raise WireError(f"wire version {version!r} is not supported (expected {WIRE_VERSION})")
    kind = data.get("t")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"message kind {kind!r} is unknown")
    if cls is not expected:
        raise WireError(f"expected a {expected.KIND} message, got {kind}")
    federation = _check_str(data.get("fed"), "federation", MAX_NAME_CHARS)
    keys = set(data) - {"v", "t", "fed"}
    wanted = _field_names(cls)
    required = wanted - getattr(cls, "OPTIONAL", frozenset())
    if not required <= keys <= wanted:
        missing = sorted(required - keys)
        extra = sorted(str(k) for k in keys - wanted)
        raise WireError(f"{kind} fields wrong: missing {missing}, unexpected {extra}")
    return cls._fields_from_wire(federation, data)


def decode_frame(frame: bytes, expected: type[M], max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> M:
    """Decode a whole frame (header + body), as read from a stream."""
    length = frame_length(frame[:HEADER_BYTES], max_bytes)
    if len(frame) - HEADER_BYTES != length:
        raise WireError(
            f"frame announces {length} body bytes but carries {len(frame) - HEADER_BYTES}"
        )
    return decode_body(frame[HEADER_BYTES:], expected)
