"""``gossipfl simulate``: every node of a scenario in one process, over the in-memory transport.

Each node is the real :class:`~gossipfl.node.runtime.Node`, running :meth:`Node.run` as a node
process does (membership, links, rounds, secure aggregation, DP, checkpoints, its files), but
over a :class:`~gossipfl.gossip.memory.MemoryNetwork` instead of libp2p, under
``trio.testing.MockClock``: time is virtual and jumps whenever every node waits, so round
timeouts cost nothing and a run does not depend on the machine's load. Blocking work
(training, evaluation, disk) runs inline and datasets, models and jitted trainers are shared
between the nodes (:class:`LearnerPool`). Local training then costs a node virtual time, as it
costs a node process real time (so that a late joiner, a paused or restarted node comes back to
a federation still at work): with ``epoch_seconds``, that many virtual seconds per epoch of
local work (a run then repeats exactly, whatever the machine); by default, the wall time the
training took here. A ``[[slow]]`` node's factor applies to that cost.

The scenario's faults become the network's and the simulator's: ``kill``/``terminate``
cancel the node (its final writes run, as after SIGTERM) and make it unreachable;
``restart`` starts it again from its folder (checkpoint and all) ``down_seconds`` later;
``pause`` cuts it off and holds its blocking work for ``down_seconds``; partitions reset (or,
``silent``, stall) the links across the cut; link latency delays each write. A fault, a late
join or a partition due at a round is applied as soon as a node has written that round's
metrics (at its next blocking call), not at the next look of a poll: rounds can take no
virtual time at all. The report is the runner's (:func:`gossipfl.scenario.report.build_report`),
marked ``simulated``; its ``summary.max_peak_rss_bytes`` is then this one process's peak RSS,
and a partition's ``while_cut``/``after_heal`` count the network's stream events across it
(:meth:`~gossipfl.gossip.memory.MemoryNetwork.totals`) as the relays' counters do in a run.
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from gossipfl.config import NodeConfig, to_dict
from gossipfl.crypto.identity import Identity, load_or_create_identity
from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.memory import MemoryNetwork
from gossipfl.gossip.transport import Offload
from gossipfl.scenario.batcher import Batcher
from gossipfl.scenario.churn import Churn
from gossipfl.scenario.config import FaultConfig, JoinConfig, ScenarioConfig, load_scenario
from gossipfl.scenario.process import NodeProcess
from gossipfl.scenario.report import build_report, show_report
from gossipfl.scenario.runner import prepare_nodes, resolve_faults, resolve_joins, run_folder

if TYPE_CHECKING:
    from gossipfl.node.learner import LocalLearner
    from gossipfl.node.runtime import Node

log = logging.getLogger("gossipfl.simulate")

GC_THRESHOLDS = (100_000, 50, 100)  # the collector's, while a simulation runs (see quiet_gc)
POLL_SECONDS = 0.2  # virtual seconds between two looks at the nodes' rounds
BASE_PORT = 20000  # the nodes' (never bound) addresses: 127.0.0.1, this port + index

_current: contextvars.ContextVar[int | None] = contextvars.ContextVar("gossipfl_node",
                                                                      default=None)


@contextlib.contextmanager
def quiet_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> Iterator[None]:
    """Collect cyclic garbage less often while the block runs: what exists on entry (modules,
    datasets, compiled trainers) is frozen out of the collector's view, and a young collection
    waits for ``thresholds[0]`` allocations instead of 700. With hundreds of nodes in one
    process the default thresholds spent about a fifth of a simulation's CPU time in the
    collector (128 nodes: 12.7 of 67.7 CPU s). The thresholds in force before are given back
    on exit, and the frozen objects too, unless the caller had frozen some itself: Python has
    one permanent generation, so unfreezing would hand the collector the caller's as well (a
    test run that freezes its modules once would then traverse them again at every
    simulation's end); what this block froze then stays frozen with them."""
    saved = gc.get_threshold()
    outer = gc.get_freeze_count() > 0
    gc.freeze()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*saved)
        if not outer:
            gc.unfreeze()


