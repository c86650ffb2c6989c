"""The members beyond its neighbours a node heartbeats once links are formed.

They keep membership fresh across the graph (a random shortcut each, so stamps and table
changes need fewer hops than the graph's diameter). Opening a libp2p stream costs both ends
about four times a heartbeat on an open one, and a node used to draw two new members every
cycle, each on a stream of its own: at 32 nodes on 2 cores those opens took more CPU than all
the heartbeats between neighbours. So a node keeps the members it drew for ``EXTRA_TURNS``
cycles, on streams kept open as a neighbour's are, then closes those and draws again; one that
fails, leaves, or becomes a neighbour is replaced at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import trio

    from gossipfl.gossip.peers import Channel

#: members beyond its neighbours a node heartbeats each cycle
HEARTBEAT_EXTRA = 2
#: members a node heartbeats a cycle while it joins (drawn afresh each cycle, one after another
#: across the interval). Membership spreads push-pull: each exchange carries what either end
#: holds, so a member a node knows reaches a new one in a cycle whoever heartbeats whom. 16
#: made joining the busiest part of a run (each a stream of its own, and most a connection of
#: its own: 32 nodes on 2 cores opened about a thousand streams a second). The latest round 0
#: of a one-round copy of quickstart32.toml came 12.1-15.1 s after a process started with 16,
#: 10.7-12.2 s with 4 (alternated runs, see the README); 1.6-2.5 s at 8 nodes either way.
HEARTBEAT_FANOUT = 4
#: cycles a node keeps heartbeating the same ones (on kept-open streams) before it draws again
EXTRA_TURNS = 8


def draw(rng: random.Random, pool: Sequence[str], want: int,
         ok: Callable[[str], bool]) -> list[str]:
    """``want`` distinct members of ``pool`` for which ``ok`` holds, uniformly at random (all
    of them when fewer pass), in the order drawn. Members are tried in a random order and
    ``ok`` asked only of those tried: a cycle's draw from a table of 1,000 members costs a
    handful of checks, not one per member (at 1,000 simulated members, checking every member
    each cycle was a fifth of a py-spy sample of a run's rounds). A pool where most fail is
    scanned once.

    >>> picked = draw(random.Random(0), "abcdef", 2, lambda p: p in "bdf")
    >>> len(picked), set(picked) <= set("bdf")
    (2, True)
    >>> sorted(draw(random.Random(0), "abcdef", 9, lambda p: p != "a"))
    ['b', 'c', 'd', 'e', 'f']
    """
    chosen: list[str] = []
    tried: set[str] = set()
    for _ in range(2 * want + 8):  # a random prefix of a random order of the pool
        if len(chosen) >= want or len(tried) >= len(pool):
            return chosen
        peer = pool[rng.randrange(len(pool))]
        if peer not in tried:
            tried.add(peer)
            if ok(peer):
                chosen.append(peer)
    if len(chosen) < want:  # most fail: the rest of the order, from the members left
        rest = [p for p in pool if p not in tried and ok(p)]
        chosen += rng.sample(rest, min(want - len(chosen), len(rest)))
    return chosen


@dataclass
class Held:
    """Our kept-open request streams to one member (``streams.NeighbourState``'s shape)."""

    streams: dict[str, Channel] = field(default_factory=dict)
    stream_locks: dict[str, trio.Lock] = field(default_factory=dict)


@dataclass
class Extras:
    """The members drawn, the cycles left before the next draw, and our streams to them."""

    chosen: list[str] = field(default_factory=list)
    turns: int = 0
    held: dict[str, Held] = field(default_factory=dict)

    def pick(self, rng: random.Random, pool: Sequence[str], ok: Callable[[str], bool],
             ) -> list[str]:
        """This cycle's members beyond the neighbours: members of ``pool`` for which ``ok``
        holds (no neighbours, and they may be dialled), the last draw's while its turns last
        and all of them still pass ``ok``, else a new :func:`draw` (every cycle while fewer
        than ``HEARTBEAT_EXTRA`` pass: a new member may have come).

        >>> extras, rng = Extras(), random.Random(1)
        >>> first = extras.pick(rng, "abcd", lambda p: True)
        >>> all(extras.pick(rng, "abcd", lambda p: True) == first
        ...     for _ in range(EXTRA_TURNS - 1))
        True
        >>> extras.pick(rng, "abcd", lambda p: True) is not first  # its turns are over
        True
        >>> again = extras.pick(rng, "abcd", lambda p: p != first[0])
        >>> first[0] in again  # one left: drawn again at once
        False
        """
        if (self.turns <= 0 or len(self.chosen) < HEARTBEAT_EXTRA
                or not all(ok(p) for p in self.chosen)):
            self.chosen = draw(rng, pool, HEARTBEAT_EXTRA, ok)
            self.turns = EXTRA_TURNS
        self.turns -= 1
        return self.chosen

    def drop(self, peer: str) -> None:
        """``peer``'s heartbeat failed: draw again next cycle."""
        if peer in self.chosen:
            self.turns = 0

    def holder(self, peer: str) -> Held:
        return self.held.setdefault(peer, Held())

    def released(self) -> list[Held]:
        """The streams held to members no longer chosen (the caller closes them)."""
        gone = [p for p in self.held if p not in self.chosen]
        return [self.held.pop(p) for p in gone]
