"""The centralised baseline is trained once per machine and task, then read back
(gossipfl/scenario/baseline.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gossipfl.config import ConfigError
from gossipfl.learning import train
from gossipfl.scenario import baseline
from gossipfl.scenario.baseline_config import BaselineConfig
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


class Calls(list[int]):
    """Each baseline trained: its epochs; ``optimizers``: what each trained with."""

    def __init__(self) -> None:
        super().__init__()
        self.optimizers: list[str] = []


def _counting(monkeypatch: pytest.MonkeyPatch) -> Calls:
    calls = Calls()
    real = train.train_centralised

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["epochs"])
        calls.optimizers.append(args[2].optimizer)
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
    # [baseline] epochs replaces rounds × local_epochs, its settings [train]'s: other keys
    baseline.centralised_baseline(
        dataclasses.replace(scenario, baseline=BaselineConfig(epochs=5)), cache)
    baseline.centralised_baseline(
        dataclasses.replace(scenario, baseline=BaselineConfig(epochs=2)), cache)
    assert calls == [2, 2, 3, 5]  # 2 epochs given explicitly is the first run's key
    adam = dataclasses.replace(scenario, baseline=BaselineConfig(optimizer="adam"))
    baseline.centralised_baseline(adam, cache)
    assert calls == [2, 2, 3, 5, 2] and calls.optimizers == ["sgd"] * 4 + ["adam"]
    assert len(list((tmp_path / "cache").glob("gossipfl-centralised-*.json"))) == 5


def test_the_baseline_table_is_read_from_the_file_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "baseline.toml"
    table = '\n[baseline]\nepochs = 7\noptimizer = "adam"\nlearning_rate = 0.001\n'
    path.write_text(TEXT + table)
    loaded = load_scenario(path)
    assert loaded.centralised_epochs == 7
    assert (loaded.centralised_train.optimizer, loaded.centralised_train.learning_rate,
            loaded.centralised_train.batch_size) == ("adam", 0.001, 16)  # batch: [train]'s
    assert loaded.train.optimizer == "sgd"  # the nodes train as [train] says
    plain = _scenario(tmp_path)
    assert plain.centralised_epochs == 2 and plain.centralised_train == plain.train
    for bad, match in (("epochs = -1", "baseline.epochs"), ('optimizer = "lbfgs"', "lbfgs"),
                       ("batch_size = -4", "baseline.batch_size")):
        path.write_text(TEXT + "\n[baseline]\n" + bad + "\n")
        with pytest.raises(ConfigError, match=match):
            load_scenario(path)


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
