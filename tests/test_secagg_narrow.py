"""Narrowed consensus delta rounds (gossipfl.node.secure_sparse: narrowing, note_narrowing,
sum_levels): an aggregator whose last consensus delta sum had shrunk tells its members, two
rounds ahead, to hold their levels to one of NARROW_LEVELS (1, 7, 31), and its sum of that
round takes 4-, 6- or 8-bit words instead of 12; between real node objects (the int4 star
of ``test_secagg_ring``: aggregator a, neighbourhood b, c, d, e, every weight 1/5), on the
wire, and simulated."""
# ruff: noqa: F811  (``star`` is a fixture imported from test_secagg_ring, used as an argument)
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import secagg_loopback as loop
from test_secagg_ring import MEMBERS, _fresh_state, _inputs, _round, star  # noqa: F401

from gossipfl.crypto.secagg_sparse import NARROW_LEVELS, NINE, quantise_levels
from gossipfl.gossip import wire
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import UnmaskRequest
from gossipfl.node import secure_round, secure_sparse
from gossipfl.node.compression import round_compressor
from gossipfl.node.secure_sparse import NARROW_SHRUNK


@pytest.fixture
def consensus(star) -> Iterator[tuple[int, int]]:
    """The star with consensus deltas on; yields (R, R + 1): R a full consensus round, R + 1
    and later consensus delta rounds."""
    old = {name: node.config for name, node in star.items()}
    for node in star.values():
        node.config = dataclasses.replace(node.config, secagg=dataclasses.replace(
            node.config.secagg, consensus_deltas=True))
    first, every = star["a"].config.rounds, star["a"].config.secagg.full_every
    full = first + every - first % every
    try:
        yield full, full + 1
    finally:
        for name, node in star.items():
            node.config = old[name]


def _publish(star, r: int, seed: int, spread: float) -> dict[str, Any]:
    """Round r's deltas as the round publishes them (round_compressor: narrowings held to)."""
    rng = np.random.default_rng(seed)
    for node in star.values():
        half = node.own.vector + rng.normal(0, spread, node.layout.size).astype(np.float32)
        node.own.publish(half, r, compress=round_compressor(node, r))
    return {name: node.own.vector.copy() for name, node in star.items()}


def _base(star, full: int) -> None:
    a = star["a"]
    loop.random_estimates(star, 5)
    _publish(star, full, 30, 0.0)
    result = _round(star, full, MEMBERS)
    assert result is not None
    secure_sparse.mix(a, full, a.own.vector.copy(), result, {}, [])


def test_a_shrunk_sum_narrows_the_round_two_ahead(star, consensus) -> None:
    a = star["a"]
    full, r = consensus
    _base(star, full)
    _publish(star, r, 31, 1e-4)  # small consensus moves
    a.disagreement = 0.0  # settled: narrowing is for a consensus within a few tolerances
    result = _round(star, r, MEMBERS)
    assert result is not None
    record: dict[str, Any] = {}
    secure_sparse.mix(a, r, a.own.vector.copy(), result, record, [])
    largest = a.secagg.last_sum[1]
    assert a.secagg.last_sum[0] == r and 0 < largest <= NARROW_SHRUNK * 31 * 4
    assert record["narrowed"] == 0
    # the fewest levels whose sum, many times over, holds the last one: the round's own
    # requests narrowed round r + 2 (the early shares gave the sum before they went out)
    tier = next(n for n in NARROW_LEVELS if largest <= NARROW_SHRUNK * n * 4)
    assert a.secagg.narrowed == {r + 2: tier}
    assert secure_sparse.width(a, a.peer_id, r + 2) == {1: NINE, 7: 6, 31: 8}[tier]
    assert secure_sparse.width(a, a.peer_id, r + 1) == 12
    # the next round's requests, before its own sum, go by this one
    a.disagreement = 0.0
    assert secure_sparse.narrowing(a, r + 1) == (r + 3, tier)
    assert a.secagg.narrowed == {r + 2: tier, r + 3: tier}
    # not while its own disagreement is many tolerances wide: a narrowed (clipped) sum is
    # small whatever the moves were, and narrowing on it alone could hold the consensus back
    a.secagg.narrowed.clear()
    a.disagreement = 31 * a.protocol.consensus_tolerance
    assert secure_sparse.narrowing(a, r + 1) == (0, 0) and not a.secagg.narrowed
    a.disagreement = 0.0
    # the last sum is not the round before: nothing
    assert secure_sparse.narrowing(a, r + 2) == (0, 0)
    # each tier by the sum's size, and none past four times the widest's
    edges = [NARROW_SHRUNK * n * 4 for n in NARROW_LEVELS]  # Σc = 4
    for largest, tier in ((edges[0], 1), (edges[0] + 1, 7), (edges[1], 7), (edges[1] + 1, 31),
                          (edges[2], 31), (edges[2] + 1, 0)):
        a.secagg.narrowed.clear()
        a.secagg.last_sum = (r, largest)
        assert secure_sparse.narrowing(a, r + 1) == ((r + 3, tier) if tier else (0, 0))
    # a training round ahead is never narrowed (its own levels, 4 or 6 bits already)
    a.secagg.last_sum = (5, 1)
    assert secure_sparse.narrowing(a, 6) == (0, 0)


