"""Whole nodes of a simulated scenario, watched round by round: what the privacy audit, the cost
benchmark and tests read of them.

:class:`ObservedSimulation` is the simulator's :class:`~gossipfl.scenario.simulate.Simulation`:
every node the real :class:`~gossipfl.node.runtime.Node` running :meth:`Node.run` (membership,
links, its rounds, secure aggregation, DP, checkpoints) over the in-memory network under
``trio.testing.MockClock``. It composes nothing: the rounds are the node's own
(:mod:`gossipfl.node.round`). It only watches, at two points the node already has:

* its **offload**, the node's route for blocking work (training, evaluation, masking,
  unmasking, disk): how long each call took, and for a training call the model the round
  starts from and the ``x½`` it trains to;
* its **metrics record** (:meth:`Node.write_metrics`, written once per round, at its end): the
  public estimate ``x̂`` and update ``q`` it published that round, the model it ends the round
  with and the estimates it holds of its neighbours as of the round (:class:`RoundView`).

A node may be given a role of the caller's (:mod:`gossipfl.adversary.role`: an attacker that
keeps what it receives), and ``on_round`` is called at each node's end of round (to stop a node
there, or to ask the federation something while it runs).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing

from gossipfl.adversary.factory import make_role
from gossipfl.adversary.role import Role
from gossipfl.config import NodeConfig
from gossipfl.crypto.identity import KEY_FILE_MODE, Identity, load_or_create_identity
from gossipfl.gossip.memory import MemoryNetwork
from gossipfl.gossip.transport import Offload
from gossipfl.node.learner import LearnerPool, LocalLearner
from gossipfl.node.runtime import Node
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.runner import prepare_nodes
from gossipfl.scenario.simulate import BASE_PORT, Simulation

__all__ = ["ObservedNode", "ObservedSimulation", "Offloaded", "RoundView", "observe_scenario",
           "seeded_keys"]


@dataclass
class RoundView:
    """One node's round, as it ended.

    ``before`` and ``half`` (the model the round started from, and ``x½`` after local training)
    are None in a round without training; ``held`` (the estimates it holds of its neighbours,
    as of this round, by peer id) and the vectors are empty when vectors are not kept."""

    round: int
    record: dict[str, Any]
    before: np.ndarray | None = None
    half: np.ndarray | None = None
    estimate: np.ndarray | None = None
    update: np.ndarray | None = None
    model: np.ndarray | None = None
    held: dict[str, np.ndarray] = field(default_factory=dict)
    ended: float = 0.0  # time.perf_counter() when the record was written

    @property
    def step(self) -> np.ndarray:
        """``x½ − x``: the round's local training step."""
        if self.half is None or self.before is None:
            raise ValueError(f"round {self.round} did not train")
        return self.half - self.before


@dataclass(frozen=True)
class Offloaded:
    """One blocking call a node made through its offload: which function, when (perf_counter
    at its start) and for how long (wall seconds: the simulation runs it inline)."""

    index: int
    name: str
    started: float
    seconds: float


class ObservedNode(Node):
    """The node, handing each round's record to ``watcher`` once it is written."""

    watcher: Callable[[ObservedNode, dict[str, Any]], None] | None = None

    def write_metrics(self, record: dict[str, Any]) -> None:
        super().write_metrics(record)
        if self.watcher is not None:
            self.watcher(self, record)


