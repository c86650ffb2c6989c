"""Per-node data files in scenarios (``[data] paths``/``folder`` + ``test_path``), the split tool
(``gossipfl data split``), the centralised baseline on the pooled files, and a simulated run
reading them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sim_scenarios import scenario_text, simulated

from gossipfl.cli import main as cli_main
from gossipfl.config import ConfigError, DataConfig, ModelConfig, NodeConfig, from_dict
from gossipfl.learning.data import load_dataset
from gossipfl.node.learner import LearnerPool, LocalLearner
from gossipfl.scenario.config import ScenarioConfig, load_scenario
from gossipfl.scenario.datafiles import node_data, node_files, pooled_dataset, write_split
from gossipfl.scenario.integrity import dataset_and_model

ROOT = Path(__file__).resolve().parent.parent

PARTITIONED = """
name = "tiny"
nodes = 3
rounds = 2
seed = 1
[data]
dataset = "digits"
partition = "dirichlet"
alpha = 0.5
[model]
name = "logreg"
"""

FILES = """
name = "tiny_files"
nodes = 3
rounds = 2
seed = 1
[data]
dataset = "npz"
{data}
[model]
name = "logreg"
"""


def split(tmp_path: Path, text: str = PARTITIONED) -> tuple[ScenarioConfig, Path]:
    """The tiny partitioned scenario and the folder its split was written to."""
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    scenario = load_scenario(path)
    write_split(scenario, tmp_path / "split")
    return scenario, tmp_path / "split"


def files_scenario(tmp_path: Path, data: str) -> ScenarioConfig:
    path = tmp_path / "files.toml"
    path.write_text(FILES.format(data=data))
    return load_scenario(path)


FOLDER = 'folder = "split"\ntest_path = "split/test.npz"'


def node_config(scenario: ScenarioConfig, index: int, data: DataConfig) -> NodeConfig:
    return NodeConfig(node_index=index, node_count=scenario.nodes, seed=scenario.seed, data=data,
                      model=ModelConfig(name="logreg"))


# -- the split tool and loading -----------------------------------------------------------


def test_split_files_are_the_partition_the_nodes_compute(tmp_path: Path) -> None:
    scenario, folder = split(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "node-00.npz", "node-01.npz", "node-02.npz", "test.npz"]
    full = load_dataset("digits", seed=0)
    with np.load(folder / "test.npz") as test:
        assert np.array_equal(test["x_test"].reshape(len(full.x_test), -1), full.x_test)
        assert np.array_equal(test["y_test"], full.y_test)
        assert test["x_test"].shape[1:] == (8, 8, 1)  # the natural example shape, kept
    files = files_scenario(tmp_path, FOLDER)
    pool = LearnerPool()
    sizes = []
    for index, data in enumerate(node_data(files)):
        computed = LocalLearner(node_config(scenario, index, scenario.data))  # as a node process
        pooled = LocalLearner(node_config(scenario, index, scenario.data), pool)  # simulated
        from_file = LocalLearner(node_config(files, index, data))
        for other in (pooled, from_file):
            assert np.array_equal(other.x, computed.x)
            assert np.array_equal(other.y, computed.y)
        assert np.array_equal(from_file.dataset.x_test, full.x_test)
        assert from_file.dataset.input_shape == (8, 8, 1)
        assert from_file.size == computed.size
        sizes.append(len(from_file.y))
    assert sum(sizes) == len(full.y_train) and len(set(sizes)) > 1  # Dirichlet: unequal


def test_split_refuses_a_folder_holding_npz_files_and_a_file_scenario(tmp_path: Path) -> None:
    scenario, folder = split(tmp_path)
    with pytest.raises(ConfigError, match=r"already holds \.npz files"):
        write_split(scenario, folder)
    with pytest.raises(ConfigError, match="nothing to split"):
        write_split(files_scenario(tmp_path, FOLDER), tmp_path / "again")


def test_paths_are_taken_relative_to_the_scenario_file(tmp_path: Path) -> None:
    split(tmp_path)
    names = ", ".join(f'"split/node-{i:02d}.npz"' for i in (2, 0, 1))
    scenario = files_scenario(tmp_path, f'paths = [{names}]\ntest_path = "split/test.npz"')
    assert scenario.data.partition == "none"
    assert node_files(scenario.data, 3) == [
        str((tmp_path / "split" / f"node-{i:02d}.npz").resolve()) for i in (2, 0, 1)]
    configs = node_data(scenario)
    assert [Path(str(c.path)).name for c in configs] == ["node-02.npz", "node-00.npz",
                                                         "node-01.npz"]
    assert all(c.paths == () and c.folder is None and c.partition == "none" for c in configs)
    assert all(c.test_path == str((tmp_path / "split" / "test.npz").resolve()) for c in configs)


def test_a_folder_is_read_by_name_without_its_test_file(tmp_path: Path) -> None:
    split(tmp_path)
    (tmp_path / "split" / "README.txt").write_text("not data")
    scenario = files_scenario(tmp_path, FOLDER)
    assert [Path(p).name for p in node_files(scenario.data, 3)] == [
        "node-00.npz", "node-01.npz", "node-02.npz"]


# -- refusals -------------------------------------------------------------------------------


def _write(path: Path, **arrays: Any) -> None:
    np.savez(path, **arrays)


def _bad_files(tmp_path: Path, case: str) -> str:
    """A scenario's [data] lines with per-node files broken as ``case`` says."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "d"
    folder.mkdir()
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = np.arange(20) % 3
    _write(folder / "test.npz", x_test=x, y_test=y)
    for i in range(3):
        _write(folder / f"n{i}.npz", x_train=x, y_train=y)
    if case == "missing":
        os.remove(folder / "n1.npz")
    elif case == "not_npz":
        (folder / "n1.npz").write_text("x_train,y_train\n1,2\n")
    elif case == "npy":
        np.save(folder / "n1.npy", x)
        os.replace(folder / "n1.npy", folder / "n1.npz")
    elif case == "nan":
        bad = x.copy()
        bad[3, 2] = np.nan
        _write(folder / "n1.npz", x_train=bad, y_train=y)
    elif case == "shape":
        _write(folder / "n1.npz", x_train=rng.normal(size=(20, 5)), y_train=y)
    elif case == "extra_label":
        _write(folder / "n1.npz", x_train=x, y_train=np.where(y == 2, 7, y))
    elif case == "unseen_label":
        for i in range(3):
            _write(folder / f"n{i}.npz", x_train=x, y_train=np.minimum(y, 1))
    elif case == "test_split":
        _write(folder / "n1.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    elif case == "no_x_train":
        _write(folder / "n1.npz", y_train=y)
    elif case == "bad_test":
        _write(folder / "test.npz", x=x, y=y)
    paths = ", ".join(f'"d/n{i}.npz"' for i in range(3))
    return f'paths = [{paths}]\ntest_path = "d/test.npz"'


@pytest.mark.parametrize(("case", "message"), [
    ("missing", r"node 1's file: npz file '.*n1\.npz' does not exist"),
    ("not_npz", r"node 1's file: '.*n1\.npz' is not an \.npz archive"),
    ("npy", r"node 1's file: '.*n1\.npz' is a single \.npy array"),
    ("nan", "node 1's file: x_train contains NaN or infinite values"),
    ("shape", r"node 1's file .* has examples of shape \(5,\), the test set .* of shape \(4,\)"),
    ("extra_label", r"node 1's file .* has labels \[7\] that the test set .* lacks"),
    ("unseen_label", r"the test set .* has labels \[2\] that no node's file has"),
    ("test_split", "node 1's file: .* holds test arrays, but the test set is test_path"),
    ("no_x_train", "node 1's file: npz file .* lacks required array 'x_train'"),
    ("bad_test", "data.test_path .* lacks 'x_test'"),
])
def test_broken_files_are_refused_clearly(tmp_path: Path, case: str, message: str) -> None:
    scenario = files_scenario(tmp_path, _bad_files(tmp_path, case))
    with pytest.raises(ConfigError, match=message):
        node_data(scenario)


@pytest.mark.parametrize(("data", "message"), [
    ('paths = ["a.npz", "b.npz"]\ntest_path = "t.npz"',
     r"data.paths lists 2 file\(s\); the scenario has 3 nodes"),
    ('paths = ["a.npz", "b.npz", "c.npz"]', "need data.test_path"),
    ('folder = "d"\npaths = ["a.npz", "b.npz", "c.npz"]\ntest_path = "t.npz"',
     "give one of path"),
    ('folder = "d"\ntest_path = "t.npz"\npartition = "iid"',
     "each node's file is its partition"),
])
def test_bad_file_sections_are_refused_at_load(tmp_path: Path, data: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        files_scenario(tmp_path, data)


def test_wrong_count_in_a_folder_and_a_missing_folder_are_refused(tmp_path: Path) -> None:
    split(tmp_path)
    os.remove(tmp_path / "split" / "node-02.npz")
    with pytest.raises(ConfigError, match=r"holds 2 node file\(s\); the scenario has 3 nodes"):
        node_data(files_scenario(tmp_path, FOLDER))
    gone = files_scenario(tmp_path, 'folder = "nowhere"\ntest_path = "t.npz"')
    with pytest.raises(ConfigError, match=r"does not exist.*gossipfl data split"):
        node_data(gone)


def test_files_are_for_npz_and_a_node_reads_one() -> None:
    with pytest.raises(ConfigError, match='are for dataset = "npz"'):
        DataConfig(dataset="digits", folder="d", test_path="t.npz")
    with pytest.raises(ConfigError, match="a scenario's: a node reads its own file"):
        NodeConfig(data=DataConfig(dataset="npz", paths=("a", "b"), test_path="t.npz"))
    node = from_dict(NodeConfig, {"data": {"dataset": "npz", "path": "a.npz",
                                           "test_path": "t.npz", "partition": "none"}})
    assert node.data.test_path == "t.npz"


# -- the centralised baseline and the runner's refusals --------------------------------------


def test_the_centralised_baseline_pools_the_node_files(tmp_path: Path) -> None:
    split(tmp_path)
    files = files_scenario(tmp_path, FOLDER)
    pooled = pooled_dataset(files.data, files.nodes)
    parts = [LocalLearner(node_config(files, i, d)) for i, d in enumerate(node_data(files))]
    assert np.array_equal(pooled.x_train, np.concatenate([p.x for p in parts]))
    assert np.array_equal(pooled.y_train, np.concatenate([p.y for p in parts]))
    full = load_dataset("digits", seed=0)
    assert len(pooled.y_train) == len(full.y_train)
    # the same examples as the partitioned scenario's whole training set, in node order
    assert sorted(map(bytes, pooled.x_train)) == sorted(map(bytes, full.x_train))
    dataset, model = dataset_and_model(files)  # what the report's baseline trains on
    assert np.array_equal(dataset.x_train, pooled.x_train)
    assert dataset.num_classes == 10 and dataset.input_shape == (8, 8, 1)
    assert model.init(0) is not None


def test_cli_split_and_run_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "tiny.toml").write_text(PARTITIONED)
    assert cli_main(["data", "split", str(tmp_path / "tiny.toml"), str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "node-02.npz").exists() and (tmp_path / "s" / "test.npz").exists()
    assert cli_main(["data", "split", str(tmp_path / "tiny.toml"), str(tmp_path / "s")]) == 2
    assert "already holds .npz files" in capsys.readouterr().err
    (tmp_path / "files.toml").write_text(FILES.format(data='folder = "gone"\n'
                                                           'test_path = "gone/test.npz"'))
    out = tmp_path / "run"
    assert cli_main(["run", str(tmp_path / "files.toml"), "--out", str(out)]) == 2
    assert "data.folder" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was made


def test_a_node_with_a_missing_file_exits_with_a_message(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gossipfl", "node", "--dataset", "npz", "--data-path",
         str(tmp_path / "missing.npz"), "--partition", "none", "--key-file",
         str(tmp_path / "node.key"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_the_shipped_file_scenario_is_the_peer_task_read_from_files() -> None:
    task = load_scenario(ROOT / "scenarios" / "peer_task.toml")
    files = load_scenario(ROOT / "scenarios" / "peer_task_files.toml")
    assert files.data.folder == str((ROOT / "scenarios" / "peer_task_split").resolve())
    for section in ("model", "train", "topology", "protocol", "nodes", "rounds", "seed"):
        assert getattr(files, section) == getattr(task, section), section
    # and with peer_task_momentum's levers
    lever = load_scenario(ROOT / "scenarios" / "peer_task_momentum.toml")
    both = load_scenario(ROOT / "scenarios" / "peer_task_files_momentum.toml")
    assert both.data == files.data
    for section in ("model", "train", "topology", "protocol", "nodes", "rounds", "seed"):
        assert getattr(both, section) == getattr(lever, section), section


# -- a simulated run on per-node files --------------------------------------------------------


def test_a_simulated_run_reads_per_node_files(tmp_path: Path) -> None:
    base = scenario_text(name="tiny", nodes=3, rounds=3)
    _, folder = split(tmp_path, base)
    text = base.replace('dataset = "digits"\npartition = "dirichlet"\nalpha = 0.5',
                        f'dataset = "npz"\nfolder = "{folder}"\n'
                        f'test_path = "{folder}/test.npz"')  # absolute names stay as given
    assert text != base
    pool = LearnerPool()
    from_files = simulated(tmp_path / "files", text, pool)
    assert from_files["summary"]["survivors"] == 3
    sizes = [len(np.load(folder / f"node-{i:02d}.npz")["y_train"]) for i in range(3)]
    assert [n["examples"] for n in from_files["nodes"]] == sizes
    assert min(n["final_accuracy"] for n in from_files["nodes"]) > 0.5  # chance: 0.1
    # the same data in the same order, identities and virtual clock: the same run as the
    # partitioned scenario's
    partitioned = simulated(tmp_path / "parts", base, pool)
    assert ([n["final_accuracy"] for n in from_files["nodes"]]
            == [n["final_accuracy"] for n in partitioned["nodes"]])
