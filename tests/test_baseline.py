"""The centralised baseline is trained once per machine and task, then read back
(gossipfl/scenario/baseline.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gossipfl.learning import train
from gossipfl.scenario import baseline
from gossipfl.scenario.config import ScenarioConfig, load_scenario

TEXT = """
name = "tiny"
nodes = 2
rounds = 2
seed = 0

[data]
dataset = "iris"
partition = "iid"

[model]
name = "logreg"

[train]
learning_rate = 0.1
batch_size = 16
local_epochs = 1
"""


def _scenario(tmp_path: Path) -> ScenarioConfig:
    path = tmp_path / "tiny.toml"
    path.write_text(TEXT)
    return load_scenario(path)


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = train.train_centralised

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["epochs"])
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_centralised", counted)
    return calls


def test_the_baseline_is_trained_once_then_read_back(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    scenario, cache = _scenario(tmp_path), str(tmp_path / "cache")
    first = baseline.centralised_baseline(scenario, cache)
    assert calls == [2] and 0.0 <= first <= 1.0
    (kept,) = (tmp_path / "cache").glob("gossipfl-centralised-*.json")
    assert json.loads(kept.read_text()) == {"accuracy": first}
    assert baseline.centralised_baseline(scenario, cache) == first
    assert calls == [2]  # read back, not trained again

    # another seed, another number of epochs: another key, trained anew
    baseline.centralised_baseline(dataclasses.replace(scenario, seed=1), cache)
    baseline.centralised_baseline(dataclasses.replace(scenario, rounds=3), cache)
    assert calls == [2, 2, 3]
    assert len(list((tmp_path / "cache").glob("gossipfl-centralised-*.json"))) == 3


def test_other_data_under_the_same_settings_is_another_key(tmp_path: Path) -> None:
    from gossipfl.scenario.integrity import dataset_and_model

    scenario = _scenario(tmp_path)
    dataset, _ = dataset_and_model(scenario)
    key = baseline.baseline_key(scenario, dataset)
    assert baseline.baseline_key(scenario, dataset) == key
    changed = dataclasses.replace(dataset, y_train=np.roll(dataset.y_train, 1))
    assert baseline.baseline_key(scenario, changed) != key


def test_a_damaged_cached_figure_is_trained_again_and_replaced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    scenario, cache = _scenario(tmp_path), str(tmp_path / "cache")
    first = baseline.centralised_baseline(scenario, cache)
    (kept,) = (tmp_path / "cache").glob("gossipfl-centralised-*.json")
    for damage in ("{not json", '{"accuracy": 7.0}', '{"other": 1}', '["a"]'):
        kept.write_text(damage)
        assert baseline.centralised_baseline(scenario, cache) == first
        assert json.loads(kept.read_text()) == {"accuracy": first}
    assert len(calls) == 5


def test_no_cache_folder_trains_every_time(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting(monkeypatch)
    scenario = _scenario(tmp_path)
    assert baseline.centralised_baseline(scenario, None) \
        == baseline.centralised_baseline(scenario, None)
    assert len(calls) == 2 and not list(tmp_path.rglob("gossipfl-centralised-*"))
