"""Seeds dealt a round ahead: a round with every input in needs no unmask round trip.

Without this, an aggregator that has every input of a round must still ask each member for its
shares of the survivors' self seeds, and wait for the threshold of answers: on 8 node processes
sharing 2 cores that wait was 32 ms median a round (the members' processes must be scheduled
to answer), most of secure aggregation's cost over plain gossip.

**Dealing.** With its input for round r a member sends, besides the encrypted shares of that
input's self seed, the encrypted shares of the self seed it will use for the same aggregator's
round r + 1 (``next_shares``, sealed under round r + 1's context) and keeps that seed
(:class:`~gossipfl.node.secagg_state.Dealt`). The aggregator relays them in round r's unmask
requests (``UnmaskRequest.next_shares``), beside round r's own; a member that answers and
presigns the full set for round r + 1 (:mod:`gossipfl.node.secure_presign`) keeps the relayed
ciphertexts addressed to it.

**Early shares.** Building its input for round r + 1, a member uses the dealt seed (its input
says ``predealt``) and, when it is committed to the full set for that aggregator and round (no
one dropped: its presign) and holds relayed shares from every other member, decrypts them and
sends them in its input in the clear (``early``: its own share of its own seed first). An
aggregator whose inputs are all in, from exactly the presigned set, all ``predealt``, holds
the threshold of early shares of every self seed at once: it unmasks without waiting, and
still sends its unmask requests (their answers carry the next presigns, and the requests the
next round's dealt shares), whose answers it no longer waits for.

**What it reveals, to whom.** An early share is one the member would reveal in its unmask
answer for the set it is committed to: shares of survivors' self seeds, never a pair seed, and
it records them as revealed, so the double-masking rule (never both a member's self-seed share
and its pair seed, for one aggregator and round) holds across early shares and answers. The
only thing given up is that the member reveals before it has seen the threshold of signatures
on the set. That check exists so that no honest member reveals pair seeds for a set that drops
a member whose self seed others revealed. Here: to read member k's input the aggregator needs
k's self seed (the threshold of shares) and k's pair seeds with every other member. A committed
honest member never reveals a pair seed for that aggregator and round (it answers only the
full set), so unless k is the only honest member committed, k's input stays masked; and if it
is, k's self seed needs the threshold of shares from members colluding with the aggregator
(k never sends a share of its own seed but its own one), which breaks the scheme's threshold
however its rounds run.
"""

from __future__ import annotations

import dataclasses
import logging

from gossipfl.crypto import secagg, shamir
from gossipfl.crypto.consistency import threshold
from gossipfl.crypto.pair_keys import PairKeys
from gossipfl.gossip.wire import MaskedInput, UnmaskRequest, UnmaskResponse
from gossipfl.node.secagg_state import Dealt
from gossipfl.node.state import Node

log = logging.getLogger("gossipfl.secagg")


def split_and_seal(node: Node, keys: PairKeys, aggregator: str, round_: int,
                   members: frozenset[str], seed: bytes,
                   public_of: dict[str, bytes]) -> Dealt:
    """Shamir-split ``seed`` among ``members`` (the threshold of them rebuild it) and seal each
    other member's share to it, under ``round_``'s context for ``aggregator``."""
    me = node.peer_id
    context = secagg.seed_context(node.config.federation, aggregator, round_)
    ids = shamir.share_ids_for(members)
    shares = shamir.split_secret(seed, threshold(len(members)), sorted(ids.values()))
    sealed = tuple(
        (other, keys.encrypt_seed_share(
            sender=me, recipient=other, context=context,
            share=shamir.encode_share(ids[other], shares[ids[other]]),
            recipient_public=public_of[other]))
        for other in sorted(members) if other != me
    )
    return Dealt(seed, shamir.encode_share(ids[me], shares[ids[me]]), sealed, members)


def seeds_for(node: Node, keys: PairKeys, aggregator: str, r: int, members: frozenset[str],
              public_of: dict[str, bytes]) -> tuple[Dealt, bool]:
    """The self seed of this member's input for round ``r`` (the one it dealt last round for
    these members when it did: True) and the one it deals now for round r + 1 (kept)."""
    dealt = node.secagg.dealing.pop((aggregator, r), None)
    predealt = dealt is not None and dealt.members == members
    if dealt is None or not predealt:
        dealt = split_and_seal(node, keys, aggregator, r, members, secagg.fresh_self_seed(),
                               public_of)
    node.secagg.dealing[(aggregator, r + 1)] = split_and_seal(
        node, keys, aggregator, r + 1, members, secagg.fresh_self_seed(), public_of)
    return dealt, predealt