def test_a_member_takes_only_a_narrowing_of_a_consensus_delta_round_two_ahead(
        star, consensus) -> None:
    a, c = star["a"], star["c"]
    full, r = consensus
    # not while the member's own disagreement is many tolerances wide: an aggregator narrowing
    # too early would hold it to a few levels a round far from consensus
    c.disagreement = 31 * c.protocol.consensus_tolerance
    secure_sparse.note_narrowing(c, a.peer_id, r, r + 2, 7)
    assert not c.secagg.narrowings and secure_sparse.sum_levels(c, a.peer_id, r + 2) == 511
    c.disagreement = 30 * c.protocol.consensus_tolerance
    secure_sparse.note_narrowing(c, a.peer_id, r, r + 2, 7)
    assert secure_sparse.sum_levels(c, a.peer_id, r + 2) == 7
    # a deviating aggregator's other claims are ignored: not two ahead, a full round, a
    # training round, levels that are no tier
    for at, narrows, levels in ((r, r + 1, 7), (r, r + 3, 7), (full - 2, full, 7), (3, 5, 7),
                                (r + 1, r + 3, 0), (r + 1, r + 3, 3), (r + 1, r + 3, 511)):
        secure_sparse.note_narrowing(c, a.peer_id, at, narrows, levels)
    assert c.secagg.narrowings == {(a.peer_id, r + 2): 7}
    assert secure_sparse.sum_levels(c, star["b"].peer_id, r + 2) == 511  # another's: as was


def test_a_narrowed_round_holds_every_member_and_sums_exactly(star, consensus) -> None:
    a = star["a"]
    full, r = consensus
    _base(star, full)
    a.secagg.narrowed[r] = 7
    for name in MEMBERS:
        star[name].secagg.narrowings[(a.peer_id, r)] = 7
    held = {name: node.own.vector.copy() for name, node in star.items()}
    estimates = _publish(star, r, 32, 0.01)  # moves of ~100 steps: the bound clips them
    for name in MEMBERS:
        levels = star[name].own.last_encoded.values
        assert np.abs(levels).max() == 7
        step = star[name].own.last_encoded.scale
        assert np.abs(estimates[name] - held[name]).max() <= 7 * step + 1e-9
    inputs = _inputs(star, MEMBERS, r)
    assert all(m.width == 6 for m in inputs.values())
    result = _round(star, r, MEMBERS)
    assert result is not None
    record: dict[str, Any] = {}
    secure_sparse.mix(a, r, a.own.vector.copy(), result, record, [])
    assert record["secure_aggregation"] == "4 contributors (consensus deltas)"
    assert record["narrowed"] == 7
    expected = loop.weighted_sum(star, estimates, MEMBERS)
    assert np.abs(a.secagg.running - expected).max() < 1e-5


def test_levels_past_the_narrowed_ring_are_never_sent(star, consensus) -> None:
    """A member told of a narrowing after it published (it cannot happen two rounds ahead, but
    nothing may wrap if it did) sends nothing; one not told sends 12-bit words, refused as a
    layout mismatch: a dropout either way."""
    a, b, e = star["a"], star["b"], star["e"]
    full, r = consensus
    _base(star, full)
    _publish(star, r, 33, 0.01)
    assert np.abs(b.own.last_encoded.values).max() > 7
    b.secagg.narrowings[(a.peer_id, r)] = 7
    assert secure_sparse.input_for(b, a.peer_id, r, b.own.vector, b.own.vector) is None
    a.secagg.narrowed[r] = 7
    message = _inputs(star, "e", r)["e"]
    assert message.width == 12
    a.round = r - 1
    status, reason = secure_round.accept_masked(a, e.peer_id, message)
    assert status is AckCode.REJECTED and "6-bit words" in reason


def test_the_bound_clips_at_its_levels_at_the_same_step() -> None:
    rng = np.random.default_rng(0)
    delta = np.linspace(-0.02, 0.02, 101)
    free = quantise_levels(delta, 0.05, 511, rng)
    held = quantise_levels(delta, 0.05, 511, rng, bound=7)
    assert np.abs(held).max() == 7 < np.abs(free).max()
    inside = np.abs(free) < 7 - 1  # away from the bound: the same rounding range
    assert np.abs(held[inside] - free[inside]).max() <= 1
    with pytest.raises(ValueError, match="bound"):
        quantise_levels(delta, 0.05, 7, rng, bound=8)


