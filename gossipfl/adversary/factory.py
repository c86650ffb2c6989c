"""The role a node plays, from its ``[adversary]`` section: one class per kind."""

from __future__ import annotations

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.role import Role
from gossipfl.config import AdversaryConfig


def make_role(config: AdversaryConfig) -> Role:
    if config.role is AdversaryKind.NONE:
        return Role(config)  # an honest node: the attack code (and what it imports) stays out
    from gossipfl.adversary.roles import ROLES

    return ROLES[config.role](config)
