"""Recurring random faults (a scenario's ``[churn]``, for soaks): about every so many seconds,
one node picked at random is restarted (SIGKILL, then started again with the same identity and
folder) or paused (SIGSTOP, then SIGCONT), and comes back a few seconds later.

The schedule (which node, when, which kind) is :class:`ChurnSchedule`: pure, given the elapsed
time, the nodes up and down, the federation's round and a seeded rng. :class:`Churn` drives it
for the runner (real processes) and the simulator (virtual time) alike: each event becomes a
:class:`~gossipfl.scenario.config.FaultConfig` of its kind, applied by the same code that
applies the scenario's ``[[faults]]`` (``runner.apply_fault``, ``Simulation.apply``), whose
timers bring the node back.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from gossipfl.config import to_dict
from gossipfl.scenario.config import ChurnConfig, FaultConfig

if TYPE_CHECKING:
    from gossipfl.scenario.config import ScenarioConfig
    from gossipfl.scenario.process import NodeProcess

log = logging.getLogger("gossipfl.churn")

MIN_UP = 2  # churn never leaves fewer nodes than this up


@dataclass(frozen=True)
class ChurnEvent:
    """One fault of the churn: ``node`` taken down (``kind``) at ``time`` seconds after the
    start, due back at ``back_at``; ``round``: the furthest round any node had finished."""

    time: float
    node: int
    kind: str
    back_at: float
    round: int

    def fault(self) -> FaultConfig:
        """The ``[[faults]]`` entry that does what this event says (due at once)."""
        return FaultConfig(kind=self.kind, node=self.node, at_round=0,
                           down_seconds=self.back_at - self.time)


def churn_rng(seed: int) -> random.Random:
    """The churn's generator, from the scenario's seed (apart from the other faults')."""
    return random.Random(seed * 15485863 + 53)


class ChurnSchedule:
    """When, which node and which kind: ask :meth:`due` as often as you like; it returns an
    event when one is due and allowed, and draws from ``rng`` only then (so a seed and the same
    sequence of calls give the same events).

    An event is allowed once ``elapsed`` has reached the next time (``start_seconds`` plus up
    to ``jitter_seconds`` for the first; each next one ``every_seconds ± jitter_seconds`` after
    the one before), while the federation's round lies in ``[from_round, last_round)``, fewer
    than ``max_events`` have come, no node is down (``down``) and the last event's node is due
    back, and at least ``MIN_UP + 1`` nodes are up (so at least ``MIN_UP`` stay up). An event
    that is due but not allowed waits: it comes at the first call that allows it.
    """

    def __init__(self, config: ChurnConfig, rounds: int, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.last_round = config.last_round(rounds)
        self.next_at = config.start_seconds + rng.uniform(0.0, config.jitter_seconds)
        self.events: list[ChurnEvent] = []

    @property
    def exhausted(self) -> bool:
        return len(self.events) >= self.config.max_events

    def due(self, elapsed: float, up: Collection[int], down: Collection[int],
            federation_round: int) -> ChurnEvent | None:
        config = self.config
        if self.exhausted or elapsed < self.next_at:
            return None
        if not config.from_round <= federation_round < self.last_round:
            return None
        if down or (self.events and elapsed < self.events[-1].back_at):
            return None  # one at a time
        candidates = sorted(set(up))
        if len(candidates) <= MIN_UP:
            return None
        node = self.rng.choice(candidates)
        kind = self.rng.choice(config.kinds)
        event = ChurnEvent(time=round(elapsed, 3), node=node, kind=kind,
                           back_at=round(elapsed + config.down_seconds, 3),
                           round=federation_round)
        self.events.append(event)
        jitter = self.rng.uniform(-config.jitter_seconds, config.jitter_seconds)
        self.next_at = elapsed + config.every_seconds + jitter
        return event


def node_states(entries: Iterable[NodeProcess], running: Collection[int]
                ) -> tuple[set[int], set[int]]:
    """(up, down): of the nodes whose process (or task) is ``running``, those neither killed
    nor paused; and the nodes that are down for now, due to be restarted or resumed."""
    down = {e.index for e in entries if e.restart_at is not None or e.resume_at is not None}
    up = {e.index for e in entries if e.index in running and e.index not in down
          and e.killed_at is None}
    return up, down


class Churn:
    """The scenario's ``[churn]``, driven from a runner's (or the simulator's) watch loop."""

    def __init__(self, scenario: ScenarioConfig, started: float) -> None:
        assert scenario.churn is not None
        self.schedule = ChurnSchedule(scenario.churn, scenario.rounds, churn_rng(scenario.seed))
        self.started = started

    def step(self, now: float, entries: list[NodeProcess], running: Collection[int],
             federation_round: int, apply: Callable[[NodeProcess, FaultConfig], None]) -> None:
        """Apply the event due now, if any: ``apply(entry, fault)`` takes the node down (and
        sets its timer to bring it back)."""
        up, down = node_states(entries, running)
        event = self.schedule.due(now - self.started, up, down, federation_round)
        if event is None:
            return
        log.info("churn: %s node %d at %.1f s (federation at round %d)", event.kind,
                 event.node, event.time, federation_round)
        apply(entries[event.node], event.fault())

    def section(self) -> dict[str, Any]:
        """The report's ``churn``: its settings and every event (time, node, kind, back_at,
        round; seconds since the start)."""
        return {"config": to_dict(self.schedule.config),
                "last_round": self.schedule.last_round,
                "events": [asdict(e) for e in self.schedule.events]}


__all__ = ["MIN_UP", "Churn", "ChurnEvent", "ChurnSchedule", "churn_rng", "node_states"]
