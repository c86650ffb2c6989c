"""Presigned survivor sets: a round with no dropout needs no consistency exchange.

When a member answers an unmask request whose set dropped no one, it also signs that same set
for the aggregator's next round and commits to it (:func:`presign`), under the consistency
check's own rules (:mod:`gossipfl.crypto.consistency`: one set per aggregator and round,
committed before it is signed). The aggregator keeps the checked signatures
(:func:`keep_presign`); when every input of the next round is in, it unmasks with them at once.
A presign gives an aggregator nothing the exchange would not: it is the set it would announce.
Its price is that a dropout in the next round fails that round at this aggregator (a majority
is committed to the full set; :func:`gossipfl.node.secure_round.honest_sum` refuses it at
once), and the round after asks again.
"""

from __future__ import annotations

from gossipfl.crypto import consistency
from gossipfl.crypto.consistency import Refusal, SurvivorSet
from gossipfl.gossip.wire import MaskedInput, UnmaskRequest, UnmaskResponse
from gossipfl.node.secagg_state import excused
from gossipfl.node.secure_early import keep_relayed
from gossipfl.node.secure_inputs import neighbourhood
from gossipfl.node.state import Node


def check(node: Node, aggregator: str, announced: SurvivorSet, *,
          input_sent: bool | None = None) -> Refusal | None:
    """Whether this member may sign or answer ``announced`` (see :func:`consistency.check_set`).
    ``input_sent`` None: whether we sent this aggregator an input for that round; a presign is
    made before the next round's input, so it passes True."""
    config, key = node.config.secagg, (aggregator, announced.round)
    members = neighbourhood(node, aggregator)
    return consistency.check_set(
        announced, federation=node.config.federation, aggregator=aggregator, me=node.peer_id,
        members=members,
        have_input=key in node.secagg.my_shares if input_sent is None else input_sent,
        min_contributors=config.min_contributors, committed=node.secagg.committed.get(key),
        history=node.secagg.signed.get(aggregator, {}), history_rounds=config.history_rounds,
        min_difference=config.min_set_difference,
        excused=excused(node, members, announced.round))


def commit(node: Node, aggregator: str, announced: SurvivorSet) -> None:
    """From now on this member signs and answers only ``announced`` for its aggregator, round."""
    key, signed = (aggregator, announced.round), node.secagg.signed
    if key not in node.secagg.committed:
        node.secagg.committed[key] = announced
        signed[aggregator] = consistency.remember(signed.get(aggregator, {}), announced.round,
                                                  announced.survivors,
                                                  node.config.secagg.history_rounds)


def presign(node: Node, aggregator: str, answered: SurvivorSet) -> bytes:
    """Our signature on ``answered`` for the next round, committed to, when it dropped no one
    and we may sign it (else b""): with every input in again, the aggregator unmasks with the
    presigned threshold and no consistency exchange. The rules are the consistency check's
    (one set per aggregator and round, committed before it is signed), so a presign gives
    the aggregator nothing the exchange would not: a dropout in the next round fails that
    round at this aggregator (we are committed to the full set), and the round after asks
    again."""
    if answered.dropped or not node.config.secagg.presign:
        return b""
    following = SurvivorSet(answered.federation, answered.aggregator, answered.round + 1,
                            answered.survivors, frozenset())
    if check(node, aggregator, following, input_sent=True) is not None:
        return b""
    commit(node, aggregator, following)
    return consistency.sign_set(following, node.security.signing_key)


def keep_presign(node: Node, peer: str, request: UnmaskRequest, signature: bytes) -> None:
    """Keep ``peer``'s signature on the request's set for the next round, once checked (a set
    that dropped someone is never presigned, so its presign is refused like a forged one)."""
    following = SurvivorSet(request.federation, request.sender, request.round + 1,
                            frozenset(request.survivors), frozenset())
    _keep(node, peer, following, signature, refused=bool(request.dropped))


def _keep(node: Node, peer: str, announced: SurvivorSet, signature: bytes, *,
          refused: bool = False) -> None:
    """Aggregator: keep ``peer``'s presign of the full set ``announced``, once checked."""
    if refused or consistency.check_signatures(announced, [(peer, signature)], needed=1):
        node.reject(peer, "signature", "bad_signature", f"presign for round {announced.round}")
        return
    held_set, held = node.secagg.presigned.get(announced.round, (announced.survivors, {}))
    if held_set == announced.survivors:
        node.secagg.presigned[announced.round] = (held_set, {**held, peer: signature})


def light_answer(node: Node, aggregator: str, request: UnmaskRequest,
                 announced: SurvivorSet) -> UnmaskResponse | None:
    """The answer to a light request (:func:`gossipfl.node.secure_early.is_light`: the
    aggregator unmasked the full set from early shares): no shares, no seeds, only the presign
    for the next round, under the set rules of any answer; the relayed shares are kept."""
    refusal = check(node, aggregator, announced)
    if refusal is not None or announced.dropped:  # light only for a round everyone was in
        node.reject(aggregator, "unmask request", "unmask_refused",
                    f"round {request.round}: "
                    f"{refusal.value if refusal else 'a light request that drops members'}")
        return None
    commit(node, aggregator, announced)
    next_signature = presign(node, aggregator, announced)
    if next_signature:
        keep_relayed(node, aggregator, request, neighbourhood(node, aggregator))
        node.secagg.presign_out[(aggregator, request.round + 1)] = next_signature
    return UnmaskResponse(node.config.federation, request.round, node.peer_id, (), (),
                          next_signature)


def keep_input_presign(node: Node, peer: str, message: MaskedInput) -> None:
    """Aggregator: keep the presign an accepted input carries (the member's signature on the
    full set for the input's round, made on our light request of the round before), checked
    as any presign."""
    _keep(node, peer, SurvivorSet(message.federation, node.peer_id, message.round,
                                  neighbourhood(node, node.peer_id), frozenset()),
          message.presign)
