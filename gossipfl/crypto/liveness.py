"""Signed liveness stamps: news that a member is alive which only that member can make.

Each node signs, with its identity key (Ed25519, the key its peer id names), a stamp over
(domain, federation, its peer id, its run's epoch, a sequence number, a digest of the addresses
it listens on). The addresses are signed so that hearsay cannot move a member: a stamp relayed
with other addresses than the ones its member signed does not verify, and a node dials a member
it has not heard from directly only at addresses so signed (``gossip/membership.py``). The
sequence grows by one every heartbeat cycle; the epoch is the run's start time (wall clock,
nanoseconds), so a restarted node's stamps order after every stamp of its earlier runs,
whatever its counter.

A receiver keeps per member the highest (epoch, seq) it has verified, and the local time at
which that number last grew: its *progress*. A stamp counts only if it is higher than the one
held, so:

* a replayed old stamp (or the same stamp relayed again) is not progress and costs no signature
  check; a restarted member's new stamps (later epoch) are;
* a member that relays "heard just now" about a dead member, with no stamp or an old one, keeps
  it in no one's view as alive: without the member's key no one can make a higher stamp;
* each new stamp is verified about once per receiver per cycle (the first heartbeat that carries
  it; the others carry a number already held).

Limit: a node whose wall clock went back across a restart signs stamps lower than its old ones;
they count again once receivers have forgotten it (member timeout), or at once where it is heard
from directly (a direct heartbeat is liveness in itself: the channel authenticates the sender).

Pure functions; no I/O, no clock.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gossipfl.crypto.admission import AdmissionError, verify_key_from_peer_id
from gossipfl.gossip.wire import STAMP_BYTES

DOMAIN = b"gossipfl/liveness/stamp/v2\x00"
_SIGNATURE_BYTES = 64
_U64 = 2**64

StampKey = tuple[int, int]  # (epoch, seq): stamps are ordered by it


class StampVerdict(enum.Enum):
    """What a stamp carried in a heartbeat did to the member it names."""

    PROGRESS = "progress"  # verified and higher than the one held: the member is alive now
    STALE = "stale"  # not higher than the one held (a replay, or relayed again): not checked
    FORGED = "forged"  # malformed, or its signature does not verify for that member
    UNCHECKED = "unchecked"  # higher, but the heartbeat's check budget was spent: ignored
    ABSENT = "absent"  # no stamp, or no entry for that member


class StampError(ValueError):
    """A stamp that is malformed or does not verify."""


@dataclass(frozen=True)
class Stamp:
    epoch: int
    seq: int
    signature: bytes

    @property
    def key(self) -> StampKey:
        return (self.epoch, self.seq)

    def to_bytes(self) -> bytes:
        return self.epoch.to_bytes(8, "big") + self.seq.to_bytes(8, "big") + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> Stamp:
        """Parse (not verify) a stamp: epoch (8) ‖ seq (8) ‖ signature (64)."""
        if len(data) != STAMP_BYTES:
            raise StampError(f"a stamp is {STAMP_BYTES} bytes, not {len(data)}")
        return cls(int.from_bytes(data[:8], "big"), int.from_bytes(data[8:16], "big"),
                   bytes(data[16:]))


def _field(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


def addrs_digest(addrs: tuple[str, ...]) -> bytes:
    """32 bytes naming an ordered tuple of addresses (each length-prefixed, so no two tuples
    share a digest by concatenation)."""
    hasher = hashlib.blake2b(digest_size=32, person=b"gossipfl-addrs")
    hasher.update(len(addrs).to_bytes(2, "big"))
    for addr in addrs:
        hasher.update(_field(addr))
    return hasher.digest()


def stamp_message(federation: str, peer_id: str, epoch: int, seq: int,
                  addrs: tuple[str, ...] = ()) -> bytes:
    """The signed bytes: domain ‖ federation ‖ peer id (length-prefixed) ‖ epoch ‖ seq ‖
    the digest of the member's addresses."""
    if not (0 <= epoch < _U64 and 0 <= seq < _U64):
        raise StampError("epoch and seq must fit 64 bits")
    return (DOMAIN + _field(federation) + _field(peer_id) + epoch.to_bytes(8, "big")
            + seq.to_bytes(8, "big") + addrs_digest(addrs))


def sign_stamp(federation: str, peer_id: str, epoch: int, seq: int,
               signing_key: SigningKey, addrs: tuple[str, ...] = ()) -> bytes:
    """This node's stamp for (epoch, seq) at ``addrs`` (where it listens), as carried on the
    wire (beside those addresses: a heartbeat's, or a member list entry's)."""
    signature = signing_key.sign(stamp_message(federation, peer_id, epoch, seq,
                                               addrs)).signature
    assert len(signature) == _SIGNATURE_BYTES
    return Stamp(epoch, seq, bytes(signature)).to_bytes()


def verify_stamp(data: bytes, *, federation: str, peer_id: str, addrs: tuple[str, ...] = (),
                 verify_key_of: Callable[[str], VerifyKey] = verify_key_from_peer_id) -> Stamp:
    """The stamp in ``data`` if ``peer_id``'s key signed it for ``federation`` at ``addrs``;
    StampError if not (malformed, another member's or federation's, other addresses than the
    member signed, or altered)."""
    stamp = Stamp.from_bytes(data)
    try:
        verify_key_of(peer_id).verify(
            stamp_message(federation, peer_id, stamp.epoch, stamp.seq, addrs), stamp.signature)
    except BadSignatureError:
        raise StampError("signature does not verify") from None
    except (AdmissionError, ValueError) as error:
        raise StampError(f"no verifiable key for {peer_id}: {error}") from None
    return stamp


def is_progress(held: StampKey | None, candidate: StampKey) -> bool:
    """Whether a stamp numbered ``candidate`` is news over the one held (None: none held)."""
    return held is None or candidate > held


def silent(live_at: float | None, now: float, silence: float) -> bool:
    """A member is silent when no progress (nor direct hearing) is older than ``silence``."""
    return live_at is None or now - live_at > silence
