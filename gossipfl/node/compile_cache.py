"""Where a machine keeps its compiled steps, so that a model's steps are compiled once per
machine and every later process loads them.

A node process (``gossipfl node``, and each node ``gossipfl run`` forks or spawns) keeps its steps
in gossipfl's own executable cache, the folder's ``steps/`` (:mod:`gossipfl.learning.executables`):
a warm node neither lowers nor compiles anything, which spares it XLA's compiler and the lowering
machinery (its round 0 took 1.3 s instead of 5.4 s with JAX's cache in one run here, and the
compiler's code and data are some 70 MB of a peak resident set); ``gossipfl estimate``'s
calibration loads its steps the same way. (``gossipfl simulate``, many nodes in one process,
compiles each step once in memory.)

Where they look: ``gossipfl node --compile-cache DIR``, else the environment variable
``GOSSIPFL_COMPILE_CACHE`` (which ``gossipfl run`` sets for the nodes it spawns), else
``$XDG_CACHE_HOME/gossipfl/xla`` (``~/.cache/gossipfl/xla``); ``off`` (or an empty value)
compiles in memory only, as JAX does by default. Nodes that start together on an empty cache
each compile and write the same entries (written by rename: a reader sees a whole entry or
none); every later node loads them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ENV = "GOSSIPFL_COMPILE_CACHE"
OFF = ("", "off")
def default_folder() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "gossipfl" / "xla")


def cache_folder(flag: str | None) -> str | None:
    """The folder a node caches into (None: off): the flag, the environment, the default."""
    value = flag if flag is not None else os.environ.get(ENV)
    if value is None:
        value = default_folder()
    return None if value.strip().lower() in OFF else value


STEPS = "steps"  # the executable cache's subfolder


def node_executables(folder: str | None) -> Any:
    """A node process's executable cache in ``folder`` (None: off).

    Where the folder is usable, JAX's own persistent cache is turned off in this process (a
    node's, a warm-up's or a calibration's: each a process of its own): with it on (a
    ``JAX_COMPILATION_CACHE_DIR`` in the environment), an executable JAX loaded from its cache
    does not serialise whole, so nothing was stored here, and every later process lowered and
    traced every step again (measured, a quickstart node's learner and warm-up in a fresh
    interpreter: 0.44-0.47 s of CPU and 204 MB peak with JAX's cache warm, 0.14-0.17 s and
    182 MB with this one)."""
    if folder is None:
        return None
    import jax

    from gossipfl.learning.executables import ExecutableCache

    cache = ExecutableCache(Path(folder) / STEPS)
    if not cache.refused:
        jax.config.update("jax_enable_compilation_cache", False)
    return cache


#: the parts of a node's configuration its compiled steps depend on (model, optimiser, data
#: shapes, DP); the rest (keys, addresses, folders, the node's own index) does not change them
WARM_SECTIONS = ("data", "model", "train", "privacy", "node_count", "seed")
#: the steps :func:`warm_up` compiles, as a version in the marker's name: a change to that set
#: (2: the chunk of training steps; 3: the chunk alone, its count an argument) must not find
#: an older marker and skip the warm-up, which
#: left every node of a run compiling the new step itself (measured: one quickstart run's
#: training 31 s of the nodes' wall, against 3-9 s)
WARM_STEPS = 3


def warm_marker(folder: str, config: Any) -> Path:
    """The file that says ``folder`` holds the steps :func:`warm_up` compiles for ``config``
    (and JAX's version): a launcher that finds it skips the warm-up. Should the cache have
    been emptied since, nodes compile what they miss themselves: slower, never wrong."""
    import hashlib
    import json

    import jax

    from gossipfl.config import to_dict

    settings = to_dict(config)
    key = json.dumps({"jax": jax.__version__, "steps": WARM_STEPS,
                      **{k: settings[k] for k in WARM_SECTIONS}}, sort_keys=True, default=str)
    return Path(folder) / f"gossipfl-warm-{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def warm_up(config: Any, folder: str | None = None, data: Any = None) -> None:
    """Compile one node's steps into ``folder``'s executable cache (as a node would; ``data``:
    the launcher's :class:`~gossipfl.node.learner.LearnerPool` of the loaded data set)."""
    from gossipfl.node.learner import LocalLearner

    learner = LocalLearner(config, pool=data, executables=node_executables(folder))
    learner.prepare()
    vector = learner.train(learner.initial_vector(), 0).vector
    learner.evaluate(vector)
