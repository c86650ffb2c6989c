"""Tests for gossipfl.aggregation.screen (the loss screen, ``[robust] screen``) and its use in
the node's robust step."""

from __future__ import annotations

import doctest
import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.aggregation import WEIGHT_SUM_TOLERANCE
from gossipfl.aggregation import screen as screen_module
from gossipfl.aggregation.screen import loss_screen


def test_doctests() -> None:
    assert doctest.testmod(screen_module).failed == 0


def test_the_worst_fitting_neighbours_go_up_to_the_share() -> None:
    # ClippedGossip's ring: node 0 gives its 2 honest neighbours and 3 attackers 1/6 each
    weights = {"h1": 1 / 6, "h2": 1 / 6, "a": 1 / 6, "b": 1 / 6, "c": 1 / 6}
    losses = {"h1": 0.35, "h2": 0.37, "a": 0.44, "b": 0.44, "c": 0.44}
    kept, out = loss_screen(weights, losses, 0.5)
    assert out == ("a", "b", "c") and kept == {"h1": 1 / 6, "h2": 1 / 6}
    # a ring node with 2 attackers of 1/5 each: the third (3/5 > 1/2) stays
    kept, out = loss_screen({"h1": 0.2, "h2": 0.2, "a": 0.2, "b": 0.2},
                            {"h1": 0.5, "h2": 0.3, "a": 2.0, "b": 1.9}, 0.5)
    assert out == ("a", "b") and sorted(kept) == ["h1", "h2"]
    # nothing goes when the share is below the worst neighbour's weight, or 0
    assert loss_screen({"a": 0.3, "b": 0.3}, {"a": 9.0, "b": 1.0}, 0.25) == (
        {"a": 0.3, "b": 0.3}, ())
    assert loss_screen({"a": 0.3, "b": 0.3}, {"a": 9.0, "b": 1.0}, 0.0)[1] == ()


def test_ties_go_by_peer_id_nan_is_the_worst_and_the_best_neighbour_stays() -> None:
    kept, out = loss_screen({"a": 0.2, "b": 0.2, "c": 0.2}, {"a": 1.0, "b": 1.0, "c": 1.0}, 0.3)
    assert out == ("a",)  # equal losses: the first id in order goes first
    kept, out = loss_screen({"a": 0.2, "b": 0.2, "c": 0.2},
                            {"a": 0.1, "b": math.nan, "c": 5.0}, 0.3)
    assert out == ("b",)
    kept, out = loss_screen({"a": 0.1, "b": 0.1}, {"a": 1.0, "b": 2.0}, 0.9)
    assert out == ("b",) and kept == {"a": 0.1}  # "a", the best, stays
    assert loss_screen({}, {}, 0.5) == ({}, ())


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="different peers"):
        loss_screen({"a": 0.2}, {"b": 1.0}, 0.5)
    with pytest.raises(ValueError, match="share"):
        loss_screen({"a": 0.2}, {"a": 1.0}, 1.0)
    with pytest.raises(ValueError, match="share"):
        loss_screen({"a": 0.2}, {"a": 1.0}, -0.1)


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(st.text("abcdef", min_size=1, max_size=3),
                       st.tuples(st.floats(0.0, 0.2), st.floats(0.0, 10.0)),
                       max_size=6),
       st.floats(0.0, 0.99))
def test_what_is_left_out_weighs_at_most_the_share_and_fits_no_better(
        peers: dict[str, tuple[float, float]], share: float) -> None:
    weights = {p: w for p, (w, _) in peers.items()}
    losses = {p: loss for p, (_, loss) in peers.items()}
    before = (dict(weights), dict(losses))
    kept, out = loss_screen(weights, losses, share)
    assert (weights, losses) == before  # inputs untouched
    assert set(kept) | set(out) == set(weights) and not set(kept) & set(out)
    assert sum(weights[p] for p in out) <= share + WEIGHT_SUM_TOLERANCE + 1e-12
    assert all(kept[p] == weights[p] for p in kept)
    if weights:
        assert kept  # the best neighbour always stays
    if out and kept:
        assert min(losses[p] for p in out) >= max(losses[p] for p in kept)


