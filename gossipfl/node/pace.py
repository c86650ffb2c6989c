"""Async mode: how much local work a node does in a round, so that it keeps its neighbours' pace.

With a bounded lead (``protocol.max_lead``) no node trains more than a round or two ahead of a
live neighbour, so a slower node (a slower machine, a busier one) that always trained the
configured epochs would hold every neighbour to its pace: the synchronous protocol's cost, paid
a round later. Instead a node that its neighbours are ahead of trains less: it halves its local
work each round it is behind, and grows it back by a step each round it is level. Like TCP's
congestion window (additive increase, multiplicative decrease), this finds the most work the
node can do at its neighbours' pace without knowing that pace: once they wait for it, their
round times say nothing about how fast they would go. Only a node whose local work is a good
part of its round cuts it: halving a small share of the round cannot make up a round, and a
node that is behind for another reason (timing noise, a busy moment) would give up training for
nothing.

Everything here is pure: it takes what the round code counted and keeps no state.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

__all__ = ["GROWTH", "SHARE", "SLACK", "WINDOW", "local_epochs", "work_share"]

SLACK = 1
"""Rounds the neighbours may be ahead of this node's last round before it is behind: a neighbour
at its pace has often already sent its next round."""

SHARE = 1 / 3
"""A node cuts its work only if local work took more than this share of its recent rounds."""

WINDOW = 3
"""The work share is a median over this node's last rounds (one slow round is noise)."""

GROWTH = 0.25
"""A node level with its neighbours grows its work by this fraction of the configured epochs a
round (a quarter: from the least work back to all of it in four rounds)."""


def local_epochs(previous: float, lag: int, *, held: bool, work_share: float, configured: int,
                 minimum: float, slack: int = SLACK, share: float = SHARE,
                 growth: float = GROWTH) -> float:
    """Epochs of local work for this node's next round.

    Args:
        previous: The work of this node's last training round, in epochs.
        lag: How many rounds the neighbour furthest ahead (of those still training) is ahead of
            this node's last round.
        held: Whether this node's last round waited for a neighbour further behind: then its
            lag is that neighbour's doing, not its own.
        work_share: The share of this node's recent rounds' time that its local work took
            (an emulated slowdown included).
        configured: The configured local epochs: the most work a round does.
        minimum: The least work a round does (capped at ``configured``).
        slack: Rounds of lag that still count as level with the neighbours.
        share: The least ``work_share`` at which a node that is behind cuts its work.
        growth: The step a level node grows its work by, as a fraction of ``configured``.

    Returns:
        ``previous / 2`` if the node is behind (``lag > slack``, not ``held``) by its own work
        (``work_share > share``), else ``previous`` grown by ``growth · configured``; always
        within ``[min(minimum, configured), configured]``. The result never grows with the lag.

    Raises:
        ValueError: If ``configured < 1`` or ``minimum``, ``growth`` or ``previous`` is not
            positive.

    >>> local_epochs(4.0, 2, held=False, work_share=0.5, configured=4, minimum=0.25)  # behind
    2.0
    >>> local_epochs(2.0, 1, held=False, work_share=0.5, configured=4, minimum=0.25)  # level
    3.0
    >>> local_epochs(2.0, 2, held=True, work_share=0.5, configured=4, minimum=0.25)  # held up
    3.0
    >>> local_epochs(4.0, 2, held=False, work_share=0.1, configured=4, minimum=0.25)  # noise
    4.0
    """
    if configured < 1:
        raise ValueError(f"configured epochs must be at least 1, got {configured}")
    for name, value in (("minimum", minimum), ("growth", growth), ("previous", previous)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    full = float(configured)
    floor = min(float(minimum), full)
    behind = lag > slack and not held and work_share > share
    work = previous / 2 if behind else previous + growth * full
    return min(full, max(floor, work))


def work_share(work_seconds: Sequence[float], round_seconds: Sequence[float]) -> float:
    """The median share of its round that a node's local work took, over recent rounds.

    >>> work_share([0.1, 0.3, 0.05], [0.2, 0.4, 0.5])
    0.5
    """
    if len(work_seconds) != len(round_seconds) or not work_seconds:
        raise ValueError("need as many round times as work times, and at least one")
    pairs = zip(work_seconds, round_seconds, strict=True)
    return statistics.median(w / r if r > 0 else 1.0 for w, r in pairs)
