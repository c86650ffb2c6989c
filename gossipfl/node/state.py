"""The node as its protocol modules see it: what they read and assign of a node, named here as
a :class:`typing.Protocol` (:class:`gossipfl.node.runtime.Node` has it all), so that none of
them imports the runtime; the runtime imports them.

The modules: :mod:`~gossipfl.node.membership_loop`, :mod:`~gossipfl.node.links`,
:mod:`~gossipfl.node.resume`, :mod:`~gossipfl.node.state_sync`,
:mod:`~gossipfl.node.contributions`, :mod:`~gossipfl.node.serving`,
:mod:`~gossipfl.node.summary`, :mod:`~gossipfl.node.exchange`, :mod:`~gossipfl.node.round`,
:mod:`~gossipfl.node.linger` and :mod:`~gossipfl.node.secure_round`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio

if TYPE_CHECKING:
    import random
    from collections import Counter
    from collections.abc import Callable, Mapping
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    import numpy as np
    from nacl.signing import SigningKey

    from gossipfl.adversary.role import Role
    from gossipfl.config import NodeConfig, ProtocolConfig
    from gossipfl.gossip.cert_holders import CertHolders
    from gossipfl.gossip.codes import NodeStatus
    from gossipfl.gossip.membership import Membership
    from gossipfl.gossip.peers import Channel, ConnectionReaper, Traffic
    from gossipfl.gossip.ratelimit import InFlight, PeerLimiter
    from gossipfl.gossip.transport import Offload, Transport
    from gossipfl.gossip.wire import Contribution, M, MaskedInput
    from gossipfl.node.estimates import OwnEstimate, PeerEstimates
    from gossipfl.node.layout import Layout
    from gossipfl.node.learner import LocalLearner
    from gossipfl.node.phases import Sched
    from gossipfl.node.secagg_state import SecAggState
    from gossipfl.node.security import NodeSecurity
    from gossipfl.node.termination import SettleState


class NodeError(RuntimeError):
    """The node cannot go on (no members, no neighbours): the message says why."""


@dataclass
class NeighbourState:
    missed: int = 0  # consecutive rounds without its contribution
    peer_holds: int = -1  # the round of our estimate it acknowledged
    unreachable_round: int = -1  # last round in which sending to it failed
    # last round whose estimate we refused as a bad value (out of the norm bound, non-finite):
    # it answered; waiting longer for it would let a Byzantine member stretch every round
    bad_round: int = -1
    linked_at: float = -math.inf  # when this link was made (the node's clock)
    channel: Channel | None = None  # our open contribution stream to it
    # our open secure-aggregation request streams to it, per protocol (streams.py)
    streams: dict[str, Channel] = field(default_factory=dict)
    stream_locks: dict[str, trio.Lock] = field(default_factory=dict)
    # held for one whole send on ``channel`` (frame, ack, a full resend): a round's send may
    # still be reading its ack when the next one starts (exchange.py)
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    sent_round: int = -1  # the last round whose send to it started (exchange.hand_over)
    # when it last heartbeat us and we answered (the node's clock), and the status the answer
    # carried: each end then holds the other's news (membership_loop.py: heartbeat_targets)
    answered_at: float = -math.inf
    answered_status: NodeStatus | None = None


@dataclass
class Acceleration:
    """A node's memory for accelerated consensus: ``beta`` for ``topology``, and the last
    consensus round's number, start model (``x_{t−1}`` for the next), neighbours and result."""

    topology: Mapping[str, frozenset[str]] | None = None
    beta: float = 0.0
    round: int = -1
    start: np.ndarray | None = None
    result: np.ndarray | None = None
    neighbours: frozenset[str] = frozenset()


