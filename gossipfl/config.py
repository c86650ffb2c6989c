"""Configuration as data: frozen dataclasses with defaults and validation, read from TOML.

One node's configuration is a :class:`NodeConfig`; a scenario (many nodes started by the runner)
is a :class:`gossipfl.scenario.config.ScenarioConfig` built from the same sections. Unknown keys are
errors, so a typo in a TOML file never silently falls back to a default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import multiaddr

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.config_io import (  # noqa: F401 (re-exported)
    TOML_NONE,
    ConfigError,
    check_secagg_compression,
    dump_toml,
    from_dict,
    load_toml,
    to_dict,
)
from gossipfl.data_config import (  # noqa: F401 (re-exported)
    DATASETS,
    MODELS,
    PARTITIONS,
    DataConfig,
    ModelConfig,
)
from gossipfl.learning.train import TrainConfig
from gossipfl.privacy.dp import DPConfig
from gossipfl.relay_config import RelayConfig, check_relay

TOPOLOGIES = ("regular", "ring", "full", "edges")


class Mode(StrEnum):
    """How rounds keep step (``protocol.mode``)."""

    SYNC = "sync"  # every round waits for every live neighbour's estimate of that round
    ASYNC = "async"  # no round barrier: a bounded lead (max_lead) or none


class Weighting(StrEnum):
    """What a node's neighbours weight it by in the average (``protocol.weighting``)."""

    UNIFORM = "uniform"  # Metropolis–Hastings: the federation averages the nodes' models
    EXAMPLES = "examples"  # stationary ∝ examples: the example-weighted mean, as FedAvg


EXAMPLES_ROUNDING = ("exact", "pow2")
WEIGHTING_REFUSED = (
    "protocol.weighting = examples is not built with secagg (a contributor's weight must be "
    "known to both ends before masking) nor with privacy (the example count each node reports "
    "is not covered by the DP guarantee)")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_edges(kind: str, edges: Sequence[Sequence[Hashable]]) -> None:
    """The rules of ``topology.edges`` whatever names its ends (peer ids in a node's config, node
    indices in a scenario's): given with ``kind = "edges"`` only, then pairs of two different
    ends, each link once (in either order)."""
    _require(kind in TOPOLOGIES, f"topology.kind must be one of {TOPOLOGIES}")
    if kind != "edges":
        _require(not edges, f"topology.edges is the graph of kind = \"edges\"; kind = "
                            f"\"{kind}\" draws its own: leave edges out or set kind = \"edges\"")
        return
    _require(bool(edges), 'topology.kind = "edges" needs topology.edges, the list of links '
                          "(e.g. [[0, 1], [1, 2]])")
    seen: set[frozenset[Hashable]] = set()
    for edge in edges:
        _require(len(edge) == 2, f"topology.edges: {list(edge)} is not a pair (a link joins two)")
        _require(edge[0] != edge[1], f"topology.edges: {list(edge)} links {edge[0]!r} to itself")
        pair = frozenset(edge)
        _require(pair not in seen, f"topology.edges: the link {edge[0]!r}-{edge[1]!r} is listed "
                                   "twice (a link has no direction)")
        seen.add(pair)


@dataclass(frozen=True)
class TopologyConfig:
    kind: str = "regular"
    degree: int = 4  # kind = "regular"
    # kind = "edges": the graph itself, each link a pair of peer ids (a scenario names nodes by
    # index; its runner writes their peer ids); a node links with its listed neighbours only
    edges: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _require(self.degree >= 1, "topology.degree must be at least 1")
        check_edges(self.kind, self.edges)
        _require(all(isinstance(end, str) and end for edge in self.edges for end in edge),
                 "topology.edges: a node's config names each end by its peer id")


