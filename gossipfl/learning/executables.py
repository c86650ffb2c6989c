"""A node's own cache of compiled steps: each jitted step (training, evaluation, optimiser
initialisation) is compiled once per machine folder and stored as XLA's serialised executable;
a later process loads it without lowering the step at all.

Why not only JAX's persistent compilation cache: JAX looks an entry up by a key it computes from
the step's lowered (MLIR) module, so every process lowers every step, and the lowering machinery
(MLIR's Python bindings and the parts of ``libjax_common.so`` they touch) stays resident: some
20-30 MB of a node's peak memory for the sake of a cache hit. Here the key is computed from the
step's jaxpr (tracing only, pure Python), so a warm process never lowers or compiles anything.

The key covers what decides the compiled code: the step's name and jaxpr (its operations, the
shapes and dtypes of its inputs, the values of the constants it closes over), the argument tree,
JAX's and jaxlib's versions, the backend's platform and version, ``XLA_FLAGS``, and the host's
CPU (architecture and feature flags: XLA compiles for the CPU it runs on).

A step jitted with a ``context`` (what it closes over beyond gossipfl's own code: the trainer
passes its model's build arguments and its training configuration) is also found without
tracing: a second, quick key (the step's name and context, its arguments' tree, shapes and
dtypes, a digest of gossipfl's source files, the versions of the libraries a step calls, JAX's
settings that change a trace, and the environment above) names an index file that holds the
full key. Tracing a node's steps cost some 0.15 s of CPU at every start; a warm process now
reads one small file a step instead. A quick key that finds no index, or an index whose entry
is gone or unreadable, falls back to tracing (and writes the index anew): slower, never wrong.
What the quick key cannot see is a step whose code changed outside gossipfl's source with the
same context, hence the library versions in it.

An entry is code: loading one runs what it holds. So the folder is created owner-only (0700),
entries are written owner-only (0600) by rename, and a folder that another user owns or that
others may write to is refused (logged; the steps are then compiled in memory). An entry that
cannot be read is logged, compiled anew and replaced. Entries are stored only from a fresh
compilation: with JAX's persistent cache enabled in the same process, an executable JAX loaded
from its cache does not serialise whole, so nothing is stored then.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import platform
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

log = logging.getLogger("gossipfl.executables")

#: bump when the entry format changes (old entries are then simply never looked up)
FORMAT = 1
SUFFIX = ".xla"
INDEX_SUFFIX = ".key"  # a quick key's index file: the full key of its entry
#: JAX settings that change what a step traces to (so part of the quick key)
TRACE_SETTINGS = ("jax_enable_x64", "jax_default_matmul_precision", "jax_numpy_rank_promotion",
                  "jax_numpy_dtype_promotion", "jax_default_prng_impl",
                  "jax_threefry_partitionable")


def _cpu_fingerprint() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))),
                 "")
    return f"{platform.machine()}|{flags}"


def environment_key() -> str:
    """What, beside the step itself, decides the compiled code on this machine."""
    import jaxlib

    backend = jax.devices()[0].client
    return "|".join([f"format {FORMAT}", jax.__version__, jaxlib.__version__,
                     backend.platform, backend.platform_version,
                     os.environ.get("XLA_FLAGS", ""), _cpu_fingerprint()])


def step_key(name: str, closed_jaxpr: Any, in_tree: Any, environment: str) -> str:
    """The entry's name: a digest of the step's name, jaxpr, constants and argument tree."""
    digest = hashlib.sha256()
    for part in (name, str(closed_jaxpr.jaxpr), str(in_tree), environment):
        digest.update(part.encode())
        digest.update(b"\0")
    for const in closed_jaxpr.consts:
        array = np.asarray(const)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:40]


def source_digest() -> str:
    """A digest of gossipfl's own source files (every ``.py`` file of the package)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def quick_key(name: str, context: str, signature: str, environment: str, source: str) -> str:
    """The index's name for a step jitted with ``context`` (see the module docstring)."""
    import optax

    settings = [f"{flag}={getattr(jax.config, flag, None)}" for flag in TRACE_SETTINGS]
    digest = hashlib.sha256()
    for part in (name, context, signature, environment, source, optax.__version__,
                 np.__version__, *settings):
        digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:40]


def _is_key(text: str) -> bool:
    return len(text) == 40 and all(c in "0123456789abcdef" for c in text)


