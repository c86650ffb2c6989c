"""Tests for gossipfl.aggregation.mixing: Metropolis–Hastings weights, mixing, CHOCO, metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gossipfl.aggregation import (
    build_topology,
    choco_step,
    clipped_gossip,
    clippedgossip_share,
    consensus_distance,
    metropolis_weight,
    mix,
    neighbour_weights,
    relative_disagreement,
    shared_weights,
)

PATH3 = np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]])
PATH3_W = np.array([[2 / 3, 1 / 3, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.0, 1 / 3, 2 / 3]])

FAST = settings(max_examples=60, deadline=None)


@st.composite
def adjacencies(draw: st.DrawFn, min_n: int = 1, max_n: int = 10, connected: bool = False):
    """Random symmetric 0/1 matrices with a zero diagonal; optionally with a ring added."""
    n = draw(st.integers(min_n, max_n))
    bits = draw(st.lists(st.booleans(), min_size=n * (n - 1) // 2, max_size=n * (n - 1) // 2))
    a = np.zeros((n, n), dtype=np.int64)
    a[np.triu_indices(n, k=1)] = bits
    if connected:
        for i in range(n - 1):
            a[i, i + 1] = 1
    return a | a.T


finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


def weight_matrix(a: np.ndarray) -> np.ndarray:
    """The mixing matrix the nodes apply together: row ``i`` is node ``i``'s own
    :func:`neighbour_weights`, from its degree and its neighbours' (what each node knows)."""
    degrees = a.sum(axis=1)
    w = np.zeros(a.shape)
    for i in range(len(a)):
        peers = {str(j): int(degrees[j]) for j in np.flatnonzero(a[i])}
        self_weight, weights = neighbour_weights(int(degrees[i]), peers)
        w[i, i] = self_weight
        for peer, weight in weights.items():
            w[i, int(peer)] = weight
    return w


def spectral_gap(w: np.ndarray) -> float:
    """``1 − |λ₂|`` of a symmetric matrix (1 for a single node)."""
    magnitudes = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1]
    return 1.0 if len(magnitudes) == 1 else float(1.0 - magnitudes[1])


# --------------------------------------------------------------------------- metropolis_weight


def test_metropolis_weight_exact() -> None:
    assert metropolis_weight(0, 0) == 1.0
    assert metropolis_weight(1, 2) == 1 / 3
    assert metropolis_weight(3, 1) == 0.25
    assert metropolis_weight(np.int64(4), 4) == 0.2


@pytest.mark.parametrize(("d_i", "d_j"), [(-1, 2), (2, -3)])
def test_metropolis_weight_rejects_negative_degree(d_i: int, d_j: int) -> None:
    with pytest.raises(ValueError, match="must be non-negative"):
        metropolis_weight(d_i, d_j)


