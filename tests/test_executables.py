"""gossipfl's own cache of compiled steps (gossipfl/learning/executables.py): a warm node process
neither traces, lowers nor compiles anything, entries are owner-only, a bad entry, index or folder
is logged and never trusted.

The pytest run enables JAX's persistent cache for every process it starts (tests/conftest.py),
and with it on the executable cache stores nothing (an executable JAX loaded from its cache does
not serialise whole), so what stores and loads runs in fresh interpreters without it."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gossipfl.learning import executables
from gossipfl.learning.executables import ExecutableCache, step_key, usable_folder

ROOT = Path(__file__).resolve().parents[1]

#: a fresh interpreter's start: numpy and JAX, and JAX's compile log kept in ``records``
COMPILE_LOG = """
import json, logging, sys
import jax, numpy as np
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("jax").addHandler(Keep())
logging.getLogger("jax").setLevel(logging.DEBUG)
jax.config.update("jax_log_compiles", True)
"""

NODE_STEPS = COMPILE_LOG + """
from gossipfl.config import NodeConfig, from_dict
from gossipfl.node.compile_cache import node_executables
from gossipfl.node.learner import LocalLearner
tmp = sys.argv[1]
config = from_dict(NodeConfig, {"data": {"dataset": "npz", "path": tmp + "/data.npz",
                                         "partition": "none"},
                                "model": {"name": "mlp", "hidden": [8]},
                                "train": {"optimizer": "momentum", "local_epochs": 2}})
cache = node_executables(tmp + "/cache")
learner = LocalLearner(config, executables=cache)
learner.prepare()
result = learner.train(learner.initial_vector(), 0)
evaluated = learner.evaluate(result.vector)
print(json.dumps({"hits": cache.hits, "misses": cache.misses, "stored": cache.stored,
                  "traced": cache.traced, "loss": result.loss, "accuracy": evaluated.accuracy,
                  "vector": [float(v) for v in result.vector[:20]],
                  "compiled": [m for m in records if m.startswith("Compiling")],
                  "lowered": [m for m in records if "MLIR" in m]}))
"""

UNIT = COMPILE_LOG + """
import os
import jax.numpy as jnp
from gossipfl.learning.executables import ExecutableCache
logging.getLogger("gossipfl.executables").addHandler(Keep())
warnings = records  # the cache's warnings among JAX's log
folder = sys.argv[1]
out = {}
def step(w, x):
    return jnp.tanh(x @ w).sum(axis=0)
w, x = np.ones((3, 2), np.float32), np.arange(12, dtype=np.float32).reshape(4, 3) / 10
first = ExecutableCache(folder)
out["first"] = np.asarray(first.jit(step, "s")(w, x)).tolist()
out["jit"] = np.asarray(jax.jit(step)(w, x)).tolist()
second = ExecutableCache(folder)
fn = second.jit(step, "s")
out["second"] = np.asarray(fn(w, x)).tolist()
out["other_shape"] = np.asarray(fn(w, x[:2])).tolist()
out["counts"] = [first.misses, first.stored, second.hits, second.misses, second.stored]
# two steps that differ only in the array they close over: two entries, each its own result
def closing(c):
    return lambda x: x @ c
third = ExecutableCache(folder)
a = third.jit(closing(np.eye(3, dtype=np.float32)), "c")(x)
b = third.jit(closing(2 * np.eye(3, dtype=np.float32)), "c")(x)
out["consts"] = [np.allclose(a, x), np.allclose(b, 2 * x), third.misses]
# a damaged entry: logged, compiled again, replaced
for name in os.listdir(folder):
    with open(os.path.join(folder, name), "r+b") as f:
        f.write(b"garbage")
fourth = ExecutableCache(folder)
out["damaged"] = np.asarray(fourth.jit(step, "s")(w, x)).tolist()
out["damaged_counts"] = [fourth.hits, fourth.misses, fourth.stored]
fifth = ExecutableCache(folder)
fifth.jit(step, "s")(w, x)
out["repaired_hits"] = fifth.hits
out["warnings"] = warnings
print(json.dumps(out))
"""


DP_STEPS = COMPILE_LOG + """
from gossipfl.learning.executables import ExecutableCache
from gossipfl.learning.models import build_model
from gossipfl.learning.params import flatten_params
from gossipfl.learning.train import DPSGD, TrainConfig, Trainer
cache = ExecutableCache(sys.argv[1])
model = build_model("mlp", (6,), 3, hidden=(8,))
trainer = Trainer(model, TrainConfig(optimizer="momentum"), cache)
rng = np.random.default_rng(0)
x = rng.normal(size=(200, 6)).astype(np.float32)
y = (np.arange(200) % 3).astype(np.int32)
params = model.init(0)
dp = DPSGD(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.3, rng=np.random.default_rng(1))
trained, _, loss = trainer.train(params, trainer.init_opt_state(params), x, y, epochs=1,
                                 seed=0, dp=dp)
