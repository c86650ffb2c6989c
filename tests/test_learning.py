"""Tests for gossipfl.learning: data, partitioning, models, parameter codecs, training."""

from __future__ import annotations

import random
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.learning import (
    Dataset,
    TrainConfig,
    Trainer,
    build_model,
    flatten_params,
    from_named_arrays,
    load_dataset,
    named_arrays,
    node_partition,
    param_count,
    partition_indices,
    train_centralised,
    unflatten_params,
)
from gossipfl.learning.train import DPSGD
from gossipfl.privacy.dp import poisson_sample

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """The digits dataset, loaded once."""
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def mnist1d() -> Dataset:
    """MNIST-1D, generated once (about 2 s)."""
    return load_dataset("mnist1d", seed=0)


def _labels(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
    """Random integer labels with every class present when n >= num_classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    labels[: min(n, num_classes)] = np.arange(min(n, num_classes))
    return labels


def _check_partition(parts: list[np.ndarray], n: int, num_nodes: int) -> None:
    """Assert sortedness, dtype, disjointness and coverage."""
    assert len(parts) == num_nodes
    for p in parts:
        assert p.dtype == np.int64
        assert np.all(np.diff(p) > 0)
    merged = np.concatenate(parts)
    assert merged.size == n
    np.testing.assert_array_equal(np.sort(merged), np.arange(n))


# --------------------------------------------------------------------------- partition


SCHEME_KWARGS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5},
    "shards": {"shards_per_node": 2},
}


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_deterministic(scheme: str) -> None:
    labels = _labels(500, 10)
    kwargs = SCHEME_KWARGS[scheme]
    a = partition_indices(labels, 7, scheme=scheme, seed=3, **kwargs)
    b = partition_indices(labels, 7, scheme=scheme, seed=3, **kwargs)
    c = partition_indices(labels, 7, scheme=scheme, seed=4, **kwargs)
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(pa, pb)
    assert any(not np.array_equal(pa, pc) for pa, pc in zip(a, c, strict=True))
    _check_partition(a, 500, 7)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    num_nodes=st.integers(1, 30),
    num_classes=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
    scheme=st.sampled_from(["iid", "shards"]),
    shards_per_node=st.integers(1, 4),
)
def test_partition_coverage_iid_shards(
    n: int, num_nodes: int, num_classes: int, seed: int, scheme: str, shards_per_node: int
) -> None:
    num_nodes = min(num_nodes, n)
    labels = _labels(n, num_classes, seed=seed % 1000)
    if scheme == "shards" and n < num_nodes * shards_per_node:
        with pytest.raises(ValueError, match="shards"):
            partition_indices(
                labels, num_nodes, scheme=scheme, seed=seed, shards_per_node=shards_per_node
            )
        return
    parts = partition_indices(
        labels, num_nodes, scheme=scheme, seed=seed, shards_per_node=shards_per_node
    )
    _check_partition(parts, n, num_nodes)
    sizes = [len(p) for p in parts]
    assert min(sizes) >= 1
    if scheme == "iid":
        assert max(sizes) - min(sizes) <= 1


@settings(max_examples=60, deadline=None)
@given(
    nodes_and_n=st.integers(1, 20).flatmap(
        lambda k: st.tuples(st.just(k), st.integers(20 * k, 20 * k + 200))
    ),
    num_classes=st.integers(1, 10),
    alpha=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32 - 1),
    min_size=st.integers(0, 5),
)
def test_partition_coverage_dirichlet(
    nodes_and_n: tuple[int, int], num_classes: int, alpha: float, seed: int, min_size: int
) -> None:
    num_nodes, n = nodes_and_n
    labels = _labels(n, num_classes, seed=seed % 1000)
    try:
        parts = partition_indices(
            labels, num_nodes, scheme="dirichlet", seed=seed, alpha=alpha, min_size=min_size
        )
    except ValueError as err:  # allowed only when min_size cannot be met
        assert "min_size" in str(err)
        assert min_size > 0
        return
    _check_partition(parts, n, num_nodes)
    assert min(len(p) for p in parts) >= min_size


def _mean_max_label_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Average over nodes of the fraction of a node's data in its most common class."""
    shares = [np.bincount(labels[p]).max() / len(p) for p in parts]
    return float(np.mean(shares))


def test_dirichlet_skews_labels() -> None:
    labels = np.repeat(np.arange(10), 200)
    iid = partition_indices(labels, 10, scheme="iid", seed=0)
    skewed = partition_indices(labels, 10, scheme="dirichlet", seed=0, alpha=0.05)
    mild = partition_indices(labels, 10, scheme="dirichlet", seed=0, alpha=100.0)
    iid_share = _mean_max_label_share(labels, iid)
    assert iid_share < 0.2
    assert _mean_max_label_share(labels, skewed) > 0.5
    assert _mean_max_label_share(labels, skewed) > 2.5 * iid_share
    assert _mean_max_label_share(labels, mild) < 0.25


def test_shards_give_few_labels_per_node() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition_indices(labels, 10, scheme="shards", seed=1, shards_per_node=2)
    _check_partition(parts, 1000, 10)
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert all(len(p) == 100 for p in parts)


def test_dirichlet_min_size_respected() -> None:
    labels = np.repeat(np.arange(10), 50)
    parts = partition_indices(labels, 10, scheme="dirichlet", seed=0, alpha=0.1, min_size=10)
    assert min(len(p) for p in parts) >= 10


def test_dirichlet_min_size_impossible_raises() -> None:
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(ValueError, match="min_size"):
        partition_indices(labels, 5, scheme="dirichlet", seed=0, alpha=0.01, min_size=4)
    with pytest.raises(ValueError, match="min_size=5"):
        partition_indices(labels, 5, scheme="dirichlet", seed=0, min_size=5)


@pytest.mark.parametrize(
    ("num_nodes", "kwargs", "match"),
    [
        (0, {"scheme": "iid"}, "num_nodes"),
        (-1, {"scheme": "iid"}, "num_nodes"),
        (11, {"scheme": "iid"}, "num_nodes=11"),
        (2, {"scheme": "bogus"}, "bogus"),
        (2, {"scheme": "dirichlet", "alpha": 0.0}, "alpha"),
        (2, {"scheme": "dirichlet", "alpha": float("nan")}, "alpha"),
        (2, {"scheme": "shards", "shards_per_node": 0}, "shards_per_node"),
        (2, {"scheme": "shards", "shards_per_node": 6}, "shards"),
        (2, {"scheme": "iid", "min_size": -1}, "min_size"),
        (2, {"scheme": "iid", "seed": -5}, "seed"),
        (2.0, {"scheme": "iid"}, "num_nodes"),
    ],
)
def test_partition_errors(num_nodes: int, kwargs: dict, match: str) -> None:
    kwargs = {"seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        partition_indices(_labels(10, 3), num_nodes, **kwargs)


def test_partition_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="1-D"):
        partition_indices(np.zeros((4, 2), np.int64), 2, scheme="iid", seed=0)
    with pytest.raises(ValueError, match="integer"):
        partition_indices(np.zeros(4, np.float32), 2, scheme="iid", seed=0)


def test_node_partition_matches_and_bounds() -> None:
    labels = _labels(100, 4)
    parts = partition_indices(labels, 4, scheme="dirichlet", seed=2)
    for i in range(4):
        np.testing.assert_array_equal(
            node_partition(labels, i, 4, scheme="dirichlet", seed=2), parts[i]
        )
    for bad in (-1, 4):
        with pytest.raises(ValueError, match="node_index"):
            node_partition(labels, bad, 4, scheme="iid", seed=0)


# --------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    ("name", "num_classes", "input_shape", "n_total"),
    [
        ("digits", 10, (8, 8, 1), 1797),
        ("wine", 3, (13,), 178),
        ("breast_cancer", 2, (30,), 569),
        ("iris", 3, (4,), 150),
    ],
)
def test_load_sklearn_datasets(
    name: str, num_classes: int, input_shape: tuple[int, ...], n_total: int
) -> None:
    d = load_dataset(name, seed=1)
    assert d.num_classes == num_classes
    assert d.input_shape == input_shape
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int32 and d.y_test.dtype == np.int32
    assert d.x_train.shape[1] == d.x_test.shape[1] == int(np.prod(input_shape))
    assert len(d.y_train) + len(d.y_test) == n_total
    assert len(d.y_test) == int(np.ceil(0.2 * n_total))
    assert set(np.unique(d.y_test)) == set(range(num_classes))  # stratified
    again = load_dataset(name, seed=1)
    other = load_dataset(name, seed=2)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(d, field), getattr(again, field))
    assert not np.array_equal(d.x_train, other.x_train)
    if name == "digits":
        assert d.x_train.min() >= 0.0 and d.x_train.max() <= 1.0
    else:
        np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(d.x_train.std(axis=0), 1.0, atol=1e-4)


