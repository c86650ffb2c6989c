"""The survivor-set consistency step, the threshold-only self masks and the differencing rule:
pure decisions on small exact examples, the wire, then a lying aggregator against real nodes
(the fixtures of ``test_secure_round``: aggregator a, neighbourhood b, c, d, e, threshold 3).
"""

# ruff: noqa: F811  (``star`` is a fixture imported from test_secure_round, used as an argument)
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import trio
from nacl.signing import SigningKey
from test_secure_round import (  # noqa: F401  (star, _alive and _clean are fixtures)
    NOW,
    _accept,
    _alive,
    _clean,
    _fresh,
    _masked,
    ask,
    ids,
    sign,
    star,
)
from trio.testing import MockClock

from gossipfl.config import ConfigError, SecAggConfig
from gossipfl.crypto import secagg, shamir
from gossipfl.crypto.consistency import (
    Refusal,
    Reveal,
    SurvivorSet,
    check_set,
    check_signatures,
    choose_survivors,
    excused,
    plan_reveal,
    remember,
    seen_silent,
    sign_set,
    too_close,
)
from gossipfl.crypto.liveness import sign_stamp, verify_stamp
from gossipfl.gossip import wire
from gossipfl.gossip.wire import (
    ConsistencyRequest,
    ConsistencyResponse,
    MemberInfo,
    UnmaskRequest,
    UnmaskResponse,
    WireError,
)
from gossipfl.node import secure_round
from gossipfl.node.membership_loop import absorb, heartbeat, renew_stamp

F = frozenset
MEMBERS = F("bcde")
KEYS = {m: SigningKey(bytes([i + 1]) * 32) for i, m in enumerate("bcdex")}


def _set(survivors: str, round_: int = 7, aggregator: str = "a") -> SurvivorSet:
    return SurvivorSet("fed", aggregator, round_, F(survivors), MEMBERS - F(survivors))


def _check(announced: SurvivorSet, **overrides) -> Refusal | None:
    args = {"federation": "fed", "aggregator": "a", "me": "c", "members": MEMBERS,
            "have_input": True, "min_contributors": 3, "committed": None, "history": {},
            "history_rounds": 50, "min_difference": 2}
    args.update(overrides)
    return check_set(announced, **args)


def _verify(announced: SurvivorSet, signatures, needed: int = 3) -> Refusal | None:
    return check_signatures(announced, signatures, needed=needed,
                            verify_key_of=lambda m: KEYS[m].verify_key)


# -- pure decisions ----------------------------------------------------------------------------


def test_canonical_bytes_bind_every_field_and_ignore_order() -> None:
    base = _set("bcd")
    assert base.canonical_bytes() == SurvivorSet("fed", "a", 7, F("dcb"), F("e")).canonical_bytes()
    others = [SurvivorSet("feD", "a", 7, F("bcd"), F("e")), _set("bcd", aggregator="b"),
              _set("bcd", round_=8), _set("bce"), SurvivorSet("fed", "a", 7, F("bcde"), F())]
    assert len({s.canonical_bytes() for s in [base, *others]}) == 6
    # length prefixes: names cannot be regrouped into the same bytes
    assert (SurvivorSet("f", "a", 1, F({"ab", "c"}), F()).canonical_bytes()
            != SurvivorSet("f", "a", 1, F({"a", "bc"}), F()).canonical_bytes())


@pytest.mark.parametrize(("announced", "overrides", "refusal"), [
    (_set("bcd"), {}, None),
    (_set("bcd"), {"have_input": False}, Refusal.NO_INPUT),
    (_set("bcd", aggregator="b"), {}, Refusal.WRONG_ROUND),
    (SurvivorSet("fed", "a", 7, F("bcd"), F()), {}, Refusal.NOT_A_SPLIT),
    (SurvivorSet("fed", "a", 7, F("bcd"), F("de")), {}, Refusal.NOT_A_SPLIT),
    (_set("bde"), {}, Refusal.NOT_A_SURVIVOR),
    (_set("bc"), {"min_contributors": 3}, Refusal.TOO_FEW_SURVIVORS),
    # 6 members: threshold 4 beats min_contributors 3
    (SurvivorSet("fed", "a", 7, F("bcd"), F("efg")), {"members": F("bcdefg")},
     Refusal.TOO_FEW_SURVIVORS),
    (_set("bcd"), {"committed": _set("bcd")}, None),  # a replay of the set we signed
    (_set("bcd"), {"committed": _set("bcde")}, Refusal.OTHER_SET),
    (_set("bcd"), {"history": {6: F("bcde")}}, Refusal.TOO_CLOSE),
    (_set("bcd"), {"history": {6: F("cde")}}, None),  # two apart: allowed at 2
    (_set("bcd"), {"history": {6: F("cde")}, "min_difference": 3}, Refusal.TOO_CLOSE),
    (_set("bcd"), {"history": {6: F("bcd")}}, None),  # the same set again is fine
    (_set("bcd"), {"history": {-44: F("bcde")}}, None),  # 51 rounds ago: out of the window
    (_set("bcd"), {"history": {6: F("bcde")}, "min_difference": 1}, None),  # rule off
])
def test_should_i_sign(announced: SurvivorSet, overrides: dict, refusal: Refusal | None) -> None:
    assert _check(announced, **overrides) is refusal


