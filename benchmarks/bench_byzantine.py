"""The attack × rule table (issue 9): honest nodes' lowest final accuracy for each attack under
each robust mixing rule, with a no-attack row, on two graphs:

- ``anchor``: ClippedGossip's (He, Karimireddy and Jaggi 2022, "mr5,1,0"): 16 nodes, the 5
  honest ones on a ring, each wired to 2 Byzantine nodes of its own and node 0 to a third
  (11 Byzantine), IID data; each attacker aims at its one neighbour. Their figures on MNIST:
  self-centred clipping keeps honest accuracy at 94.2% under ALIE, 91.5% under IPM, 90.1%
  under dissensus; plain gossip without attack 96.4%.
- ``regular``: a random 4-regular graph over 16 nodes, 3 of them Byzantine, non-IID data
  (Dirichlet 0.5): ``scenarios/byzantine.toml``'s setting.

Each cell is a run of the scenario's real nodes (``gossipfl simulate``: the node's own code
over the in-memory transport; ``--real`` for node processes over libp2p), the figure the worst
honest node's final accuracy (the report's ``summary.min_honest_accuracy``).

    .venv/bin/python benchmarks/bench_byzantine.py --graph anchor \\
        --attacks none,alie,ipm,dissensus --rules none,clipping,median,filter
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ATTACKS = ("none", "sign_flip", "gaussian", "scale", "alie", "ipm", "dissensus", "label_flip",
           "free_rider")
RULES = ("none", "clipping", "trimmed_mean", "median", "krum", "filter")

BASE = """
name = "{name}"
nodes = 16
rounds = {rounds}
seed = 0
timeout = 900.0

[data]
dataset = "digits"
partition = "{partition}"
alpha = 0.5

[model]
name = "mlp"
hidden = [64, 64]

[train]
optimizer = "momentum"
learning_rate = 0.02
batch_size = 32
local_epochs = {epochs}

[protocol]
round_timeout = 20.0
heartbeat_interval = 0.5
member_timeout = 5.0
consensus_tolerance = 1e-4
max_consensus_rounds = 30
"""


def anchor_edges() -> list[tuple[int, int]]:
    """ClippedGossip's "mr5,1,0": honest ring 0..4; i ~ i+5, i ~ i+10; 0 ~ 15."""
    edges = [(i, (i + 1) % 5) for i in range(5)]
    edges += [(i, i + 5) for i in range(5)] + [(i, i + 10) for i in range(5)] + [(0, 15)]
    return edges


def scenario(graph: str, attack: str, rule: str, rounds: int, epochs: int, *,
             tau: float = 0.0, trim: int = 1, tau_steps: float = 0.0) -> str:
    name = f"byz-{graph}-{attack}-{rule}"
    if graph == "anchor":
        text = BASE.format(name=name, rounds=rounds, partition="iid", epochs=epochs)
        edges = ", ".join(f"[{a}, {b}]" for a, b in anchor_edges())
        text += f'\n[topology]\nkind = "edges"\nedges = [{edges}]\n'
        attackers = list(range(5, 16))
    else:
        text = BASE.format(name=name, rounds=rounds, partition="dirichlet", epochs=epochs)
        text += '\n[topology]\nkind = "regular"\ndegree = 4\n'
        attackers = [3, 8, 13]
    text += f'\n[robust]\nrule = "{rule}"\n'
    if rule == "clipping" and tau:
        text += f"tau = {tau}\n"
    if rule == "clipping" and tau_steps:
        text += f"tau_steps = {tau_steps}\n"
    if rule == "trimmed_mean":
        text += f"trim = {trim}\n"
    if attack != "none":
        for node in attackers:
            text += f'\n[[adversaries]]\nnode = {node}\nkind = "{attack}"\n'
    return text


def run_cell(text: str, folder: Path, real: bool) -> dict[str, float | None]:
    path = folder / "scenario.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    command = (["run", str(path), "--out", str(folder / "out")] if real else
               ["simulate", str(path), "--out", str(folder / "out"), "--epoch-seconds", "0.5"])
    start = time.perf_counter()
    gossipfl = str(Path(sys.executable).parent / "gossipfl")  # the installed command
    subprocess.run([gossipfl, *command, "--quiet",
                    "--no-centralised"], check=False, capture_output=True)
    try:
        report = json.loads((folder / "out" / "report.json").read_text())
    except (OSError, ValueError):
        return {"min_honest": None, "seconds": time.perf_counter() - start}
    summary = report["summary"]
    honest = summary.get("min_honest_accuracy", summary["min_final_accuracy"])
    return {"min_honest": honest, "seconds": time.perf_counter() - start,
            "consensus": summary.get("honest_consensus_distance",
                                     report.get("final_consensus_distance"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", choices=("anchor", "regular"), default="anchor")
    parser.add_argument("--attacks", default="none,alie,ipm,dissensus")
    parser.add_argument("--rules", default="none,clipping,median,filter")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--tau", type=float, default=0.0, help="clipping: fixed radius")
    parser.add_argument("--tau-steps", type=float, default=0.0,
                        help="clipping: a radius of this many of the node's training steps")
    parser.add_argument("--trim", type=int, default=1)
    parser.add_argument("--real", action="store_true", help="node processes over libp2p")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    rules = [r for r in args.rules.split(",") if r]
    unknown = sorted(set(attacks) - set(ATTACKS)) + sorted(set(rules) - set(RULES))
    if unknown:
        parser.error(f"unknown attack(s) or rule(s): {', '.join(unknown)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-byzantine-"))
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for attack in attacks:
        for rule in rules:
            text = scenario(args.graph, attack, rule, args.rounds, args.epochs, tau=args.tau,
                            trim=args.trim, tau_steps=args.tau_steps)
            cell = run_cell(text, out / f"{attack}-{rule}", args.real)
            table.setdefault(attack, {})[rule] = cell
            figure = cell["min_honest"]
            print(f"{args.graph} {attack:>10} {rule:>12}: "
                  f"{'failed' if figure is None else f'{figure:.3f}'} "
                  f"({cell['seconds']:.0f} s)", flush=True)
    print(f"\nhonest nodes' lowest final accuracy, {args.graph} graph "
          f"({'node processes' if args.real else 'simulated'}):")
    print(f"{'attack':>10} " + " ".join(f"{r:>12}" for r in rules))
    for attack in attacks:
        cells = [table[attack][r]["min_honest"] for r in rules]
        print(f"{attack:>10} " + " ".join(f"{'-' if c is None else f'{c:.3f}':>12}"
                                          for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"graph": args.graph, "real": args.real,
                                         "table": table}, indent=1))


if __name__ == "__main__":
    main()