def test_load_test_fraction() -> None:
    d = load_dataset("iris", test_fraction=0.5)
    assert len(d.y_test) == 75


def test_load_mnist1d(mnist1d: Dataset) -> None:
    d = mnist1d
    assert d.input_shape == (40, 1)
    assert d.num_classes == 10
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    np.testing.assert_allclose(d.x_train.mean(axis=0), 0.0, atol=1e-4)


def test_load_mnist1d_sample_count_knob() -> None:
    d = load_dataset("mnist1d", seed=0, samples=600)
    assert d.x_train.shape == (480, 40) and d.x_test.shape == (120, 40)


def test_load_mnist1d_deterministic_and_side_effect_free(mnist1d: Dataset) -> None:
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    again = load_dataset("mnist1d", seed=0)
    assert np.random.random() == expected_np
    assert random.random() == expected_py
    np.testing.assert_array_equal(again.x_train, mnist1d.x_train)
    np.testing.assert_array_equal(again.y_test, mnist1d.y_test)


def test_load_teacher_is_deterministic_balanced_and_learnable_by_its_own_kind() -> None:
    d = load_dataset("teacher", seed=0, samples=2000)
    assert (d.input_shape, d.num_classes) == ((16,), 10)
    assert d.x_train.shape == (1600, 16) and d.x_test.shape == (400, 16)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
    again = load_dataset("teacher", seed=0, samples=2000)
    np.testing.assert_array_equal(again.x_train, d.x_train)
    np.testing.assert_array_equal(again.y_test, d.y_test)
    other = load_dataset("teacher", seed=1, samples=2000)
    assert not np.array_equal(other.y_train, d.y_train)
    share = np.bincount(d.y_train, minlength=10) / len(d.y_train)
    assert share.min() > 0.02 and share.max() < 0.25  # every class, none dominant
    # the labels are a function of the inputs: the teacher's own layer refits them (a
    # least-squares readout of its tanh features), where shuffled labels would give 0.1
    rng = np.random.default_rng([0, 0x7EAC])
    w1 = rng.standard_normal((16, 64)) / 4.0
    features = np.tanh(d.x_train.astype(np.float64) @ w1)
    readout, *_ = np.linalg.lstsq(features, np.eye(10)[d.y_train], rcond=None)
    fitted = (np.tanh(d.x_test.astype(np.float64) @ w1) @ readout).argmax(axis=1)
    assert (fitted == d.y_test).mean() > 0.8