@dataclass
class ObservedSimulation(Simulation):
    """A :class:`Simulation` whose nodes are watched (see the module docstring).

    ``roles``: roles by node index, instead of those the configs name. ``keep_vectors``: keep
    the vectors of each round (off for a benchmark of large models: only records and timings).
    ``on_round(sim, index, view)``: called at each node's end of round."""

    roles: Mapping[int, Role] = field(default_factory=dict)
    keep_vectors: bool = True
    on_round: Callable[[ObservedSimulation, int, RoundView], None] | None = None
    nodes: dict[int, ObservedNode] = field(default_factory=dict)  # the last one built per index
    views: dict[int, dict[int, RoundView]] = field(default_factory=dict)
    offloaded: list[Offloaded] = field(default_factory=list)
    _trained: dict[int, tuple[int, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def make_node(self, index: int, config: NodeConfig, identity: Identity,
                  learner: LocalLearner, offload: Offload) -> Node:
        role = self.roles.get(index) or make_role(config.adversary)

        async def watched(fn: Callable[..., Any], *args: Any) -> Any:
            def run(*args: Any) -> Any:
                start = time.perf_counter()
                out = fn(*args)
                self.offloaded.append(Offloaded(index, _name(fn), start,
                                                time.perf_counter() - start))
                if fn == learner.train and self.keep_vectors:  # (model, round, epochs, dp)
                    self._trained[index] = (int(args[1]), np.array(args[0], np.float32),
                                            np.array(out.vector, np.float32))
                return out

            return await offload(run, *args)

        node = ObservedNode(config, identity, learner, role, network=self.network,
                            offload=watched, signals=False)
        node.watcher = lambda node, record: self._round_ended(index, node, record)
        self.nodes[index] = node
        self.views.setdefault(index, {})
        return node

    def _round_ended(self, index: int, node: ObservedNode, record: dict[str, Any]) -> None:
        r = int(record["round"])
        view = RoundView(r, record, ended=time.perf_counter())
        if self.keep_vectors:
            trained = self._trained.pop(index, None)
            if trained is not None and trained[0] == r and record["phase"] == "train":
                _, view.before, view.half = trained
            view.estimate = node.own.vector.copy()
            view.update = None if node.own.last_delta is None else node.own.last_delta.copy()
            view.model = node.model.copy()
            view.held = {p: e.as_of(r).copy() for p, e in node.estimates.peers.items()}
        self.views[index][r] = view
        if self.on_round is not None:
            self.on_round(self, index, view)


def _name(fn: Callable[..., Any]) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def seeded_keys(folder: Path, count: int, seed: int) -> list[str]:
    """Node keys derived from ``seed`` where :func:`~gossipfl.scenario.runner.prepare_nodes`
    looks for them (``nodes/node-NN/node.key``); returns the peer ids. The topology is built
    over the peer ids, so these make it a function of the seed too. The keys are public (anyone
    can derive them): for simulated federations only."""
    peers = []
    for index in range(count):
        path = folder / "nodes" / f"node-{index:02d}" / "node.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            key = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=32,
                                  person=b"gossipfl-simkey").hexdigest()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
            with os.fdopen(fd, "w") as handle:
                handle.write(key + "\n")
        peers.append(str(load_or_create_identity(path)[0].peer_id))
    return peers


def observe_scenario(scenario: ScenarioConfig, folder: Path, *,
                     roles: Mapping[int, Role] | None = None, pool: LearnerPool | None = None,
                     keep_vectors: bool = True, key_seed: int | None = None,
                     on_round: Callable[[ObservedSimulation, int, RoundView], None] | None = None,
                     ) -> ObservedSimulation:
    """Simulate ``scenario`` in ``folder`` (empty, or holding only :func:`seeded_keys`, written
    here from ``key_seed`` when given), watched; returns the simulation once every node ended.

    Raises:
        RuntimeError: if the scenario's (virtual) timeout passed first, or a node failed.
    """
    if key_seed is not None:
        seeded_keys(folder, scenario.nodes, key_seed)
    entries = prepare_nodes(scenario, folder, ports=[BASE_PORT + i for i in range(scenario.nodes)])
    sim = ObservedSimulation(scenario, entries, MemoryNetwork.for_scenario(
        scenario, [e.peer_id for e in entries]), pool or LearnerPool(), roles=dict(roles or {}),
        keep_vectors=keep_vectors, on_round=on_round, epoch_seconds=0.0)
    if not trio.run(sim.run, clock=trio.testing.MockClock(autojump_threshold=0)):
        raise RuntimeError(f"scenario {scenario.name!r} did not finish within its timeout "
                           f"({scenario.timeout:.0f} virtual s)")
    failed = [e.index for e in entries if e.killed_at is None and e.exit_code not in (0, None)]
    if failed:
        raise RuntimeError(f"scenario {scenario.name!r}: node(s) {failed} failed (see the log)")
    return sim