def early_shares(node: Node, keys: PairKeys, aggregator: str, r: int, members: frozenset[str],
                 own_share: bytes, public_of: dict[str, bytes]) -> tuple[tuple[str, bytes], ...]:
    """This member's shares of every member's dealt self seed for ``aggregator``'s round
    ``r``, in the clear, when it is committed to the full set for that round and holds a
    relayed share from every other member; else () (and nothing is revealed)."""
    me, key = node.peer_id, (aggregator, r)
    committed = node.secagg.committed.get(key)
    held = node.secagg.dealt.get(key, {})
    done_self, done_pair = node.secagg.revealed.get(key, (frozenset(), frozenset()))
    if (committed is None or committed.dropped or committed.survivors != members
            or set(held) != members - {me} or done_pair):
        return ()
    context = secagg.seed_context(node.config.federation, aggregator, r)
    shares = [(me, own_share)]
    for owner, ciphertext in sorted(held.items()):
        try:
            shares.append((owner, keys.decrypt_seed_share(
                ciphertext, sender=owner, recipient=me, context=context,
                sender_public=public_of[owner])))
        except (ValueError, KeyError) as error:
            node.reject(aggregator, "dealt share", "bad_share", f"{owner}: {error}")
            return ()
    node.secagg.revealed[key] = (done_self | members, done_pair)
    return tuple(shares)


def keep_relayed(node: Node, aggregator: str, request: UnmaskRequest,
                 members: frozenset[str]) -> None:
    """Keep the next round's shares relayed to us in ``request`` (called once we presigned the
    full set for that round: only then can they be used)."""
    relayed = dict(request.next_shares)
    if set(relayed) == members - {node.peer_id}:
        node.secagg.dealt[(aggregator, request.round + 1)] = relayed


def relayed_to(inputs: dict[str, MaskedInput], survivors: list[str],
               peer: str) -> tuple[tuple[str, bytes], ...]:
    """The next round's shares addressed to ``peer`` from the survivors' inputs (all or none)."""
    relayed = []
    for owner in survivors:
        if owner == peer:
            continue
        ciphertext = dict(inputs[owner].next_shares).get(peer)
        if ciphertext is None:
            return ()
        relayed.append((owner, ciphertext))
    return tuple(relayed)


def check_input(message: MaskedInput, members: frozenset[str], sender: str) -> str | None:
    """Why a masked input's dealing fields are malformed (None: they are sound): next shares
    go to every other member or none, early shares cover every member, the sender first."""
    if message.next_shares and {p for p, _ in message.next_shares} != members - {sender}:
        return "next shares must go to every other member of the neighbourhood"
    if message.early and ({p for p, _ in message.early} != members
                          or message.early[0][0] != sender):
        return "early shares must cover every member, the sender's own first"
    return None


def early_answers(node: Node, r: int, inputs: dict[str, MaskedInput], survivors: list[str],
                  full: bool) -> dict[str, UnmaskResponse]:
    """The early shares of round ``r``'s inputs, as the answers they stand for; empty unless
    the round is ``full`` (every member in, the set its members presigned, no one dropped) and
    every input's self seed is the one its member dealt (then the shares match the seeds)."""
    if not full or not all(inputs[p].predealt for p in survivors):
        return {}
    return {p: UnmaskResponse(node.config.federation, r, p, inputs[p].early, ())
            for p in survivors if inputs[p].early}


def unmask_request(node: Node, r: int, inputs: dict[str, MaskedInput], survivors: list[str],
                   dropped: list[str], peer: str,
                   signatures: tuple[tuple[str, bytes], ...]) -> UnmaskRequest:
    """The request to survivor ``peer``: the signed survivor set, the shares addressed to it."""
    shares = tuple((owner, dict(inputs[owner].shares)[peer])
                   for owner in survivors if owner != peer)
    return UnmaskRequest(node.config.federation, r, node.peer_id, tuple(survivors),
                         tuple(dropped), shares, signatures,
                         relayed_to(inputs, survivors, peer))


def light_request(request: UnmaskRequest) -> UnmaskRequest:
    """``request`` without the shares and signatures an answer would need: the aggregator has
    unmasked from early shares and asks only for the next round's presign (and relays the
    next round's dealt shares). Its answer reveals nothing, so it needs no signatures."""
    return dataclasses.replace(request, shares=(), signatures=(), light=True)


def is_light(request: UnmaskRequest) -> bool:
    """Whether ``request`` is a :func:`light_request`: it asks for no secret (its answer
    reveals none, whatever set it names) and is not answered on a held stream."""
    return request.light


__all__ = ["check_input", "early_answers", "early_shares", "is_light", "keep_relayed",
           "light_request", "relayed_to", "seeds_for", "split_and_seal", "unmask_request"]