def test_the_narrowing_travels_in_the_unmask_request() -> None:
    base = UnmaskRequest("fed", 33, "a", ("b", "c", "d"), (), (), (), ())
    assert "narrows" not in wire.named(wire.encode_body(base))
    narrowed = dataclasses.replace(base, narrows=35, narrow_levels=7)
    back = wire.decode_frame(wire.encode_frame(narrowed, 1 << 20), UnmaskRequest, 1 << 20)
    assert (back.narrows, back.narrow_levels) == (35, 7)


def test_a_simulated_run_narrows_its_late_consensus_rounds(tmp_path, pool) -> None:
    """``secagg_int4.toml`` cut to 6 nodes and 12 training rounds (simulated): once the
    consensus sums have shrunk, the last consensus rounds are narrowed (every node's in three
    runs out of three; asserted: some), nothing is rejected, and the run converges."""
    from pathlib import Path

    from sim_scenarios import metrics, simulated

    text = (Path(__file__).parent.parent / "scenarios" / "secagg_int4.toml").read_text()
    text = text.replace("\nrounds = 30\n", "\nrounds = 12\n").replace("\nnodes = 8\n",
                                                                        "\nnodes = 6\n")
    report = simulated(tmp_path, text, pool)
    assert report["final_consensus_distance"] <= 1e-3
    narrowed = []
    for index in range(6):
        narrowed += [r["round"] for r in metrics(tmp_path, index) if r.get("narrowed")]
        assert not report["nodes"][index]["rejected"]
    assert narrowed and min(narrowed) >= 12 + 2  # a consensus sum, then two rounds ahead


def test_an_aggregator_narrowing_every_round_cannot_hold_the_consensus(tmp_path, pool) -> None:
    """A deviating aggregator (``narrowing``: every consensus delta round of its sum narrowed to
    one level, whatever its sums were) in the same cut-down ``secagg_int4.toml``: its members
    take the narrowing only once their own disagreement is within ``NARROW_SETTLED``
    tolerances, so it cannot hold them to a level a round from the start of the consensus
    (without that test, 8 simulated nodes ran to the round limit, 90, not converged); before,
    it refuses their wide words, as it could refuse any input."""
    from pathlib import Path

    from sim_scenarios import simulated

    text = (Path(__file__).parent.parent / "scenarios" / "secagg_int4.toml").read_text()
    text = text.replace("\nrounds = 30\n", "\nrounds = 12\n").replace("\nnodes = 8\n",
                                                                        "\nnodes = 6\n")
    text += '\n[[adversaries]]\nnode = 0\nkind = "narrowing"\n'
    report = simulated(tmp_path, text, pool)
    [adversary] = report["adversaries"]
    assert adversary["kind"] == "narrowing" and adversary["attempts"] > 0
    assert report["final_consensus_distance"] <= 1e-3
    limit = 12 + 60  # rounds + max_consensus_rounds
    assert max(node["rounds_completed"] for node in report["nodes"]) < limit


def test_a_refused_input_is_not_waited_for(star, consensus) -> None:
    """A member whose input the aggregator refused for what it holds (here its words, as a
    member that missed a narrowing sends them) sends no other that round: the aggregator stops
    waiting for it at once instead of at the round's deadline (before, each such refusal cost
    a round timeout: 164 s of wall for 8 processes against a narrowing adversary, 5 s since)."""
    import trio

    a = star["a"]
    full, r = consensus
    _base(star, full)
    _publish(star, r, 31, 1e-4)
    a.round = r - 1
    loop.wire_up(star, "")
    a.secagg.narrowed[r] = 7  # a narrowed round that every member but b took
    for name in MEMBERS:
        if name != "b":
            star[name].secagg.narrowings[(a.peer_id, r)] = 7
    inputs = _inputs(star, MEMBERS, r)
    names = {star[name].peer_id: name for name in MEMBERS}
    for peer in a.neighbours:
        name = names[peer]
        status, _ = secure_round.accept_masked(a, peer, inputs[name])
        assert (status is AckCode.OK) == (name != "b"), name  # b's 12-bit words: refused
    b = star["b"].peer_id
    assert (r, b) in a.secagg.refused
    timeouts = a.timeouts

    async def wait() -> list[str]:
        with trio.fail_after(5):  # the deadline is an hour away: only the refusal ends it
            return await secure_round.wait_for_inputs(a, r, trio.current_time() + 3600)

    missing = trio.run(wait)
    assert missing == [b] and a.timeouts == timeouts
    a.secagg.forget_before(r + 1)
    assert not a.secagg.refused
