"""Checkpoints: atomic, checksummed, and a corrupt one falls back to the previous one."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from gossipfl.node.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    save_checkpoint,
)


def test_round_trip_and_previous_kept(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, np.arange(5, dtype=np.float32), 3, status="training")
    save_checkpoint(path, np.arange(5, dtype=np.float32) * 2, 4, status="training")
    params, round_, meta = load_checkpoint(path)
    assert round_ == 4 and meta == {"status": "training"}
    np.testing.assert_array_equal(params, np.arange(5) * 2)
    assert load_checkpoint(previous_path(path))[1] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz",
                                                          "checkpoint.prev.npz"]


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage"])
def test_a_corrupt_checkpoint_is_reported_and_the_previous_one_used(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, np.ones(1000, np.float32), 7)
    save_checkpoint(path, np.full(1000, 2.0, np.float32), 8)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        # flip a byte inside the stored parameters (npz is an uncompressed zip)
        index = data.find(np.full(4, 2.0, np.float32).tobytes())
        data[index + 100] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    caplog.set_level(logging.ERROR)
    params, round_, _ = load_latest_checkpoint(path)
    assert round_ == 7 and np.all(params == 1.0)
    assert "checkpoint" in caplog.text


def test_no_checkpoint_at_all(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "checkpoint.npz") is None
