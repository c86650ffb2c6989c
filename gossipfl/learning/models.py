"""Small classifiers written in plain JAX (no flax).

A :class:`Model` is a pair of pure functions: ``init(seed) -> params`` and
``apply(params, x) -> logits``. ``x`` is always the 2-D ``(batch, features)``
layout of :class:`gossipfl.learning.data.Dataset`; convolutional models reshape
it internally to ``(batch, *input_shape)``.

Parameter names (dict keys) are ``dense_<i>`` and ``conv_<i>``, each holding
``w`` (weights) and ``b`` (bias), numbered in forward order.

Initialisation: layers followed by a ReLU use He (Kaiming) normal weights; the
final (logit) layer uses Glorot uniform weights; biases start at zero. It is done
with numpy's PCG64 generator from an integer seed: every member of a federation
must start from the same model, numpy's stream is stable across platforms, and it
costs nothing, where compiling JAX's random initialisers costs each node process
about a second of CPU.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from gossipfl.learning.params import Params

MODELS: tuple[str, ...] = ("logreg", "mlp", "cnn")
"""Model names accepted by :func:`build_model`."""

CNN_CHANNELS: tuple[int, int] = (16, 32)
"""Output channels of the two convolutional layers of ``"cnn"``."""

def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    """He (Kaiming) normal: N(0, 2 / fan_in)."""
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def _glorot(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int,
            fan_out: int) -> np.ndarray:
    """Glorot (Xavier) uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


@dataclass(frozen=True)
class Model:
    """A classifier as a pair of pure functions.

    Attributes:
        name: Model name, e.g. ``"mlp"``.
        init: Maps an integer seed to a fresh parameter pytree (numpy float32 leaves).
        apply: Maps ``(params, x)`` with ``x`` of shape ``(batch, features)`` to
            logits of shape ``(batch, num_classes)``.
    """

    name: str
    init: Callable[[int], Params]
    apply: Callable[[Params, jax.Array], jax.Array]
    #: what it was built from (:func:`build_model`'s arguments, as text): the compiled-step
    #: cache's context for its steps (``""``: unknown, so its steps are traced to be found)
    spec: str = ""


def _dense_init(rng: np.random.Generator, fan_in: int, fan_out: int, *, relu: bool) -> Params:
    """One dense layer: ``{"w": (fan_in, fan_out), "b": (fan_out,)}``.

    He init when a ReLU follows, else Glorot.
    """
    shape = (fan_in, fan_out)
    weights = _he(rng, shape, fan_in) if relu else _glorot(rng, shape, fan_in, fan_out)
    return {"w": weights, "b": np.zeros((fan_out,), np.float32)}


def _conv_init(rng: np.random.Generator, kernel: tuple[int, ...], c_in: int, c_out: int) -> Params:
    """One convolution (He init, a ReLU follows): ``w`` in ``HWIO`` / ``WIO`` layout."""
    fan_in = math.prod(kernel) * c_in
    return {
        "w": _he(rng, (*kernel, c_in, c_out), fan_in),
        "b": np.zeros((c_out,), np.float32),
    }


def _check_input(x: jax.Array, num_features: int) -> jax.Array:
    """Validate the (static) input shape and cast to float32.

    Args:
        x: Input batch.
        num_features: Expected feature count.

    Returns:
        ``x`` as float32.

    Raises:
        ValueError: If ``x`` is not ``(batch, num_features)``.
    """
    if x.ndim != 2 or x.shape[1] != num_features:
        raise ValueError(f"expected input of shape (batch, {num_features}), got {x.shape}")
    return jnp.asarray(x, jnp.float32)


def _mlp(name: str, num_features: int, sizes: tuple[int, ...], num_classes: int) -> Model:
    """Build a ReLU MLP with hidden layer ``sizes`` (empty: logistic regression).

    Args:
        name: Model name to record.
        num_features: Input width.
        sizes: Hidden layer widths.
        num_classes: Output width.

    Returns:
        The model.
    """
    widths = (num_features, *sizes, num_classes)
    num_layers = len(widths) - 1

    def init(seed: int) -> Params:
        rng = np.random.default_rng(seed)
        return {
            f"dense_{i}": _dense_init(rng, widths[i], widths[i + 1], relu=i < num_layers - 1)
            for i in range(num_layers)
        }

    def apply(params: Params, x: jax.Array) -> jax.Array:
        h = _check_input(x, num_features)
        for i in range(num_layers):
            layer = params[f"dense_{i}"]
            h = h @ layer["w"] + layer["b"]
            if i < num_layers - 1:
                h = jax.nn.relu(h)
        return h

    return Model(name=name, init=init, apply=apply)


