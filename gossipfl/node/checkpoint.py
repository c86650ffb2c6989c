"""Atomic files: a checkpoint is never half-written (temp file, fsync, rename), carries a
checksum, and the one before it is kept, so a corrupt checkpoint falls back to the previous one.

A node's checkpoint holds its private model and, apart from it, its public estimate x̂ (what its
neighbours hold of it), under one checksum, with its DP state: a resume publishes and serves x̂,
never the model, and never forgets the privacy budget spent.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gossipfl.gossip.codes import NodeStatus
from gossipfl.node.estimates import OwnEstimate

log = logging.getLogger("gossipfl.checkpoint")


class Node(Protocol):
    """What a node checkpoint holds of a node (``runtime.Node``), named here so that this
    module needs no import of the runtime."""

    out: Path
    model: np.ndarray
    own: OwnEstimate
    status: NodeStatus
    budget: Any  # PrivacyBudget or RecordBudget, None with DP off
    durable: bool  # fsync the checkpoint (off in a simulation)
    filter_counts: dict[str, tuple[int, int]]  # the distance filter's (left out, seen)

    def make_budget(self, spent: int = 0) -> Any: ...


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


SYNC_SECONDS = 2.0  # at most one fsync'd checkpoint in this many seconds (sync_due)
FORMAT = 2  # 2: the public estimate x̂ is stored apart from the private model; 1: model only


@dataclass(frozen=True)
class Checkpoint:
    """What a node saved: its private model, its public estimate x̂ (what its neighbours hold
    of it), the round, and the rest as JSON (status, DP state).

    ``public`` is None for a checkpoint written before the public estimate was stored apart
    (format 1): x̂ is then unknown, and must never be taken from the model.
    """

    model: np.ndarray
    round: int
    meta: dict[str, Any]
    public: np.ndarray | None = None
    public_round: int = -1


def _checksum(params: np.ndarray, round_: int, meta: bytes,
              public: np.ndarray | None = None) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(params, dtype=np.float32).tobytes())
    digest.update(int(round_).to_bytes(8, "big", signed=True))
    digest.update(meta)
    if public is not None:  # format 1 had none: its checksums still verify
        digest.update(b"public")
        digest.update(np.ascontiguousarray(public, dtype=np.float32).tobytes())
    return digest.hexdigest()


def previous_path(path: str | Path) -> Path:
    target = Path(path)
    return target.with_name(target.stem + ".prev" + target.suffix)


def save_checkpoint(path: str | Path, params: np.ndarray, round_: int, *,
                    public: np.ndarray | None = None, public_round: int = -1,
                    durable: bool = True, **extra: Any) -> None:
    """Write the flat parameter vector, its round and (if given) the public estimate, with one
    checksum over all of them, atomically and (unless ``durable`` is off) durably; the
    checkpoint it replaces is kept as ``<name>.prev.npz``."""
    vector = np.asarray(params, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {}
    if public is not None:
        arrays["public"] = np.asarray(public, dtype=np.float32)
        if arrays["public"].shape != vector.shape:
            raise ValueError(f"public estimate shape {arrays['public'].shape} != model shape "
                             f"{vector.shape}")
        extra = {**extra, "format": FORMAT, "public_round": int(public_round)}
    meta = json.dumps(extra, sort_keys=True).encode()
    checksum = _checksum(vector, round_, meta, arrays.get("public"))
    buffer = io.BytesIO()
    np.savez(buffer, params=vector, round=np.int64(round_),
             meta=np.frombuffer(meta, np.uint8),
             checksum=np.frombuffer(checksum.encode(), np.uint8), **arrays)
    target = Path(path)
    keep_previous(target)
    atomic_write_bytes(target, buffer.getvalue(), durable=durable)


def keep_previous(target: Path) -> None:
    """Move the checkpoint at ``target`` (if any) to its ``.prev`` name, the older one
    removed first: a rename over an existing file makes ext4 write the renamed file's data
    out at once (``auto_da_alloc``), three times the cost of a whole checkpoint here. At every
    instant ``target`` or its ``.prev`` holds a whole checkpoint (the new one is written
    through a temp file and a rename)."""
    if not target.exists():
        return
    previous = previous_path(target)
    previous.unlink(missing_ok=True)
    os.rename(target, previous)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; :class:`CheckpointError` if it is corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            params = np.array(data["params"], dtype=np.float32)
            round_ = int(data["round"])
            meta_bytes = bytes(data["meta"])
            checksum = bytes(data["checksum"]).decode()
            public = (np.array(data["public"], dtype=np.float32) if "public" in data.files
                      else None)
        meta = json.loads(meta_bytes.decode() or "{}")
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from None
    if checksum != _checksum(params, round_, meta_bytes, public):
        raise CheckpointError(f"checkpoint {path} does not match its checksum")
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata is not a map")
    stored = meta.pop("format", 1)
    public_round = meta.pop("public_round", -1)
    if stored != 1 and public is None:
        raise CheckpointError(f"checkpoint {path} (format {stored}) lacks its public estimate")
    if public is not None and public.shape != params.shape:
        raise CheckpointError(f"checkpoint {path}: public estimate and model differ in shape")
    return Checkpoint(params, round_, meta, public,
                      int(public_round) if isinstance(public_round, int) else -1)


def load_latest_checkpoint(path: str | Path) -> Checkpoint | None:
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


# -- what a node saves and restores ------------------------------------------------------------
# Every checkpoint a node writes (each round, the final one, on SIGTERM) goes through
# save_node_checkpoint; a resume restores it in resume.restore through the functions below.


def dp_state(node: Node) -> dict[str, Any]:
    """The DP state every checkpoint carries: what the node has spent, so that no restart (after
    SIGKILL, SIGTERM or the end) ever forgets ε. Empty with DP off."""
    if node.budget is None:
        return {}
    return {"dp_rounds": int(node.budget.spent)}  # rounds (node unit) or DP-SGD steps (record)


LEDGER = "dp_ledger.json"  # written ahead of every round's first send (see save_dp_ledger)


def save_dp_ledger(node: Node) -> None:
    """Write-ahead: the budget spent, fsync'd before anything this round trained on is sent. A
    node killed between its send and its round's checkpoint (SIGKILL) would otherwise resume
    with that spending forgotten. No-op with DP off."""
    if node.budget is not None:
        atomic_write_json(node.out / LEDGER, dp_state(node))


def _ledger_spent(node: Node) -> int | None:
    try:
        spent = json.loads((node.out / LEDGER).read_text()).get("dp_rounds")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"the DP ledger {LEDGER} is unreadable: {error}") from None
    if not isinstance(spent, int) or isinstance(spent, bool) or spent < 0:
        raise CheckpointError(f"the DP ledger's count is not a count: {spent!r}")
    return spent


def restore_dp_state(node: Node, meta: dict[str, Any] | None) -> None:
    """Restore what :func:`dp_state` saved into ``node.budget`` (the larger of the checkpoint's
    count and the write-ahead ledger's; ``meta`` None: no checkpoint, the ledger alone);
    :class:`CheckpointError` if the saved state cannot be used (the node must then not start
    rather than forget ε)."""
    if node.budget is None:
        return
    ledger = _ledger_spent(node)
    if meta is None:
        if ledger is not None:
            node.budget = node.make_budget(spent=ledger)
        return
    spent = meta.get("dp_rounds")
    if spent is None and ledger is not None:
        spent = ledger
    if spent is None:
        log.error("the checkpoint does not say how much privacy budget this node had spent "
                  "(DP was off, or an older version wrote it on stopping): counting from 0, "
                  "which understates ε if DP was on")
        spent = 0
    if not isinstance(spent, int) or isinstance(spent, bool):
        raise CheckpointError(f"the checkpoint's DP state is not a count: {spent!r}")
    try:
        node.budget = node.make_budget(spent=max(spent, ledger or 0))
    except ValueError as error:
        raise CheckpointError(f"the checkpoint's DP state cannot be restored: {error}") from None


MAX_FILTER_COUNTS = 4096
"""The most neighbours' distrust counts a checkpoint keeps (the link cap is far below it)."""


def robust_state(node: Node) -> dict[str, Any]:
    """The distance filter's per-neighbour counts (rounds left out, rounds seen), so that a
    restarted node keeps distrusting a neighbour it had found out (``rule = "filter"``). Empty
    when there are none."""
    counts = sorted(node.filter_counts.items())[:MAX_FILTER_COUNTS]
    return {"filter_counts": {p: [out, seen] for p, (out, seen) in counts}} if counts else {}


def restore_robust_state(node: Node, meta: dict[str, Any]) -> None:
    """Restore :func:`robust_state`; counts that are not sound are logged and skipped (the node
    then judges that neighbour afresh)."""
    saved = meta.get("filter_counts") or {}
    if not isinstance(saved, dict):
        log.error("the checkpoint's filter counts are not a table: not restored")
        return
    for peer, pair in list(saved.items())[:MAX_FILTER_COUNTS]:
        sound = (isinstance(peer, str) and isinstance(pair, list) and len(pair) == 2
                 and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                 and 0 <= pair[0] <= pair[1])
        if not sound:
            log.error("the checkpoint's filter count for %.60r is not sound: not restored", peer)
            continue
        node.filter_counts[peer] = (pair[0], pair[1])


def sync_due(node: Node, now: float) -> bool:
    """Whether this round's checkpoint is fsync'd: at most one in ``SYNC_SECONDS`` (and never
    for a node that is not ``durable``). Every checkpoint is written whole (a temp file and a
    rename), so a killed process loses nothing (the kernel holds the writes); a crash of the
    machine itself may lose what was written since the last fsync'd one (the checksum refuses a
    torn file; see resume.py for what a node does then). The DP ledger is fsync'd every round
    whatever this says (:func:`save_dp_ledger`)."""
    if not node.durable or now - node.synced_at < SYNC_SECONDS:
        return False
    node.synced_at = now
    return True


def save_node_checkpoint(node: Node, path: str | Path, round_: int, *,
                         durable: bool = True) -> None:
    """Checkpoint ``node``: its private model, its public estimate x̂ stored apart (what a resume
    publishes and serves), the round, its status, its DP state (:func:`dp_state`) and its
    distrust of neighbours (:func:`robust_state`); fsync'd if the node and ``durable`` say so."""
    save_checkpoint(path, node.model, round_, public=node.own.vector,
                    public_round=node.own.round, status=node.status,
                    durable=node.durable and durable, **dp_state(node), **robust_state(node))


def restored_public_estimate(checkpoint: Checkpoint, initial: np.ndarray) -> OwnEstimate:
    """The public estimate x̂ to resume with: the one the checkpoint stored.

    A format-1 checkpoint stored only the model, which is private (un-noised with DP on): x̂ is
    then taken as ``initial`` (the initial model every member starts from, so nothing private),
    never the model; the node's next contribution publishes its (DP-protected) delta from it.
    """
    if checkpoint.public is None:
        log.warning("the checkpoint (an older format) does not hold the public estimate: "
                    "starting it from the initial model, never from the private model")
        return OwnEstimate(np.array(initial, dtype=np.float32))
    return OwnEstimate(checkpoint.public.copy(), round=checkpoint.public_round)


def persist_round(node: Node, r: int, sync: bool = True) -> None:
    """Checkpoint (model, public estimate, DP state; fsync'd if ``sync``) and, if kept, the
    round's model for the consensus-distance report."""
    save_node_checkpoint(node, node.out / "checkpoint.npz", r, durable=sync)
    if node.config.keep_round_models:
        save_vector(node.out / "rounds" / f"r{r:05d}.npy", node.model, durable=False)
    if node.config.adversary.keep_public_estimates:  # what adversaries' reconstructions aim at
        save_vector(node.out / "public" / f"r{r:05d}.npy", node.own.vector, durable=False)
