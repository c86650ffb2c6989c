"""Catching up (after a restart, a late join or an outage) and the state protocol: the rules.

Under secure aggregation there is no plaintext path to one member's estimate. The state protocol
(``/gossipfl/state/1.0.0``) is not served, and a request that arrives anyway is refused with a
log line: the aggregator of a neighbourhood is by definition a neighbour, and one answer would
hand it a member's estimate in the clear. No node pulls one either: a restarted or behind node
goes on from its own checkpointed model at the round its neighbours are in (their heartbeats and
masked inputs say which), and its next secure round brings in the neighbourhood's masked sum.

Without secure aggregation a node serves its public estimate x̂, which its neighbours receive
every round anyway, and never its private model.

Pure decisions only: no I/O, no clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

from gossipfl.gossip.codes import RUNNING, NodeStatus


class StateRefusal(enum.Enum):
    """Why a state request is refused."""

    SECURE_AGGREGATION = "secure aggregation is on: no estimate is served in the clear"
    NOT_NEIGHBOUR = "no link with this peer"

    @property
    def key(self) -> str:
        """The rejection counter it is counted under."""
        return {StateRefusal.SECURE_AGGREGATION: "state_refused_secagg",
                StateRefusal.NOT_NEIGHBOUR: "not_neighbour"}[self]


def state_refusal(*, secure_aggregation: bool, neighbour: bool,
                  member: bool) -> StateRefusal | None:
    """Whether to refuse a state request: always under secure aggregation, and from anyone
    but an admitted neighbour; None: answer it with the public estimate x̂."""
    if secure_aggregation:
        return StateRefusal.SECURE_AGGREGATION
    if not (neighbour and member):
        return StateRefusal.NOT_NEIGHBOUR
    return None


def upper_median(rounds: Iterable[int]) -> int:
    """The upper median: one neighbour claiming a far-off round cannot carry a node there."""
    ordered = sorted(rounds)
    return ordered[len(ordered) // 2]


def rounds_in_progress(neighbours: Iterable[str],
                       heartbeats: Mapping[str, tuple[int, NodeStatus]],
                       masked: Mapping[str, int]) -> dict[str, int]:
    """The round each neighbour is in, from what it told us itself: a heartbeat carries the last
    round it finished (it is in the next one, if still running); a masked input names the round
    it is in. Neighbours that told us neither are left out."""
    result: dict[str, int] = {}
    for peer in neighbours:
        candidates = []
        beat_round, status = heartbeats.get(peer, (-1, None))
        if status in RUNNING and beat_round >= 0:
            candidates.append(beat_round + 1)
        if peer in masked:
            candidates.append(masked[peer])
        if candidates:
            result[peer] = max(candidates)
    return result


def secure_catch_up_round(next_round: int, in_progress: Iterable[int]) -> int:
    """Under secure aggregation: the round to go on at, from this node's own next round and the
    rounds its neighbours are in. Most of them ahead: their round (upper median); else its own.
    Nothing is pulled: the model stays this node's own."""
    rounds = list(in_progress)
    if not rounds:
        return next_round
    return max(next_round, upper_median(rounds))
