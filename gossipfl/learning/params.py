"""Conversions between parameter pytrees and flat or named NumPy arrays.

Parameters are pytrees (nested dicts) of float32 arrays. Leaf order everywhere
is ``jax.tree_util.tree_leaves`` order (dict keys sorted), so a flat vector or a
named list produced on one node is understood by any node that built the same
model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

Params: TypeAlias = dict[str, Any]
"""A model's parameters: a nested dict whose leaves are float32 arrays."""


def param_count(params: Params) -> int:
    """Return the total number of scalars in ``params``.

    Args:
        params: A parameter pytree.

    Returns:
        The sum of the leaves' sizes.
    """
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def flatten_params(params: Params) -> np.ndarray:
    """Concatenate all leaves into one float32 vector.

    Args:
        params: A parameter pytree.

    Returns:
        A new 1-D float32 array of length ``param_count(params)``, leaves in
        ``tree_leaves`` order, each raveled in C order.
    """
    leaves = jax.tree_util.tree_leaves(params)
    if not leaves:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate([np.asarray(leaf, dtype=np.float32).ravel() for leaf in leaves])


def unflatten_params(vector: np.ndarray, like: Params) -> Params:
    """Inverse of :func:`flatten_params`: rebuild a pytree shaped like ``like``.

    Args:
        vector: 1-D array of length ``param_count(like)``.
        like: Template pytree giving structure, shapes and dtypes.

    Returns:
        A new pytree with the structure of ``like`` and numpy array leaves (views of
        ``vector`` where the dtype matches): the jitted steps move them to the device.

    Raises:
        ValueError: If ``vector`` is not 1-D or its length does not match ``like``.
    """
    vector = np.asarray(vector)
    if vector.ndim != 1:
        raise ValueError(f"vector must be 1-D, got shape {vector.shape}")
    leaves, treedef = jax.tree_util.tree_flatten(like)
    expected = sum(int(np.size(leaf)) for leaf in leaves)
    if vector.shape[0] != expected:
        raise ValueError(f"vector has {vector.shape[0]} elements but the template needs {expected}")
    out = []
    offset = 0
    for leaf in leaves:
        shape = np.shape(leaf)
        size = int(np.size(leaf))
        chunk = vector[offset : offset + size].reshape(shape)
        out.append(np.asarray(chunk, dtype=np.asarray(leaf).dtype))
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out)


def _path_name(path: tuple[Any, ...]) -> str:
    """Render a pytree key path as a dotted name such as ``"dense_0.w"``.

    Args:
        path: A key path from ``tree_flatten_with_path``.

    Returns:
        The dotted name.
    """
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        else:
            parts.append(str(key))
    return ".".join(parts)


def named_arrays(params: Params) -> list[tuple[str, np.ndarray]]:
    """List every leaf with a stable dotted name.

    Args:
        params: A parameter pytree.

    Returns:
        ``(name, array)`` pairs in ``tree_leaves`` order; each array is a new
        float32 NumPy copy of the leaf.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    return [(_path_name(path), np.array(leaf, dtype=np.float32)) for path, leaf in flat]


def from_named_arrays(items: Iterable[tuple[str, np.ndarray]], like: Params) -> Params:
    """Rebuild a pytree from named arrays, checking them exactly against ``like``.

    The items may come in any order, but the set of names must equal
    ``like``'s names, and each array must have exactly the template leaf's shape
    and dtype (no casting).

    Args:
        items: ``(name, array)`` pairs, e.g. from :func:`named_arrays`.
        like: Template pytree.

    Returns:
        A pytree with the structure of ``like`` and ``jnp`` array leaves.

    Raises:
        ValueError: Naming the first duplicate, unexpected or missing name, or the
            first leaf whose shape or dtype differs from the template.
    """
    given: dict[str, np.ndarray] = {}
    for name, array in items:
        if name in given:
            raise ValueError(f"duplicate parameter name {name!r}")
        given[name] = array
    flat, treedef = jax.tree_util.tree_flatten_with_path(like)
    expected_names = [_path_name(path) for path, _ in flat]
    expected_set = set(expected_names)
    for name in given:
        if name not in expected_set:
            raise ValueError(f"unexpected parameter name {name!r}")
    out = []
    for name, (_, leaf) in zip(expected_names, flat, strict=True):
        if name not in given:
            raise ValueError(f"missing parameter {name!r}")
        array = given[name]
        if not isinstance(array, np.ndarray | jax.Array):
            raise ValueError(f"parameter {name!r} is a {type(array).__name__}, not an array")
        want_shape, want_dtype = tuple(np.shape(leaf)), np.dtype(jnp.result_type(leaf))
        if tuple(array.shape) != want_shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(array.shape)}, expected {want_shape}"
            )
        if np.dtype(array.dtype) != want_dtype:
            raise ValueError(f"parameter {name!r} has dtype {array.dtype}, expected {want_dtype}")
        out.append(jnp.asarray(array))
    return jax.tree_util.tree_unflatten(treedef, out)
