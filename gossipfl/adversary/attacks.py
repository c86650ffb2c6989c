"""What a Byzantine member sends (issue 9): pure functions, arrays in, an array out.

Each returns the public estimate x̂ the attacker wants one neighbour (its *target*) to hold; the
node sends it as a full estimate, so the target's copy of the attacker's x̂ becomes exactly it.
The attacks follow He, Karimireddy and Jaggi, "Byzantine-robust decentralized learning via
ClippedGossip" (2022) and the ByzFL attack set:

- :func:`sign_flip`: ``−x`` (bit flipping), from the attacker's own honestly trained model.
- :func:`gaussian`: ``x + N(0, σ²)`` per coordinate.
- :func:`scale`: ``c·x``, a large multiple (what the default norm bound is for).
- :func:`alie` ("a little is enough", Baruch et al. 2019): ``μ − z·s`` with ``μ``, ``s`` the
  coordinate-wise mean and standard deviation of the target's and its honest neighbours'
  estimates: far enough to bias, close enough to pass as an honest outlier.
- :func:`ipm` (inner-product manipulation, Xie et al. 2020): ``−ε·μ``.
- :func:`dissensus`: ``x_t − ε·Σ_j w_tj (x_j − x_t) / Σ_b w_tb`` over the target's honest (j)
  and Byzantine (b) neighbours: the Byzantine weight pushes the target *away* from its honest
  neighbours by ε times their pull, so honest nodes drift apart instead of agreeing.

``label_flip`` (poisoned local data) and ``free_rider`` (its stale estimate) need no vector maths
here: see :mod:`gossipfl.adversary.byzantine`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

#: Each kind's strength when the scenario leaves it at 0: z for ALIE and ε for IPM and the
#: dissensus attack as in ClippedGossip's experiments (ALIE10, IPM 0.1, dissensus1.5); σ for
#: the Gaussian attack (ByzFL's); c for scaling (past the default norm bound of 100×).
DEFAULT_STRENGTH = {"sign_flip": 1.0, "gaussian": 1.0, "scale": 1000.0, "alie": 10.0,
                    "ipm": 0.1, "dissensus": 1.5}


def _stack(target: np.ndarray, honest: Sequence[np.ndarray]) -> np.ndarray:
    vectors = [np.asarray(target, np.float64), *(np.asarray(v, np.float64) for v in honest)]
    shapes = {v.shape for v in vectors}
    if len(shapes) != 1:
        raise ValueError(f"vectors of different shapes: {sorted(shapes)}")
    return np.stack(vectors)


def sign_flip(own: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """``−strength · own``."""
    return (-float(strength) * np.asarray(own, np.float64)).astype(np.float32)


def gaussian(own: np.ndarray, rng: np.random.Generator, sigma: float = 1.0) -> np.ndarray:
    """``own + N(0, σ²)``, each coordinate independent."""
    own = np.asarray(own, np.float64)
    return (own + rng.normal(0.0, float(sigma), own.shape)).astype(np.float32)


def scale(own: np.ndarray, factor: float = 1000.0) -> np.ndarray:
    """``factor · own``."""
    return (float(factor) * np.asarray(own, np.float64)).astype(np.float32)


def alie(target: np.ndarray, honest: Sequence[np.ndarray], z: float = 10.0) -> np.ndarray:
    """``μ − z·s`` over the target's estimate and its honest neighbours' (``s`` the population
    standard deviation, coordinate-wise; one vector alone has ``s = 0``)."""
    stacked = _stack(target, honest)
    return (stacked.mean(axis=0) - float(z) * stacked.std(axis=0)).astype(np.float32)


def ipm(target: np.ndarray, honest: Sequence[np.ndarray], epsilon: float = 0.1) -> np.ndarray:
    """``−ε · μ`` over the target's estimate and its honest neighbours'."""
    return (-float(epsilon) * _stack(target, honest).mean(axis=0)).astype(np.float32)


def dissensus(target: np.ndarray, honest: Mapping[str, np.ndarray],
              weights: Mapping[str, float], byzantine_weight: float,
              epsilon: float = 1.5) -> np.ndarray:
    """``x_t − ε · Σ_j w_tj (x_j − x_t) / W_b``: ``honest`` the target's honest neighbours'
    estimates, ``weights`` its mixing weights for them, ``byzantine_weight`` (``W_b > 0``) the
    total weight it gives its Byzantine neighbours. With every Byzantine neighbour sending this,
    the target's mixing step moves it by ``(1 − ε)`` times its honest neighbours' pull."""
    if byzantine_weight <= 0:
        raise ValueError(f"byzantine_weight must be positive, got {byzantine_weight}")
    base = np.asarray(target, np.float64)
    pull = np.zeros_like(base)
    for peer, vector in honest.items():
        vector = np.asarray(vector, np.float64)
        if vector.shape != base.shape:
            raise ValueError(f"{peer}: shape {vector.shape} != {base.shape}")
        pull += float(weights[peer]) * (vector - base)
    return (base - float(epsilon) * pull / float(byzantine_weight)).astype(np.float32)