def test_history_is_a_bounded_window() -> None:
    history: dict[int, frozenset[str]] = {}
    for r in range(200):
        history = remember(history, r, F("bcde"), history_rounds=10)
    assert sorted(history) == list(range(189, 200))  # 11 entries, whatever the run length
    assert too_close(F("bcd"), 200, history, history_rounds=10, min_difference=2) == 199
    assert too_close(F("bcd"), 211, history, history_rounds=10, min_difference=2) is None


def test_signatures_must_be_enough_distinct_valid_survivors_on_this_set() -> None:
    announced = _set("bcd")
    good = [(m, sign_set(announced, KEYS[m])) for m in "bcd"]
    assert _verify(announced, good) is None
    assert _verify(announced, good[:2]) is Refusal.TOO_FEW_SIGNATURES
    assert _verify(announced, [*good[:2], good[0]]) is Refusal.DUPLICATE_SIGNER
    forged = [*good[:2], ("d", bytes(64))]
    assert _verify(announced, forged) is Refusal.BAD_SIGNATURE
    assert _verify(announced, [*good[:2], ("d", good[0][1])]) is Refusal.BAD_SIGNATURE
    assert _verify(announced, [*good, ("d", b"short")]) is Refusal.DUPLICATE_SIGNER
    assert _verify(announced, [*good[:2], ("d", b"short")]) is Refusal.BAD_SIGNATURE
    outsider = ("e", sign_set(announced, KEYS["e"]))  # e is dropped here: not a signer
    assert _verify(announced, [*good[:2], outsider]) is Refusal.FOREIGN_SIGNER
    for other in (_set("bcde"), _set("bcd", round_=8), _set("bcd", aggregator="x")):
        wrong_set = [(m, sign_set(other, KEYS[m])) for m in "bcd"]
        assert _verify(announced, wrong_set) is Refusal.BAD_SIGNATURE


def test_never_both_mask_kinds_for_one_member() -> None:
    assert plan_reveal(_set("bcd"), revealed_self=F(), revealed_pair=F()) == Reveal(F("bcd"),
                                                                                    F("e"))
    # a replay of the same set reveals nothing new and is allowed
    assert isinstance(plan_reveal(_set("bcd"), revealed_self=F("bcd"), revealed_pair=F("e")),
                      Reveal)
    # shares of e's self seed after e's pair seed, or the other way round: refused
    assert plan_reveal(_set("bce"), revealed_self=F("bcd"),
                       revealed_pair=F("e")) is Refusal.REVEAL_CONFLICT
    assert plan_reveal(_set("bcd"), revealed_self=F("bcde"),
                       revealed_pair=F()) is Refusal.REVEAL_CONFLICT


@pytest.mark.parametrize(("received", "confirmed", "chosen"), [
    ("bcde", {}, "bcde"),
    ("bc", {}, None),
    ("bcd", {6: F("bcde")}, None),  # one member from last round's set: refused
    ("bcde", {6: F("bcd")}, "bcd"),  # a member returns: keep the confirmed set, e dropped
    ("bcde", {5: F("bcd"), 6: F("cde")}, "cde"),  # the most recent confirmed set inside
    ("cde", {6: F("bcd")}, "cde"),  # two apart
    ("bcd", {-50: F("bcde")}, "bcd"),  # out of the window
])
def test_what_an_honest_aggregator_announces(received: str, confirmed, chosen) -> None:
    result = choose_survivors(F(received), 7, confirmed, minimum=3, history_rounds=50,
                              min_difference=2)
    assert result == (None if chosen is None else F(chosen))


