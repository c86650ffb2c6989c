"""What the runner does at each look at the nodes for a soak, besides the scenario's own
faults: the churn's events (:mod:`gossipfl.scenario.churn`) and the RSS samples
(:mod:`gossipfl.scenario.rss`); and what it adds to the report from them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gossipfl.scenario.churn import Churn
from gossipfl.scenario.rss import RssSampler, add_rss

if TYPE_CHECKING:
    from gossipfl.scenario.config import FaultConfig, ScenarioConfig
    from gossipfl.scenario.process import NodeProcess


class Soak:
    """``apply(entry, fault)``: take a node down as a ``[[faults]]`` entry would (the runner's
    :func:`~gossipfl.scenario.runner.apply_fault`, after it readied the restart)."""

    def __init__(self, scenario: ScenarioConfig, started: float,
                 apply: Callable[[NodeProcess, FaultConfig], None],
                 sampler: RssSampler | None = None) -> None:
        self.churn = Churn(scenario, started) if scenario.churn is not None else None
        self.rss = sampler or RssSampler(scenario.rss_sample_seconds, started)
        self.apply = apply

    def step(self, nodes: list[NodeProcess], now: float) -> None:
        running = {n.index for n in nodes if n.process is not None and n.exit_code is None}
        if self.churn is not None:
            furthest = max((n.last_round for n in nodes if n.process is not None), default=-1)
            self.churn.step(now, nodes, running, furthest, self.apply)
        self.rss.step(now, [(n.index, n.process.pid) for n in nodes
                            if n.index in running and n.process is not None])

    def add_to(self, report: dict[str, Any]) -> None:
        """The per-node RSS series and growth, and the churn's events, into ``report``."""
        add_rss(report, self.rss)
        if self.churn is not None:
            report["churn"] = self.churn.section()
            report["summary"]["churn_events"] = len(report["churn"]["events"])


__all__ = ["Soak"]