def _node(screen: float, losses: dict[str, float] | None) -> SimpleNamespace:
    from gossipfl.config import NodeConfig, ProtocolConfig, RobustConfig

    config = NodeConfig(robust=RobustConfig(rule="clipping", tau=10.0, screen=screen),
                        protocol=ProtocolConfig(gamma=1.0))
    def local_loss(vector: np.ndarray) -> float | None:  # by the estimate's first entry
        return None if losses is None else losses[str(int(vector[0]))]

    async def offload(fn, *args):  # the node's route for blocking work, here inline
        return fn(*args)

    return SimpleNamespace(config=config, protocol=config.protocol, step_scale=0.0,
                           filter_counts={}, model=np.zeros(2), offload=offload,
                           learner=SimpleNamespace(local_loss=local_loss),
                           own=SimpleNamespace(vector=np.zeros(2, np.float32)))


ESTIMATES = {"h": np.array([1.0, 0.0], np.float32), "x": np.array([2.0, 0.0], np.float32),
             "y": np.array([3.0, 0.0], np.float32)}


def test_the_robust_step_leaves_the_screened_out_and_their_weight_on_the_node() -> None:
    from gossipfl.node.robust_step import robust_step

    weights = {"h": 0.25, "x": 0.25, "y": 0.25}
    record: dict = {}
    node = _node(0.5, None)
    model = robust_step(node, np.zeros(2, np.float32), ESTIMATES, weights, record,
                        {"h": 0.2, "x": 3.0, "y": 4.0})
    np.testing.assert_allclose(model, [0.25, 0.0])  # only h mixes in; x and y's weight home
    assert record["robust"]["screened"] == ["x", "y"] and record["robust"]["inputs"] == 2
    # no losses (a node without data) screens nothing; neither does screen 0
    everyone = robust_step(node, np.zeros(2, np.float32), ESTIMATES, weights, {}, None)
    np.testing.assert_allclose(everyone, [1.5, 0.0])
    record = {}
    robust_step(_node(0.0, None), np.zeros(2, np.float32), ESTIMATES, weights, record,
                {"h": 0.2, "x": 3.0, "y": 4.0})
    assert "screened" not in record["robust"] and record["robust"]["inputs"] == 4
    # a neighbour whose estimate came after the losses were taken counts as fitting worst
    record = {}
    robust_step(node, np.zeros(2, np.float32), ESTIMATES, weights, record, {"h": 0.2, "x": 0.1})
    assert record["robust"]["screened"] == ["h", "y"]


def test_the_losses_are_taken_through_the_offload_for_the_estimates_as_of_the_round() -> None:
    import trio

    from gossipfl.node.robust_step import screen_losses

    class Held:
        def __init__(self, vector: np.ndarray) -> None:
            self.vector, self.asked = vector, []

        def as_of(self, r: int) -> np.ndarray:
            self.asked.append(r)
            return self.vector

    node = _node(0.5, {"1": 0.2, "2": 3.0, "3": 4.0})
    held = {p: Held(v) for p, v in ESTIMATES.items()}
    node.neighbours = {"h": None, "x": None, "z": None}  # z: no estimate held
    node.estimates = SimpleNamespace(peers=held)
    calls = []

    async def offload(fn, *args):
        calls.append(fn.__name__)
        return fn(*args)

    node.offload = offload
    assert trio.run(screen_losses, node, 7) == {"h": 0.2, "x": 3.0}
    assert calls == ["_losses"] and held["h"].asked == [7] and held["y"].asked == []
    node.learner = SimpleNamespace(local_loss=lambda vector: None)  # a node without data
    assert trio.run(screen_losses, node, 7) is None


def test_the_screen_is_validated() -> None:
    from gossipfl.config import ConfigError, RobustConfig

    assert RobustConfig().screen == 0.0
    with pytest.raises(ConfigError, match=r"robust\.screen must be in"):
        RobustConfig(rule="clipping", screen=1.0)
    with pytest.raises(ConfigError, match=r"robust\.screen applies to a robust rule"):
        RobustConfig(screen=0.5)
