"""The role a node plays, from its ``[adversary]`` section: one class per kind."""

from __future__ import annotations

from gossipfl.adversary.aggregator import Differencing, LyingAggregator
from gossipfl.adversary.byzantine import BYZANTINE_ROLES
from gossipfl.adversary.flood import MembershipFlood, OversizeFlood
from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.prober import StateProber
from gossipfl.adversary.role import Role
from gossipfl.config import AdversaryConfig

ROLES: dict[AdversaryKind, type[Role]] = {
    AdversaryKind.NONE: Role,
    AdversaryKind.LYING_AGGREGATOR: LyingAggregator,
    AdversaryKind.DIFFERENCING: Differencing,
    AdversaryKind.STATE_PROBER: StateProber,
    AdversaryKind.MEMBERSHIP_FLOOD: MembershipFlood,
    AdversaryKind.OVERSIZE_FLOOD: OversizeFlood,
    **BYZANTINE_ROLES,
}


def make_role(config: AdversaryConfig) -> Role:
    return ROLES[config.role](config)
