"""Seeds dealt a round ahead and early shares (gossipfl.node.secure_early), between real node
objects (the fixtures of ``test_secure_round``: aggregator a, neighbourhood b, c, d, e,
threshold 3): the sum comes from the inputs alone when every member is committed to the full
set, and no deviation of the aggregator gets more out of it than the answers would give."""
# ruff: noqa: F811  (``star`` is a fixture imported from test_secure_round, used as an argument)
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from secagg_star import SCALE, _accept, _answers, _expected, _fresh, _masked, ask, ids, sign
from test_secure_round import _alive, _clean, star  # noqa: F401  (fixtures)

from gossipfl.node import secure_early, secure_round


def _dealt_round(star, r: int):
    """Round r with every member in, answered the honest way (each answer presigns the full set
    for r + 1 and keeps the next round's shares relayed to it); then round r + 1's inputs."""
    star["a"].round = r
    _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    assert _accept(star, inputs) == ["ok"] * 4
    assert all(not m.predealt and not m.early and m.next_shares for m in inputs.values())
    everyone = ids(star, "bcde")
    answers = _answers(star, r, inputs, everyone, [], "bcde")
    assert all(len(answer.next_signature) == 64 for answer in answers.values())
    star["a"].round = r + 1
    estimates = _fresh(star, r + 1)
    return estimates, _masked(star, "bcde", r + 1)


def test_every_member_committed_to_the_full_set_the_inputs_alone_give_the_sum(star) -> None:
    estimates, inputs = _dealt_round(star, 10)
    a, everyone = star["a"], ids(star, "bcde")
    assert all(m.predealt and len(m.early) == 4 for m in inputs.values())
    assert _accept(star, inputs) == ["ok"] * 4
    early = secure_early.early_answers(a, 11, inputs, everyone, full=True)
    assert sorted(early) == everyone
    total = secure_round.unmask(a, 11, inputs, everyone, [], early)
    bound = 4 / (2 * SCALE) + 1e-6
    assert np.abs(total - _expected(star, estimates, "bcde")).max() <= bound
    # three members' early shares are the threshold: enough without the fourth
    three = {p: early[p] for p in everyone[:3]}
    assert np.abs(secure_round.unmask(a, 11, inputs, everyone, [], three)
                  - _expected(star, estimates, "bcde")).max() <= bound
    # not the presigned full set, or a seed not the dealt one: no early answers at all
    assert secure_early.early_answers(a, 11, inputs, everyone, full=False) == {}
    fresh_seed = {**inputs, everyone[0]: dataclasses.replace(inputs[everyone[0]],
                                                              predealt=False)}
    assert secure_early.early_answers(a, 11, fresh_seed, everyone, full=True) == {}


def test_early_shares_only_from_a_member_committed_to_the_full_set(star) -> None:
    r = 20
    star["a"].round = r
    _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    assert _accept(star, inputs) == ["ok"] * 4
    everyone = ids(star, "bcde")
    c, e = star["c"], star["e"]
    # c signs a set that drops e (committed to it: no presign of the full set); the others
    # answer the full set with three signatures and presign it
    signatures = sign(star, r, everyone, [], "bde")
    for name in "bde":
        assert ask(star, name, r, inputs, everyone, [], signatures) is not None
    partial = ids(star, "bcd")
    assert sign(star, r, partial, ids(star, "e"), "c")
    star["a"].round = r + 1
    _fresh(star, r + 1)
    following = _masked(star, "bcde", r + 1)
    assert following[c.peer_id].early == ()  # not committed to the full set for r + 1
    assert all(len(following[star[n].peer_id].early) == 4 for n in "bde")
    # what the committed members revealed is on record: no pair seed of any member later
    for name in "bde":
        done_self, done_pair = star[name].secagg.revealed[(star["a"].peer_id, r + 1)]
        assert done_self == frozenset(everyone) and not done_pair
    # a member missing a relayed share sends none either (and reveals nothing)
    key = (star["a"].peer_id, r + 1)
    e.secagg.dealt[key].pop(next(iter(e.secagg.dealt[key])))
    e.secagg.revealed.pop(key)
    members = secure_round.neighbourhood(e, star["a"].peer_id)
    public_of = {p: secure_round.x25519_public(e, p) for p in members if p != e.peer_id}
    early = secure_early.early_shares(e, secure_round.pair_keys(e), star["a"].peer_id, r + 1,
                                      members, e.secagg.my_shares[key], public_of)
    assert early == () and key not in e.secagg.revealed