@pytest.mark.parametrize("bad", [1.5, True, "2"])
def test_metropolis_weight_rejects_non_integer(bad: object) -> None:
    with pytest.raises(TypeError, match="must be an integer"):
        metropolis_weight(bad, 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the nodes' rows


def test_rows_of_a_path_and_a_star() -> None:
    np.testing.assert_allclose(weight_matrix(PATH3), PATH3_W, rtol=0, atol=1e-15)
    # Centre 0 has degree 3, leaves degree 1: every edge weight is 1/4.
    a = np.array([[0, 1, 1, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    expected = np.array(
        [[0.25, 0.25, 0.25, 0.25], [0.25, 0.75, 0, 0], [0.25, 0, 0.75, 0], [0.25, 0, 0, 0.75]]
    )
    np.testing.assert_allclose(weight_matrix(a), expected, rtol=0, atol=1e-15)
    assert weight_matrix(np.zeros((1, 1), dtype=np.int64)).tolist() == [[1.0]]


@FAST
@given(adjacencies())
def test_rows_form_a_symmetric_doubly_stochastic_matrix(a: np.ndarray) -> None:
    """What gossip averaging needs of the weights each node computes on its own: together they
    are symmetric (i and j agree on their edge), doubly stochastic, positive on the diagonal and
    on exactly the edges."""
    w = weight_matrix(a)
    assert np.array_equal(w, w.T)
    assert np.all(np.diag(w) > 0)
    np.testing.assert_allclose(w.sum(axis=0), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    off_diagonal = ~np.eye(len(a), dtype=bool)
    assert np.all((w[off_diagonal] > 0) == (a[off_diagonal] == 1))


@FAST
@given(adjacencies(connected=True), st.data())
def test_repeated_mixing_converges_to_initial_mean(a: np.ndarray, data: st.DataObject) -> None:
    n = len(a)
    x = data.draw(hnp.arrays(np.float64, (n, 3), elements=finite))
    w = weight_matrix(a)
    gap = spectral_gap(w)
    assert gap > 0  # connected
    mean = x.mean(axis=0)
    scale = 1.0 + np.abs(x).max()
    initial = np.linalg.norm(x - mean)
    steps = 1 if gap >= 1 - 1e-12 else math.ceil(math.log(1e-10) / math.log(1 - gap))
    for k in range(1, steps + 1):
        x = w @ x
        np.testing.assert_allclose(x.mean(axis=0), mean, rtol=0, atol=1e-12 * scale * k)
        # For symmetric W the disagreement contracts by at least (1 - gap) each step.
        assert np.linalg.norm(x - mean) <= (1 - gap) ** k * initial + 1e-9 * scale
    np.testing.assert_allclose(x, np.broadcast_to(mean, x.shape), rtol=0, atol=1e-8 * scale)


# --------------------------------------------------------------------------- neighbour_weights


def test_neighbour_weights_exact() -> None:
    self_weight, weights = neighbour_weights(2, {"c": 2, "b": 1})
    assert list(weights) == ["b", "c"]
    assert weights == {"b": 1 / 3, "c": 1 / 3}
    assert self_weight == pytest.approx(1 / 3, abs=1e-15)


def test_neighbour_weights_absent_neighbour_goes_to_self() -> None:
    self_weight, weights = neighbour_weights(3, {"b": 1})
    assert weights == {"b": 0.25}
    assert self_weight == 0.75
    assert neighbour_weights(0, {}) == (1.0, {})


def test_neighbour_weights_validation() -> None:
    with pytest.raises(ValueError, match="more neighbours than its degree"):
        neighbour_weights(1, {"b": 1, "c": 1})
    with pytest.raises(ValueError, match="must be non-negative"):
        neighbour_weights(-1, {})
    with pytest.raises(ValueError, match="must be non-negative"):
        neighbour_weights(2, {"b": -1})


# --------------------------------------------------------------------------- shared_weights

#: ClippedGossip's "mr5,1,0": the honest ring 0..4, each i wired to Byzantine i+5 and i+10, and
#: node 0 to Byzantine 15 as well
MR510 = np.zeros((16, 16), dtype=np.int64)
for _a, _b in [(i, (i + 1) % 5) for i in range(5)] + [(i, i + 5) for i in range(5)] + [
        (i, i + 10) for i in range(5)] + [(0, 15)]:
    MR510[_a, _b] = MR510[_b, _a] = 1


def test_shared_weights_exact() -> None:
    assert shared_weights(0.5, {"b": 0.25, "a": 0.25}, 0.5) == (0.75, {"a": 0.125, "b": 0.125})
    assert shared_weights(0.2, {"a": 0.8}, 1.0) == (0.2, {"a": 0.8})  # 1: the row as is
    assert shared_weights(1.0, {}, 0.3) == (1.0, {})
    own, weights = shared_weights(1 / 6, dict.fromkeys("abcde", 1 / 6), 6 / 11)
    assert own == pytest.approx(6 / 11, abs=1e-15)
    assert all(w == pytest.approx(1 / 11, abs=1e-15) for w in weights.values())


def test_shared_weights_validation() -> None:
    for bad in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="share must satisfy"):
            shared_weights(0.5, {"a": 0.5}, bad)
    with pytest.raises(ValueError, match="must be non-negative"):
        shared_weights(0.5, {"a": -0.5}, 0.5)


def test_clippedgossip_share_exact_and_validation() -> None:
    assert clippedgossip_share([1 / 6, 7 / 30, 1 / 5]) == pytest.approx(6 / 11, abs=1e-15)
    assert clippedgossip_share([1.0]) == 1.0  # a node that keeps everything: nothing to raise
    assert clippedgossip_share([0.0, 0.5]) == 0.5
    with pytest.raises(ValueError, match="must not be empty"):
        clippedgossip_share([])
    with pytest.raises(ValueError, match="at most 1"):
        clippedgossip_share([1.5])


def test_shared_rows_are_clippedgossip_s_normalised_matrix_on_their_graph() -> None:
    """Their reference code raises the Metropolis matrix's diagonal by c = 1 − (the least honest
    self-weight) and divides by 1 + c; the nodes' shared rows are exactly that matrix."""
    w = weight_matrix(MR510)
    honest_self = np.diag(w)[:5]
    np.testing.assert_allclose(honest_self, [1 / 6, 7 / 30, 1 / 5, 1 / 5, 7 / 30], atol=1e-15)
    c = 1 - honest_self.min()
    theirs = (w + c * np.eye(16)) / (1 + c)
    share = clippedgossip_share(honest_self)
    ours = np.zeros_like(w)
    for i in range(16):
        peers = {str(j): w[i, j] for j in np.flatnonzero(MR510[i])}
        own, weights = shared_weights(w[i, i], peers, share)
        ours[i, i] = own
        for peer, weight in weights.items():
            ours[i, int(peer)] = weight
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-15)
    # node 0 keeps 6/11 and gives each of its 5 neighbours (3 Byzantine) 1/11; node 1 keeps
    # 32/55, gives node 0 5/55 and node 2 and its 2 Byzantine neighbours 6/55 each
    assert ours[0, 0] == pytest.approx(6 / 11) and ours[0, 15] == pytest.approx(1 / 11)
    np.testing.assert_allclose(ours[1, [1, 0, 2, 6, 11]], np.array([32, 5, 6, 6, 6]) / 55)


@FAST
@given(adjacencies(), st.floats(0.01, 1.0))
def test_shared_rows_stay_symmetric_doubly_stochastic_and_raise_every_self_weight(
        a: np.ndarray, share: float) -> None:
    w = weight_matrix(a)
    lazy = np.zeros_like(w)
    for i in range(len(a)):
        peers = {str(j): w[i, j] for j in np.flatnonzero(a[i])}
        own, weights = shared_weights(w[i, i], peers, share)
        lazy[i, i] = own
        for peer, weight in weights.items():
            lazy[i, int(peer)] = weight
    np.testing.assert_allclose(lazy, (1 - share) * np.eye(len(a)) + share * w, atol=1e-12)
    np.testing.assert_allclose(lazy, lazy.T, atol=1e-15)
    np.testing.assert_allclose(lazy.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diag(lazy) >= np.diag(w) - 1e-12)


@FAST
@given(st.integers(1, 5), st.floats(0.05, 1.0), st.floats(0.0, 5.0), st.data())
def test_clipping_with_shared_weights_is_the_clipped_step_shortened(
        n: int, share: float, tau: float, data: st.DataObject) -> None:
    """Self-centred clipping over the shared row moves the node ``share`` times as far as over
    ``W``, whatever its neighbours send (so a Byzantine push shrinks with the honest pull)."""
    own = data.draw(hnp.arrays(np.float64, 3, elements=st.floats(-10, 10)))
    peers = {f"p{k}": data.draw(hnp.arrays(np.float64, 3, elements=finite)) for k in range(n)}
    weights = {p: 1 / (n + 1) for p in peers}
    full, clipped = clipped_gossip(own, peers, weights, tau)
    _, lazy_weights = shared_weights(1 / (n + 1), weights, share)
    lazy, lazy_clipped = clipped_gossip(own, peers, lazy_weights, tau)
    assert lazy_clipped == clipped
    expected = own + share * (full.astype(np.float64) - own)
    np.testing.assert_allclose(lazy, expected, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- mix


def test_mix_exact() -> None:
    own = np.array([0.0, 2.0])
    out = mix(
        own, {"b": np.array([2.0, 0.0]), "c": np.array([4.0, 4.0])}, {"b": 0.5, "c": 0.25}, 0.25
    )
    assert out.dtype == np.float32
    assert out.tolist() == [2.0, 1.5]
    assert own.tolist() == [0.0, 2.0]  # input untouched


def test_mix_no_neighbours_is_identity_copy() -> None:
    own = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = mix(own, {}, {}, 1.0)
    assert out is not own
    assert np.array_equal(out, own)


def test_mix_independent_of_mapping_order() -> None:
    rng = np.random.default_rng(0)
    models = {f"p{i}": rng.normal(size=50).astype(np.float32) for i in range(5)}
    weights = {peer: 0.15 for peer in models}
    own = rng.normal(size=50).astype(np.float32)
    forward = mix(own, models, weights, 0.25)
    backward = mix(own, dict(reversed(models.items())), dict(reversed(weights.items())), 0.25)
    assert np.array_equal(forward, backward)


@pytest.mark.parametrize(
    ("neighbours", "weights", "self_weight", "message"),
    [
        ({"b": np.zeros(2)}, {"b": 0.5}, 0.4, "must be 1"),
        ({"b": np.zeros(2)}, {"b": 0.5}, 0.5 + 2e-6, "must be 1"),
        ({"b": np.zeros(3)}, {"b": 0.5}, 0.5, "shapes must match"),
        ({"b": np.zeros(2)}, {"c": 0.5}, 0.5, "same peers"),
        ({"b": np.zeros(2)}, {}, 1.0, "same peers"),
        ({"b": np.zeros(2)}, {"b": 1.5}, -0.5, "non-negative"),
        ({"b": np.zeros(2)}, {"b": math.nan}, 0.5, "finite"),
    ],
)
def test_mix_validation(
    neighbours: dict[str, np.ndarray], weights: dict[str, float], self_weight: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mix(np.zeros(2), neighbours, weights, self_weight)


def test_mix_accepts_rounding_within_tolerance() -> None:
    out = mix(np.ones(2), {"b": np.ones(2)}, {"b": 0.5}, 0.5 + 5e-7)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)
    # A self weight of 1 - sum(weights) may come out a hair below zero.
    weights = {"b": 0.6055, "c": 0.3168, "d": 0.0777}
    self_weight = 1.0 - sum(weights.values())
    assert self_weight < 0
    out = mix(np.ones(2), {p: np.ones(2) for p in weights}, weights, self_weight)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_node_local_gossip_over_topology_reaches_average() -> None:
    members = [f"node-{i}" for i in range(12)]
    topology = build_topology("regular", members, degree=3, seed=7)
    rng = np.random.default_rng(1)
    models = {m: rng.normal(size=4).astype(np.float32) for m in members}
    target = np.mean(np.stack(list(models.values())).astype(np.float64), axis=0)
    for _ in range(200):
        new = {}
        for m in members:
            peers = {p: len(topology[p]) for p in topology[m]}
            self_weight, weights = neighbour_weights(len(topology[m]), peers)
            new[m] = mix(models[m], {p: models[p] for p in peers}, weights, self_weight)
        models = new
    for m in members:
        np.testing.assert_allclose(models[m], target, atol=1e-5)


# --------------------------------------------------------------------------- choco_step


def test_choco_step_exact() -> None:
    out = choco_step(np.array([1.0]), np.array([0.0]), {"b": np.array([4.0])}, {"b": 0.25})
    assert out.dtype == np.float32
    assert out.tolist() == [2.0]
    half = choco_step(
        np.array([1.0]), np.array([0.0]), {"b": np.array([4.0])}, {"b": 0.25}, gamma=0.5
    )
    assert half.tolist() == [1.5]


@FAST
@given(
    st.integers(0, 5).flatmap(
        lambda k: st.tuples(
            hnp.arrays(np.float32, (k + 1, 4), elements=st.floats(-100, 100, width=32)),
            st.lists(st.floats(0.0, 1.0), min_size=k + 1, max_size=k + 1),
        )
    )
)
def test_choco_step_equals_mix_with_exact_estimates(case: tuple[np.ndarray, list[float]]) -> None:
    models, raw = case
    # raw[0] is the self share, raw[1:] the neighbours'; normalised to sum to one.
    total = math.fsum(raw)
    shares = [r / total for r in raw] if total > 0 else [1.0] + [0.0] * (len(raw) - 1)
    neighbours = {f"p{j}": models[j] for j in range(1, len(models))}
    weights = {f"p{j}": shares[j] for j in range(1, len(models))}
    self_weight = 1.0 - math.fsum(weights.values())
    own = models[0]
    expected = mix(own, neighbours, weights, self_weight)
    got = choco_step(own, own, neighbours, weights, gamma=1.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4)


@FAST
@given(adjacencies(min_n=2, max_n=8), st.data())
def test_choco_step_preserves_network_average_for_any_estimates(
    a: np.ndarray, data: st.DataObject
) -> None:
    n = len(a)
    halves = data.draw(hnp.arrays(np.float64, (n, 3), elements=finite))
    estimates = data.draw(hnp.arrays(np.float64, (n, 3), elements=finite))
    gamma = data.draw(st.floats(0.01, 1.0))
    w = weight_matrix(a)
    new = np.stack(
        [
            choco_step(
                halves[i],
                estimates[i],
                {str(j): estimates[j] for j in np.flatnonzero(a[i])},
                {str(j): w[i, j] for j in np.flatnonzero(a[i])},
                gamma=gamma,
            )
            for i in range(n)
        ]
    )
    np.testing.assert_allclose(new.mean(axis=0), halves.mean(axis=0), rtol=0, atol=1e-3)


@pytest.mark.parametrize("gamma", [0.0, -0.5, 1.5, math.nan])
def test_choco_step_rejects_bad_gamma(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma must satisfy"):
        choco_step(np.zeros(2), np.zeros(2), {}, {}, gamma=gamma)


def test_choco_step_validation() -> None:
    z = np.zeros(2)
    with pytest.raises(ValueError, match="shapes must match"):
        choco_step(z, np.zeros(3), {}, {})
    with pytest.raises(ValueError, match="shapes must match"):
        choco_step(z, z, {"b": np.zeros(3)}, {"b": 0.5})
    with pytest.raises(ValueError, match="same peers"):
        choco_step(z, z, {"b": z}, {"c": 0.5})
    with pytest.raises(ValueError, match="at most 1"):
        choco_step(z, z, {"b": z, "c": z}, {"b": 0.6, "c": 0.6})
    with pytest.raises(ValueError, match="non-negative"):
        choco_step(z, z, {"b": z}, {"b": -0.1})


# --------------------------------------------------------------------------- consensus_distance


@pytest.mark.parametrize(
    ("models", "expected"),
    [
        ([[3.0, 0.0], [1.0, 0.0]], 0.5),  # mean (2, 0), each 1 away
        ([[2.0, 0.0], [0.0, 2.0]], 1.0),  # mean (1, 1), each √2 away, ||mean|| = √2
        ([[1.0, 0.0], [-1.0, 0.0]], 1.0),  # mean 0: absolute distance
        ([[4.0, 0.0], [4.0, 0.0], [1.0, 0.0]], 4 / 9),  # mean (3, 0); distances 1, 1, 2
        ([[1.0, 2.0], [1.0, 2.0]], 0.0),
        ([[5.0, -1.0]], 0.0),
    ],
)
def test_consensus_distance_exact(models: list[list[float]], expected: float) -> None:
    assert consensus_distance([np.array(m) for m in models]) == pytest.approx(expected, abs=1e-15)


def test_consensus_distance_uses_all_entries_of_nd_models() -> None:
    a = np.array([[3.0, 0.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert consensus_distance([a, b]) == pytest.approx(0.5)


def test_consensus_distance_validation() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        consensus_distance([])
    with pytest.raises(ValueError, match="shapes must match"):
        consensus_distance([np.zeros(2), np.zeros(3)])


@FAST
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5)), elements=finite),
    st.floats(0.1, 10.0),
)
def test_consensus_distance_matches_its_definition_and_is_scale_invariant(
    models: np.ndarray, factor: float
) -> None:
    d = consensus_distance(list(models))
    mean = models.mean(axis=0)
    spread = float(np.mean(np.linalg.norm(models - mean, axis=1)))
    if np.linalg.norm(mean) > 1e-3:  # mean_i ||x_i − x̄|| / ||x̄||, written out (a mean near 0:
        # the exact cases above)
        assert d == pytest.approx(spread / np.linalg.norm(mean), rel=1e-6, abs=1e-9)
    assert consensus_distance([models[0]] * 3) == 0.0
    if np.linalg.norm(models.mean(axis=0)) > 1e-6:
        assert consensus_distance(list(factor * models)) == pytest.approx(d, rel=1e-9, abs=1e-12)


# --------------------------------------------------------------------------- relative_disagreement


def test_relative_disagreement_exact() -> None:
    own = np.array([3.0, 4.0])
    assert relative_disagreement(own, []) == 0.0
    assert relative_disagreement(own, [own]) == 0.0
    assert relative_disagreement(own, [np.array([3.0, 0.0])]) == pytest.approx(0.8)
    assert relative_disagreement(own, [np.array([3.0, 0.0]), np.zeros(2)]) == pytest.approx(1.0)


def test_relative_disagreement_zero_own_uses_floor() -> None:
    assert relative_disagreement(np.zeros(2), [np.zeros(2)]) == 0.0
    assert relative_disagreement(np.zeros(2), [np.array([1e-12, 0.0])]) == pytest.approx(1.0)


def test_relative_disagreement_validation() -> None:
    with pytest.raises(ValueError, match="shapes must match"):
        relative_disagreement(np.zeros(2), [np.zeros(2), np.zeros((2, 1))])
