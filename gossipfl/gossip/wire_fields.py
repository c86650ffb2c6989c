"""The wire's shared rules: the error type, the per-field size caps, and the field checks.

Part of the wire, which :mod:`gossipfl.gossip.wire` defines and is the one module the rest of
gossipfl imports it from (it re-exports every name here). This module holds what every message
module needs and imports nothing of gossipfl, so that the message modules
(:mod:`~gossipfl.gossip.wire_membership`, :mod:`~gossipfl.gossip.wire_contribution`,
:mod:`~gossipfl.gossip.wire_secagg`) and the codec in :mod:`gossipfl.gossip.wire` can all use it
without an import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from enum import StrEnum
from typing import Any, TypeVar

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
#: The largest round number a message may carry.
MAX_ROUND = 2**31 - 1
#: Membership table epochs (a run's start, ns) and versions travel as unsigned 64-bit numbers.
MAX_TABLE_NUMBER = 2**64 - 1
#: The largest settled depth or horizon a message may carry (gossipfl.node.termination).
MAX_DEPTH = 2**16
#: an ``origin``: the digest that names an initial model (wire_contribution.origin_digest)
ORIGIN_BYTES = 16


class WireError(ValueError):
    """A frame that breaks the wire rules; the message names the rule."""


# -- field checks: each returns the value if it keeps the rule, else raises WireError naming it


def check_str(value: Any, what: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise WireError(f"{what} must be a string")
    if len(value) > max_chars:
        raise WireError(f"{what} is longer than {max_chars} characters")
    return value


#: A binary field as decoded: ``bytes``, or a read-only view of the frame for a large one
#: (:mod:`gossipfl.gossip.wire_views`).
Binary = bytes | memoryview


def is_binary(value: Any) -> bool:
    """A decoded binary field (see :data:`Binary`)."""
    return isinstance(value, (bytes, memoryview))


def check_int(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{what} must be an integer")
    if not low <= value <= high:
        raise WireError(f"{what} {value} is outside [{low}, {high}]")
    return value


def check_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WireError(f"{what} must be a number")
    if not math.isfinite(value):
        raise WireError(f"{what} must be finite")
    return float(value)


def check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise WireError(f"{what} must be a boolean")
    return value


C = TypeVar("C", bound=StrEnum)


def check_code(value: Any, what: str, allowed: Iterable[C]) -> C:
    """A protocol code: a string that is the value of one of ``allowed`` (that member)."""
    text = check_str(value, what, 16)
    for code in allowed:
        if code.value == text:
            return code
    raise WireError(f"{what} {text!r} is unknown")


def check_addrs(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ADDRS:
        raise WireError(f"{what} must be a list of at most {MAX_ADDRS} addresses")
    for addr in value:  # the message is built only for a bad entry (heartbeats list many)
        if not isinstance(addr, str) or len(addr) > MAX_ADDR_CHARS:
            check_str(addr, f"{what} entry", MAX_ADDR_CHARS)
    return tuple(value)