print(json.dumps({"vector": flatten_params(trained).tolist(), "loss": loss,
                  "hits": cache.hits, "misses": cache.misses, "traced": cache.traced,
                  "compiled": [m for m in records if m.startswith("Compiling")]}))
"""


QUICK = COMPILE_LOG + """
import os
import jax.numpy as jnp
from gossipfl.learning import executables
from gossipfl.learning.executables import ExecutableCache
logging.getLogger("gossipfl.executables").addHandler(Keep())
folder = sys.argv[1]
out = {}
def step(w, x):
    return jnp.tanh(x @ w).sum(axis=0)
def other(w, x):
    return jnp.sin(x @ w).sum(axis=0)
w, x = np.ones((3, 2), np.float32), np.arange(12, dtype=np.float32).reshape(4, 3) / 10
def run(fn, context, *, source=None, args=(w, x)):
    cache = ExecutableCache(folder)
    if source is not None:
        cache._source = source
    result = np.asarray(cache.jit(fn, "s", context)(*args)).tolist()
    return result, [cache.traced, cache.hits, cache.misses, cache.stored]
out["jit"] = np.asarray(jax.jit(step)(w, x)).tolist()
out["other_jit"] = np.asarray(jax.jit(other)(w, x)).tolist()
out["cold"] = run(step, "a")
out["warm"] = run(step, "a")
out["other_shape"] = run(step, "a", args=(w, x[:2]))
out["no_context"] = run(step, None)
# another context: traced, and the trace finds the entry the first one stored
out["context_b"] = run(step, "b")
# the same name and context over changed source: traced, so the changed step is what runs
out["changed_source"] = run(other, "a", source="changed")
out["changed_again"] = run(other, "a", source="changed")
# an index that names no entry, or holds garbage: traced, right, and the index rewritten
indexes = sorted(n for n in os.listdir(folder) if n.endswith(executables.INDEX_SUFFIX))
out["indexes"] = len(indexes)
for name in indexes:
    with open(os.path.join(folder, name), "w") as f:
        f.write("0" * 40 if name == indexes[0] else "not a key")
out["bad_index"] = [run(step, "a"), run(step, "b")]
out["repaired"] = run(step, "a")
out["warnings"] = records
print(json.dumps(out))
"""


def _fresh(code: str, *args: str, jax_cache: str | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT")
           and k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    if jax_cache is not None:  # JAX's own persistent cache configured, every entry kept
        env.update(JAX_COMPILATION_CACHE_DIR=jax_cache,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_warm_node_process_neither_lowers_nor_compiles_and_learns_the_same(
        tmp_path: Path) -> None:
    """Both processes with JAX's own persistent cache configured too (as a user's
    JAX_COMPILATION_CACHE_DIR, or this test run's, would): a node turns it off in its process,
    so its own cache still stores, and a warm node still neither traces nor lowers (before
    2026-12-02 it stored nothing there and every start lowered and traced every step)."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.normal(size=(60, 6)).astype(np.float32),
             y_train=np.arange(60) % 3)
    jax_cache = str(tmp_path / "jax")
    cold = _fresh(NODE_STEPS, str(tmp_path), jax_cache=jax_cache)
    warm = _fresh(NODE_STEPS, str(tmp_path), jax_cache=jax_cache)
    # optimiser initialisation, the chunk of training steps, the evaluation step
    assert (cold["misses"], cold["stored"], cold["hits"], cold["traced"]) == (3, 3, 0, 3)
    assert cold["compiled"] and cold["lowered"]  # the cold process compiled them
    # the warm one found every step by its quick key: not even traced
    assert (warm["hits"], warm["misses"], warm["stored"], warm["traced"]) == (3, 0, 0, 0)
    assert warm["compiled"] == [] and warm["lowered"] == []
    assert warm["vector"] == cold["vector"] and warm["loss"] == cold["loss"]
    assert warm["accuracy"] == cold["accuracy"]
    folder = tmp_path / "cache" / "steps"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    entries = sorted(folder.iterdir())
    assert sorted(e.suffix for e in entries) == [".key"] * 3 + [".xla"] * 3
    assert all(stat.S_IMODE(e.stat().st_mode) == 0o600 for e in entries)
    # each index names an entry
    named = {e.read_text() for e in entries if e.suffix == ".key"}
    assert named == {e.stem for e in entries if e.suffix == ".xla"}
    assert not (tmp_path / "jax").exists() or not any((tmp_path / "jax").iterdir())


