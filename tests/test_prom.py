"""Live metrics (gossipfl.node.prom): a node's registry shows its last metrics.jsonl record,
registries of nodes in one process are apart, ports are checked, a busy port is logged."""

from __future__ import annotations

import logging
import math
import socket
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gossipfl.cli import main
from gossipfl.config import ConfigError, NodeConfig
from gossipfl.gossip.codes import NodeStatus
from gossipfl.node.prom import METRIC_NAMES, PHASES, MetricsServer, NodeMetrics
from gossipfl.node.runtime import Node
from gossipfl.scenario.config import ScenarioConfig

PEER = "12D3KooWTestPeer"
LABELS = {"node": "4", "peer_id": PEER}

RECORD: dict[str, Any] = {
    "round": 7, "phase": "train", "train_loss": 0.31, "test_loss": 0.42, "test_accuracy": 0.875,
    "disagreement": 0.0123, "degree": 3, "neighbours": ["a", "b", "c"],
    "bytes_sent": 1000, "bytes_received": 2000, "messages_sent": 11, "messages_received": 12,
    "rejected": {"stale": 2, "not_member": 5}, "timeouts": 4, "peak_rss_bytes": 123_456_789,
    "epsilon": 1.25,
}

#: metric → the value RECORD gives it (every listed metric but the phase and the live RSS)
EXPECTED = {
    "gossipfl_round": 7.0, "gossipfl_train_loss": 0.31, "gossipfl_test_loss": 0.42,
    "gossipfl_test_accuracy": 0.875, "gossipfl_disagreement": 0.0123,
    "gossipfl_neighbours": 3.0, "gossipfl_bytes_sent_total": 1000.0,
    "gossipfl_bytes_received_total": 2000.0, "gossipfl_messages_sent_total": 11.0,
    "gossipfl_messages_received_total": 12.0, "gossipfl_timeouts_total": 4.0,
    "gossipfl_peak_rss_bytes": 123_456_789.0, "gossipfl_epsilon": 1.25,
}


def value(metrics: NodeMetrics, name: str, **extra: str) -> float | None:
    return metrics.registry.get_sample_value(name, {**LABELS, **extra})


def test_a_record_sets_every_metric() -> None:
    metrics = NodeMetrics(4, PEER, dp=True)
    metrics.update(RECORD)
    metrics.set_phase(NodeStatus.TRAINING)
    for name, expected in EXPECTED.items():
        assert value(metrics, name) == pytest.approx(expected), name
    assert value(metrics, "gossipfl_rejections_total", reason="stale") == 2.0
    assert value(metrics, "gossipfl_rejections_total", reason="not_member") == 5.0
    assert value(metrics, "gossipfl_phase", phase="training") == 1.0
    assert value(metrics, "gossipfl_phase", phase="joining") == 0.0
    assert sum(value(metrics, "gossipfl_phase", phase=s.value) or 0 for s in PHASES) == 1.0
    assert value(metrics, "gossipfl_phase", phase="failed") is None  # never a running node's
    rss = value(metrics, "gossipfl_rss_bytes")
    assert rss is not None and rss > 1_000_000  # this process's resident set, live
    # every name the module lists has a sample for this node
    found = {s.name for family in metrics.registry.collect() for s in family.samples
             if s.labels["node"] == "4" and s.labels["peer_id"] == PEER}
    assert set(METRIC_NAMES) <= found


def test_unmeasured_values_keep_the_last_one_and_totals_follow_the_record() -> None:
    metrics = NodeMetrics(4, PEER, dp=True)
    metrics.update(RECORD)
    later = {**RECORD, "round": 8, "phase": "consensus", "train_loss": None,
             "test_loss": None, "test_accuracy": None, "disagreement": None,
             "bytes_sent": 1500, "rejected": {"stale": 3}}
    del later["epsilon"]  # a consensus round's record has none
    metrics.update(later)
    assert value(metrics, "gossipfl_round") == 8.0
    assert value(metrics, "gossipfl_test_accuracy") == 0.875  # last evaluated
    assert value(metrics, "gossipfl_train_loss") == pytest.approx(0.31)
    assert value(metrics, "gossipfl_epsilon") == 1.25
    assert value(metrics, "gossipfl_disagreement") == math.inf  # no neighbour estimate held
    assert value(metrics, "gossipfl_bytes_sent_total") == 1500.0
    assert value(metrics, "gossipfl_rejections_total", reason="stale") == 3.0


