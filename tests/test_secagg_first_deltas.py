"""Round 0 as a delta round (``secagg.first_deltas``; gossipfl.node.secure_sparse: origin,
origin_base): every member's x̂ starts as the federation's initial model, so an aggregator's
running sum starts exact and round 0's deltas are taken from that model; between real node
objects (a star as in ``test_secagg_ring``: aggregator a, neighbourhood b, c, d, e, every
weight 1/5), on the wire, in the config, and simulated."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import secagg_loopback as loop

from gossipfl.config import CompressionConfig, ConfigError, NodeConfig, SecAggConfig
from gossipfl.gossip import wire
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import MaskedInput, WireError
from gossipfl.node import secure_round, secure_sparse
from gossipfl.node.estimates import OwnEstimate
from gossipfl.node.secagg_state import SecAggState
from gossipfl.node.state import Node

NOW = 1000.0
MEMBERS = "bcde"
CONFIG = SecAggConfig(enabled=True, min_contributors=3, full_every=10, delta_clip=0.05,
                      first_deltas=True)


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    tmp = tmp_path_factory.mktemp("first_deltas")
    return loop.link_star({name: loop.secagg_node(tmp, name, CONFIG,
                                                  CompressionConfig(kind="int4"))
                           for name in "abcde"}, NOW)


@pytest.fixture(autouse=True)
def _fresh(star) -> None:
    """Every node as it starts: x̂ the initial model (named by its origin), no secagg memory."""
    loop.reset_star(star, NOW)
    for node in star.values():
        node.own = OwnEstimate(node.estimates.initial.copy(), origin=node.estimates.origin)
        node.round = -1


def _inputs(star, senders: str) -> dict[str, MaskedInput]:
    a, out = star["a"], {}
    for name in senders:
        node = star[name]
        chosen = secure_sparse.input_for(node, a.peer_id, 0, node.own.vector, node.own.vector)
        assert chosen is not None
        out[name] = secure_round.masked_input(node, a.peer_id, 0, chosen[0], False, chosen[1])
    return out


def test_round_0_sends_deltas_and_the_running_sum_starts_exact(star) -> None:
    a = star["a"]
    initial = a.estimates.initial.copy()
    assert secure_sparse.sparse_round(a, 0) and secure_sparse.width(a, a.peer_id, 0) == 6
    # larger moves than the clip: x̂ takes the clipped, rounded levels, the rest stays behind
    estimates = loop.publish_round(star, 0, seed=0, spread=0.1)
    assert all(star[n].own.last_encoded is not None for n in MEMBERS)
    assert not np.array_equal(estimates["b"], initial)
    assert np.abs(estimates["b"] - initial).max() <= 0.05 + 1e-6
    messages = _inputs(star, MEMBERS)
    assert all(m.sparse and m.width == 6 and m.origin == a.estimates.origin
               for m in messages.values())
    loop.wire_up(star)
    for name, message in messages.items():
        assert secure_round.accept_masked(a, star[name].peer_id, message)[0] is AckCode.OK
    result = loop.run_secure_sum(a, 0)
    assert result is not None and len(result[2]) == 4
    record: dict[str, Any] = {}
    secure_sparse.mix(a, 0, a.own.vector.copy(), result, record, [])
    assert record["secure_aggregation"] == "4 contributors (int4)"
    # the base was Σ w x₀ (four weights of 1/5), the sum added Σ w s L: exactly Σ w x̂
    assert a.secagg.running_weight == pytest.approx(0.8)
    assert a.secagg.base == frozenset(star[n].peer_id for n in MEMBERS)
    expected = loop.weighted_sum(star, estimates, MEMBERS)
    assert np.abs(a.secagg.running - expected).max() < 1e-6


def test_an_input_from_another_initial_model_is_refused(star, caplog) -> None:
    """A member that started from another model (another seed: misconfigured) or names none
    would leave a's running sum wrong for the whole run; its input is refused, as a dropout."""
    a = star["a"]
    loop.publish_round(star, 0, seed=1, spread=0.02)
    message = _inputs(star, "b")["b"]
    a.round = -1
    for origin in (b"\x00" * 16, b""):
        forged = dataclasses.replace(message, origin=origin)
        status, reason = secure_round.accept_masked(a, star["b"].peer_id, forged)
        assert status is AckCode.REJECTED and "initial model" in reason
    assert a.rejections["origin"] == 2 and "origin" in caplog.text
    # a full input in a later round names no origin, and a delta in another round none either
    assert secure_sparse.origin(a, 1) == b"" and secure_sparse.origin(a, 10) == b""


