"""Contributions: the contribution protocol's handler (one persistent stream a neighbour, a
frame and an ack at a time), the checks a contribution passes before it is applied, and opening
sealed payloads (signed and encrypted to this node)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from gossipfl.aggregation.bounds import norm_bound
from gossipfl.gossip.codes import AckCode, AckReason, NodeStatus
from gossipfl.gossip.wire import (
    MAX_CONTROL_BYTES,
    Ack,
    Contribution,
    Known,
    M,
    Sealed,
    WireError,
)
from gossipfl.node.compression import vector_of
from gossipfl.node.estimates import EstimateError
from gossipfl.node.layout import LayoutError
from gossipfl.node.links import note_peer_round
from gossipfl.node.security import EnvelopeError
from gossipfl.node.state import Node

if TYPE_CHECKING:
    from gossipfl.gossip.peers import Channel

log = logging.getLogger("gossipfl.node")

PROTO_CONTRIBUTION = "/gossipfl/contribution/1.0.0"
PROTO_SEALED = "/gossipfl/sealed-contribution/1.0.0"
# A neighbour is at most a round or two ahead in the synchronous protocol; a contribution far
# beyond that would make every later genuine one look stale, so it is refused.
FUTURE_ROUNDS = 3


def ahead_allowed(node: Node) -> int:
    """How many rounds past the last one known a neighbour's contribution may be. A node
    lingering after done keeps its last round while the neighbours that reopened run on, each
    reopening up to ``max_consensus_rounds`` more: it takes what they send (a delta asks for
    the full estimate) and judges whether to reopen too; a contribution beyond every
    reopening's rounds is still refused."""
    if not node.settle.lingering:
        return FUTURE_ROUNDS
    protocol = node.protocol
    return FUTURE_ROUNDS + (protocol.max_reopen + 1) * protocol.max_consensus_rounds


async def on_contribution(node: Node, channel: Channel) -> None:
    """Serve one neighbour's contribution stream: a frame, an ack, and again.

    The stream stays open across rounds (opening a libp2p stream costs several times more
    CPU than sending on one). Each frame must arrive within ``idle_timeout`` of the last;
    an idle stream is closed, and the sender opens a new one when it next needs to.
    """
    while True:
        with trio.move_on_after(node.idle_timeout) as scope:
            message, round_ = await node.receive_payload(channel, Contribution)
        if scope.cancelled_caught:
            log.debug("closing the idle contribution stream from %s", channel.remote)
            return
        if not node.limiter.allow(channel.remote, trio.current_time()):
            node.flood(channel.remote, "more frames a second than allowed")
            return
        if message is None:
            status, reason = AckCode.REJECTED, AckReason.ENVELOPE_REFUSED
        else:
            status, reason = accept_contribution(node, channel.remote, message)
        ack = Ack(node.config.federation, round_, node.peer_id, status, reason)
        with trio.fail_after(node.protocol.request_timeout):
            await channel.send(ack, MAX_CONTROL_BYTES)
        if status == AckCode.OK:  # a neighbour linked after our round's send gets it now
            node.hand_over(channel.remote)
        if status == AckCode.REJECTED and AckReason.of(reason) in (
                AckReason.WRONG_FEDERATION, AckReason.NOT_NEIGHBOUR):
            return


#: Rejections of a neighbour's estimate for its value (not its timing): it answered the round.
BAD_VALUES = frozenset({"norm", "non_finite"})


def accept_contribution(node: Node, remote: str, message: Contribution) -> tuple[AckCode, str]:
    """Validate and apply one contribution; returns the ack (status, reason: an
    :class:`AckReason` where peers act on it, else text for logs)."""
    if message.federation != node.config.federation:
        node.reject(remote, "contribution", "federation", repr(message.federation))
        return AckCode.REJECTED, AckReason.WRONG_FEDERATION
    if message.sender != remote:
        node.reject(remote, "contribution", "sender_mismatch", f"names {message.sender}")
        return AckCode.REJECTED, AckReason.SENDER_MISMATCH
    if message.receiver != node.peer_id:
        node.reject(remote, "contribution", "misaddressed", f"for {message.receiver}")
        return AckCode.REJECTED, AckReason.MISADDRESSED
    if not node.security.is_member(message.sender):
        node.reject(remote, "contribution", "not_member", "no valid certificate")
        return AckCode.REJECTED, AckReason.NOT_MEMBER
    if message.sender not in node.neighbours:
        node.reject(remote, "contribution", "not_neighbour", "no link with this peer")
        return AckCode.REJECTED, AckReason.NOT_NEIGHBOUR
    # a round far beyond the sender's last one (as its contributions and heartbeats told us)
    # and ours would make every later genuine contribution look stale (in async mode
    # neighbours' rounds drift apart, one at a time)
    known = max(node.round, node.estimates.holds(message.sender),
                node.member_state.get(message.sender, (-1, None))[0], 0)
    if message.round > known + ahead_allowed(node):
        note_peer_round(node, message.sender, message.round, NodeStatus.TRAINING)
        node.reject(remote, "contribution", "future",
                    f"round {message.round}, this node is at {node.round}")
        return AckCode.REJECTED, AckReason.TOO_FAR_AHEAD
    try:
        vector = vector_of(node.layout, message)
        node.estimates.apply(message, vector,
                             max_norm=norm_bound(node.model, node.config.robust.norm_ratio))
    except LayoutError as error:
        node.reject(remote, "contribution", "layout", str(error))
        return AckCode.REJECTED, str(error)
    except EstimateError as error:
        if error.status == AckCode.NEED_FULL:
            log.info("asking %s for its full estimate: %s", remote, error.reason)
        else:
            node.reject(remote, "contribution", error.key, error.reason)
            if error.key in BAD_VALUES:
                state = node.neighbours[message.sender]
                state.bad_round = max(state.bad_round, message.round)
                node.notify()
        return error.status, error.reason
    node.neighbours[message.sender].missed = 0
    node.membership.heard_from(message.sender, (), trio.current_time())
    node.notify()
    return AckCode.OK, ""


def open_sealed(node: Node, remote: str, sealed: Sealed) -> Contribution | None:
    return open_sealed_message(node, remote, sealed, Contribution)


def open_sealed_message(node: Node, remote: str, sealed: Sealed, expected: type[M],
                        known: Known | None = None) -> M | None:
    """Open an envelope; a tampered, redirected or forged one is dropped with a log line.
    ``known``: the table a masked input names its peers by place in (``Node.sum_table``)."""
    what = f"sealed {expected.KIND}"
    if not node.security.is_member(remote):
        node.reject(remote, what, "not_member", "no valid certificate")
        return None
    try:
        return node.security.open(remote, sealed, expected, known)
    except EnvelopeError as error:
        node.reject(remote, what, f"envelope_{error.reason}", str(error))
    except (WireError, ValueError) as error:  # anything else the inside may break
        node.reject(remote, what, "malformed", str(error))
    return None
