"""A scenario: how many nodes, on what data and model, over which topology, with which faults."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.config import (
    WEIGHTING_REFUSED,
    CompressionConfig,
    ConfigError,
    DataConfig,
    ModelConfig,
    ProtocolConfig,
    RobustConfig,
    SecAggConfig,
    Weighting,
    from_dict,
    load_toml,
)
from gossipfl.config_io import check_secagg_compression
from gossipfl.learning.train import TrainConfig
from gossipfl.privacy.dp import DPConfig
from gossipfl.scenario.baseline_config import BaselineConfig
from gossipfl.scenario.datafiles import resolve_data_section
from gossipfl.scenario.graphs import ScenarioTopology, scenario_topology
from gossipfl.scenario.relay import LinkFaults
from gossipfl.scenario.sites_config import PublicConfig, SiteConfig, check_sites

FAULT_KINDS = ("kill", "terminate", "restart", "pause")
CHURN_KINDS = ("restart", "pause")


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
class ChurnConfig:
    """Recurring random faults (a soak): about every ``every_seconds`` (± ``jitter_seconds``,
    uniform, drawn from the scenario's seed) one node, picked at random among those running,
    suffers a fault of a kind picked from ``kinds`` (as a ``[[faults]]`` entry of that kind:
    ``restart`` or ``pause``, down for ``down_seconds``).

    Never more than one node down at a time, never fewer than two nodes left up; at most
    ``max_events`` events, none before ``start_seconds`` after the start nor before the
    federation has finished round ``from_round``, none once it has finished round
    ``until_round`` (-1: two thirds of the training rounds, as for random ``[[faults]]``: a node
    taken down later would come back to a federation that has finished). See
    :mod:`gossipfl.scenario.churn`.
    """

    every_seconds: float = 10.0
    jitter_seconds: float = 2.0
    kinds: tuple[str, ...] = CHURN_KINDS
    down_seconds: float = 3.0
    max_events: int = 40
    start_seconds: float = 5.0
    from_round: int = 1
    until_round: int = -1

    def __post_init__(self) -> None:
        if not self.kinds or any(k not in CHURN_KINDS for k in self.kinds):
            raise ConfigError(f"churn.kinds must be a non-empty list of {CHURN_KINDS}")
        if self.every_seconds <= 0:
            raise ConfigError("churn.every_seconds must be positive")
        if not 0 <= self.jitter_seconds < self.every_seconds:
            raise ConfigError("churn.jitter_seconds must be >= 0 and below every_seconds")
        if self.down_seconds <= 0 or self.start_seconds < 0:
            raise ConfigError("churn.down_seconds must be positive and start_seconds >= 0")
        if self.max_events < 1:
            raise ConfigError("churn.max_events must be at least 1")
        if self.from_round < 0 or self.until_round < -1:
            raise ConfigError("churn.from_round must be >= 0 and churn.until_round >= -1")
        if self.until_round != -1 and self.until_round <= self.from_round:
            raise ConfigError("churn.until_round must come after from_round")

    def last_round(self, rounds: int) -> int:
        """The round after which no event starts: ``until_round``, or two thirds of
        ``rounds``."""
        return self.until_round if self.until_round >= 0 else max(1, 2 * rounds // 3)


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
class LinkConfig:
    """Route every link between a node of ``nodes_a`` and a node of ``nodes_b`` through
    loopback relays that add these faults (both directions; see :mod:`gossipfl.scenario.relay`).

    ``latency`` and ``jitter`` are seconds (each chunk waits ``latency ± jitter``, uniform, never
    less than 0); ``reset_rate`` is the rate (per second, per connection) of abrupt resets.
    """

    nodes_a: tuple[int, ...] = ()
    nodes_b: tuple[int, ...] = ()
    latency: float = 0.0
    jitter: float = 0.0
    reset_rate: float = 0.0

    def __post_init__(self) -> None:
        if not self.nodes_a or not self.nodes_b:
            raise ConfigError("links.nodes_a and links.nodes_b must each name at least one node")
        for name in ("nodes_a", "nodes_b"):
            nodes = getattr(self, name)
            if min(nodes) < 0 or len(set(nodes)) != len(nodes):
                raise ConfigError(f"links.{name} must hold distinct node indices >= 0")
        if set(self.nodes_a) & set(self.nodes_b):
            raise ConfigError("links.nodes_a and links.nodes_b must not share a node")
        try:
            self.faults()
        except ValueError as error:
            raise ConfigError(f"links: {error}") from None

    def faults(self) -> LinkFaults:
        return LinkFaults(latency=self.latency, jitter=self.jitter, reset_rate=self.reset_rate)

    def pairs(self) -> set[tuple[int, int]]:
        """The links this entry routes, as ordered pairs (both directions)."""
        return {p for a in self.nodes_a for b in self.nodes_b for p in ((a, b), (b, a))}


def _due(at_round: int | None, at_seconds: float | None, when: Mapping[str, Any]) -> bool:
    if at_round is not None:
        return bool(when["max_round"] >= at_round)
    if at_seconds is not None:
        return bool(when["seconds"] >= at_seconds)
    return False


@dataclass(frozen=True)
class PartitionConfig:
    """Cut every link between different ``groups`` (or between ``side`` and the other nodes),
    then heal it.

    The cut comes once the most advanced node has finished round ``at_round``, or ``at_seconds``
    after the nodes were started; the heal likewise at ``heal_round`` or ``heal_seconds`` (never
    before the cut; without either, the partition lasts to the end), and never less than
    ``min_cut_seconds`` after the cut: rounds can be fast enough (a few milliseconds each in
    consensus) that a cut tied to rounds alone would heal before any node noticed it, so a
    partition tied to rounds should also say how long it lasts at least. Cut links pass through
    relays: every open connection is reset and new ones are refused until the heal; with
    ``silent``, nothing moves and nothing is refused (the relays stall: a path that drops
    packets), so only timeouts tell the nodes, and a connection neither end gave up on resumes
    intact after the heal.
    """

    groups: tuple[tuple[int, ...], ...] = ()
    side: tuple[int, ...] = ()
    at_round: int | None = None
    heal_round: int | None = None
    at_seconds: float | None = None
    heal_seconds: float | None = None
    silent: bool = False  # hold everything instead of resetting: nodes find out by timeouts
    min_cut_seconds: float = 0.0  # the heal comes no sooner than this after the cut

    def __post_init__(self) -> None:
        if bool(self.groups) == bool(self.side):
            raise ConfigError("partitions: give either groups or side")
        if self.groups and (len(self.groups) < 2 or not all(self.groups)):
            raise ConfigError("partitions.groups needs at least two non-empty groups")
        members = [n for g in self.groups for n in g] + list(self.side)
        if min(members) < 0 or len(set(members)) != len(members):
            raise ConfigError("partitions: a node may appear once only, with an index >= 0")
        if (self.at_round is None) == (self.at_seconds is None):
            raise ConfigError("partitions: give exactly one of at_round and at_seconds")
        if self.heal_round is not None and self.heal_seconds is not None:
            raise ConfigError("partitions: give at most one of heal_round and heal_seconds")
        for name in ("at_round", "heal_round", "at_seconds", "heal_seconds", "min_cut_seconds"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"partitions.{name} must be >= 0")
        if None not in (self.at_round, self.heal_round) and self.heal_round <= self.at_round:
            raise ConfigError("partitions.heal_round must come after at_round")
        if None not in (self.at_seconds, self.heal_seconds) and \
                self.heal_seconds <= self.at_seconds:
            raise ConfigError("partitions.heal_seconds must come after at_seconds")

    def cut_due(self, when: Mapping[str, Any]) -> str | None:
        """What makes the cut due now (``when``: {"seconds", "max_round"}): "round" or
        "seconds"; None while it is not."""
        if not _due(self.at_round, self.at_seconds, when):
            return None
        return "round" if self.at_round is not None else "seconds"

    def heal_due(self, cut: Mapping[str, Any], when: Mapping[str, Any]) -> str | None:
        """What makes the heal due now (``when``), the cut having come at ``cut``: "round" or
        "seconds"; "held" while that is so but ``min_cut_seconds`` have not passed since the
        cut (the caller then says the heal came by "min_cut_seconds"); None while it is not."""
        if not _due(self.heal_round, self.heal_seconds, when):
            return None
        if when["seconds"] - cut["seconds"] < self.min_cut_seconds:
            return "held"
        return "round" if self.heal_round is not None else "seconds"

    def resolved_groups(self, nodes: int) -> tuple[tuple[int, ...], ...]:
        """The groups, with ``side`` turned into (side, every other node)."""
        if self.groups:
            return self.groups
        return (self.side, tuple(n for n in range(nodes) if n not in self.side))

    def cross_pairs(self, nodes: int) -> set[tuple[int, int]]:
        """The links this partition cuts, as ordered pairs (both directions)."""
        groups = self.resolved_groups(nodes)
        return {(a, b) for i, g in enumerate(groups) for j, h in enumerate(groups) if i != j
                for a in g for b in h}


@dataclass(frozen=True)
class NamespacesConfig:
    """Run each node in its own Linux network namespace, with its own address of ``subnet`` on
    a bridge (veth pairs), capped at ``rate_mbit`` each way (tc tbf; omit it for no cap). Needs
    root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ``ip`` command; see
    :mod:`gossipfl.scenario.netns`."""

    enabled: bool = False
    subnet: str = "10.77.0.0/24"  # private IPv4; node i gets the subnet's (i + 1)-th address
    rate_mbit: float | None = None

    def __post_init__(self) -> None:
        try:
            network = ipaddress.IPv4Network(self.subnet)
        except ValueError as error:
            raise ConfigError(f"namespaces.subnet: {error}") from None
        if not network.is_private or network.prefixlen > 30:
            raise ConfigError(f"namespaces.subnet {self.subnet} must be a private IPv4 range "
                              f"of at least 4 addresses (e.g. 10.77.0.0/24)")
        if self.rate_mbit is not None and not (0 < self.rate_mbit <= 100_000
                                               and math.isfinite(self.rate_mbit)):
            raise ConfigError("namespaces.rate_mbit must be in (0, 100000] Mbit/s")

    @property
    def capacity(self) -> int:
        """How many nodes the subnet holds (its addresses less network and broadcast)."""
        return ipaddress.IPv4Network(self.subnet).num_addresses - 2


@dataclass(frozen=True)
class AdversarySpec:
    """Node ``node`` runs the protocol plus the deviation ``kind`` (:mod:`gossipfl.adversary`),
    aimed at node ``target`` where its kind takes one (-1: each neighbour in turn), with
    ``strength`` for a Byzantine kind (0: its default)."""

    node: int = 0
    kind: str = "lying_aggregator"
    target: int = -1
    strength: float = 0.0

    def __post_init__(self) -> None:
        try:
            role = AdversaryKind.parse(self.kind)
        except ValueError as error:
            raise ConfigError(f"adversaries: {error}") from None
        if role is AdversaryKind.NONE:
            raise ConfigError("adversaries.kind 'none' is the honest node: leave it out")
        if self.node < 0 or self.target < -1:
            raise ConfigError("adversaries.node must be >= 0 and adversaries.target >= -1")
        if self.target == self.node:
            raise ConfigError(f"adversaries: node {self.node} cannot target itself")
        if self.strength < 0:
            raise ConfigError("adversaries.strength must be >= 0 (0: the kind's default)")


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
    # edges as node indices; code may give a node's TopologyConfig (taken as one of these)
    topology: ScenarioTopology = field(default_factory=ScenarioTopology)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    privacy: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    faults: tuple[FaultConfig, ...] = ()
    joins: tuple[JoinConfig, ...] = ()
    slow: tuple[SlowConfig, ...] = ()
    links: tuple[LinkConfig, ...] = ()
    partitions: tuple[PartitionConfig, ...] = ()
    adversaries: tuple[AdversarySpec, ...] = ()
    churn: ChurnConfig | None = None  # recurring random faults (a soak)
    rss_sample_seconds: float = 1.0  # how often the runner samples each node's resident set
    namespaces: NamespacesConfig = field(default_factory=NamespacesConfig)
    sites: tuple[SiteConfig, ...] = ()  # private sites behind NAT (gossipfl/scenario/sites.py)
    public: PublicConfig = field(default_factory=PublicConfig)  # their relays
    metrics_port: int = 0  # node i serves Prometheus metrics on port metrics_port + i (0: off)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # the centralised one's

    def __post_init__(self) -> None:
        if self.metrics_port and not 1 <= self.metrics_port <= 65536 - self.nodes:
            raise ConfigError(f"metrics_port {self.metrics_port}: node i serves on "
                              f"metrics_port + i, so it must be 0 (off) or 1-{65536 - self.nodes}"
                              f" for {self.nodes} nodes")
        if self.nodes < 2:
            raise ConfigError("nodes must be at least 2")
        if self.data.paths and len(self.data.paths) != self.nodes:
            raise ConfigError(f"data.paths lists {len(self.data.paths)} file(s); the scenario "
                              f"has {self.nodes} nodes (node i reads paths[i])")
        if any(h >= self.nodes for h in self.data.holders):
            raise ConfigError(f"data.holders names a node >= nodes ({self.nodes})")
        if self.data.holders and self.privacy.enabled:
            raise ConfigError("data.holders leaves nodes without records: not with privacy")
        if self.rounds < 1:
            raise ConfigError("rounds must be at least 1")
        if self.timeout <= 0:
            raise ConfigError("timeout must be positive")
        object.__setattr__(self, "topology", scenario_topology(self.topology))
        self.topology.check_nodes(self.nodes)
        if self.secagg.enabled and not self.admission:
            raise ConfigError("secagg needs admission = true (pair masks use certified keys)")
        check_secagg_compression(self.secagg, self.compression.kind)
        if self.protocol.weighting is Weighting.EXAMPLES and (self.secagg.enabled
                                                              or self.privacy.enabled):
            raise ConfigError(WEIGHTING_REFUSED)
        if self.secagg.enabled and self.robust.rule != "none":
            raise ConfigError("robust.rule needs the neighbours' individual estimates: not with "
                              "secagg (its masks hide them; the norm bound still checks each "
                              "secure sum)")
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

        self._check_network()
        self._check_adversaries()
        self._check_churn()

    def _check_adversaries(self) -> None:
        roles = [a.node for a in self.adversaries]
        if len(set(roles)) != len(roles):
            raise ConfigError("adversaries names a node twice (one role per node)")
        for spec in self.adversaries:
            for name in ("node", "target"):
                if getattr(spec, name) >= self.nodes:
                    raise ConfigError(f"adversaries.{name} {getattr(spec, name)}: the scenario "
                                      f"has {self.nodes} nodes")
        if self.adversaries and len(roles) >= self.nodes - 1:
            raise ConfigError("adversaries: at least two honest nodes are needed")
        if (any(a.kind == AdversaryKind.NARROWING.value for a in self.adversaries)
                and not (self.secagg.enabled and self.secagg.consensus_deltas)):
            raise ConfigError("adversaries: narrowing narrows consensus delta rounds: it needs "
                              "secagg.enabled and secagg.consensus_deltas")

    def _check_churn(self) -> None:
        if self.rss_sample_seconds <= 0:
            raise ConfigError("rss_sample_seconds must be positive")
        if self.churn is None:
            return
        if self.nodes < 3:
            raise ConfigError("churn needs at least 3 nodes (it never leaves fewer than 2 up)")
        if self.churn.from_round >= self.rounds or self.churn.until_round > self.rounds:
            raise ConfigError(f"churn.from_round and churn.until_round must lie within the "
                              f"training rounds ({self.rounds})")

    def _check_network(self) -> None:
        check_sites(self.sites, self.public, nodes=self.nodes,
                    namespaces=self.namespaces.enabled, links=bool(self.links),
                    partitions=bool(self.partitions))
        if self.namespaces.enabled:
            if self.links:  # partitions are cut at the IP layer (gossipfl.scenario.netcut)
                raise ConfigError("namespaces cannot be combined with [[links]]: their latency, "
                                  "jitter and resets come from relays that listen on loopback "
                                  "only, and the kernels this runs on have no tc netem to add "
                                  "them on the veth links; cap bandwidth with "
                                  "namespaces.rate_mbit, cut with [[partitions]], or run the "
                                  "links on loopback")
            if self.nodes > self.namespaces.capacity:
                raise ConfigError(f"namespaces.subnet {self.namespaces.subnet} holds "
                                  f"{self.namespaces.capacity} nodes, the scenario has "
                                  f"{self.nodes}")
        seen: dict[tuple[int, int], int] = {}
        for index, link in enumerate(self.links):
            highest = max(*link.nodes_a, *link.nodes_b)
            if highest >= self.nodes:
                raise ConfigError(f"links names node {highest}, the scenario has {self.nodes}")
            for pair in link.pairs():
                if pair in seen:
                    raise ConfigError(f"links entries {seen[pair]} and {index} both route the "
                                      f"link {pair[0]}-{pair[1]}")
                seen[pair] = index
        for partition in self.partitions:
            members = [n for g in partition.groups for n in g] + list(partition.side)
            if max(members) >= self.nodes:
                raise ConfigError(f"partitions names node {max(members)}, the scenario has "
                                  f"{self.nodes}")
            if partition.side and len(partition.side) >= self.nodes:
                raise ConfigError("partitions.side must leave at least one node on the other side")
            if partition.at_round is not None and partition.at_round >= self.rounds:
                raise ConfigError(f"partitions.at_round must be below rounds ({self.rounds})")

    @property
    def federation_name(self) -> str:
        return self.federation or self.name

    @property
    def centralised_epochs(self) -> int:
        """The centralised baseline's epochs (``[baseline] epochs``, else rounds ×
        local_epochs)."""
        return self.baseline.epochs_for(self.rounds, self.train.local_epochs)

    @property
    def centralised_train(self) -> TrainConfig:
        """The centralised baseline's training settings: ``[train]`` with ``[baseline]``'s."""
        return self.baseline.train(self.train)


def load_scenario(path: str | Path, metrics_port: int | None = None) -> ScenarioConfig:
    """The scenario in the TOML file ``path``; ``metrics_port`` (if given) replaces its own.
    File names in ``[data]`` are taken relative to the scenario file's folder."""
    data = resolve_data_section(load_toml(path), Path(path).parent)
    if metrics_port is not None:
        data["metrics_port"] = metrics_port
    return from_dict(ScenarioConfig, data)
