"""The state prober: asks each neighbour for its estimate on the state protocol every round,
as a (re)joining neighbour would. Under secure aggregation nothing may answer
(:mod:`gossipfl.node.catchup`); ``succeeded`` counts estimates obtained in the clear."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.role import Role, next_round
from gossipfl.gossip.wire import Contribution
from gossipfl.node import state_sync

if TYPE_CHECKING:
    from gossipfl.node.runtime import Node

log = logging.getLogger("gossipfl.adversary")

STARTING_POLL = 0.02  # seconds between two looks for the start of the node's rounds


def probe_targets(node: Node) -> list[str]:
    """Whom to ask: every neighbour, in a fixed order."""
    return sorted(node.neighbours)


class StateProber(Role):
    kind = AdversaryKind.STATE_PROBER

    async def deviate(self, node: Node) -> None:
        """A probe as soon as the node's rounds begin (its links are formed), then one after
        each round it finishes: however fast a federation runs, the prober asks each
        neighbour at least once before the rounds can end (a probe is a few refused or
        answered requests; a round waits for every neighbour's contribution)."""
        poll = node.protocol.heartbeat_interval
        while not node.status.running:
            await trio.sleep(min(poll, STARTING_POLL))
        r = node.round
        await self.probe(node, r)
        while True:
            r = await next_round(node, r, poll)
            await self.probe(node, r)

    async def probe(self, node: Node, r: int) -> None:
        """One request to each neighbour (the node's own state request, rejoin flag set)."""
        for peer in probe_targets(node):
            pulled: dict[str, Contribution] = {}
            await state_sync.pull_state(node, peer, pulled)  # the node's own request
            self.tally.attempts += 1  # counted once answered or refused (not when cut short)
            if peer in pulled:
                self.tally.succeeded += 1
                self.tally.details["estimates_in_the_clear"] += 1
                self.tally.reconstructed(r, peer, node.layout.from_tensors(pulled[peer].tensors))
                log.warning("round %d: %s gave its estimate in the clear", r, peer)
            else:
                self.tally.details["refused"] += 1
