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

``--preset clippedgossip`` sets the anchor table's clipping settings (``tau_steps`` 1, learning
rate 0.05; each cell the worst of seeds 0 and 1); ``--preset clippedgossip-data`` adds their
set-up's data regime and ending (``--holders honest``: the digits split among the 5 honest
nodes only; ``--consensus 0``: no consensus phase after training); flags given beside a preset
override it. On the anchor graph each cell also gives the ring's lowest final accuracy and
ClippedGossip's own figure, the accuracy of the average of the ring nodes' final models.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ATTACKS = ("none", "sign_flip", "gaussian", "scale", "alie", "ipm", "dissensus", "label_flip",
           "free_rider")
RULES = ("none", "clipping", "trimmed_mean", "median", "krum", "filter")

BASE = """
name = "{name}"
nodes = 16
rounds = {rounds}
seed = {seed}
timeout = 1800.0

[data]
dataset = "digits"
partition = "{partition}"
alpha = 0.5{holders}

[model]
name = "mlp"
hidden = [64, 64]

[train]
optimizer = "momentum"
learning_rate = {lr}
batch_size = {batch}
local_epochs = {epochs}

[protocol]
round_timeout = 20.0
heartbeat_interval = 0.5
member_timeout = 5.0
consensus_tolerance = 1e-4
max_consensus_rounds = {consensus}
gamma = {gamma}
"""


def anchor_edges() -> list[tuple[int, int]]:
    """ClippedGossip's "mr5,1,0": honest ring 0..4; i ~ i+5, i ~ i+10; 0 ~ 15."""
    edges = [(i, (i + 1) % 5) for i in range(5)]
    edges += [(i, i + 5) for i in range(5)] + [(i, i + 10) for i in range(5)] + [(0, 15)]
    return edges


def anchor_share() -> float:
    """ClippedGossip's normalisation on "mr5,1,0" as ``[robust] neighbour_share``: from the
    ring nodes' Metropolis self-weights (node 0's 1/6 the least), 1 / (2 − 1/6) = 6/11."""
    from gossipfl.aggregation.mixing import clippedgossip_share, neighbour_weights

    around: dict[int, set[int]] = {}
    for a, b in anchor_edges():
        around.setdefault(a, set()).add(b)
        around.setdefault(b, set()).add(a)
    ring = [neighbour_weights(len(around[i]), {str(j): len(around[j]) for j in around[i]})[0]
            for i in range(5)]
    return clippedgossip_share(ring)


#: ClippedGossip's ALIE10 takes ``torch.std`` (n − 1) over the target and its 2 honest ring
#: neighbours; ``alie``'s spread is the population one (n), so z = 10 · √(3/2) is their attack
ANCHOR_ALIE_Z = 10.0 * (3 / 2) ** 0.5

#: ``clippedgossip``: the anchor table's self-centred clipping settings (issue 9), found on the
#: simulator: a radius of one training step, learning rate 0.05; a cell the worst of two seeds
PRESETS: dict[str, dict[str, float | int | str]] = {
    "clippedgossip": {"tau_steps": 1.0, "lr": 0.05, "seeds": "0,1"},
    # ClippedGossip's own set-up: the honest nodes' data no bottleneck (the digits split among
    # them only: the attackers train nothing), and no consensus phase after training (theirs
    # ends on its last training step and gossip; ours would let the attackers push for up
    # to max_consensus_rounds more rounds with no training against them)
    "clippedgossip-data": {"tau_steps": 1.0, "lr": 0.05, "seeds": "0,1", "holders": "honest",
                           "consensus": 0},
}


@dataclass(frozen=True)
class Settings:
    """One table's training and mixing settings (the bench's flags; a preset fills them)."""

    rounds: int = 30
    epochs: int = 4
    lr: float = 0.02
    batch: int = 32
    consensus: int = 30
    gamma: float = 1.0
    seed: int = 0
    tau: float = 0.0
    tau_steps: float = 0.0
    screen: float = 0.0  # [robust] screen: the worst-fitting neighbours' weight left out
    trim: int = 1
    share: float = 1.0  # [robust] neighbour_share (ClippedGossip's raised self-weight: 6/11)
    holders: str = "all"  # "honest": the partition is cut among the honest nodes only


