"""A scenario's network faults: which links go through relays, and when partitions cut and heal.

Every routed link gets one relay per direction: relay ``"i->j"`` forwards to node ``j`` and is
the only address node ``i`` dials ``j`` at (``NodeConfig.routes``). libp2p keeps one connection
per pair of peers, opened by either side, so with both directions routed every connection
between the two nodes passes a relay, whoever dialled it.

Partitions are timed by the runner's clock: rounds are read from the nodes' metrics, and a cut at
``at_round`` comes once the *most advanced* node has finished that round (so the cut is never
late for anyone: the slower nodes meet it a little earlier in their own rounds); a heal at
``heal_round`` likewise, but never sooner than ``min_cut_seconds`` after the cut. Seconds count
from the moment the runner started the nodes. That schedule (:class:`PartitionSchedule`) is
shared with partitions on real interfaces (:mod:`gossipfl.scenario.netcut`), which cut at the IP
layer instead of in relays.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gossipfl.config import to_dict
from gossipfl.scenario.config import PartitionConfig, ScenarioConfig
from gossipfl.scenario.relay import LinkFaults, RelayFleet

log = logging.getLogger("gossipfl.runner")

STAT_KEYS = ("accepted", "refused", "failed", "resets", "bytes_to_target", "bytes_from_target",
             "bytes_dropped")


def relay_name(src: int, dst: int) -> str:
    """The relay node ``src`` dials node ``dst`` through."""
    return f"{src}->{dst}"


def routed_links(scenario: ScenarioConfig) -> dict[tuple[int, int], LinkFaults]:
    """Every ordered pair (src, dst) whose traffic goes through a relay, with its usual faults.

    ``[[links]]`` entries give their faults; a partition's cross links that no entry names are
    routed without faults (their relays only cut and heal).
    """
    pairs: dict[tuple[int, int], LinkFaults] = {}
    for link in scenario.links:
        for pair in link.pairs():
            pairs[pair] = link.faults()
    for partition in scenario.partitions:
        for pair in partition.cross_pairs(scenario.nodes):
            pairs.setdefault(pair, LinkFaults())
    return pairs


def cross_group_links(groups: tuple[tuple[int, ...], ...],
                      neighbours: dict[int, list[int]]) -> int:
    """How many neighbour links (unordered, as either end reports them) join two groups."""
    group_of = {n: g for g, members in enumerate(groups) for n in members}
    links = {
        (min(a, b), max(a, b)) for a, near in neighbours.items() for b in near
        if a in group_of and b in group_of and group_of[a] != group_of[b]
    }
    return len(links)


def totals(stats: dict[str, dict[str, Any]], names: set[str] | None = None) -> dict[str, int]:
    """Counters summed over the named relays (all of them by default)."""
    total: Counter[str] = Counter()
    for name, entry in stats.items():
        if names is None or name in names:
            total.update({k: int(entry[k]) for k in STAT_KEYS})
    return {k: total[k] for k in STAT_KEYS}


@dataclass
class PartitionState:
    config: PartitionConfig
    pairs: set[tuple[int, int]]
    cut: dict[str, Any] | None = None  # when: seconds, max_round, min_round
    healed: dict[str, Any] | None = None
    stats_at_cut: dict[str, int] = field(default_factory=dict)
    stats_at_heal: dict[str, int] = field(default_factory=dict)
    held: bool = False  # the heal was due by rounds or seconds before min_cut_seconds passed


class PartitionSchedule:
    """Cuts and heals a scenario's partitions when they are due (rounds from the nodes' metrics,
    seconds since the start); a subclass says how (:meth:`_cut`, :meth:`_heal`)."""

    def __init__(self, scenario: ScenarioConfig) -> None:
        self.scenario = scenario
        self.partitions = [PartitionState(p, p.cross_pairs(scenario.nodes))
                           for p in scenario.partitions]
        self.started: float | None = None
        self.events: list[dict[str, Any]] = []

    def step(self, rounds: list[int], now: float) -> list[dict[str, Any]]:
        """Cut and heal the partitions that are due; returns the events applied now."""
        if self.started is None:
            self.started = now
        elapsed = now - self.started
        when = {"seconds": round(elapsed, 3), "max_round": max(rounds, default=-1),
                "min_round": min(rounds, default=-1)}
        events = []
        for index, state in enumerate(self.partitions):
            config = state.config
            if state.cut is None and (by := config.cut_due(when)):
                self._cut(index, state)
                state.cut = {**when, "by": by}
                events.append({"partition": index, "event": "cut", **state.cut})
            elif state.cut is not None and state.healed is None and \
                    (by := config.heal_due(state.cut, when)):
                state.held = state.held or by == "held"
                if by == "held":
                    continue
                self._heal(index, state)
                state.healed = {**when, "by": "min_cut_seconds" if state.held else by}
                events.append({"partition": index, "event": "heal", **state.healed})
        for event in events:
            log.info("partition %d %s at %.1f s (rounds %d..%d)", event["partition"],
                     event["event"], event["seconds"], event["min_round"], event["max_round"])
        self.events.extend(events)
        return events

    def _cut(self, index: int, state: PartitionState) -> None:
        raise NotImplementedError

    def _heal(self, index: int, state: PartitionState) -> None:
        raise NotImplementedError

    def section(self) -> dict[str, Any]:
        """The ``network`` section of report.json (call before the network is torn down)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the schedule holds (nothing here)."""


class ScenarioNetwork(PartitionSchedule):
    """The relays of one scenario run: built before the nodes start, stepped while they run."""

    def __init__(self, scenario: ScenarioConfig) -> None:
        super().__init__(scenario)
        self.links = routed_links(scenario)
        self.fleet = RelayFleet(seed=scenario.seed)
        self.cut_by: dict[tuple[int, int], set[int]] = {}

    def build(self, ports: list[int]) -> dict[int, dict[int, int]]:
        """Start a relay for every routed pair; returns ``{src: {dst: relay port}}``."""
        self.fleet.start()
        routes: dict[int, dict[int, int]] = {}
        for (src, dst), faults in sorted(self.links.items()):
            port = self.fleet.add(relay_name(src, dst), ports[dst], faults)
            routes.setdefault(src, {})[dst] = port
        log.info("%d relays on loopback for %d routed links", len(self.links),
                 len(self.links) // 2)
        return routes

    def close(self) -> None:
        self.fleet.close()

    def _cut(self, index: int, state: PartitionState) -> None:
        state.stats_at_cut = totals(self.fleet.stats(), self._names(state.pairs))
        for pair in state.pairs:
            self.cut_by.setdefault(pair, set()).add(index)
        fault = LinkFaults(stall=True) if state.config.silent else LinkFaults(cut=True)
        self.fleet.set_faults(self._names(state.pairs), fault)

    def _heal(self, index: int, state: PartitionState) -> None:
        state.stats_at_heal = totals(self.fleet.stats(), self._names(state.pairs))
        for pair in sorted(state.pairs):
            holders = self.cut_by.get(pair, set())
            holders.discard(index)
            if not holders:  # no other partition still cuts this link
                self.fleet.set_faults([relay_name(*pair)], self.links[pair])

    @staticmethod
    def _names(pairs: set[tuple[int, int]]) -> set[str]:
        return {relay_name(*p) for p in pairs}

    def section(self) -> dict[str, Any]:
        """The ``network`` section of report.json (call while the fleet still runs)."""
        stats = self.fleet.stats()
        partitions = []
        for state in self.partitions:
            names = self._names(state.pairs)
            end = totals(stats, names)
            entry: dict[str, Any] = {
                **to_dict(state.config),
                "groups": [list(g) for g in state.config.resolved_groups(self.scenario.nodes)],
                "cut": state.cut, "healed": state.healed,
            }
            if state.cut is not None:
                during_end = state.stats_at_heal or end
                entry["while_cut"] = _delta(during_end, state.stats_at_cut)
            if state.healed is not None:
                entry["after_heal"] = _delta(end, state.stats_at_heal)
            partitions.append(entry)
        return {
            "relays": stats,
            "totals": totals(stats),
            "routed_links": len(self.links) // 2,
            "links": [to_dict(link) for link in self.scenario.links],
            "partitions": partitions,
            "events": self.events,
        }


def _delta(end: dict[str, int], start: dict[str, int]) -> dict[str, int]:
    return {k: end[k] - start.get(k, 0) for k in STAT_KEYS}


__all__ = ["PartitionSchedule", "PartitionState", "ScenarioNetwork", "cross_group_links",
           "relay_name", "routed_links", "totals"]