@dataclass(frozen=True)
class ProtocolConfig:
    """Timing and limits of the gossip protocol (seconds, counts, bytes)."""

    round_timeout: float = 30.0
    join_timeout: float = 60.0
    heartbeat_interval: float = 1.0
    member_timeout: float = 10.0
    request_timeout: float = 10.0
    max_missed_rounds: int = 3
    consensus_tolerance: float = 1e-4
    max_consensus_rounds: int = 60
    gamma: float = 1.0
    max_payload_bytes: int = 64 * 1024 * 1024
    mode: Mode = Mode.SYNC  # async: no node waits for a round barrier (TOML: "sync", "async")
    # async: a neighbour's weight × decay^k, k = rounds its estimate is older than ours (with
    # no bound on the lead: how many of my rounds ago it arrived)
    staleness_decay: float = 0.9
    # async: rounds a node may train ahead of a live neighbour; None: no bound (TOML: -1)
    max_lead: int | None = field(default=1, metadata={TOML_NONE: -1})
    pace: bool = True  # async: a node its neighbours are ahead of trains less (node/pace.py)
    pace_min_epochs: float = 0.25  # async pace: the least local work in a round, in epochs
    peer_rate: float = 50.0  # streams + frames a second one peer may send us
    peer_burst: float = 100.0
    peer_streams: int = 16  # streams one peer may hold open to us at once
    relink_interval: float = 2.0  # how often to ask a lost neighbour (dropped, cut off) back
    catch_up_rounds: int = 2  # sync: neighbours this many rounds ahead → pull their state, jump
    extra_links: int = 2  # late joiners a node takes beyond its topology degree
    # a node with fewer live neighbours than this (at most its degree; 0: its degree) runs a
    # round a heartbeat until its lost neighbours are back or replaced (a crash, a cut: no few
    # members race through the training on their own data alone); with none it holds its round
    # and re-links rather than train or average alone (node/termination.py) ...
    min_neighbours: int = 0
    allow_alone: bool = False  # ... unless this says it trains alone (logged each round)
    # a wanted neighbour missing this long (seconds) is gone for good: a node finishes without
    # it, and the report names it (0: three member timeouts)
    gone_seconds: float = 0.0
    # a done node keeps serving this long (seconds) when members it knew were absent at its
    # finish, and reopens if one comes back with another model (node/linger.py); with the
    # federation whole, two heartbeat intervals at most. 10 s: a default member timeout, time
    # for a member back from a cut to be heard of again, on top of the gone_seconds the
    # federation already waited for it; a run that lost a member for good ends that much later.
    # 0: no lingering (a done node stops at once)
    linger_seconds: float = 10.0
    max_reopen: int = 3  # reopenings at most, each up to max_consensus_rounds more rounds
    # bytes of frames being read at once, all peers together (0: 4 × max_payload_bytes); peers
    # without a certificate may hold an eighth of it
    max_in_flight_bytes: int = 0
    # examples: each node reports its example count to its neighbours (rounded as
    # examples_rounding says: pow2, the nearest power of two; exact) and the mixing weights
    # converge to the example-weighted mean (aggregation/mixing.weighted_neighbour_weights)
    weighting: Weighting = Weighting.UNIFORM
    examples_rounding: str = "pow2"
    accelerate_consensus: bool = True  # heavy-ball consensus rounds (node/accelerate.py)

    def __post_init__(self) -> None:
        for name in ("round_timeout", "join_timeout", "heartbeat_interval", "member_timeout",
                     "request_timeout"):
            _require(getattr(self, name) > 0, f"protocol.{name} must be positive")
        _require(self.member_timeout > self.heartbeat_interval,
                 "protocol.member_timeout must exceed protocol.heartbeat_interval")
        _require(self.max_missed_rounds >= 1, "protocol.max_missed_rounds must be at least 1")
        _require(self.consensus_tolerance > 0, "protocol.consensus_tolerance must be positive")
        _require(self.max_consensus_rounds >= 0, "protocol.max_consensus_rounds must be >= 0")
        _require(0 < self.gamma <= 1, "protocol.gamma must be in (0, 1]")
        try:
            object.__setattr__(self, "mode", Mode(self.mode))  # parsed here, once
        except ValueError:
            raise ConfigError(f"protocol.mode must be sync or async, not {self.mode!r}") from None
        try:
            object.__setattr__(self, "weighting", Weighting(self.weighting))
        except ValueError:
            raise ConfigError("protocol.weighting must be uniform or examples, not "
                              f"{self.weighting!r}") from None
        _require(self.examples_rounding in EXAMPLES_ROUNDING,
                 f"protocol.examples_rounding must be one of {', '.join(EXAMPLES_ROUNDING)}")
        _require(0 < self.staleness_decay <= 1, "protocol.staleness_decay must be in (0, 1]")
        if self.max_lead == -1:  # TOML has no null: -1 says no bound (and always did)
            object.__setattr__(self, "max_lead", None)
        _require(self.max_lead is None or self.max_lead >= 0,
                 "protocol.max_lead must be >= 0 (rounds), or -1 for no bound")
        _require(self.pace_min_epochs > 0, "protocol.pace_min_epochs must be positive")
        _require(self.max_payload_bytes >= 1024, "protocol.max_payload_bytes is too small")
        _require(self.peer_rate > 0 and self.peer_burst >= 1,
                 "protocol.peer_rate and peer_burst must be positive")
        _require(self.peer_streams >= 4, "protocol.peer_streams must be at least 4")
        _require(self.relink_interval > 0, "protocol.relink_interval must be positive")
        _require(self.catch_up_rounds >= 1, "protocol.catch_up_rounds must be at least 1")
        _require(self.extra_links >= 0, "protocol.extra_links must be >= 0")
        _require(self.min_neighbours >= 0,
                 "protocol.min_neighbours must be >= 0 (0: the node's degree)")
        _require(self.gone_seconds >= 0, "protocol.gone_seconds must be >= 0 (0: automatic)")
        _require(0 <= self.linger_seconds < float("inf"),
                 "protocol.linger_seconds must be >= 0 and finite (0: a done node stops at once)")
        _require(self.max_reopen >= 0, "protocol.max_reopen must be >= 0")
        _require(self.max_in_flight_bytes == 0
                 or self.max_in_flight_bytes >= 2 * self.max_payload_bytes,
                 "protocol.max_in_flight_bytes must be 0 (automatic) or at least two payloads "
                 "(2 × protocol.max_payload_bytes)")


