"""How far a frame body may expand when decoded: the decode limits of each message kind and
the bounded msgpack decoder (part of the wire, :mod:`gossipfl.gossip.wire`, which re-exports
these names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from gossipfl.gossip.wire_fields import (
    MAX_ADDRS,
    MAX_MEMBERS,
    MAX_TENSOR_DIMS,
    MAX_TENSORS,
    WireError,
)
from gossipfl.gossip.wire_views import Buffer


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
    # ≤256 [place, bytes] pairs each of shares, next shares and early shares; a peer table
    "masked_input": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 10 * MAX_MEMBERS),
    # survivors, dropped and a peer table (≤256 between them), and ≤256 [place, bytes] pairs
    # each of shares, signatures and next shares
    "unmask_request": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 10 * MAX_MEMBERS),
    "unmask_response": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 6 * MAX_MEMBERS),
    "consistency_request": DecodeLimits(MAX_MEMBERS, max_elements=2 * 32 + 2 * MAX_MEMBERS),
    "consistency_response": DecodeLimits(MAX_ADDRS, max_elements=64),
    "dialback_request": DecodeLimits(MAX_ADDRS, max_elements=16),
    "dialback_reply": DecodeLimits(MAX_ADDRS, max_elements=16),
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


def unpack_bounded(body: Buffer, limits: DecodeLimits,
                   ext_hook: Any = None) -> Any:
    """msgpack-decode ``body`` within ``limits`` (see :class:`DecodeLimits`); WireError if not.
    ``ext_hook``: the hook of :func:`~gossipfl.gossip.wire_views.unpack_views`' placeholders
    (ext objects of 4 bytes; none accepted without it)."""
    budget = _ElementBudget(limits.max_elements)
    extra = {} if ext_hook is None else {"ext_hook": ext_hook}
    try:
        return msgpack.unpackb(
            body, raw=False, strict_map_key=True, use_list=True,
            list_hook=budget.list_hook, object_hook=budget.object_hook,
            max_array_len=limits.max_array_len, max_map_len=limits.max_map_len,
            max_str_len=limits.max_str_len, max_bin_len=len(body),
            max_ext_len=0 if ext_hook is None else 4, **extra,
        )
    except WireError:
        raise
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise WireError(f"malformed msgpack: {str(error) or type(error).__name__}") from None
    except Exception as error:  # msgpack raises several unrelated types on garbage
        raise WireError(f"malformed msgpack: {type(error).__name__}") from None
