"""Atomic files: a checkpoint is never half-written (temp file, fsync, rename), carries a
checksum, and the one before it is kept, so a corrupt checkpoint falls back to the previous one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("gossipfl.checkpoint")


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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted (unreadable, or its checksum does not match)."""


def _checksum(params: np.ndarray, round_: int, meta: bytes) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(params, dtype=np.float32).tobytes())
    digest.update(int(round_).to_bytes(8, "big", signed=True))
    digest.update(meta)
    return digest.hexdigest()


def previous_path(path: str | Path) -> Path:
    target = Path(path)
    return target.with_name(target.stem + ".prev" + target.suffix)


def save_checkpoint(path: str | Path, params: np.ndarray, round_: int, **extra: Any) -> None:
    """Write the flat parameter vector and its round, with a checksum, atomically and durably;
    the checkpoint it replaces is kept as ``<name>.prev.npz``."""
    vector = np.asarray(params, dtype=np.float32)
    meta = json.dumps(extra, sort_keys=True).encode()
    buffer = io.BytesIO()
    np.savez(buffer, params=vector, round=np.int64(round_),
             meta=np.frombuffer(meta, np.uint8),
             checksum=np.frombuffer(_checksum(vector, round_, meta).encode(), np.uint8))
    target = Path(path)
    if target.exists():
        os.replace(target, previous_path(target))
    atomic_write_bytes(target, buffer.getvalue())


def load_checkpoint(path: str | Path) -> tuple[np.ndarray, int, dict[str, Any]]:
    """Read and verify a checkpoint; :class:`CheckpointError` if it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            params = np.array(data["params"], dtype=np.float32)
            round_ = int(data["round"])
            meta = bytes(data["meta"])
            checksum = bytes(data["checksum"]).decode()
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from None
    if checksum != _checksum(params, round_, meta):
        raise CheckpointError(f"checkpoint {path} does not match its checksum")
    return params, round_, json.loads(meta.decode() or "{}")


def load_latest_checkpoint(path: str | Path) -> tuple[np.ndarray, int, dict[str, Any]] | None:
    """The checkpoint at ``path``, or the previous one if that is corrupt; None if neither.

    A corrupt checkpoint is reported (logged) and skipped, never used.
    """
    for candidate in (Path(path), previous_path(path)):
        if not candidate.exists():
            continue
        try:
            return load_checkpoint(candidate)
        except CheckpointError as error:
            log.error("%s; trying the previous one", error)
    return None


def save_vector(path: str | Path, vector: np.ndarray, *, durable: bool = True) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float32), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue(), durable=durable)
