"""Revocation: the federation key's signed list of peers that are members no longer.

Only the holder of the federation key (``federation.key``) can revoke. A
:class:`RevocationList` says, under that key's signature: in ``federation``, list number
``serial`` (issued at ``issued_at``, Unix seconds) revokes these peer ids, each with a short
public reason. Serials grow by one with each list, and a list holds every id revoked so far, so
the newest list is all a node needs: nodes gossip it in their heartbeats and keep the one with the
highest serial that verifies.

The signed bytes are a domain-separation context followed by the canonical msgpack encoding of
``[version, federation, serial, issued_at, [[peer_id, reason], ...]]`` (entries sorted by peer id,
no duplicates, ``issued_at`` always float64); the transported form appends the signature. The list
is public (it is written 0644 to ``revocations.list`` beside ``federation.pub``); no secret is
written by :func:`revoke`.

Every error is an :class:`~gossipfl.crypto.admission.AdmissionError` with reason ``malformed``,
``bad_signature`` or ``wrong_federation``.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gossipfl.crypto.admission import (
    ED25519_KEY_BYTES,
    FEDERATION_KEY_FILE,
    FEDERATION_PUB_FILE,
    MAX_NAME_CHARS,
    MAX_PEER_ID_CHARS,
    SIGNATURE_BYTES,
    AdmissionError,
    FederationKeyError,
    check_key_bytes,
    check_name,
    check_time,
    load_federation_key,
    load_federation_name,
    load_federation_public,
    verify_key_from_peer_id,
    write_public_atomically,
)
from gossipfl.gossip.wire import MAX_REVOCATION_BYTES  # a list is refused beyond this size

REVOCATION_VERSION = 1
REVOCATIONS_FILE = "revocations.list"
MAX_REVOKED = 400  # with reasons of at most 64 characters, a full list fits the wire's cap
MAX_REASON_CHARS = 64
MAX_SERIAL = 2**62
_CONTEXT = b"gossipfl/revocation-list/v1\x00"


class RevocationUpdate(enum.Enum):
    """What a node does with a revocation list it is given."""

    NEWER = "newer"  # verified, higher serial than ours: adopted
    SAME = "same"  # the serial we hold
    OLDER = "older"  # a lower serial: refused (a replay of an old list)
    INVALID = "invalid"  # malformed, forged or for another federation: refused


def _malformed(detail: str) -> AdmissionError:
    return AdmissionError("malformed", f"malformed revocation list: {detail}")


@dataclass(frozen=True)
class RevocationList:
    """The federation's signed list of revoked peer ids (``revoked``: ``(peer_id, reason)``).

    Construction validates types, sizes and the canonical order (reason ``malformed``); the
    signature is :func:`verify_revocations`'s job.
    """

    federation: str
    serial: int
    issued_at: float
    revoked: tuple[tuple[str, str], ...]
    signature: bytes

    def __post_init__(self) -> None:
        try:
            check_name(self.federation, "federation", MAX_NAME_CHARS)
            if (isinstance(self.serial, bool) or not isinstance(self.serial, int)
                    or not 1 <= self.serial <= MAX_SERIAL):
                raise AdmissionError("malformed", f"serial must be an integer in 1..{MAX_SERIAL}")
            issued = check_time(self.issued_at, "issued_at")
            if not isinstance(self.revoked, tuple) or len(self.revoked) > MAX_REVOKED:
                raise AdmissionError("malformed", f"at most {MAX_REVOKED} revoked ids")
            for item in self.revoked:
                if not isinstance(item, tuple) or len(item) != 2:
                    raise AdmissionError("malformed", "an entry must be (peer_id, reason)")
                check_name(item[0], "revoked peer id", MAX_PEER_ID_CHARS)
                if not isinstance(item[1], str) or len(item[1]) > MAX_REASON_CHARS or not (
                        item[1].isprintable()):
                    raise AdmissionError("malformed", f"a reason is printable text of at most "
                                                      f"{MAX_REASON_CHARS} characters")
            ids = [peer for peer, _ in self.revoked]
            if ids != sorted(set(ids)):
                raise AdmissionError("malformed", "entries must be sorted by peer id, no repeats")
            check_key_bytes(self.signature, "signature", SIGNATURE_BYTES)
        except AdmissionError as error:
            raise _malformed(str(error)) from None
        object.__setattr__(self, "issued_at", issued)

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(peer for peer, _ in self.revoked)

    def _fields(self) -> list[Any]:
        return [REVOCATION_VERSION, self.federation, self.serial, float(self.issued_at),
                [list(item) for item in self.revoked]]

    def signed_bytes(self) -> bytes:
        """The exact bytes the federation key signs: context ‖ canonical msgpack."""
        return _CONTEXT + msgpack.packb(self._fields(), use_bin_type=True)

    def to_bytes(self) -> bytes:
        return msgpack.packb([*self._fields(), self.signature], use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes) -> RevocationList:
        """Parse a list, treating ``data`` as hostile (only ``AdmissionError`` is raised)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise _malformed("must be bytes")
        if not 0 < len(data) <= MAX_REVOCATION_BYTES:
            raise _malformed(f"must be 1 to {MAX_REVOCATION_BYTES} bytes")
        try:
            value = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
        except Exception as error:  # msgpack raises several unrelated types on garbage
            raise _malformed(f"not msgpack ({type(error).__name__})") from None
        if not isinstance(value, list) or len(value) != 6:
            raise _malformed("must be a list of 6 fields")
        version, federation, serial, issued_at, revoked, signature = value
        if isinstance(version, bool) or version != REVOCATION_VERSION:
            raise _malformed(f"version {version!r} is not supported")
        if not isinstance(issued_at, float):
            raise _malformed("issued_at must be a float")
        if not isinstance(revoked, list) or len(revoked) > MAX_REVOKED:
            raise _malformed(f"revoked must be a list of at most {MAX_REVOKED} entries")
        entries = tuple(tuple(e) if isinstance(e, list) else e for e in revoked)
        return cls(federation, serial, issued_at, entries, signature)  # type: ignore[arg-type]


