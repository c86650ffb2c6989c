"""A scenario: how many nodes, on what data and model, over which topology, with which faults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gossipfl.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    ProtocolConfig,
    SecAggConfig,
    TopologyConfig,
    from_dict,
    load_toml,
)
from gossipfl.learning.train import TrainConfig
from gossipfl.privacy.dp import DPConfig

FAULT_KINDS = ("kill", "terminate", "restart", "pause")


@dataclass(frozen=True)
class FaultConfig:
    """Signal node ``node`` once it has finished round ``at_round``.

    ``kill`` sends SIGKILL (a crash: no checkpoint, no goodbye); ``terminate`` sends SIGTERM
    (a clean stop: the node writes its checkpoint and exits 0); ``restart`` sends SIGKILL and
    starts the node again ``down_seconds`` later, with the same identity and folder; ``pause``
    sends SIGSTOP and SIGCONT ``down_seconds`` later (an outage without a restart: the node
    comes back with its state, far behind, to neighbours that dropped it).
    """

    kind: str = "kill"
    node: int = 0
    at_round: int = 10  # -1: a random round, drawn from the scenario's seed
    down_seconds: float = 2.0  # restart, pause: how long the node stays down

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigError(f"faults.kind must be one of {FAULT_KINDS}")
        if self.node < 0 or self.at_round < -1:
            raise ConfigError("faults.node must be >= 0 and faults.at_round >= -1")


@dataclass(frozen=True)
class JoinConfig:
    """Node ``node`` starts late: once the federation has finished round ``at_round``."""

    node: int = 0
    at_round: int = 5  # -1: a random round in the first half of training, from the seed

    def __post_init__(self) -> None:
        if self.node < 0 or self.at_round < -1:
            raise ConfigError("joins.node must be >= 0 and joins.at_round >= -1")


@dataclass(frozen=True)
class SlowConfig:
    """Emulate a slower machine: node ``node``'s local training takes ``factor`` times longer."""

    node: int = 0
    factor: float = 4.0

    def __post_init__(self) -> None:
        if self.node < 0 or self.factor < 1.0:
            raise ConfigError("slow.node must be >= 0 and slow.factor >= 1")


@dataclass(frozen=True)
class ScenarioConfig:
    name: str = "scenario"
    nodes: int = 8
    rounds: int = 30
    seed: int = 0
    federation: str = ""  # default: the scenario's name
    timeout: float = 600.0  # the whole run, seconds
    keep_round_models: bool = True
    admission: bool = True  # a federation key and a certificate for each node, made by the runner
    encrypt_payloads: bool = True  # contributions signed and encrypted end to end (with admission)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    privacy: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    faults: tuple[FaultConfig, ...] = ()
    joins: tuple[JoinConfig, ...] = ()
    slow: tuple[SlowConfig, ...] = ()

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ConfigError("nodes must be at least 2")
        if self.rounds < 1:
            raise ConfigError("rounds must be at least 1")
        if self.timeout <= 0:
            raise ConfigError("timeout must be positive")
        if self.secagg.enabled and not self.admission:
            raise ConfigError("secagg needs admission = true (pair masks use certified keys)")
        for slow in self.slow:
            if slow.node >= self.nodes:
                raise ConfigError(f"slow names node {slow.node}, the scenario has {self.nodes}")
        for fault in self.faults:
            if fault.node >= self.nodes:
                raise ConfigError(f"fault names node {fault.node}, the scenario has {self.nodes}")
        late = [j.node for j in self.joins]
        if len(set(late)) != len(late):
            raise ConfigError("joins names a node twice")
        for join in self.joins:
            if join.node >= self.nodes:
                raise ConfigError(f"joins names node {join.node}, the scenario has {self.nodes}")
            if join.at_round >= self.rounds:
                raise ConfigError(f"joins.at_round {join.at_round} is past the last training "
                                  f"round ({self.rounds - 1})")
        if self.nodes - len(late) < 2:
            raise ConfigError("at least two nodes must start at the beginning")
        if late and self.secagg.enabled:
            raise ConfigError("late joiners cannot take part in secure aggregation (its "
                              "topology is fixed at formation)")

    @property
    def federation_name(self) -> str:
        return self.federation or self.name


def load_scenario(path: str | Path) -> ScenarioConfig:
    return from_dict(ScenarioConfig, load_toml(path))
