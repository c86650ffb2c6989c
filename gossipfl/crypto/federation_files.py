"""The federation's files: its key (``federation.key``, mode 0600), public key
(``federation.pub``), name (``federation.name``) and members' ``.cert`` files, created, loaded and
checked; and the file writes admission and revocation share.

Part of admission, which :mod:`gossipfl.crypto.admission` describes (the file layout) and
re-exports: import from there.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from nacl.signing import SigningKey

from gossipfl.crypto.certificates import (
    ED25519_KEY_BYTES,
    MAX_CERT_BYTES,
    MAX_NAME_CHARS,
    AdmissionError,
    MembershipCertificate,
    check_name,
)
from gossipfl.crypto.member_keys import SEED_BYTES

KEY_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
FEDERATION_KEY_FILE = "federation.key"
FEDERATION_PUB_FILE = "federation.pub"
FEDERATION_NAME_FILE = "federation.name"
CERT_SUFFIX = ".cert"


class FederationKeyError(AdmissionError):
    """A federation key file (or its directory) that cannot be used as it is."""


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` exclusively with ``mode`` and write ``data`` durably."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise FederationKeyError(
            "exists", f"{path} already exists; refusing to overwrite"
        ) from None
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def create_federation_key(path: str | os.PathLike[str]) -> SigningKey:
    """Create a fresh federation key in ``path`` (mode 0600, hex seed); refuse an existing file.

    Raises:
        FederationKeyError: reason ``exists`` when ``path`` exists.
    """
    key_path = Path(path)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    signing_key = SigningKey.generate()
    write_new_file(key_path, bytes(signing_key).hex().encode("ascii") + b"\n", KEY_FILE_MODE)
    return signing_key


def load_federation_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load the federation key in ``path``.

    Raises:
        FederationKeyError: reason ``key_file`` when the file is missing, readable by group or
            others, or does not hold a hex 32-byte seed.
    """
    key_path = Path(path)
    try:
        mode = stat.S_IMODE(key_path.stat().st_mode)
    except FileNotFoundError:
        raise FederationKeyError(
            "key_file", f"federation key file {key_path} does not exist"
        ) from None
    if mode & 0o077:
        raise FederationKeyError(
            "key_file",
            f"federation key file {key_path} has mode {mode:o}; it must be readable by its owner "
            f"only (chmod 600 {key_path})",
        )
    try:
        seed = bytes.fromhex(key_path.read_bytes()[:256].decode("ascii").strip())
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise FederationKeyError(
            "key_file", f"federation key file {key_path} does not hold a hex Ed25519 seed"
        ) from None
    if len(seed) != SEED_BYTES:
        raise FederationKeyError(
            "key_file",
            f"federation key file {key_path} holds {len(seed)} bytes, expected {SEED_BYTES}",
        )
    return SigningKey(seed)


def load_or_create_federation_key(path: str | os.PathLike[str]) -> tuple[SigningKey, bool]:
    """Load the federation key in ``path``, or create it; returns the key and whether it was
    created now."""
    try:
        return create_federation_key(path), True
    except FederationKeyError as error:
        if error.reason != "exists":
            raise
    return load_federation_key(path), False


def load_federation_public(path: str | os.PathLike[str]) -> bytes:
    """Load a federation public key file (hex, 32 bytes).

    Raises:
        FederationKeyError: reason ``key_file`` when missing or malformed.
    """
    pub_path = Path(path)
    try:
        text = pub_path.read_bytes()[:256].decode("ascii").strip()
        public = bytes.fromhex(text)
    except FileNotFoundError:
        raise FederationKeyError(
            "key_file", f"federation public key file {pub_path} does not exist"
        ) from None
    except ValueError:
        raise FederationKeyError(
            "key_file", f"federation public key file {pub_path} does not hold hex"
        ) from None
    if len(public) != ED25519_KEY_BYTES:
        raise FederationKeyError(
            "key_file",
            f"federation public key file {pub_path} holds {len(public)} bytes, "
            f"expected {ED25519_KEY_BYTES}",
        )
    return public


def load_federation_name(directory: str | os.PathLike[str]) -> str:
    """The federation name kept in ``directory/federation.name``."""
    name_path = Path(directory) / FEDERATION_NAME_FILE
    try:
        name = name_path.read_bytes()[: 4 * MAX_NAME_CHARS + 2].decode("utf-8").strip("\n")
    except FileNotFoundError:
        raise FederationKeyError(
            "key_file", f"federation name file {name_path} does not exist"
        ) from None
    except ValueError:
        raise FederationKeyError(
            "key_file", f"federation name file {name_path} is not UTF-8"
        ) from None
    try:
        return check_name(name, "federation name", MAX_NAME_CHARS)
    except AdmissionError as error:
        raise FederationKeyError("key_file", f"{name_path}: {error}") from None


def load_certificate(path: str | os.PathLike[str]) -> MembershipCertificate:
    """Read and parse a ``.cert`` file (reads at most :data:`MAX_CERT_BYTES` + 1 bytes)."""
    cert_path = Path(path)
    try:
        with cert_path.open("rb") as handle:
            data = handle.read(MAX_CERT_BYTES + 1)
    except FileNotFoundError:
        raise AdmissionError("malformed", f"certificate file {cert_path} does not exist") from None
    return MembershipCertificate.from_bytes(data)


def write_public_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` (mode 0644) in one step: a reader sees the old or the new."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), PUBLIC_FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