def test_config_validates_the_differencing_rule() -> None:
    assert (SecAggConfig().history_rounds, SecAggConfig().min_set_difference) == (50, 2)
    with pytest.raises(ConfigError, match="history_rounds"):
        SecAggConfig(history_rounds=-1)
    with pytest.raises(ConfigError, match="min_set_difference"):
        SecAggConfig(min_set_difference=0)


# -- wire ----------------------------------------------------------------------------------------


def _round_trip(message):
    return wire.decode_frame(wire.encode_frame(message), type(message))


def test_wire_messages_round_trip_and_refuse_bad_signatures() -> None:
    request = ConsistencyRequest("fed", 3, "a", ("b", "c", "d"), ("e",))
    assert _round_trip(request) == request
    signed = ConsistencyResponse("fed", 3, "b", bytes(64), "")
    refused = ConsistencyResponse("fed", 3, "b", b"", Refusal.OTHER_SET.value)
    assert _round_trip(signed) == signed and _round_trip(refused) == refused
    for bad in (ConsistencyResponse("fed", 3, "b", bytes(63), ""),
                ConsistencyResponse("fed", 3, "b", bytes(64), "other_set"),
                ConsistencyResponse("fed", 3, "b", b"", "")):
        with pytest.raises(WireError):
            _round_trip(bad)
    unmask = UnmaskRequest("fed", 3, "a", ("b", "c", "d"), ("e",), (), (("b", bytes(64)),))
    assert _round_trip(unmask) == unmask
    with pytest.raises(WireError, match="64 bytes"):
        _round_trip(UnmaskRequest("fed", 3, "a", ("b",), (), (), (("b", bytes(63)),)))
    with pytest.raises(WireError, match="twice"):
        _round_trip(UnmaskRequest("fed", 3, "a", ("b",), (), (),
                                  (("b", bytes(64)), ("b", bytes(64)))))
    # an answer that carries a self seed is not an answer any more
    body = wire.encode_body(UnmaskResponse("fed", 3, "b", (), ()))

    data = wire.named(body)
    data["self_seed"] = bytes(32)
    with pytest.raises(WireError, match="unexpected"):
        wire.decode_body(wire.from_named(data), UnmaskResponse)


# -- a lying aggregator against real nodes --------------------------------------------------------


def _best_reconstruction(star, target: str, r: int, inputs, responses) -> np.ndarray:
    """What the aggregator can make of ``target``'s input with everything it got: remove every
    pair mask it learned, then read it as if the self mask were gone."""
    t = star[target].peer_id
    words = np.frombuffer(inputs[t].data, dtype="<u4").astype(np.uint32)
    for response in responses.values():
        for gone, seed in response.pair_seeds:
            if gone == t:
                mask = secagg.prg_mask(seed, words.size)
                words = words - mask if secagg.pair_sign(t, response.sender) > 0 else words + mask
    config = star["a"].config.secagg
    offset = secagg.quantisation_offset(config.clip, config.scale)
    values = (words.astype(np.int64) - offset) / config.scale
    return np.clip(values, -config.clip, config.clip)  # the best in-range reading


def _round(star, r: int, senders: str = "bcde"):
    estimates = _fresh(star, r)
    inputs = _masked(star, senders, r)
    _accept(star, inputs)
    return estimates, inputs


