"""The interface between a node and the adversary it plays, and what an adversary records.

The node calls its role at these points (and nowhere else):

- ``setup(node)``: once, at the end of the node's construction (a Byzantine role may poison
  its learner's data or stop it training: :mod:`gossipfl.adversary.byzantine`).
- ``payload(node, peer, r, kind, base, array)``: as the node sends its round-``r`` estimate to
  ``peer`` (plain and async modes), what it sends instead; ``acked(peer, r, ok)`` after the
  peer's answer.
- ``masked_estimate(node, aggregator, r, estimate)``: under secure aggregation, as the node
  builds its masked input for ``aggregator``'s round-``r`` sum, the estimate it quantises and
  masks instead of its own (:mod:`gossipfl.node.secure_inputs`); ``acked`` after the
  aggregator's answer. An honest node range-checks what it masks; a role whose
  ``checks_inputs`` is false skips that check.
- ``run(node)``: started in the node's nursery with its other tasks, before joining; a role's
  own deviation loop (probing, flooding). It never takes the node down: an error is logged.
- ``secure_sum(node, r)``: only when ``aggregates`` is true, in place of the honest secure sum
  of the node's own neighbourhood (:func:`gossipfl.node.secure_round.secure_sum`); returns what
  the honest one returns, (Σ w x̂, Σ w, survivors) or None.
- ``narrowing(node, r, honest)``: as the aggregator's round-``r`` unmask requests go out under
  consensus deltas, the narrowing they announce (round, levels) instead of the honest rule's
  ``honest`` (:func:`gossipfl.node.secure_sparse.narrowing`).
- ``write(out)``: at the end, the tally (``adversary/summary.json``) and the reconstructions
  (``adversary/reconstructions.npz``: one vector per round and target, ``rNNNNN_<peer id>``;
  those owed to a member that really left, not to the attack, in
  ``churn_reconstructions.npz``).

An honest node's role (:class:`Role` itself) does nothing at any of them.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.config import AdversaryConfig

# The node (a gossipfl.node.runtime.Node) is typed Any here: the runtime imports this module
# for the honest role, and this module must not import the runtime back.
Node = Any

log = logging.getLogger("gossipfl.adversary")

SumResult = tuple[np.ndarray, float, list[str]] | None
Payload = tuple[str, int, np.ndarray]  # (kind, base round, array) of a Contribution


def reconstruction_key(r: int, peer: str) -> str:
    return f"r{r:05d}_{peer}"


def parse_reconstruction_key(key: str) -> tuple[int, str]:
    """``rNNNNN_<peer>`` → (round, peer)."""
    head, _, peer = key.partition("_")
    return int(head[1:]), peer


@dataclass
class Tally:
    """What an adversary tried and got: ``attempts``, ``succeeded`` (in its kind's unit, see
    the README), ``details`` (counters by what happened) and its best reconstructions of its
    neighbours' estimates, by round and peer."""

    attempts: int = 0
    succeeded: int = 0
    details: Counter[str] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)
    reconstructions: dict[str, np.ndarray] = field(default_factory=dict)
    churn: dict[str, np.ndarray] = field(default_factory=dict)  # owed to real departures

    def reconstructed(self, r: int, peer: str, vector: np.ndarray, *,
                      churn: bool = False) -> None:
        table = self.churn if churn else self.reconstructions
        table[reconstruction_key(r, peer)] = np.asarray(vector, np.float32)

    def summary(self, kind: AdversaryKind) -> dict[str, Any]:
        return {"kind": kind.value, "attempts": self.attempts, "succeeded": self.succeeded,
                "details": dict(sorted(self.details.items())), **self.extra,
                "reconstructions": len(self.reconstructions)}


class Role:
    """The honest role: no deviation. Subclasses override the hooks they need."""

    kind = AdversaryKind.NONE
    aggregates = False  # whether :meth:`secure_sum` replaces the honest secure sum
    checks_inputs = True  # whether its masked inputs get the honest range check

    def __init__(self, config: AdversaryConfig) -> None:
        self.config = config
        self.tally = Tally()

    async def run(self, node: Node) -> None:
        """The role's own loop, until the node stops; an error ends the role, not the node."""
        try:
            await self.deviate(node)
        except Exception as error:
            log.error("adversary %s stopped: %s: %s", self.kind.value, type(error).__name__,
                      error)
            self.tally.details["role_error"] += 1

    async def deviate(self, node: Node) -> None:
        return None

    def setup(self, node: Node) -> None:
        """Called once the node is built; the honest role changes nothing."""
        return None

    async def payload(self, node: Node, peer: str, r: int, kind: str, base: int,
                      array: np.ndarray) -> Payload:
        """What goes to ``peer`` as our round-``r`` estimate: the honest role sends what the
        protocol computed (``kind`` "delta" on round ``base``, or "full")."""
        return kind, base, array

    async def masked_estimate(self, node: Node, aggregator: str, r: int,
                              estimate: np.ndarray) -> np.ndarray:
        """What this node quantises and masks (times its mixing weight) as its input to
        ``aggregator``'s round-``r`` secure sum: the honest role, its ``estimate``."""
        return estimate

    def acked(self, peer: str, r: int, ok: bool) -> None:
        """``peer`` took (``ok``) or refused our round-``r`` estimate (or masked input)."""
        return None

    def narrowing(self, node: Node, r: int, honest: tuple[int, int]) -> tuple[int, int]:
        """The (round, levels) this aggregator's round-``r`` unmask requests narrow: the honest
        role, what the honest rule chose."""
        return honest

    async def secure_sum(self, node: Node, r: int) -> SumResult:
        raise NotImplementedError(f"{self.kind.value} does not aggregate")

    def write(self, out: Path) -> None:
        if self.kind is AdversaryKind.NONE:
            return
        folder = out / "adversary"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text(json.dumps(self.tally.summary(self.kind), indent=1))
        np.savez(folder / "reconstructions.npz", **self.tally.reconstructions)
        if self.tally.churn:
            np.savez(folder / "churn_reconstructions.npz", **self.tally.churn)


async def next_round(node: Node, after: int, poll: float) -> int:
    """Wait (polling every ``poll`` seconds) until the node has finished a round past ``after``."""
    while node.round <= after or node.round < 0:
        await trio.sleep(poll)
    return node.round
