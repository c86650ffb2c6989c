"""Secure aggregation over each neighbourhood: node i learns Σ_j W_ij x̂_j, never one x̂_j.

Node i is the aggregator of its own neighbourhood U_i (its neighbours in the federation's
topology) and a contributor to each neighbour's. Per round r (Bonawitz et al., CCS 2017, with
the pair keys taken from the members' certificates, so no key round is needed):

1. Contributor j, for aggregator k: quantise ``w_kj · x̂_j`` into Z_{2^32} inside [-clip, clip],
   add a fresh self mask PRG(b_j) and the pair masks ±PRG(p_jl) with every co-neighbour l in
   U_k (p_jl = KDF(X25519(j, l), federation ‖ k ‖ r)), Shamir-share b_j among U_k (threshold: a
   majority), encrypt each share to its holder, and send it all to k (``MaskedInput``).
2. Aggregator i waits for its neighbours' inputs (or the round timeout), fixes the survivors V
   (later inputs for the round are refused), and refuses the round outright with fewer than
   ``min_contributors`` (a sum of one or two is no secret) or than the Shamir threshold.
3. Consistency (Bonawitz's round 3, :mod:`gossipfl.crypto.consistency`): i announces V and the
   dropped to each survivor, which signs them unless it signed another set for i and round r,
   or a set within ``history_rounds`` rounds that differs from V by fewer than
   ``min_set_difference`` members.
4. It asks each survivor to unmask (``UnmaskRequest``, with at least the Shamir threshold of
   signatures on V): the survivor returns the shares it holds of the survivors' self seeds (its
   own share of its own seed included; never the seed) and its round pair seeds with the
   dropped; never both kinds for one member, and only for the one set it signed.
5. i rebuilds each self seed from threshold shares, removes the self masks and the dropped
   members' pair masks and gets Σ_{j∈V} w_ij x̂_j; the model becomes (1 − Σ_{j∈V} w_ij) x½ + it.

In a round with no dropout, presigns (:mod:`gossipfl.node.secure_presign`) skip step 3 and
seeds dealt a round ahead (:mod:`gossipfl.node.secure_early`) let step 5 start from the inputs'
early shares, step 4 asking only for the next presigns. With ``[compression] kind`` "randk",
"int8" or "int4" most training rounds send random-k deltas, or integer-weighted levels in a
6- to 16-bit ring (:mod:`gossipfl.node.secure_sparse`). Step 1 (and the range check) is
:mod:`gossipfl.node.secure_inputs`, its names re-exported here; this module is the
aggregator's side and the member's answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import trio

from gossipfl.crypto import consistency, secagg
from gossipfl.crypto.consistency import Refusal, SurvivorSet, threshold
from gossipfl.crypto.secagg_sparse import packed_bytes
from gossipfl.gossip.codes import AckCode, AckReason, NodeStatus
from gossipfl.gossip.wire import (
    MAX_CONTROL_BYTES,
    Ack,
    ConsistencyRequest,
    ConsistencyResponse,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from gossipfl.node import secure_early, secure_inputs, secure_sparse, secure_talk, streams
from gossipfl.node.secagg_state import (
    KEEP_ROUNDS,
    Parked,
    SecAggState,
    alive_since,
    compute,
    excused,
    silence_seconds,
)
from gossipfl.node.secure_early import unmask_request
from gossipfl.node.secure_inputs import (
    PROTO_MASKED,
    masked_input,
    neighbourhood,
    pair_keys,
    weight,
    x25519_public,
)
from gossipfl.node.secure_presign import (
    check,
    commit,
    keep_input_presign,
    keep_presign,
    light_answer,
    presign,
)
from gossipfl.node.secure_unmask import unmask
from gossipfl.node.state import Node

if TYPE_CHECKING:
    from gossipfl.gossip.peers import Channel

log = logging.getLogger("gossipfl.secagg")
R = TypeVar("R", ConsistencyResponse, UnmaskResponse)

PROTO_UNMASK = "/gossipfl/secagg/unmask/3.0.0"  # 2: signatures in, no self seed out; 3: presigns
PROTO_CONSISTENCY = "/gossipfl/secagg/consistency/1.0.0"


# -- member: signing and answering an aggregator ------------------------------------------------


def _announced(request: ConsistencyRequest | UnmaskRequest) -> SurvivorSet:
    """The set as the request states it (:func:`check` compares its names with the sender)."""
    return SurvivorSet(request.federation, request.sender, request.round,
                       frozenset(request.survivors), frozenset(request.dropped))


async def on_consistency_request(node: Node, channel: Channel) -> None:
    """Serve an aggregator's survivor set (see :func:`answer_consistency`)."""
    request = await channel.receive(ConsistencyRequest, MAX_CONTROL_BYTES)
    await channel.send(answer_consistency(node, channel.remote, request), MAX_CONTROL_BYTES)