class NodeLogs(logging.Handler):
    """Routes each log record to the file of the node whose task emitted it (``node.log`` in
    its folder, as a node process writes it); the simulator's own lines go to ``simulate.log``."""

    def __init__(self, out: Path, folders: dict[int, Path]) -> None:
        super().__init__()
        self.files = {index: open(folder / "node.log", "a")  # noqa: SIM115 (closed in close)
                      for index, folder in folders.items()}
        self.own = open(out / "simulate.log", "a")  # noqa: SIM115
        self.names = {index: f"node {index}" for index in folders}

    def emit(self, record: logging.LogRecord) -> None:
        index = _current.get()
        handle = self.files.get(index, self.own) if index is not None else self.own
        name = self.names.get(index, "simulate") if index is not None else "simulate"
        try:
            handle.write(f"{record.levelname} [{name}] {record.name}: {record.getMessage()}\n")
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        for handle in [*self.files.values(), self.own]:
            handle.close()
        super().close()


@dataclass
class Simulation:
    """The nodes of one simulated scenario and the faults still to apply.

    ``epoch_seconds``: the virtual seconds one epoch of local training costs a node (None:
    the wall time its training took here)."""

    scenario: ScenarioConfig
    entries: list[NodeProcess]
    network: MemoryNetwork
    pool: Any
    epoch_seconds: float | None = None
    live: dict[int, Any] = field(default_factory=dict)  # index → running Node
    launched: set[int] = field(default_factory=set)  # started and not ended yet
    scopes: dict[int, trio.CancelScope] = field(default_factory=dict)
    held: dict[int, trio.Event] = field(default_factory=dict)  # paused: work waits on it
    partition_events: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    nursery: trio.Nursery | None = None  # where the nodes run (set by :meth:`run`)
    pending: dict[int, list[FaultConfig]] = field(default_factory=dict)  # by node
    joins: list[JoinConfig] = field(default_factory=list)
    cuts: list[set[tuple[str, str]] | None] = field(default_factory=list)  # by partition
    cut_totals: dict[tuple[int, str], dict[str, int]] = field(default_factory=dict)
    held_heals: set[int] = field(default_factory=set)  # heals min_cut_seconds held back
    furthest: int = -1  # the furthest round any node has finished
    batcher: Batcher = field(init=False)  # with the pool's vectorised steps
    churn: Churn | None = None  # the scenario's [churn], once the run has started

    def __post_init__(self) -> None:
        self.batcher = Batcher(steps=self.pool.vectorised)
        for fault in resolve_faults(self.scenario):
            self.pending.setdefault(fault.node, []).append(fault)
        self.joins = resolve_joins(self.scenario)
        for join in self.joins:
            self.entries[join.node].join_round = join.at_round
        self.cuts = [None] * len(self.scenario.partitions)

    def peer(self, index: int) -> str:
        return self.entries[index].peer_id

    async def offload(self, index: int, fn: Callable[..., Any], *args: Any) -> Any:
        """A node's blocking work, inline; held while the node is paused. Training then costs
        the node its virtual time (:attr:`epoch_seconds`)."""
        from gossipfl.node.learner import TrainResult

        self.progress(index)  # the rounds it finished may make faults and joins due
        while index in self.held:
            await self.held[index].wait()
        result = await self.batcher.call(fn, *args)  # training, evaluation: batched
        if isinstance(result, TrainResult):
            cost = result.seconds if self.epoch_seconds is None \
                else self.epoch_seconds * result.epochs
            result = replace(result, seconds=cost)
            await trio.sleep(cost)
        return result

    def progress(self, index: int) -> None:
        """Note the rounds node ``index`` has finished and apply its faults that are due."""
        entry = self.note(index)
        for fault in list(self.pending.get(index, ())):
            if index in self.live and entry.last_round >= fault.at_round:
                self.pending[index].remove(fault)
                self.apply(fault, trio.current_time())

    def note(self, index: int) -> NodeProcess:
        """Note the rounds node ``index`` has finished (its metrics, as the runner reads them)
        and apply what the federation's progress makes due: late joins, partitions by round."""
        node, entry = self.live.get(index), self.entries[index]
        if node is not None and node.history:
            entry.last_round = max(entry.last_round, node.history[-1]["round"])
        if entry.last_round > self.furthest:
            self.furthest = entry.last_round
            self.start_joins()
            self.step_partitions(trio.current_time())
        return entry

    def apply(self, fault: FaultConfig, now: float) -> None:
        target = self.entries[fault.node]
        if fault.kind == "pause":
            self.network.kill(target.peer_id)
            self.held[fault.node] = trio.Event()
            target.resume_at = now + fault.down_seconds
            target.events.append(f"paused after round {target.last_round}")
            return
        target.killed_at = now if fault.kind != "terminate" else None
        target.killed_after_round = target.last_round
        if fault.kind == "restart":
            target.restart_at = now + fault.down_seconds
        name = {"terminate": "stopped"}.get(fault.kind, "killed")
        target.events.append(f"{name} after round {target.last_round}")
        target.exit_code = -9 if fault.kind != "terminate" else None
        self.stop(fault.node)

    def start_joins(self) -> None:
        for join in list(self.joins):
            if self.furthest >= join.at_round and self.nursery is not None:
                self.joins.remove(join)
                self.entries[join.node].events.append(
                    f"joined late (federation at round {self.furthest})")
                self.launch(join.node)

    def step_timers(self, now: float) -> None:
        """Resume paused nodes and restart killed ones whose time has come."""
        for entry in self.entries:
            if entry.resume_at is not None and now >= entry.resume_at:
                entry.resume_at = None
                self.network.revive(entry.peer_id)
                self.held.pop(entry.index).set()
                entry.events.append(f"resumed (paused after round {entry.last_round})")
            if entry.restart_at is not None and now >= entry.restart_at \
                    and entry.index not in self.launched:
                entry.restart_at, entry.killed_at, entry.exit_code = None, None, None
                entry.restarts += 1
                entry.events.append(f"restarted (after round {entry.killed_after_round})")
                self.network.revive(entry.peer_id)
                self.launch(entry.index)

    def launch(self, index: int) -> None:
        assert self.nursery is not None
        self.launched.add(index)
        self.scopes[index] = trio.CancelScope()  # stop() may come before the task runs
        self.nursery.start_soon(self.run_node, index, self.scopes[index])

    def step_partitions(self, now: float) -> None:
        """Cut and heal the scenario's partitions that are due (by the furthest node's round,
        or the virtual seconds since the start)."""
        rounds = [e.last_round for e in self.entries if e.index in self.live]
        when = {"seconds": round(now - self.started, 3), "max_round": self.furthest,
                "min_round": min(rounds, default=-1)}
        for index, config in enumerate(self.scenario.partitions):
            if self.cuts[index] is None and (by := config.cut_due(when)):
                pairs = {(self.peer(a), self.peer(b))
                         for a, b in config.cross_pairs(len(self.entries))}
                self.cut_totals[(index, "cut")] = self.network.totals(pairs)
                self.network.cut(pairs, silent=config.silent)
                self.cuts[index] = pairs
                self.partition_events.append({"partition": index, "event": "cut", **when,
                                              "by": by})
            elif self.cuts[index] and (index, "heal") not in self.cut_totals and \
                    (by := config.heal_due(self.cut_at(index), when)):
                if by == "held":
                    self.held_heals.add(index)
                    continue
                by = "min_cut_seconds" if index in self.held_heals else by
                self.cut_totals[(index, "heal")] = self.network.totals(self.cuts[index])
                self.network.restore(self.cuts[index])
                self.partition_events.append({"partition": index, "event": "heal", **when,
                                              "by": by})

    def cut_at(self, index: int) -> dict[str, Any]:
        """When partition ``index`` was cut (its event)."""
        return next(e for e in self.partition_events
                    if e["partition"] == index and e["event"] == "cut")

    def make_node(self, index: int, config: NodeConfig, identity: Identity,
                  learner: LocalLearner, offload: Offload) -> Node:
        """The node of ``index``, playing the role its config names (a subclass may give it
        another, or watch it: :mod:`gossipfl.scenario.observed`)."""
        from gossipfl.adversary.factory import make_role
        from gossipfl.node.runtime import Node

        return Node(config, identity, learner, make_role(config.adversary),
                    network=self.network, offload=offload, signals=False, durable=False)

    async def run_node(self, index: int, scope: trio.CancelScope) -> None:
        """One node, from its folder, to its end (or until the simulator stops it)."""
        from gossipfl.node.learner import LocalLearner
        from gossipfl.node.runtime import NodeError

        entry = self.entries[index]
        _current.set(index)
        identity, _ = load_or_create_identity(entry.config.key_file)
        learner = LocalLearner(entry.config, self.pool)

        async def offload(fn: Callable[..., Any], *args: Any) -> Any:
            return await self.offload(index, fn, *args)

        node = self.make_node(index, entry.config, identity, learner, offload)
        self.live[index] = node
        status = NodeStatus.STOPPED
        with scope:
            try:
                status = await node.run()
            except* NodeError as group:
                for error in _leaves(group):
                    log.error("%s", error)
                status = NodeStatus.FAILED
        self.note(index)
        self.live.pop(index, None)
        self.launched.discard(index)
        if entry.exit_code is None or entry.killed_at is None:
            entry.exit_code = 2 if status is NodeStatus.FAILED else 0

    def stop(self, index: int) -> None:
        self.network.kill(self.peer(index))
        if index in self.scopes:
            self.scopes[index].cancel()

    async def run(self) -> bool:
        """Run every node (late joiners when due) and apply the faults; returns once every
        node has ended (True) or the scenario's timeout has passed (False)."""
        self.started = trio.current_time()
        if self.scenario.churn is not None:
            self.churn = Churn(self.scenario, self.started)
        late = {j.node for j in self.scenario.joins}
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self.batcher.run)
            for entry in self.entries:
                if entry.index not in late:
                    self.launch(entry.index)
            finished = await watch(self)
            for index in list(self.launched):
                self.stop(index)
            nursery.cancel_scope.cancel()  # the batcher
        self.nursery = None
        return finished


