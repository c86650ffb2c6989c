"""Compressed secure aggregation (issue 10): random-k CHOCO deltas under additive masking.

Pure functions; no I/O, no global state. The protocol that uses them is
:mod:`gossipfl.node.secure_sparse` (with :mod:`gossipfl.node.secure_round`).

Random-k with a coordinate set shared by the whole federation for the round composes with the
masks of :mod:`gossipfl.crypto.secagg`: every member draws the same ``k`` coordinates
(:func:`round_coordinates`, from federation and round only, so the set is the same for all the
aggregators a member contributes to and one public estimate x̂ per member still holds), takes its
CHOCO delta ``x½ − x̂`` on those coordinates (:func:`sparse_delta`), and masks the ``k`` weighted
values as a vector of its own (:func:`mask_sparse`): the pair and self seeds are expanded to
``k`` words, so pair masks cancel in the sum over the same ``k`` positions and dropout recovery
rebuilds ``k``-word masks. The aggregator adds the unmasked sum into its running sum
``S_i = Σ_j w_ij x̂_j`` at those coordinates only (:func:`add_at`); every member adds the same
delta to its x̂, so what the round left out stays in ``x½ − x̂`` for later rounds (CHOCO's error
feedback). No index travels: the set is public and derived, a masked value is 4 bytes.

The set is public (anyone can derive it): it says which coordinates move this round, nothing about
their values, which stay masked and quantised as in full rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

from gossipfl.aggregation.compress import Codec, Encoded, kept
from gossipfl.crypto import secagg

_LABEL = "gossipfl/secagg/randk/v1"


def coordinate_seed(federation: str, round_: int) -> int:
    """The 64-bit seed of round ``round_``'s shared coordinate set (federation ‖ round)."""
    if not federation or round_ < 0:
        raise ValueError("federation must be non-empty and round_ >= 0")
    digest = hashlib.sha256(f"{_LABEL}\0{federation}\0{round_}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def round_coordinates(federation: str, round_: int, size: int,
                      ratio: float) -> NDArray[np.uint32]:
    """The ``kept(size, ratio)`` coordinates every member of the federation sends in round
    ``round_``: drawn uniformly without replacement, sorted, the same for everyone who knows the
    federation, the round, the model size and the ratio.

    >>> a = round_coordinates("fed", 3, 1000, 0.1)
    >>> a.size, bool((a == round_coordinates("fed", 3, 1000, 0.1)).all())
    (100, True)
    """
    if size < 1 or not 0 < ratio <= 1:
        raise ValueError(f"size must be >= 1 and ratio in (0, 1], got {size}, {ratio}")
    rng = np.random.default_rng(coordinate_seed(federation, round_))
    return np.sort(rng.choice(size, kept(size, ratio), replace=False)).astype(np.uint32)


def sparse_delta(delta: np.ndarray, indices: NDArray[np.uint32]) -> Encoded:
    """The delta on the shared coordinates, as a sparse :class:`Encoded` (what x̂ adds)."""
    delta = np.asarray(delta, np.float32).reshape(-1)
    return Encoded(Codec.SPARSE, delta.size, delta[indices.astype(np.int64)].astype(np.float32),
                   indices=indices)


def mask_sparse(values: np.ndarray, weight: float, *, clip: float, scale: int, my_id: str,
                self_seed: bytes, pair_seeds: Mapping[str, bytes]) -> NDArray[np.uint32]:
    """Quantise ``weight · values`` (the ``k`` kept coordinates) and mask it with ``k``-word
    self and pair masks (:func:`gossipfl.crypto.secagg.mask_input`)."""
    q = secagg.quantise(weight * np.asarray(values, np.float64), clip, scale)
    return secagg.mask_input(q.reshape(-1), my_id=my_id, self_seed=self_seed,
                             pair_seeds=pair_seeds)


def add_at(running: np.ndarray, indices: NDArray[np.uint32], total: np.ndarray) -> np.ndarray:
    """The running sum with the unmasked ``k``-coordinate sum added at ``indices`` (a copy)."""
    if total.shape != indices.shape:
        raise ValueError(f"{total.size} summed values for {indices.size} coordinates")
    out = np.array(running, np.float32)
    out[indices.astype(np.int64)] += np.asarray(total, np.float32)
    return out


def choco_mix(half_step: np.ndarray, own_estimate: np.ndarray, running: np.ndarray,
              weights: float, gamma: float) -> np.ndarray:
    """CHOCO's consensus step from a masked running sum:
    ``x = x½ + γ (Σ_j w_ij x̂_j − (Σ_j w_ij) x̂_i)`` = ``x½ + γ Σ_j w_ij (x̂_j − x̂_i)``."""
    return (np.asarray(half_step, np.float32)
            + np.float32(gamma) * (running - np.float32(weights) * own_estimate)
            ).astype(np.float32)
