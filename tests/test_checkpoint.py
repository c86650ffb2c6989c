"""Checkpoints: atomic, checksummed, and a corrupt one falls back to the previous one; the public
estimate is stored apart from the private model, under the same checksum."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gossipfl.node.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest_checkpoint,
    previous_path,
    restored_public_estimate,
    save_checkpoint,
)


def test_round_trip_and_previous_kept(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, np.arange(5, dtype=np.float32), 3, status="training")
    save_checkpoint(path, np.arange(5, dtype=np.float32) * 2, 4, status="training")
    state = load_checkpoint(path)
    assert state.round == 4 and state.meta == {"status": "training"}
    np.testing.assert_array_equal(state.model, np.arange(5) * 2)
    assert load_checkpoint(previous_path(path)).round == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz",
                                                          "checkpoint.prev.npz"]


def test_the_public_estimate_is_stored_apart_from_the_model(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    model, public = np.arange(4, dtype=np.float32), np.full(4, -1.5, np.float32)
    save_checkpoint(path, model, 9, public=public, public_round=9, status="stopped",
                    dp_rounds=3)
    state = load_checkpoint(path)
    np.testing.assert_array_equal(state.model, model)
    np.testing.assert_array_equal(state.public, public)
    assert state.public_round == 9 and state.meta == {"status": "stopped", "dp_rounds": 3}
    own = restored_public_estimate(state, np.zeros(4, np.float32))
    np.testing.assert_array_equal(own.vector, public)  # x̂, not the model
    assert own.round == 9 and own.last_delta is None  # its first contribution is full x̂
    with pytest.raises(ValueError, match="public estimate shape"):
        save_checkpoint(path, model, 10, public=np.zeros(3, np.float32))


def test_the_checksum_covers_the_public_estimate(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, np.ones(1000, np.float32), 7, public=np.full(1000, 3.0, np.float32))
    data = bytearray(path.read_bytes())
    index = data.find(np.full(4, 3.0, np.float32).tobytes())  # inside the public array
    data[index + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def _without_public(path: Path) -> None:
    """Drop the public array from a saved checkpoint, leaving everything else as it was."""
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for name, data in members.items():
            if name != "public.npy":
                target.writestr(name, data)
    path.write_bytes(buffer.getvalue())


def test_a_new_checkpoint_stripped_of_its_public_estimate_is_refused(tmp_path: Path) -> None:
    # a format-2 checkpoint without x̂ cannot pass for an old one whose model is all there is
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, np.ones(8, np.float32), 2, public=np.zeros(8, np.float32))
    _without_public(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_an_old_format_checkpoint_loads_with_the_public_estimate_unknown(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, np.full(6, 5.0, np.float32), 4, status="stopped")  # format 1 layout
    with np.load(path) as data:
        assert sorted(data.files) == ["checksum", "meta", "params", "round"]
        assert json.loads(bytes(data["meta"]).decode()) == {"status": "stopped"}
    state = load_checkpoint(path)
    assert state.public is None and state.round == 4
    initial = np.full(6, 0.25, np.float32)
    own = restored_public_estimate(state, initial)
    np.testing.assert_array_equal(own.vector, initial)  # never the (private) model


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
    state = load_latest_checkpoint(path)
    assert state is not None
    assert state.round == 7 and np.all(state.model == 1.0)
    assert "checkpoint" in caplog.text


def test_no_checkpoint_at_all(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path / "checkpoint.npz") is None


def test_keep_previous_replaces_an_older_previous(tmp_path: Path) -> None:
    from gossipfl.node.checkpoint import keep_previous

    path = tmp_path / "checkpoint.npz"
    keep_previous(path)  # nothing there yet: nothing moved
    assert list(tmp_path.iterdir()) == []
    for r in range(3):
        save_checkpoint(path, np.full(3, r, np.float32), r, durable=False)
    assert load_checkpoint(path).round == 2 and load_checkpoint(previous_path(path)).round == 1
    keep_previous(path)  # the older .prev goes, the current one takes its name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.npz"]
    assert load_checkpoint(previous_path(path)).round == 2
