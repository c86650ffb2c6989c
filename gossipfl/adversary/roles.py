"""Every role by its kind: one class per ``[adversary] role`` (the attack code, loaded only for
an adversary: see :func:`gossipfl.adversary.factory.make_role`)."""

from __future__ import annotations

from gossipfl.adversary.aggregator import Differencing, LyingAggregator, NarrowingAggregator
from gossipfl.adversary.byzantine import BYZANTINE_ROLES
from gossipfl.adversary.flood import MembershipFlood, OversizeFlood
from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.prober import StateProber
from gossipfl.adversary.role import Role

ROLES: dict[AdversaryKind, type[Role]] = {
    AdversaryKind.NONE: Role,
    AdversaryKind.LYING_AGGREGATOR: LyingAggregator,
    AdversaryKind.DIFFERENCING: Differencing,
    AdversaryKind.NARROWING: NarrowingAggregator,
    AdversaryKind.STATE_PROBER: StateProber,
    AdversaryKind.MEMBERSHIP_FLOOD: MembershipFlood,
    AdversaryKind.OVERSIZE_FLOOD: OversizeFlood,
    **BYZANTINE_ROLES,
}
