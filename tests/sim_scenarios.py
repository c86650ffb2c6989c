"""Small scenarios run on the simulator (``gossipfl.scenario.simulate``): every node in this
process over the in-memory network, in virtual time, with fixed identities and a fixed cost of
training, so that a run repeats whatever the machine's load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from gossipfl.node.learner import LearnerPool
from gossipfl.scenario.config import load_scenario
from gossipfl.scenario.simulate import simulate

EPOCH_SECONDS = 0.2
"""Virtual seconds one epoch of local training costs a node (a round: about this)."""

TINY = """
name = "{name}"
nodes = {nodes}
rounds = {rounds}
seed = 1
timeout = 120.0

[data]
dataset = "digits"
partition = "dirichlet"
alpha = 0.5

[model]
name = "logreg"

[train]
optimizer = "momentum"
learning_rate = 0.05
batch_size = 64
local_epochs = 1

[topology]
kind = "{topology}"
degree = {degree}

[protocol]
round_timeout = {round_timeout}
heartbeat_interval = 0.5
member_timeout = 5.0
consensus_tolerance = 1e-4
max_consensus_rounds = 30
"""


def scenario_text(*, name: str, nodes: int, rounds: int, topology: str = "full",
                  degree: int = 3, round_timeout: float = 3.0, protocol: str = "",
                  extra: str = "") -> str:
    """A tiny scenario (digits, logistic regression, one epoch a round): ``protocol`` lines
    are added to its ``[protocol]`` table, ``extra`` (faults, joins, ...) after it."""
    text = TINY.format(name=name, nodes=nodes, rounds=rounds, topology=topology, degree=degree,
                       round_timeout=round_timeout)
    return text + protocol + "\n" + extra


def write_identities(out: Path, nodes: int) -> None:
    """A fixed key per node (where a run keeps it, mode 0600): the same peer ids, hence the
    same topology, every run."""
    for index in range(nodes):
        folder = out / "nodes" / f"node-{index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        seed = hashlib.sha256(f"gossipfl simulated node {index}".encode()).hexdigest()
        fd = os.open(folder / "node.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(seed + "\n")


def simulated(tmp_path: Path, text: str, pool: LearnerPool, *,
              epoch_seconds: float = EPOCH_SECONDS) -> dict[str, Any]:
    """Simulate the scenario ``text`` under ``tmp_path / "out"``; returns its report."""
    path = tmp_path / "scenario.toml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    scenario = load_scenario(path)
    out = tmp_path / "out"
    write_identities(out, scenario.nodes)
    report = simulate(scenario, out, centralised=False, epoch_seconds=epoch_seconds, pool=pool)
    assert report["simulated"] is True
    assert not report["timed_out"], "the simulated scenario did not finish"
    return report


def node_dir(tmp_path: Path, index: int) -> Path:
    return tmp_path / "out" / "nodes" / f"node-{index:02d}"


def node_log(tmp_path: Path, index: int) -> str:
    return (node_dir(tmp_path, index) / "node.log").read_text()


def metrics(tmp_path: Path, index: int) -> list[dict[str, Any]]:
    lines = (node_dir(tmp_path, index) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]
