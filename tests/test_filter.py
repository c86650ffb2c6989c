"""The distance filter (``[robust] rule = "filter"``): exact small cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gossipfl.aggregation.filter import distance_filter
from gossipfl.aggregation.mixing import mix
from gossipfl.aggregation.robust import RobustRule, robust_choco_step, robust_mix


def test_a_far_estimate_is_left_out_and_its_weight_stays_home() -> None:
    own = np.array([0.0, 0.0])
    near = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0])}
    far = {**near, "x": np.array([-40.0, -40.0])}
    weights = {"a": 0.2, "b": 0.2, "x": 0.2}
    model, out = distance_filter(own, far, weights, 3.0)
    assert out == ["x"]
    # own weight 0.6 (its own 0.4 and x's 0.2), a and b 0.2 each
    np.testing.assert_allclose(model, [0.2, 0.2])
    np.testing.assert_allclose(model, mix(own, near, {"a": 0.2, "b": 0.2}, 0.6))


def test_honest_neighbours_alike_are_all_mixed() -> None:
    own = np.array([0.0])
    neighbours = {"a": np.array([1.0]), "b": np.array([-1.0]), "c": np.array([0.5])}
    weights = {"a": 0.25, "b": 0.25, "c": 0.25}
    model, out = distance_filter(own, neighbours, weights, 3.0)
    assert out == []
    np.testing.assert_allclose(model, mix(own, neighbours, weights, 0.25))


def test_the_filter_does_not_grow_with_a_dragged_node() -> None:
    """The centre is the neighbourhood's median, not the node: a node dragged far off keeps
    its honest neighbours (they pull it back) and still leaves the attacker out."""
    own = np.array([10.0])  # dragged off
    neighbours = {"a": np.array([0.0]), "b": np.array([0.2]), "x": np.array([-30.0])}
    model, out = distance_filter(own, neighbours, {"a": 0.2, "b": 0.2, "x": 0.2}, 3.0)
    assert out == ["x"]
    assert model[0] < 10.0


def test_bad_inputs_are_refused_clearly() -> None:
    own = np.zeros(2)
    with pytest.raises(ValueError, match="ratio"):
        distance_filter(own, {}, {}, 0.0)
    with pytest.raises(ValueError, match="same peers"):
        distance_filter(own, {"a": np.zeros(2)}, {"b": 0.1})
    with pytest.raises(ValueError, match="shape"):
        distance_filter(own, {"a": np.zeros(3)}, {"a": 0.1})
    with pytest.raises(ValueError, match="non-finite"):
        distance_filter(own, {"a": np.array([np.nan, 0.0])}, {"a": 0.1})


def test_the_rule_is_reachable_through_robust_mix_and_the_choco_step() -> None:
    own = np.zeros(1)
    neighbours = {"a": np.ones(1), "x": np.full(1, 99.0), "b": np.full(1, 0.5)}
    weights = {"a": 0.25, "x": 0.25, "b": 0.25}
    result = robust_mix(RobustRule.FILTER, own, neighbours, weights, ratio=3.0)
    assert result.discarded == 1 and result.inputs == 4
    step = robust_choco_step("filter", np.full(1, 2.0), own, neighbours, weights, 1.0)
    np.testing.assert_allclose(step.model, 2.0 + result.model)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (5, 3), elements=st.floats(-5, 5)),
       st.floats(100.0, 1e6), st.integers(0, 1))
def test_an_outlier_far_beyond_an_honest_majority_never_moves_the_node(
        honest: np.ndarray, scale: float, attackers: int) -> None:
    """With 5 honest inputs (own + 4) within a box of side 10 and up to 2 attackers a long way
    off, the result is the honest mix: no attacker weight gets in."""
    own, rest = honest[0], {f"h{k}": honest[k] for k in range(1, 5)}
    attack = {f"x{k}": np.full(3, scale * (k + 1)) for k in range(attackers + 1)}
    weights = {p: 1.0 / 8 for p in [*rest, *attack]}
    model, out = distance_filter(own, {**rest, **attack}, weights, 3.0)
    assert set(attack) <= set(out)
    assert np.all(np.abs(model) <= 5.0 + 1e-6)


def test_the_floor_keeps_a_near_agreeing_neighbourhood_mixing() -> None:
    """Three that agree exactly and two 1% off: without the floor the median distance is 0
    and the two are left out for ever (consensus stalls); with it they are mixed."""
    own = np.full(4, 10.0)
    neighbours = {"a": own.copy(), "b": own.copy(), "c": own * 1.01, "d": own * 0.99}
    weights = {p: 0.2 for p in neighbours}
    _, stalled = distance_filter(own, neighbours, weights, 3.0, floor=0.0)
    assert stalled == ["c", "d"]
    model, out = distance_filter(own, neighbours, weights, 3.0, floor=0.01)
    assert out == []
    np.testing.assert_allclose(model, own)  # c and d cancel
    with pytest.raises(ValueError, match="floor"):
        distance_filter(own, neighbours, weights, 3.0, floor=1.0)


def test_a_neighbour_left_out_in_most_rounds_stays_out_even_when_near() -> None:
    from gossipfl.aggregation.filter import distrusted

    counts = {"x": (20, 30), "h": (2, 30), "new": (2, 2)}
    assert distrusted(counts) == frozenset({"x"})  # "new": too few rounds to judge
    assert distrusted({"h": (16, 30)}) == frozenset({"h"})
    assert distrusted({"h": (16, 33)}) == frozenset()  # good rounds outnumber the rest again
    own = np.zeros(2)
    near = {"x": np.array([0.1, 0.0]), "h": np.array([0.0, 0.1])}
    model, out = distance_filter(own, near, {"x": 0.25, "h": 0.25}, 3.0,
                                 distrusted=distrusted(counts))
    assert out == ["x"]
    np.testing.assert_allclose(model, [0.0, 0.025])
    with pytest.raises(ValueError, match="share"):
        distrusted(counts, share=0.0)


def test_clipping_at_a_radius_of_training_steps_and_the_scale_s_decay() -> None:
    from types import SimpleNamespace

    from gossipfl.config import ConfigError, NodeConfig, ProtocolConfig, RobustConfig
    from gossipfl.node.robust_step import STEP_DECAY, robust_step

    with pytest.raises(ConfigError, match="tau_steps"):
        RobustConfig(rule="clipping", tau=0.5, tau_steps=1.0)
    config = NodeConfig(robust=RobustConfig(rule="clipping", tau_steps=2.0),
                        protocol=ProtocolConfig(gamma=1.0))
    node = SimpleNamespace(config=config, protocol=config.protocol, step_scale=0.0,
                           filter_counts={}, model=np.zeros(2),
                           own=SimpleNamespace(vector=np.array([0.5, 0.0], np.float32)))
    far = {"x": np.array([100.0, 0.0], np.float32)}
    record: dict = {}
    # trained 0.5 this round: radius 2 × 0.5 = 1, so x moves the node by w · 1 at most
    model = robust_step(node, np.array([0.5, 0.0], np.float32), far, {"x": 0.25}, record)
    np.testing.assert_allclose(model, [0.75, 0.0], rtol=1e-6)
    assert record["robust"]["tau"] == pytest.approx(1.0) and node.step_scale == 0.5
    node.model = np.array([0.5, 0.0])  # a consensus round: no training, the scale decays
    robust_step(node, np.array([0.5, 0.0], np.float32), far, {"x": 0.25}, record)
    assert node.step_scale == pytest.approx(STEP_DECAY * 0.5)
    assert record["robust"]["tau"] == pytest.approx(2 * STEP_DECAY * 0.5)


def test_a_neighbour_share_shortens_the_robust_step_and_one_leaves_it_as_is() -> None:
    """``[robust] neighbour_share`` (ClippedGossip's raised self-weight) scales every neighbour's
    weight before the rule runs, the rest staying on the node; the default 1 is today's step."""
    from types import SimpleNamespace

    from gossipfl.config import NodeConfig, ProtocolConfig, RobustConfig
    from gossipfl.node.robust_step import robust_step

    def step(share: float) -> tuple[np.ndarray, dict]:
        config = NodeConfig(robust=RobustConfig(rule="clipping", tau=1.0,
                                                neighbour_share=share),
                            protocol=ProtocolConfig(gamma=1.0))
        node = SimpleNamespace(config=config, protocol=config.protocol, step_scale=0.0,
                               filter_counts={}, model=np.zeros(2),
                               own=SimpleNamespace(vector=np.zeros(2, np.float32)))
        record: dict = {}
        far = {"x": np.array([100.0, 0.0], np.float32), "h": np.array([0.0, 0.5], np.float32)}
        return robust_step(node, np.zeros(2, np.float32), far, {"x": 0.25, "h": 0.25},
                           record), record
    as_is, record = step(1.0)
    np.testing.assert_allclose(as_is, [0.25, 0.125], rtol=1e-6)  # x clipped to 1, h whole
    assert record["robust"]["clipped"] == 1
    lazy, _ = step(6 / 11)
    np.testing.assert_allclose(lazy, [0.25 * 6 / 11, 0.125 * 6 / 11], rtol=1e-6)