def scenario(graph: str, attack: str, rule: str, settings: Settings) -> str:
    name = f"byz-{graph}-{attack}-{rule}"
    common = {"name": name, "rounds": settings.rounds, "epochs": settings.epochs,
              "seed": settings.seed, "lr": settings.lr, "batch": settings.batch,
              "consensus": settings.consensus, "gamma": settings.gamma}
    attackers = list(range(5, 16)) if graph == "anchor" else [3, 8, 13]
    honest = [i for i in range(16) if i not in attackers]
    holders = f"\nholders = {honest}" if settings.holders == "honest" else ""
    if graph == "anchor":
        text = BASE.format(partition="iid", holders=holders, **common)
        edges = ", ".join(f"[{a}, {b}]" for a, b in anchor_edges())
        text += f'\n[topology]\nkind = "edges"\nedges = [{edges}]\n'
    else:
        text = BASE.format(partition="dirichlet", holders=holders, **common)
        text += '\n[topology]\nkind = "regular"\ndegree = 4\n'
    text += f'\n[robust]\nrule = "{rule}"\n'
    if rule == "clipping" and settings.tau:
        text += f"tau = {settings.tau}\n"
    if rule == "clipping" and settings.tau_steps:
        text += f"tau_steps = {settings.tau_steps}\n"
    if rule == "trimmed_mean":
        text += f"trim = {settings.trim}\n"
    if rule != "none" and settings.screen:
        text += f"screen = {settings.screen!r}\n"
    if rule != "none" and settings.share != 1:
        text += f"neighbour_share = {settings.share!r}\n"
    if attack != "none":
        for node in attackers:
            text += f'\n[[adversaries]]\nnode = {node}\nkind = "{attack}"\n'
            if graph == "anchor" and attack == "alie":
                text += f"strength = {ANCHOR_ALIE_Z!r}\n"
    return text


def run_cell(text: str, folder: Path, real: bool,
             ring: tuple[int, ...] = ()) -> dict[str, float | None]:
    path = folder / "scenario.toml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    shutil.rmtree(folder / "out", ignore_errors=True)  # never read an earlier run's report
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
    finals = [n.get("final_accuracy") for n in report["nodes"] if n.get("index") in ring]
    on_ring = min(finals) if finals and None not in finals else None
    return {"min_honest": honest, "min_ring": on_ring, "seconds": time.perf_counter() - start,
            "ring_average_model": average_accuracy(folder, ring) if ring else None,
            "consensus": summary.get("honest_consensus_distance",
                                     report.get("final_consensus_distance"))}


def average_accuracy(folder: Path, members: tuple[int, ...]) -> float | None:
    """ClippedGossip's figure: the test accuracy of the average of ``members``' final models
    (their ``AverageEvaluator`` over the honest workers), from each node's ``final.npz``."""
    import numpy as np

    from gossipfl.node.learner import LocalLearner
    from gossipfl.scenario.calibrate import node_config
    from gossipfl.scenario.config import load_scenario

    try:
        models = [np.load(folder / "out" / "nodes" / f"node-{i:02d}" / "final.npz")["params"]
                  for i in members]
    except (OSError, KeyError):
        return None
    scenario = load_scenario(folder / "scenario.toml")
    learner = LocalLearner(node_config(scenario, members[0]))
    return learner.evaluate(np.mean(models, axis=0).astype(np.float32)).accuracy