def test_the_issue_attack_recovers_nothing(star) -> None:
    """Issue 8, point 2: tell b 'survivors {b, c, d}, e dropped' and tell c, d, e 'b dropped'."""
    r = 40
    estimates, inputs = _round(star, r)
    a, b = star["a"], star["b"]
    s1 = (ids(star, "bcd"), ids(star, "e"))
    s2 = (ids(star, "cde"), ids(star, "b"))
    sig1 = sign(star, r, *s1, "b")
    sig2 = sign(star, r, *s2, "cde")
    assert list(sig1) == ids(star, "b") and sorted(sig2) == ids(star, "cde")
    assert sign(star, r, *s1, "cd") == {}  # c, d signed s2: they refuse s1
    # b alone signed s1: b will not unmask, whatever signatures a attaches
    for attached in (sig1, {**sig1, **sig2}):
        request = secure_round.unmask_request(a, r, inputs, *s1, b.peer_id,
                                              tuple(sorted(attached.items())))
        assert secure_round.plan_answer(b, a.peer_id, request) in (
            Refusal.TOO_FEW_SIGNATURES, Refusal.FOREIGN_SIGNER, Refusal.BAD_SIGNATURE)
        assert secure_round.answer_unmask(b, a.peer_id, request) is None
    # c, d, e answer s2: pair seeds with b, shares of c, d, e only; never anything of b's self
    responses = {}
    for name in "cde":
        response = ask(star, name, r, inputs, *s2, sig2)
        assert response is not None
        assert [p for p, _ in response.pair_seeds] == ids(star, "b")
        assert sorted(p for p, _ in response.seed_shares) == ids(star, "cde")
        responses[star[name].peer_id] = response
    with pytest.raises(ValueError, match="shares of"):
        secure_round.unmask(a, r, {b.peer_id: inputs[b.peer_id]}, [b.peer_id], ids(star, "cde"),
                            responses)
    truth = secure_round.weight(a, a.peer_id, b.peer_id) * estimates["b"]
    guess = _best_reconstruction(star, "b", r, inputs, responses)
    assert np.abs(guess - truth).max() > 1.0  # still under b's self mask: noise over [-8, 8]


def test_two_sets_for_one_round_get_nothing_from_anyone(star) -> None:
    r = 41
    _, inputs = _round(star, r)
    a, c = star["a"], star["c"]
    full, fewer = (ids(star, "bcde"), []), (ids(star, "cde"), ids(star, "b"))
    signed_full = sign(star, r, *full, "bc")
    signed_fewer = sign(star, r, *fewer, "de")
    assert sorted(signed_full) == ids(star, "bc") and sorted(signed_fewer) == ids(star, "de")
    response = secure_round.answer_consistency(
        c, a.peer_id, ConsistencyRequest("fed", r, a.peer_id, *map(tuple, fewer)))
    assert response.signature == b"" and response.refusal == Refusal.OTHER_SET.value
    # neither set has three signatures: with every signature a holds attached, or with one
    # forged to make up the count, nobody reveals anything for either set
    rejected = sum(star[n].rejections["unmask_refused"] for n in "bcde")
    for name in "bcde":
        for survivors, dropped in (full, fewer):
            assert ask(star, name, r, inputs, survivors, dropped,
                       {**signed_full, **signed_fewer}) is None
    assert ask(star, "e", r, inputs, *fewer, {**signed_fewer, c.peer_id: bytes(64)}) is None
    assert sum(star[n].rejections["unmask_refused"] for n in "bcde") == rejected + 9
    assert all(not star[n].secagg.revealed for n in "bcde")


def test_a_replayed_request_reveals_nothing_new(star) -> None:
    r = 42
    _, inputs = _round(star, r)
    survivors = ids(star, "bcde")
    signatures = sign(star, r, survivors, [], "bcde")
    first = ask(star, "c", r, inputs, survivors, [], signatures)
    assert first is not None
    assert ask(star, "c", r, inputs, survivors, [], signatures) == first  # the same, no more
    # the same signatures replayed into the next round, or for another aggregator, fail
    _round(star, r + 1)
    a, c = star["a"], star["c"]
    later = secure_round.unmask_request(a, r + 1, inputs, survivors, [], c.peer_id,
                                        tuple(sorted(signatures.items())))
    assert secure_round.plan_answer(c, a.peer_id, later) is Refusal.BAD_SIGNATURE
    request = secure_round.unmask_request(a, r, inputs, survivors, [], c.peer_id,
                                          tuple(sorted(signatures.items())))
    assert secure_round.plan_answer(c, star["d"].peer_id, request) is Refusal.WRONG_ROUND
    # and once the round's secrets are forgotten, there is nothing left to answer with
    c.secagg.forget_before(r + secure_round.KEEP_ROUNDS + 1)
    assert secure_round.plan_answer(c, a.peer_id, request) is Refusal.NO_INPUT


