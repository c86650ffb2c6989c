"""``gossipfl simulate``: every node of a scenario in one process, over the in-memory transport.

Each node is the real :class:`~gossipfl.node.runtime.Node`, running :meth:`Node.run` as a node
process does (membership, links, rounds, secure aggregation, DP, checkpoints, its files), but
over a :class:`~gossipfl.gossip.memory.MemoryNetwork` instead of libp2p, under
``trio.testing.MockClock``: time is virtual and jumps whenever every node waits, so round
timeouts cost nothing and a run does not depend on the machine's load. Blocking work
(training, evaluation, disk) runs inline (no virtual time passes while it runs) and datasets,
models and jitted trainers are shared between the nodes (:class:`LearnerPool`).

The scenario's faults become the network's and the simulator's: ``kill``/``terminate``
cancel the node (its final writes run, as after SIGTERM) and make it unreachable;
``restart`` starts it again from its folder (checkpoint and all) ``down_seconds`` later;
``pause`` cuts it off and holds its blocking work for ``down_seconds``; partitions reset (or,
``silent``, stall) the links across the cut; link latency delays each write. The report is the
runner's (:func:`gossipfl.scenario.report.build_report`), marked ``simulated``; its
``summary.max_peak_rss_bytes`` is then this one process's peak RSS.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio
import trio.testing

from gossipfl.config import ConfigError, NodeConfig, to_dict
from gossipfl.crypto.identity import Identity, load_or_create_identity
from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.memory import MemoryNetwork
from gossipfl.gossip.transport import Offload
from gossipfl.scenario.batcher import Batcher
from gossipfl.scenario.config import ScenarioConfig, load_scenario
from gossipfl.scenario.process import NodeProcess
from gossipfl.scenario.report import build_report, print_summary
from gossipfl.scenario.runner import prepare_nodes, resolve_faults, resolve_joins

if TYPE_CHECKING:
    from gossipfl.node.learner import LocalLearner
    from gossipfl.node.runtime import Node

log = logging.getLogger("gossipfl.simulate")

POLL_SECONDS = 0.2  # virtual seconds between two looks at the nodes' rounds
BASE_PORT = 20000  # the nodes' (never bound) addresses: 127.0.0.1, this port + index

_current: contextvars.ContextVar[int | None] = contextvars.ContextVar("gossipfl_node",
                                                                      default=None)


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
    """The nodes of one simulated scenario and the faults still to apply."""

    scenario: ScenarioConfig
    entries: list[NodeProcess]
    network: MemoryNetwork
    pool: Any
    live: dict[int, Any] = field(default_factory=dict)  # index → running Node
    running: set[int] = field(default_factory=set)  # started and not ended yet
    scopes: dict[int, trio.CancelScope] = field(default_factory=dict)
    held: dict[int, trio.Event] = field(default_factory=dict)  # paused: work waits on it
    partition_events: list[dict[str, Any]] = field(default_factory=list)
    started: float = 0.0
    batcher: Batcher = field(default_factory=lambda: Batcher())

    def peer(self, index: int) -> str:
        return self.entries[index].peer_id

    def federation_round(self) -> int:
        return max((e.last_round for e in self.entries if e.index in self.live), default=-1)

    async def offload(self, index: int, fn: Callable[..., Any], *args: Any) -> Any:
        """A node's blocking work: training (without DP) and evaluation batched with the other
        nodes' (:class:`Batcher`), the rest inline; held while the node is paused."""
        while index in self.held:
            await self.held[index].wait()
        return await self.batcher.call(fn, *args)

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
                for error in group.exceptions:
                    log.error("%s", error)
                status = NodeStatus.FAILED
        self.live.pop(index, None)
        self.running.discard(index)
        entry.last_round = max(entry.last_round, node.round)
        if entry.exit_code is None or entry.killed_at is None:
            entry.exit_code = 2 if status is NodeStatus.FAILED else 0

    def start(self, nursery: trio.Nursery, index: int) -> None:
        self.running.add(index)
        self.scopes[index] = trio.CancelScope()  # stop() may come before the task runs
        nursery.start_soon(self.run_node, index, self.scopes[index])

    def stop(self, index: int) -> None:
        self.network.kill(self.peer(index))
        if index in self.scopes:
            self.scopes[index].cancel()

    async def run(self) -> bool:
        """Every node (late joiners when due) to its end, faults applied; True unless the
        scenario's timeout passed first. Run it under ``trio.testing.MockClock``."""
        self.started = trio.current_time()
        late = {j.node for j in self.scenario.joins}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.batcher.run)
            for entry in self.entries:
                if entry.index not in late:
                    self.start(nursery, entry.index)
            finished = await watch(self, nursery)
            for index in list(self.running):
                self.stop(index)
            nursery.cancel_scope.cancel()  # the batcher
        return finished