def worst(cells: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Several seeds' runs of one cell: the lowest figures (a failed run counts as failed)."""
    merged: dict[str, float | None] = {}
    for key in ("min_honest", "min_ring", "ring_average_model"):
        values = [c.get(key) for c in cells]
        merged[key] = None if None in values else min(values)  # type: ignore[type-var]
    merged["seconds"] = sum(c["seconds"] or 0.0 for c in cells)
    merged["runs"] = [c.get("min_honest") for c in cells]  # type: ignore[assignment]
    merged["ring_runs"] = [c.get("min_ring") for c in cells]  # type: ignore[assignment]
    merged["average_runs"] = [c.get("ring_average_model") for c in cells]  # type: ignore[assignment]
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", choices=("anchor", "regular"), default="anchor")
    parser.add_argument("--attacks", default="none,alie,ipm,dissensus")
    parser.add_argument("--rules", default="none,clipping,median,filter")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="settings for a published table (flags given override them)")
    parser.add_argument("--rounds", type=int, default=None, help="training rounds (30)")
    parser.add_argument("--epochs", type=int, default=None, help="local epochs a round (4)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (0.02)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (32)")
    parser.add_argument("--consensus", type=int, default=None,
                        help="max_consensus_rounds after training (30)")
    parser.add_argument("--gamma", type=float, default=None, help="CHOCO step size (1)")
    parser.add_argument("--tau", type=float, default=None, help="clipping: fixed radius")
    parser.add_argument("--tau-steps", type=float, default=None,
                        help="clipping: a radius of this many of the node's training steps")
    parser.add_argument("--screen", type=float, default=None,
                        help="robust rules: leave out the neighbours whose estimates fit the "
                             "node's data worst, up to this share of its mixing weight "
                             "([robust] screen)")
    parser.add_argument("--trim", type=int, default=None)
    parser.add_argument("--share", type=share, default=None,
                        help="robust rules: [robust] neighbour_share, the share of the "
                             "Metropolis neighbour weights mixed with (1); 'clippedgossip': "
                             "their raised self-weight on the anchor graph, 6/11")
    parser.add_argument("--holders", choices=("all", "honest"), default=None,
                        help="who holds data: every node (all), or the partition cut among the "
                             "honest nodes only, the attackers (and in the no-attack row the "
                             "same nodes) holding none (honest)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated scenario seeds; a cell is the worst of them (0)")
    parser.add_argument("--real", action="store_true", help="node processes over libp2p")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the table here")
    args = parser.parse_args()
    attacks = [a for a in args.attacks.split(",") if a]
    rules = [r for r in args.rules.split(",") if r]
    unknown = sorted(set(attacks) - set(ATTACKS)) + sorted(set(rules) - set(RULES))
    if unknown:
        parser.error(f"unknown attack(s) or rule(s): {', '.join(unknown)}")
    preset = PRESETS[args.preset] if args.preset else {}
    chosen = {**preset, **{k: v for k, v in (("rounds", args.rounds), ("epochs", args.epochs),
                                              ("lr", args.lr), ("batch", args.batch),
                                              ("consensus", args.consensus),
                                              ("gamma", args.gamma), ("tau", args.tau),
                                              ("tau_steps", args.tau_steps),
                                              ("screen", args.screen),
                                              ("trim", args.trim),
                                              ("share", args.share),
                                              ("holders", args.holders)) if v is not None}}
    try:
        seeds = [int(x) for x in (args.seeds or str(preset.get("seeds", "0"))).split(",") if x]
        settings = Settings(**{k: v for k, v in chosen.items() if k != "seeds"})
    except (TypeError, ValueError) as error:
        parser.error(f"bad settings: {error}")
    if not seeds:
        parser.error("--seeds names no seed")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-byzantine-"))
    ring = tuple(range(5)) if args.graph == "anchor" else ()
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    print(f"settings: {settings}, seeds {seeds}", flush=True)
    for attack in attacks:
        for rule in rules:
            runs = []
            for seed in seeds:
                text = scenario(args.graph, attack, rule, replace(settings, seed=seed))
                runs.append(run_cell(text, out / f"{attack}-{rule}-s{seed}", args.real, ring))
            cell = worst(runs)
            table.setdefault(attack, {})[rule] = cell
            figure = cell["min_honest"]
            print(f"{args.graph} {attack:>10} {rule:>12}: "
                  f"{'failed' if figure is None else f'{figure:.3f}'} "
                  f"(runs {fmt(cell['runs'])}; ring {fmt(cell['ring_runs'])}; ring's "
                  f"average model {fmt(cell['average_runs'])}; "
                  f"{cell['seconds']:.0f} s)", flush=True)
    print(f"\nhonest nodes' lowest final accuracy, {args.graph} graph "
          f"({'node processes' if args.real else 'simulated'}; worst of {len(seeds)} "
          f"run(s) a cell):")
    print(f"{'attack':>10} " + " ".join(f"{r:>12}" for r in rules))
    for attack in attacks:
        cells = [table[attack][r]["min_honest"] for r in rules]
        print(f"{attack:>10} " + " ".join(f"{fmt([c]):>12}" for c in cells))
    if args.json:
        args.json.write_text(json.dumps({"graph": args.graph, "real": args.real,
                                         "settings": settings.__dict__, "seeds": seeds,
                                         "table": table}, indent=1))


def share(value: str) -> float:
    """``--share``: a number, or ``clippedgossip`` for :func:`anchor_share`."""
    return anchor_share() if value == "clippedgossip" else float(value)


def fmt(values: object) -> str:
    items = values if isinstance(values, list) else [values]
    return ", ".join("-" if v is None else f"{v:.3f}" for v in items)


if __name__ == "__main__":
    main()