@dataclass(frozen=True)
class SecurityConfig:
    """Admission and payload protection, on top of Noise on every link.

    With ``admission`` on, a node takes part only with peers that present a membership
    certificate signed by the federation key (``federation_public``); its own certificate is
    ``certificate``. With ``encrypt_payloads`` on as well, every contribution is signed by its
    sender and encrypted to its receiver (the receiver's X25519 key is in its certificate).
    ``revocations`` (optional) is the federation's signed revocation list to start from; newer
    lists arrive by gossip."""

    admission: bool = False
    federation_public: str | None = None  # path to federation.pub
    certificate: str | None = None  # path to this node's certificate
    encrypt_payloads: bool = True
    clock_leeway: float = 60.0  # seconds of clock difference tolerated on certificate times
    revocations: str | None = None  # path to revocations.list (signed by the federation key)

    def __post_init__(self) -> None:
        if self.admission:
            _require(bool(self.federation_public),
                     "security.federation_public is required with security.admission")
            _require(bool(self.certificate),
                     "security.certificate is required with security.admission")
        _require(self.clock_leeway >= 0, "security.clock_leeway must be >= 0")
        _require(not self.revocations or self.admission,
                 "security.revocations needs security.admission (the list is checked against "
                 "the federation key)")

    @property
    def sealed(self) -> bool:
        return self.admission and self.encrypt_payloads


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation over each neighbourhood (needs admission: pair masks come from the
    members' certified X25519 keys). Values are clipped to ``[-clip, clip]`` and quantised
    with ``scale`` levels per unit into Z_{2^32} before masking; an aggregator refuses a round
    with fewer than ``min_contributors``.

    Against an aggregator that differences its sums over time, a member refuses to sign a
    set that differs from one it signed for it within the last ``history_rounds`` rounds by at
    least one but fewer than ``min_set_difference`` members (2: the least that stops one
    member's estimate coming out of two sums; 1: off). ``presign``: a member's unmask answer
    signs the next round's set when no one dropped (gossipfl.node.secure_presign: no
    consistency exchange while every input comes in; a dropout then fails that round at its
    aggregators, the next recovers it); off, a dropout is recovered in its own round.
    ``delta_clip``: int8/int4's public clip of the quantised CHOCO deltas (step ``delta_clip /
    levels``: gossipfl.node.secure_sparse), ``delta_levels`` their levels each side (0: the
    kind's, 127 or 7; 1: 9-value words at degree 4). ``consensus_deltas`` (int8/int4): the
    consensus rounds but every ``full_every``-th after the first send finer deltas, else full
    estimates; ``first_deltas``: round 0 deltas from the initial model, which every x̂ starts
    as (``secure_sparse.origin_base``); ``coarse_consensus``: the levels (1, 7 or 31) of the
    first consensus delta rounds, at a step as coarse; when each pays: the README."""

    enabled: bool = False
    min_contributors: int = 3
    clip: float = 8.0
    scale: int = 2**20
    history_rounds: int = 50
    min_set_difference: int = 2
    full_every: int = 10  # compressed: every n-th round full, unless waived (secure_sparse)
    presign: bool = True
    delta_clip: float = 0.05
    consensus_deltas: bool = False
    first_deltas: bool = False
    delta_levels: int = 0
    coarse_consensus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(self.min_contributors >= 3, "secagg.min_contributors must be at least 3")
        _require(self.clip > 0, "secagg.clip must be positive")
        _require(self.scale >= 2, "secagg.scale must be at least 2")
        _require(0 <= self.history_rounds <= 10_000,
                 "secagg.history_rounds must be in [0, 10000]")
        _require(1 <= self.min_set_difference <= 256,
                 "secagg.min_set_difference must be in [1, 256] (1: off)")
        _require(1 <= self.full_every <= 10_000, "secagg.full_every must be in [1, 10000]")
        _require(0 < self.delta_clip <= self.clip,
                 "secagg.delta_clip must be positive and at most secagg.clip")


@dataclass(frozen=True)
class RobustConfig:
    """Defences against a member that manipulates the model (issue 9).

    ``norm_ratio``: no estimate a neighbour sends (plain or async mode) is mixed in if its L2
    norm exceeds ``norm_ratio`` times this node's own model's (at least 1): a cheap bound, on
    by default, that keeps a scaled or exploded model out (a neighbour sending 6e+37 set a
    receiver's model to that in one round without it). 0 turns it off. Honest estimates differ
    from a node's own by far less. A secure sum's neighbourhood mean is held to the bound for
    its size (:func:`gossipfl.aggregation.bounds.sum_bound`), and an honest contributor holds
    its own masked input to it (:mod:`gossipfl.node.secure_inputs`).

    ``rule``: how a node mixes its neighbours' public estimates
    (:class:`gossipfl.aggregation.robust.RobustRule`): ``none`` (Metropolis–Hastings, CHOCO),
    ``clipping`` (self-centred clipping, ClippedGossip, with the adaptive radius that clips the
    farthest neighbours up to a mixing weight of ``delta``, or the fixed radius ``tau`` when it
    is not 0, as in ClippedGossip's experiments), ``trimmed_mean`` (``trim`` values
    off each end of every coordinate), ``median``, ``krum`` (``krum_f`` inputs assumed
    Byzantine) or ``filter`` (neighbours farther than ``filter_ratio`` median distances from
    the coordinate median left out: :mod:`gossipfl.aggregation.filter`). Not with secure
    aggregation, which hides the individual estimates.

    ``neighbour_share``: the share of its Metropolis–Hastings neighbour weights a node's robust
    rule mixes with, the rest staying on the node itself (``W' = (1 − s)·I + s·W``:
    :func:`gossipfl.aggregation.mixing.shared_weights`); 1 (the default) mixes with ``W`` as
    is. ClippedGossip's experiments raise every honest node's self-weight this way, ``s = 1 /
    (2 − min_k W_kk)`` over the honest nodes (6/11 on their ``mr5,1,0`` graph:
    :func:`~gossipfl.aggregation.mixing.clippedgossip_share`). For clipping at a fixed radius
    and for ``filter`` (steps linear in the weights) it is ``protocol.gamma`` times ``s``; it
    differs for the adaptive radius (the weights pick what is clipped) and leaves the rules
    that ignore the weights as they are. Not with ``rule = "none"``: ``protocol.gamma`` there.

    ``screen``: before a robust rule mixes, the neighbours whose estimates fit the node's own
    training data worst (the highest mean loss on it), up to this share of its mixing weight,
    are left out that round, their weight staying on the node
    (:func:`gossipfl.aggregation.screen.loss_screen`); the best-fitting neighbour always stays,
    and a node holding no data screens nothing. 0 (the default) is off. Each round costs one
    evaluation per neighbour over the node's training data.
    """

    norm_ratio: float = 100.0
    rule: str = "none"
    delta: float = 0.25
    tau: float = 0.0  # clipping: a fixed radius instead of the adaptive one (0: adaptive)
    tau_steps: float = 0.0  # clipping: a radius of this many of the node's own training steps
    screen: float = 0.0  # robust rules: the worst-fitting neighbours, up to this weight, left out
    filter_ratio: float = 3.0  # filter: neighbours beyond this many median distances left out
    filter_floor: float = 0.01  # filter: ... or beyond ratio × this × the centre's norm
    trim: int = 1
    krum_f: int = 1
    neighbour_share: float = 1.0  # robust rules: neighbour weights × this, the rest on self

    def __post_init__(self) -> None:
        _require(self.norm_ratio == 0 or self.norm_ratio >= 2,
                 "robust.norm_ratio must be 0 (off) or at least 2")
        rules = ("none", "clipping", "trimmed_mean", "median", "krum", "filter")
        _require(self.rule in rules, f"robust.rule must be one of {', '.join(rules)}")
        _require(0 < self.delta < 1, "robust.delta must be in (0, 1)")
        _require(self.tau >= 0, "robust.tau must be >= 0 (0: the adaptive radius)")
        _require(self.tau_steps >= 0 and not (self.tau and self.tau_steps),
                 "robust.tau_steps must be >= 0, and not set with robust.tau")
        _require(0 <= self.screen < 1, "robust.screen must be in [0, 1) (0: off)")
        _require(not self.screen or self.rule != "none",
                 "robust.screen applies to a robust rule (robust.rule is none)")
        _require(self.filter_ratio >= 1, "robust.filter_ratio must be at least 1")
        _require(0 <= self.filter_floor < 1, "robust.filter_floor must be in [0, 1)")
        _require(self.trim >= 0 and self.krum_f >= 0, "robust.trim and robust.krum_f must be >= 0")
        _require(0 < self.neighbour_share <= 1, "robust.neighbour_share must be in (0, 1]")
        _require(self.neighbour_share == 1 or self.rule != "none",
                 "robust.neighbour_share applies to a robust rule (with rule none, "
                 "protocol.gamma scales the step)")


@dataclass(frozen=True)
class CompressionConfig:
    """Compression of the CHOCO delta (issue 10, :mod:`gossipfl.aggregation.compress`): ``kind``
    none, int8, int4, fp16, topk or randk; ``ratio`` the fraction of coordinates topk and randk
    keep. A lossy kind usually wants ``protocol.gamma`` below 1 (e.g. 0.5 for topk)."""

    kind: str = "none"
    ratio: float = 0.1

    def __post_init__(self) -> None:
        kinds = ("none", "int8", "int4", "fp16", "topk", "randk")
        _require(self.kind in kinds, f"compression.kind must be one of {', '.join(kinds)}")
        _require(0 < self.ratio <= 1, "compression.ratio must be in (0, 1]")


@dataclass(frozen=True)
class AdversaryConfig:
    """The deviation this node runs on top of the protocol (``kind = "none"``: honest; see
    :mod:`gossipfl.adversary`). ``target``: the peer id it aims at, where its kind takes one
    (empty: each neighbour in turn). ``keep_public_estimates``: save x̂ per round
    (``public/rNNNNN.npy``), so the report can score what adversaries reconstructed.
    Byzantine kinds (:mod:`gossipfl.adversary.byzantine`): ``strength`` (z, ε, σ or the
    factor; 0: the kind's default), ``board`` (the colluders' shared folder) and ``colluders``
    (every Byzantine member's peer id)."""

    kind: str = "none"
    target: str = ""
    keep_public_estimates: bool = False
    strength: float = 0.0
    board: str = ""
    colluders: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            AdversaryKind.parse(self.kind)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        _require(self.strength >= 0, "adversary.strength must be >= 0 (0: the kind's default)")

    @property
    def role(self) -> AdversaryKind:
        return AdversaryKind(self.kind)


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node process needs."""

    federation: str = "gossipfl"
    key_file: str = "node.key"
    out_dir: str = "node-out"
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    node_index: int = 0  # which partition of a simulated dataset this node holds
    node_count: int = 1
    expected_members: int = 0  # 0: start once membership has been stable for settle_seconds
    settle_seconds: float = 3.0
    rounds: int = 30
    seed: int = 0  # shared by the federation: model init and topology
    slowdown: float = 1.0  # emulate a slower machine: local training takes this many times longer
    keep_round_models: bool = True
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    privacy: DPConfig = field(default_factory=DPConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    robust: RobustConfig = field(default_factory=RobustConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    adversary: AdversaryConfig = field(default_factory=AdversaryConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    # peer id → multiaddr to dial that peer through (a relay): a routed peer is dialled there
    # only, never at the addresses it advertises
    routes: dict[str, str] = field(default_factory=dict, hash=False)
    metrics_port: int = 0  # Prometheus metrics served at metrics_addr:metrics_port (0: off)
    metrics_addr: str = "127.0.0.1"

    def __post_init__(self) -> None:
        check_metrics(self.metrics_port, self.metrics_addr)
        _require(not self.data.paths and self.data.folder is None,
                 "data.paths and data.folder are a scenario's: a node reads its own file, "
                 "data.path (with data.test_path)")
        _require(all(h < self.node_count for h in self.data.holders),
                 f"data.holders names a node >= node_count ({self.node_count})")
        _require(not (self.data.holders and self.privacy.enabled),
                 "data.holders leaves nodes without records: not with privacy")
        _require(not (self.data.holders and self.protocol.weighting is Weighting.EXAMPLES),
                 "data.holders leaves nodes no examples to weight by: not with weighting = "
                 "examples")
        for peer, route in self.routes.items():
            _check_route(peer, route)
        _require(not (self.secagg.enabled and self.protocol.mode is Mode.ASYNC),
                 "secagg needs protocol.mode = sync (its sums are per round)")
        for name in ("outer_momentum", "outer_average"):
            _require(not (getattr(self.train, name) and self.protocol.mode is Mode.ASYNC),
                     f"train.{name} needs protocol.mode = sync (a round's step is per round)")
        _require(not (self.secagg.enabled and self.robust.rule != "none"),
                 "robust.rule needs the neighbours' individual estimates: not with secagg "
                 "(its masks hide them; the norm bound still checks each secure sum)")
        check_secagg_compression(self.secagg, self.compression.kind)
        _require(not (self.protocol.weighting is Weighting.EXAMPLES
                      and (self.secagg.enabled or self.privacy.enabled)), WEIGHTING_REFUSED)
        _require(not self.secagg.enabled or self.security.admission,
                 "secagg needs security.admission (pair masks use the certified keys)")
        _require(bool(self.federation) and len(self.federation) <= 64,
                 "federation must be 1 to 64 characters")
        _require(len(self.listen) >= 1, "listen needs at least one multiaddr")
        check_relay(self.relay, self.listen, self.bootstrap)
        _require(self.node_count >= 1, "node_count must be at least 1")
        _require(0 <= self.node_index < self.node_count, "node_index must be in [0, node_count)")
        _require(self.expected_members >= 0, "expected_members must be >= 0")
        _require(self.rounds >= 0, "rounds must be >= 0")
        _require(self.settle_seconds > 0, "settle_seconds must be positive")
        _require(self.slowdown >= 1.0, "slowdown must be at least 1")


def check_metrics(port: int, addr: str = "127.0.0.1") -> None:
    """The metrics server's port (0: off, else 1-65535) and address (an IP address)."""
    _require(not isinstance(port, bool) and isinstance(port, int) and 0 <= port <= 65535,
             f"metrics_port must be 0 (off) or a TCP port 1-65535, got {port!r}")
    try:
        ipaddress.ip_address(addr)
    except ValueError:
        raise ConfigError(f"metrics_addr must be an IP address, got {addr!r}") from None


_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def _check_route(peer: str, route: str) -> None:
    _require(bool(peer) and set(peer) <= _BASE58 and len(peer) <= 128,
             f"routes: {peer!r} is not a peer id (base58)")
    try:
        maddr = multiaddr.Multiaddr(route)
        port = maddr.value_for_protocol("tcp")
    except Exception:
        raise ConfigError(f"routes.{peer}: {route!r} is not a multiaddr with a /tcp/ part"
                          ) from None
    _require(bool(port), f"routes.{peer}: {route!r} is not a multiaddr with a /tcp/ part")
