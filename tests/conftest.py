"""Test-run wiring for pytest-xdist (``-n auto --dist load``, pyproject.toml).

The ``e2e`` tests (real node processes, relays, network namespaces) mostly wait on the
protocol's timers; the other tests keep a core busy. ``-n auto`` therefore starts one worker a
core plus two lanes, workers that take the waiting tests first, one at a time, longest first
(tests/xdist_lanes.py), so that the two kinds overlap. At most two waiting tests run at once
(one a lane) until the CPU-bound tests have run out. Two of them may share the machine: each
run makes its own namespaces (named after its own folder), subnets live inside them, and nodes
listen on ports the system picks.

(This replaced a ``serial`` ``xdist_group`` for the ``e2e`` tests under ``--dist loadgroup``:
with pytest 9.2 and pytest-xdist 3.8 loadgroup no longer groups anything,
pytest-dev/pytest-xdist#1386, so those tests already ran side by side.)
"""

from __future__ import annotations

import os
from typing import Any

import pytest

# XLA on one thread in the test processes (and the workers they start), as a node runs
# (NODE_THREAD_FLAGS, gossipfl/cli.py): each worker has a core of its own; XLA's own threads
# would only contend with the other workers' (measured: a CPU-bound file set twice as slow)
os.environ.setdefault("XLA_FLAGS",
                      "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")


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