def test_a_lying_aggregator_gets_no_pair_seed_after_early_shares(star) -> None:
    """With every member's early shares of round r + 1 in hand, the aggregator claims b dropped
    (to strip b's pair masks as well): every member is committed to the full set and refuses,
    whatever signatures it attaches, so b's input stays masked."""
    _, inputs = _dealt_round(star, 30)
    assert _accept(star, inputs) == ["ok"] * 4
    r, b = 31, star["b"]
    claim = (ids(star, "cde"), [b.peer_id])
    assert sign(star, r, *claim, "bcde") == {}
    full_signatures = sign(star, r, ids(star, "bcde"), [], "bcde")
    for name in "cde":
        assert ask(star, name, r, inputs, *claim, full_signatures) is None
        assert not star[name].secagg.revealed[(star["a"].peer_id, r)][1]


def test_a_light_request_reveals_nothing_and_presigns_the_next_round(star) -> None:
    _, inputs = _dealt_round(star, 40)
    assert _accept(star, inputs) == ["ok"] * 4
    a, c, everyone = star["a"], star["c"], ids(star, "bcde")
    request = secure_early.light_request(secure_round.unmask_request(
        a, 41, inputs, everyone, [], c.peer_id, ()))
    assert secure_early.is_light(request) and request.next_shares
    answer = secure_round.answer_unmask(c, a.peer_id, request)
    assert answer is not None and answer.seed_shares == () == answer.pair_seeds
    assert len(answer.next_signature) == 64
    assert set(c.secagg.dealt[(a.peer_id, 42)]) == set(everyone) - {c.peer_id}
    # a light request that drops someone is refused (and commits the member to nothing)
    dropping = dataclasses.replace(request, round=43, survivors=tuple(ids(star, "cde")),
                                   dropped=(star["b"].peer_id,))
    assert secure_round.answer_unmask(c, a.peer_id, dropping) is None
    assert (a.peer_id, 43) not in c.secagg.committed


def test_malformed_dealing_fields_are_refused(star) -> None:
    star["a"].round = 50
    _fresh(star, 50)
    inputs = _masked(star, "bcde", 50)
    b = star["b"]
    message = inputs[b.peer_id]
    short = dataclasses.replace(message, next_shares=message.next_shares[:2])
    assert secure_round.accept_masked(star["a"], b.peer_id, short)[0].value == "rejected"
    others = [(p, b"x") for p in ids(star, "bcde") if p != b.peer_id]
    others_first = dataclasses.replace(message, early=(*others, (b.peer_id, b"x")))
    assert secure_round.accept_masked(star["a"], b.peer_id, others_first)[0].value == "rejected"
    assert star["a"].rejections["shares"] >= 2