def test_dp_sgd_steps_load_warm_with_no_eager_op_and_the_same_draws(tmp_path: Path) -> None:
    cold = _fresh(DP_STEPS, str(tmp_path / "steps"))
    warm = _fresh(DP_STEPS, str(tmp_path / "steps"))
    assert (cold["misses"], cold["hits"]) == (2, 0)  # optimiser initialisation, DP step
    assert (warm["misses"], warm["hits"], warm["traced"], warm["compiled"]) == (0, 2, 0, [])
    assert warm["vector"] == cold["vector"] and warm["loss"] == cold["loss"]


def test_entries_per_signature_and_constant_and_a_damaged_one_is_compiled_again(
        tmp_path: Path) -> None:
    out = _fresh(UNIT, str(tmp_path / "steps"))
    assert out["first"] == out["jit"] == out["second"]
    assert len(out["other_shape"]) == 2
    # first: compiled and stored; second: loaded the same, compiled the new shape
    assert out["counts"] == [1, 1, 1, 1, 1]
    assert out["consts"] == [True, True, 2]
    assert out["damaged"] == out["jit"]
    assert out["damaged_counts"] == [0, 1, 1]
    assert out["repaired_hits"] == 1
    assert any("unreadable" in w for w in out["warnings"])


def test_a_folder_others_may_write_to_is_refused(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "open"
    folder.mkdir()
    folder.chmod(0o777)
    assert "others may write" in (usable_folder(folder) or "")
    with caplog.at_level(logging.WARNING, logger="gossipfl.executables"):
        cache = ExecutableCache(folder)
    assert cache.refused and "executable cache off" in caplog.text
    step = cache.jit(lambda x: x * 2, "double")
    assert np.asarray(step(np.arange(3, dtype=np.float32))).tolist() == [0.0, 2.0, 4.0]
    assert list(folder.iterdir()) == [] and cache.misses == 0


def test_nothing_is_stored_while_jaxs_own_cache_is_on(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executables, "_jax_cache_on", lambda: True)
    cache = ExecutableCache(tmp_path / "steps")
    step = cache.jit(lambda x: x + 1, "inc")
    assert np.asarray(step(np.zeros(2, np.float32))).tolist() == [1.0, 1.0]
    assert (cache.misses, cache.stored) == (1, 0)
    assert list((tmp_path / "steps").iterdir()) == []


def test_the_key_covers_the_environment_the_constants_and_the_tree() -> None:
    x = np.ones((2, 2), np.float32)
    one = jax.make_jaxpr(lambda v: v @ np.eye(2, dtype=np.float32))(x)
    two = jax.make_jaxpr(lambda v: v @ (3 * np.eye(2, dtype=np.float32)))(x)
    tree = jax.tree_util.tree_structure((x,))
    base = step_key("s", one, tree, "env")
    assert base == step_key("s", one, tree, "env")
    assert len({base, step_key("s", two, tree, "env"), step_key("s", one, tree, "env2"),
                step_key("t", one, tree, "env"),
                step_key("s", one, jax.tree_util.tree_structure(([x],)), "env")}) == 5
    shaped = jax.make_jaxpr(lambda v: jnp.sum(v))(np.ones(3, np.float32))
    assert step_key("s", shaped, tree, "env") != step_key(
        "s", jax.make_jaxpr(lambda v: jnp.sum(v))(np.ones(4, np.float32)), tree, "env")


def test_a_step_with_a_context_is_found_without_tracing_and_never_wrongly(
        tmp_path: Path) -> None:
    out = _fresh(QUICK, str(tmp_path / "steps"))
    # [traced, hits, misses, stored] of each fresh cache
    assert out["cold"] == [out["jit"], [1, 0, 1, 1]]
    assert out["warm"] == [out["jit"], [0, 1, 0, 0]]
    assert len(out["other_shape"][0]) == 2 and out["other_shape"][1] == [1, 0, 1, 1]
    assert out["no_context"] == [out["jit"], [1, 1, 0, 0]]  # traced, then loaded
    assert out["context_b"] == [out["jit"], [1, 1, 0, 0]]
    assert out["changed_source"] == [out["other_jit"], [1, 0, 1, 1]]
    assert out["changed_again"] == [out["other_jit"], [0, 1, 0, 0]]
    assert out["indexes"] == 4  # a, its other shape, b, a over the changed source
    for result, counts in out["bad_index"]:
        assert result == out["jit"] and counts[0] == 1 and counts[2] == 0
    assert out["repaired"] == [out["jit"], [0, 1, 0, 0]]