def answer_consistency(node: Node, aggregator: str,
                       request: ConsistencyRequest) -> ConsistencyResponse:
    """Sign the announced survivor set, or refuse it (logged); signing commits to it."""
    announced = _announced(request)
    refusal = check(node, aggregator, announced)
    fed, r, me = node.config.federation, request.round, node.peer_id
    if refusal is not None:
        node.reject(aggregator, "survivor set", "consistency_refused",
                    f"round {r}: {refusal.value}")
        return ConsistencyResponse(fed, r, me, b"", refusal.value)
    commit(node, aggregator, announced)
    return ConsistencyResponse(fed, r, me,
                               consistency.sign_set(announced, node.security.signing_key), "")


async def on_unmask_request(node: Node, channel: Channel) -> bool:
    """Serve an aggregator's unmask request (see :func:`answer_unmask`); False if refused."""
    request = await channel.receive(UnmaskRequest, MAX_CONTROL_BYTES,  # ~140 KB at 255 members
                                    node.sum_table(channel.remote))
    response = answer_unmask(node, channel.remote, request)
    if response is not None:
        await channel.send(response, MAX_CONTROL_BYTES)
    return response is not None


def plan_answer(node: Node, aggregator: str,
                request: UnmaskRequest) -> consistency.Reveal | Refusal:
    """What this member would reveal for ``request`` (nothing is committed), or why not."""
    done_self, done_pair = node.secagg.revealed.get((aggregator, request.round),
                                                    (frozenset(), frozenset()))
    announced = _announced(request)
    return (check(node, aggregator, announced)
            or consistency.check_signatures(
                announced, request.signatures,
                needed=threshold(len(neighbourhood(node, aggregator))))
            or consistency.plan_reveal(announced, revealed_self=done_self,
                                       revealed_pair=done_pair))


def answer_unmask(node: Node, aggregator: str, request: UnmaskRequest) -> UnmaskResponse | None:
    """This node's unmask answer for ``aggregator``, or None (logged) when it must refuse.

    Answers only the one survivor set it signed (or, having signed none, one it would sign),
    only with at least the Shamir threshold of valid signatures from distinct survivors on that
    set, and never reveals both the self-mask shares and the pair seed of one member across
    all requests for this aggregator and round. Its own self seed never leaves: only shares.
    """
    r, me, key = request.round, node.peer_id, (aggregator, request.round)
    secure_sparse.note_waiver(node, aggregator, r, request.waives)  # its round r + 2's kind
    secure_sparse.note_narrowing(node, aggregator, r, request.narrows,  # and levels
                                 request.narrow_levels)
    announced = _announced(request)
    if secure_early.is_light(request):
        return light_answer(node, aggregator, request, announced)
    plan = plan_answer(node, aggregator, request)
    if isinstance(plan, Refusal):
        node.reject(aggregator, "unmask request", "unmask_refused", f"round {r}: {plan.value}")
        return None
    commit(node, aggregator, announced)
    done_self, done_pair = node.secagg.revealed.get(key, (frozenset(), frozenset()))
    node.secagg.revealed[key] = (done_self | plan.self_shares_of, done_pair | plan.pair_seeds_with)
    context = secagg.seed_context(node.config.federation, aggregator, r)
    shares = [(me, node.secagg.my_shares[key])]
    for owner, ciphertext in request.shares:
        if owner not in plan.self_shares_of or owner == me:
            continue  # shares of a dropped member's self seed are never revealed
        try:
            shares.append((owner, pair_keys(node).decrypt_seed_share(
                ciphertext, sender=owner, recipient=me, context=context,
                sender_public=x25519_public(node, owner))))
        except (ValueError, KeyError) as error:
            node.reject(aggregator, "unmask request", "bad_share", f"{owner}: {error}")
    pair_seeds = tuple(
        (other, pair_keys(node).agree_seed(x25519_public(node, other), context=context))
        for other in sorted(plan.pair_seeds_with)
    )
    next_signature = presign(node, aggregator, announced)
    if next_signature:  # committed to the full set next round: its dealt shares can be used
        secure_early.keep_relayed(node, aggregator, request, neighbourhood(node, aggregator))
    return UnmaskResponse(node.config.federation, r, me, tuple(sorted(shares)), pair_seeds,
                          next_signature)