def test_load_teacher_holds_out_its_test_fraction_of_the_same_draws() -> None:
    d = load_dataset("teacher", seed=0, samples=2000, test_fraction=0.05)
    assert (len(d.y_train), len(d.y_test)) == (1900, 100)
    # the same draws, only the cut moved: the default split's training set starts them
    default = load_dataset("teacher", seed=0, samples=2000)
    np.testing.assert_array_equal(d.x_train[:1600], default.x_train)
    np.testing.assert_array_equal(d.y_test, default.y_test[-100:])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "nope"}, "nope"),
        ({"name": "npz"}, "path"),
        ({"name": "iris", "path": "x.npz"}, "path"),
        ({"name": "iris", "test_fraction": 0.0}, "test_fraction"),
        ({"name": "iris", "test_fraction": 1.0}, "test_fraction"),
        ({"name": "iris", "seed": -1}, "seed"),
        ({"name": "iris", "samples": 100}, "samples is only used with datasets 'mnist1d'"),
        ({"name": "teacher", "samples": 9}, "samples must be an int >= 10"),
        ({"name": "mnist1d", "samples": 5}, "samples must be an int >= 10"),
    ],
)
def test_load_dataset_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_npz_round_trip_with_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(50, 4, 3)).astype(np.float64)
    y_train = rng.integers(0, 3, size=50)
    x_test = rng.normal(size=(10, 4, 3))
    y_test = np.full(10, 4, dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    d = load_dataset("npz", path=str(path))
    assert d.input_shape == (4, 3)
    assert d.num_classes == 5
    np.testing.assert_array_equal(d.x_train, x_train.reshape(50, 12).astype(np.float32))
    np.testing.assert_array_equal(d.y_test, y_test.astype(np.int32))
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32


def test_npz_split_when_no_test_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = np.arange(40) % 4
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x, y_train=y)
    a = load_dataset("npz", path=str(path), seed=5, test_fraction=0.25)
    b = load_dataset("npz", path=str(path), seed=5, test_fraction=0.25)
    assert a.x_train.shape == (30, 6) and a.x_test.shape == (10, 6)
    assert a.input_shape == (6,)
    np.testing.assert_array_equal(a.x_test, b.x_test)
    merged = np.concatenate([a.x_train, a.x_test])
    assert sorted(map(tuple, merged.tolist())) == sorted(map(tuple, x.tolist()))


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x_train": np.array([[np.nan, 1.0]] * 4), "y_train": np.zeros(4, int)}, "NaN"),
        ({"x_train": np.ones((4, 2)), "y_train": np.zeros(3, int)}, "y_train"),
        ({"y_train": np.zeros(4, int)}, "x_train"),
        ({"x_train": np.ones((4, 2))}, "y_train"),
        ({"x_train": np.ones((4, 2)), "y_train": np.zeros(4)}, "integer"),
        ({"x_train": np.ones((4, 2)), "y_train": -np.ones(4, int)}, ">= 0"),
        ({"x_train": np.ones(4), "y_train": np.zeros(4, int)}, "shape"),
        (
            {"x_train": np.ones((4, 2)), "y_train": np.zeros(4, int), "x_test": np.ones((2, 2))},
            "y_test",
        ),
        (
            {
                "x_train": np.ones((4, 2)),
                "y_train": np.zeros(4, int),
                "x_test": np.ones((2, 3)),
                "y_test": np.zeros(2, int),
            },
            "x_test",
        ),
        (
            {
                "x_train": np.ones((4, 2)),
                "y_train": np.zeros(4, int),
                "x_test": np.full((2, 2), np.inf),
                "y_test": np.zeros(2, int),
            },
            "x_test",
        ),
    ],
)
def test_npz_rejects_bad_files(tmp_path: Path, arrays: dict, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=match):
        load_dataset("npz", path=str(path))


