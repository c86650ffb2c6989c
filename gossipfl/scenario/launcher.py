"""Start many node processes cheaply on one machine: import once, then fork one process per node.

Each node is still its own OS process (own pid, memory, event loop, libp2p host and key); only
the start-up is shared: the launcher imports JAX, libp2p and gossipfl once (about a second of CPU
and most of a node's memory, shared copy-on-write by the children) and forks. Nothing that starts
threads runs before the fork: JAX is imported but its backend is not initialised. A first child
compiles the training and evaluation steps into JAX's on-disk compilation cache, so the node
children load them instead of each compiling the same code.

Usage (by the scenario runner):
``python -m gossipfl.scenario.launcher STATE.json [--netns=PATH...] NODE.toml...``; with
``--netns`` (one per node, in order), each child enters its network namespace (see
:mod:`gossipfl.scenario.netns`) before it opens a socket. The launcher writes the children's
pids to STATE.json, reaps them, and records their exit codes there, so the runner can watch and
signal nodes it did not fork itself.

:func:`fork_launcher` starts the launcher by forking the caller (``gossipfl run``, which has
imported the same modules already) instead of a fresh interpreter, when that is safe: one thread,
no JAX backend yet. That spares a run the second import (about a second on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.node.compile_cache import cache_folder, warm_marker, warm_up

if TYPE_CHECKING:
    from gossipfl.config import NodeConfig
    from gossipfl.node.learner import LearnerPool


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def _child(run: Any) -> None:
    """Run ``run()`` in this forked child and leave with its exit code, never returning."""
    code = 1
    try:
        os.setsid()
        code = int(run() or 0)
    except SystemExit as error:
        code = error.code if isinstance(error.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _redirect(path: Path) -> None:
    """This (forked) process's output, descriptors 1 and 2 and Python's ``sys.stdout`` and
    ``sys.stderr``, into ``path``: a caller may have pointed its ``sys.stderr`` elsewhere than
    descriptor 2 (pytest's capture does), where a node's warnings and a traceback that ends it
    would otherwise go."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (the process's own)
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace",  # noqa: SIM115
                      closefd=False)


class LauncherProcess:
    """A launcher forked from this process, with the part of Popen's interface the runner uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1  # reaped elsewhere: gone
                return self.returncode
            if pid == self.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        import subprocess
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("launcher", timeout or 0.0)
            time.sleep(0.02)
        return code

    def kill(self) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)


def fork_safe() -> bool:
    """Whether this process may fork a launcher: no other thread, no JAX backend started."""
    if threading.active_count() > 1:
        return False
    bridge = sys.modules.get("jax._src.xla_bridge")
    return not getattr(bridge, "_backends", None)


def _release_inherited() -> None:
    """Point every descriptor the caller had open (above stderr) at /dev/null, so that none of
    its sockets or files stays held by the launcher and the nodes (a relay's listening socket
    must close when the relay does). Not closed: a Python object of the caller that still owns
    the number would close whatever a later open put there."""
    try:
        numbers = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in numbers:
        if fd > 2 and fd != null:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
                os.dup2(null, fd)
    os.close(null)


def fork_launcher(argv: list[str], log_path: Path, env: dict[str, str]) -> LauncherProcess | None:
    """Fork this process into the launcher (``main(argv)``, its output in ``log_path``, ``env``
    added to its environment); None where forking is not safe (:func:`fork_safe`): the caller
    then starts ``python -m gossipfl.scenario.launcher`` instead."""
    if not hasattr(os, "fork") or not fork_safe():
        return None
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return LauncherProcess(pid)
    os.environ.update(env)
    _redirect(log_path)
    _release_inherited()
    platforms = env.get("JAX_PLATFORMS")
    if platforms and "jax" in sys.modules:  # jax read the variable at import: tell it now
        sys.modules["jax"].config.update("jax_platforms", platforms)
    _child(lambda: main(argv))
    raise AssertionError("unreachable")  # _child leaves with os._exit


def run_in(netns: str | None, run: Callable[[], Any]) -> Any:
    """``run()`` in this (forked) child, inside the network namespace ``netns`` when given."""
    if netns:
        from gossipfl.scenario.netns import enter_netns

        enter_netns(netns)
    return run()


def shared_data(configs: list[NodeConfig], cache: str | None = None) -> LearnerPool | None:
    """The data set and every node's partition, loaded once here before the fork (numpy only:
    no JAX backend) so that no child parses the file again (a generated one kept in ``cache``,
    :mod:`gossipfl.learning.generated`); None when the nodes read data of their own (a file
    each: loaded here, every child's resident set would hold them all) or it cannot be loaded
    (each child then says why, in its own log)."""
    from gossipfl.node.learner import LearnerPool, data_key

    if not configs or len({data_key(c) for c in configs}) != 1:
        return None
    pool = LearnerPool(data_cache=cache)
    try:
        for config in configs:
            pool.indices(config, pool.dataset(config))
    except (OSError, ValueError, ImportError):  # each child meets it again and says why
        return None
    return pool


def main(argv: list[str]) -> int:
    state_path = Path(argv[0])
    namespaces = [a.removeprefix("--netns=") for a in argv[1:] if a.startswith("--netns=")]
    config_paths = [Path(a) for a in argv[1:] if not a.startswith("--netns=")]
    if namespaces and len(namespaces) != len(config_paths):
        raise SystemExit(f"launcher: {len(namespaces)} --netns for {len(config_paths)} nodes")
    from gossipfl.config import NodeConfig, from_dict, load_toml

    configs = [from_dict(NodeConfig, load_toml(p)) for p in config_paths]
    # the heavy imports, shared by every child (no JAX backend, no threads yet)
    import gossipfl.node.learner
    import gossipfl.node.main
    import gossipfl.node.round
    import gossipfl.node.runtime

    if any(c.privacy.enabled for c in configs):
        import gossipfl.privacy.accountant  # dp-accounting and SciPy, imported once
    cache = cache_folder(None)
    data = shared_data(configs, cache)
    if cache:
        marker = warm_marker(cache, configs[0])
        if not marker.exists():  # else the machine compiled these steps before: load them
            pid = os.fork()
            if pid == 0:
                _redirect(state_path.with_name("warmup.log"))
                _child(lambda: warm_up(configs[0], cache, data))
            _, status = os.waitpid(pid, 0)
            if os.waitstatus_to_exitcode(status) == 0:
                marker.touch()

    pids: dict[int, int] = {}
    for number, (config, path) in enumerate(zip(configs, config_paths, strict=True)):
        index = config.node_index
        netns = namespaces[number] if namespaces else None
        pid = os.fork()
        if pid == 0:
            _redirect(path.with_name("stdout.log"))
            _child(lambda config=config, netns=netns: run_in(
                netns, lambda: gossipfl.node.main.run_node(config, compile_cache=cache,
                                                           data=data)))
        pids[pid] = index
    state: dict[str, Any] = {"launcher_pid": os.getpid(),
                             "pids": {str(i): p for p, i in pids.items()}, "exit_codes": {}}
    _write_state(state_path, state)
    while pids:
        pid, status = os.wait()
        index = pids.pop(pid, None)
        if index is None:
            continue
        code = os.waitstatus_to_exitcode(status)
        state["exit_codes"][str(index)] = code
        _write_state(state_path, state)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
