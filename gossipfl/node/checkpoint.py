"""Atomic files: a checkpoint is never half-written (temp file, fsync, rename)."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def atomic_write_bytes(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename; fsync first if ``durable``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def save_checkpoint(path: str | Path, params: np.ndarray, round_: int, **extra: Any) -> None:
    """Write the flat parameter vector and the round it belongs to, atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, params=np.asarray(params, dtype=np.float32),
             round=np.int64(round_), meta=np.frombuffer(json.dumps(extra).encode(), np.uint8))
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[np.ndarray, int, dict[str, Any]]:
    with np.load(path, allow_pickle=False) as data:
        return (np.array(data["params"]), int(data["round"]),
                json.loads(bytes(data["meta"]).decode() or "{}"))


def save_vector(path: str | Path, vector: np.ndarray, *, durable: bool = True) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue(), durable=durable)