def _cnn(input_shape: tuple[int, ...], num_classes: int) -> Model:
    """Build the small CNN: two SAME-padded ReLU convolutions, flatten, dense.

    ``(h, w, c)`` inputs use 3x3 2-D convolutions; ``(length, c)`` inputs use 1-D
    convolutions with kernel 5. Channels are :data:`CNN_CHANNELS`.

    Args:
        input_shape: ``(h, w, c)`` or ``(length, c)``.
        num_classes: Output width.

    Returns:
        The model.

    Raises:
        ValueError: If ``input_shape`` is neither 2-D nor 3-D.
    """
    if len(input_shape) == 3:
        kernel: tuple[int, ...] = (3, 3)
        dims = ("NHWC", "HWIO", "NHWC")
    elif len(input_shape) == 2:
        kernel = (5,)
        dims = ("NWC", "WIO", "NWC")
    else:
        raise ValueError(f"cnn needs input_shape (h, w, c) or (length, c), got {input_shape}")
    num_features = math.prod(input_shape)
    channels = (input_shape[-1], *CNN_CHANNELS)
    flat = math.prod(input_shape[:-1]) * CNN_CHANNELS[-1]

    def init(seed: int) -> Params:
        rng = np.random.default_rng(seed)
        params: Params = {
            f"conv_{i}": _conv_init(rng, kernel, channels[i], channels[i + 1])
            for i in range(len(CNN_CHANNELS))
        }
        params["dense_0"] = _dense_init(rng, flat, num_classes, relu=False)
        return params

    def apply(params: Params, x: jax.Array) -> jax.Array:
        h = _check_input(x, num_features).reshape((x.shape[0], *input_shape))
        for i in range(len(CNN_CHANNELS)):
            layer = params[f"conv_{i}"]
            h = jax.lax.conv_general_dilated(
                h,
                layer["w"],
                window_strides=(1,) * len(kernel),
                padding="SAME",
                dimension_numbers=dims,
            )
            h = jax.nn.relu(h + layer["b"])
        h = h.reshape((h.shape[0], flat))
        return h @ params["dense_0"]["w"] + params["dense_0"]["b"]

    return Model(name="cnn", init=init, apply=apply)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: tuple[int, ...] = (64, 64),
) -> Model:
    """Build a classifier.

    Args:
        name: ``"logreg"`` (one dense layer), ``"mlp"`` (ReLU layers of widths
            ``hidden``, then a dense output) or ``"cnn"`` (see :func:`_cnn`).
        input_shape: Natural shape of one example (``Dataset.input_shape``).
        num_classes: Number of output logits, ``>= 2``.
        hidden: Hidden widths for ``"mlp"``; ignored by the other models.

    Returns:
        The model. Its ``init`` is deterministic in the seed.

    Raises:
        ValueError: For an unknown name or invalid shapes, class count or widths.
    """
    input_shape = tuple(input_shape)
    if not input_shape or any(
        isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1 for d in input_shape
    ):
        raise ValueError(
            f"input_shape must be a non-empty tuple of positive ints, got {input_shape}"
        )
    input_shape = tuple(int(d) for d in input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    num_features = math.prod(input_shape)
    if name == "logreg":
        model = _mlp("logreg", num_features, (), num_classes)
    elif name == "mlp":
        hidden = tuple(hidden)
        if not hidden or any(
            isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden
        ):
            raise ValueError(f"hidden must be a non-empty tuple of positive ints, got {hidden}")
        model = _mlp("mlp", num_features, hidden, num_classes)
    elif name == "cnn":
        model = _cnn(input_shape, num_classes)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    spec = repr((name, input_shape, num_classes, hidden if name == "mlp" else ()))
    return dataclasses.replace(model, spec=spec)
