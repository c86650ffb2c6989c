"""Test-run wiring: with pytest-xdist (``-n``), the tests that start real node processes or
make network namespaces run one after another on one worker (the ``serial`` group), so that two
of them never share the machine's ports, namespaces and cores with each other; every other test
is spread over the workers."""

from __future__ import annotations

import pytest

SERIAL_MODULES = ("test_netcut.py", "test_netns.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    for item in items:
        if item.get_closest_marker("e2e") or item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("serial"))