async def send_masked_inputs(node: Node, r: int, *, done: bool) -> dict[str, str]:
    """This round's masked inputs (:func:`gossipfl.node.secure_inputs.send_masked_inputs`);
    an aggregator's unmask request on an input's stream is answered by :func:`answer_unmask`.
    The final inputs (``done``) come after this node's last sum: every input held is acked."""
    if done:
        secure_talk.release(node, node.round + 2)
    return await secure_inputs.send_masked_inputs(node, r, done=done, answer=answer_unmask)


# -- aggregator --------------------------------------------------------------------------------


async def on_masked_input(node: Node, channel: Channel) -> bool:
    """Receive one masked input (signed and encrypted to us when payloads are sealed); an
    accepted one is answered by its round's unmask request when the round asks in time
    (:mod:`gossipfl.node.secure_talk`), else acked. False: the stream ends."""
    message, round_ = await node.receive_payload(channel, MaskedInput)
    if message is None:
        status, reason = AckCode.REJECTED, AckReason.ENVELOPE_REFUSED
    else:
        status, reason = accept_masked(node, channel.remote, message)
        # a final input (done) is for a round its aggregator may never sum: acked at once
        if status is AckCode.OK and not message.done and node.status is not NodeStatus.DONE:
            held = await secure_talk.hold_for_request(node, channel, message.round)
            if held is not None:
                return held
    await channel.send(Ack(node.config.federation, round_, node.peer_id, status, reason),
                       MAX_CONTROL_BYTES)
    return True


def accept_masked(node: Node, remote: str, message: MaskedInput) -> tuple[AckCode, str]:
    def refuse(key: str, detail: str) -> tuple[AckCode, str]:
        node.reject(remote, "masked input", key, detail)
        if key in FINAL_REFUSALS:  # its one input this round: not waited for any more
            node.secagg.refused.add((message.round, remote))
            node.notify()
        return AckCode.REJECTED, detail

    if message.federation != node.config.federation or message.sender != remote:
        return refuse("sender_mismatch", "federation or sender does not match the connection")
    if not node.security.is_member(remote):
        return refuse("not_member", "no valid certificate")
    if message.aggregator != node.peer_id:
        return refuse("misaddressed", f"for {message.aggregator}")
    if remote not in node.neighbours:
        return refuse("not_neighbour", "no link with this peer")
    if message.round in node.secagg.closed or message.round < node.round:
        return refuse("late", f"round {message.round} is already fixed")
    if message.round > node.round + 2:
        return refuse("future", f"round {message.round} is too far ahead of {node.round}")
    inbox = node.secagg.inbox.setdefault(message.round, {})
    if remote in inbox:
        return refuse("duplicate", f"a second input for round {message.round}")
    bits = secure_sparse.width(node, node.peer_id, message.round)
    count = secure_sparse.words(node, node.peer_id, message.round)
    if (message.sparse != secure_sparse.sparse_for(node, node.peer_id, message.round)
            or message.width != bits or len(message.data) != packed_bytes(count, bits)):
        return refuse("layout", f"{len(message.data)} bytes of {message.width}-bit words "
                                f"(sparse {message.sparse}), round {message.round} takes "
                                f"{count} {bits}-bit words")
    if message.origin != secure_sparse.origin(node, message.round):
        return refuse("origin", "a delta from another initial model, or none named")
    expected = weight(node, node.peer_id, remote)
    if abs(message.weight - expected) > 1e-9:
        return refuse("weight", f"weight {message.weight}, expected {expected}")
    members = neighbourhood(node, node.peer_id)
    if message.predealt and not message.shares:  # the ones it dealt with its last input
        earlier = node.secagg.inbox.get(message.round - 1, {}).get(remote)
        if earlier is None:
            return refuse("shares", "no shares, and no input of the round before dealt them")
        message = dataclasses.replace(message, shares=earlier.next_shares)
    if {p for p, _ in message.shares} != set(members) - {remote}:
        return refuse("shares", "shares must go to every other member of the neighbourhood")
    malformed = secure_early.check_input(message, members, remote)
    if malformed is not None:
        return refuse("shares", malformed)
    inbox[remote] = message
    if message.presign:
        keep_input_presign(node, remote, message)
    node.secagg.peer_status[remote] = (message.round, message.disagreement, message.done,
                                       message.depth, message.horizon, message.waiting)
    node.neighbours[remote].missed = 0
    node.membership.heard_from(remote, (), node.clock())
    node.notify()
    return AckCode.OK, ""


