"""Tests for gossipfl.config (NodeConfig from plain data and TOML) and gossipfl.scenario.config."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    NodeConfig,
    ProtocolConfig,
    TopologyConfig,
    dump_toml,
    from_dict,
    load_toml,
    to_dict,
)
from gossipfl.learning.train import TrainConfig
from gossipfl.scenario.config import FaultConfig, ScenarioConfig, load_scenario

FAST = settings(max_examples=60, deadline=None)
SCENARIOS = sorted((Path(__file__).resolve().parent.parent / "scenarios").glob("*.toml"))

NESTED = {
    "federation": "lab",
    "listen": ["/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002"],
    "node_index": 2,
    "node_count": 4,
    "settle_seconds": 2,  # an int where a float is expected is fine
    "data": {"dataset": "npz", "path": "/data/x.npz", "partition": "iid"},
    "model": {"name": "mlp", "hidden": [32, 16]},
    "train": {"optimizer": "adam", "learning_rate": 0.001},
    "topology": {"kind": "ring", "degree": 2},
    "protocol": {"round_timeout": 5.0, "member_timeout": 3, "heartbeat_interval": 0.5},
}


def _roundtrip(config: NodeConfig) -> NodeConfig:
    return from_dict(NodeConfig, tomllib.loads(dump_toml(to_dict(config))))


# -- from_dict -------------------------------------------------------------------------------------


def test_from_dict_builds_nested_config() -> None:
    cfg = from_dict(NodeConfig, NESTED)
    assert isinstance(cfg, NodeConfig)
    assert cfg.listen == ("/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4002")
    assert cfg.node_index == 2 and cfg.node_count == 4
    assert cfg.settle_seconds == 2.0 and isinstance(cfg.settle_seconds, float)
    assert cfg.data == DataConfig(dataset="npz", path="/data/x.npz", partition="iid")
    assert cfg.model == ModelConfig(name="mlp", hidden=(32, 16))
    assert isinstance(cfg.model.hidden, tuple)
    assert cfg.train == TrainConfig(optimizer="adam", learning_rate=0.001)
    assert cfg.topology == TopologyConfig(kind="ring", degree=2)
    assert cfg.protocol.member_timeout == 3.0 and isinstance(cfg.protocol.member_timeout, float)
    assert cfg.protocol.round_timeout == 5.0
    # untouched fields keep their defaults
    assert cfg.protocol.max_missed_rounds == ProtocolConfig().max_missed_rounds
    assert cfg.rounds == NodeConfig().rounds


def test_from_empty_dict_is_the_default() -> None:
    assert from_dict(NodeConfig, {}) == NodeConfig()
    assert from_dict(ScenarioConfig, {}) == ScenarioConfig()


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"rounds_": 3}, "rounds_"),
        ({"protocol": {"round_timout": 5.0}}, "protocol.round_timout"),
        ({"data": {"datset": "wine"}}, "data.datset"),
        ({"train": {"lr": 0.1}}, "train.lr"),
        ({"model": {"hidden": [4], "layers": 2}}, "model.layers"),
    ],
)
def test_unknown_keys_are_named(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key\(s\) {re.escape(key)}$"):
        from_dict(NodeConfig, data)


def test_several_unknown_keys_are_all_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) alpha, zeta$"):
        from_dict(NodeConfig, {"zeta": 1, "alpha": 2, "rounds": 3})


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"rounds": "30"}, "rounds must be an integer"),
        ({"rounds": 3.0}, "rounds must be an integer"),
        ({"rounds": True}, "rounds must be an integer"),
        ({"federation": 7}, "federation must be a string"),
        ({"keep_round_models": 1}, "keep_round_models must be true or false"),
        ({"settle_seconds": "3"}, "settle_seconds must be a number"),
        ({"settle_seconds": False}, "settle_seconds must be a number"),
        ({"listen": "/ip4/127.0.0.1/tcp/0"}, "listen must be a list"),
        ({"bootstrap": [1]}, r"bootstrap\[\] must be a string"),
        ({"protocol": {"gamma": "1"}}, "protocol.gamma must be a number"),
        ({"protocol": 5}, "protocol must be a table"),
        ({"model": {"hidden": [64, "64"]}}, r"model.hidden\[\] must be an integer"),
        ({"data": {"path": 3, "dataset": "npz"}}, "data.path must be a string"),
        ({"train": {"batch_size": 32.0}}, "train.batch_size must be an integer"),
    ],
)
def test_wrong_types(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(NodeConfig, data)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"topology": {"kind": "star"}}, "topology.kind must be one of"),
        ({"topology": {"degree": 0}}, "topology.degree must be at least 1"),
        ({"node_index": 3, "node_count": 3}, r"node_index must be in \[0, node_count\)"),
        ({"node_index": -1}, r"node_index must be in \[0, node_count\)"),
        ({"node_count": 0}, "node_count must be at least 1"),
        ({"data": {"dataset": "npz"}}, "data.path is required for npz data"),
        ({"data": {"dataset": "npz", "path": ""}}, "data.path is required for npz data"),
        ({"data": {"dataset": "cifar"}}, "data.dataset must be one of"),
        ({"data": {"partition": "random"}}, "data.partition must be one of"),
        ({"data": {"alpha": 0}}, "data.alpha must be positive"),
        ({"data": {"test_fraction": 1.0}}, r"data.test_fraction must be in \(0, 1\)"),
        ({"model": {"name": "transformer"}}, "model.name must be one of"),
        ({"model": {"hidden": [8, 0]}}, "model.hidden sizes must be positive"),
        ({"protocol": {"gamma": 1.5}}, r"protocol.gamma must be in \(0, 1\]"),
        ({"robust": {"rule": "clipping", "neighbour_share": 0}},
         r"robust.neighbour_share must be in \(0, 1\]"),
        ({"robust": {"rule": "clipping", "neighbour_share": 1.5}},
         r"robust.neighbour_share must be in \(0, 1\]"),
        ({"robust": {"neighbour_share": 0.5}}, "robust.neighbour_share applies to a robust rule"),
        ({"protocol": {"round_timeout": 0}}, "protocol.round_timeout must be positive"),
        ({"protocol": {"member_timeout": 1.0}},
         "protocol.member_timeout must exceed protocol.heartbeat_interval"),
        ({"protocol": {"max_payload_bytes": 10}}, "protocol.max_payload_bytes is too small"),
        ({"federation": ""}, "federation must be 1 to 64 characters"),
        ({"federation": "f" * 65}, "federation must be 1 to 64 characters"),
        ({"listen": []}, "listen needs at least one multiaddr"),
        ({"rounds": -1}, "rounds must be >= 0"),
        ({"train": {"optimizer": "rmsprop"}}, "train: unknown optimizer 'rmsprop'"),
        ({"train": {"learning_rate": 0}}, "train: learning_rate must be > 0"),
    ],
)
def test_validation_errors(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(NodeConfig, data)


def test_optional_path_accepts_null() -> None:
    assert from_dict(DataConfig, {"path": None}).path is None


# -- TOML ------------------------------------------------------------------------------------------


def test_dump_and_load_round_trip_default_and_nested() -> None:
    for cfg in (NodeConfig(), from_dict(NodeConfig, NESTED)):
        text = dump_toml(to_dict(cfg))
        assert _roundtrip(cfg) == cfg
        assert ("path = " in text) == (cfg.data.path is not None)  # None values are left out


def test_to_dict_is_plain_data() -> None:
    data = to_dict(from_dict(NodeConfig, NESTED))
    assert data["listen"] == list(NESTED["listen"])
    assert data["model"]["hidden"] == [32, 16]
    assert data["protocol"]["member_timeout"] == 3.0
    assert "path" not in to_dict(NodeConfig())["data"]


def test_load_toml_file_and_syntax_error(tmp_path: Path) -> None:
    good = tmp_path / "node.toml"
    good.write_text(dump_toml(to_dict(from_dict(NodeConfig, NESTED))))
    assert from_dict(NodeConfig, load_toml(good)) == from_dict(NodeConfig, NESTED)
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_toml(bad)


def test_dump_toml_refuses_unknown_types() -> None:
    with pytest.raises(ConfigError, match="cannot write set to TOML"):
        dump_toml({"x": {1, 2}})


# Text TOML can hold in a basic string: anything but control characters (tab aside).
toml_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")) | st.just("\t"), max_size=30
)
paths = toml_text.filter(bool)


@st.composite
def node_configs(draw: st.DrawFn) -> NodeConfig:
    count = draw(st.integers(1, 64))
    dataset = draw(st.sampled_from(["digits", "wine", "npz"]))
    positive = st.floats(1e-3, 1e4, allow_nan=False)
    heartbeat = draw(positive)
    return NodeConfig(
        federation=draw(st.text(st.characters(blacklist_categories=("Cc", "Cs")),
                                min_size=1, max_size=64)),
        key_file=draw(toml_text),
        out_dir=draw(toml_text),
        listen=tuple(draw(st.lists(toml_text, min_size=1, max_size=3))),
        bootstrap=tuple(draw(st.lists(toml_text, max_size=3))),
        node_index=draw(st.integers(0, count - 1)),
        node_count=count,
        expected_members=draw(st.integers(0, 100)),
        settle_seconds=draw(positive),
        rounds=draw(st.integers(0, 10**6)),
        seed=draw(st.integers(-(2**63), 2**63 - 1)),
        keep_round_models=draw(st.booleans()),
        data=DataConfig(
            dataset=dataset,
            path=draw(paths) if dataset == "npz" else draw(st.none() | paths),
            alpha=draw(positive),
            test_fraction=draw(st.floats(0.01, 0.99)),
        ),
        model=ModelConfig(hidden=tuple(draw(st.lists(st.integers(1, 4096), max_size=4)))),
        train=TrainConfig(learning_rate=draw(positive), weight_decay=draw(st.floats(0, 1))),
        topology=TopologyConfig(kind=draw(st.sampled_from(["regular", "ring", "full"]))),
        protocol=ProtocolConfig(
            heartbeat_interval=heartbeat,
            member_timeout=heartbeat * draw(st.floats(1.5, 100)),
            consensus_tolerance=draw(st.floats(1e-12, 1.0)),
            gamma=draw(st.floats(1e-6, 1.0)),
        ),
    )


@FAST
@given(node_configs())
def test_dump_toml_round_trip_property(cfg: NodeConfig) -> None:
    assert _roundtrip(cfg) == cfg


@pytest.mark.parametrize("federation", ["two\nlines", "bell\x07", "cr\r", "del\x7f"])
def test_dump_toml_round_trips_control_characters(federation: str) -> None:
    cfg = NodeConfig(federation=federation)
    assert _roundtrip(cfg) == cfg


# -- scenarios -------------------------------------------------------------------------------------


def test_scenario_files_exist() -> None:
    assert len(SCENARIOS) >= 3, SCENARIOS


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert isinstance(scenario, ScenarioConfig)
    assert scenario.name == path.stem
    assert scenario.nodes >= 2
    assert all(fault.node < scenario.nodes for fault in scenario.faults)
    # Every section is a real config object, not a raw dict.
    assert isinstance(scenario.protocol, ProtocolConfig)
    assert isinstance(scenario.train, TrainConfig)
    assert all(isinstance(f, FaultConfig) for f in scenario.faults)
    assert scenario.federation_name == (scenario.federation or scenario.name)


def test_scenario_faults_are_built() -> None:
    scenario = from_dict(
        ScenarioConfig,
        {"nodes": 4, "faults": [{"kind": "kill", "node": 3, "at_round": 2}]},
    )
    assert scenario.faults == (FaultConfig("kill", 3, 2),)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"nodes": 1}, "nodes must be at least 2"),
        ({"rounds": 0}, "rounds must be at least 1"),
        ({"timeout": 0}, "timeout must be positive"),
        ({"nodes": 4, "faults": [{"node": 4}]}, "fault names node 4, the scenario has 4"),
        ({"faults": [{"kind": "partition"}]}, "faults.kind must be one of"),
        ({"faults": [{"at_round": -2}]}, "faults.node must be >= 0 and faults.at_round >= -1"),
        ({"slow": [{"node": 0, "factor": 0.5}]}, "slow.factor >= 1"),
        ({"faults": [{"node": 1, "when": 3}]}, r"unknown key\(s\) faults\[\]\.when"),
        ({"faults": {"node": 1}}, "faults must be a list"),
        ({"protocol": {"round_timout": 1.0}}, r"unknown key\(s\) protocol\.round_timout"),
        ({"nodes": 4, "joins": [{"node": 4}]}, "joins names node 4, the scenario has 4"),
        ({"joins": [{"node": 1}, {"node": 1}]}, "joins names a node twice"),
        ({"rounds": 5, "joins": [{"node": 1, "at_round": 5}]}, "past the last training round"),
        ({"nodes": 2, "joins": [{"node": 1}]}, "at least two nodes must start"),
        ({"joins": [{"node": 1, "at_round": -3}]}, "joins.at_round >= -1"),
        ({"admission": True, "secagg": {"enabled": True}, "joins": [{"node": 1}]},
         "late joiners cannot take part in secure aggregation"),
        ({"protocol": {"relink_interval": 0}}, "relink_interval must be positive"),
        ({"protocol": {"catch_up_rounds": 0}}, "catch_up_rounds must be at least 1"),
    ],
)
def test_scenario_validation(data: dict[str, Any], rule: str) -> None:
    with pytest.raises(ConfigError, match=rule):
        from_dict(ScenarioConfig, data)


def test_load_scenario_refuses_typo(tmp_path: Path) -> None:
    text = SCENARIOS[0].read_text().replace("round_timeout", "round_timout", 1)
    bad = tmp_path / "typo.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"protocol\.round_timout"):
        load_scenario(bad)