async def watch(sim: Simulation) -> bool:
    """Look at the nodes every :data:`POLL_SECONDS` (virtual): faults, joins and partitions
    by round that no node's blocking call applied yet, resumes, restarts and partitions by
    time; returns once every node has ended (True) or the scenario's timeout has passed."""
    deadline = trio.current_time() + sim.scenario.timeout
    while trio.current_time() < deadline:
        for index in list(sim.live):
            sim.progress(index)
        now = trio.current_time()
        sim.start_joins()
        sim.step_timers(now)
        sim.step_partitions(now)
        if sim.churn is not None:
            sim.churn.step(now, sim.entries, sim.launched, sim.furthest,
                           lambda _, fault: sim.apply(fault, trio.current_time()))
        if not sim.joins and not sim.launched and \
                all(e.restart_at is None for e in sim.entries):
            return True
        await trio.sleep(POLL_SECONDS)
    return False


def _leaves(error: BaseException) -> Iterator[BaseException]:
    """The exceptions an exception group holds, however nested."""
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


def network_section(sim: Simulation) -> dict[str, Any]:
    partitions = []
    end = sim.network.totals  # counters now, over the given pairs
    for index, config in enumerate(sim.scenario.partitions):
        events = {e["event"]: {k: v for k, v in e.items() if k not in ("partition", "event")}
                  for e in sim.partition_events if e["partition"] == index}
        entry = {**to_dict(config),
                 "groups": [list(g) for g in config.resolved_groups(len(sim.entries))],
                 "cut": events.get("cut"), "healed": events.get("heal")}
        pairs = sim.cuts[index]
        if pairs is not None:
            at_cut, at_heal = sim.cut_totals[(index, "cut")], sim.cut_totals.get((index, "heal"))
            entry["while_cut"] = _delta(at_heal or end(pairs), at_cut)
            if at_heal is not None:
                entry["after_heal"] = _delta(end(pairs), at_heal)
        partitions.append(entry)
    return {"simulated": True, "links": [to_dict(link) for link in sim.scenario.links],
            "totals": end(), "partitions": partitions, "events": sim.partition_events}


