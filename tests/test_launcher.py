"""The launcher's start-up shortcuts: forking from the runner only when safe, and the warm-up
marker that lets a machine compile a model's steps once."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from gossipfl.config import NodeConfig
from gossipfl.node.compile_cache import warm_marker
from gossipfl.scenario.launcher import fork_safe


def test_fork_is_refused_while_another_thread_runs() -> None:
    fresh = subprocess.run(  # a fresh interpreter: one thread, no JAX backend started
        [sys.executable, "-c", "from gossipfl.scenario.launcher import fork_safe; "
         "import jax; print(fork_safe())"], capture_output=True, text=True, timeout=60)
    assert fresh.stdout.strip() == "True", fresh.stderr
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not fork_safe()
    finally:
        stop.set()
        thread.join()


def test_warm_marker_ignores_what_does_not_change_the_compiled_steps(tmp_path: Path) -> None:
    base = NodeConfig(node_count=8)
    other_node = replace(base, node_index=3, out_dir=str(tmp_path / "elsewhere"))
    assert warm_marker(str(tmp_path), base) == warm_marker(str(tmp_path), other_node)
    batch = replace(base, train=replace(base.train, batch_size=64))
    assert warm_marker(str(tmp_path), batch) != warm_marker(str(tmp_path), base)
    assert warm_marker(str(tmp_path), base).parent == tmp_path


def test_warm_marker_changes_with_the_steps_the_warm_up_compiles(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A marker written before the set of compiled steps changed is not taken for this one."""
    import gossipfl.node.compile_cache as compile_cache

    base = NodeConfig(node_count=8)
    now = warm_marker(str(tmp_path), base)
    monkeypatch.setattr(compile_cache, "WARM_STEPS", compile_cache.WARM_STEPS - 1)
    assert warm_marker(str(tmp_path), base) != now


def test_a_forked_childs_output_goes_to_its_log_whatever_sys_stderr_was(
        tmp_path: Path) -> None:
    """A launcher forked from a process whose sys.stderr is not descriptor 2 (pytest's capture):
    its children's warnings and the traceback that ends one land in their own log. (Forked in a
    fresh interpreter: this worker's JAX threads make a fork here unsafe.)"""
    log = tmp_path / "stdout.log"
    code = (
        "import io, os, sys\n"
        "from gossipfl.scenario.launcher import _redirect\n"
        "sys.stdout, sys.stderr = io.StringIO(), io.StringIO()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        f"    _redirect({str(log)!r})\n"
        "    print('to stdout')\n"
        "    print('to stderr', file=sys.stderr)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == ["to stdout", "to stderr"]


def test_the_launcher_loads_the_shared_data_once_and_each_node_gets_its_own_partition(
        tmp_path: Path) -> None:
    import numpy as np

    from gossipfl.node.learner import load_node_data
    from gossipfl.scenario.launcher import shared_data

    base = NodeConfig(node_count=4)
    configs = [replace(base, node_index=i) for i in range(4)]
    pool = shared_data(configs)
    assert pool is not None
    for config in configs:  # what a node forked with it holds: what it would have loaded
        dataset, indices = load_node_data(config)
        shared = pool.dataset(config)
        assert shared is pool.dataset(configs[0])  # loaded once
        assert np.array_equal(pool.indices(config, shared), indices)
        assert np.array_equal(shared.x_train, dataset.x_train)
        assert np.array_equal(shared.y_test, dataset.y_test)
    # a file per node: each child loads its own (here every child's resident set would hold
    # them all); a file that cannot be read: each child says why in its own log
    files = []
    for i in range(2):
        path = tmp_path / f"node{i}.npz"
        np.savez(path, x=np.zeros((4, 3), np.float32), y=np.arange(4) % 2)
        files.append(replace(base, node_index=i, node_count=2, data=replace(
            base.data, dataset="npz", path=str(path), partition="none")))
    assert shared_data(files) is None
    missing = replace(base.data, dataset="npz", path=str(tmp_path / "gone.npz"))
    assert shared_data([replace(c, data=missing) for c in configs]) is None


def test_the_launcher_keeps_generated_data_in_the_cache_folder(tmp_path: Path) -> None:
    from gossipfl.scenario.launcher import shared_data

    base = NodeConfig(node_count=2)
    data = replace(base.data, dataset="mnist1d", samples=60, partition="iid")
    configs = [replace(base, node_index=i, data=data) for i in range(2)]
    cache = tmp_path / "cache"
    first = shared_data(configs, str(cache))
    assert first is not None and len(list(cache.glob("gossipfl-mnist1d-*.npz"))) == 1
    again = shared_data(configs, str(cache))  # a later run: read back, the same arrays
    assert again is not None
    import numpy as np

    assert np.array_equal(first.dataset(configs[0]).x_train, again.dataset(configs[0]).x_train)
