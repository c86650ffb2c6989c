"""Byzantine members (issue 9): nodes that run the protocol but send crafted estimates.

Each role replaces what the node sends each neighbour each round (:meth:`Role.payload`) with
a full estimate from :mod:`gossipfl.adversary.attacks`, so the neighbour's copy of the
attacker's x̂ becomes exactly that vector; a neighbour's robust rule and norm bound are all
that stand in the way. Per kind (``[[adversaries]] strength``: 0 for the default of
:data:`~gossipfl.adversary.attacks.DEFAULT_STRENGTH`):

- ``sign_flip``, ``gaussian``, ``scale``: train honestly, then send ``−x``, ``x + N(0, σ²)``,
  ``c·x`` of their own model.
- ``label_flip``: trains on its data with every label ``y`` replaced by ``C − 1 − y`` and
  sends that model as an honest node would.
- ``free_rider``: does no training and sends the estimate it started with, every round, while
  it mixes in everyone else's work.
- ``alie``, ``ipm``, ``dissensus``: no training; aimed at each neighbour (its *target*), from
  the target's estimate and those of the target's honest neighbours (read from the
  colluders' :class:`~gossipfl.adversary.board.Board`), rushing: in a synchronous round the
  attacker waits for this round's honest estimates (up to ``RUSH_SHARE`` of the send's time
  limit) before it answers, as a real attacker can. The graph is known to every member
  (``node.topology``), so it knows each target's neighbours and their degrees (its mixing
  weights); the colluders are listed in ``adversary.colluders``.

Under secure aggregation the same vector goes into the masked input for each aggregator
(:meth:`Role.masked_estimate`): ``craft(node, aggregator, r)`` is the one source for both paths,
the colluding kinds aiming at the aggregator. A crafted masked input skips the honest range
check (``checks_inputs``); the quantiser still clips each coordinate of ``w · x̂`` to ±clip, and
the aggregator can only bound the sum. The colluding kinds hear no individual estimate under
secure aggregation (nor do their colluders): they craft from what they hold, their own resting
model at worst, without waiting (``details.lacking_inputs`` counts what they lacked).

The tally: ``attempts`` crafted estimates sent, ``succeeded`` those the neighbour took (a norm
bound refusal shows as ``details.refused``); under secure aggregation, masked inputs the
aggregator took into its sum (whether that sum then passed its norm bound is not visible per
input: the neighbours' ``rejected.norm_sum`` says).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import trio

from gossipfl.adversary import attacks
from gossipfl.adversary.board import Board
from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.role import Payload, Role
from gossipfl.aggregation.mixing import neighbour_weights
from gossipfl.config import AdversaryConfig, Mode
from gossipfl.node.learner import TrainResult

Node = Any  # a gossipfl.node.runtime.Node (see role.py)

log = logging.getLogger("gossipfl.adversary")

RUSH_SHARE = 0.5  # of min(request_timeout, round_timeout): how long a rushing attacker waits
RUSH_POLL = 0.02  # seconds between two looks at what it holds and at the board


class Resting:
    """A learner that does no work: training returns the model it was given."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def train(self, vector: np.ndarray, round_: int, epochs: float | None = None,
              dp: Any = None) -> TrainResult:
        return TrainResult(np.asarray(vector, np.float32).copy(), 0.0, 0.0, len(self.y), 0.0)


