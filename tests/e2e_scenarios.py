"""Scenario text and a runner shared by the end-to-end test files."""

from __future__ import annotations

import json
from pathlib import Path

from gossipfl.scenario.runner import run_scenario

BASE = """
name = "{name}"
nodes = {nodes}
rounds = {rounds}
seed = 1
timeout = 240.0

[data]
dataset = "digits"
partition = "dirichlet"
alpha = 0.5

[model]
name = "mlp"
hidden = [32]

[train]
optimizer = "momentum"
learning_rate = 0.05
local_epochs = 2

[topology]
kind = "{topology}"
degree = {degree}

[protocol]
round_timeout = {round_timeout}
heartbeat_interval = 0.5
member_timeout = 5.0
consensus_tolerance = 1e-4
max_consensus_rounds = 60
"""


def run_text(tmp_path: Path, text: str, *, spawn: bool = False) -> tuple[int, dict]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(text)
    out = tmp_path / "out"
    code = run_scenario(scenario, out=out, quiet=True, centralised=False, spawn=spawn)
    return code, json.loads((out / "report.json").read_text())
