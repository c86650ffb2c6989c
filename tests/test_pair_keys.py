"""PairKeys (gossipfl.crypto.pair_keys) gives secagg's reference functions' results exactly,
each X25519 agreement made once per peer, and the same refusals."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.public import PrivateKey

from gossipfl.crypto import secagg, shamir
from gossipfl.crypto.pair_keys import PairKeys

keys32 = st.binary(min_size=32, max_size=32)


@settings(max_examples=40, deadline=None)
@given(mine=keys32, theirs=keys32, context=st.binary(min_size=1, max_size=40))
def test_seeds_are_the_reference_seeds(mine: bytes, theirs: bytes, context: bytes) -> None:
    their_public = bytes(PrivateKey(theirs).public_key)
    keys = PairKeys(mine)
    try:
        expected = secagg.agree_seed(mine, their_public, context=context)
    except ValueError as error:  # the same key twice: refused by both
        with pytest.raises(ValueError, match=str(error)[:20]):
            keys.agree_seed(their_public, context=context)
        return
    assert keys.agree_seed(their_public, context=context) == expected
    assert keys.agree_seed(their_public, context=context) == expected  # from the cache
    # and the other side agrees
    assert PairKeys(theirs).agree_seed(keys.public, context=context) == expected


def test_shares_open_with_the_reference_and_the_reference_opens_ours() -> None:
    a, b = os.urandom(32), os.urandom(32)
    pa, pb = (bytes(PrivateKey(k).public_key) for k in (a, b))
    share = shamir.encode_share(2, os.urandom(shamir.VALUE_BYTES))
    header = {"sender": "a", "recipient": "b", "context": b"fed|agg|7"}
    sealed = PairKeys(a).encrypt_seed_share(**header, share=share, recipient_public=pb)
    assert secagg.decrypt_seed_share(sealed, **header, recipient_private=b,
                                     sender_public=pa) == share
    reference = secagg.encrypt_seed_share(**header, share=share, sender_private=a,
                                          recipient_public=pb)
    assert PairKeys(b).decrypt_seed_share(reference, **header, sender_public=pa) == share
    # bound to sender, recipient and round, as the reference is
    with pytest.raises(ValueError, match="not sealed"):
        PairKeys(b).decrypt_seed_share(reference, sender="a", recipient="b",
                                       context=b"fed|agg|8", sender_public=pa)


def test_each_peer_is_agreed_once_and_the_cache_is_bounded(monkeypatch) -> None:
    calls = []
    real = secagg.x25519_shared

    def counted(mine: bytes, theirs: bytes) -> tuple[bytes, bytes]:
        calls.append(theirs)
        return real(mine, theirs)

    monkeypatch.setattr(secagg, "x25519_shared", counted)
    keys = PairKeys(os.urandom(32), max_peers=3)
    peers = [bytes(PrivateKey(os.urandom(32)).public_key) for _ in range(4)]
    for r in range(5):
        for peer in peers[:3]:
            keys.agree_seed(peer, context=r.to_bytes(2, "big"))
    assert len(calls) == 3  # three peers, five rounds: three agreements
    keys.agree_seed(peers[3], context=b"x")  # a fourth: the table starts again
    assert len(keys._shared) == 1 and len(calls) == 4


def test_a_low_order_point_is_refused() -> None:
    with pytest.raises(ValueError, match="low-order"):
        PairKeys(os.urandom(32)).agree_seed(bytes(32), context=b"c")
