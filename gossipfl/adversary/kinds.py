"""The adversary kinds a scenario may name: privacy attacks (issue 8), Byzantine members
(issue 9)."""

from __future__ import annotations

from enum import Enum


class AdversaryKind(Enum):
    NONE = "none"  # an honest node
    LYING_AGGREGATOR = "lying_aggregator"  # tells survivors different survivor sets
    DIFFERENCING = "differencing"  # announces sets one live member apart, to subtract sums
    NARROWING = "narrowing"  # narrows every consensus delta round of its sum to one level
    STATE_PROBER = "state_prober"  # asks each neighbour for its estimate, every round
    MEMBERSHIP_FLOOD = "membership_flood"  # heartbeats of 255 made-up members, trap addresses
    OVERSIZE_FLOOD = "oversize_flood"  # oversize and msgpack-bomb frames, member and stranger
    # Byzantine members (issue 9, gossipfl.adversary.byzantine): crafted estimates
    SIGN_FLIP = "sign_flip"  # −x of its trained model
    GAUSSIAN = "gaussian"  # x + N(0, σ²)
    SCALE = "scale"  # c·x, a large multiple
    ALIE = "alie"  # μ − z·s of the target's neighbourhood ("a little is enough")
    IPM = "ipm"  # −ε·μ (inner-product manipulation)
    DISSENSUS = "dissensus"  # pushes each target away from its honest neighbours
    LABEL_FLIP = "label_flip"  # trains on labels C − 1 − y
    FREE_RIDER = "free_rider"  # never trains, sends its first estimate every round

    @classmethod
    def parse(cls, value: str) -> AdversaryKind:
        """The kind named ``value``; ValueError naming the known kinds otherwise."""
        try:
            return cls(value)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"adversary kind {value!r} is unknown (known: {known})") from None


#: Kinds that send crafted estimates (model manipulation) rather than attack privacy.
BYZANTINE_KINDS = frozenset({
    AdversaryKind.SIGN_FLIP, AdversaryKind.GAUSSIAN, AdversaryKind.SCALE, AdversaryKind.ALIE,
    AdversaryKind.IPM, AdversaryKind.DISSENSUS, AdversaryKind.LABEL_FLIP,
    AdversaryKind.FREE_RIDER,
})

#: Kinds that need the colluders' board (the honest estimates they do not hear themselves).
COLLUDING_KINDS = frozenset({AdversaryKind.ALIE, AdversaryKind.IPM, AdversaryKind.DISSENSUS})

#: Kinds that replace the node's secure sum as aggregator of its own neighbourhood.
AGGREGATOR_KINDS = frozenset({AdversaryKind.LYING_AGGREGATOR, AdversaryKind.DIFFERENCING})