def test_before_the_first_round_and_without_dp() -> None:
    metrics = NodeMetrics(4, PEER)
    assert value(metrics, "gossipfl_round") == -1.0
    assert value(metrics, "gossipfl_bytes_sent_total") == 0.0
    accuracy = value(metrics, "gossipfl_test_accuracy")
    assert accuracy is not None and math.isnan(accuracy)
    assert value(metrics, "gossipfl_phase", phase="joining") == 1.0
    metrics.update(RECORD)
    assert value(metrics, "gossipfl_epsilon") is None  # DP off: no ε metric at all


def test_two_nodes_in_one_process_do_not_share_state() -> None:
    first, second = NodeMetrics(0, "peerA"), NodeMetrics(1, "peerB")
    first.update(RECORD)
    first.set_phase(NodeStatus.DONE)
    assert second.registry.get_sample_value(
        "gossipfl_round", {"node": "1", "peer_id": "peerB"}) == -1.0
    assert second.registry.get_sample_value(
        "gossipfl_phase", {"node": "1", "peer_id": "peerB", "phase": "joining"}) == 1.0
    assert second.registry.get_sample_value(
        "gossipfl_round", {"node": "0", "peer_id": "peerA"}) is None
    assert first.registry.get_sample_value(
        "gossipfl_round", {"node": "0", "peer_id": "peerA"}) == 7.0
    # nothing in the process-wide default registry
    assert REGISTRY.get_sample_value("gossipfl_round", {"node": "0", "peer_id": "peerA"}) is None


def test_the_node_feeds_its_metrics_from_its_record_and_status() -> None:
    # Node.write_metrics and the status setter, on a stand-in with just what they touch
    fake = types.SimpleNamespace(history=[], out=None, prom=NodeMetrics(4, PEER))

    class Out:
        def __truediv__(self, name: str) -> str:
            return "/dev/null"

    fake.out = Out()
    Node.write_metrics(fake, RECORD)  # type: ignore[arg-type]
    Node.status.fset(fake, "consensus")  # type: ignore[attr-defined]
    assert fake.history == [RECORD]
    assert value(fake.prom, "gossipfl_round") == 7.0
    assert value(fake.prom, "gossipfl_phase", phase="consensus") == 1.0


@pytest.mark.parametrize("port", [-1, 65536, 100_000])
def test_a_bad_port_is_a_clear_config_error(port: int) -> None:
    with pytest.raises(ConfigError, match=r"metrics_port must be 0 .off. or a TCP port 1-65535"):
        NodeConfig(metrics_port=port)
    with pytest.raises(ConfigError, match="metrics_port"):
        MetricsServer(NodeMetrics(0, "p"), port)


def test_a_bad_address_and_a_base_port_too_high_are_refused() -> None:
    with pytest.raises(ConfigError, match="metrics_addr must be an IP address"):
        NodeConfig(metrics_port=9100, metrics_addr="localhost:80")
    assert ScenarioConfig(nodes=3, metrics_port=65533).metrics_port == 65533
    with pytest.raises(ConfigError, match=r"metrics_port \+ i, so it must be 0 .off. or 1-65533"):
        ScenarioConfig(nodes=3, metrics_port=65534)


def test_the_cli_refuses_a_bad_port_in_one_line(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "--metrics-port", "70000", "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert "metrics_port must be 0 (off) or a TCP port 1-65535" in err
    assert len(err.strip().splitlines()) == 1
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "x"\nnodes = 4\n')
    assert main(["run", str(scenario), "--out", str(tmp_path / "o"), "--quiet",
                 "--metrics-port", "65534"]) == 2
    assert "1-65532 for 4 nodes" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was made


def test_a_busy_port_is_logged_and_the_node_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="gossipfl.node"), \
                MetricsServer(NodeMetrics(0, "p"), port) as server:
            server.started()  # what Node.run calls once it listens: never raises
            assert server.server is None
    assert f"metrics: cannot serve on 127.0.0.1 port {port}" in caplog.text
    assert "the node runs on without metrics" in caplog.text


