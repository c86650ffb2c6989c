"""After a run: does every node's checkpoint load (checksum and all) and hold a model of the
scenario's size? The report's ``checkpoints`` section (a soak's bar: no lost or corrupt
checkpoint)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.node.checkpoint import CheckpointError, load_checkpoint

if TYPE_CHECKING:
    from gossipfl.scenario.config import ScenarioConfig

CHECKPOINT = "checkpoint.npz"  # every round's (and the last) checkpoint of a node
FINAL = "final.npz"  # written by a node that finished: checked too where it exists


def dataset_and_model(scenario: ScenarioConfig,
                      cache: str | None = None) -> tuple[Any, Any]:
    """The scenario's whole dataset (per-node files pooled; a generated one kept in
    ``cache``) and its model (unfitted), as the report builds them."""
    from gossipfl.learning.models import build_model
    from gossipfl.scenario.datafiles import scenario_dataset

    dataset = scenario_dataset(scenario.data, scenario.nodes, cache)  # node files: pooled
    model = build_model(scenario.model.name, dataset.input_shape, dataset.num_classes,
                        hidden=scenario.model.hidden)
    return dataset, model


def expected_parameters(scenario: ScenarioConfig, cache: str | None = None) -> int:
    """The number of parameters of the scenario's model on its dataset (a generated one read
    from ``cache`` when kept there)."""
    _, model = dataset_and_model(scenario, cache)
    return _count(model.init(0))


def _count(params: Any) -> int:
    if isinstance(params, dict):
        return sum(_count(v) for v in params.values())
    if isinstance(params, (list, tuple)):
        return sum(_count(v) for v in params)
    return math.prod(getattr(params, "shape", ()))


def check_file(path: Path, expected: int | None) -> tuple[str | None, int | None]:
    """(what is wrong with the checkpoint ``path``, or None; the round it holds, if it loads)."""
    if not path.exists():
        return "missing", None
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        return str(error), None
    if expected is not None and checkpoint.model.size != expected:
        return f"{checkpoint.model.size} parameters, expected {expected}", checkpoint.round
    return None, checkpoint.round


def checkpoints_section(folders: Iterable[tuple[int, Path]],
                        expected: int | None) -> dict[str, Any]:
    """``ok``: how many nodes have a sound ``checkpoint.npz`` (and ``final.npz``, where they
    wrote one); ``bad``: for each file that is not, the node, the file and why (``missing``, or
    the loader's error, or a wrong size); ``rounds``: each node's checkpointed round."""
    ok, bad, rounds = 0, [], {}
    for index, folder in folders:
        problems = []
        for name in (CHECKPOINT, FINAL):
            path = folder / name
            if name == FINAL and not path.exists():
                continue
            error, round_ = check_file(path, expected)
            if error is not None:
                problems.append({"node": index, "file": name, "error": error})
            elif name == CHECKPOINT:
                rounds[str(index)] = round_
        bad.extend(problems)
        ok += not problems
    return {"ok": ok, "bad": bad, "expected_parameters": expected, "rounds": rounds}


__all__ = ["check_file", "checkpoints_section", "expected_parameters"]
