"""Presigned survivor sets (gossipfl.node.secure_presign): a round in which every input is in
again unmasks with no consistency exchange, and a presign binds its signer as a signature from
the exchange would. Real nodes, keys, masks and shares (the star of ``test_secure_round``);
the in-process transport."""

# ruff: noqa: F811  (``star`` is a fixture imported from test_secure_round, used as an argument)
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from secagg_loopback import Loopback
from secagg_star import assert_sum_of
from test_secure_round import (  # noqa: F401  (star, _alive and _clean are fixtures)
    SCALE,
    _alive,
    _clean,
    _expected,
    _fresh,
    _inbox,
    _secure_sum,
    ids,
    star,
)

from gossipfl.crypto import consistency
from gossipfl.crypto.consistency import SurvivorSet
from gossipfl.gossip import wire
from gossipfl.gossip.wire import ConsistencyRequest, UnmaskRequest, UnmaskResponse, WireError
from gossipfl.node import secure_round
from gossipfl.node.runtime import Node
from gossipfl.node.secure_presign import keep_presign


def _counted(star: dict[str, Node]) -> list[str]:
    """Wire the aggregator to its members in process; returns the protocols of the streams
    it opens, in order."""
    a = star["a"]
    by_id = {node.peer_id: node for node in star.values()}
    opened: list[str] = []

    @asynccontextmanager
    async def channel_to(peer: str, protocol: str, addrs=None) -> AsyncIterator[Loopback]:
        opened.append(protocol)
        yield Loopback(a.peer_id, by_id[peer], protocol)

    a.channel_to = channel_to  # type: ignore[method-assign]
    return opened


def test_a_round_with_every_input_again_unmasks_with_the_presigns_alone(star) -> None:
    opened = _counted(star)
    _fresh(star, 50)
    _inbox(star, "bcde", 50)
    assert _secure_sum(star, 50) is not None
    assert opened.count(secure_round.PROTO_CONSISTENCY) >= 3  # the first round asks
    opened.clear()
    estimates = _fresh(star, 51)
    _inbox(star, "bcde", 51)
    assert_sum_of(star, _secure_sum(star, 51), estimates, "bcde")
    assert secure_round.PROTO_CONSISTENCY not in opened
    assert opened.count(secure_round.PROTO_UNMASK) >= 3
    assert 51 not in star["a"].secagg.presigned  # used up; 52's came with 51's answers
    assert set(star["a"].secagg.presigned[52][1]) == set(ids(star, "bcde"))


def test_a_presign_commits_its_member_to_the_full_set(star) -> None:
    """After presigning round 51, c refuses to sign (or answer) a set for round 51 that drops
    b: an aggregator cannot hold threshold signatures on two sets for one round."""
    _counted(star)
    _fresh(star, 50)
    _inbox(star, "bcde", 50)
    assert _secure_sum(star, 50) is not None
    _fresh(star, 51)
    _inbox(star, "cde", 51)  # c masks its input for round 51: it holds its shares
    a, c = star["a"], star["c"]
    fewer, dropped = ids(star, "cde"), ids(star, "b")
    response = secure_round.answer_consistency(
        c, a.peer_id, ConsistencyRequest("fed", 51, a.peer_id, tuple(fewer), tuple(dropped)))
    assert response.refusal == consistency.Refusal.OTHER_SET.value and not response.signature
    assert c.secagg.committed[(a.peer_id, 51)].survivors == set(ids(star, "bcde"))


def test_no_presign_follows_a_set_that_dropped_someone(star) -> None:
    _counted(star)
    _fresh(star, 60)
    _inbox(star, "cde", 60)  # b dropped before masking
    result = _secure_sum(star, 60)
    assert result is not None and result[2] == ids(star, "cde")
    assert 61 not in star["a"].secagg.presigned
    assert all((star["a"].peer_id, 61) not in star[n].secagg.committed for n in "bcde")


def _request(star: dict[str, Node], r: int, dropped: str = "") -> UnmaskRequest:
    a = star["a"]
    survivors = ids(star, "".join(n for n in "bcde" if n not in dropped))
    return UnmaskRequest("fed", r, a.peer_id, tuple(survivors), tuple(ids(star, dropped)),
                         (), ())


def test_a_forged_or_misplaced_presign_is_refused_and_not_kept(star) -> None:
    a, b = star["a"], star["b"]
    request = _request(star, 70)
    before = a.rejections["bad_signature"]
    keep_presign(a, b.peer_id, request, bytes(64))  # forged
    wrong_round = SurvivorSet("fed", a.peer_id, 72, frozenset(request.survivors), frozenset())
    keep_presign(a, b.peer_id, request,
                 consistency.sign_set(wrong_round, b.security.signing_key))  # another round
    following = SurvivorSet("fed", a.peer_id, 71, frozenset(request.survivors), frozenset())
    by_c = consistency.sign_set(following, star["c"].security.signing_key)
    keep_presign(a, b.peer_id, request, by_c)  # another member's signature, sent by b
    # a presign that follows a set with a dropout: never made by an honest member
    dropping = _request(star, 70, dropped="e")
    keep_presign(a, b.peer_id, dropping, consistency.sign_set(
        SurvivorSet("fed", a.peer_id, 71, frozenset(dropping.survivors), frozenset()),
        b.security.signing_key))
    assert a.rejections["bad_signature"] == before + 4
    assert a.secagg.presigned == {}
    keep_presign(a, b.peer_id, request, consistency.sign_set(following, b.security.signing_key))
    assert a.secagg.presigned[71] == (frozenset(request.survivors),
                                      {b.peer_id: consistency.sign_set(
                                          following, b.security.signing_key)})


def test_the_wire_takes_an_empty_or_whole_presign_only() -> None:
    for good in (b"", bytes(64)):
        message = UnmaskResponse("fed", 3, "b", (), (), good)
        frame = wire.encode_frame(message, wire.MAX_CONTROL_BYTES)
        assert wire.decode_frame(frame, UnmaskResponse).next_signature == good
    for bad in (bytes(63), bytes(65)):
        frame = wire.encode_frame(UnmaskResponse("fed", 3, "b", (), (), bad),
                                  wire.MAX_CONTROL_BYTES)
        with pytest.raises(WireError, match="next signature"):
            wire.decode_frame(frame, UnmaskResponse)