def test_a_claimed_dropout_of_a_member_that_sent_its_input(star) -> None:
    """b's masked input arrived; a says b dropped. b refuses, the others reveal only pair seeds
    with b, and b's input stays under its self mask."""
    r = 44
    estimates, inputs = _round(star, r)
    a, b = star["a"], star["b"]
    claim = (ids(star, "cde"), ids(star, "b"))
    assert sign(star, r, *claim, "b") == {}
    signatures = sign(star, r, *claim, "cde")
    assert ask(star, "b", r, inputs, *claim, signatures) is None
    responses = {star[n].peer_id: ask(star, n, r, inputs, *claim, signatures) for n in "cde"}
    assert all(v is not None and b.peer_id not in dict(v.seed_shares) for v in responses.values())
    total = secure_round.unmask(a, r, inputs, *claim, responses)  # the honest part still sums
    expected = sum(secure_round.weight(a, a.peer_id, star[n].peer_id) * estimates[n]
                   for n in "cde")
    assert np.abs(total - expected).max() <= 3 / (2 * 2**20) + 1e-6
    truth = secure_round.weight(a, a.peer_id, b.peer_id) * estimates["b"]
    assert np.abs(_best_reconstruction(star, "b", r, inputs, responses) - truth).max() > 1.0


def test_forged_short_duplicate_and_wrong_set_signatures_are_refused(star) -> None:
    r = 45
    _, inputs = _round(star, r)
    a, c = star["a"], star["c"]
    survivors = ids(star, "bcde")
    good = sign(star, r, survivors, [], "bcde")
    items = sorted(good.items())
    cases = {
        Refusal.TOO_FEW_SIGNATURES: items[:2],
        Refusal.BAD_SIGNATURE: [*items[:2], (items[2][0], bytes(64))],
        Refusal.DUPLICATE_SIGNER: [*items[:3], items[0]],
        Refusal.FOREIGN_SIGNER: [*items[:2], (a.peer_id, items[2][1])],
    }
    rejected = c.rejections["unmask_refused"]
    for refusal, signatures in cases.items():
        request = secure_round.unmask_request(a, r, inputs, survivors, [], c.peer_id,
                                              tuple(signatures))
        assert secure_round.plan_answer(c, a.peer_id, request) is refusal
        assert secure_round.answer_unmask(c, a.peer_id, request) is None
    assert c.rejections["unmask_refused"] == rejected + len(cases)
    # signatures over the full set, attached to a set that drops e: wrong set
    wrong = secure_round.unmask_request(a, r, inputs, ids(star, "bcd"), ids(star, "e"),
                                        c.peer_id, tuple(items))
    assert secure_round.plan_answer(c, a.peer_id, wrong) is Refusal.OTHER_SET
    d = star["d"]  # d signed the full set too; a member that has signed nothing checks the
    d.secagg.committed.clear()  # signatures themselves
    d.secagg.signed.clear()
    wrong = secure_round.unmask_request(a, r, inputs, ids(star, "bcd"), ids(star, "e"),
                                        d.peer_id, tuple(items[:3]))
    assert secure_round.plan_answer(d, a.peer_id, wrong) in (Refusal.BAD_SIGNATURE,
                                                             Refusal.FOREIGN_SIGNER)
    assert ask(star, "c", r, inputs, survivors, [], good) is not None  # the honest one works


def test_differencing_across_rounds_is_refused_unless_the_sets_differ_enough(star) -> None:
    r = 50
    _round(star, r)
    assert len(sign(star, r, ids(star, "bcde"), [], "bcde")) == 4
    _, inputs = _round(star, r + 1)
    fewer = (ids(star, "cde"), ids(star, "b"))
    c = star["c"]
    response = secure_round.answer_consistency(
        c, star["a"].peer_id, ConsistencyRequest("fed", r + 1, star["a"].peer_id,
                                                 *map(tuple, fewer)))
    assert response.refusal == Refusal.TOO_CLOSE.value
    assert sign(star, r + 1, *fewer, "cde") == {}
    # nor can a skip the signing step: an unmask request for that set is refused all the same
    assert ask(star, "c", r + 1, inputs, *fewer, {}) is None
    # on a fresh history, two sets two members apart are both signed
    for node in star.values():
        node.secagg.signed.clear()
    _round(star, r + 2)
    assert len(sign(star, r + 2, ids(star, "bcd"), ids(star, "e"), "bcd")) == 3
    _round(star, r + 3)
    assert len(sign(star, r + 3, ids(star, "cde"), ids(star, "b"), "cde")) == 3


# -- churn is excused, claims are not ------------------------------------------------------------


def test_a_difference_of_members_seen_silent_does_not_count() -> None:
    history = {10: F("bcde")}
    rule = {"history_rounds": 50, "min_difference": 2}
    assert too_close(F("bcd"), 11, history, **rule) == 10
    assert too_close(F("bcd"), 11, history, excused=F("e"), **rule) is None
    # an excuse for another member does not cover this difference
    assert too_close(F("bcd"), 11, history, excused=F("b"), **rule) == 10


