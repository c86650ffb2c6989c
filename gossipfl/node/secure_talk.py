"""One stream per member and aggregator carries a round's whole conversation.

A masked input is a request on the member's persistent stream to its aggregator
(:mod:`gossipfl.node.streams`). An accepted input is not acked at once: the aggregator's handler
holds the stream (:class:`~gossipfl.node.secagg_state.Parked`) until its round has fixed and
(where needed) had signed the survivor set, and answers with that member's unmask request; the
member answers it on the same stream. A round with every input in, whose set the members
presigned (:mod:`gossipfl.node.secure_presign`) and whose seeds they dealt a round ahead
(:mod:`gossipfl.node.secure_early`), then costs two frames per member, as a plain round does:
the input and the light request, which is not answered (its presign comes with the member's
next input); an input that is refused, or not asked for (the round was refused, or the member
is no survivor), gets its ack as before. Every frame goes where it went
on separate streams, under the same checks; only fewer frames cross.

Bounds: a handler holds a stream at most :func:`park_seconds`, then acks and the aggregator asks
on the unmask stream of its own (``PROTO_UNMASK``), as it does for a member whose stream is not
held; the member's side stays under its send limit (:mod:`gossipfl.node.secure_inputs`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.framing import StreamClosed
from gossipfl.gossip.wire import (
    MAX_CONTROL_BYTES,
    Ack,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from gossipfl.node.secagg_state import Parked
from gossipfl.node.secure_early import is_light
from gossipfl.node.state import Node

if TYPE_CHECKING:
    from gossipfl.gossip.peers import Channel

log = logging.getLogger("gossipfl.secagg")

#: The member's answer to an unmask request (``secure_round.answer_unmask``), or None: refused.
Answerer = Callable[[Node, str, UnmaskRequest], UnmaskResponse | None]


class UnmaskRefused(StreamClosed):
    """The member refused the unmask request that answered its input (logged where judged);
    the stream is reset, never retried."""


def park_seconds(node: Node) -> float:
    """How long an aggregator holds an accepted input's stream for its round's request, and
    then waits for the answer: a third of the member's send limit each (the first request on
    a stream is served within the request timeout, the input's read included), so that the
    member never gives up on the stream first."""
    return min(node.protocol.request_timeout, node.protocol.round_timeout) / 3


async def hold_for_request(node: Node, channel: Channel, r: int) -> bool | None:
    """Aggregator: hold the stream of ``channel.remote``'s accepted input for round ``r`` until
    the round asks it to unmask, then ask and take the answer on this stream. Returns None when
    the round did not ask (within :func:`park_seconds`): the caller acks as before; True once
    the member answered; False when the stream broke or the member refused (it ends)."""
    key, parked = (r, channel.remote), Parked()
    node.secagg.parked[key] = parked
    with trio.move_on_after(park_seconds(node)):
        await parked.asked.wait()
    if node.secagg.parked.get(key) is parked:
        del node.secagg.parked[key]
    request = parked.request
    if request is None:
        parked.closed = True
        return None
    sent = False
    try:
        with trio.move_on_after(park_seconds(node)):
            await channel.send(request, MAX_CONTROL_BYTES, node.sum_table(node.peer_id))
            sent = True
            if not is_light(request):  # a light one is not answered here: its presign
                # comes with the member's next input
                parked.answer = await channel.receive(UnmaskResponse, MAX_CONTROL_BYTES)
    except Exception as error:  # a refusal resets the stream; so may a failing member
        log.info("no unmask answer from %s for round %d on its input's stream: %s",
                 channel.remote, r, error)
    finally:
        parked.answered.set()
    return parked.answer is not None or (sent and is_light(request))


def release(node: Node, r: int) -> None:
    """Round ``r`` asks no more: every input of it (or before) still held is acked."""
    for key in [k for k in node.secagg.parked if k[0] <= r]:
        node.secagg.parked.pop(key).asked.set()


def place(node: Node, peer: str, request: UnmaskRequest) -> Parked | None:
    """Aggregator: hand ``request`` to the handler holding ``peer``'s input stream, at once
    (before the round releases the streams it did not ask on); None when no stream is held."""
    parked = node.secagg.parked.get((request.round, peer))
    if parked is None or parked.closed or parked.asked.is_set():
        return None
    parked.request = request
    parked.asked.set()
    return parked


async def answer_on(node: Node, parked: Parked) -> UnmaskResponse | None:
    """The member's answer on the held stream (:func:`place`), or None if it gave none
    (refused, or the stream broke)."""
    with trio.move_on_after(node.protocol.request_timeout):
        await parked.answered.wait()
    return parked.answer


async def ask_held(node: Node, peer: str, request: UnmaskRequest) -> UnmaskResponse | bool | None:
    """Aggregator: ask ``peer`` on the stream its input came on, if held. Returns its answer,
    None if it gave none (refused, or the stream broke), or False when no stream is held (ask
    on the unmask stream instead)."""
    parked = place(node, peer, request)
    return False if parked is None else await answer_on(node, parked)


async def send_input_and_answer(node: Node, channel: Channel, message: MaskedInput, peer: str,
                                r: int, answer: Answerer | None,
                                written: trio.Event | None,
                                finish: Callable[[MaskedInput], MaskedInput] | None = None,
                                ) -> Ack:
    """Member: send the masked input (``finish``ed now that the stream's last reply is read),
    then read its ack, or the round's unmask request and answer it here (raising
    :class:`UnmaskRefused` when it must refuse: the stream is reset, which the aggregator reads
    as no answer; a light request is not answered). Returns the ack (OK once asked)."""
    await node.send_payload(channel, message if finish is None else finish(message))
    if written is not None:
        written.set()
    reply = await channel.receive((Ack, UnmaskRequest), MAX_CONTROL_BYTES, node.sum_table(peer))
    if isinstance(reply, UnmaskRequest) or reply.status == AckCode.OK:
        node.secagg.taken.add((peer, r))  # it holds our next shares (secure_inputs.finish_input)
    if isinstance(reply, Ack):
        return reply
    response = answer(node, peer, reply) if answer is not None else None
    if response is None:
        raise UnmaskRefused(f"refused {peer}'s unmask request for round {reply.round}")
    if not is_light(reply):  # a light one's presign goes with our next input
        await channel.send(response, MAX_CONTROL_BYTES)
    return Ack(node.config.federation, r, peer, AckCode.OK, "")
