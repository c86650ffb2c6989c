"""Waived full rounds (gossipfl.node.secure_sparse: waiver, note_waiver, sparse_for): an
aggregator whose running sum is exact takes a round full by ``full_every`` alone as deltas,
saying so in its unmask requests two rounds before; between real node objects (the int4 star
of ``test_secagg_ring``: aggregator a, neighbourhood b, c, d, e, every weight 1/5)."""
# ruff: noqa: F811  (``star`` is a fixture imported from test_secagg_ring, used as an argument)
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import secagg_loopback as loop
from test_secagg_ring import MEMBERS, _fresh_state, _inputs, _round, star  # noqa: F401

from gossipfl.gossip import wire
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import UnmaskRequest
from gossipfl.node import secure_round, secure_sparse
from gossipfl.node.compression import compressor


def _base(star) -> None:
    """Round 10 full: a's running sum holds every member's x̂ exactly."""
    a = star["a"]
    loop.random_estimates(star, 5)
    loop.publish_round(star, 10, 10, 0.02)
    result = _round(star, 10, MEMBERS)
    assert result is not None
    secure_sparse.mix(a, 10, a.own.vector.copy(), result, {}, [])


def _publish(star, r: int, seed: int, told: str) -> dict[str, Any]:
    """Round r's deltas; the named members hold a's waiver of r (the others publish full)."""
    rng = np.random.default_rng(seed)
    for name, node in star.items():
        half = node.own.vector + rng.normal(0, 0.02, node.layout.size).astype(np.float32)
        node.own.publish(half, r, compress=compressor(
            node.config.compression, "fed", node.peer_id, r, node.config.secagg,
            node.config.rounds, waived=name in told))
    return {name: node.own.vector.copy() for name, node in star.items()}


def test_an_exact_running_sum_waives_the_full_round_two_ahead(star) -> None:
    a = star["a"]
    _base(star)
    everyone = frozenset(secure_round.neighbourhood(a, a.peer_id))
    assert secure_sparse.can_waive(a, 20) and not secure_sparse.can_waive(a, 21)
    assert secure_sparse.waiver(a, 18, everyone) == 20 and 20 in a.secagg.waived
    # not a round full by full_every alone, or one past the next but one: nothing
    assert secure_sparse.waiver(a, 19, everyone) == 0 and 21 not in a.secagg.waived
    # a base member missing from the survivors: the sum is not exact, the round stays full
    a.secagg.waived.clear()
    b = star["b"].peer_id
    assert secure_sparse.waiver(a, 28, everyone - {b}) == 0 and not a.secagg.waived
    a.secagg.running = None  # no running sum at all: likewise
    assert secure_sparse.waiver(a, 28, everyone) == 0


def test_a_member_takes_only_a_waiver_of_the_round_two_ahead(star) -> None:
    a, c = star["a"], star["c"]
    secure_sparse.note_waiver(c, a.peer_id, 18, 20)
    assert secure_sparse.waived(c, a.peer_id, 20) and secure_sparse.sparse_for(c, a.peer_id, 20)
    # a deviating aggregator's other claims are ignored: not two ahead, not full by schedule
    for r, waives in ((18, 19), (17, 20), (19, 21), (28, 30 + 10_000)):
        secure_sparse.note_waiver(c, a.peer_id, r, waives)
    assert c.secagg.waivers == {(a.peer_id, 20)}
    assert not secure_sparse.sparse_for(c, star["b"].peer_id, 20)  # another aggregator's: full


def test_a_waived_round_adds_deltas_to_the_running_sum(star) -> None:
    """Round 20 waived: the members publish deltas and send a int4 levels; the sum adds to
    the running sum, which stays exactly Σ w x̂."""
    a = star["a"]
    _base(star)
    a.secagg.waived.add(20)
    for name in MEMBERS:
        star[name].secagg.waivers.add((a.peer_id, 20))
    estimates = _publish(star, 20, 20, told=MEMBERS)
    assert all(star[n].own.last_encoded is not None for n in MEMBERS)  # deltas, not x½
    assert secure_sparse.width(a, a.peer_id, 20) == 6
    inputs = _inputs(star, MEMBERS, 20)
    assert all(m.sparse and m.width == 6 for m in inputs.values())
    result = _round(star, 20, MEMBERS)
    assert result is not None and len(result[2]) == 4
    record: dict[str, Any] = {}
    secure_sparse.mix(a, 20, a.own.vector.copy(), result, record, [])
    assert record["secure_aggregation"] == "4 contributors (int4)"
    expected = loop.weighted_sum(star, estimates, MEMBERS)
    assert np.abs(a.secagg.running - expected).max() < 1e-5


def test_a_member_not_told_sends_full_and_is_refused_as_a_dropout(star) -> None:
    """A member that missed the waiver publishes and sends round 20 full, as before; the
    aggregator that waived it takes deltas only, and refuses that input (its layout)."""
    a, e = star["a"], star["e"]
    _base(star)
    a.secagg.waived.add(20)
    _publish(star, 20, 21, told="")
    assert e.own.last_encoded is None  # published full, x̂ = x½
    message = _inputs(star, "e", 20)["e"]
    assert not message.sparse and message.width == 32
    a.round = 19
    status, reason = secure_round.accept_masked(a, e.peer_id, message)
    assert status is AckCode.REJECTED and "6-bit words" in reason


def test_the_waiver_travels_in_the_unmask_request() -> None:
    base = UnmaskRequest("fed", 18, "a", ("b", "c", "d"), (), (), (), ())
    frame = wire.encode_frame(base, 1 << 20)
    assert "waives" not in wire.named(frame[wire.HEADER_BYTES:])  # none: left off
    back = wire.decode_frame(wire.encode_frame(dataclasses.replace(base, waives=20), 1 << 20),
                             UnmaskRequest, 1 << 20)
    assert back.waives == 20


def test_a_member_killed_after_a_waiver_is_re_based_at_the_next_full_round(tmp_path,
                                                                          pool) -> None:
    """Simulated, int4 under secure aggregation, full_every = 4: round 2's requests waive
    round 4 (every sum exact), then member 4 is killed. Round 4's sums fail without it (its
    presigned full set lacks an input) and drop the running sums, so no later sum waives round
    8: full, it re-bases every sum on the survivors, and the run converges."""
    from sim_scenarios import metrics, scenario_text, simulated

    text = scenario_text(
        name="waiver-kill", nodes=5, rounds=12, degree=4, protocol="gamma = 0.85\n",
        extra="[secagg]\nenabled = true\nmin_contributors = 3\nfull_every = 4\n"
              'delta_clip = 0.05\n\n[compression]\nkind = "int4"\n\n'
              '[[faults]]\nkind = "kill"\nnode = 4\nat_round = 3\n')
    report = simulated(tmp_path, text, pool)
    assert [n["status"] for n in report["nodes"]] == ["done"] * 4 + ["killed"]
    assert min(n["final_accuracy"] for n in report["nodes"][:4]) > 0.8
    assert report["final_consensus_distance"] <= 1e-3
    for index in range(4):
        kinds = {r["round"]: r.get("secure_aggregation") for r in metrics(tmp_path, index)}
        assert kinds[0] == "4 contributors (full)"
        assert [kinds[r] for r in range(4, 8)] == ["refused"] * 4  # no running sum to add to
        assert kinds[8] == "3 contributors (full)"  # not waived: re-based on the survivors
        assert kinds[11] == "3 contributors (int4)"
