"""Public model estimates (CHOCO-gossip bookkeeping), for this node and for each neighbour.

Every node j keeps a public estimate x̂_j that its neighbours also hold. Each round j publishes a
linear delta q_j = C(x_j − x̂_j) (C = identity, or a compressor of
:mod:`gossipfl.aggregation.compress`) and
everyone applies x̂_j += q_j with the same float32 arithmetic, so all copies stay bit-identical.
A neighbour whose copy fell behind (a lost frame, a new link) is sent the full estimate instead.
Because i only ever needs Σ_j W_ij x̂_j, the deltas stay summable for secure aggregation.

This module is state and arithmetic only: no I/O and no clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gossipfl.aggregation.bounds import within_bound
from gossipfl.aggregation.compress import Encoded, decode
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import Contribution


@dataclass
class OwnEstimate:
    """This node's public estimate, and the last delta it published."""

    vector: np.ndarray
    round: int = -1
    last_delta: np.ndarray | None = None
    base_round: int = -1  # the round ``last_delta`` applies on top of
    last_encoded: Encoded | None = None  # ``last_delta`` compressed, as it goes on the wire
    # parameter bytes of the contributions sent, as sent and as float32 (the compression ratio)
    bytes_packed: int = 0
    bytes_float32: int = 0
    # the digest of the initial model (wire_contribution.origin_digest) when the estimate at
    # round -1 is that model: the first delta then goes out on base round -1, not as a full
    # estimate (empty: never)
    origin: bytes = b""

    def publish(self, half_step: np.ndarray, round_: int,
                privatise: Callable[[np.ndarray], np.ndarray] | None = None,
                compress: Callable[[np.ndarray], Encoded | None] | None = None) -> np.ndarray:
        """q = C(x^{1/2} − x̂) (``privatise``: DP clip and noise, then ``compress``); x̂ += q.

        Returns q: exactly what the neighbours will add to their copy of x̂ (with compression
        the decoded q̃, so x̂ keeps what was dropped for later rounds: CHOCO's error feedback).
        """
        delta = (np.asarray(half_step, np.float32) - self.vector).astype(np.float32)
        if privatise is not None:
            delta = np.asarray(privatise(delta), np.float32)
        self.last_encoded = compress(delta) if compress is not None else None
        if self.last_encoded is not None:
            delta = decode(self.last_encoded)
        self.base_round = self.round
        self.vector = (self.vector + delta).astype(np.float32)
        self.last_delta = delta
        self.round = round_
        return delta

    def payload_for(self, peer_holds: int) -> tuple[str, int, np.ndarray]:
        """What to send a peer that holds our estimate as of ``peer_holds``.

        Returns (kind, base_round, array): the last delta when the peer holds its base, else
        the full estimate.
        """
        if self.last_delta is not None and peer_holds == self.base_round and (
                self.base_round >= 0 or self.origin):
            return "delta", self.base_round, self.last_delta
        return "full", -1, self.vector

    def note_sent(self, size: int, packed_bytes: int | None) -> None:
        """Count one contribution of ``size`` parameters sent (``packed_bytes``: compressed)."""
        self.bytes_packed += 4 * size if packed_bytes is None else packed_bytes
        self.bytes_float32 += 4 * size


@dataclass
class PeerEstimate:
    vector: np.ndarray
    round: int
    degree: int
    disagreement: float
    done: bool
    previous: np.ndarray | None = None  # the estimate one contribution earlier
    previous_round: int = -1
    training: bool = True  # the sender was still training when it sent this
    arrived: int = -1  # the receiver's own round when this arrived (async staleness)
    depth: int = 0  # the sender's settled depth, horizon, waiting (gossipfl.node.termination)
    horizon: int = 0
    waiting: int = 0
    examples: int = 0  # the sender's reported example count (0: it does not weight)

    def as_of(self, round_: int) -> np.ndarray:
        """The estimate for ``round_``: a neighbour may already be one round ahead of us."""
        if self.round > round_ and self.previous_round == round_ and self.previous is not None:
            return self.previous
        return self.vector


class EstimateError(ValueError):
    """A contribution that cannot be applied; ``status`` is the ack to send back."""

    def __init__(self, status: AckCode, reason: str, key: str = "stale") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.key = key  # the rejection counter it belongs to


@dataclass
class PeerEstimates:
    """The estimates this node holds of its neighbours."""

    size: int
    peers: dict[str, PeerEstimate]
    clock: int = -1  # the holder's current round, stamped on what arrives
    # the initial model every member starts from, and its digest: a neighbour's first delta
    # (base round -1, naming this origin) is added to it (None: such deltas ask for the full)
    initial: np.ndarray | None = None
    origin: bytes = b""

    @classmethod
    def empty(cls, size: int, initial: np.ndarray | None = None,
              origin: bytes = b"") -> PeerEstimates:
        return cls(size=size, peers={}, initial=initial, origin=origin)

    def holds(self, peer: str) -> int:
        entry = self.peers.get(peer)
        return entry.round if entry else -1

    def apply(self, message: Contribution, vector: np.ndarray,
              max_norm: float = math.inf) -> None:
        """Apply a validated contribution's array; raises :class:`EstimateError` if it cannot.

        Stale or replayed frames (round not newer than what we hold) are rejected; a delta on a
        base we do not hold asks for the full estimate; an estimate whose L2 norm would exceed
        ``max_norm`` (:func:`gossipfl.aggregation.bounds.norm_bound`) is rejected, and the one
        held before stays.
        """
        if vector.shape != (self.size,):
            raise EstimateError(AckCode.REJECTED, f"parameter count {vector.size} != {self.size}",
                                "layout")
        entry = self.peers.get(message.sender)
        held = entry.round if entry else -1
        if message.round <= held:
            raise EstimateError(AckCode.REJECTED, f"stale round {message.round} (hold {held})")
        if message.kind == "full":
            new_vector = np.array(vector, dtype=np.float32)
        elif message.base_round == -1:  # a first delta, on the initial model it names
            if entry is not None or self.initial is None or message.origin != self.origin:
                raise EstimateError(AckCode.NEED_FULL, "a first delta on another initial model "
                                    "than this node's (or on one it no longer holds)")
            with np.errstate(over="ignore", invalid="ignore"):
                new_vector = (self.initial + vector).astype(np.float32)
        else:
            if entry is None or message.base_round != held:
                raise EstimateError(
                    AckCode.NEED_FULL, f"delta on round {message.base_round}, hold {held}"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                new_vector = (entry.vector + vector).astype(np.float32)
        if not np.isfinite(new_vector).all():
            raise EstimateError(AckCode.REJECTED, "the estimate would hold NaN or infinite values",
                                "non_finite")
        if not within_bound(new_vector, max_norm):
            norm = float(np.linalg.norm(new_vector.astype(np.float64)))
            raise EstimateError(AckCode.REJECTED, f"the estimate's norm {norm:.3g} exceeds the "
                                f"bound {max_norm:.3g} (robust.norm_ratio)", "norm")
        self.peers[message.sender] = PeerEstimate(
            vector=new_vector,
            round=message.round,
            degree=message.degree,
            disagreement=message.disagreement,
            done=message.done,
            previous=entry.vector if entry else None,
            previous_round=held,
            training=message.training,
            arrived=self.clock,
            depth=message.depth,
            horizon=message.horizon,
            waiting=message.waiting,
            examples=message.examples,
        )

    def forget(self, peer: str) -> None:
        self.peers.pop(peer, None)
