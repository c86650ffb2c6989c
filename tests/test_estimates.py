"""Tests for gossipfl.node.estimates: CHOCO-gossip public estimates, sender and receiver side."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import Contribution
from gossipfl.gossip.wire_contribution import origin_digest
from gossipfl.node.estimates import EstimateError, OwnEstimate, PeerEstimates

FAST = settings(max_examples=60, deadline=None)
SENDER = "12D3KooWSender"
RECEIVER = "12D3KooWReceiver"


def _contribution(
    round_: int,
    kind: str,
    base_round: int,
    *,
    sender: str = SENDER,
    degree: int = 3,
    disagreement: float = 0.25,
    done: bool = False,
) -> Contribution:
    return Contribution(
        federation="fed",
        round=round_,
        sender=sender,
        receiver=RECEIVER,
        degree=degree,
        kind=kind,
        base_round=base_round,
        disagreement=disagreement,
        done=done,
        tensors=(),
    )


def _random_vector(rng: np.random.Generator, size: int) -> np.ndarray:
    # Mixed magnitudes, so float32 rounding in x̂ + (x − x̂) actually happens.
    scale = 10.0 ** rng.uniform(-4, 4, size)
    return (rng.standard_normal(size) * scale).astype(np.float32)


def _send(own: OwnEstimate, peers: PeerEstimates, peer_holds: int) -> None:
    kind, base, array = own.payload_for(peer_holds)
    peers.apply(_contribution(own.round, kind, base), array)


# -- OwnEstimate -----------------------------------------------------------------------------------


def test_publish_returns_half_step_minus_estimate_and_advances() -> None:
    start = np.float32([1.0, -2.0, 0.5])
    own = OwnEstimate(start.copy())
    half = np.float32([1.5, -2.0, 0.0])
    q = own.publish(half, 0)
    assert q.dtype == np.float32
    assert np.array_equal(q, np.float32([0.5, 0.0, -0.5]))
    assert np.array_equal(own.vector, half)
    assert own.round == 0
    assert own.base_round == -1
    assert own.last_delta is q

    q1 = own.publish(np.float32([0.0, 0.0, 0.0]), 1)
    assert np.array_equal(q1, -half)
    assert own.round == 1
    assert own.base_round == 0
    assert np.array_equal(own.vector, np.zeros(3, np.float32))


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 64))
def test_publish_delta_is_exact_float32_difference(seed: int, size: int) -> None:
    rng = np.random.default_rng(seed)
    own = OwnEstimate(_random_vector(rng, size))
    before = own.vector.copy()
    half = _random_vector(rng, size)
    q = own.publish(half.astype(np.float64), 7)  # a float64 half step is cast to float32 first
    assert q.dtype == np.float32 and own.vector.dtype == np.float32
    assert np.array_equal(q, half - before)
    assert np.array_equal(own.vector, before + q)
    # x̂ lands on the half step up to float32 rounding of the two operations.
    bound = 2 * np.finfo(np.float32).eps * (np.abs(half) + np.abs(before)).astype(np.float64)
    assert np.all(np.abs(own.vector.astype(np.float64) - half) <= bound)


def test_payload_before_any_publish_is_full() -> None:
    own = OwnEstimate(np.float32([3.0, 4.0]))
    kind, base, array = own.payload_for(-1)
    assert (kind, base) == ("full", -1)
    assert np.array_equal(array, np.float32([3.0, 4.0]))


def test_payload_first_round_is_full() -> None:
    own = OwnEstimate(np.zeros(2, np.float32))
    own.publish(np.float32([1.0, 2.0]), 0)
    # base_round is -1 after the first publish: even a peer "holding -1" gets the full estimate.
    kind, base, array = own.payload_for(-1)
    assert (kind, base) == ("full", -1)
    assert np.array_equal(array, own.vector)


def test_payload_delta_for_peer_on_previous_round_full_otherwise() -> None:
    own = OwnEstimate(np.zeros(2, np.float32))
    for r, values in enumerate(([1.0, 1.0], [2.0, 0.0], [2.0, 5.0])):
        own.publish(np.float32(values), r)
    kind, base, array = own.payload_for(1)
    assert (kind, base) == ("delta", 1)
    assert np.array_equal(array, np.float32([0.0, 5.0]))
    for held in (-1, 0, 2, 5):  # older, current or unknown rounds: the full estimate
        kind, base, array = own.payload_for(held)
        assert (kind, base) == ("full", -1), held
        assert np.array_equal(array, np.float32([2.0, 5.0]))


# -- PeerEstimates ---------------------------------------------------------------------------------


def test_apply_full_then_delta_records_metadata() -> None:
    peers = PeerEstimates.empty(3)
    assert peers.holds(SENDER) == -1
    full = np.float32([1.0, 2.0, 3.0])
    peers.apply(_contribution(0, "full", -1), full)
    full[0] = 99.0  # the receiver keeps its own copy
    assert peers.holds(SENDER) == 0
    assert np.array_equal(peers.peers[SENDER].vector, np.float32([1.0, 2.0, 3.0]))

    peers.apply(
        _contribution(1, "delta", 0, degree=5, disagreement=0.5, done=True),
        np.float32([0.5, 0.0, -3.0]),
    )
    entry = peers.peers[SENDER]
    assert peers.holds(SENDER) == 1
    assert np.array_equal(entry.vector, np.float32([1.5, 2.0, 0.0]))
    assert entry.vector.dtype == np.float32
    assert (entry.degree, entry.disagreement, entry.done) == (5, 0.5, True)

    peers.forget(SENDER)
    assert peers.holds(SENDER) == -1
    peers.forget(SENDER)  # forgetting twice is harmless


def test_full_estimate_may_skip_rounds() -> None:
    peers = PeerEstimates.empty(2)
    peers.apply(_contribution(0, "full", -1), np.float32([1.0, 1.0]))
    peers.apply(_contribution(7, "full", -1), np.float32([2.0, 2.0]))
    assert peers.holds(SENDER) == 7


def test_delta_from_unknown_peer_needs_full() -> None:
    peers = PeerEstimates.empty(2)
    with pytest.raises(EstimateError, match=r"delta on round 3, hold -1") as info:
        peers.apply(_contribution(4, "delta", 3), np.float32([1.0, 1.0]))
    assert info.value.status == "need_full"
    assert peers.holds(SENDER) == -1


def test_delta_on_a_base_we_do_not_hold_needs_full() -> None:
    peers = PeerEstimates.empty(2)
    peers.apply(_contribution(2, "full", -1), np.float32([1.0, 1.0]))
    with pytest.raises(EstimateError, match=r"delta on round 3, hold 2") as info:
        peers.apply(_contribution(4, "delta", 3), np.float32([1.0, 1.0]))
    assert info.value.status == "need_full"
    assert info.value.reason == "delta on round 3, hold 2"
    # nothing changed
    assert peers.holds(SENDER) == 2
    assert np.array_equal(peers.peers[SENDER].vector, np.float32([1.0, 1.0]))


@pytest.mark.parametrize(("round_", "kind", "base"), [(3, "full", -1), (2, "full", -1),
                                                     (3, "delta", 2), (1, "delta", 0)])
def test_stale_or_replayed_round_is_rejected(round_: int, kind: str, base: int) -> None:
    peers = PeerEstimates.empty(2)
    peers.apply(_contribution(2, "full", -1), np.float32([1.0, 1.0]))
    peers.apply(_contribution(3, "delta", 2), np.float32([1.0, 0.0]))
    with pytest.raises(EstimateError, match=rf"stale round {round_} \(hold 3\)") as info:
        peers.apply(_contribution(round_, kind, base), np.float32([5.0, 5.0]))
    assert info.value.status == "rejected"
    assert peers.holds(SENDER) == 3
    assert np.array_equal(peers.peers[SENDER].vector, np.float32([2.0, 1.0]))


@pytest.mark.parametrize("shape", [(3,), (1,), (0,), (2, 1), ()])
def test_wrong_vector_size_is_rejected(shape: tuple[int, ...]) -> None:
    peers = PeerEstimates.empty(2)
    with pytest.raises(EstimateError, match=r"parameter count \d+ != 2") as info:
        peers.apply(_contribution(0, "full", -1), np.zeros(shape, np.float32))
    assert info.value.status == "rejected"
    assert SENDER not in peers.peers


def test_peers_are_kept_apart() -> None:
    peers = PeerEstimates.empty(1)
    peers.apply(_contribution(0, "full", -1, sender="a"), np.float32([1.0]))
    peers.apply(_contribution(5, "full", -1, sender="b"), np.float32([2.0]))
    peers.apply(_contribution(1, "delta", 0, sender="a"), np.float32([1.0]))
    assert (peers.holds("a"), peers.holds("b")) == (1, 5)
    assert peers.peers["a"].vector[0] == 2.0 and peers.peers["b"].vector[0] == 2.0


# -- sender and receiver together ------------------------------------------------------------------


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.integers(1, 30))
def test_receiver_stays_bit_identical_without_losses(seed: int, size: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    own = OwnEstimate(_random_vector(rng, size))
    peers = PeerEstimates.empty(size)
    kinds = []
    for r in range(rounds):
        own.publish(_random_vector(rng, size), r)
        kinds.append(own.payload_for(peers.holds(SENDER))[0])
        _send(own, peers, peers.holds(SENDER))
        assert peers.holds(SENDER) == r
        assert np.array_equal(peers.peers[SENDER].vector, own.vector)
    assert kinds == ["full"] + ["delta"] * (rounds - 1)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 24),
    st.lists(st.sampled_from(["ok", "lost", "ack_lost"]), min_size=1, max_size=30),
)
def test_receiver_resyncs_with_acknowledged_rounds(seed: int, size: int, fates: list[str]) -> None:
    """The sender tracks what the receiver holds from ok acks (as round.py does).

    ``lost``: the frame never arrives; ``ack_lost``: it is applied but the sender never hears.
    """
    rng = np.random.default_rng(seed)
    own = OwnEstimate(_random_vector(rng, size))
    peers = PeerEstimates.empty(size)
    peer_holds = -1  # the sender's belief
    for r, fate in enumerate(fates):
        own.publish(_random_vector(rng, size), r)
        kind, base, array = own.payload_for(peer_holds)
        if kind == "delta":
            assert base == peer_holds == r - 1
        if fate == "lost":
            continue
        peers.apply(_contribution(r, kind, base), array)
        assert peers.holds(SENDER) == r
        assert np.array_equal(peers.peers[SENDER].vector, own.vector)
        if fate == "ok":
            peer_holds = r


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 24),
    st.lists(st.booleans(), min_size=1, max_size=30),
)
def test_optimistic_sender_gets_need_full_after_losses(
    seed: int, size: int, delivered: list[bool]
) -> None:
    """The sender assumes every previous round arrived; a lost one makes the next delta fail."""
    rng = np.random.default_rng(seed)
    own = OwnEstimate(_random_vector(rng, size))
    peers = PeerEstimates.empty(size)
    need_full_seen = 0
    for r, arrives in enumerate(delivered):
        own.publish(_random_vector(rng, size), r)
        if not arrives:
            continue
        held_before = peers.holds(SENDER)
        kind, base, array = own.payload_for(r - 1)
        try:
            peers.apply(_contribution(r, kind, base), array)
        except EstimateError as error:
            assert kind == "delta"
            assert error.status == "need_full"
            assert held_before != r - 1
            assert peers.holds(SENDER) == held_before  # the failed delta changed nothing
            need_full_seen += 1
            kind, base, array = own.payload_for(held_before)
            assert (kind, base) == ("full", -1)
            peers.apply(_contribution(r, kind, base), array)
        else:
            assert kind == "full" or held_before == r - 1
        assert peers.holds(SENDER) == r
        assert np.array_equal(peers.peers[SENDER].vector, own.vector)
    # A round is refused exactly when it arrives after a lost round (other than round 0).
    expected = sum(
        1 for r in range(1, len(delivered)) if delivered[r] and not delivered[r - 1]
    )
    assert need_full_seen == expected


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 20), st.integers(2, 20))
def test_replaying_any_earlier_frame_is_rejected(seed: int, size: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    own = OwnEstimate(_random_vector(rng, size))
    peers = PeerEstimates.empty(size)
    sent = []
    for r in range(rounds):
        own.publish(_random_vector(rng, size), r)
        kind, base, array = own.payload_for(peers.holds(SENDER))
        message = _contribution(r, kind, base)
        peers.apply(message, array)
        sent.append((message, array.copy()))
    snapshot = peers.peers[SENDER].vector.copy()
    for message, array in sent:
        with pytest.raises(EstimateError, match="stale round") as info:
            peers.apply(message, array)
        assert info.value.status == "rejected"
    assert np.array_equal(peers.peers[SENDER].vector, snapshot)
    assert np.array_equal(snapshot, own.vector)


def test_as_of_gives_the_round_asked_for_when_a_neighbour_is_one_ahead() -> None:
    estimates = PeerEstimates.empty(2)
    for round_ in (0, 1, 2):
        message = Contribution("fed", round_, "b", "a", 1, "full", -1, 0.0, False, ())
        estimates.apply(message, np.full(2, float(round_), np.float32))
    entry = estimates.peers["b"]
    assert np.all(entry.as_of(1) == 1.0)  # we are finishing round 1, b already sent round 2
    assert np.all(entry.as_of(2) == 2.0)
    assert np.all(entry.as_of(5) == 2.0)  # b is behind: its latest estimate is all we have
    assert np.all(entry.as_of(0) == 2.0)  # older rounds are not kept


# -- the first delta, on the initial model every member starts from --------------------------------


def test_the_first_delta_goes_on_the_shared_initial_model_not_as_a_full_estimate() -> None:
    initial = np.float32([0.5, -1.0, 2.0])
    origin = origin_digest(initial)
    own = OwnEstimate(initial.copy(), origin=origin)
    peers = PeerEstimates.empty(3, initial.copy(), origin)
    own.publish(np.float32([1.0, -1.0, 2.5]), 0)
    kind, base, array = own.payload_for(-1)
    assert (kind, base) == ("delta", -1)  # the 3 floats of q, not the estimate
    message = Contribution("fed", 0, SENDER, RECEIVER, 3, kind, base, 0.0, False, (),
                           origin=origin)
    peers.apply(message, array)
    assert np.array_equal(peers.peers[SENDER].vector, own.vector)  # bit-identical copies
    # the next round: an ordinary delta on round 0
    own.publish(np.float32([1.0, 0.0, 2.5]), 1)
    assert own.payload_for(0)[:2] == ("delta", 0)
    assert own.payload_for(-1)[:2] == ("full", -1)  # a newcomer now gets the estimate


def test_a_first_delta_on_another_initial_model_asks_for_the_full_estimate() -> None:
    mine, theirs = np.float32([0.0, 0.0]), np.float32([1.0, 0.0])  # another seed, say
    peers = PeerEstimates.empty(2, mine, origin_digest(mine))
    message = Contribution("fed", 0, SENDER, RECEIVER, 3, "delta", -1, 0.0, False, (),
                           origin=origin_digest(theirs))
    with pytest.raises(EstimateError) as caught:
        peers.apply(message, np.float32([0.5, 0.5]))
    assert caught.value.status is AckCode.NEED_FULL and SENDER not in peers.peers
    # nor on one it no longer holds as the sender's base: it holds a later estimate
    ok = Contribution("fed", 0, SENDER, RECEIVER, 3, "delta", -1, 0.0, False, (),
                      origin=origin_digest(mine))
    peers.apply(ok, np.float32([0.5, 0.5]))
    again = Contribution("fed", 1, SENDER, RECEIVER, 3, "delta", -1, 0.0, False, (),
                         origin=origin_digest(mine))
    with pytest.raises(EstimateError) as caught:
        peers.apply(again, np.float32([0.5, 0.5]))
    assert caught.value.status is AckCode.NEED_FULL
    assert np.array_equal(peers.peers[SENDER].vector, np.float32([0.5, 0.5]))
    # and a holder without an initial model (none given) asks for the full one
    bare = PeerEstimates.empty(2)
    with pytest.raises(EstimateError):
        bare.apply(ok, np.float32([0.5, 0.5]))


def test_without_an_origin_the_first_round_still_goes_full() -> None:
    own = OwnEstimate(np.zeros(2, np.float32))  # e.g. restored from a checkpoint
    own.publish(np.float32([1.0, 2.0]), 0)
    assert own.payload_for(-1)[:2] == ("full", -1)
