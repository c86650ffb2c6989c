"""The suite's xdist scheduler queues (tests/xdist_lanes.py): which tests wait, in what order."""

from __future__ import annotations

from xdist_lanes import HEAVY_FIRST, WAIT_MODULES, module_of, split_queues


def test_waiting_tests_go_longest_module_first_and_cpu_tests_heaviest_first() -> None:
    collection = [
        "tests/test_wire.py::test_a",
        "tests/test_e2e.py::test_b",
        "tests/test_audit.py::test_c",
        "tests/test_natlab.py::test_d[x]",
        "tests/test_config.py::test_e",
        "tests/test_e2e.py::test_f",
    ]
    waiting, busy = split_queues(collection, range(len(collection)))
    # test_natlab.py stands before test_e2e.py in WAIT_MODULES; within a module, collection order
    assert waiting == [3, 1, 5]
    # test_audit.py is a heavy module: first; the rest in collection order
    assert busy == [2, 0, 4]
    # only what is still pending
    assert split_queues(collection, [0, 5]) == ([5], [0])


def test_module_names_and_lists() -> None:
    assert module_of("tests/test_e2e.py::test_x[a/b::c]") == "test_e2e.py"
    assert not set(WAIT_MODULES) & set(HEAVY_FIRST)
    assert len(set(WAIT_MODULES)) == len(WAIT_MODULES)
