"""Secure aggregation: what a node keeps between rounds, for both roles, and which members it
has itself seen silent (churn, which the differencing rule of
:mod:`gossipfl.crypto.consistency` excuses)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from gossipfl.crypto import consistency
from gossipfl.crypto.consistency import SurvivorSet
from gossipfl.gossip.membership import SILENT_INTERVALS
from gossipfl.gossip.wire import MaskedInput, UnmaskRequest, UnmaskResponse

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    import numpy as np

    from gossipfl.config import NodeConfig, ProtocolConfig
    from gossipfl.crypto.pair_keys import PairKeys
    from gossipfl.gossip.membership import Membership

R = TypeVar("R")

KEEP_ROUNDS = 4  # how many past rounds of secrets a contributor keeps for late unmask requests

INLINE_WORDS = 1 << 18
"""Masking or unmasking a vector of up to this many words runs on the node's event loop; a
longer one in a worker thread. Both take a few milliseconds at this size (masking 1.5 ms,
unmasking five inputs 2 ms here), where a worker-thread hop on a loaded machine costs more:
10 ms median, measured on 8 node processes on 2 cores, which is why the quickstart's secure
rounds (9k words) spent a third of their secure-sum time waiting for the thread."""


@dataclass(eq=False)
class Parked:
    """An accepted masked input whose stream the aggregator keeps unanswered until its round's
    survivors are fixed: the answer is then the member's unmask request, and the member's
    unmask answer comes back on the same stream (:mod:`gossipfl.node.secure_talk`)."""

    request: UnmaskRequest | None = None  # set (with ``asked``) by the aggregator's round
    asked: trio.Event = field(default_factory=trio.Event)  # set: request it, or (None) just ack
    answer: UnmaskResponse | None = None
    answered: trio.Event = field(default_factory=trio.Event)
    closed: bool = False  # the stream was acked without a request: ask on another


@dataclass(frozen=True)
class Dealt:
    """A self seed a contributor dealt a round ahead (:mod:`gossipfl.node.secure_early`): the
    seed, its own share of it, the encrypted shares it sent, and the members it was split
    among."""

    seed: bytes
    own_share: bytes
    sealed: tuple[tuple[str, bytes], ...]
    members: frozenset[str]


@dataclass
class SecAggState:
    """Per-node secure-aggregation state, for both roles."""

    inbox: dict[int, dict[str, MaskedInput]] = field(default_factory=dict)  # aggregator role
    # (round, member) whose input this aggregator refused for what it held (layout, origin,
    # weight, shares): the member sends no other, so the round waits for it no longer
    refused: set[tuple[int, str]] = field(default_factory=set)
    closed: set[int] = field(default_factory=set)  # rounds whose survivor set is fixed
    confirmed: dict[int, frozenset[str]] = field(default_factory=dict)  # sets signed by enough
    keys: PairKeys | None = None  # our X25519 agreements, made once (secure_inputs.pair_keys)
    # per (round, member): accepted inputs whose streams wait for the round's unmask request
    parked: dict[tuple[int, str], Parked] = field(default_factory=dict)
    # per round: the set our members presigned for it in the last round's answers, and by whom
    presigned: dict[int, tuple[frozenset[str], dict[str, bytes]]] = field(default_factory=dict)
    # contributor role, per (aggregator, round): our own share of our own self seed, the one set
    # we signed or answered, and whose self-mask shares / pair seeds we revealed
    my_shares: dict[tuple[str, int], bytes] = field(default_factory=dict)
    committed: dict[tuple[str, int], SurvivorSet] = field(default_factory=dict)
    revealed: dict[tuple[str, int], tuple[frozenset[str], frozenset[str]]] = field(
        default_factory=dict)
    signed: dict[str, dict[int, frozenset[str]]] = field(default_factory=dict)  # per aggregator
    # seeds dealt a round ahead, per (aggregator, round): ours, and the encrypted shares of the
    # other members' that the aggregator relayed to us (gossipfl.node.secure_early)
    dealing: dict[tuple[str, int], Dealt] = field(default_factory=dict)
    dealt: dict[tuple[str, int], dict[str, bytes]] = field(default_factory=dict)
    # our presigns made on light requests, per (aggregator, round), sent with that input
    presign_out: dict[tuple[str, int], bytes] = field(default_factory=dict)
    # (aggregator, round) whose input of ours the aggregator took (acked, or asked us to
    # unmask): it holds that input's next shares, which our next input then need not repeat
    taken: set[tuple[str, int]] = field(default_factory=set)
    # full rounds waived (gossipfl.node.secure_sparse.waiver): by us as aggregator, and to us
    # as a member, per (aggregator, round)
    waived: set[int] = field(default_factory=set)
    waivers: set[tuple[str, int]] = field(default_factory=set)
    seen_silent: dict[str, int] = field(default_factory=dict)  # member → round last seen silent
    refused_rounds: list[int] = field(default_factory=list)
    early_rounds: int = 0  # sums unmasked from early shares, with no wait for answers
    failed_rounds: list[int] = field(default_factory=list)
    # per neighbour: (round, disagreement, done, settled depth, horizon, waiting) of its last
    # input (gossipfl.node.termination)
    peer_status: dict[str, tuple[int, float, bool, int, int, int]] = field(
        default_factory=dict)
    # compressed secure aggregation (gossipfl.node.secure_sparse), aggregator role: the running
    # sum Σ_{j∈base} w_ij x̂_j, its total weight, and the members it covers (None: no base yet)
    running: np.ndarray | None = None
    running_weight: float = 0.0
    base: frozenset[str] = frozenset()
    # consensus delta rounds narrowed to fewer levels (secure_sparse.narrowing): this node's
    # own sums' (round → levels), those it was told of ((aggregator, round) → levels), and
    # (round, max |Σ c L|) of its last consensus delta sum
    narrowed: dict[int, int] = field(default_factory=dict)
    narrowings: dict[tuple[str, int], int] = field(default_factory=dict)
    last_sum: tuple[int, int] = (-1, 0)

    def forget_before(self, round_: int) -> None:
        for r in [r for r in self.inbox if r < round_]:
            del self.inbox[r]
        self.refused = {k for k in self.refused if k[0] >= round_}
        self.closed = {r for r in self.closed if r >= round_}
        self.presigned = {r: held for r, held in self.presigned.items() if r >= round_}
        self.parked = {k: p for k, p in self.parked.items() if k[0] >= round_}
        for table in (self.my_shares, self.committed, self.revealed, self.dealing, self.dealt,
                      self.presign_out):
            for key in [k for k in table if k[1] < round_ - KEEP_ROUNDS]:
                del table[key]
        self.taken = {k for k in self.taken if k[1] >= round_ - KEEP_ROUNDS}
        self.waived = {r for r in self.waived if r >= round_ - KEEP_ROUNDS}
        self.waivers = {k for k in self.waivers if k[1] >= round_ - KEEP_ROUNDS}
        self.narrowed = {r: n for r, n in self.narrowed.items() if r >= round_ - KEEP_ROUNDS}
        self.narrowings = {k: n for k, n in self.narrowings.items()
                           if k[1] >= round_ - KEEP_ROUNDS}


async def compute(node: Node, words: int, fn: Callable[..., R], *args: object) -> R:
    """``fn(*args)``: here when it handles at most :data:`INLINE_WORDS` words, else in the
    node's worker thread (``node.offload``)."""
    if words <= INLINE_WORDS:
        return fn(*args)
    return await node.offload(fn, *args)