def test_members_are_seen_silent_from_their_last_proof_of_life() -> None:
    heard = {"b": 100.0, "c": 97.0}
    seen = seen_silent({"old": 1}, "bcd", heard.get, now=100.0, silence=2.5, round_=60,
                       history_rounds=50)
    assert seen == {"c": 60, "d": 60}  # c: news 3 s old; d: none at all; "old" left the window
    assert excused(seen, 60, 50) == F("cd") and excused(seen, 111, 50) == frozenset()


def test_a_member_that_really_went_silent_may_leave_the_set(star) -> None:
    """The set shrinks by one member that every signer has itself stopped hearing from: a real
    dropout, signed at once (refusing would stop this neighbourhood's mixing for the window)."""
    r = 70
    _round(star, r)
    assert len(sign(star, r, ids(star, "bcde"), [], "bcde")) == 4
    for name in "abcd":  # nobody has heard of e for longer than the silence time
        star[name].membership.forget(star["e"].peer_id)
    _round(star, r + 1)
    assert len(sign(star, r + 1, ids(star, "bcd"), ids(star, "e"), "bcd")) == 3
    # when it comes back (heard from again), the full set is signed as well: it was seen silent
    for name in "abcd":
        star[name].membership.heard_from(star["e"].peer_id, (), NOW)
    _round(star, r + 2)
    assert len(sign(star, r + 2, ids(star, "bcde"), [], "bcde")) == 4


def test_a_claimed_dropout_of_a_live_member_is_still_refused(star) -> None:
    """The aggregator cannot pass its differencing attack off as churn: b is still heard from
    (by c and d, whose news of it is fresh), so a set without b is refused by both."""
    r = 80
    _round(star, r)
    assert len(sign(star, r, ids(star, "bcde"), [], "bcde")) == 4
    star["e"].membership.forget(star["b"].peer_id)  # one signer fooled is not enough
    _round(star, r + 1)
    assert len(sign(star, r + 1, ids(star, "cde"), ids(star, "b"), "cde")) < 3


def test_the_largest_neighbourhood_s_unmask_request_fits_the_control_cap(star) -> None:
    """The unmask stream is read under the control cap: a request for 255 members, with real
    peer ids, sealed shares as the node makes them and a signature each, fits it."""
    b = star["b"]
    context = secagg.seed_context("fed", star["a"].peer_id, 1)
    sealed = secagg.encrypt_seed_share(
        sender=b.peer_id, recipient=star["c"].peer_id, context=context,
        share=bytes(shamir.SHARE_BYTES),
        sender_private=bytes(b.security.x25519_private),
        recipient_public=b.security.certificates[star["c"].peer_id].x25519_public)
    peers = tuple(f"{b.peer_id[:-3]}{i:03d}" for i in range(255))
    request = UnmaskRequest("fed", 10**6, b.peer_id, peers[:128], peers[128:],
                            tuple((p, sealed) for p in peers), tuple((p, bytes(64)) for p in peers))
    assert len(wire.encode_frame(request, wire.MAX_CONTROL_BYTES)) < wire.MAX_CONTROL_BYTES


def _liveness_from(star, name: str, *, direct_at: float) -> bytes:
    """Every other node forgets ``name`` and heard it directly last at ``direct_at``, with the
    stamp it signed then (returned: what a liar may replay)."""
    stamp = renew_stamp(star[name])
    for other in star:
        if other != name:
            star[other].membership.forget(star[name].peer_id)
            star[other].membership.heard_from(star[name].peer_id, (), direct_at, stamp)
    return stamp


def test_a_dead_member_a_liar_announces_as_heard_just_now_is_still_churn(star) -> None:
    """The membership flood: e died 20 s ago; a member keeps announcing it "heard just now"
    (age 0), with e's last stamp or none. Its age is fresh in everyone's table, but no stamp of
    e progressed: every signer sees e silent, and a set without it is churn, signed at once."""
    r = 90
    _round(star, r)
    assert len(sign(star, r, ids(star, "bcde"), [], "bcde")) == 4
    old = _liveness_from(star, "e", direct_at=NOW - 20)
    liar = star["d"].peer_id
    for name in "abc":
        table = star[name].membership
        table.merge((MemberInfo(star["e"].peer_id, (), 0.0, stamp=old),), NOW, reporter=liar)
        table.merge((MemberInfo(star["e"].peer_id, (), 0.0),), NOW, reporter=liar)
        assert table.last_heard(star["e"].peer_id) == NOW  # the claim is in the table...
        assert table.live_at(star["e"].peer_id) == NOW - 20  # ...the proof of life is old
    _round(star, r + 1, senders="bcd")
    assert len(sign(star, r + 1, ids(star, "bcd"), ids(star, "e"), "bcd")) == 3