class Byzantine(Role):
    """Sends ``craft(node, peer, r)`` as a full estimate; subclasses say what it is."""

    trains = True
    checks_inputs = False  # a crafted masked input skips the honest range check

    def __init__(self, config: AdversaryConfig) -> None:
        super().__init__(config)
        self.strength = config.strength or attacks.DEFAULT_STRENGTH.get(self.kind.value, 1.0)

    def setup(self, node: Node) -> None:
        if not self.trains:
            node.learner = Resting(node.learner)
        log.warning("this node is a Byzantine member (%s, strength %g)", self.kind.value,
                    self.strength)

    async def payload(self, node: Node, peer: str, r: int, kind: str, base: int,
                      array: np.ndarray) -> Payload:
        if peer in self.config.colluders:  # a fellow attacker: nothing to gain
            return kind, base, array
        vector = await self.craft(node, peer, r)
        self.tally.attempts += 1
        return "full", -1, np.asarray(vector, np.float32)

    async def masked_estimate(self, node: Node, aggregator: str, r: int,
                              estimate: np.ndarray) -> np.ndarray:
        if aggregator in self.config.colluders:
            return estimate
        vector = await self.craft(node, aggregator, r)
        self.tally.attempts += 1
        return np.asarray(vector, np.float32)

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        """The full estimate this member wants ``peer`` to hold as its round-``r`` x̂ (plain),
        or to sum in as its input (secure aggregation, ``peer`` the aggregator)."""
        raise NotImplementedError

    def acked(self, peer: str, r: int, ok: bool) -> None:
        if peer in self.config.colluders:  # sent the honest payload: not an attempt
            return
        if ok:
            self.tally.succeeded += 1
        else:
            self.tally.details["refused"] += 1


class SignFlip(Byzantine):
    kind = AdversaryKind.SIGN_FLIP

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        return attacks.sign_flip(node.own.vector, self.strength)


class Gaussian(Byzantine):
    kind = AdversaryKind.GAUSSIAN

    def setup(self, node: Node) -> None:
        super().setup(node)
        self.rng = np.random.default_rng([node.config.seed, node.config.node_index, 9])

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        return attacks.gaussian(node.own.vector, self.rng, self.strength)


class Scale(Byzantine):
    kind = AdversaryKind.SCALE

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        return attacks.scale(node.own.vector, self.strength)


class FreeRider(Byzantine):
    kind = AdversaryKind.FREE_RIDER
    trains = False

    def setup(self, node: Node) -> None:
        super().setup(node)
        self.stale = np.asarray(node.own.vector, np.float32).copy()

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        return self.stale


class LabelFlip(Byzantine):
    """Poisoned data; what it sends is what the protocol computed from it."""

    kind = AdversaryKind.LABEL_FLIP
    checks_inputs = True  # its estimate is what the protocol computed: checked as an honest one

    def setup(self, node: Node) -> None:
        super().setup(node)
        classes = int(node.learner.dataset.num_classes)
        node.learner.y = (classes - 1 - np.asarray(node.learner.y)).astype(node.learner.y.dtype)

    async def payload(self, node: Node, peer: str, r: int, kind: str, base: int,
                      array: np.ndarray) -> Payload:
        self.tally.attempts += 1
        return kind, base, array

    async def masked_estimate(self, node: Node, aggregator: str, r: int,
                              estimate: np.ndarray) -> np.ndarray:
        self.tally.attempts += 1
        return estimate


