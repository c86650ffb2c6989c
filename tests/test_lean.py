"""A node loads only what it uses: checked in fresh interpreters (``sys.modules`` after the
node is built as ``gossipfl node`` builds it, up to before the network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import trio
from sim_scenarios import metrics, scenario_text, simulated

from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.framing import READ_CHUNK, BufferedReader, StreamClosed, read_frame
from gossipfl.gossip.wire import Ack, encode_frame
from gossipfl.node.round import evaluates
from gossipfl.report import write_report_html

ROOT = Path(__file__).resolve().parents[1]

#: never in a node on a user's npz file with privacy, secure aggregation and metrics off
NOT_LOADED = (
    "sklearn",  # only for the bundled datasets' files (and not even imported for those)
    "matplotlib", "gossipfl.report",  # report.html is the runner's and the CLI's
    "gossipfl.scenario",  # the runner's
    "scipy", "dp_accounting", "gossipfl.privacy.accountant",  # DP on only
    "gossipfl.crypto.secagg", "gossipfl.crypto.shamir",  # secure aggregation on only
    "gossipfl.node.secure_round", "gossipfl.node.secure_inputs",
    "gossipfl.adversary.roles", "gossipfl.adversary.byzantine",  # an adversary's only
    "gossipfl.adversary.aggregator", "gossipfl.adversary.flood",
)

BUILD_NODE = """
import json, sys
from pathlib import Path
from gossipfl.config import NodeConfig, from_dict
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.adversary.factory import make_role
from gossipfl.node.learner import LocalLearner
from gossipfl.node.main import configure_logging
from gossipfl.node.prom import MetricsServer
from gossipfl.node.runtime import Node
import gossipfl.node.round

tmp = sys.argv[1]
config = from_dict(NodeConfig, {{"data": {{"dataset": "npz", "path": tmp + "/data.npz",
                                         "partition": "none"}},
                                "model": {{"name": "mlp", "hidden": [8]}},
                                "out_dir": tmp + "/out", "key_file": tmp + "/node.key"}})
identity, _ = load_or_create_identity(config.key_file)
configure_logging(Path(tmp) / "out", "node 0")
learner = LocalLearner(config)
learner.evaluate(learner.train(learner.initial_vector(), 0).vector)
node = Node(config, identity, learner, make_role(config.adversary))
with MetricsServer(node.prom, config.metrics_port, config.metrics_addr) as metrics:
    metrics.started()
node.prom.update({{"round": 0, "test_accuracy": 0.5}})
names = {names!r}
print(json.dumps([n for n in names if n in sys.modules]))
"""


def _fresh(code: str, *args: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_node_on_an_npz_file_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_train=rng.normal(size=(40, 6)).astype(np.float32),
             y_train=np.arange(40) % 3)
    loaded = _fresh(BUILD_NODE.format(names=NOT_LOADED), str(tmp_path))
    assert loaded == []


def test_node_metrics_load_prometheus_client_only_for_a_registry() -> None:
    # (py-libp2p's resource manager imports prometheus_client itself; gossipfl does not)
    code = """
import json, sys
from gossipfl.node.prom import MetricsServer, NodeMetrics
metrics = NodeMetrics(0, "peer")
metrics.update({"round": 3, "test_accuracy": None})
with MetricsServer(metrics, 0) as server:
    server.started()
before = "prometheus_client" in sys.modules
families = {f.name for f in metrics.registry.collect()}
print(json.dumps([before, "prometheus_client" in sys.modules, "gossipfl_round" in families]))
"""
    assert _fresh(code) == [False, True, True]


def test_evaluation_cadence_every_k_rounds_and_always_at_the_end() -> None:
    chosen = [r for r in range(12)
              if evaluates(r, 4, last_training=9, last=11, ending=False)]
    assert chosen == [0, 4, 8, 9, 11]
    assert [r for r in range(6) if evaluates(r, 1, last_training=9, last=40,
                                             ending=False)] == list(range(6))
    assert evaluates(5, 4, last_training=9, last=40, ending=True)  # the final model


def test_a_run_with_eval_every_has_null_accuracy_on_skipped_rounds(tmp_path: Path,
                                                                  pool) -> None:
    text = scenario_text(name="cadence", nodes=4, rounds=7).replace(
        "local_epochs = 1", "local_epochs = 1\neval_every = 3")
    report = simulated(tmp_path, text, pool)
    for index in range(4):
        lines = metrics(tmp_path, index)
        evaluated = [m["round"] for m in lines if m["test_accuracy"] is not None]
        assert lines[-1]["test_accuracy"] is not None  # the final model, always
        assert {0, 3, 6} <= set(evaluated)  # every third round and the last training round
        skipped = [m for m in lines if m["test_accuracy"] is None]
        assert skipped and all(m["eval_seconds"] == 0.0 and m["round"] % 3 != 0
                               and m["round"] != lines[-1]["round"] for m in skipped)
        node = report["nodes"][index]
        assert node["final_accuracy"] == lines[-1]["test_accuracy"] > 0.5
        assert node["accuracy"] == [m["test_accuracy"] for m in lines if m["round"] in evaluated]
    html = write_report_html(tmp_path / "out")  # the plots join over the skipped rounds
    assert "series-accuracy-0" in Path(html).read_text()


def test_the_compile_cache_folder_flag_then_environment_then_the_users_cache(
        monkeypatch, tmp_path: Path) -> None:
    from gossipfl.node.compile_cache import ENV, cache_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv(ENV, raising=False)
    assert cache_folder(None) == str(tmp_path / "gossipfl" / "xla")
    monkeypatch.setenv(ENV, "/run/cache")
    assert cache_folder(None) == "/run/cache"
    assert cache_folder("/mine") == "/mine"
    assert cache_folder("off") is None and cache_folder("") is None
    monkeypatch.setenv(ENV, "OFF")
    assert cache_folder(None) is None


class _Stream:
    """A stream holding ``data``, answering each read with up to the bytes asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[int | None] = []

    async def read(self, n: int | None = None) -> bytes:
        self.reads.append(n)
        size = len(self.data) if n is None else n
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_frames_are_read_in_chunks_and_what_is_left_waits_for_the_next() -> None:
    acks = [Ack(federation="f", round=r, sender="12D3KooW", status=AckCode.OK, reason="")
            for r in range(50)]
    frames = b"".join(encode_frame(a) for a in acks)

    def read_all(ahead: bool) -> tuple[list[int], list[int | None]]:
        stream = _Stream(frames)
        reader = BufferedReader(stream)
        reader.ahead = ahead

        async def main() -> list[int]:
            got = [(await read_frame(reader, Ack, 1 << 10))[0].round for _ in acks]
            try:
                await read_frame(reader, Ack, 1 << 10)
            except StreamClosed:
                got.append(-1)  # the end, between frames
            return got

        return trio.run(main), stream.reads

    rounds, reads = read_all(ahead=True)  # a member's channel
    assert rounds == [*range(50), -1]
    assert reads == [READ_CHUNK, READ_CHUNK]  # 50 frames in one read, then the end
    rounds, reads = read_all(ahead=False)  # anyone else's: exactly header, body, header...
    assert rounds == [*range(50), -1]
    assert len(reads) == 101 and reads[0] == 4 and all(n is not None and n < 100 for n in reads)
