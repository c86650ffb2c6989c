"""The peer table of secure aggregation's frames (gossipfl.gossip.wire_secagg): a masked input
or an unmask request names each peer once, its share and signature lists by place in the
frame's table (a masked input's sender first; a request's survivors and dropped first), and the
decoder refuses a place out of range, a table that names a peer twice, and a list that names
one twice."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipfl.gossip import wire
from gossipfl.gossip.wire import MaskedInput, UnmaskRequest, WireError

PEERS = tuple(f"12D3KooW{c * 44}" for c in "ABCDE")
CAP = 1 << 20


def _input(**changes) -> MaskedInput:
    sender, others = PEERS[0], PEERS[1:4]
    base = MaskedInput(
        "fed", 3, sender, PEERS[4], 0.2, 0.0, False, b"\x01" * 9, (), sparse=True, width=6,
        next_shares=tuple((p, bytes([i]) * 90) for i, p in enumerate(others)),
        early=((sender, b"s" * 40), *((p, bytes([i]) * 40) for i, p in enumerate(others))),
        predealt=True)
    return dataclasses.replace(base, **changes)


def _body(message) -> dict:
    frame = wire.encode_frame(message, CAP)
    return wire.named(frame[wire.HEADER_BYTES:])


def _decode(body: dict, kind):
    packed = wire.from_named(body)
    return wire.decode_frame(wire.HEADER.pack(len(packed)) + packed, kind, CAP)


def test_a_masked_input_names_each_peer_once() -> None:
    message = _input(shares=((PEERS[2], b"x" * 90), (PEERS[1], b"y" * 90)))
    frame = wire.encode_frame(message, CAP)
    for peer in PEERS:  # the sender at the top, the others in the table; once each
        assert frame.count(peer.encode()) == 1
    assert _body(message)["early"][0][0] == 0  # the sender's own share: place 0
    assert wire.decode_frame(frame, MaskedInput, CAP) == message


def test_an_unmask_request_names_peers_by_their_place_in_the_set() -> None:
    survivors, dropped = PEERS[:3], PEERS[3:4]
    request = UnmaskRequest(
        "fed", 3, PEERS[4], survivors, dropped,
        shares=((PEERS[1], b"c" * 90), (PEERS[3], b"d" * 90)),
        signatures=tuple((p, bytes([i]) * 64) for i, p in enumerate(survivors)),
        next_shares=((PEERS[2], b"n" * 90),))
    body = _body(request)
    assert "peers" not in body and body["shares"][1][0] == 3  # the dropped one, after them
    assert wire.decode_frame(wire.encode_frame(request, CAP), UnmaskRequest, CAP) == request
    # a crafted request may key a list by a peer in neither set: it goes in the table
    odd = dataclasses.replace(request, next_shares=(("12D3KooWZ", b"z" * 90),))
    assert _body(odd)["peers"] == ["12D3KooWZ"]
    assert wire.decode_frame(wire.encode_frame(odd, CAP), UnmaskRequest, CAP) == odd


@pytest.mark.parametrize("change, match", [
    (lambda b: b["early"].append([9, b"x"]), "early shares peer"),
    (lambda b: b["early"].__setitem__(0, [True, b"s" * 40]), "early shares peer"),
    (lambda b: b["next_shares"].append(list(b["next_shares"][0])), "names a peer twice"),
    (lambda b: b["peers"].append(PEERS[0]), "names the sender"),
    (lambda b: b["peers"].append(b["peers"][0]), "twice"),
])
def test_the_decoder_refuses_a_bad_table_or_place(change, match) -> None:
    body = _body(_input())
    change(body)
    with pytest.raises(WireError, match=match):
        _decode(body, MaskedInput)


def test_a_request_whose_table_repeats_a_set_member_is_refused() -> None:
    request = UnmaskRequest("fed", 3, PEERS[4], PEERS[:2], (), (), (),
                            next_shares=((PEERS[1], b"n" * 90),))
    body = _body(request)
    body["peers"] = [PEERS[0]]
    with pytest.raises(WireError, match="twice"):
        _decode(body, UnmaskRequest)
    body = _body(request)
    body["survivors"] = []
    with pytest.raises(WireError, match=r"next shares peer|table is empty"):
        _decode(body, UnmaskRequest)


@given(st.lists(st.sampled_from(PEERS[1:]), unique=True),
       st.lists(st.sampled_from(PEERS), unique=True),
       st.lists(st.sampled_from(PEERS), unique=True))
def test_any_lists_come_back_as_they_went(shares, next_shares, early) -> None:
    """By id, and by place in a known table (a peer outside it, here the aggregator PEERS[4],
    goes in ``peers``)."""
    message = _input(shares=tuple((p, b"a" * 80) for p in shares),
                     next_shares=tuple((p, b"b" * 80) for p in next_shares),
                     early=tuple((p, b"c" * 40) for p in early))
    assert wire.decode_frame(wire.encode_frame(message, CAP), MaskedInput, CAP) == message
    known = wire.Known.of(PEERS[4], PEERS[:4])
    assert wire.decode_body(wire.encode_body(message, known=known), MaskedInput,
                            known=known) == message


# -- a known table: the aggregator's neighbourhood, which both ends derive from the topology ----

KNOWN = wire.Known.of(PEERS[4], PEERS[:4])  # the aggregator PEERS[4] and its neighbourhood


def test_with_a_known_table_no_peer_id_travels_and_a_differing_view_is_refused() -> None:
    message = _input(shares=((PEERS[2], b"x" * 90), (PEERS[1], b"y" * 90)))
    request = UnmaskRequest(
        "fed", 3, PEERS[4], PEERS[:3], PEERS[3:4], shares=((PEERS[3], b"d" * 90),),
        signatures=tuple((p, bytes([i]) * 64) for i, p in enumerate(PEERS[:3])),
        next_shares=((PEERS[2], b"n" * 90),))
    for item, kind, named in ((message, MaskedInput, 1), (request, UnmaskRequest, 0)):
        body = wire.encode_body(item, known=KNOWN)
        # only a masked input's sender by id (sealed, not even it): no table, no aggregator
        assert sum(body.count(p.encode()) for p in PEERS) == named
        assert len(body) < len(wire.encode_body(item)) - 100
        assert "peers" not in wire.named(body) and len(wire.named(body)["table"]) == 8
        assert wire.decode_body(body, kind, known=KNOWN) == item
        # a receiver without the table, or with another view of it, refuses the frame
        for other in (None, wire.Known.of(PEERS[4], PEERS[1:4]),
                      wire.Known.of(PEERS[3], PEERS[:4])):
            with pytest.raises(WireError, match="table this node does not hold"):
                wire.decode_body(body, kind, known=other)
    # a request's sets are places in the table: one out of it, repeated, or in both, refused
    body = wire.named(wire.encode_body(request, known=KNOWN))
    for survivors, dropped, match in (([0, 9], [3], "survivors place"), ([0, 0], [3], "twice"),
                                      ([0, 3], [3], "twice"), ([True], [], "survivors place")):
        with pytest.raises(WireError, match=match):
            wire.decode_body(wire.from_named({**body, "survivors": survivors,
                                              "dropped": dropped}), UnmaskRequest, known=KNOWN)
