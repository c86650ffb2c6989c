"""The layout of a flat parameter vector as named tensors, to put it on the wire and take it off."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gossipfl.gossip.wire import Tensor


class LayoutError(ValueError):
    """Tensors that do not match the model's layout (names, shapes or dtypes)."""


@dataclass(frozen=True)
class Layout:
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_named(cls, items: list[tuple[str, np.ndarray]]) -> Layout:
        return cls(tuple(n for n, _ in items), tuple(tuple(a.shape) for _, a in items))

    @property
    def size(self) -> int:
        return sum(math.prod(s) for s in self.shapes)

    def to_tensors(self, vector: np.ndarray, *, copy: bool = True) -> tuple[Tensor, ...]:
        """The named tensors of ``vector``; ``copy=False``: read-only views of its float32
        memory, not copies (:meth:`Tensor.from_array`), for a message encoded at once."""
        if vector.shape != (self.size,):
            raise LayoutError(f"vector of shape {vector.shape} does not fit {self.size} params")
        tensors, offset = [], 0
        flat = np.ascontiguousarray(vector, dtype=np.float32)
        for name, shape in zip(self.names, self.shapes, strict=True):
            count = math.prod(shape)
            tensors.append(Tensor.from_array(name, flat[offset:offset + count].reshape(shape),
                                             copy=copy))
            offset += count
        return tuple(tensors)

    def from_tensors(self, tensors: tuple[Tensor, ...]) -> np.ndarray:
        if len(tensors) != len(self.names):
            raise LayoutError(f"{len(tensors)} tensors, the model has {len(self.names)}")
        for tensor, name, shape in zip(tensors, self.names, self.shapes, strict=True):
            if tensor.name != name:
                raise LayoutError(f"tensor {tensor.name!r} where {name!r} was expected")
            if tensor.shape != shape:
                raise LayoutError(f"tensor {name!r} has shape {tensor.shape}, expected {shape}")
            if tensor.dtype != "float32":
                raise LayoutError(f"tensor {name!r} has dtype {tensor.dtype}, expected float32")
            if len(tensor.data) != math.prod(shape) * 4:
                raise LayoutError(f"tensor {name!r} carries {len(tensor.data)} bytes for shape "
                                  f"{shape}")
        if not tensors:
            return np.zeros(0, np.float32)
        # one copy, out of the frame's bytes (the dtypes are float32, checked above)
        return np.concatenate([t.to_array().reshape(-1) for t in tensors])