def test_the_server_serves_the_registry_and_stops() -> None:
    metrics = NodeMetrics(4, PEER)
    metrics.update(RECORD)
    with MetricsServer(metrics, 0) as off:
        off.started()
        assert off.server is None  # port 0: off
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with MetricsServer(metrics, port) as server:
        server.started()
        assert server.server is not None
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    assert f'gossipfl_round{{node="4",peer_id="{PEER}"}} 7.0' in text
    assert 'gossipfl_rejections_total{node="4",peer_id="' in text
    with pytest.raises(urllib.error.URLError):  # closed with the block
        urllib.request.urlopen(url, timeout=2)


# -- end to end: real node processes, scraped over loopback during the run ---------------------

def free_base_port(count: int) -> int:
    """A base port below the kernel's usual ephemeral range with ``count`` free ports from it
    (bounded tries; a port could still be taken after the check, which the run would log)."""
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20_000, 30_000)
        sockets = []
        try:
            for offset in range(count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no free run of ports found")


def scrape(port: int) -> dict[str, list[Any]]:
    """Metric family name → its samples, from one node's /metrics (empty if not served)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except (OSError, urllib.error.URLError):
        return {}
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        # a counter family is named without _total, its samples with it
        name = f"{family.name}_total" if family.type == "counter" else family.name
        families.setdefault(name, []).extend(family.samples)
    return families


@pytest.mark.e2e
def test_a_run_serves_every_metric_for_every_node(tmp_path: Path) -> None:
    import json
    import threading
    import time

    from e2e_scenarios import BASE

    nodes = 3
    text = BASE.format(name="e2eprom", nodes=nodes, rounds=30, topology="full", degree=2,
                       round_timeout=10.0)
    text += '\n[privacy]\nenabled = true\nunit = "node"\ntarget_epsilon = 100.0\n'
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(text)
    base = free_base_port(nodes)
    result: dict[str, Any] = {}

    def run() -> None:
        result["code"] = main(["run", str(scenario), "--out", str(tmp_path / "out"), "--quiet",
                               "--no-centralised", "--metrics-port", str(base), "--no-html"])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    seen: dict[int, dict[str, list[Any]]] = {}
    deadline = time.monotonic() + 120
    while len(seen) < nodes and time.monotonic() < deadline and thread.is_alive():
        for index in set(range(nodes)) - set(seen):
            families = scrape(base + index)
            rounds = families.get("gossipfl_round", [])
            if rounds and rounds[0].value >= 1:
                seen[index] = families
        time.sleep(0.2)
    thread.join(timeout=240)
    assert not thread.is_alive()
    assert result["code"] == 0, result
    # gossipfl run --no-html: the report without its page
    assert (tmp_path / "out" / "report.json").exists()
    assert not (tmp_path / "out" / "report.html").exists()
    assert sorted(seen) == list(range(nodes)), "not every node was scraped at round >= 1"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for index, families in seen.items():
        entry = report["nodes"][index]
        labels = {"node": str(index), "peer_id": entry["peer_id"]}
        for name in METRIC_NAMES:
            assert name in families, (index, name)
            if name == "gossipfl_rejections_total":  # a reason appears once counted
                assert all(s.labels.items() >= labels.items() for s in families[name])
                continue
            mine = [s for s in families[name] if s.labels.items() >= labels.items()]
            assert mine, (index, name)
        one = {name: next(s for s in families[name] if s.labels.items() >= labels.items()).value
               for name in METRIC_NAMES if name not in ("gossipfl_phase",
                                                        "gossipfl_rejections_total")}
        assert one["gossipfl_neighbours"] == 2
        assert one["gossipfl_bytes_sent_total"] > 0 and one["gossipfl_epsilon"] > 0
        assert 0 <= one["gossipfl_test_accuracy"] <= 1
        assert one["gossipfl_rss_bytes"] > 0 and one["gossipfl_peak_rss_bytes"] > 0
        phase = {s.labels["phase"]: s.value for s in families["gossipfl_phase"]}
        assert sum(phase.values()) == 1 and phase["training"] + phase["consensus"] == 1
        # the same values as the metrics.jsonl line of that round (one source of truth)
        node_dir = tmp_path / "out" / "nodes" / f"node-{index:02d}"
        lines = [json.loads(line) for line in
                 (node_dir / "metrics.jsonl").read_text().splitlines()]
        line = next(r for r in lines if r["round"] == one["gossipfl_round"])
        assert line["bytes_sent"] == one["gossipfl_bytes_sent_total"]
        assert line["messages_received"] == one["gossipfl_messages_received_total"]
        assert line["epsilon"] == pytest.approx(one["gossipfl_epsilon"])
        log = (node_dir / "node.log").read_text()
        assert f"serving Prometheus metrics at http://127.0.0.1:{base + index}/metrics" in log
    # each server closed with its node
    assert all(scrape(base + index) == {} for index in range(nodes))


def test_simulate_says_it_serves_no_metrics(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from sim_scenarios import scenario_text

    scenario = tmp_path / "s.toml"
    scenario.write_text("metrics_port = 9100\n" + scenario_text(name="simprom", nodes=2,
                                                                  rounds=1, degree=1))
    assert main(["simulate", str(scenario), "--out", str(tmp_path / "o"), "--quiet",
                 "--no-centralised", "--epoch-seconds", "0.2", "--no-html"]) == 0
    assert "metrics_port is ignored" in capsys.readouterr().err
    # --no-html: the report, no page (tests/test_sim_faults.py checks the page is written)
    assert (tmp_path / "o" / "report.json").exists()
    assert not (tmp_path / "o" / "report.html").exists()


def test_flags_and_the_runner_give_each_node_its_port(tmp_path: Path) -> None:
    import argparse

    from gossipfl.cli import _node_overrides
    from gossipfl.config import from_dict, load_toml
    from gossipfl.scenario.runner import prepare_nodes

    flags = {name: None for name in ("listen", "bootstrap", "key_file", "federation",
                                     "node_index", "node_count", "rounds", "expect", "out",
                                     "dataset", "data_path", "partition", "model")}
    overrides = _node_overrides(argparse.Namespace(**flags, metrics_port=9100,
                                                   metrics_addr="::1"))
    config = from_dict(NodeConfig, overrides)
    assert (config.metrics_port, config.metrics_addr) == (9100, "::1")
    assert NodeConfig().metrics_port == 0  # off by default

    scenario = ScenarioConfig(nodes=3, metrics_port=9100)
    nodes = prepare_nodes(scenario, tmp_path, ports=[4001, 4002, 4003])
    assert [n.config.metrics_port for n in nodes] == [9100, 9101, 9102]
    written = [from_dict(NodeConfig, load_toml(tmp_path / "nodes" / f"node-0{i}" / "node.toml"))
               for i in range(3)]  # what a forked, spawned or restarted node reads
    assert [c.metrics_port for c in written] == [9100, 9101, 9102]
    off = prepare_nodes(ScenarioConfig(nodes=2), tmp_path / "off", ports=[4001, 4002])
    assert [n.config.metrics_port for n in off] == [0, 0]


def test_simulated_nodes_show_their_last_record(tmp_path: Path) -> None:
    # the real Node (write_metrics, its status) on the simulator: each node's registry ends
    # with its last metrics.jsonl line, ε included, and the phase done
    import json

    from sim_scenarios import scenario_text

    from gossipfl.config import from_dict, load_toml
    from gossipfl.scenario.observed import observe_scenario

    path = tmp_path / "s.toml"
    path.write_text(scenario_text(name="promsim", nodes=3, rounds=2, degree=2)
                    + '\n[privacy]\nenabled = true\nunit = "node"\ntarget_epsilon = 100.0\n')
    sim = observe_scenario(from_dict(ScenarioConfig, load_toml(path)), tmp_path / "out",
                           keep_vectors=False, key_seed=3)
    for index, node in sim.nodes.items():
        lines = (tmp_path / "out" / "nodes" / f"node-{index:02d}" / "metrics.jsonl"
                 ).read_text().splitlines()
        last = json.loads(lines[-1])
        labels = {"node": str(index), "peer_id": node.peer_id}

        def sample(name: str, labels: dict[str, str] = labels,
                   node: Any = node) -> float | None:
            return node.prom.registry.get_sample_value(name, labels)

        assert sample("gossipfl_round") == last["round"] >= 2
        assert sample("gossipfl_bytes_sent_total") == last["bytes_sent"] > 0
        assert sample("gossipfl_neighbours") == last["degree"] == 2
        assert sample("gossipfl_test_accuracy") == pytest.approx(last["test_accuracy"])
        assert sample("gossipfl_epsilon") == pytest.approx(node.budget.epsilon())
        assert node.budget.epsilon() > 0
        assert sample("gossipfl_phase", {**labels, "phase": "done"}) == 1.0