class Node(Protocol):
    """What this module uses of a node (``runtime.Node``), named here so that it needs no
    import of the runtime."""

    peer_id: str
    config: NodeConfig
    protocol: ProtocolConfig
    secagg: SecAggState
    membership: Membership
    clock: Callable[[], float]
    disagreement: float
    neighbours: Mapping[str, object]
    offload: Callable[..., Awaitable[Any]]


def excused(node: Node, members: frozenset[str], r: int) -> frozenset[str]:
    """Members this node has itself seen silent within the window: a set that differs from a
    recent one by them only is churn, not a claim (:func:`consistency.too_close`). Silent: no
    proof of life for half the member timeout (at least three heartbeats): no progress of its
    signed liveness stamps, direct or relayed, and no message from it directly. A relayed age
    ("heard just now") is a claim anyone can make, so it does not count."""
    window = node.config.secagg.history_rounds
    node.secagg.seen_silent = consistency.seen_silent(
        node.secagg.seen_silent, members - {node.peer_id}, node.membership.live_at,
        node.clock(), silence_seconds(node), r, window)
    return consistency.excused(node.secagg.seen_silent, r, window)


def silence_seconds(node: Node) -> float:
    """How long without proof of life a member must be before its absence is excused as churn:
    half the member timeout, at least three heartbeat intervals."""
    protocol = node.protocol
    return max(SILENT_INTERVALS * protocol.heartbeat_interval, protocol.member_timeout / 2)


def alive_since(node: Node, peers: frozenset[str], since: float) -> bool:
    """Whether one of ``peers`` proved itself alive (a newer signed stamp, or a message straight
    from it) after ``since``: a live member heartbeats every interval, a dead one never again."""
    return any((node.membership.live_at(p) or -math.inf) > since for p in peers)
