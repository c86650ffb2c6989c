"""Compressed secure aggregation (issue 10): random-k CHOCO deltas on a coordinate set the
federation shares per round, masked with k-word masks, summed into the aggregator's running sum
(gossipfl/crypto/secagg_sparse.py, gossipfl/node/secure_sparse.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from secagg_loopback import (
    link_star,
    publish_round,
    random_estimates,
    reset_star,
    run_secure_sum,
    secagg_node,
    weighted_sum,
    wire_up,
)

from gossipfl.aggregation.compress import Codec, kept
from gossipfl.config import (
    CompressionConfig,
    ConfigError,
    NodeConfig,
    SecAggConfig,
)
from gossipfl.crypto import secagg
from gossipfl.crypto.secagg_sparse import (
    add_at,
    choco_mix,
    mask_sparse,
    round_coordinates,
    sparse_delta,
)
from gossipfl.gossip import wire
from gossipfl.gossip.wire import MaskedInput
from gossipfl.node import secure_round, secure_sparse
from gossipfl.node.compression import compressor, round_compressor
from gossipfl.node.runtime import Node
from gossipfl.node.secagg_state import SecAggState
from gossipfl.scenario.config import ScenarioConfig

CLIP, SCALE = 8.0, 2**20
RATIO = 0.25

# -- pure: the shared coordinate set, masking over k coordinates, dropout recovery ------------


def test_every_member_draws_the_same_coordinate_set_and_rounds_differ() -> None:
    members = [round_coordinates("fed", 7, 8906, 0.1) for _ in range(5)]  # five "members"
    assert all(np.array_equal(members[0], m) for m in members)
    assert members[0].size == kept(8906, 0.1) and members[0].dtype == np.uint32
    assert np.all(np.diff(members[0].astype(np.int64)) > 0) and members[0].max() < 8906
    assert not np.array_equal(members[0], round_coordinates("fed", 8, 8906, 0.1))
    assert not np.array_equal(members[0], round_coordinates("other", 7, 8906, 0.1))


def test_the_secagg_compressor_uses_the_shared_set_and_none_in_full_rounds() -> None:
    config, sa = CompressionConfig(kind="randk", ratio=0.1), SecAggConfig(enabled=True,
                                                                           full_every=5)
    delta = np.random.default_rng(0).normal(size=500).astype(np.float32)
    encoded = [compressor(config, "fed", sender, 3, sa)(delta) for sender in ("p", "q")]
    assert encoded[0].codec is Codec.SPARSE
    assert np.array_equal(encoded[0].indices, encoded[1].indices)
    assert np.array_equal(encoded[0].indices, round_coordinates("fed", 3, 500, 0.1))
    assert np.array_equal(encoded[0].values, delta[encoded[0].indices.astype(int)])
    assert compressor(config, "fed", "p", 5, sa) is None  # a full round: x̂ = x½
    # consensus rounds (from the training rounds on) are full too
    assert compressor(config, "fed", "p", 31, sa, 30) is None
    assert compressor(config, "fed", "p", 29, sa, 30) is not None
    # without secagg, each sender draws its own set (plain mode unchanged)
    plain = [compressor(config, "fed", s, 3)(delta) for s in ("p", "q")]
    assert not np.array_equal(plain[0].indices, plain[1].indices)
    # the final (done) delta: compressed as any round's, with or without secagg
    def node(config: NodeConfig) -> Any:
        return SimpleNamespace(config=config, peer_id="p", secagg=SecAggState())

    last = round_compressor(node(NodeConfig(compression=config)), 3)
    assert last is not None and last(delta).codec is Codec.SPARSE
    assert round_compressor(node(NodeConfig()), 3) is None  # no compression: none


def _keys(names: str) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {n: rng.bytes(32) for n in names}


def _pair_seeds(keys: dict[str, bytes], me: str, context: bytes) -> dict[str, bytes]:
    publics = {n: secagg.crypto_scalarmult_base(k) for n, k in keys.items()}
    return {o: secagg.agree_seed(keys[me], publics[o], context=context) for o in keys if o != me}


def _sparse_inputs(names: str, *, seed: int = 0):
    rng = np.random.default_rng(seed)
    size, r = 1000, 4
    indices = round_coordinates("fed", r, size, RATIO)
    deltas = {n: rng.normal(0, 0.01, size).astype(np.float32) for n in names}
    keys = _keys(names)
    context = secagg.seed_context("fed", "agg", r)
    self_seeds = {n: rng.bytes(32) for n in names}
    weights = {n: 0.2 for n in names}
    masked = {n: mask_sparse(sparse_delta(deltas[n], indices).values, weights[n], clip=CLIP,
                             scale=SCALE, my_id=n, self_seed=self_seeds[n],
                             pair_seeds=_pair_seeds(keys, n, context))
              for n in names}
    return indices, deltas, keys, context, self_seeds, weights, masked


def test_masking_over_k_coordinates_sums_to_the_weighted_deltas_there() -> None:
    indices, deltas, _, _, self_seeds, weights, masked = _sparse_inputs("bcde")
    assert all(y.size == indices.size for y in masked.values())  # k words, not the model size
    total = secagg.unmask_sum(masked, survivors_self_seeds=self_seeds, dropped_pair_seeds={})
    summed = secagg.dequantise_sum(total, 4, CLIP, SCALE)
    expected = sum(weights[n] * deltas[n][indices.astype(int)] for n in "bcde")
    assert np.abs(summed - expected).max() <= 4 / (2 * SCALE) + 1e-7
    # one masked input alone is far from its value: the masks cover every kept coordinate
    quantised = secagg.quantise(weights["b"] * deltas["b"][indices.astype(int)], CLIP, SCALE)
    assert np.count_nonzero(masked["b"] == quantised) <= 2
    # the running sum moves on the shared coordinates only
    running = np.ones(1000, np.float32)
    moved = add_at(running, indices, summed)
    assert set(np.flatnonzero(moved != running)) <= set(indices.astype(int).tolist())
    assert np.allclose(moved[indices.astype(int)], 1 + summed, atol=1e-6)


def test_a_dropout_is_recovered_on_the_compressed_vector() -> None:
    indices, deltas, keys, context, self_seeds, weights, masked = _sparse_inputs("bcde", seed=3)
    survivors = {n: masked[n] for n in "cde"}  # b masked, then never arrived
    dropped = {(n, "b"): _pair_seeds(keys, n, context)["b"] for n in "cde"}  # k-word masks
    total = secagg.unmask_sum(survivors, survivors_self_seeds={n: self_seeds[n] for n in "cde"},
                              dropped_pair_seeds=dropped)
    summed = secagg.dequantise_sum(total, 3, CLIP, SCALE)
    expected = sum(weights[n] * deltas[n][indices.astype(int)] for n in "cde")
    assert np.abs(summed - expected).max() <= 3 / (2 * SCALE) + 1e-7
    with pytest.raises(ValueError, match="missing pair seeds"):
        secagg.unmask_sum(survivors, survivors_self_seeds={n: self_seeds[n] for n in "cde"},
                          dropped_pair_seeds={k: v for k, v in dropped.items() if k[0] != "c"})


def test_choco_mix_keeps_the_average_with_symmetric_weights() -> None:
    rng = np.random.default_rng(2)
    n, size = 4, 50
    w = np.full((n, n), 0.25)  # complete graph of 4, Metropolis–Hastings 1/(1+3)
    half = rng.normal(size=(n, size)).astype(np.float32)
    hat = rng.normal(size=(n, size)).astype(np.float32)
    mixed = [choco_mix(half[i], hat[i], sum(w[i, j] * hat[j] for j in range(n) if j != i),
                       0.75, 0.3) for i in range(n)]
    assert np.allclose(np.mean(mixed, axis=0), half.mean(axis=0), atol=1e-5)


# -- config ----------------------------------------------------------------------------------


def test_config_accepts_randk_int8_int4_with_secagg_and_refuses_the_others() -> None:
    sa = SecAggConfig(enabled=True)
    for kind in ("randk", "int8", "int4"):
        assert ScenarioConfig(secagg=sa, compression=CompressionConfig(kind=kind))
    for kind in ("fp16", "topk"):
        with pytest.raises(ConfigError, match="must be none, randk, int8 or int4"):
            ScenarioConfig(secagg=sa, compression=CompressionConfig(kind=kind))
        with pytest.raises(ConfigError, match="must be none, randk, int8 or int4"):
            NodeConfig(secagg=sa, compression=CompressionConfig(kind=kind))
    with pytest.raises(ConfigError, match="full_every"):
        SecAggConfig(full_every=0)


def test_consensus_deltas_are_refused_without_int8_or_int4_under_secagg() -> None:
    on = SecAggConfig(enabled=True, consensus_deltas=True)
    for kind in ("int8", "int4"):
        assert ScenarioConfig(secagg=on, compression=CompressionConfig(kind=kind))
    for config, kind in ((on, "randk"), (on, "none"),
                         (SecAggConfig(consensus_deltas=True), "int4")):
        for make in (ScenarioConfig, NodeConfig):
            with pytest.raises(ConfigError, match="consensus_deltas needs"):
                make(secagg=config, compression=CompressionConfig(kind=kind))


def test_the_sparse_flag_travels_and_a_full_input_omits_it() -> None:
    base = MaskedInput("fed", 3, "s", "a", 0.2, 0.0, False, b"\0" * 8, (("x", b"c"),))
    for sparse in (False, True):
        message = dataclasses.replace(base, sparse=sparse)
        frame = wire.encode_frame(message, 1 << 20)
        assert ("sparse" in wire.named(frame[wire.HEADER_BYTES:])) is sparse
        assert wire.decode_frame(frame, MaskedInput, 1 << 20).sparse is sparse


# -- real nodes: the aggregator's driver over k coordinates ------------------------------------

NOW = 1000.0


def _node(tmp_path: Path, name: str) -> Node:
    return secagg_node(tmp_path, name, SecAggConfig(enabled=True, min_contributors=3, scale=SCALE,
                                                full_every=10),
                       CompressionConfig(kind="randk", ratio=RATIO))


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    """Aggregator a with neighbours b, c, d, e (each of which also neighbours the others)."""
    tmp = tmp_path_factory.mktemp("secagg_sparse")
    return link_star({name: _node(tmp, name) for name in "abcde"}, NOW)


@pytest.fixture(autouse=True)
def _fresh_state(request: pytest.FixtureRequest) -> None:
    if "star" in request.fixturenames:
        reset_star(request.getfixturevalue("star"), NOW)


def _publish(star: dict[str, Node], r: int, seed: int) -> dict[str, np.ndarray]:
    return publish_round(star, r, seed, 0.05)


def _send(star: dict[str, Node], senders: str, r: int) -> list[str]:
    a = star["a"]
    a.round = r - 1
    statuses = []
    for name in senders:
        node = star[name]
        values, sparse = secure_sparse.input_for(node, a.peer_id, r, node.own.vector,
                                                 node.own.vector)
        message = secure_round.masked_input(node, a.peer_id, r, values, False, sparse)
        statuses.append(secure_round.accept_masked(a, node.peer_id, message)[0])
    return statuses


def _round(star: dict[str, Node], r: int, senders: str, gone: str = ""):
    wire_up(star, gone)
    assert _send(star, senders, r) == ["ok"] * len(senders)
    return run_secure_sum(star["a"], r)


def test_full_then_sparse_rounds_keep_the_running_sum_with_a_dropout(star) -> None:
    a = star["a"]
    random_estimates(star, 5)
    # round 10: full (10 % full_every == 0); every member's whole x̂; the base is all four
    estimates = _publish(star, 10, seed=10)
    assert not secure_sparse.sparse_round(a, 10)
    result = _round(star, 10, "bcde")
    assert result is not None
    secure_sparse.mix(a, 10, a.own.vector.copy(), result, {}, [])
    assert a.secagg.base == frozenset(secure_round.neighbourhood(a, a.peer_id))
    assert np.abs(a.secagg.running - weighted_sum(star, estimates, "bcde")).max() < 1e-5
    # round 11: sparse; b's masked input arrives, then b vanishes (dropout after masking)
    estimates = _publish(star, 11, seed=11)
    indices = secure_sparse.coordinates(a, 11)
    assert secure_sparse.words(a, a.peer_id, 11) == indices.size == kept(a.layout.size, RATIO)
    result = _round(star, 11, "bcde", gone="b")
    assert result is not None
    total, _, survivors = result
    assert total.size == indices.size and len(survivors) == 4
    half = a.own.vector.copy()
    record: dict[str, Any] = {}
    secure_sparse.mix(a, 11, half, result, record, [])
    assert record["secure_aggregation"] == "4 contributors (random-k)"
    # the running sum is Σ w x̂ of the new estimates: every x̂ moved on the shared set only
    assert np.abs(a.secagg.running - weighted_sum(star, estimates, "bcde")).max() < 1e-5
    # round 12: sparse; d never sent: a set one member from the recent ones is refused (the
    # differencing rule holds in sparse rounds too) and the running sum stays as it was
    before = a.secagg.running.copy()
    _publish(star, 12, seed=12)
    assert _round(star, 12, "bce") is None and 12 in a.secagg.refused_rounds
    assert np.array_equal(a.secagg.running, before)


def test_a_dropout_before_masking_is_recovered_on_k_coordinates(star) -> None:
    a = star["a"]
    rng = np.random.default_rng(6)
    for node in star.values():
        node.own.vector = rng.uniform(-1, 1, node.layout.size).astype(np.float32)
    held = {name: node.own.vector.copy() for name, node in star.items()}
    members = secure_round.neighbourhood(a, a.peer_id)
    a.secagg.running = weighted_sum(star, held, "bcde").astype(np.float32)
    a.secagg.running_weight, a.secagg.base = 0.8, frozenset(members)
    estimates = _publish(star, 14, seed=14)
    result = _round(star, 14, "bce")  # d masked nothing: its pair masks are rebuilt (k words)
    assert result is not None and len(result[2]) == 3
    total = result[0]
    indices = secure_sparse.coordinates(a, 14).astype(int)
    expected = sum(secure_round.weight(a, a.peer_id, star[n].peer_id)
                   * (estimates[n] - held[n])[indices] for n in "bce")
    assert np.abs(total - expected).max() <= 3 / (2 * SCALE) + 1e-6
    secure_sparse.mix(a, 14, a.own.vector.copy(), result, {}, [])
    stale = dict(estimates, d=held["d"])  # d's x̂ stays stale in S until the next full round
    assert np.abs(a.secagg.running - weighted_sum(star, stale, "bcde")).max() < 1e-5
