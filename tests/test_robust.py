"""Tests for gossipfl.aggregation.robust: clipping, trimmed mean, median, Krum and dispatch."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.aggregation import (
    SELF_ID,
    RobustRule,
    clipped_gossip,
    clipping_radius,
    coordinate_median,
    mix,
    multi_krum,
    robust_mix,
    trimmed_mean,
)
from gossipfl.aggregation import robust as robust_module

FAST = settings(max_examples=60, deadline=None)

HONEST = st.floats(-100.0, 100.0, width=32)
BIG = float(np.float32(1e30))
ARBITRARY = st.one_of(
    st.sampled_from([BIG, -BIG]), st.floats(-BIG, BIG, width=32, allow_subnormal=False)
)


def _vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _peers(vectors: list[np.ndarray], prefix: str = "p") -> dict[str, np.ndarray]:
    return {f"{prefix}{k:02d}": v for k, v in enumerate(vectors)}


# --------------------------------------------------------------------------- exact examples


def test_clipped_gossip_hand_example() -> None:
    own = _vec(1.0, 1.0)
    neighbours = {"a": _vec(1.0, 3.0), "b": _vec(4.0, 5.0), "c": _vec(-11.0, 1.0)}
    weights = {"a": 0.25, "b": 0.25, "c": 0.25}
    # differences (0, 2) kept, (3, 4) -> (1.2, 1.6), (-12, 0) -> (-2, 0) at tau = 2
    out, clipped = clipped_gossip(own, neighbours, weights, tau=2.0)
    assert clipped == 2
    np.testing.assert_allclose(out, [1.0 + 0.25 * (1.2 - 2.0), 1.0 + 0.25 * (2.0 + 1.6)], 1e-6)
    assert out.dtype == np.float32


def test_clipped_gossip_with_infinite_radius_is_plain_mixing() -> None:
    own = _vec(1.0, -2.0, 3.0)
    neighbours = {"b": _vec(0.0, 4.0, 1.0), "a": _vec(7.0, 7.0, -7.0)}
    weights = {"a": 0.2, "b": 0.3}
    out, clipped = clipped_gossip(own, neighbours, weights, tau=math.inf)
    assert clipped == 0
    np.testing.assert_allclose(out, mix(own, neighbours, weights, 0.5), rtol=1e-6)


def test_clipping_radius_hand_examples() -> None:
    own = np.zeros(1, dtype=np.float32)
    peers = {"a": _vec(1.0), "b": _vec(2.0), "c": _vec(-9.0), "d": _vec(4.0)}
    equal = dict.fromkeys(peers, 0.2)
    assert clipping_radius(own, peers, equal, delta=0.0) == 9.0  # nobody clipped
    assert clipping_radius(own, peers, equal, delta=0.2) == 4.0  # second largest
    assert clipping_radius(own, peers, equal, delta=0.5) == 2.0  # c, d within 0.4 <= 0.5
    assert clipping_radius(own, peers, equal, delta=0.8) == 0.0  # all may be Byzantine
    uneven = {"a": 0.1, "b": 0.1, "c": 0.5, "d": 0.1}
    assert clipping_radius(own, peers, uneven, delta=0.4) == 9.0  # c alone weighs 0.5
    assert clipping_radius(own, {}, {}, delta=0.3) == 0.0


def test_clipping_radius_ties_do_not_clip_the_equally_far() -> None:
    own = np.zeros(2, dtype=np.float32)
    peers = {"a": _vec(3.0, 4.0), "b": _vec(0.0, -5.0), "c": _vec(1.0, 0.0)}
    weights = dict.fromkeys(peers, 0.25)
    tau = clipping_radius(own, peers, weights, delta=0.25)
    assert tau == 5.0
    assert clipped_gossip(own, peers, weights, tau)[1] == 0


def test_trimmed_mean_hand_example() -> None:
    own = _vec(1.0, 10.0)
    neighbours = _peers([_vec(2.0, -10.0), _vec(3.0, 0.0), _vec(100.0, 20.0), _vec(-50.0, 5.0)])
    # column 0 sorted: -50 1 2 3 100 -> mean(1, 2, 3); column 1: -10 0 5 10 20 -> mean(0, 5, 10)
    np.testing.assert_array_equal(trimmed_mean(own, neighbours, b=1), _vec(2.0, 5.0))
    np.testing.assert_array_equal(trimmed_mean(own, neighbours, b=2), _vec(2.0, 5.0))
    np.testing.assert_array_equal(trimmed_mean(own, neighbours, b=0), _vec(11.2, 5.0))


def test_median_hand_example_odd_and_even() -> None:
    own = _vec(1.0, 10.0)
    three = _peers([_vec(2.0, -10.0), _vec(3.0, 0.0)])
    np.testing.assert_array_equal(coordinate_median(own, three), _vec(2.0, 0.0))
    four = {**three, "z": _vec(100.0, 7.0)}
    np.testing.assert_array_equal(coordinate_median(own, four), _vec(2.5, 3.5))


def test_krum_hand_example_and_multi_krum() -> None:
    own = _vec(0.0, 0.0)
    neighbours = {"a": _vec(1, 0), "b": _vec(0, 1), "c": _vec(1, 1), "z": _vec(9, 9)}
    # n = 5, f = 1: each score sums the 2 smallest squared distances
    # own: 1 + 1 = 2, a: 1 + 1 = 2, b: 2, c: 2, z: 128 + 145 -> tie among four, own first
    vector, selected = multi_krum(own, neighbours, f=1)
    assert selected == (SELF_ID,)
    np.testing.assert_array_equal(vector, own)
    vector, selected = multi_krum(own, neighbours, f=1, m=4)
    assert selected == (SELF_ID, "a", "b", "c")
    np.testing.assert_array_equal(vector, _vec(0.5, 0.5))


def test_krum_tie_breaks_by_peer_id() -> None:
    own = _vec(100.0)
    neighbours = {"b": _vec(1.0), "a": _vec(1.0), "c": _vec(0.0), "d": _vec(2.0)}
    # f = 0, n = 5, 3 nearest: a, b score 0 + 1 + 1 = 2; c, d score 1 + 1 + 4 = 6
    assert multi_krum(own, neighbours, f=0)[1] == ("a",)
    assert multi_krum(own, neighbours, f=0, m=2)[1] == ("a", "b")


def test_robust_mix_reports_each_rule() -> None:
    own = _vec(0.0, 0.0)
    neighbours = {"a": _vec(1, 0), "b": _vec(0, 1), "c": _vec(1, 1), "z": _vec(30, 40)}
    weights = dict.fromkeys(neighbours, 0.2)

    none = robust_mix(RobustRule.NONE, own, neighbours, weights)
    np.testing.assert_allclose(none.model, [6.4, 8.4], rtol=1e-6)
    assert (none.inputs, none.clipped, none.discarded, none.tau) == (5, 0, 0, None)

    fixed = robust_mix("clipping", own, neighbours, weights, tau=1.0)
    assert (fixed.rule, fixed.clipped, fixed.tau) == (RobustRule.CLIPPING, 2, 1.0)
    adaptive = robust_mix(RobustRule.CLIPPING, own, neighbours, weights, delta=0.2)
    assert (adaptive.clipped, adaptive.tau) == (1, pytest.approx(math.sqrt(2.0)))
    # a, b, c pass; z (distance 50) is shortened to sqrt(2) along (0.6, 0.8)
    expected = 0.2 * (np.array([2.0, 2.0]) + np.array([0.6, 0.8]) * math.sqrt(2.0))
    np.testing.assert_allclose(adaptive.model, expected, rtol=1e-6)

    tm = robust_mix(RobustRule.TRIMMED_MEAN, own, neighbours, weights, b=1)
    np.testing.assert_allclose(tm.model, [2 / 3, 2 / 3], rtol=1e-6)
    assert tm.discarded == 2
    med = robust_mix(RobustRule.MEDIAN, own, neighbours, weights)
    np.testing.assert_array_equal(med.model, _vec(1.0, 1.0))
    assert med.discarded == 4
    kr = robust_mix(RobustRule.KRUM, own, neighbours, weights, f=1, m=2)
    assert (kr.selected, kr.discarded) == ((SELF_ID, "a"), 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: trimmed_mean(_vec(1.0), {"a": _vec(2.0)}, b=1), "more than 2\\*b"),
        (lambda: trimmed_mean(_vec(1.0), {}, b=-1), "b must be at least 0"),
        (lambda: multi_krum(_vec(1.0), _peers([_vec(0.0)] * 3), f=1), "n > 2\\*f \\+ 2"),
        (lambda: multi_krum(_vec(1.0), _peers([_vec(0.0)] * 4), f=1, m=5), "at most n - f"),
        (lambda: multi_krum(_vec(1.0), _peers([_vec(0.0)] * 4), f=1, m=0), "m must be"),
        (lambda: coordinate_median(_vec(1.0), {"a": _vec(1.0, 2.0)}), "shape"),
        (lambda: coordinate_median(_vec(1.0), {"a": _vec(np.nan)}), "finite.*'a'"),
        (lambda: coordinate_median(_vec(1.0), {SELF_ID: _vec(1.0)}), "reserved"),
        (lambda: clipped_gossip(_vec(1.0), {"a": _vec(1.0)}, {"b": 0.5}, 1.0), "same peers"),
        (lambda: clipped_gossip(_vec(1.0), {"a": _vec(1.0)}, {"a": 0.5}, -1.0), "tau"),
        (lambda: clipped_gossip(_vec(1.0), {"a": _vec(1.0)}, {"a": 1.5}, 1.0), "at most 1"),
        (lambda: clipping_radius(_vec(1.0), {"a": _vec(1.0)}, {"a": 0.5}, 1.0), "delta"),
        (lambda: robust_mix("clipping", _vec(1.0), {}, {}), "exactly one of tau"),
        (lambda: robust_mix("clipping", _vec(1.0), {}, {}, tau=1.0, delta=0.1), "exactly one"),
        (lambda: robust_mix("mean-ish", _vec(1.0), {}, {}), "RobustRule"),
        (lambda: robust_mix("median", _vec(1.0), {"a": _vec(1.0)}, {}), "same peers"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_non_integer_counts_raise_type_error() -> None:
    with pytest.raises(TypeError, match="b must be an integer"):
        trimmed_mean(_vec(1.0), {}, b=0.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="f must be an integer"):
        multi_krum(_vec(1.0), _peers([_vec(0.0)] * 4), f=True)


def test_docstring_examples() -> None:
    result = doctest.testmod(robust_module)
    assert result.attempted >= 6
    assert result.failed == 0


# --------------------------------------------------------------------------- properties


@st.composite
def honest_and_byzantine(draw: st.DrawFn, max_byzantine: str):
    """Own (honest) vector, honest and arbitrary neighbours, and the number of arbitrary ones."""
    dim = draw(st.integers(1, 4))
    n = draw(st.integers(1, 9))
    if max_byzantine == "b":
        b = draw(st.integers(0, (n - 1) // 2))
        k = draw(st.integers(0, b))
    else:  # median: fewer than half
        b = 0
        k = draw(st.integers(0, (n - 1) // 2))
    honest = [draw(hnp.arrays(np.float32, dim, elements=HONEST)) for _ in range(n - k)]
    byzantine = [draw(hnp.arrays(np.float32, dim, elements=ARBITRARY)) for _ in range(k)]
    own, rest = honest[0], honest[1:]
    neighbours = {**_peers(rest, "h"), **_peers(byzantine, "x")}
    order = draw(st.permutations(sorted(neighbours)))
    return own, {peer: neighbours[peer] for peer in order}, np.stack(honest), b


@FAST
@given(honest_and_byzantine("b"))
def test_trimmed_mean_stays_within_honest_range(case) -> None:
    own, neighbours, honest, b = case
    out = trimmed_mean(own, neighbours, b)
    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))


@FAST
@given(honest_and_byzantine("median"))
def test_median_stays_within_honest_range(case) -> None:
    own, neighbours, honest, _ = case
    out = coordinate_median(own, neighbours)
    assert np.all(out >= honest.min(axis=0)) and np.all(out <= honest.max(axis=0))


@FAST
@given(
    st.integers(1, 4).flatmap(
        lambda dim: st.tuples(
            hnp.arrays(np.float32, dim, elements=HONEST),
            st.lists(hnp.arrays(np.float32, dim, elements=ARBITRARY), max_size=7),
        )
    ),
    st.floats(0.0, 1e6),
    st.data(),
)
def test_clipping_bounds_the_change_whatever_neighbours_send(vectors, tau, data) -> None:
    own, sent = vectors
    neighbours = _peers(sent)
    weights = {p: data.draw(st.floats(0.0, 1.0 / (len(sent) + 1))) for p in neighbours}
    out, clipped = clipped_gossip(own, neighbours, weights, tau)
    bound = tau * math.fsum(weights.values())
    change = float(np.linalg.norm(out.astype(np.float64) - own))
    assert change <= bound + 1e-6 * (float(np.linalg.norm(own)) + bound + 1.0)
    assert 0 <= clipped <= len(sent)


@FAST
@given(honest_and_byzantine("b"), st.data())
def test_adaptive_radius_is_at_most_the_farthest_honest_distance(case, data) -> None:
    own, neighbours, _, _ = case
    weights = {p: data.draw(st.floats(0.0, 1.0 / (len(neighbours) + 1))) for p in neighbours}
    byzantine_weight = math.fsum(w for p, w in weights.items() if p.startswith("x"))
    if byzantine_weight >= 1.0:
        return
    tau = clipping_radius(own, neighbours, weights, delta=byzantine_weight)
    honest_distances = [
        float(np.linalg.norm(v.astype(np.float64) - own))
        for p, v in neighbours.items()
        if p.startswith("h")
    ]
    assert tau <= max(honest_distances, default=0.0)


@FAST
@given(hnp.arrays(np.float32, st.integers(1, 5), elements=HONEST), st.integers(0, 8))
def test_every_rule_keeps_the_own_vector_when_all_agree(own, k) -> None:
    neighbours = {f"p{i}": own.copy() for i in range(k)}
    weights = dict.fromkeys(neighbours, 1.0 / (k + 1))
    n = k + 1
    results = [
        robust_mix(RobustRule.NONE, own, neighbours, weights).model,
        robust_mix(RobustRule.CLIPPING, own, neighbours, weights, tau=0.5).model,
        robust_mix(RobustRule.CLIPPING, own, neighbours, weights, delta=0.3).model,
        robust_mix(RobustRule.TRIMMED_MEAN, own, neighbours, weights, b=(n - 1) // 2).model,
        robust_mix(RobustRule.MEDIAN, own, neighbours, weights).model,
    ]
    if n > 2:
        f = (n - 3) // 2
        results.append(robust_mix(RobustRule.KRUM, own, neighbours, weights, f=f, m=n - f).model)
    for out in results:
        np.testing.assert_array_equal(out, own)


@FAST
@given(st.data())
def test_krum_never_selects_a_far_outlier(data) -> None:
    dim = data.draw(st.integers(1, 4))
    f = data.draw(st.integers(0, 3))
    n = data.draw(st.integers(2 * f + 3, 2 * f + 8))
    k = data.draw(st.integers(0, f))
    centre = data.draw(hnp.arrays(np.float64, dim, elements=st.floats(-100.0, 100.0)))
    noise = st.floats(-1.0, 1.0)
    honest = [centre + data.draw(hnp.arrays(np.float64, dim, elements=noise)) for _ in range(n - k)]
    outliers = [
        centre
        + data.draw(hnp.arrays(np.float64, dim, elements=st.sampled_from([-1.0, 1.0])))
        * data.draw(st.floats(1e3, 1e30))
        for _ in range(k)
    ]
    neighbours = {**_peers(honest[1:], "h"), **_peers(outliers, "x")}
    m = data.draw(st.integers(1, n - f))
    _, selected = multi_krum(honest[0], neighbours, f=f, m=m)
    assert len(selected) == m
    assert not any(peer.startswith("x") for peer in selected)


@FAST
@given(honest_and_byzantine("b"), st.randoms(use_true_random=False))
def test_results_do_not_depend_on_neighbour_order(case, rnd) -> None:
    own, neighbours, _, b = case
    order = list(neighbours)
    rnd.shuffle(order)
    shuffled = {p: neighbours[p] for p in order}
    weights = {p: 1.0 / (len(order) + 1) for p in order}
    shuffled_weights = {p: weights[p] for p in reversed(order)}
    n = len(order) + 1
    calls = [
        {"rule": RobustRule.CLIPPING, "delta": 0.3},
        {"rule": RobustRule.CLIPPING, "tau": 2.0},
        {"rule": RobustRule.TRIMMED_MEAN, "b": b},
        {"rule": RobustRule.MEDIAN},
    ]
    if n > 2:
        calls.append({"rule": RobustRule.KRUM, "f": (n - 3) // 2, "m": 2})
    for params in calls:
        rule = params.pop("rule")
        first = robust_mix(rule, own, neighbours, weights, **params)
        second = robust_mix(rule, own, shuffled, shuffled_weights, **params)
        np.testing.assert_array_equal(first.model, second.model)
        assert (first.clipped, first.discarded, first.tau, first.selected) == (
            second.clipped,
            second.discarded,
            second.tau,
            second.selected,
        )


# --------------------------------------------------------------------------- attack


@pytest.mark.parametrize("attack", ["sign_flip", "huge"])
@pytest.mark.parametrize("seed", range(5))
def test_two_of_six_attackers_move_robust_rules_little_and_averaging_a_lot(attack, seed) -> None:
    """Own + 4 honest neighbours near ``mu``; 2 neighbours send ``−10·own`` or ``1e30``.

    Stated bound: every robust rule ends within 1.5 × the honest diameter (largest distance
    between two honest vectors) of the honest mean; plain averaging ends beyond 10 × it.
    """
    rng = np.random.default_rng(seed)
    dim = 20
    mu = rng.normal(size=dim)
    honest = [(mu + 0.1 * rng.normal(size=dim)).astype(np.float32) for _ in range(5)]
    own = honest[0]
    bad = -10.0 * own if attack == "sign_flip" else np.full(dim, 1e30)
    neighbours = {
        **_peers(honest[1:], "h"),
        "x0": bad.astype(np.float32),
        "x1": bad.astype(np.float32),
    }
    weights = dict.fromkeys(neighbours, 1.0 / 7.0)  # Metropolis–Hastings, 6-regular
    stack = np.stack(honest).astype(np.float64)
    honest_mean = stack.mean(axis=0)
    diameter = max(float(np.linalg.norm(a - c)) for a in stack for c in stack)

    def error(result) -> float:
        return float(np.linalg.norm(result.model.astype(np.float64) - honest_mean))

    plain = robust_mix(RobustRule.NONE, own, neighbours, weights)
    assert error(plain) > 10 * diameter
    robust = {
        "clipping": robust_mix(RobustRule.CLIPPING, own, neighbours, weights, delta=2 / 7),
        "trimmed_mean": robust_mix(RobustRule.TRIMMED_MEAN, own, neighbours, weights, b=2),
        "median": robust_mix(RobustRule.MEDIAN, own, neighbours, weights),
        "krum": robust_mix(RobustRule.KRUM, own, neighbours, weights, f=2),
        "multi_krum": robust_mix(RobustRule.KRUM, own, neighbours, weights, f=2, m=3),
    }
    for name, result in robust.items():
        assert error(result) <= 1.5 * diameter, name
    assert robust["clipping"].clipped == 2
    assert not any(p.startswith("x") for p in robust["multi_krum"].selected)