def _delta(end: dict[str, int], start: dict[str, int]) -> dict[str, int]:
    return {k: end[k] - start.get(k, 0) for k in end}


def simulate(scenario: ScenarioConfig, out_dir: Path, *, centralised: bool = True,
             epoch_seconds: float | None = None, pool: Any = None) -> dict[str, Any]:
    """Simulate ``scenario`` with its nodes' folders under ``out_dir`` (an identity already
    in a node's folder is used, as a run's would be); returns the report, also written to
    ``report.json``. ``epoch_seconds``: see :class:`Simulation`; ``pool``: a
    :class:`~gossipfl.node.learner.LearnerPool` to share datasets and compiled trainers with
    other simulations (a new one by default)."""
    from gossipfl.node.learner import LearnerPool

    start = time.monotonic()
    entries = prepare_nodes(scenario, out_dir,
                            ports=[BASE_PORT + i for i in range(scenario.nodes)])
    if pool is None:  # a generated data set kept in the machine's cache folder
        from gossipfl.node.compile_cache import cache_folder

        pool = LearnerPool(data_cache=cache_folder(None))
    handler = NodeLogs(out_dir, {e.index: e.out for e in entries})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    clock = trio.testing.MockClock(autojump_threshold=0)
    # the nodes and their network are made inside the block, so that they are never frozen:
    # the collection that frees them (1,000 nodes: GBs) before the report reads their files
    # then looks at the simulation's objects only, not at what existed before it
    with quiet_gc():
        network = MemoryNetwork.for_scenario(scenario, [e.peer_id for e in entries])
        sim = Simulation(scenario, entries, network, pool, epoch_seconds=epoch_seconds)
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO)
        for noisy in ("jax", "absl"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            finished = trio.run(sim.run, clock=clock)
        finally:
            root.handlers[:], _ = saved
            root.setLevel(saved[1])
            handler.close()
        wall = time.monotonic() - start
        network_figures = network_section(sim) if scenario.partitions else None
        churn = sim.churn.section() if sim.churn is not None else None
        del sim, network  # every node's state, before the report reads their files
        gc.collect()
    report = build_report(scenario, entries, wall_seconds=wall, centralised=centralised,
                          timed_out=not finished, network=network_figures)
    report["simulated"] = True
    if churn is not None:  # no RSS series: every node is in this one process
        report["churn"] = churn
        report["summary"]["churn_events"] = len(churn["events"])
    report["virtual_seconds"] = clock.current_time()
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    return report


def simulate_scenario(path: str | Path, *, out: str | Path | None = None, quiet: bool = False,
                      centralised: bool = True, epoch_seconds: float | None = None,
                      html: bool = True) -> int:
    """Simulate a scenario file; returns 0 when every node that was not killed finished
    (``html``: write ``report.html`` too)."""
    scenario = load_scenario(path)
    if scenario.metrics_port:
        print("gossipfl simulate: metrics_port is ignored (nodes in one process serve no "
              "metrics; gossipfl run does)", file=sys.stderr)
    out_dir = run_folder(path, scenario, out, "sim")
    report = simulate(scenario, out_dir, centralised=centralised, epoch_seconds=epoch_seconds)
    show_report(report, out_dir, quiet=quiet, html=html)
    if report["timed_out"]:
        print(f"gossipfl simulate: scenario timed out after {scenario.timeout:.0f} virtual s",
              file=sys.stderr)
    survivors_ok = all(n["exit_code"] == 0 for n in report["nodes"] if n["status"] != "killed")
    return 0 if not report["timed_out"] and survivors_ok else 1


__all__ = ["NodeLogs", "Simulation", "quiet_gc", "simulate", "simulate_scenario"]