def usable_folder(folder: Path) -> str | None:
    """None when ``folder`` may hold executables (made owner-only if new), else why not."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.stat()
    except OSError as error:
        return f"cannot make {folder}: {error}"
    if info.st_uid != os.getuid():
        return f"{folder} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others may write to {folder} (mode {stat.filemode(info.st_mode)})"
    return None


def _jax_cache_on() -> bool:
    return bool(jax.config.jax_compilation_cache_dir) and bool(
        jax.config.jax_enable_compilation_cache)


class ExecutableCache:
    """Compiled steps kept in ``folder`` (see the module docstring). :meth:`jit` wraps a step
    as ``jax.jit`` would; ``hits``, ``misses`` and ``stored`` count entries loaded, compiled
    and written by this process, ``traced`` the steps it traced to find their entry."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.refused = usable_folder(self.folder)
        if self.refused:
            log.warning("executable cache off: %s; steps are compiled in memory", self.refused)
        self.hits = self.misses = self.stored = self.traced = 0
        self._environment: str | None = None
        self._source: str | None = None

    def environment(self) -> str:
        if self._environment is None:
            self._environment = environment_key()
        return self._environment

    def source(self) -> str:
        if self._source is None:
            self._source = source_digest()
        return self._source

    def jit(self, fn: Callable[..., Any], name: str,
            context: str | None = None) -> Callable[..., Any]:
        """``fn`` compiled once per argument signature, loaded from the folder when there;
        with ``context`` (everything ``fn`` closes over beyond gossipfl's source, as text),
        found without tracing once an earlier process has traced it."""
        if self.refused:
            return jax.jit(fn)
        return _CachedStep(self, fn, name, context)

    def read_index(self, quick: str) -> str | None:
        """The full key a quick key's index names (None: no index, or not a key)."""
        try:
            text = (self.folder / f"{quick}{INDEX_SUFFIX}").read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text if _is_key(text) else None

    def write_index(self, quick: str, key: str) -> None:
        path = self.folder / f"{quick}{INDEX_SUFFIX}"
        temporary = path.with_name(f".{quick}.{os.getpid()}.{threading.get_ident()}")
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                file.write(key)
            os.replace(temporary, path)
        except OSError as error:
            log.warning("executable cache: cannot store the index %s: %s", path.name, error)
            temporary.unlink(missing_ok=True)

    def load(self, key: str) -> Any | None:
        path = self.folder / f"{key}{SUFFIX}"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            log.warning("executable cache: cannot read %s: %s", path.name, error)
            return None
        from jax.experimental.serialize_executable import deserialize_and_load

        try:
            serialized, in_tree, out_tree = pickle.loads(blob)  # the folder is owner-only
            return deserialize_and_load(serialized, in_tree, out_tree)
        except Exception as error:  # a truncated or foreign entry: compile anew
            log.warning("executable cache: entry %s unreadable (%s: %s); compiling it again",
                        path.name, type(error).__name__, error)
            return None

    def store(self, key: str, compiled: Any) -> bool:
        from jax.experimental.serialize_executable import serialize

        path = self.folder / f"{key}{SUFFIX}"
        temporary = path.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}")
        try:
            blob = pickle.dumps(serialize(compiled))
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(blob)
            os.replace(temporary, path)
        except Exception as error:  # a full disk must not stop training
            log.warning("executable cache: cannot store %s: %s", path.name, error)
            temporary.unlink(missing_ok=True)
            return False
        self.stored += 1
        return True


class _CachedStep:
    """One step: a compiled executable per argument signature (tree, shapes, dtypes)."""

    def __init__(self, cache: ExecutableCache, fn: Callable[..., Any], name: str,
                 context: str | None = None) -> None:
        self.cache, self.fn, self.name, self.context = cache, fn, name, context
        self.compiled: dict[tuple[Any, ...], Any] = {}
        self.lock = threading.Lock()

    def __call__(self, *args: Any) -> Any:
        leaves, tree = jax.tree_util.tree_flatten(args)
        signature = (tree, *((np.shape(x), np.result_type(x), bool(getattr(x, "weak_type", 0)))
                             for x in leaves))
        compiled = self.compiled.get(signature)
        if compiled is None:
            with self.lock:
                compiled = self.compiled.get(signature) or self._make(args, signature)
                self.compiled[signature] = compiled
        return compiled(*args)

    def _make(self, args: tuple[Any, ...], signature: tuple[Any, ...]) -> Any:
        cache = self.cache
        quick = None
        if self.context is not None:
            quick = quick_key(self.name, self.context, repr(signature), cache.environment(),
                              cache.source())
            known = cache.read_index(quick)
            compiled = cache.load(known) if known is not None else None
            if compiled is not None:
                cache.hits += 1
                return compiled
        cache.traced += 1
        closed = jax.make_jaxpr(self.fn)(*args)
        key = step_key(self.name, closed, jax.tree_util.tree_structure(args),
                       cache.environment())
        compiled = cache.load(key)
        if compiled is not None:
            cache.hits += 1
            stored = True
        else:
            cache.misses += 1
            compiled = jax.jit(self.fn).lower(*args).compile()
            stored = not _jax_cache_on() and cache.store(key, compiled)
        if quick is not None and stored:
            cache.write_index(quick, key)
        return compiled


__all__ = ["ExecutableCache", "environment_key", "quick_key", "source_digest", "step_key",
           "usable_folder"]
