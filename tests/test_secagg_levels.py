"""Training deltas of fewer levels (``secagg.delta_levels``): with one level each side a
degree-4 neighbourhood's sums lie within ±4 and travel as words of the 9-value ring, five in
two bytes (``NINE``);
between real node objects (the int4 star of ``test_secagg_ring``: aggregator a, neighbourhood
b, c, d, e, every weight 1/5), and in the config."""
# ruff: noqa: F811  (``star`` is a fixture imported from test_secagg_ring, used as an argument)
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import secagg_loopback as loop
from test_secagg_ring import MEMBERS, _fresh_state, _inputs, _round, star  # noqa: F401

from gossipfl.config import CompressionConfig, ConfigError, NodeConfig, SecAggConfig
from gossipfl.config_io import check_secagg_compression
from gossipfl.crypto.secagg_sparse import NINE, delta_step, packed_bytes
from gossipfl.node import secure_sparse


@pytest.fixture
def one_level(star) -> Iterator[None]:
    old = {name: node.config for name, node in star.items()}
    for node in star.values():
        node.config = dataclasses.replace(node.config, secagg=dataclasses.replace(
            node.config.secagg, delta_levels=1))
    try:
        yield
    finally:
        for name, node in star.items():
            node.config = old[name]


def test_one_level_deltas_sum_exactly_in_9_value_words(star, one_level) -> None:
    a = star["a"]
    loop.random_estimates(star, 5)
    estimates = loop.publish_round(star, 10, 10, 0.02)  # a full round: the base
    result = _round(star, 10, MEMBERS)
    assert result is not None
    secure_sparse.mix(a, 10, a.own.vector.copy(), result, {}, [])
    assert secure_sparse.levels(a, 11) == 1 and secure_sparse.width(a, a.peer_id, 11) == NINE
    clip = a.config.secagg.delta_clip
    estimates = loop.publish_round(star, 11, 11, 0.02)
    encoded = star["b"].own.last_encoded
    assert encoded.scale == delta_step(clip, 1) and set(np.unique(encoded.values)) <= {-1, 0, 1}
    message = _inputs(star, "b", 11)["b"]
    assert message.width == NINE and len(message.data) == packed_bytes(a.layout.size, NINE)
    assert len(message.data) == 2 * -(-a.layout.size // 5) < packed_bytes(a.layout.size, 4)
    result = _round(star, 11, MEMBERS, gone="c")  # c masked, then vanished: recovered mod 9
    assert result is not None and len(result[2]) == 4
    record: dict[str, Any] = {}
    secure_sparse.mix(a, 11, a.own.vector.copy(), result, record, [])
    assert record["secure_aggregation"] == "4 contributors (int4)"
    assert np.abs(a.secagg.running - loop.weighted_sum(star, estimates, MEMBERS)).max() < 1e-5
    # the consensus rounds keep their own levels
    assert secure_sparse.levels(a, a.config.rounds + 1) == 511


def test_delta_levels_are_checked_against_the_kind() -> None:
    on = SecAggConfig(enabled=True, delta_levels=1)
    check_secagg_compression(on, "int4")
    check_secagg_compression(dataclasses.replace(on, delta_levels=127), "int8")
    with pytest.raises(ConfigError, match=r"delta_levels must be in 0\.\.7"):
        check_secagg_compression(dataclasses.replace(on, delta_levels=8), "int4")
    for kind in ("randk", "none"):
        with pytest.raises(ConfigError, match="delta_levels needs"):
            check_secagg_compression(on, kind)
    with pytest.raises(ConfigError, match="delta_levels needs"):
        check_secagg_compression(dataclasses.replace(on, enabled=False), "int4")
    # a node's config runs the same check
    with pytest.raises(ConfigError, match="delta_levels needs"):
        NodeConfig(secagg=SecAggConfig(delta_levels=1), compression=CompressionConfig("int4"))


def test_coarse_consensus_rounds_are_checked_and_take_their_levels(star, one_level) -> None:
    """``secagg.coarse_consensus``: the first consensus delta rounds at 1, 7 or 31 levels of a
    step as coarse (the same range as the fine rounds', 6- or 8-bit words at degree 4), then
    the fine 511; only with consensus deltas, only those tiers."""
    on = SecAggConfig(enabled=True, consensus_deltas=True, coarse_consensus=(7, 31, 31))
    check_secagg_compression(on, "int4")
    with pytest.raises(ConfigError, match=r"needs secagg\.consensus_deltas"):
        check_secagg_compression(dataclasses.replace(on, consensus_deltas=False), "int4")
    for bad in ((8,), (0,), (511,), (7,) * 17):
        with pytest.raises(ConfigError, match="each 1, 7 or 31"):
            check_secagg_compression(dataclasses.replace(on, coarse_consensus=bad), "int4")
    a = star["a"]
    rounds = a.config.rounds
    a.config = dataclasses.replace(a.config, secagg=dataclasses.replace(
        a.config.secagg, consensus_deltas=True, coarse_consensus=(7, 31)))
    assert [secure_sparse.levels(a, rounds + k) for k in range(-1, 3)] == [1, 7, 31, 511]
    assert secure_sparse.step(a, rounds) == delta_step(a.config.secagg.delta_clip, 7)
    # a coarse round is never narrowed: narrowing holds the fine step's levels
    assert not secure_sparse.can_narrow(a, a.peer_id, rounds + 1)
    assert secure_sparse.can_narrow(a, a.peer_id, rounds + 2)
