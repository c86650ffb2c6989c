"""The adversary kinds a scenario may name (issue 8; issue 9 adds Byzantine kinds here)."""

from __future__ import annotations

from enum import Enum


class AdversaryKind(Enum):
    NONE = "none"  # an honest node
    LYING_AGGREGATOR = "lying_aggregator"  # tells survivors different survivor sets
    DIFFERENCING = "differencing"  # announces sets one live member apart, to subtract sums
    STATE_PROBER = "state_prober"  # asks each neighbour for its estimate, every round
    MEMBERSHIP_FLOOD = "membership_flood"  # heartbeats of 255 made-up members, trap addresses
    OVERSIZE_FLOOD = "oversize_flood"  # oversize and msgpack-bomb frames, member and stranger

    @classmethod
    def parse(cls, value: str) -> AdversaryKind:
        """The kind named ``value``; ValueError naming the known kinds otherwise."""
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"adversary kind {value!r} is unknown (known: {known})") from None


#: Kinds that replace the node's secure sum as aggregator of its own neighbourhood.
AGGREGATOR_KINDS = frozenset({AdversaryKind.LYING_AGGREGATOR, AdversaryKind.DIFFERENCING})