def sign_revocations(federation_key: SigningKey, federation: str, serial: int,
                     revoked: dict[str, str], *, now: float) -> RevocationList:
    """Sign list number ``serial`` revoking ``revoked`` (peer id → reason)."""
    entries = tuple(sorted(revoked.items()))
    unsigned = RevocationList(federation, serial, now, entries, bytes(SIGNATURE_BYTES))
    signature = federation_key.sign(unsigned.signed_bytes()).signature
    return RevocationList(federation, serial, unsigned.issued_at, entries, signature)


def verify_revocations(rl: RevocationList, federation_public: bytes, *, federation: str) -> None:
    """Check that ``rl`` is signed by the federation key and is for ``federation``."""
    if not isinstance(rl, RevocationList):
        raise _malformed("not a RevocationList")
    check_key_bytes(federation_public, "federation public key", ED25519_KEY_BYTES)
    try:
        VerifyKey(federation_public).verify(rl.signed_bytes(), rl.signature)
    except (BadSignatureError, ValueError):
        raise AdmissionError("bad_signature", "bad signature: revocation list is not signed by "
                                              "the federation key") from None
    if rl.federation != federation:
        raise AdmissionError("wrong_federation", f"revocation list is for {rl.federation!r}, "
                                                 f"expected {federation!r}")


def judge_revocations(current: RevocationList | None, data: bytes, federation_public: bytes,
                      *, federation: str) -> tuple[RevocationUpdate, RevocationList | None, str]:
    """Decide what to do with list bytes a peer sent: ``(verdict, list, detail)``.

    The list is returned when its verdict is NEWER. Only a list whose serial exceeds the current
    one is verified (so replays of the list we hold cost a parse, not a signature check).
    """
    try:
        rl = RevocationList.from_bytes(data)
    except AdmissionError as error:
        return RevocationUpdate.INVALID, None, f"{error.reason}: {error}"
    held = current.serial if current is not None else 0
    if rl.serial == held and current is not None and rl.to_bytes() == current.to_bytes():
        return RevocationUpdate.SAME, None, f"serial {rl.serial}"
    if rl.serial <= held:
        return RevocationUpdate.OLDER, None, f"serial {rl.serial} is not newer than {held}"
    try:
        verify_revocations(rl, federation_public, federation=federation)
    except AdmissionError as error:
        return RevocationUpdate.INVALID, None, f"{error.reason}: {error}"
    return RevocationUpdate.NEWER, rl, f"serial {rl.serial}"


def load_revocations(path: str | os.PathLike[str], federation_public: bytes, *,
                     federation: str) -> RevocationList:
    """Read and verify a revocation list file."""
    list_path = Path(path)
    try:
        with list_path.open("rb") as handle:
            data = handle.read(MAX_REVOCATION_BYTES + 1)
    except FileNotFoundError:
        raise AdmissionError("malformed", f"revocation list {list_path} does not exist") from None
    rl = RevocationList.from_bytes(data)
    verify_revocations(rl, federation_public, federation=federation)
    return rl


def revoke(directory: str | os.PathLike[str], peer_id: str, reason: str = "", *,
           now: float) -> tuple[Path, RevocationList]:
    """Add ``peer_id`` to the federation's revocation list in ``directory`` and sign it anew.

    Reads ``directory/revocations.list`` if there is one (it must verify), writes the list with
    the next serial atomically (0644: the list is public). Revoking an id already revoked still
    issues a new serial (its reason is kept).
    """
    root = Path(directory)
    verify_key_from_peer_id(peer_id)
    if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or not reason.isprintable():
        raise AdmissionError("malformed", f"reason must be printable text of at most "
                                          f"{MAX_REASON_CHARS} characters")
    signing_key = load_federation_key(root / FEDERATION_KEY_FILE)
    name = load_federation_name(root)
    public = load_federation_public(root / FEDERATION_PUB_FILE)
    if public != bytes(signing_key.verify_key):
        raise FederationKeyError("key_file", f"{root / FEDERATION_PUB_FILE} does not match "
                                             f"{FEDERATION_KEY_FILE}")
    path = root / REVOCATIONS_FILE
    revoked: dict[str, str] = {}
    serial = 1
    if path.exists():
        current = load_revocations(path, public, federation=name)
        revoked = dict(current.revoked)
        serial = current.serial + 1
    revoked.setdefault(peer_id, reason)
    if len(revoked) > MAX_REVOKED:
        raise AdmissionError("malformed", f"a list holds at most {MAX_REVOKED} revoked ids")
    rl = sign_revocations(signing_key, name, serial, revoked, now=now)
    write_public_atomically(path, rl.to_bytes())
    return path, rl