#: Refusals of an input its member follows with no other that round: not waited for after.
FINAL_REFUSALS = frozenset({"layout", "origin", "weight", "shares"})


async def wait_for_inputs(node: Node, r: int, deadline: float) -> list[str]:
    """Wait for every live neighbour's masked input for round r; returns those missing."""
    def pending() -> list[str]:
        inbox = node.secagg.inbox.get(r, {})
        return [
            p for p, state in node.neighbours.items()
            if p not in inbox and state.unreachable_round != r and (r, p) not in node.secagg.refused
            and not node.secagg.peer_status.get(p, (-1, 0.0, False))[2]
        ]

    waiting = await node.wait_for(pending, deadline)
    if waiting:
        node.timeouts += 1
        log.warning("round %d: no masked input from %s", r, ", ".join(waiting))
    return sorted(p for p in node.neighbours if p not in node.secagg.inbox.get(r, {}))


async def secure_sum(node: Node, r: int) -> tuple[np.ndarray, float, list[str]] | None:
    """Fix the survivors, have them sign the set, unmask; returns (Σ w x̂, Σ w, survivors) or
    None if refused/failed. An adversary that aggregates (:mod:`gossipfl.adversary`) runs its
    own step here instead."""
    try:
        if node.role.aggregates:
            return await node.role.secure_sum(node, r)
        return await honest_sum(node, r)
    finally:
        secure_talk.release(node, r)  # inputs not asked for get their acks


async def honest_sum(node: Node, r: int) -> tuple[np.ndarray, float, list[str]] | None:
    """The honest aggregator's step: the survivors it may announce, then :func:`sum_over`."""
    node.secagg.closed.add(r)
    inputs = secure_sparse.eligible(node, r, node.secagg.inbox.get(r, {}))
    if inputs is None:
        return _refuse(node, r, "no running sum to add random-k deltas to until the next full "
                       "round (secagg.full_every)")
    members = neighbourhood(node, node.peer_id)
    config = node.config.secagg
    held_set, held = node.secagg.presigned.get(r, (frozenset(), {}))
    if len(held) >= threshold(len(members)) and frozenset(inputs) != held_set:
        # a majority is committed to the full set (their presigns): no other set can be
        # signed this round; the next one asks again
        return _refuse(node, r, f"{len(held)} members presigned the full set for this round, "
                       f"and {len(held_set - set(inputs))} of its inputs are missing")
    minimum = consistency.minimum_survivors(len(members), config.min_contributors)
    def choose() -> frozenset[str] | None:
        return consistency.choose_survivors(
            frozenset(inputs), r, node.secagg.confirmed, minimum=minimum,
            history_rounds=config.history_rounds, min_difference=config.min_set_difference,
            excused=excused(node, members, r))

    chosen, since, absent = choose(), node.clock(), members - set(inputs)
    if chosen is None and len(inputs) >= minimum:
        # too close to a recent set: if the absent member died, its silence is excused within
        # the silence time; wait for that (once per dropout) rather than refuse round after
        # round, unless it proves itself alive meanwhile (then it is a claim: refused)
        with trio.move_on_after(silence_seconds(node) + 2 * node.protocol.heartbeat_interval):
            while chosen is None and not alive_since(node, absent, since):
                await trio.sleep(node.protocol.heartbeat_interval)
                chosen = choose()
    if chosen is None:
        return _refuse(node, r, f"{len(inputs)} contributor(s), fewer than {minimum}"
                       if len(inputs) < minimum else "the set differs from one summed in the "
                       f"last {config.history_rounds} rounds by fewer than "
                       f"{config.min_set_difference} members")
    return await sum_over(node, r, chosen)