# --------------------------------------------------------------------------- params


def _tree() -> dict:
    return {
        "dense_1": {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3), "b": jnp.ones(3)},
        "dense_0": {"w": jnp.full((4, 2), 2.0, jnp.float32), "b": jnp.zeros(2, jnp.float32)},
    }


def test_flatten_unflatten_round_trip() -> None:
    tree = _tree()
    vec = flatten_params(tree)
    assert vec.dtype == np.float32 and vec.shape == (param_count(tree),) == (19,)
    np.testing.assert_array_equal(
        vec, np.concatenate([np.ravel(leaf) for leaf in jax.tree_util.tree_leaves(tree)])
    )
    back = unflatten_params(vec, tree)
    assert jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(tree)
    for a, b in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(tree), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    back2 = unflatten_params(vec * 2, tree)
    np.testing.assert_array_equal(flatten_params(back2), vec * 2)


def test_unflatten_mismatch_errors() -> None:
    tree = _tree()
    with pytest.raises(ValueError, match="18"):
        unflatten_params(np.zeros(18, np.float32), tree)
    with pytest.raises(ValueError, match="1-D"):
        unflatten_params(np.zeros((19, 1), np.float32), tree)


def test_named_arrays_round_trip() -> None:
    tree = _tree()
    items = named_arrays(tree)
    names = [name for name, _ in items]
    assert names == ["dense_0.b", "dense_0.w", "dense_1.b", "dense_1.w"]
    assert all(a.dtype == np.float32 and isinstance(a, np.ndarray) for _, a in items)
    back = from_named_arrays(items, tree)
    np.testing.assert_array_equal(flatten_params(back), flatten_params(tree))
    back_reversed = from_named_arrays(list(reversed(items)), tree)
    np.testing.assert_array_equal(flatten_params(back_reversed), flatten_params(tree))


