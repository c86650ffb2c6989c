"""JAX's on-disk compilation cache for node processes: the training and evaluation steps are
compiled once per cache folder (a machine, a run), and every later node process loads them.

Loading instead of compiling saves a node process most of its start-up before round 0 (about
a second of CPU here) and the memory the compiler's code and data take (XLA's LLVM back end:
some 50 MB of its peak resident set). Where a node looks: ``gossipfl node --compile-cache DIR``,
else the environment variable ``GOSSIPFL_COMPILE_CACHE`` (which ``gossipfl run`` sets for the
nodes it starts), else ``$XDG_CACHE_HOME/gossipfl/xla`` (``~/.cache/gossipfl/xla``); ``off``
(or an empty value) compiles in memory only, as JAX does by default.

``python -m gossipfl.node.compile_cache NODE.toml`` compiles one node's steps into the folder
named by ``GOSSIPFL_COMPILE_CACHE`` (the runner's warm-up before it spawns node processes, so
that they do not all compile the same code at once).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ENV = "GOSSIPFL_COMPILE_CACHE"
OFF = ("", "off")
#: cache every compilation, however small and quick (a node's steps compile in well under the
#: default threshold of one second, and model initialisation is many tiny ones)
SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": 0,
}


def default_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "gossipfl" / "xla")


def cache_folder(flag: str | None) -> str | None:
    """The folder a node caches into (None: off): the flag, the environment, the default."""
    value = flag if flag is not None else os.environ.get(ENV)
    if value is None:
        value = default_folder()
    return None if value.strip().lower() in OFF else value


def enable_compile_cache(directory: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", directory)
    for key, value in SETTINGS.items():
        jax.config.update(key, value)


def warm_up(config: Any) -> None:
    """Compile one node's train and evaluate steps (into the cache, when one is enabled)."""
    from gossipfl.node.learner import LocalLearner

    learner = LocalLearner(config)
    vector = learner.train(learner.initial_vector(), 0).vector
    learner.evaluate(vector)


def main(argv: list[str]) -> int:
    from gossipfl.config import NodeConfig, from_dict, load_toml

    folder = cache_folder(None)
    if folder is None or len(argv) != 1:
        print(f"usage: {ENV}=DIR python -m gossipfl.node.compile_cache NODE.toml",
              file=sys.stderr)
        return 2
    enable_compile_cache(folder)
    warm_up(from_dict(NodeConfig, load_toml(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
