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
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossipfl.node.compile_cache import enable_compile_cache, warm_up


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
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def run_in(netns: str | None, run: Callable[[], Any]) -> Any:
    """``run()`` in this (forked) child, inside the network namespace ``netns`` when given."""
    if netns:
        from gossipfl.scenario.netns import enter_netns

        enter_netns(netns)
    return run()


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

    cache = os.environ.get("GOSSIPFL_COMPILE_CACHE")
    if cache:
        enable_compile_cache(cache)
        pid = os.fork()
        if pid == 0:
            _redirect(state_path.with_name("warmup.log"))
            _child(lambda: warm_up(configs[0]))
        os.waitpid(pid, 0)

    pids: dict[int, int] = {}
    for number, (config, path) in enumerate(zip(configs, config_paths, strict=True)):
        index = config.node_index
        netns = namespaces[number] if namespaces else None
        pid = os.fork()
        if pid == 0:
            _redirect(path.with_name("stdout.log"))
            _child(lambda config=config, netns=netns: run_in(
                netns, lambda: gossipfl.node.main.run_node(config)))
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
