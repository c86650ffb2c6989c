"""The centralised baseline a run's report compares against: the scenario's model trained for
the same epochs on the pooled training data, once per machine.

Training it takes the runner some two seconds after the nodes finish (a JAX start and
``rounds × local_epochs`` epochs: the passes the federation makes over its data; a scenario's
``[baseline]`` may set fewer epochs and other settings: :mod:`gossipfl.scenario.baseline_config`),
and its result depends only on the data, the model, the
training settings, the seed and JAX's version: the figure is kept in the machine's cache folder
(the compilation cache's, :func:`gossipfl.node.compile_cache.cache_folder`; none when that is
off) under a key of those, the data by the digest of its arrays (a user's file that changed
under the same name is another key), and a later run of the same task reads it back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from gossipfl.config import to_dict
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.integrity import dataset_and_model

log = logging.getLogger("gossipfl.runner")


def baseline_key(scenario: ScenarioConfig, dataset: Any) -> str:
    """What the baseline's accuracy depends on, as a hex digest."""
    import jax

    digest = hashlib.sha256()
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        data = np.ascontiguousarray(array)
        digest.update(f"{data.dtype.str}{data.shape}".encode())
        digest.update(data.tobytes())
    settings = {"jax": jax.__version__, "model": to_dict(scenario.model),
                "train": to_dict(scenario.centralised_train), "seed": scenario.seed,
                "epochs": scenario.centralised_epochs,
                "data": digest.hexdigest()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str)
                          .encode()).hexdigest()[:32]


def centralised_baseline(scenario: ScenarioConfig, folder: str | None) -> float:
    """The baseline's final test accuracy: read from ``folder`` (the machine's cache) when a
    run of the same task wrote it, else trained now and written there."""
    from gossipfl.learning.train import train_centralised

    dataset, model = dataset_and_model(scenario, folder)
    path = Path(folder) / f"gossipfl-centralised-{baseline_key(scenario, dataset)}.json" \
        if folder else None
    if path is not None:
        try:
            accuracy = json.loads(path.read_text())["accuracy"]
            if isinstance(accuracy, float) and math.isfinite(accuracy) and 0 <= accuracy <= 1:
                return accuracy
            log.warning("ignoring the cached centralised baseline %s: not an accuracy", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring the cached centralised baseline %s: %s", path, error)
    _, accuracies = train_centralised(
        dataset, model, scenario.centralised_train, epochs=scenario.centralised_epochs,
        seed=scenario.seed,
    )
    accuracy = float(accuracies[-1])
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(f".{path.name}.{id(accuracy)}")
            temp.write_text(json.dumps({"accuracy": accuracy}))
            temp.replace(path)
        except OSError as error:
            log.warning("could not keep the centralised baseline in %s: %s", path, error)
    return accuracy