async def sum_over(node: Node, r: int,
                   chosen: frozenset[str]) -> tuple[np.ndarray, float, list[str]] | None:
    """Announce ``chosen`` as the survivors of round r, collect signatures, unmask."""
    inputs = node.secagg.inbox.get(r, {})
    members = neighbourhood(node, node.peer_id)
    config = node.config.secagg
    survivors, dropped = sorted(chosen), sorted(members - chosen)
    announce = ConsistencyRequest(node.config.federation, r, node.peer_id, tuple(survivors),
                                  tuple(dropped))
    # the threshold of signatures is enough to go on: a survivor that answers later (a busy
    # process) is not waited for; its unmask request carries the others' signatures
    need = threshold(len(members))
    # presigned in the last round's answers (see :func:`presign`), when nobody dropped since
    held_set, held = node.secagg.presigned.pop(r, (frozenset(), {}))
    signatures = dict(held) if held_set == chosen and not dropped else {}
    if len(signatures) < need:
        await streams.until_enough(
            node, [functools.partial(ask_signature, node, peer, announce, signatures)
                   for peer in survivors if peer not in signatures],
            lambda: len(signatures) >= need)
    if len(signatures) < need:
        return _refuse(node, r, f"only {len(signatures)} survivor(s) signed the survivor set")
    node.secagg.confirmed = consistency.remember(node.secagg.confirmed, r, chosen,
                                                 config.history_rounds)
    signed = tuple(sorted(signatures.items()))
    # with no one dropped, threshold answers rebuild every self seed; with a dropout each
    # survivor's pair seeds are needed: all of them
    responses: dict[str, UnmaskResponse] = {}
    enough = len(survivors) if dropped else need
    # every input in from the presigned set, seeds dealt last round: their early shares
    # rebuild every self seed, and the requests are light (only the next presigns and dealt
    # shares to collect: nothing revealed, no signatures to check; not waited for)
    early = secure_early.early_answers(node, r, inputs, survivors,
                                       full=not dropped and held_set == chosen)
    light = len(early) >= enough
    waives = secure_sparse.waiver(node, r, chosen)  # round r + 2 as deltas, if the sum is exact
    words = len(inputs[survivors[0]].data) * 8 // inputs[survivors[0]].width
    early_total = None
    if light:  # the sum first (the early shares rebuild it): its size sets round r + 2's levels
        with contextlib.suppress(ValueError):
            early_total = await compute(node, words, unmask, node, r, inputs, survivors, dropped,
                                        early)
            secure_sparse.note_sum(node, r, early_total)
    # round r + 2's levels (sums shrank); an adversary's role may claim its own
    narrows, narrow = node.role.narrowing(node, r, secure_sparse.narrowing(node, r))

    def request_to(peer: str) -> UnmaskRequest:
        return dataclasses.replace(unmask_request(node, r, inputs, survivors, dropped, peer,
                                                  signed), waives=waives, narrows=narrows,
                                   narrow_levels=narrow)

    requests = {peer: secure_early.light_request(request_to(peer)) if light else request_to(peer)
                for peer in survivors}
    # handed to the held streams now: the round releases the others when it ends
    held_streams = {peer: secure_talk.place(node, peer, requests[peer]) for peer in survivors}
    rest = await streams.until_enough(
        node, [functools.partial(ask_unmask, node, peer, requests[peer], responses)
               if held_streams[peer] is None else
               functools.partial(ask_placed, node, peer, requests[peer], responses,
                                 held_streams[peer])
               for peer in survivors], lambda: len(early.keys() | responses.keys()) >= enough)
    node.secagg.early_rounds += light
    try:
        try:
            if light and early_total is None:
                raise ValueError("an early share was wrong")
            total = early_total if light else await compute(
                node, words, unmask, node, r, inputs, survivors, dropped, early | responses)
        except ValueError:
            if light:  # an early share was wrong: ask for the answers themselves
                responses = {}
                await streams.until_enough(node, [
                    functools.partial(ask_unmask, node, peer, request_to(peer), responses)
                    for peer in survivors], lambda: False)
            elif len(responses) == len(survivors):
                raise
            else:
                await rest()  # an answer short of shares: wait for the others, then retry
            total = await compute(node, words, unmask, node, r, inputs, survivors, dropped,
                                  dict(responses))
        secure_sparse.note_sum(node, r, total)
    except ValueError as error:
        node.secagg.failed_rounds.append(r)
        log.warning("round %d: secure aggregation failed: %s; this round goes on without it",
                    r, error)
        return None
    weights = sum(inputs[p].weight for p in survivors)
    return total, weights, survivors


