"""Tests for gossipfl.crypto.identity: the node's Ed25519 key file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gossipfl.crypto.identity import (
    KEY_FILE_MODE,
    Identity,
    IdentityError,
    load_or_create_identity,
)

# A fixed seed, for files written by hand.
SEED_HEX = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write_key(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_first_call_creates_0600_file_second_call_loads_it(tmp_path: Path) -> None:
    key = tmp_path / "sub" / "dir" / "node.key"  # missing parents are created
    identity, created = load_or_create_identity(key)
    assert created is True
    assert isinstance(identity, Identity)
    assert key.is_file()
    assert _mode(key) == KEY_FILE_MODE == 0o600
    text = key.read_text()
    assert text.endswith("\n")
    assert len(bytes.fromhex(text.strip())) == 32

    again, created_again = load_or_create_identity(str(key))  # str paths work too
    assert created_again is False
    assert again.peer_id == identity.peer_id
    assert again.key_pair.public_key.to_bytes() == identity.key_pair.public_key.to_bytes()
    assert key.read_text() == text  # loading does not rewrite the file


def test_different_files_give_different_peers(tmp_path: Path) -> None:
    a, _ = load_or_create_identity(tmp_path / "a.key")
    b, _ = load_or_create_identity(tmp_path / "b.key")
    assert a.peer_id != b.peer_id


def test_same_seed_gives_same_peer_id(tmp_path: Path) -> None:
    a, created_a = load_or_create_identity(_write_key(tmp_path / "a.key", SEED_HEX + "\n"))
    b, created_b = load_or_create_identity(_write_key(tmp_path / "b.key", f"  {SEED_HEX}  "))
    assert (created_a, created_b) == (False, False)
    assert a.peer_id == b.peer_id
    assert str(a.peer_id).startswith("12D3KooW")  # an Ed25519 libp2p peer id


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o707], ids=oct)
def test_key_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = _write_key(tmp_path / "node.key", SEED_HEX, mode)
    with pytest.raises(IdentityError, match=rf"has mode {mode:o}.*chmod 600"):
        load_or_create_identity(key)


def test_created_key_made_world_readable_is_then_refused(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    load_or_create_identity(key)
    key.chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_identity(key)
    key.chmod(0o400)  # owner read-only is fine
    _, created = load_or_create_identity(key)
    assert created is False


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("not hex at all", "does not hold a hex Ed25519 seed"),
        (SEED_HEX[:-1], "does not hold a hex Ed25519 seed"),  # odd number of digits
        ("", "holds 0 bytes, expected 32"),
        ("\n", "holds 0 bytes, expected 32"),
        (SEED_HEX[:62], "holds 31 bytes, expected 32"),
        (SEED_HEX + "00", "holds 33 bytes, expected 32"),
        (SEED_HEX * 2, "holds 64 bytes, expected 32"),
    ],
    ids=["not-hex", "odd-digits", "empty", "newline", "31-bytes", "33-bytes", "64-bytes"],
)
def test_garbage_or_wrong_length_is_refused(tmp_path: Path, text: str, rule: str) -> None:
    key = _write_key(tmp_path / "node.key", text)
    with pytest.raises(IdentityError, match=rule):
        load_or_create_identity(key)
    assert key.read_text() == text  # a bad file is never overwritten


def test_binary_garbage_is_refused_with_identity_error(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    key.write_bytes(b"\xff\xfe" * 32)  # not UTF-8 (nor ASCII)
    key.chmod(0o600)
    with pytest.raises(IdentityError, match=r"node\.key"):
        load_or_create_identity(key)


def test_seed_never_appears_in_repr(tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key)
    seed_hex = key.read_text().strip()
    seed = bytes.fromhex(seed_hex)
    private = identity.key_pair.private_key.to_bytes()
    for text in (repr(identity), str(identity), f"{identity!r}", repr([identity])):
        assert seed_hex not in text.lower()
        assert repr(seed) not in text
        assert private.hex() not in text.lower()
        assert str(identity.peer_id) in text
    assert repr(identity) == f"Identity(peer_id={identity.peer_id})"


def test_seed_from_hand_written_file_not_in_repr(tmp_path: Path) -> None:
    identity, _ = load_or_create_identity(_write_key(tmp_path / "node.key", SEED_HEX))
    assert SEED_HEX not in repr(identity).lower()
    assert SEED_HEX[:16] not in repr(identity).lower()
