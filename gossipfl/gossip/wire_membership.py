"""Wire messages of membership and links: heartbeats (with their member entries) and link
requests and replies.

Part of the wire, which :mod:`gossipfl.gossip.wire` defines: it holds the codec (version,
framing, decode limits, the registry of message kinds) and re-exports these classes, so import
them from there. The caps and field checks used here live in :mod:`gossipfl.gossip.wire_fields`.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from gossipfl.gossip.codes import HEARTBEAT_STATUSES, DialbackCode, LinkCode, NodeStatus
from gossipfl.gossip.wire_fields import (
    MAX_CERTIFICATE_BYTES,
    MAX_MEMBERS,
    MAX_PEER_ID_CHARS,
    MAX_REVOCATION_BYTES,
    MAX_ROUND,
    MAX_TABLE_NUMBER,
    STAMP_BYTES,
    WireError,
    check_addrs,
    check_bool,
    check_code,
    check_float,
    check_int,
    check_str,
)

#: Members a heartbeat's digest (``have``) names at most: a table's capacity
#: (``membership.MAX_FEDERATION``).
MAX_DIGEST_MEMBERS = 4096
TAG_BYTES = 8


@functools.lru_cache(maxsize=1 << 16)
def member_tag(peer_id: str) -> int:
    """A member's tag in a digest: the first 8 bytes of its id's BLAKE2b hash (little-endian).
    A pure function (kept: every table of a simulation asks for the same ids).

    >>> member_tag("a") == int.from_bytes(hashlib.blake2b(b"a", digest_size=8).digest(), "little")
    True
    """
    return int.from_bytes(hashlib.blake2b(peer_id.encode(), digest_size=TAG_BYTES).digest(),
                          "little")


def encode_digest(tags: Iterable[int]) -> bytes:
    """Tags as a heartbeat's ``have`` field: 8 bytes each, little-endian, in the given order.

    >>> encode_digest([1, 2**64 - 1]).hex()
    '0100000000000000ffffffffffffffff'
    """
    tags = list(tags)
    return struct.pack(f"<{len(tags)}Q", *tags)


def decode_digest(data: bytes) -> frozenset[int]:
    """The tags of a ``have`` field (a whole number of 8-byte tags, at most
    ``MAX_DIGEST_MEMBERS``; WireError if not).

    >>> sorted(decode_digest(encode_digest([5, 3, 5])))
    [3, 5]
    >>> decode_digest(b"123")
    Traceback (most recent call last):
    ...
    gossipfl.gossip.wire_fields.WireError: have must be a whole number of 8-byte tags
    """
    return frozenset(struct.unpack(f"<{len(_checked_digest(data)) // TAG_BYTES}Q", data))


def _checked_digest(data: object) -> bytes:
    if not isinstance(data, bytes) or len(data) % TAG_BYTES:
        raise WireError(f"have must be a whole number of {TAG_BYTES}-byte tags")
    if len(data) > MAX_DIGEST_MEMBERS * TAG_BYTES:
        raise WireError(f"have names more than {MAX_DIGEST_MEMBERS} members")
    return data


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

    The member list is a *delta* of the sender's table (:mod:`gossipfl.gossip.membership`):
    ``table`` = (its table's epoch, ``since``, ``upto``) says it holds every entry the sender
    changed after version ``since`` up to ``upto`` (in version order, a window at a time);
    ``ack`` = (epoch, version) says how much of the *receiver's* table the sender holds, so
    the receiver's answer (and its next heartbeat) carries only what changed after it.
    ``have``: a digest of the members the sender holds (:func:`encode_digest` of their
    :func:`member_tag`), sent while it holds nothing of the receiver's table, so that the
    answer leaves out what the sender has already (digest and pull, instead of a blind full
    window); empty (absent on the wire) otherwise.
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
    table: tuple[int, int, int] = (0, 0, 0)  # (epoch, since, upto) of the member list's delta
    ack: tuple[int, int] = (0, 0)  # (epoch, version): how much of the receiver's table we hold
    have: bytes = b""  # a digest of the members the sender holds (omitted on the wire if empty)
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"stamp", "have"})  # may be absent

    def _fields_to_wire(self) -> dict[str, Any]:
        return {
            **({"stamp": self.stamp} if self.stamp else {}),
            **({"have": self.have} if self.have else {}),
            "certificate": self.certificate,
            "revocations": self.revocations,
            "sender": self.sender,
            "addrs": list(self.addrs),
            "members": [m._to_wire() for m in self.members],
            "round": self.round,
            "degree": self.degree,
            "status": self.status,
            "table": list(self.table),
            "ack": list(self.ack),
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
            age = check_float(entry[2], "member age")
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
                    check_str(entry[0], "member peer id", MAX_PEER_ID_CHARS),
                    check_addrs(entry[1], "member addrs"),
                    age,
                    member_cert,
                    member_stamp,
                )
            )
        status = check_code(body["status"], "status", HEARTBEAT_STATUSES)
        certificate = body["certificate"]
        if not isinstance(certificate, bytes) or len(certificate) > MAX_CERTIFICATE_BYTES:
            raise WireError(f"certificate must be at most {MAX_CERTIFICATE_BYTES} bytes")
        revocations = body["revocations"]
        if not isinstance(revocations, bytes) or len(revocations) > MAX_REVOCATION_BYTES:
            raise WireError(f"revocations must be at most {MAX_REVOCATION_BYTES} bytes")
        stamp = body.get("stamp", b"")
        if not isinstance(stamp, bytes) or ("stamp" in body and len(stamp) != STAMP_BYTES):
            raise WireError(f"stamp must be {STAMP_BYTES} bytes")
        have = _checked_digest(body.get("have", b""))
        if "have" in body and not have:
            raise WireError("have must not be empty when present")
        return cls(
            federation=federation,
            certificate=certificate,
            revocations=revocations,
            stamp=stamp,
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            addrs=check_addrs(body["addrs"], "addrs"),
            members=tuple(members),
            round=check_int(body["round"], "round", -1, MAX_ROUND),
            degree=check_int(body["degree"], "degree", 0, MAX_MEMBERS),
            status=status,
            table=_versions(body["table"], "table", 3),
            ack=_versions(body["ack"], "ack", 2),
            have=have,
        )


def _versions(value: Any, what: str, size: int) -> Any:
    """A list of ``size`` table numbers: an epoch (a run's start, ns) and versions."""
    if not isinstance(value, list) or len(value) != size:
        raise WireError(f"{what} must be a list of {size} integers")
    numbers = tuple(check_int(v, f"{what} entry", 0, MAX_TABLE_NUMBER) for v in value)
    if size == 3 and numbers[1] > numbers[2]:
        raise WireError("table: since must not exceed upto")
    return numbers


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
            joining=check_bool(body["joining"], "joining"),
            rejoin=check_bool(body["rejoin"], "rejoin"),
            round=check_int(body["round"], "round", -1, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            topology_digest=check_str(body["topology_digest"], "topology digest", 128),
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
        status = check_code(body["status"], "link status", LinkCode)
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", -1, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            status=status,
            reason=check_str(body["reason"], "reason", 512),
        )


@dataclass(frozen=True)
class DialbackRequest:
    """Ask the receiver to dial the sender back on a new connection, at the IP the request
    came from and the sender's listen ``port`` (:mod:`gossipfl.gossip.dialback`)."""

    KIND: ClassVar[str] = "dialback_request"
    federation: str
    port: int

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"port": self.port}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> DialbackRequest:
        return cls(federation=federation, port=check_int(body["port"], "port", 1, 65535))


@dataclass(frozen=True)
class DialbackReply:
    """The answer to a :class:`DialbackRequest` (``reason``: for the log only)."""

    KIND: ClassVar[str] = "dialback_reply"
    federation: str
    code: DialbackCode
    reason: str = ""

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "reason": self.reason}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> DialbackReply:
        return cls(federation=federation,
                   code=check_code(body["code"], "dial-back code", DialbackCode),
                   reason=check_str(body["reason"], "reason", 256))
