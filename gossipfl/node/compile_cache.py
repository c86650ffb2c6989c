"""JAX's on-disk compilation cache for node processes: the training and evaluation steps are
compiled once per cache folder (a machine), and every later node process loads them.

Loading instead of compiling spares a node's first round the compilation (JAX compiles at
first use: its round 0 took 1.3 s instead of 5.4 s in one run here) and the node the memory
the compiler's code and data take (XLA's LLVM back end: some 70 MB of its peak resident set).

Where a node looks: ``gossipfl node --compile-cache DIR``, else the environment variable
``GOSSIPFL_COMPILE_CACHE`` (which ``gossipfl run`` sets for the nodes it spawns), else
``$XDG_CACHE_HOME/gossipfl/xla`` (``~/.cache/gossipfl/xla``); ``off`` (or an empty value)
compiles in memory only, as JAX does by default. Nodes that start together on an empty cache
each compile and write the same entries (JAX takes an entry it cannot read for a miss and
compiles); every later node loads them.
"""

from __future__ import annotations

import os
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


#: the parts of a node's configuration its compiled steps depend on (model, optimiser, data
#: shapes, DP); the rest (keys, addresses, folders, the node's own index) does not change them
WARM_SECTIONS = ("data", "model", "train", "privacy", "node_count", "seed")


def warm_marker(folder: str, config: Any) -> Path:
    """The file that says ``folder`` holds the steps :func:`warm_up` compiles for ``config``
    (and JAX's version): a launcher that finds it skips the warm-up. Should the cache have
    been emptied since, nodes compile what they miss themselves: slower, never wrong."""
    import hashlib
    import json

    import jax

    from gossipfl.config import to_dict

    settings = to_dict(config)
    key = json.dumps({"jax": jax.__version__, **{k: settings[k] for k in WARM_SECTIONS}},
                     sort_keys=True, default=str)
    return Path(folder) / f"gossipfl-warm-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def warm_up(config: Any) -> None:
    """Compile one node's train and evaluate steps (into the cache, when one is enabled)."""
    from gossipfl.node.learner import LocalLearner

    learner = LocalLearner(config)
    vector = learner.train(learner.initial_vector(), 0).vector
    learner.evaluate(vector)