def test_a_wrong_early_share_is_caught_and_the_sum_not_made(star) -> None:
    """A member that sends a well-formed share of the wrong value (as it could in an answer)
    leaves a self mask on the sum: its coordinates fall outside what the survivors' quantised
    inputs can add up to, and the unmask refuses (the aggregator then asks for the answers
    themselves). A share id not its sender's is not counted: with too few left, the same."""
    from gossipfl.crypto import shamir

    estimates, inputs = _dealt_round(star, 70)
    a, everyone = star["a"], ids(star, "bcde")
    assert _accept(star, inputs) == ["ok"] * 4
    early = secure_early.early_answers(a, 71, inputs, everyone, full=True)
    three = {p: early[p] for p in everyone[:3]}
    liar = everyone[0]
    share_id, value = shamir.decode_share(three[liar].seed_shares[1][1])
    wrong = bytes(value[:-1]) + bytes([value[-1] ^ 1])
    spoilt = dataclasses.replace(three[liar], seed_shares=(
        three[liar].seed_shares[0], (three[liar].seed_shares[1][0],
                                     shamir.encode_share(share_id, wrong)),
        *three[liar].seed_shares[2:]))
    with pytest.raises(ValueError, match="is not the sum of 4 quantised inputs"):
        secure_round.unmask(a, 71, inputs, everyone, [], {**three, liar: spoilt})
    total = secure_round.unmask(a, 71, inputs, everyone, [], three)  # the true shares: fine
    assert np.abs(total - _expected(star, estimates, "bcde")).max() <= 4 / (2 * SCALE) + 1e-6
    # a share id that is not its sender's is not counted: two members' shares are too few
    renamed = dataclasses.replace(three[liar], sender=everyone[3])
    with pytest.raises(ValueError, match="shares of"):
        secure_round.unmask(a, 71, inputs, everyone, [], {everyone[3]: renamed,
                                                          everyone[1]: three[everyone[1]]})


def test_a_dealt_seeds_shares_go_once_and_the_aggregator_puts_them_back(star) -> None:
    """An input whose self seed was dealt with the member's input of the round before, which
    the aggregator took, goes without that seed's shares (the same ciphertexts as the last
    input's next shares): the aggregator puts back the ones it holds, and answers made from
    them (the fallback when early shares fail) give the sum."""
    from gossipfl.gossip import wire
    from gossipfl.node.secure_inputs import finish_input

    estimates, inputs = _dealt_round(star, 60)
    a, r, everyone = star["a"], 61, ids(star, "bcde")
    members = {star[n].peer_id: star[n] for n in "bcde"}
    before = a.secagg.inbox[60]
    # not taken (no ack or request read yet): the shares go as they are
    assert all(finish_input(members[p], m).shares == m.shares for p, m in inputs.items())
    for node in members.values():  # as send_input_and_answer records the reply
        node.secagg.taken.add((a.peer_id, 60))
    sent = {p: finish_input(members[p], m) for p, m in inputs.items()}
    for p, message in sent.items():
        assert message.shares == () and inputs[p].shares == before[p].next_shares
        saved = (len(wire.encode_frame(inputs[p], 1 << 20))
                 - len(wire.encode_frame(message, 1 << 20)))
        assert saved >= 3 * 59  # a sealed share (59 bytes) to each of the three others
    assert _accept(star, sent) == ["ok"] * 4
    held = a.secagg.inbox[r]
    assert all(held[p].shares == inputs[p].shares for p in everyone)
    answers = _answers(star, r, held, everyone, [], "bcde")
    total = secure_round.unmask(a, r, held, everyone, [], answers)
    assert np.abs(total - _expected(star, estimates, "bcde")).max() <= 4 / (2 * SCALE) + 1e-6


def test_an_input_without_shares_needs_the_dealing_input_held(star) -> None:
    """A member that leaves its shares out where the aggregator holds no input of its from the
    round before (it refused or never got it, or restarted), or whose seed was not dealt
    (``predealt`` off), is refused: no sum could take its self mask off."""
    _, inputs = _dealt_round(star, 80)
    a, b = star["a"], star["b"]
    message = inputs[b.peer_id]
    bare = dataclasses.replace(message, shares=())
    del a.secagg.inbox[80][b.peer_id]  # as if the aggregator never took b's round-80 input
    before = a.rejections["shares"]
    assert secure_round.accept_masked(a, b.peer_id, bare)[0].value == "rejected"
    undealt = dataclasses.replace(bare, predealt=False, round=82)
    a.round = 82
    assert secure_round.accept_masked(a, b.peer_id, undealt)[0].value == "rejected"
    assert a.rejections["shares"] == before + 2
