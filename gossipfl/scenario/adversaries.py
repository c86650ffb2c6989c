"""Adversaries in a scenario: each one's node configuration, and the report's ``adversaries``
section (what each tried and got, scored against what the honest nodes wrote).

Scores, per adversary:

- ``attempts``, ``succeeded``, ``details``: the adversary's own tally
  (``adversary/summary.json``), plus, for ``membership_flood``, genuine members missing from an
  honest node's topology and made-up ids present in one (from their ``topology.json``), and for
  ``oversize_flood`` the victims' in-flight peaks and peak RSS.
- ``best_cosine``: per neighbour, the highest cosine over rounds between the adversary's
  reconstruction of that neighbour's estimate (``adversary/reconstructions.npz``) and the
  estimate the neighbour published that round (``public/rNNNNN.npy``); ``best_centred_cosine``
  the same on both less the mean of the adversary's neighbours' estimates that round (the part
  of x̂_j that a neighbourhood sum does not give away). ``max_cosine`` is the largest of both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from gossipfl.adversary.kinds import BYZANTINE_KINDS, AdversaryKind
from gossipfl.adversary.role import parse_reconstruction_key
from gossipfl.config import AdversaryConfig

if TYPE_CHECKING:
    from gossipfl.scenario.config import ScenarioConfig


class NodeProcess(Protocol):
    """What this module reads of a run's node (:class:`gossipfl.scenario.process.NodeProcess`)."""

    index: int
    peer_id: str

    @property
    def out(self) -> Path: ...


