"""A round's phases timed: the wall time on the node's clock and, for a node process of its own
on Linux, how much of it the node's thread ran on a CPU and how much it was runnable but waited
for one (the kernel's per-thread scheduler statistics). On a machine with more busy processes
than cores a phase's wall time can be mostly the second, which only less work on the whole
machine cuts, not a cheaper phase: the report shows which it was.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

#: The calling thread's scheduler statistics: nanoseconds on a CPU, nanoseconds runnable and
#: waiting for one, time slices (Linux; absent elsewhere, or with schedstats compiled out).
SCHEDSTAT = Path("/proc/thread-self/schedstat")

#: What a node reads its thread's (running, waiting) seconds with; None where not known.
Sched = Callable[[], "tuple[float, float] | None"]


def thread_sched(path: Path = SCHEDSTAT) -> tuple[float, float] | None:
    """(seconds the calling thread ran, seconds it waited runnable for a CPU), since it
    started; None where the kernel does not say.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w") as f:
    ...     _ = f.write("1500000000 250000000 42\\n"); f.flush()
    ...     thread_sched(Path(f.name))
    (1.5, 0.25)
    """
    try:
        running, waiting, _slices = path.read_text().split()
        return int(running) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def timed(record: dict[str, Any], name: str, sched: Sched | None = None) -> Iterator[None]:
    """Record ``{name}_seconds`` for the block (trio's clock) once it ends without an error;
    with ``sched`` (and the kernel saying), also ``{name}_cpu_seconds``, the time the node's
    thread ran in it, and ``{name}_queue_seconds``, the time it waited runnable for a CPU
    (the rest it slept: waiting on a peer, a lock or a socket)."""
    start = trio.current_time()
    before = sched() if sched is not None else None
    yield
    record[f"{name}_seconds"] = trio.current_time() - start
    after = sched() if sched is not None and before is not None else None
    if before is not None and after is not None:
        record[f"{name}_cpu_seconds"] = after[0] - before[0]
        record[f"{name}_queue_seconds"] = after[1] - before[1]