def test_fresh_stamps_relayed_by_a_third_node_keep_a_member_live(star) -> None:
    """The could-fail twin of the test above: b is no longer heard directly by c, d, e, but
    its new stamps reach them through a third node; an aggregator claiming b dropped is refused
    (the differencing attack is not churn)."""
    r = 100
    _round(star, r)
    assert len(sign(star, r, ids(star, "bcde"), [], "bcde")) == 4
    _liveness_from(star, "b", direct_at=NOW - 20)
    fresh = renew_stamp(star["b"])
    relay = star["a"].peer_id
    for name in "cde":
        table = star[name].membership
        table.merge((MemberInfo(star["b"].peer_id, (), 1.0, stamp=fresh),), NOW, reporter=relay)
        assert table.live_at(star["b"].peer_id) == NOW
    _round(star, r + 1)
    assert sign(star, r + 1, ids(star, "cde"), ids(star, "b"), "cde") == {}


def test_a_forged_relayed_stamp_is_refused_and_logged(star, caplog) -> None:
    """c relays a stamp for e that e did not sign (another member's key): b refuses it, logs one
    line naming c, counts it, and e's proof of life does not move."""
    b, c, e = star["b"], star["c"], star["e"]
    held = b.membership.stamp_key(e.peer_id)
    forged = sign_stamp("fed", e.peer_id, e.stamp_epoch, e.stamp_seq + 5, c.stamp_key)
    entry = MemberInfo(e.peer_id, (), 0.0, c.security.certificate_bytes(e.peer_id), forged)

    async def relay() -> None:
        # past the table's refresh: a relayed stamp of e that is higher is checked again
        trio.lowlevel.current_clock().jump(NOW + b.membership.refresh)
        beat = dataclasses.replace(heartbeat(c), members=(entry,), stamp=renew_stamp(c))
        absorb(b, beat)

    before = b.rejections["bad_stamp"]
    with caplog.at_level(logging.WARNING):
        trio.run(relay, clock=MockClock())
    assert b.rejections["bad_stamp"] == before + 1
    assert b.membership.stamp_key(e.peer_id) == held
    assert b.membership.stamp_key(c.peer_id) == (c.stamp_epoch, c.stamp_seq)  # c's own: taken
    lines = [r.getMessage() for r in caplog.records if "liveness stamp" in r.getMessage()]
    assert len(lines) == 1 and c.peer_id in lines[0] and "bad_stamp" in lines[0]


def test_a_node_s_heartbeat_carries_a_new_stamp_each_cycle(star) -> None:
    """renew_stamp (once per heartbeat cycle) signs the next number of this run; the heartbeat
    carries it, and a peer takes each as progress once."""
    b, c = star["b"], star["c"]
    beats = []

    async def cycle() -> None:
        renew_stamp(c)
        beats.append(heartbeat(c))

    trio.run(cycle, clock=MockClock())
    trio.run(cycle, clock=MockClock())
    keys = [verify_stamp(beat.stamp, federation="fed", peer_id=c.peer_id).key for beat in beats]
    assert keys[1] == (c.stamp_epoch, keys[0][1] + 1)
    b.membership.forget(c.peer_id)
    refresh = b.membership.refresh  # a next stamp is taken a refresh later (2.5 s here)
    b.membership.merge((MemberInfo(c.peer_id, (), 0.0, stamp=beats[0].stamp),),
                       NOW - 2 * refresh, reporter="r")
    b.membership.merge((MemberInfo(c.peer_id, (), 0.0, stamp=beats[1].stamp),), NOW - refresh,
                       reporter="r")
    b.membership.merge((MemberInfo(c.peer_id, (), 0.0, stamp=beats[1].stamp),), NOW,
                       reporter="r")
    assert b.membership.live_at(c.peer_id) == NOW - refresh
