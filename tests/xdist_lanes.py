"""A pytest-xdist scheduler for this suite (used by tests/conftest.py with ``--dist load``).

The tests that start real node processes, relays or network namespaces (the ``e2e`` ones) spend
most of their time waiting on the protocol's timers, not on a core: a whole run of them takes
several times its CPU time. Every other test is CPU-bound. So ``-n auto`` makes one worker a
core for the CPU-bound tests plus ``LANES`` more workers, the lanes, that take the waiting
tests first, one at a time, longest first; the two kinds overlap instead of queueing behind
each other. A worker whose own kind has run out takes the other kind, so neither waits idle.

The controller process sees only test ids, not marks: a test is of the waiting kind when its
module is in ``WAIT_MODULES`` (the conftest checks at collection that every ``e2e`` test is).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xdist.scheduler import LoadScheduling

LANES = 2
CHUNK = 4  # CPU-bound tests a worker is sent at a time (then on to their module's end)
# the modules whose tests wait (e2e: real processes, relays, namespaces), longest tests first
WAIT_MODULES = (
    "test_natlab.py",
    "test_e2e_linger.py",
    "test_e2e_netcut.py",
    "test_netfaults.py",
    "test_e2e.py",
    "test_e2e_sites.py",
    "test_e2e_relay_faults.py",
    "test_natlab_nodes.py",
    "test_e2e_soak.py",
    "test_e2e_byzantine.py",
    "test_e2e_adversaries.py",
    "test_e2e_netns.py",
    "test_prom.py",
    "test_netcut.py",
    "test_netns.py",
)
# the CPU-bound modules that take longest, first (the rest follow in collection order): the
# short tests come last, so the workers end together
HEAVY_FIRST = (
    "test_audit.py",
    "test_sim_faults.py",
    "test_sim_robust.py",
    "test_fuzz.py",
    "test_dp.py",
    "test_sim_edges.py",
    "test_sim_byzantine.py",
    "test_secagg_sparse.py",
    "test_secure_round.py",
    "test_sim_termination.py",
    "test_sim_linger.py",
    "test_sim_compression.py",
    "test_datafiles.py",
    "test_circuit.py",
    "test_resume.py",
    "test_report_html.py",
    "test_lean.py",
    "test_learning.py",
)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0].rsplit("/", 1)[-1]


def _rank(module: str, modules: Sequence[str]) -> int | None:
    return modules.index(module) if module in modules else None


def split_queues(collection: Sequence[str], pending: Sequence[int]) -> tuple[list[int], list[int]]:
    """The pending tests as (the waiting ones, longest module first; the CPU-bound ones,
    heaviest modules first, then in collection order)."""
    waiting, busy = [], []
    for i in pending:
        module = module_of(collection[i])
        wait = _rank(module, WAIT_MODULES)
        if wait is not None:
            waiting.append(((wait, i), i))
        else:
            heavy = _rank(module, HEAVY_FIRST)
            busy.append(((len(HEAVY_FIRST) if heavy is None else heavy, i), i))
    return [i for _, i in sorted(waiting)], [i for _, i in sorted(busy)]


class LaneScheduling(LoadScheduling):
    """``LoadScheduling`` with short queues: the first ``LANES`` workers (at most half of them)
    take the waiting tests one at a time, the others the CPU-bound tests ``CHUNK`` at a time,
    on to the module's end (a module-scoped fixture is made once, not on two workers); a
    worker whose own kind has run out takes the other kind."""

    def _is_lane(self, node: Any) -> bool:
        lanes = min(LANES, max(1, self.numnodes // 2))
        ids = sorted((n.gateway.id for n in self.nodes), key=lambda g: (len(g), g))
        return node.gateway.id in ids[:lanes]

    def check_schedule(self, node: Any, duration: float = 0) -> None:
        del duration
        if node.shutting_down:
            return
        if not self.pending:
            node.shutdown()
            return
        # a worker runs a test once it holds the next one: a lane holds one more, a CPU worker
        # two more (it starts the next while the refill is on its way)
        if len(self.node2pending[node]) < (2 if self._is_lane(node) else 3):
            self._send_tests(node, CHUNK)

    def _send_tests(self, node: Any, num: int) -> None:
        del num  # the queues' own sizes, not LoadScheduling's
        assert self.collection is not None
        # from the pending list each time: a crashed worker's tests go back onto it
        waiting, busy = split_queues(self.collection, self.pending)
        one_at_a_time = max(1, 2 - len(self.node2pending[node]))
        if self._is_lane(node):
            order = ((waiting, one_at_a_time), (busy, CHUNK))
        else:
            order = ((busy, CHUNK), (waiting, one_at_a_time))
        for queue, count in order:
            if queue:
                picked = queue[:count]
                if queue is busy:  # on to its module's end
                    last = module_of(self.collection[picked[-1]])
                    rest = queue[count:]
                    for i in rest:
                        if module_of(self.collection[i]) != last:
                            break
                        picked.append(i)
                taken = set(picked)
                self.pending[:] = [i for i in self.pending if i not in taken]
                self.node2pending[node].extend(picked)
                node.send_runtest_some(picked)
                return
