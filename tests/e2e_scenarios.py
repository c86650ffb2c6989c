"""Scenario text and a runner shared by the end-to-end test files.

How the end-to-end tests stay independent of this machine's speed: a fault is not timed to
land while the federation is "still running" by giving it many rounds; it is tied to what the
protocol guarantees (gossipfl/node/termination.py, settle.py):

* a node whose neighbours are all missing holds its round until one is back (a star around
  the node that fails: the others hold for it);
* a node cannot finish while a neighbour it wants is missing, for ``gone_seconds`` (a fault
  due while another node is down lands while the federation runs; an attack made while a
  member is paused meets a node at work);
* the test, not a timer, ends an outage it waits for (it resumes the paused node).

What cannot be tied so: the runner signals a ``[[faults]]`` entry (or starts a cut, a churn
event) when its poll (every 0.2 s) sees the round it names, so that first signal still needs
the target alive, and not yet done, at that look. Each test puts it early in the run: the
rounds after it, run at full speed, are the margin, and are the one round count left that
matters (to that first look only: everything after it follows from events). Each test file's
docstring says how.
"""

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


def run_text(tmp_path: Path, text: str, *, spawn: bool = False,
             html: bool = False) -> tuple[int, dict]:
    """Run a scenario's text; its report.json (report.html only with ``html``: its figures
    cost about a second of the test process's CPU, and test_report_html.py draws them)."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(text)
    out = tmp_path / "out"
    code = run_scenario(scenario, out=out, quiet=True, centralised=False, spawn=spawn,
                        html=html)
    return code, json.loads((out / "report.json").read_text())


#: two private sites of two nodes behind NAT and two public relays, relay 0 faulting at round 2
#: (``kind``: kill, tamper or drop; the sites e2e tests)
TWO_SITES = """
[[sites]]
name = "a"
nodes = 2

[[sites]]
name = "b"
nodes = 2

[public]
relays = 2
hole_punch = false

[[public.faults]]
relay = 0
kind = "{kind}"
at_round = 2
"""
