"""Deterministic partitioning of a labelled dataset across simulated nodes.

Every node computes the full partition from the same ``(labels, num_nodes, scheme,
seed, parameters)`` and keeps its own part, so no coordination is needed. The
result is a list of sorted, disjoint int64 index arrays covering every index.

Schemes:

* ``"iid"``: shuffle all indices and cut them into ``num_nodes`` near-equal parts.
* ``"dirichlet"``: label skew. For each class, draw node proportions from
  ``Dir(alpha, ..., alpha)`` and split that class's (shuffled) indices accordingly.
  The whole draw is repeated (at most ``MAX_DIRICHLET_TRIES`` times) until every
  node holds at least ``min_size`` examples. Small ``alpha`` means strong skew.
* ``"shards"``: pathological skew as in McMahan et al. (2017). Indices are shuffled,
  stably sorted by label, cut into ``num_nodes * shards_per_node`` near-equal shards,
  and each node receives ``shards_per_node`` shards chosen at random.

For every scheme, a node that ends up with fewer than ``min_size`` examples is an
error (for ``"iid"`` and ``"shards"`` the sizes do not depend on the draw).

``holders``: only the nodes listed hold data. The scheme cuts the examples into
``len(holders)`` parts, the k-th going to node ``holders[k]``; every other node gets an
empty array (``min_size`` applies to the holders only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEMES: tuple[str, ...] = ("iid", "dirichlet", "shards")
"""Partitioning schemes accepted by :func:`partition_indices`."""

MAX_DIRICHLET_TRIES = 1000
"""Number of Dirichlet draws attempted before giving up on ``min_size``."""


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int after checking it is an integer ``>= minimum``.

    Args:
        name: Argument name, for error messages.
        value: The value to check.
        minimum: Smallest allowed value.

    Returns:
        ``value`` as a Python int.

    Raises:
        ValueError: If ``value`` is not an integer or is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def partition_indices(
    labels: np.ndarray,
    num_nodes: int,
    *,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    min_size: int = 1,
    holders: Sequence[int] = (),
) -> list[np.ndarray]:
    """Partition example indices across nodes.

    Args:
        labels: 1-D integer labels of the examples to partition (length ``n``).
        num_nodes: Number of nodes, in ``[1, n]``.
        scheme: ``"iid"``, ``"dirichlet"`` or ``"shards"``.
        seed: Non-negative seed of ``np.random.default_rng``.
        alpha: Dirichlet concentration (``"dirichlet"`` only), ``> 0``.
        shards_per_node: Shards per node (``"shards"`` only), ``>= 1``; requires
            ``n >= num_nodes * shards_per_node``.
        min_size: Minimum examples per node, ``>= 0``.
        holders: The nodes that hold data (distinct, in ``[0, num_nodes)``); empty: all.

    Returns:
        ``num_nodes`` sorted int64 index arrays, pairwise disjoint, whose union is
        ``range(n)`` (empty for a node not in ``holders``). Deterministic in all arguments.

    Raises:
        ValueError: For invalid arguments, or if ``min_size`` cannot be met.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    n = labels.shape[0]
    num_nodes = _check_int("num_nodes", num_nodes, 1)
    if holders:
        owners = [_check_int("holder", h, 0) for h in holders]
        if len(set(owners)) != len(owners) or max(owners) >= num_nodes:
            raise ValueError(f"holders must be distinct node indices below {num_nodes}, "
                             f"got {list(holders)}")
        parts = partition_indices(labels, len(owners), scheme=scheme, seed=seed, alpha=alpha,
                                  shards_per_node=shards_per_node, min_size=min_size)
        spread = [np.empty(0, dtype=np.int64) for _ in range(num_nodes)]
        for owner, part in zip(owners, parts, strict=True):
            spread[owner] = part
        return spread
    if num_nodes > n:
        raise ValueError(f"num_nodes={num_nodes} exceeds the number of examples ({n})")
    seed = _check_int("seed", seed, 0)
    min_size = _check_int("min_size", min_size, 0)
    if min_size * num_nodes > n:
        raise ValueError(
            f"min_size={min_size} for {num_nodes} nodes needs {min_size * num_nodes} "
            f"examples, only {n} available"
        )
    rng = np.random.default_rng(seed)

    if scheme == "iid":
        parts = np.array_split(rng.permutation(n), num_nodes)
    elif scheme == "dirichlet":
        if not isinstance(alpha, float | int) or not alpha > 0 or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
        parts = _dirichlet(labels, num_nodes, rng, float(alpha), min_size)
    elif scheme == "shards":
        shards_per_node = _check_int("shards_per_node", shards_per_node, 1)
        parts = _shards(labels, num_nodes, rng, shards_per_node)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}; expected one of {SCHEMES}")

    result = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    smallest = min(len(p) for p in result)
    if smallest < min_size:
        raise ValueError(
            f"scheme {scheme!r} gives a node only {smallest} examples, below min_size={min_size}"
        )
    return result