class Colluding(Byzantine):
    """An attack on each neighbour computed from its neighbourhood's honest estimates."""

    trains = False

    def setup(self, node: Node) -> None:
        super().setup(node)
        self.board = Board(self.config.board) if self.config.board else None
        self.colluders = set(self.config.colluders) | {node.peer_id}
        # it must hear every honest estimate, however far from its own (resting) model: no
        # norm bound here
        node.config = replace(node.config, robust=replace(node.config.robust, norm_ratio=0.0))

    def post_held(self, node: Node) -> None:
        """Put the honest neighbours' latest estimates we hold on the board."""
        if self.board is None:
            return
        for peer, entry in list(node.estimates.peers.items()):
            if peer not in self.colluders:
                self.board.post(peer, entry.round, entry.vector)

    def honest_of(self, node: Node, target: str) -> list[str]:
        """The target's honest neighbours (by the graph every member knows), less itself."""
        around = (node.topology or {}).get(target, frozenset())
        return sorted(p for p in around if p not in self.colluders and p != target)

    def estimate(self, node: Node, peer: str, r: int) -> np.ndarray | None:
        """``peer``'s round-``r`` estimate if we or a colluder hold it (None otherwise)."""
        entry = node.estimates.peers.get(peer)
        if entry is not None and entry.round >= r:
            return entry.as_of(r)
        posted = self.board.read(peer) if self.board is not None else None
        if posted is not None and posted[0] >= r:
            return posted[1]
        return None

    def latest(self, node: Node, peer: str) -> np.ndarray | None:
        entry = node.estimates.peers.get(peer)
        posted = self.board.read(peer) if self.board is not None else None
        if posted is not None and (entry is None or posted[0] > entry.round):
            return posted[1]
        return entry.vector if entry is not None else None

    async def gather(self, node: Node, target: str, r: int) -> tuple[np.ndarray,
                                                                      dict[str, np.ndarray]]:
        """The target's estimate and its honest neighbours', this round's where they come in
        time (rushing), else the latest known; the target's falls back to our own x̂."""
        graph = node.topology or {}
        honest = self.honest_of(node, target)
        # only what a colluder hears can come: one next to the peer, by the graph
        heard = [p for p in honest if p in node.estimates.peers
                 or graph.get(p, frozenset()) & self.colluders]
        self.tally.details["lacking_inputs"] += len(honest) - len(heard)
        needed = [target, *heard]
        protocol = node.config.protocol
        # nothing to wait for asynchronously, nor under secure aggregation (no estimate is
        # ever heard in the clear)
        rushing = protocol.mode is not Mode.ASYNC and not node.config.secagg.enabled
        wait = RUSH_SHARE * min(protocol.request_timeout, protocol.round_timeout) if rushing \
            else 0.0
        deadline = trio.current_time() + wait
        while True:
            self.post_held(node)
            found = {p: v for p in needed if (v := self.estimate(node, p, r)) is not None}
            if len(found) == len(needed) or trio.current_time() >= deadline:
                break
            await trio.sleep(RUSH_POLL)
        for peer in needed:
            if peer not in found and (v := self.latest(node, peer)) is not None:
                found[peer] = v
                self.tally.details["stale_inputs"] += 1
        self.tally.details["lacking_inputs"] += sum(p not in found for p in needed)
        own = found.pop(target, None)
        if own is None:
            own = np.asarray(node.own.vector, np.float32)
        return own, found

    def byzantine_weight(self, node: Node, target: str,
                         honest: list[str]) -> tuple[dict[str, float], float]:
        """The target's Metropolis–Hastings weights for its honest neighbours, and the total
        it gives its Byzantine ones (degrees from the graph)."""
        graph = node.topology or {}
        around = graph.get(target, frozenset())
        degree = max(len(around), 1)
        _, weights = neighbour_weights(degree, {p: len(graph.get(p, ())) for p in around})
        byzantine = sum(w for p, w in weights.items() if p in self.colluders)
        if byzantine <= 0:  # the graph is not what we think: weigh ourselves as one neighbour
            byzantine = 1.0 / (1 + degree)
        return {p: weights[p] for p in honest if p in weights}, byzantine


class Alie(Colluding):
    kind = AdversaryKind.ALIE

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        target, honest = await self.gather(node, peer, r)
        return attacks.alie(target, list(honest.values()), self.strength)


class Ipm(Colluding):
    kind = AdversaryKind.IPM

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        target, honest = await self.gather(node, peer, r)
        return attacks.ipm(target, list(honest.values()), self.strength)


class Dissensus(Colluding):
    kind = AdversaryKind.DISSENSUS

    async def craft(self, node: Node, peer: str, r: int) -> np.ndarray:
        target, honest = await self.gather(node, peer, r)
        weights, byzantine = self.byzantine_weight(node, peer, sorted(honest))
        honest = {p: v for p, v in honest.items() if p in weights}
        return attacks.dissensus(target, honest, weights, byzantine, self.strength)


BYZANTINE_ROLES: dict[AdversaryKind, type[Role]] = {
    role.kind: role for role in (SignFlip, Gaussian, Scale, FreeRider, LabelFlip, Alie, Ipm,
                                 Dissensus)
}