def test_from_named_arrays_rejects_mismatches() -> None:
    tree = _tree()
    items = named_arrays(tree)
    wrong_shape = [(n, a.reshape(-1) if n == "dense_0.w" else a) for n, a in items]
    with pytest.raises(ValueError, match=r"dense_0\.w.*shape"):
        from_named_arrays(wrong_shape, tree)
    wrong_dtype = [(n, a.astype(np.float64) if n == "dense_1.b" else a) for n, a in items]
    with pytest.raises(ValueError, match=r"dense_1\.b.*dtype"):
        from_named_arrays(wrong_dtype, tree)
    renamed = [("dense_9.w" if n == "dense_1.w" else n, a) for n, a in items]
    with pytest.raises(ValueError, match=r"dense_9\.w"):
        from_named_arrays(renamed, tree)
    with pytest.raises(ValueError, match=r"missing.*dense_1\.w"):
        from_named_arrays(items[:-1], tree)
    with pytest.raises(ValueError, match="duplicate"):
        from_named_arrays([*items, items[0]], tree)


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["logreg", "mlp", "cnn"])
@pytest.mark.parametrize(("input_shape", "num_classes"), [((8, 8, 1), 10), ((40, 1), 10)])
def test_model_output_shapes(name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    model = build_model(name, input_shape, num_classes)
    params = model.init(0)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    x = jnp.ones((5, int(np.prod(input_shape))), jnp.float32)
    logits = model.apply(params, x)
    assert logits.shape == (5, num_classes)
    assert bool(jnp.all(jnp.isfinite(logits)))
    again = model.init(0)
    np.testing.assert_array_equal(flatten_params(params), flatten_params(again))
    other = model.init(1)
    assert not np.array_equal(flatten_params(params), flatten_params(other))


def test_model_param_counts() -> None:
    mlp = build_model("mlp", (8, 8, 1), 10)
    assert param_count(mlp.init(0)) == 8970
    logreg = build_model("logreg", (64,), 10)
    assert param_count(logreg.init(0)) == 650
    mlp_small = build_model("mlp", (4,), 3, hidden=(5,))
    assert param_count(mlp_small.init(0)) == 4 * 5 + 5 + 5 * 3 + 3
    cnn = build_model("cnn", (8, 8, 1), 10)
    expected = (9 * 16 + 16) + (9 * 16 * 32 + 32) + (64 * 32 * 10 + 10)
    assert param_count(cnn.init(0)) == expected


def test_build_model_errors() -> None:
    with pytest.raises(ValueError, match="transformer"):
        build_model("transformer", (4,), 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (4,), 1)
    with pytest.raises(ValueError, match="input_shape"):
        build_model("cnn", (4,), 3)
    with pytest.raises(ValueError, match="hidden"):
        build_model("mlp", (4,), 3, hidden=(0,))
    model = build_model("mlp", (4,), 3)
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        model.apply(model.init(0), jnp.ones((2, 5)))


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"optimizer": "rmsprop"}, "rmsprop"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"local_epochs": 0}, "local_epochs"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_train_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_centralised_digits_mlp(digits: Dataset) -> None:
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    config = TrainConfig(optimizer="sgd", learning_rate=0.05, batch_size=32)
    _, accuracies = train_centralised(digits, model, config, epochs=10, seed=0)
    assert len(accuracies) == 10
    assert accuracies[-1] > 0.9


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_trainer_reduces_loss_without_recompiling(digits: Dataset, optimizer: str) -> None:
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    lr = {"adam": 0.003, "momentum": 0.05, "sgd": 0.2}[optimizer]
    trainer = Trainer(model, TrainConfig(optimizer=optimizer, learning_rate=lr, batch_size=32))
    params = model.init(0)
    opt_state = trainer.init_opt_state(params)
    x, y = digits.x_train[:300], digits.y_train[:300]  # 300 = 9 full batches + one of 12
    loss0, _ = trainer.evaluate(params, x, y)
    losses = []
    for round_ in range(3):
        params, opt_state, loss = trainer.train(params, opt_state, x, y, epochs=2, seed=round_)
        losses.append(loss)
    loss_end, acc_end = trainer.evaluate(params, x, y)
    assert losses[-1] < losses[0] < loss0 + 0.5
    assert loss_end < 0.5 * loss0
    assert acc_end > 0.8
    step = trainer._train_chunk
    if not hasattr(step, "_cache_size"):
        pytest.skip("jax.jit functions do not expose _cache_size in this JAX version")
    assert step._cache_size() == 1
    assert trainer._eval_step._cache_size() == 1