def _dirichlet(
    labels: np.ndarray,
    num_nodes: int,
    rng: np.random.Generator,
    alpha: float,
    min_size: int,
) -> list[np.ndarray]:
    """Label-skewed partition with per-class Dirichlet proportions.

    Args:
        labels: 1-D integer labels.
        num_nodes: Number of nodes.
        rng: Generator (consumed).
        alpha: Dirichlet concentration.
        min_size: Minimum examples per node.

    Returns:
        One (unsorted) index array per node.

    Raises:
        ValueError: If no draw within ``MAX_DIRICHLET_TRIES`` meets ``min_size``.
    """
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    concentration = np.full(num_nodes, alpha)
    for _ in range(MAX_DIRICHLET_TRIES):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_nodes)]
        for idx in by_class:
            idx = rng.permutation(idx)
            proportions = rng.dirichlet(concentration)
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(np.int64)
            for node, chunk in enumerate(np.split(idx, cuts)):
                buckets[node].append(chunk)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) >= min_size:
            return parts
    raise ValueError(
        f"dirichlet partition with alpha={alpha} could not give each of {num_nodes} nodes "
        f"min_size={min_size} examples in {MAX_DIRICHLET_TRIES} tries; "
        "increase alpha or lower num_nodes/min_size"
    )


def _shards(
    labels: np.ndarray,
    num_nodes: int,
    rng: np.random.Generator,
    shards_per_node: int,
) -> list[np.ndarray]:
    """Sort-and-shard partition: each node gets ``shards_per_node`` label-sorted shards.

    Args:
        labels: 1-D integer labels.
        num_nodes: Number of nodes.
        rng: Generator (consumed).
        shards_per_node: Shards per node.

    Returns:
        One (unsorted) index array per node.

    Raises:
        ValueError: If there are fewer examples than shards.
    """
    n = labels.shape[0]
    num_shards = num_nodes * shards_per_node
    if n < num_shards:
        raise ValueError(
            f"shards scheme needs at least num_nodes*shards_per_node={num_shards} examples, got {n}"
        )
    shuffled = rng.permutation(n)
    ordered = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(ordered, num_shards)
    deal = rng.permutation(num_shards).reshape(num_nodes, shards_per_node)
    return [np.concatenate([shards[s] for s in row]) for row in deal]


def node_partition(
    labels: np.ndarray,
    node_index: int,
    num_nodes: int,
    *,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    shards_per_node: int = 2,
    min_size: int = 1,
    holders: Sequence[int] = (),
) -> np.ndarray:
    """Return the indices held by one node; see :func:`partition_indices`.

    Args:
        labels: 1-D integer labels.
        node_index: This node's index, in ``[0, num_nodes)``.
        num_nodes: Number of nodes.
        scheme: Partition scheme.
        seed: Partition seed.
        alpha: Dirichlet concentration.
        shards_per_node: Shards per node.
        min_size: Minimum examples per node.
        holders: The nodes that hold data; empty: all.

    Returns:
        Sorted int64 indices of this node's examples (none if it is not a holder).

    Raises:
        ValueError: If ``node_index`` is out of range or any other argument is invalid.
    """
    num_nodes = _check_int("num_nodes", num_nodes, 1)
    node_index = _check_int("node_index", node_index, 0)
    if node_index >= num_nodes:
        raise ValueError(f"node_index must be < num_nodes={num_nodes}, got {node_index}")
    parts = partition_indices(
        labels,
        num_nodes,
        scheme=scheme,
        seed=seed,
        alpha=alpha,
        shards_per_node=shards_per_node,
        min_size=min_size,
        holders=holders,
    )
    return parts[node_index]
