"""What colluding Byzantine members share (issue 9): a folder every attacker of a scenario can
read and write (``adversary.board``), off the federation's network, standing for whatever
channel real colluders would use.

Each attacker posts the latest estimate it holds of each honest neighbour (``<peer>.npz``:
the vector and its round); another reads those of its target's honest neighbours, which it
does not hear itself. ALIE, IPM and the dissensus attack need them: with an attacker next to
every honest node (ClippedGossip's graph) the colluders together know every honest estimate
as soon as it is sent, which is what an omniscient attacker would know; on another graph they
know those of the honest nodes next to one of them, and say how many they lacked.
Writes are atomic (a temporary file, then a rename), so a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger("gossipfl.adversary")


class Board:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _path(self, peer: str) -> Path:
        if not peer or "/" in peer or peer.startswith("."):
            raise ValueError(f"not a peer id: {peer!r}")
        return self.folder / f"{peer}.npz"

    def post(self, peer: str, round_: int, vector: np.ndarray) -> None:
        """Publish ``peer``'s round-``round_`` estimate (unless a newer one is there)."""
        held = self.read(peer)
        if held is not None and held[0] >= round_:
            return
        path = self._path(peer)
        temporary = path.with_name(f".{peer}.{os.getpid()}.{id(self)}.tmp")
        with open(temporary, "wb") as handle:
            np.savez(handle, vector=np.asarray(vector, np.float32), round=np.int64(round_))
        os.replace(temporary, path)

    def read(self, peer: str) -> tuple[int, np.ndarray] | None:
        """``peer``'s latest posted (round, estimate), or None."""
        try:
            with np.load(self._path(peer)) as data:
                return int(data["round"]), np.asarray(data["vector"], np.float32)
        except (OSError, ValueError, KeyError) as error:
            if not isinstance(error, FileNotFoundError):
                log.debug("board entry of %s unreadable: %s", peer, error)
            return None