def _refuse(node: Node, r: int, why: str) -> None:
    node.secagg.refused_rounds.append(r)
    log.warning("round %d: secure aggregation refused: %s; it goes on without it", r, why)


async def _ask(node: Node, peer: str, protocol: str, request: ConsistencyRequest | UnmaskRequest,
               expected: type[R]) -> R | None:
    """One request to ``peer`` and its answer, under the request timeout; None if none came."""
    with trio.move_on_after(node.protocol.request_timeout):
        try:
            return await streams.ask(node, peer, protocol, request, expected,
                                     known=node.sum_table(node.peer_id))
        except Exception as error:
            log.info("no %s from %s for round %d: %s", expected.KIND, peer, request.round, error)
    return None


async def ask_signature(node: Node, peer: str, request: ConsistencyRequest,
                        signatures: dict[str, bytes]) -> None:
    response = await _ask(node, peer, PROTO_CONSISTENCY, request, ConsistencyResponse)
    if response is None:
        return
    if response.sender != peer or response.round != request.round or response.refusal:
        log.info("%s did not sign the survivor set of round %d: %s", peer, request.round,
                 response.refusal or "mismatched answer")
    elif consistency.check_signatures(_announced(request), [(peer, response.signature)],
                                      needed=1):
        node.reject(peer, "signature", "bad_signature", f"round {request.round}")
    else:
        signatures[peer] = response.signature


async def ask_unmask(node: Node, peer: str, request: UnmaskRequest,
                     responses: dict[str, UnmaskResponse]) -> None:
    """Ask ``peer`` to unmask: on the stream its input came on when the aggregator holds it,
    else on an unmask stream of our own."""
    await ask_placed(node, peer, request, responses, secure_talk.place(node, peer, request))


async def ask_placed(node: Node, peer: str, request: UnmaskRequest,
                     responses: dict[str, UnmaskResponse], parked: Parked | None) -> None:
    """:func:`ask_unmask` once the request was handed to the stream ``parked`` (None: none is
    held; ask on an unmask stream of our own)."""
    if parked is not None:
        response = await secure_talk.answer_on(node, parked)
    else:
        response = await _ask(node, peer, PROTO_UNMASK, request, UnmaskResponse)
    if response is not None and response.sender == peer and response.round == request.round:
        responses[peer] = response
        if response.next_signature:
            keep_presign(node, peer, request, response.next_signature)


__all__ = ["KEEP_ROUNDS", "PROTO_CONSISTENCY", "PROTO_MASKED", "PROTO_UNMASK", "SecAggState",
           "masked_input", "neighbourhood", "send_masked_inputs", "weight"]
