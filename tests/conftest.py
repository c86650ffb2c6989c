"""Test-run wiring for pytest-xdist (``-n auto --dist load``, pyproject.toml).

The ``e2e`` tests (real node processes, relays, network namespaces) mostly wait on the
protocol's timers; the other tests keep a core busy. ``-n auto`` therefore starts one worker a
core plus two lanes, workers that take the waiting tests first, one at a time, longest first
(tests/xdist_lanes.py), so that the two kinds overlap. Two waiting tests run at once (one on
each lane) until the CPU-bound tests have run out, then more. They may share the machine: each
run makes its own namespaces (named after its own folder), subnets live inside them, and nodes
listen on ports the kernel hands out (gossipfl/scenario/runner.py, reserved_ports).

(This replaced a ``serial`` ``xdist_group`` for the ``e2e`` tests under ``--dist loadgroup``:
with pytest 9.2 and pytest-xdist 3.8 loadgroup no longer groups anything,
pytest-dev/pytest-xdist#1386, so those tests already ran side by side.)
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

# XLA on one thread in the test processes (and the workers they start), as a node runs
# (NODE_THREAD_FLAGS, gossipfl/cli.py): each worker has a core of its own; XLA's own threads
# would only contend with the other workers' (measured: a CPU-bound file set twice as slow)
os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
STEPS_ENV = "GOSSIPFL_COMPILE_CACHE"  # gossipfl.node.compile_cache.ENV
OWN_CACHE = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    _own_jax_cache(config)
    _share_rewritten_tests(config)


def _own_jax_cache(config: pytest.Config) -> None:
    """One JAX compilation cache for the whole run (workers and the processes they start
    inherit it), every compilation in it: the simulator tests compile the same steps again and
    again (measured: two files' CPU time 19 s -> 11 s from an empty cache). And one folder of
    compiled steps for the node processes the run starts (gossipfl/node/compile_cache.py: a
    node loads its steps from it without tracing or lowering them, and turns JAX's cache off in
    its own process), never the user's. Folders of this run's own, removed at its end."""
    own = []
    if CACHE_ENV not in os.environ:  # else a worker (its controller made it) or the caller's
        own.append(tempfile.mkdtemp(prefix="gossipfl-test-xla-"))
        os.environ[CACHE_ENV] = own[-1]
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    if STEPS_ENV not in os.environ:
        own.append(tempfile.mkdtemp(prefix="gossipfl-test-steps-"))
        os.environ[STEPS_ENV] = own[-1]
    config.stash[OWN_CACHE] = own


REWRITTEN = pytest.StashKey[list[Path]]()


def _pyc(rewrite: Any, module: Path) -> Path:
    return rewrite.get_cache_dir(module) / (module.name[:-3] + rewrite.PYC_TAIL)


def _test_modules(config: pytest.Config, here: Path) -> list[Path]:
    """The test modules this run collects from: those its arguments name, or those under the
    folders they name (``testpaths`` when none)."""
    found: set[Path] = set()
    for arg in config.args:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path.is_dir():
            found.update(path.rglob("test_*.py"))
        elif path.is_file() and path.name.startswith("test_"):
            found.add(path)
    return sorted(module for module in found if module.parent == here)


def _sources(names: Any) -> list[Path]:
    """The source files of the packages or modules ``names`` (found, not imported)."""
    import importlib.util

    found: list[Path] = []
    for name in sorted(names):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        if spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                found.extend(sorted(Path(folder).rglob("*.py")))
        elif spec.origin and spec.origin.endswith(".py"):
            found.append(Path(spec.origin))
    return found


def _share_rewritten_tests(config: pytest.Config) -> None:
    """Rewrite the test modules' asserts once for every worker, not once in each; and the same
    for what every worker and node process would otherwise compile again.

    Where the environment asks Python to write no bytecode (``PYTHONDONTWRITEBYTECODE``), pytest
    caches no rewritten test module either, so each xdist worker rewrote all of them: 7 of a
    worker's 14 s of CPU to collect (pytest 9.2, some 2 ms an assert), four workers a run. The
    controller now rewrites them before the workers start (in two processes) and writes
    pytest's own cache files, which the workers read (pytest checks each against its source's
    hash). Likewise the plugins pytest rewrites too (hypothesis, anyio, xdist: 1.3 CPU-s in
    each worker of a fresh environment) and gossipfl's own modules as plain bytecode (every
    node process the tests spawn compiled them again: about 0.15 s of CPU each). The files it
    wrote are removed at the run's end."""
    if not sys.dont_write_bytecode or hasattr(config, "workerinput"):
        return
    if config.getoption("assertmode", "rewrite") != "rewrite" or \
            config.getoption("numprocesses", None) in (None, 0, "0"):
        return
    try:
        import importlib.util
        import py_compile

        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        hook = config.pluginmanager.rewrite_hook
        here = Path(__file__).parent
        rewritten = [module for module in [*_test_modules(config, here), here / "conftest.py",
                                           *_sources(getattr(hook, "_must_rewrite", ()))]
                     if rewrite._read_pyc(module, _pyc(rewrite, module)) is None]
        compiled = [(module, Path(importlib.util.cache_from_source(str(module))))
                    for module in _sources(["gossipfl"])]
        compiled = [(module, pyc) for module, pyc in compiled if not pyc.exists()]

        def write(modules: list[Path], plain: list[tuple[Path, Path]]) -> None:
            for module in modules:
                try:  # a module that does not compile is left to its worker to report
                    source_hash, code = rewrite._rewrite_test(module, config)
                    if rewrite.try_makedirs(_pyc(rewrite, module).parent):
                        rewrite._write_pyc(state, code, source_hash, _pyc(rewrite, module))
                except Exception:  # and another pytest's private API: as before, unshared
                    continue
            for module, pyc in plain:
                try:
                    py_compile.compile(str(module), cfile=str(pyc), doraise=True)
                except (OSError, py_compile.PyCompileError):
                    continue
    except (ImportError, AttributeError, KeyError, TypeError):  # another pytest: as before
        return
    config.stash[REWRITTEN] = [_pyc(rewrite, module) for module in rewritten] + \
        [pyc for _, pyc in compiled]
    pid = os.fork() if threading.active_count() == 1 and len(rewritten) > 1 else -1
    if pid == 0:
        try:
            write(rewritten[1::2], compiled[1::2])
        finally:
            os._exit(0)
    if pid > 0:
        write(rewritten[0::2], compiled[0::2])
    else:
        write(rewritten, compiled)
    if pid > 0:
        os.waitpid(pid, 0)