class Node(Protocol):
    """What the protocol modules use of a node (``runtime.Node``; see its ``__init__`` for what
    each attribute holds)."""

    # what it is and what it runs on
    config: NodeConfig
    protocol: ProtocolConfig
    peer_id: str
    rng: random.Random
    out: Path
    learner: LocalLearner
    role: Role
    net: Transport | None
    offload: Offload
    sched: Sched | None  # its thread's (running, waiting) seconds: gossipfl.node.phases
    clock: Callable[[], float]
    background: trio.Nursery | None  # the node's nursery while it runs
    # membership, admission, bounds and counters
    membership: Membership
    security: NodeSecurity
    stamp_key: SigningKey
    stamp_epoch: int
    stamp_seq: int
    beat_now: trio.Event
    durable: bool
    synced_at: float
    beaten_seq: int
    own_stamp: bytes
    addrs: list[str]
    bootstrap: list[tuple[str, str]]
    addr_book: dict[str, tuple[str, ...]]
    member_state: dict[str, tuple[int, NodeStatus]]
    cert_holders: CertHolders
    heard_at: dict[str, float]
    hearsay_dialled: dict[str, int]
    stale_revocations_logged: dict[str, int]
    traffic: Traffic
    rejections: Counter[str]
    timeouts: int
    limiter: PeerLimiter
    in_flight: InFlight
    reaper: ConnectionReaper
    # links
    topology: dict[str, frozenset[str]] | None
    wanted: set[str]
    link_cap: int
    degree_target: int
    neighbours: dict[str, NeighbourState]
    linked_at: dict[str, float]
    relink_refused: dict[str, float]
    relink_failures: dict[str, tuple[int, float]]
    relink_now: trio.Event
    extra_refused: dict[str, float]
    replacements: list[dict[str, Any]]
    dropped: list[dict[str, Any]]
    relinks: int
    rejoins_served: int
    joined_late: bool
    # the model, the estimates and the rounds
    layout: Layout
    model: np.ndarray
    model_public: bool
    velocity: tuple[int, np.ndarray] | None  # outer momentum: (training round, velocity)
    acceleration: Acceleration  # accelerated consensus's memory (node/accelerate.py)
    tail: tuple[int, np.ndarray] | None  # train.outer_average: (models in, their mean)
    own: OwnEstimate
    estimates: PeerEstimates
    secagg: SecAggState
    status: NodeStatus
    round: int
    start_round: int
    resumed_from: int | None
    state_loaded: bool
    behind: int | None
    catch_ups: list[dict[str, Any]]
    async_seen: dict[str, int]
    disagreement: float
    diverged_rounds: list[int]
    filter_counts: dict[str, tuple[int, int]]
    step_scale: float
    isolated_rounds: int
    settle: SettleState
    final_accuracy: float | None
    startup_seconds: float | None
    history: list[dict[str, Any]]
    # differential privacy (budget: PrivacyBudget or RecordBudget, None with DP off)
    budget: Any
    dp_rng: np.random.Generator | None
    dp_exhausted_round: int | None

    @property
    def contribution_protocol(self) -> str: ...

    @property
    def idle_timeout(self) -> float: ...
    @property
    def reported_examples(self) -> int: ...

    def make_budget(self, spent: int = 0) -> Any: ...  # checkpoint.py restores the budget

    def channel_to(self, peer: str, protocol: str, addrs: tuple[str, ...] | None = None,
                   ) -> AbstractAsyncContextManager[Channel]: ...

    def addrs_of(self, peer: str) -> tuple[str, ...]: ...

    async def greet(self, peer: str) -> None: ...

    async def send_payload(self, channel: Channel,
                           message: Contribution | MaskedInput) -> None: ...

    async def receive_payload(self, channel: Channel,
                              expected: type[M]) -> tuple[M | None, int]: ...

    async def wait_for(self, pending: Callable[[], list[str]], deadline: float) -> list[str]: ...

    def notify(self) -> None: ...

    def hand_over(self, peer: str) -> None: ...  # a late link gets our estimate (exchange.py)

    def flood(self, peer: str, detail: str, key: str = "flood") -> None: ...

    def reject(self, peer: str, what: str, reason_key: str, detail: str) -> None: ...

    def check_origin(self, channel: Channel, what: str, federation: str, sender: str) -> bool: ...

    def write_metrics(self, record: dict[str, Any]) -> None: ...
