"""Wire messages of secure aggregation: masked inputs, unmask requests and responses, and the
consistency check's requests and responses.

Part of the wire, which :mod:`gossipfl.gossip.wire` defines: it holds the codec (version,
framing, decode limits, the registry of message kinds) and re-exports these classes, so import
them from there. The caps and field checks used here live in :mod:`gossipfl.gossip.wire_fields`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from gossipfl.gossip.wire_fields import (
    MAX_DEPTH,
    MAX_MEMBERS,
    MAX_PEER_ID_CHARS,
    MAX_ROUND,
    ORIGIN_BYTES,
    Binary,
    WireError,
    check_bool,
    check_float,
    check_int,
    check_str,
    is_binary,
)


@dataclass(frozen=True)
class Known:
    """What both ends of a secure-aggregation frame hold: an aggregator (``owner``) and its
    neighbourhood, sorted (both derive it from the topology). A masked input or unmask request
    encoded with it names the peers by place in it, not by id, leaves out the aggregator (a
    masked input's ``aggregator``, a request's ``sender``) and carries the table's 8-byte digest
    (``table``): a receiver whose table differs refuses the frame rather than misread it."""

    owner: str
    peers: tuple[str, ...]

    @classmethod
    def of(cls, owner: str, peers: Iterable[str]) -> Known:
        return cls(owner, tuple(sorted(peers)))

    @property
    def digest(self) -> bytes:
        return hashlib.blake2b("\n".join((self.owner, *self.peers)).encode(), digest_size=8,
                               person=b"gossipfl-table").digest()


def table_of(body: Mapping[str, Any], known: Known | None, what: str) -> tuple[str, ...] | None:
    """The known table a frame names its peers by place in (None: it names them by id); a
    WireError when it names one this node does not hold."""
    if "table" not in body:
        return None
    if known is None or body["table"] != known.digest:
        raise WireError(f"{what} names its peers by place in a table this node does not hold "
                        "(another view of the neighbourhood)")
    return known.peers


def _places(value: Any, what: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """A list of distinct places in ``names``, read back as peer ids."""
    if not isinstance(value, list) or len(value) > len(names):
        raise WireError(f"{what} must be a list of at most {len(names)} places")
    peers = tuple(names[check_int(p, f"{what} place", 0, len(names) - 1)] for p in value)
    if len(set(peers)) != len(peers):
        raise WireError(f"{what} names a peer twice")
    return peers


def _read_pairs(value: Any, what: str, max_items: int, max_bytes: int,
                peer_of: Callable[[Any], str]) -> tuple[tuple[str, bytes], ...]:
    """A list of [peer, bytes] pairs with distinct peers, each peer read by ``peer_of``."""
    if not isinstance(value, list) or len(value) > max_items:
        raise WireError(f"{what} must be a list of at most {max_items} [peer, bytes] pairs")
    pairs = []
    for item in value:
        if not isinstance(item, list) or len(item) != 2:
            raise WireError(f"{what} entries must be [peer, bytes]")
        peer = peer_of(item[0])
        if not isinstance(item[1], bytes) or len(item[1]) > max_bytes:
            raise WireError(f"{what} values must be at most {max_bytes} bytes")
        pairs.append((peer, item[1]))
    if len({p for p, _ in pairs}) != len(pairs):
        raise WireError(f"{what} names a peer twice")
    return tuple(pairs)


def _check_pairs(value: Any, what: str, max_items: int, max_bytes: int) -> tuple[tuple[str, bytes],
                                                                                  ...]:
    """A list of [peer id, bytes] pairs with distinct peer ids."""
    return _read_pairs(value, what, max_items, max_bytes,
                       lambda peer: check_str(peer, f"{what} peer", MAX_PEER_ID_CHARS))


def _indexed(pairs: tuple[tuple[str, bytes], ...], index: dict[str, int]) -> list[list[Any]]:
    """[peer, bytes] pairs as [position, bytes]: each peer by its place in the frame's peer
    table (``index``; a peer not in it yet is appended), so that a frame names each peer once
    however many of its lists hold it."""
    return [[index.setdefault(peer, len(index)), value] for peer, value in pairs]


def _table_extra(index: dict[str, int], known: int) -> list[str]:
    """The peers ``index`` holds beyond the ``known`` the frame names elsewhere (its
    ``peers`` field)."""
    return list(index)[known:]


def _from_indexed(value: Any, what: str, names: tuple[str, ...], max_items: int,
                  max_bytes: int) -> tuple[tuple[str, bytes], ...]:
    """[position, bytes] pairs read back as (peer, bytes), ``names`` being the frame's peer
    table; positions in range and distinct."""
    def peer_of(position: Any) -> str:
        if not names:
            raise WireError(f"{what} names a peer, and the frame's peer table is empty")
        return names[check_int(position, f"{what} peer", 0, len(names) - 1)]

    return _read_pairs(value, what, max_items, max_bytes, peer_of)


def _check_peers(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_MEMBERS:
        raise WireError(f"{what} must be a list of at most {MAX_MEMBERS} peer ids")
    peers = tuple(check_str(p, f"{what} entry", MAX_PEER_ID_CHARS) for p in value)
    if len(set(peers)) != len(peers):
        raise WireError(f"{what} names a peer twice")
    return peers


MAX_SHARE_CIPHERTEXT = 512
MAX_SHARE_BYTES = 128  # an encoded Shamir share of a 32-byte seed, in the clear
# the rings of gossipfl.crypto.secagg (4-, 6- and 12-bit words packed 6, 4 and 2 in 3 bytes,
# uint8, uint16, uint32; 3: the 9-value ring, five words in 2 bytes)
MASKED_WIDTHS = (3, 4, 6, 8, 12, 16, 32)
PACKED_WIDTHS = (4, 6, 12)  # their frames hold groups of 3 bytes


@dataclass(frozen=True)
class MaskedInput:
    """Secure aggregation: one contributor's masked, weighted estimate for one aggregator's sum.

    ``data`` is a little-endian vector of ``width``-bit words (the quantised ``weight · x̂``
    plus masks, mod 2^32; or, in a quantised delta round, integer-weighted levels plus masks
    mod 2^6 (four words in three bytes), 2^8 or 2^16: :mod:`gossipfl.node.secure_sparse`),
    meaningless alone; ``shares`` are
    encrypted Shamir shares of the contributor's self seed, one per co-neighbour, which the
    aggregator relays but cannot read.
    """

    KIND: ClassVar[str] = "masked_input"
    federation: str
    round: int
    sender: str
    aggregator: str
    weight: float
    disagreement: float
    done: bool
    data: Binary  # as decoded, a large one is a read-only view of its frame
    shares: tuple[tuple[str, bytes], ...]
    depth: int = 0  # the sender's settled depth, horizon and waiting (gossipfl.node.termination)
    horizon: int = 0
    waiting: int = 0
    # compressed secure aggregation (gossipfl.node.secure_sparse): ``data`` holds the masked
    # weighted delta on the round's shared random-k coordinates, not the whole estimate
    sparse: bool = False
    # seeds dealt a round ahead (gossipfl.node.secure_early): ``next_shares`` are the encrypted
    # shares of the self seed this member will use for the aggregator's next round;
    # ``predealt``: this input's self seed is the one it dealt last round; ``early``: the
    # plaintext shares (its own share of its own seed first) of every member's dealt self seed
    # for this round, sent by a member committed to the full set (its presign)
    next_shares: tuple[tuple[str, bytes], ...] = ()
    predealt: bool = False
    early: tuple[tuple[str, bytes], ...] = ()
    # the sender's signature on this round's full set, to which it committed on the light
    # request of the round before (gossipfl.node.secure_presign): empty, or 64 bytes
    presign: bytes = b""
    width: int = 32  # bits a word of ``data``: 4, 6, 8, 12, 16 or 32
    # a delta of round 0: the digest of the initial model it is taken from
    # (gossipfl.node.secure_sparse.origin_base); empty: none
    origin: bytes = b""
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"depth", "horizon", "waiting", "sparse",
                                                    "next_shares", "predealt", "early",
                                                    "presign", "width", "origin"})
    # the frame's peer table beyond the sender (the share lists name peers by their place), or
    # beyond the known table whose digest ``table`` is
    WIRE_ONLY: ClassVar[frozenset[str]] = frozenset({"peers", "table"})

    def _fields_to_wire(self, known: Known | None = None) -> dict[str, Any]:
        # peers by their place in a table: the known one, else the sender first; then ``peers``
        index = ({p: i for i, p in enumerate(known.peers)} if known is not None
                 else {self.sender: 0})
        base = len(index)
        fields = {"round": self.round, "sender": self.sender, "aggregator": self.aggregator,
                  "weight": self.weight, "disagreement": self.disagreement, "done": self.done,
                  "data": self.data, "shares": _indexed(self.shares, index),
                  "depth": self.depth, "horizon": self.horizon, "waiting": self.waiting}
        if self.sparse:  # absent when false: a full input's frame is as before
            fields["sparse"] = True
        if self.next_shares:
            fields["next_shares"] = _indexed(self.next_shares, index)
        if self.predealt:
            fields["predealt"] = True
        if self.early:
            fields["early"] = _indexed(self.early, index)
        if len(index) > base:
            fields["peers"] = _table_extra(index, base)
        if known is not None:
            fields["table"] = known.digest
        if self.presign:
            fields["presign"] = self.presign
        if self.width != 32:  # absent at 32 bits, likewise
            fields["width"] = self.width
        if self.origin:
            fields["origin"] = self.origin
        return fields

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any],
                          known: Known | None = None) -> MaskedInput:
        data = body["data"]
        width = check_int(body.get("width", 32), "width", 3, 32)
        if width not in MASKED_WIDTHS:
            raise WireError(f"masked width must be one of {MASKED_WIDTHS} bits, got {width}")
        group = 2 if width == 3 else 3 if width in PACKED_WIDTHS else width // 8
        if not is_binary(data) or len(data) % group:
            raise WireError(f"masked data must be bytes holding {width}-bit words")
        origin = body.get("origin", b"")
        if "origin" in body and (not isinstance(origin, bytes) or len(origin) != ORIGIN_BYTES
                                 or body.get("sparse") is not True):
            raise WireError(f"origin must be {ORIGIN_BYTES} bytes, on a sparse input")
        weight = check_float(body["weight"], "weight")
        if not 0.0 < weight <= 1.0:
            raise WireError(f"weight {weight} is outside (0, 1]")
        sender = check_str(body["sender"], "sender", MAX_PEER_ID_CHARS)
        table = table_of(body, known, "masked input")
        names = (*(table if table is not None else (sender,)),
                 *_check_peers(body.get("peers", []), "peers"))
        if len(set(names)) != len(names):
            raise WireError("peers names the sender, or a peer of the table")
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", 0, MAX_ROUND),
            sender=sender,
            aggregator=check_str(body["aggregator"], "aggregator", MAX_PEER_ID_CHARS),
            weight=weight,
            disagreement=check_float(body["disagreement"], "disagreement"),
            done=check_bool(body["done"], "done"),
            data=data,
            shares=_from_indexed(body["shares"], "shares", names, MAX_MEMBERS,
                                 MAX_SHARE_CIPHERTEXT),
            depth=check_int(body.get("depth", 0), "depth", 0, MAX_DEPTH),
            horizon=check_int(body.get("horizon", 0), "horizon", 0, MAX_DEPTH),
            waiting=check_int(body.get("waiting", 0), "waiting", 0, MAX_DEPTH),
            sparse=check_bool(body.get("sparse", False), "sparse"),
            next_shares=_from_indexed(body.get("next_shares", []), "next shares", names,
                                      MAX_MEMBERS, MAX_SHARE_CIPHERTEXT),
            predealt=check_bool(body.get("predealt", False), "predealt"),
            early=_from_indexed(body.get("early", []), "early shares", names, MAX_MEMBERS,
                                MAX_SHARE_BYTES),
            presign=_check_signature(body.get("presign", b""), "presign", empty=True),
            width=width,
            origin=origin,
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
    # the encrypted shares of the members' self seeds for the next round addressed to the
    # receiver, relayed from their inputs' ``next_shares`` (seeds dealt a round ahead)
    next_shares: tuple[tuple[str, bytes], ...] = ()
    # light: the aggregator unmasked from early shares and asks for nothing (no shares, no
    # signatures attached); the member presigns the next round and answers with its next input
    light: bool = False
    # a later full round (round + 2) whose sum the aggregator takes as deltas instead: its
    # running sum is exact (gossipfl.node.secure_sparse.waiver); 0: none
    waives: int = 0
    # a later consensus delta round (round + 2) whose levels the aggregator's members hold to
    # ``narrow_levels`` each side: its sums had shrunk (gossipfl.node.secure_sparse.narrowing);
    # 0: none
    narrows: int = 0
    narrow_levels: int = 0
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"next_shares", "light", "waives",
                                                    "narrows", "narrow_levels"})
    # the frame's peer table beyond the survivors and the dropped, or beyond the known table
    # whose digest ``table`` is (survivors and dropped then places in it)
    WIRE_ONLY: ClassVar[frozenset[str]] = frozenset({"peers", "table"})

    def _fields_to_wire(self, known: Known | None = None) -> dict[str, Any]:
        # peers by their place in a table: the known one, else the survivors and the dropped;
        # then ``peers``
        named = known.peers if known is not None else (*self.survivors, *self.dropped)
        index = {peer: i for i, peer in enumerate(named)}
        fields: dict[str, Any] = {"round": self.round, "sender": self.sender}
        if known is not None:
            fields["survivors"] = [index.setdefault(p, len(index)) for p in self.survivors]
            fields["dropped"] = [index.setdefault(p, len(index)) for p in self.dropped]
        else:
            fields["survivors"], fields["dropped"] = list(self.survivors), list(self.dropped)
        fields["shares"] = _indexed(self.shares, index)
        fields["signatures"] = _indexed(self.signatures, index)
        if self.next_shares:
            fields["next_shares"] = _indexed(self.next_shares, index)
        if len(index) > len(named):
            fields["peers"] = _table_extra(index, len(named))
        if known is not None:
            fields["table"] = known.digest
        if self.light:
            fields["light"] = True
        if self.waives:
            fields["waives"] = self.waives
        if self.narrows:
            fields["narrows"] = self.narrows
            fields["narrow_levels"] = self.narrow_levels
        return fields

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any],
                          known: Known | None = None) -> UnmaskRequest:
        table = table_of(body, known, "unmask request")
        if table is None:
            survivors = _check_peers(body["survivors"], "survivors")
            dropped = _check_peers(body["dropped"], "dropped")
            names = (*survivors, *dropped, *_check_peers(body.get("peers", []), "peers"))
        else:
            names = (*table, *_check_peers(body.get("peers", []), "peers"))
            survivors = _places(body["survivors"], "survivors", names)
            dropped = _places(body["dropped"], "dropped", names)
            if set(survivors) & set(dropped):
                raise WireError("survivors and dropped name a peer twice")
        if len(set(names)) != len(names):
            raise WireError("survivors, dropped and peers name a peer twice")
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", 0, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            survivors=survivors,
            dropped=dropped,
            shares=_from_indexed(body["shares"], "shares", names, MAX_MEMBERS,
                                 MAX_SHARE_CIPHERTEXT),
            signatures=_check_signatures(_from_indexed(body["signatures"], "signatures", names,
                                                       MAX_MEMBERS, SIGNATURE_BYTES)),
            next_shares=_from_indexed(body.get("next_shares", []), "next shares", names,
                                      MAX_MEMBERS, MAX_SHARE_CIPHERTEXT),
            light=check_bool(body.get("light", False), "light"),
            waives=check_int(body.get("waives", 0), "waives", 0, MAX_ROUND),
            narrows=check_int(body.get("narrows", 0), "narrows", 0, MAX_ROUND),
            narrow_levels=check_int(body.get("narrow_levels", 0), "narrow levels", 0, 2**16),
        )


@dataclass(frozen=True)
class UnmaskResponse:
    """A survivor's answer: the shares it holds of the survivors' self seeds (its own share of
    its own seed included; never the seed itself), and its round pair seeds with the dropped
    members; never both kinds for one member.

    ``next_signature`` (empty or 64 bytes): when the answered set dropped no one, the sender's
    signature on the same set for the next round, to which it commits (so that a round with
    no dropout needs no consistency exchange: :mod:`gossipfl.node.secure_round`).
    """

    KIND: ClassVar[str] = "unmask_response"
    federation: str
    round: int
    sender: str
    seed_shares: tuple[tuple[str, bytes], ...]
    pair_seeds: tuple[tuple[str, bytes], ...]
    next_signature: bytes = b""

    def _fields_to_wire(self) -> dict[str, Any]:
        return {"round": self.round, "sender": self.sender,
                "seed_shares": [[p, v] for p, v in self.seed_shares],
                "pair_seeds": [[p, v] for p, v in self.pair_seeds],
                "next_signature": self.next_signature}

    @classmethod
    def _fields_from_wire(cls, federation: str, body: Mapping[str, Any]) -> UnmaskResponse:
        pair_seeds = _check_pairs(body["pair_seeds"], "pair seeds", MAX_MEMBERS, 32)
        if any(len(v) != 32 for _, v in pair_seeds):
            raise WireError("pair seeds must be 32 bytes")
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", 0, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            seed_shares=_check_pairs(body["seed_shares"], "seed shares", MAX_MEMBERS,
                                     MAX_SHARE_BYTES),
            pair_seeds=pair_seeds,
            next_signature=_check_signature(body["next_signature"], "next signature",
                                            empty=True),
        )


SIGNATURE_BYTES = 64


def _check_signature(value: Any, what: str, *, empty: bool = False) -> bytes:
    """One Ed25519 signature (or, where ``empty``, none: b"")."""
    if not isinstance(value, bytes) or len(value) not in ((0, SIGNATURE_BYTES) if empty
                                                          else (SIGNATURE_BYTES,)):
        raise WireError(f"{what} must be {'empty or ' if empty else ''}{SIGNATURE_BYTES} bytes")
    return value


def _check_signatures(signatures: tuple[tuple[str, bytes], ...],
                      ) -> tuple[tuple[str, bytes], ...]:
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
            round=check_int(body["round"], "round", 0, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
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
        refusal = check_str(body["refusal"], "refusal", 32)
        if bool(signature) == bool(refusal):
            raise WireError("a consistency response holds a signature or a refusal, not both")
        return cls(
            federation=federation,
            round=check_int(body["round"], "round", 0, MAX_ROUND),
            sender=check_str(body["sender"], "sender", MAX_PEER_ID_CHARS),
            signature=signature,
            refusal=refusal,
        )