def pytest_unconfigure(config: pytest.Config) -> None:
    for folder in config.stash.get(OWN_CACHE, []):
        shutil.rmtree(folder, ignore_errors=True)
    for pyc in config.stash.get(REWRITTEN, []):
        pyc.unlink(missing_ok=True)


def _freeze_survivors() -> None:
    """Collect, then freeze what survives out of the collector's view (gc.freeze): a worker
    holds JAX, the test modules and the session's datasets and compiled steps, and each full
    collection walked all of them again; measured, the collector took 11-17 CPU-s in each of
    the two CPU-bound workers of a run (of about 300 in all), 1-3 s after this. What a test
    leaves alive is frozen after it; cyclic garbage made later from frozen objects is not
    reclaimed (a worker's memory, for the run's length)."""
    gc.collect()
    gc.freeze()


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    del session
    _freeze_survivors()


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    del item, nextitem
    yield
    _freeze_survivors()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    from xdist_lanes import WAIT_MODULES

    strays = sorted({item.path.name for item in items if item.get_closest_marker("e2e")}
                    - set(WAIT_MODULES))
    if strays:
        raise pytest.UsageError(f"e2e tests in {', '.join(strays)}: add the module to "
                                "WAIT_MODULES in tests/xdist_lanes.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    from xdist.plugin import pytest_xdist_auto_num_workers as cores
    from xdist_lanes import LANES

    return cores(config) + LANES


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "load":
        return None
    from xdist_lanes import LaneScheduling

    return LaneScheduling(config, log)


@pytest.fixture(scope="session")
def pool() -> Any:
    """The datasets, compiled trainers and vectorised steps that every simulation of this
    worker shares (:class:`~gossipfl.node.learner.LearnerPool`; the tests only read them): a
    model's steps are traced and lowered once a worker, not once a module (measured: the six
    test_sim_* modules' CPU time 61 s -> 55 s)."""
    from gossipfl.node.learner import LearnerPool

    return LearnerPool()


@pytest.fixture(scope="module")
def can_make_nat() -> None:
    """Skip a test that needs a NAT lab where one cannot be built (root, iptables, ...)."""
    from gossipfl.scenario.natlab import probe

    reason = probe()
    if reason is not None:
        pytest.skip(f"cannot build a NAT lab here: {reason}")