async def watch(sim: Simulation, nursery: trio.Nursery) -> bool:
    """Apply faults, joins and partitions as the nodes' rounds (or virtual seconds) come;
    returns once every node has ended (True) or the scenario's timeout has passed (False)."""
    scenario, entries = sim.scenario, sim.entries
    pending, joins = resolve_faults(scenario), resolve_joins(scenario)
    for join in joins:
        entries[join.node].join_round = join.at_round
    down = {f.node: f.down_seconds for f in scenario.faults}
    cuts = [None] * len(scenario.partitions)  # the peer pairs each partition cut
    deadline = trio.current_time() + scenario.timeout
    while trio.current_time() < deadline:
        now = trio.current_time()
        for index, node in sim.live.items():
            entries[index].last_round = max(entries[index].last_round, node.round)
        for fault in list(pending):
            target = entries[fault.node]
            if fault.node in sim.live and target.last_round >= fault.at_round:
                pending.remove(fault)
                if fault.kind == "pause":
                    sim.network.kill(target.peer_id)
                    sim.held[fault.node] = trio.Event()
                    target.resume_at = now + fault.down_seconds
                    target.events.append(f"paused after round {target.last_round}")
                    continue
                target.killed_at = now if fault.kind != "terminate" else None
                target.killed_after_round = target.last_round
                if fault.kind == "restart":
                    target.restart_at = now + down[fault.node]
                name = {"terminate": "stopped"}.get(fault.kind, "killed")
                target.events.append(f"{name} after round {target.last_round}")
                target.exit_code = -9 if fault.kind != "terminate" else None
                sim.stop(fault.node)
        for join in list(joins):
            if sim.federation_round() >= join.at_round:
                joins.remove(join)
                entries[join.node].events.append(
                    f"joined late (federation at round {sim.federation_round()})")
                sim.start(nursery, join.node)
        for entry in entries:
            if entry.resume_at is not None and now >= entry.resume_at:
                entry.resume_at = None
                sim.network.revive(entry.peer_id)
                sim.held.pop(entry.index).set()
                entry.events.append(f"resumed (paused after round {entry.last_round})")
            if entry.restart_at is not None and now >= entry.restart_at \
                    and entry.index not in sim.running:
                entry.restart_at, entry.killed_at, entry.exit_code = None, None, None
                entry.restarts += 1
                entry.events.append(f"restarted (after round {entry.killed_after_round})")
                sim.network.revive(entry.peer_id)
                sim.start(nursery, entry.index)
        step_partitions(sim, cuts, now)
        if not joins and not sim.running and all(e.restart_at is None for e in entries):
            return True
        await trio.sleep(POLL_SECONDS)
    return False


def step_partitions(sim: Simulation, cuts: list[Any], now: float) -> None:
    """Cut and heal the scenario's partitions that are due (by the furthest node's round, or
    the virtual seconds since the start)."""
    rounds = [e.last_round for e in sim.entries if e.index in sim.live]
    when = {"seconds": round(now - sim.started, 3), "max_round": max(rounds, default=-1),
            "min_round": min(rounds, default=-1)}
    for index, config in enumerate(sim.scenario.partitions):
        if cuts[index] is None and _due(config.at_round, config.at_seconds, when):
            pairs = {(sim.peer(a), sim.peer(b)) for a, b in config.cross_pairs(len(sim.entries))}
            sim.network.cut(pairs, silent=config.silent)
            cuts[index] = pairs
            sim.partition_events.append({"partition": index, "event": "cut", **when})
        elif cuts[index] and _due(config.heal_round, config.heal_seconds, when) and \
                not any(e["partition"] == index and e["event"] == "heal"
                        for e in sim.partition_events):
            sim.network.restore(cuts[index])
            sim.partition_events.append({"partition": index, "event": "heal", **when})


def _due(at_round: int | None, at_seconds: float | None, when: dict[str, Any]) -> bool:
    if at_round is not None:
        return bool(when["max_round"] >= at_round)
    return at_seconds is not None and bool(when["seconds"] >= at_seconds)


def network_section(sim: Simulation) -> dict[str, Any]:
    partitions = []
    for index, config in enumerate(sim.scenario.partitions):
        events = {e["event"]: {k: v for k, v in e.items() if k not in ("partition", "event")}
                  for e in sim.partition_events if e["partition"] == index}
        partitions.append({**to_dict(config),
                           "groups": [list(g) for g in config.resolved_groups(len(sim.entries))],
                           "cut": events.get("cut"), "healed": events.get("heal")})
    return {"simulated": True, "links": [to_dict(link) for link in sim.scenario.links],
            "partitions": partitions, "events": sim.partition_events}


def simulate_scenario(path: str | Path, *, out: str | Path | None = None, quiet: bool = False,
                      centralised: bool = True) -> int:
    """Simulate a scenario file; returns 0 when every node that was not killed finished."""
    from gossipfl.node.learner import LearnerPool

    scenario = load_scenario(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_dir = Path(out) if out else Path("runs") / f"{scenario.name}-sim-{stamp}"
    if (out_dir / "nodes").exists():
        raise ConfigError(f"{out_dir} already holds a run; choose another --out (or remove it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scenario.toml").write_text(Path(path).read_text())
    start = time.monotonic()
    entries = prepare_nodes(scenario, out_dir,
                            ports=[BASE_PORT + i for i in range(scenario.nodes)])
    network = MemoryNetwork.for_scenario(scenario, [e.peer_id for e in entries])
    sim = Simulation(scenario, entries, network, LearnerPool())
    handler = NodeLogs(out_dir, {e.index: e.out for e in entries})
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for noisy in ("jax", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    clock = trio.testing.MockClock(autojump_threshold=0)
    try:
        finished = trio.run(sim.run, clock=clock)
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        handler.close()
    wall = time.monotonic() - start
    report = build_report(scenario, entries, wall_seconds=wall, centralised=centralised,
                          timed_out=not finished,
                          network=network_section(sim) if scenario.partitions else None)
    report["simulated"] = True
    report["virtual_seconds"] = clock.current_time()
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    if not quiet:
        print_summary(report)
    print(f"report: {out_dir / 'report.json'}")
    if not finished:
        print(f"gossipfl simulate: scenario timed out after {scenario.timeout:.0f} virtual s",
              file=sys.stderr)
    survivors_ok = all(e.exit_code == 0 for e in entries if e.killed_at is None)
    return 0 if finished and survivors_ok else 1


__all__ = ["NodeLogs", "Simulation", "simulate_scenario"]