def test_a_member_that_did_not_start_from_the_initial_model_sends_nothing(star) -> None:
    """A node resumed from a checkpoint holds an x̂ that is not x₀ (no origin): it has no delta
    from x₀ to give, so it sends no round-0 input (its aggregators see a dropout)."""
    b = star["b"]
    b.own = OwnEstimate(b.estimates.initial + np.float32(0.01))  # no origin
    loop.publish_round(star, 0, seed=2, spread=0.02)
    assert secure_sparse.input_for(b, star["a"].peer_id, 0, b.own.vector, b.own.vector) is None


def test_an_aggregator_without_the_initial_model_takes_no_deltas(star) -> None:
    a = star["a"]
    a.secagg = SecAggState()
    a.estimates = dataclasses.replace(a.estimates, origin=b"")
    try:
        assert secure_sparse.eligible(a, 0, {}) is None  # refused: no base to add to
        assert a.secagg.running is None
    finally:
        a.estimates = dataclasses.replace(a.estimates, origin=star["b"].estimates.origin)


def test_the_origin_travels_on_sparse_inputs_only() -> None:
    base = MaskedInput("fed", 0, "b", "a", 0.2, 0.0, False, b"\x00" * 6, (), sparse=True,
                       width=6)
    assert "origin" not in wire.named(wire.encode_body(base))
    back = wire.decode_frame(wire.encode_frame(dataclasses.replace(base, origin=b"o" * 16),
                                               1 << 20), MaskedInput, 1 << 20)
    assert back.origin == b"o" * 16
    for bad in (dataclasses.replace(base, origin=b"o" * 15),
                dataclasses.replace(base, origin=b"o" * 16, sparse=False, width=8)):
        with pytest.raises(WireError, match="origin"):
            wire.decode_frame(wire.encode_frame(bad, 1 << 20), MaskedInput, 1 << 20)


def test_first_deltas_need_compressed_secure_aggregation() -> None:
    with pytest.raises(ConfigError, match="first_deltas"):
        NodeConfig(secagg=SecAggConfig(first_deltas=True),
                   compression=CompressionConfig(kind="int4"))
    with pytest.raises(ConfigError, match="first_deltas"):
        NodeConfig(secagg=SecAggConfig(enabled=True, first_deltas=True))


def test_a_simulated_run_sends_round_0_as_deltas_and_converges(tmp_path, pool) -> None:
    """5 nodes, int4 under secure aggregation with first_deltas: every sum of round 0 is an
    int4 one (no full round before round 4), no input is rejected, and the run converges."""
    from sim_scenarios import metrics, scenario_text, simulated

    text = scenario_text(
        name="first-deltas", nodes=5, rounds=12, degree=4, protocol="gamma = 0.85\n",
        extra="[secagg]\nenabled = true\nmin_contributors = 3\nfull_every = 4\n"
              'delta_clip = 0.05\nfirst_deltas = true\n\n[compression]\nkind = "int4"\n')
    report = simulated(tmp_path, text, pool)
    assert min(n["final_accuracy"] for n in report["nodes"]) > 0.8
    assert report["final_consensus_distance"] <= 1e-3
    for index in range(5):
        records = metrics(tmp_path, index)
        kinds = {r["round"]: r.get("secure_aggregation") for r in records}
        assert kinds[0] == "4 contributors (int4)"
        assert not report["nodes"][index]["rejected"]
