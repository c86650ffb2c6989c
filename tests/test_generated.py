"""A generated data set (mnist1d) kept in the machine's cache folder: generated once, read back
by later processes, never trusted when unsound, never kept in a folder others may write to."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from gossipfl.learning.data import Dataset, load_dataset
from gossipfl.learning.generated import (
    kept,
    load_kept,
    mnist1d_key,
    read_entry,
    teacher_key,
    write_entry,
)


def _small(seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(x_train=rng.standard_normal((12, 6)).astype(np.float32),
                   y_train=(np.arange(12) % 3).astype(np.int32),
                   x_test=rng.standard_normal((4, 6)).astype(np.float32),
                   y_test=(np.arange(4) % 3).astype(np.int32), num_classes=3,
                   input_shape=(6, 1))


def _same(a: Dataset, b: Dataset) -> bool:
    return (a.num_classes == b.num_classes and a.input_shape == b.input_shape
            and all(np.array_equal(getattr(a, n), getattr(b, n)) and
                    getattr(a, n).dtype == getattr(b, n).dtype
                    for n in ("x_train", "y_train", "x_test", "y_test")))


class Generator:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Dataset:
        self.calls += 1
        return _small()


def test_generated_once_then_read_back_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    generate = Generator()
    first = kept(str(folder), "mnist1d", "k1", generate)
    again = kept(str(folder), "mnist1d", "k1", generate)
    assert generate.calls == 1 and _same(first, again)
    [entry] = folder.glob("gossipfl-mnist1d-*.npz")
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert kept(str(folder), "mnist1d", "k2", generate) is not None and generate.calls == 2
    assert kept(None, "mnist1d", "k1", generate) is not None and generate.calls == 3


@pytest.mark.parametrize("damage", ["garbage", "truncated", "nan", "label", "shape", "pickle"])
def test_an_unsound_entry_is_generated_again_and_replaced(
        tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    path = folder / "gossipfl-mnist1d-k.npz"
    good = _small()
    write_entry(path, good)
    if damage == "garbage":
        path.write_bytes(b"not a zip at all")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        bad = {"x_train": good.x_train.copy(), "y_train": good.y_train.copy(),
               "x_test": good.x_test, "y_test": good.y_test,
               "input_shape": np.asarray(good.input_shape, np.int64),
               "num_classes": np.asarray(good.num_classes, np.int64)}
        if damage == "nan":
            bad["x_train"][3, 2] = np.nan
        elif damage == "label":
            bad["y_train"][0] = 7
        elif damage == "shape":
            bad["x_train"] = bad["x_train"][:, :5]
        else:
            bad["y_train"] = np.array([{"a": 1}] * 12, dtype=object)
        np.savez(path, **bad)
    with pytest.raises(ValueError):
        read_entry(path)
    generate = Generator()
    caplog.set_level(logging.WARNING)
    dataset = kept(str(folder), "mnist1d", "k", generate)
    assert generate.calls == 1 and _same(dataset, good)
    assert "unsound" in caplog.text
    assert _same(read_entry(path), good)  # replaced by a sound one


def test_a_folder_others_may_write_to_is_not_used(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o777)
    planted = folder / "gossipfl-mnist1d-k.npz"
    other = _small(seed=5)
    write_entry(planted, other)  # what another user could have put there
    generate = Generator()
    caplog.set_level(logging.WARNING)
    dataset = kept(str(folder), "mnist1d", "k", generate)
    assert generate.calls == 1 and _same(dataset, _small())
    assert "not kept" in caplog.text and "others may write" in caplog.text


def test_mnist1d_kept_is_the_generated_one_and_keys_follow_seed_and_count(
        tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    fresh = load_dataset("mnist1d", seed=3, samples=60)
    first = load_kept("mnist1d", cache=folder, seed=3, samples=60)
    again = load_kept("mnist1d", cache=folder, seed=3, samples=60)
    assert _same(fresh, first) and _same(first, again)
    assert len(list(Path(folder).glob("gossipfl-mnist1d-*.npz"))) == 1
    assert mnist1d_key(3, 60) != mnist1d_key(4, 60) != mnist1d_key(3, 61)
    assert mnist1d_key(3, None) != mnist1d_key(3, 60)
    # the other data sets are read as before, nothing kept
    load_kept("iris", cache=folder, seed=0)
    assert len(list(Path(folder).glob("gossipfl-*"))) == 1


def test_the_teacher_task_kept_is_the_generated_one_and_keys_follow_its_split(
        tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    fresh = load_dataset("teacher", seed=2, samples=400, test_fraction=0.1)
    first = load_kept("teacher", cache=folder, seed=2, samples=400, test_fraction=0.1)
    again = load_kept("teacher", cache=folder, seed=2, samples=400, test_fraction=0.1)
    assert _same(fresh, first) and _same(first, again)
    assert len(list(Path(folder).glob("gossipfl-teacher-*.npz"))) == 1
    # another split of the same draws is another entry, not the kept one read back
    other = load_kept("teacher", cache=folder, seed=2, samples=400, test_fraction=0.2)
    assert len(other.y_test) == 80 and len(first.y_test) == 40
    assert len(list(Path(folder).glob("gossipfl-teacher-*.npz"))) == 2
    assert len({teacher_key(2, 400, 0.1), teacher_key(3, 400, 0.1), teacher_key(2, 401, 0.1),
                teacher_key(2, 400, 0.2), teacher_key(2, None, 0.1)}) == 5


def test_the_report_counts_parameters_from_the_kept_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gossipfl.learning.data as data
    from gossipfl.data_config import DataConfig
    from gossipfl.scenario.config import ScenarioConfig
    from gossipfl.scenario.integrity import expected_parameters

    folder = str(tmp_path / "cache")
    scenario = ScenarioConfig(name="t", nodes=2, rounds=1,
                              data=DataConfig(dataset="mnist1d", samples=60, partition="iid"))
    counted = expected_parameters(scenario, folder)  # generates and keeps it

    def no_generation(**_: object) -> Dataset:
        raise AssertionError("generated again")

    monkeypatch.setattr(data, "_load_mnist1d", no_generation)
    assert expected_parameters(scenario, folder) == counted
    with pytest.raises(AssertionError, match="generated again"):
        expected_parameters(scenario)  # no folder: generated, as before