def node_adversary(scenario: ScenarioConfig, index: int, peer_ids: list[str],
                   board: Path | None = None) -> AdversaryConfig:
    """Node ``index``'s ``[adversary]`` section (honest, saving x̂ per round, when the scenario
    has privacy adversaries and this node is not one). Byzantine members get the colluders'
    ``board`` folder and each other's peer ids."""
    keep = any(AdversaryKind.parse(s.kind) not in BYZANTINE_KINDS for s in scenario.adversaries)
    colluders = tuple(peer_ids[s.node] for s in scenario.adversaries
                      if AdversaryKind.parse(s.kind) in BYZANTINE_KINDS)
    for spec in scenario.adversaries:
        if spec.node == index:
            target = peer_ids[spec.target] if spec.target >= 0 else ""
            if AdversaryKind.parse(spec.kind) not in BYZANTINE_KINDS:
                return AdversaryConfig(kind=spec.kind, target=target, keep_public_estimates=keep)
            return AdversaryConfig(kind=spec.kind, target=target, keep_public_estimates=keep,
                                   strength=spec.strength, colluders=colluders,
                                   board=str(board) if board is not None else "")
    return AdversaryConfig(keep_public_estimates=keep)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """cos(a, b); 0 when either is zero (nothing reconstructed is no match)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0 or not np.isfinite(na * nb):
        return 0.0
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)) / (na * nb))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _public(out: Path, r: int) -> np.ndarray | None:
    try:
        return np.load(out / "public" / f"r{r:05d}.npy")
    except (OSError, ValueError):
        return None


def score(reconstructions: dict[str, np.ndarray], outs: dict[str, Path],
          neighbours: list[str]) -> dict[str, dict[str, float | int]]:
    """Per target peer: the best raw and centred cosine over rounds, and rounds scored."""
    scores: dict[str, dict[str, float | int]] = {}
    for key, guess in sorted(reconstructions.items()):
        r, peer = parse_reconstruction_key(key)
        truth = _public(outs[peer], r) if peer in outs else None
        if truth is None or truth.shape != guess.shape:
            continue
        around = [v for p in neighbours if p in outs
                  if (v := _public(outs[p], r)) is not None and v.shape == guess.shape]
        mean = np.mean(around, axis=0) if around else np.zeros_like(truth)
        entry = scores.setdefault(peer, {"cosine": -1.0, "centred_cosine": -1.0, "rounds": 0})
        entry["cosine"] = max(entry["cosine"], cosine(guess, truth))
        entry["centred_cosine"] = max(entry["centred_cosine"], cosine(guess - mean, truth - mean))
        entry["rounds"] += 1
    return scores


def _membership(entry: dict[str, Any], honest: list[NodeProcess], genuine: set[str]) -> None:
    fakes = set(entry.pop("fake_ids", []) or [])
    missing, present, refused = 0, 0, 0
    for node in honest:
        summary = _read_json(node.out / "summary.json") or {}
        secure = summary.get("privacy", {}).get("secure_aggregation", {})
        refused += len(secure.get("refused_rounds", []))
        topology = _read_json(node.out / "topology.json") or {}
        members = set(topology.get("members", []))
        if not members:
            continue
        missing += len(genuine - members - {node.peer_id})
        present += len(fakes & members)
    # refused secure sums at honest nodes (a liveness attack: keeping a dead member "alive" so
    # its neighbourhoods' smaller sets are refused; signed stamps defeat it): compare with the
    # scenario's baseline
    entry["details"].update(genuine_missing_from_topologies=missing,
                            fake_ids_in_topologies=present, fake_ids=len(fakes),
                            honest_refused_secure_rounds=refused)
    entry["succeeded"] += missing + present


def _victims(entry: dict[str, Any], victims: list[NodeProcess],
             others: list[NodeProcess]) -> None:
    def summary(node: NodeProcess) -> dict[str, Any]:
        return _read_json(node.out / "summary.json") or {}

    entry["victims"] = {
        node.peer_id: {"in_flight": summary(node).get("in_flight"),
                       "peak_rss_bytes": summary(node).get("peak_rss_bytes")}
        for node in victims}
    rss = [summary(n).get("peak_rss_bytes") for n in others]
    rss = [v for v in rss if v]
    entry["others_median_peak_rss_bytes"] = float(np.median(rss)) if rss else None


def adversaries_section(scenario: ScenarioConfig, nodes: list[NodeProcess]) -> list[dict[str, Any]]:
    by_index = {n.index: n for n in nodes}
    outs = {n.peer_id: n.out for n in nodes}
    roles = {spec.node for spec in scenario.adversaries}
    honest = [n for n in nodes if n.index not in roles]
    section = []
    for spec in scenario.adversaries:
        node = by_index[spec.node]
        tally = _read_json(node.out / "adversary" / "summary.json")
        entry: dict[str, Any] = {"node": spec.node, "peer_id": node.peer_id, "kind": spec.kind,
                                 "target": spec.target}
        if tally is None:
            entry.update(attempts=None, succeeded=None, details={"no_summary": True})
            section.append(entry)
            continue
        entry.update(attempts=tally["attempts"], succeeded=tally["succeeded"],
                     details=tally.get("details", {}),
                     **{k: v for k, v in tally.items()
                        if k not in ("kind", "attempts", "succeeded", "details")})
        topology = _read_json(node.out / "topology.json") or {}
        neighbours = list(topology.get("neighbours", []))
        kind = AdversaryKind.parse(spec.kind)
        if kind is AdversaryKind.MEMBERSHIP_FLOOD:
            _membership(entry, honest, set(outs))
        if kind is AdversaryKind.OVERSIZE_FLOOD:
            _victims(entry, [n for n in honest if n.peer_id in neighbours],
                     [n for n in honest if n.peer_id not in neighbours])
        scores = score(_load(node.out / "adversary" / "reconstructions.npz"), outs, neighbours)
        entry["best_cosine"] = {p: s["cosine"] for p, s in scores.items()}
        entry["best_centred_cosine"] = {p: s["centred_cosine"] for p, s in scores.items()}
        entry["rounds_scored"] = {p: s["rounds"] for p, s in scores.items()}
        entry["max_cosine"] = _max(scores)
        churn = score(_load(node.out / "adversary" / "churn_reconstructions.npz"), outs,
                      neighbours)
        if churn:  # sums one apart because a member really left: reported, not the attack's
            entry["churn_max_cosine"] = _max(churn)
        section.append(entry)
    return section


def _load(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError):
        return {}


def _max(scores: dict[str, dict[str, float | int]]) -> float | None:
    return max((max(s["cosine"], s["centred_cosine"]) for s in scores.values()), default=None)