def test_trainer_deterministic_and_partial_batches(digits: Dataset) -> None:
    model = build_model("logreg", digits.input_shape, digits.num_classes)
    trainer = Trainer(model, TrainConfig(batch_size=64, local_epochs=2))
    params = model.init(0)
    x, y = digits.x_train[:70], digits.y_train[:70]
    outs = [trainer.train(params, trainer.init_opt_state(params), x, y, seed=1) for _ in range(2)]
    np.testing.assert_array_equal(flatten_params(outs[0][0]), flatten_params(outs[1][0]))
    assert outs[0][2] == outs[1][2]
    # A set smaller than one batch still trains.
    p2, _, loss = trainer.train(params, trainer.init_opt_state(params), x[:5], y[:5], seed=0)
    assert np.isfinite(loss)
    assert not np.array_equal(flatten_params(p2), flatten_params(params))


def test_evaluate_matches_direct_computation(digits: Dataset) -> None:
    model = build_model("mlp", digits.input_shape, digits.num_classes)
    trainer = Trainer(model, TrainConfig())
    params = model.init(3)
    x = np.concatenate([digits.x_train] * 2)[:2100]  # > 1024: several chunks, one partial
    y = np.concatenate([digits.y_train] * 2)[:2100]
    loss, acc = trainer.evaluate(params, x, y)
    logits = np.asarray(model.apply(params, jnp.asarray(x)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    logp -= logits.max(1, keepdims=True)
    np.testing.assert_allclose(loss, -logp[np.arange(len(y)), y].mean(), rtol=1e-4)
    assert acc == pytest.approx(float(np.mean(logits.argmax(1) == y)))


def test_trainer_rejects_bad_input(digits: Dataset) -> None:
    model = build_model("logreg", digits.input_shape, digits.num_classes)
    trainer = Trainer(model, TrainConfig())
    params = model.init(0)
    state = trainer.init_opt_state(params)
    x, y = digits.x_train[:10], digits.y_train[:10]
    with pytest.raises(ValueError, match="shape"):
        trainer.train(params, state, x, y[:9], seed=0)
    with pytest.raises(ValueError, match="label 10"):
        trainer.train(params, state, x, np.full(10, 10), seed=0)
    with pytest.raises(ValueError, match="epochs"):
        trainer.train(params, state, x, y, epochs=0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        trainer.train(params, state, x, y, seed=-1)
    with pytest.raises(ValueError, match="max_steps"):
        trainer.train(params, state, x, y, seed=0, max_steps=0)
    with pytest.raises(ValueError, match="at least one"):
        trainer.evaluate(params, x[:0], y[:0])


def test_max_steps_trains_the_first_steps_of_the_full_run(digits: Dataset) -> None:
    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(16,))
    trainer = Trainer(model, TrainConfig(optimizer="momentum", batch_size=32, local_epochs=3))
    params = model.init(0)
    x, y = digits.x_train[:100], digits.y_train[:100]  # 4 minibatches an epoch, the last of 4

    def run(**kwargs: int) -> tuple[np.ndarray, float]:
        out, _, loss = trainer.train(params, trainer.init_opt_state(params), x, y, seed=5,
                                     **kwargs)
        return flatten_params(out), loss

    full, full_loss = run()
    one_epoch, one_epoch_loss = run(epochs=1)
    # a limit at or past the whole run changes nothing, to the bit
    for limit in (12, 13, 100):
        vector, loss = run(max_steps=limit)
        np.testing.assert_array_equal(vector, full)
        assert loss == full_loss
    # the steps taken are those the full run starts with: 4 steps of 3 epochs = 1 epoch
    vector, loss = run(max_steps=4)
    np.testing.assert_array_equal(vector, one_epoch)
    assert loss == one_epoch_loss
    # part of an epoch (the loss is over the examples seen), and part of the last epoch
    first, second, sixth = (run(max_steps=k)[0] for k in (1, 2, 6))
    assert not np.array_equal(first, second) and not np.array_equal(second, sixth)
    assert all(np.isfinite(run(max_steps=k)[1]) for k in (1, 2, 6))
    if hasattr(trainer._train_chunk, "_cache_size"):
        assert trainer._train_chunk._cache_size() == 1  # however many steps: one compilation


def test_steps_in_chunks_are_the_steps_one_at_a_time_to_the_bit(digits: Dataset) -> None:
    """A round's steps go TRAIN_CHUNK to a dispatch, the last chunk's count an argument: the
    parameters are those of the same steps taken one by one (the step alone, jitted), to the
    bit, and the mean loss the same up to float32 rounding (a step's loss is fused differently
    inside the loop); the chunk compiles once whatever number of steps a round takes."""
    from gossipfl.learning.plan import minibatch_plan

    model = build_model("mlp", digits.input_shape, digits.num_classes, hidden=(16,))
    trainer = Trainer(model, TrainConfig(optimizer="momentum", batch_size=32, local_epochs=5))
    params = model.init(0)
    x, y = digits.x_train[:100], digits.y_train[:100]  # 4 minibatches an epoch: 20 steps
    single = jax.jit(trainer._train_step_impl)

    def alone(steps: int) -> tuple[np.ndarray, float]:
        plan = minibatch_plan(100, 32, 5, 3, steps)
        p, o, losses = jax.device_put(params), trainer.init_opt_state(params), []
        for s in range(plan.steps):
            p, o, loss = single(p, o, x[plan.rows[s]], y[plan.rows[s]], plan.masks[s])
            losses.append(float(loss))
        return flatten_params(p), float(np.dot(losses, plan.weights) / plan.weights.sum())

    for steps in (20, 17, 9, 3):  # chunks of 8 and 4 steps, 8 and 1, 8 and 1, a partial one
        out, _, loss = trainer.train(params, trainer.init_opt_state(params), x, y, seed=3,
                                     max_steps=steps)
        vector, alone_loss = alone(steps)
        np.testing.assert_array_equal(flatten_params(out), vector)
        assert loss == pytest.approx(alone_loss, rel=1e-6)
    if hasattr(trainer._train_chunk, "_cache_size"):
        assert trainer._train_chunk._cache_size() == 1


@pytest.mark.parametrize("name", ["digits", "wine", "breast_cancer", "iris"])
def test_bundled_files_hold_what_sklearn_loads(name: str) -> None:
    """We read scikit-learn's data files directly; the rows must be exactly its loader's."""
    from sklearn import datasets as sk_datasets

    from gossipfl.learning.data import _read_bundled

    bunch = getattr(sk_datasets, f"load_{name}")()
    x, y = _read_bundled(name)
    np.testing.assert_array_equal(x, bunch.data)
    np.testing.assert_array_equal(y, bunch.target)


def test_stratified_split_keeps_class_proportions(digits: Dataset) -> None:
    train_counts = np.bincount(digits.y_train, minlength=10)
    test_counts = np.bincount(digits.y_test, minlength=10)
    fraction = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(fraction - 0.2) < 0.02)


# --------------------------------------------------------------------------- DP-SGD


def _tiny_problem() -> tuple[Trainer, object, np.ndarray, np.ndarray]:
    """A logistic regression on 6 examples of 3 features, plain SGD with step 1."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((6, 3)) * [[0.1], [1.0], [3.0], [10.0], [0.5], [4.0]]).astype(
        np.float32)
    y = np.array([0, 1, 2, 0, 1, 2], np.int32)
    model = build_model("logreg", (3,), 3)
    trainer = Trainer(model, TrainConfig(optimizer="sgd", learning_rate=1.0, batch_size=6))
    return trainer, model.init(0), x, y


def _clipped_by_hand(trainer: Trainer, params: object, x: np.ndarray, y: np.ndarray,
                     rows: np.ndarray, clip: float) -> np.ndarray:
    """Σ over ``rows`` of each example's gradient clipped to ``clip``, one example at a time."""
    def loss(p: object, xi: np.ndarray, yi: np.ndarray) -> jax.Array:
        logits = trainer.model.apply(p, xi[None])
        return -jax.nn.log_softmax(logits)[0, yi]

    total = np.zeros(param_count(params), np.float64)
    for i in rows:
        g = np.asarray(flatten_params(jax.grad(loss)(params, x[i], y[i])), np.float64)
        total += g * min(1.0, clip / np.linalg.norm(g))
    return total


def test_dp_sgd_noiseless_step_is_the_mean_of_clipped_gradients() -> None:
    trainer, params, x, y = _tiny_problem()
    clip = 0.5
    dp = DPSGD(clip_norm=clip, noise_multiplier=0.0, sample_rate=1.0,
               rng=np.random.default_rng(0))
    out, _, _ = trainer.train(params, trainer.init_opt_state(params), x, y, seed=0,
                              max_steps=1, dp=dp)
    by_hand = flatten_params(params) - _clipped_by_hand(trainer, params, x, y, np.arange(6),
                                                        clip) / 6
    np.testing.assert_allclose(flatten_params(out), by_hand, rtol=1e-5, atol=1e-6)
    # with a clip far above every gradient norm, DP-SGD without noise is plain full-batch SGD
    big = DPSGD(clip_norm=1e6, noise_multiplier=0.0, sample_rate=1.0,
                rng=np.random.default_rng(0))
    plain, _, _ = trainer.train(params, trainer.init_opt_state(params), x, y, seed=0,
                                max_steps=1)
    dp_out, _, _ = trainer.train(params, trainer.init_opt_state(params), x, y, seed=0,
                                 max_steps=1, dp=big)
    np.testing.assert_allclose(flatten_params(dp_out), flatten_params(plain), atol=1e-6)


def test_dp_sgd_uses_the_poisson_batch_and_divides_by_the_expected_size() -> None:
    trainer, params, x, y = _tiny_problem()
    q, clip = 0.5, 2.0
    dp = DPSGD(clip_norm=clip, noise_multiplier=0.0, sample_rate=q,
               rng=np.random.default_rng(11))
    chosen = poisson_sample(6, q, np.random.default_rng(11))  # the draw the step makes
    assert 0 < len(chosen) < 6
    out, _, _ = trainer.train(params, trainer.init_opt_state(params), x, y, seed=0,
                              max_steps=1, dp=dp)
    expected = flatten_params(params) - _clipped_by_hand(trainer, params, x, y, chosen,
                                                         clip) / (q * 6)
    np.testing.assert_allclose(flatten_params(out), expected, rtol=1e-5, atol=1e-6)


def test_dp_sgd_overflowing_batch_is_summed_over_chunks_not_truncated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    trainer, params, x, y = _tiny_problem()

    def run() -> np.ndarray:
        dp = DPSGD(clip_norm=0.7, noise_multiplier=0.0, sample_rate=1.0,
                   rng=np.random.default_rng(3))
        out, _, _ = trainer.train(params, trainer.init_opt_state(params), x, y, seed=0,
                                  max_steps=2, dp=dp)
        return flatten_params(out)

    whole = run()
    monkeypatch.setattr("gossipfl.learning.train.padded_batch_size", lambda expected, n: 4)
    np.testing.assert_allclose(run(), whole, rtol=1e-5, atol=1e-6)  # 6 rows in chunks of 4


def test_dp_sgd_noise_has_stddev_sigma_clip_over_expected_batch() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 60)).astype(np.float32)
    y = (np.arange(40) % 10).astype(np.int32)
    model = build_model("logreg", (60,), 10)
    trainer = Trainer(model, TrainConfig(optimizer="sgd", learning_rate=1.0, batch_size=40))
    params = model.init(0)
    sigma, clip = 2.0, 0.5

    def step(noise: float) -> np.ndarray:
        dp = DPSGD(clip_norm=clip, noise_multiplier=noise, sample_rate=1.0,
                   rng=np.random.default_rng(8))
        out, _, _ = trainer.train(params, trainer.init_opt_state(params), x, y, seed=0,
                                  max_steps=1, dp=dp)
        return flatten_params(out)

    residual = step(sigma) - step(0.0)  # same batch (q = 1), noise only
    assert residual.size == 610
    assert float(np.std(residual)) == pytest.approx(sigma * clip / 40, rel=0.1)


def test_dpsgd_config_validation() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="clip_norm"):
        DPSGD(clip_norm=0.0, noise_multiplier=1.0, sample_rate=0.5, rng=rng)
    with pytest.raises(ValueError, match="sample_rate"):
        DPSGD(clip_norm=1.0, noise_multiplier=1.0, sample_rate=0.0, rng=rng)
