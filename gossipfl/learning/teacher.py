"""``"teacher"``: a generated classification task with as many examples as a federation needs.

The bundled sets are small (digits: 1,797 examples, one or two a node at 1,000 members), so a
federation of hundreds learns little on them whatever its protocol does. This task is made
here, from its seed, never downloaded: inputs are standard normal in 16 dimensions, and each
label is the class whose logit a fixed random teacher network (one tanh layer of 64, its
weights drawn from the same seed) gives highest. Of twice the examples asked for, the half
whose two highest logits lie furthest apart is kept, so that labels are not decided by
rounding at the class boundaries; offsets on the teacher's logits give every class about its
share first (7-12 % each at seed 0). An MLP learns it from pooled data to about 0.96 (100,000
examples, ``[model] hidden = [64, 64]``, momentum at rate 0.1, batch 128, 120 epochs).

It is a teacher–student task: what it measures is how close a federation comes to pooled
training of the same model, not how a model does on real data.
"""

from __future__ import annotations

import numpy as np

FEATURES = 16
CLASSES = 10
HIDDEN = 64
DEFAULT_SAMPLES = 10_000
TRAIN_FRACTION = 0.8
BALANCE_STEPS = 100
#: the generator's version: a kept copy (:mod:`gossipfl.learning.generated`) is keyed on it, so
#: bump it whenever the arrays :func:`teacher_task` returns for the same arguments change
GENERATOR = 1


def teacher_task(seed: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """``samples`` examples ``(x, y)`` of the task of ``seed``: x float64 ``(samples, 16)``,
    y int32 in ``[0, 10)``; the same arguments give the same arrays.

    >>> x, y = teacher_task(0, 50)
    >>> x.shape, y.shape, int(y.min()) >= 0 and int(y.max()) < CLASSES
    ((50, 16), (50,), True)
    """
    rng = np.random.default_rng([seed, 0x7EAC])
    w1 = rng.standard_normal((FEATURES, HIDDEN)) / np.sqrt(FEATURES)
    w2 = rng.standard_normal((HIDDEN, CLASSES)) / np.sqrt(HIDDEN)
    x = rng.standard_normal((2 * samples, FEATURES))
    logits = np.tanh(x @ w1) @ w2
    for _ in range(BALANCE_STEPS):  # offsets that give every class about its share
        share = np.bincount(logits.argmax(axis=1), minlength=CLASSES) / len(logits)
        logits += 0.1 * (np.log(1.0 / CLASSES) - np.log(share + 1e-3))
    top_two = np.sort(logits, axis=1)[:, -2:]
    margin = top_two[:, 1] - top_two[:, 0]
    kept = np.sort(np.argsort(-margin, kind="stable")[:samples])
    return x[kept], logits[kept].argmax(axis=1).astype(np.int32)


def teacher_split(seed: int, samples: int | None, test_fraction: float = 1 - TRAIN_FRACTION
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The task split in its drawn order, the last ``test_fraction`` held out (at least one
    example each side): ``(x_train, y_train, x_test, y_test)``, the features float32.

    >>> [len(part) for part in teacher_split(0, 1000, 0.05)[1::2]]
    [950, 50]
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    count = DEFAULT_SAMPLES if samples is None else samples
    x, y = teacher_task(seed, count)
    train = min(max(round(count * (1.0 - test_fraction)), 1), count - 1)
    x = x.astype(np.float32)
    return x[:train], y[:train], x[train:], y[train:]


__all__ = ["CLASSES", "DEFAULT_SAMPLES", "FEATURES", "teacher_split", "teacher_task"]
