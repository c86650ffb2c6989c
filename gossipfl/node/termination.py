"""When a node may go on, hold, or finish: the rules that keep a federation from ending apart.

Two rules, both pure (the round code in :mod:`gossipfl.node.round` applies them):

* **No node advances alone.** A node with fewer live neighbours than it needs does not train
  or average on its own: it holds its round, re-linking, until a neighbour is back
  (:func:`hold_decision`); one with some neighbours, but fewer than it needs, is paced a
  heartbeat a round while it awaits a missing one. Only ``protocol.allow_alone`` lets it train
  alone, and only a wait of ``protocol.gone_seconds`` makes it give up and finish without its
  neighbours (or, with some, go on at its own pace without the missing ones), which the report
  then lists as gone for good.

* **Termination is federation-wide.** Consensus used to be judged locally: a node ended when it
  and its neighbours agreed, so each half of a partition, or a node left with no neighbour at
  all, could finish with a model of its own. Now a node is *settled* when it agrees within the
  tolerance with every neighbour it wants (its topology's, and the ones it took on since), all
  of them linked and reporting the same; one it wants that is missing keeps it unsettled until
  the neighbour is back or gone for good (:func:`locally_settled`). Each contribution carries
  the sender's *settled depth* ``u``: 0 when it is not settled, else one more than the least
  depth its neighbours reported (:func:`settled_depth`). By induction a depth ``u`` says that
  every member within ``u`` hops of the topology has been settled in the last ``u`` rounds: a
  settled node has all its wanted neighbours, so the ball is the topology's, not whatever links
  happen to be up. A node finishes once its depth reaches the *horizon*, the topology's diameter
  plus one (:func:`horizon`): then every member is settled, and since the topology is connected
  and each of its links agrees within the tolerance, the federation holds one model (any two
  members within diameter × tolerance of each other, relative).

  Each half of a partition keeps the members next to the cut unsettled (their wanted
  neighbours across it are missing), so no depth on either side reaches the horizon until the
  cut heals and the halves agree. A node that awaits a missing wanted neighbour says so with
  its contributions (``waiting`` = 1), and a node next to one that says ``k`` says ``k + 1``,
  up to the horizon (:func:`waiting_hops`: a distance, so that once the member is back the
  news stops echoing between neighbours within a horizon of rounds): the rounds of a waiting
  node are paced a heartbeat apart and do not count toward the consensus round limit, for at
  most twice ``gone_seconds`` in a row (by then the missing member is back or gone for good),
  so a long cut does not use up the limit on either side.

**A done node lingers and reopens.** After it announces done a node keeps serving for
``protocol.linger_seconds`` (:func:`linger_time`: the whole of it when members it knew were
absent at its finish, a moment otherwise), re-linking its wanted neighbours and answering with
its final estimate. If a wanted neighbour that was missing when it finished comes back, or one
it saw done sends a round again (it reopened), with an estimate further from its model than the
consensus tolerance, it reopens (:func:`reopen_decision`): consensus rounds again, from the
later of its own rounds and the sender's (:func:`reopen_round`), until settled, at most
``protocol.max_reopen`` times. So the halves of a partition that outlasted ``gone_seconds``
come back together if it heals while they linger.

Who this stops and who it does not: a crash, a pause, a partition, a node that loses its links.
A member that lies about its depth can make its neighbours' depths larger by one hop at most,
and only while they agree with it within the tolerance (their own disagreement is measured, not
reported); one that reports 0 forever holds the nodes within a horizon of it to the consensus
round limit, after which they finish and say so; one that says it waits forever frees its
neighbours' rounds from the limit for twice ``gone_seconds``, no longer; one that announces a
larger horizon raises its neighbours' (a horizon spreads, as a late joiner's must) up to the
member count at most, which delays the end by that many rounds or to the round limit. A wanted
neighbour silent for ``gone_seconds`` is finished without, and the report names it: a partition
longer than that still ends in two models, and the report says which members each node finished
without.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.wire import MAX_DEPTH

__all__ = ["MAX_DEPTH", "Hold", "PeerSettle", "Reopen", "SettleState", "back_from_gone",
           "hold_decision", "horizon", "linger_time", "locally_settled", "reopen_decision",
           "reopen_round", "settled_depth", "waiting_for", "waiting_hops"]

LINGER_WHOLE_INTERVALS = 2
"""A node that finished with every member it knew present lingers this many heartbeat
intervals at most: its neighbours hear it is done, and their last frames are answered."""

EXACT_MEMBERS = 256
"""Up to this many members the horizon uses the exact diameter (one search per member)."""


class Hold(enum.Enum):
    """What a node with too few live neighbours does at the start of a round."""

    GO = "go"  # enough live neighbours: run the round
    PACE = "pace"  # some, fewer than it needs, awaiting one: run it a heartbeat after the last
    HOLD = "hold"  # none: keep the round; re-link and wait
    ALONE = "alone"  # allow_alone: run the round without neighbours (logged each round)
    GIVE_UP = "give up"  # held for gone_seconds: the missing neighbours are gone for good


@dataclass(frozen=True)
class PeerSettle:
    """What a neighbour last said of its own convergence (with its contribution)."""

    disagreement: float  # its relative distance to its neighbours after its previous round
    done: bool  # it has finished (its depth reached its horizon, or it gave up)
    depth: int  # its settled depth
    horizon: int  # the horizon it counts to
    waiting: int = 0  # 0, or 1 + hops to a member that awaits a missing wanted neighbour


def hold_decision(live: int, needed: int, *, awaited: int, allow_alone: bool, held_for: float,
                  gone_seconds: float) -> Hold:
    """Whether a node with ``live`` linked neighbours runs its round.

    ``needed`` is how many it must have to go at its own pace (``protocol.min_neighbours``,
    at most its degree); ``awaited`` how many of its wanted neighbours are missing but not yet
    gone for good (:func:`waiting_for`); ``held_for`` how long it has held this round so far.
    A node with some neighbours but fewer than that is paced (a round a heartbeat, so that a
    few members cut off with it cannot race through the training on their own data alone)
    while it awaits a missing one; once every missing one is gone for good (``gone_seconds``,
    and no member took its place) it goes on at its own pace with those it has. One with none
    holds, and gives up after ``gone_seconds``.

    >>> hold_decision(2, 1, awaited=0, allow_alone=False, held_for=0.0, gone_seconds=60.0)
    <Hold.GO: 'go'>
    >>> hold_decision(1, 2, awaited=1, allow_alone=False, held_for=0.0, gone_seconds=60.0)
    <Hold.PACE: 'pace'>
    >>> hold_decision(1, 2, awaited=0, allow_alone=False, held_for=0.0, gone_seconds=60.0)
    <Hold.GO: 'go'>
    >>> hold_decision(0, 1, awaited=1, allow_alone=False, held_for=5.0, gone_seconds=60.0)
    <Hold.HOLD: 'hold'>
    >>> hold_decision(0, 1, awaited=1, allow_alone=True, held_for=0.0, gone_seconds=60.0)
    <Hold.ALONE: 'alone'>
    >>> hold_decision(0, 1, awaited=0, allow_alone=False, held_for=60.5, gone_seconds=60.0)
    <Hold.GIVE_UP: 'give up'>
    """
    if live >= needed:
        return Hold.GO
    if live > 0:
        return Hold.PACE if awaited > 0 else Hold.GO
    if allow_alone:
        return Hold.ALONE
    if held_for > gone_seconds:
        return Hold.GIVE_UP
    return Hold.HOLD


def waiting_for(wanted: Iterable[str], linked: Iterable[str],
                missing_since: Mapping[str, float], now: float,
                gone_seconds: float) -> tuple[list[str], list[str]]:
    """The wanted neighbours that are not linked, split into (still awaited, gone for good).

    A wanted neighbour is gone for good once it has been unlinked for more than
    ``gone_seconds`` (``missing_since``: when each was last seen unlinked first; one not in it
    has just gone missing).

    >>> waiting_for(["a", "b", "c"], ["a"], {"b": 0.0, "c": 50.0}, 70.0, 60.0)
    (['c'], ['b'])
    """
    linked_set = set(linked)
    awaited, gone = [], []
    for peer in sorted(set(wanted) - linked_set):
        since = missing_since.get(peer, now)
        (gone if now - since > gone_seconds else awaited).append(peer)
    return awaited, gone


def back_from_gone(gone: Iterable[str], linked: Iterable[str], alive: Mapping[str, bool],
                   revivals: Mapping[str, int], cap: int) -> list[str]:
    """The neighbours taken for gone for good that are to be awaited again: not linked, shown
    alive since (``alive``: a newer liveness stamp or a direct heartbeat after it was taken
    for gone, or, at a reopening, known to the membership again), and brought back fewer
    than ``cap`` times before (so a member that keeps proving itself alive but never links
    holds a node ``cap`` times ``gone_seconds`` at most).

    >>> back_from_gone(["a", "b", "c", "d"], ["d"], {"a": True, "b": False, "c": True},
    ...                {"c": 3}, 3)
    ['a']
    """
    linked_set = set(linked)
    return [p for p in gone if p not in linked_set and alive.get(p, False)
            and revivals.get(p, 0) < cap]


def locally_settled(disagreement: float, reports: Mapping[str, PeerSettle | None],
                    awaited: Iterable[str], tolerance: float) -> bool:
    """Whether this node is settled: it agrees with each linked neighbour within
    ``tolerance``, each of them reports the same of itself (or is done), none holds back a
    report (None: nothing heard from it yet), and no wanted neighbour is ``awaited``.

    >>> ok = PeerSettle(1e-6, False, 0, 3)
    >>> locally_settled(1e-6, {"a": ok}, [], 1e-4)
    True
    >>> locally_settled(1e-6, {"a": ok}, ["b"], 1e-4)  # b is wanted and missing
    False
    >>> locally_settled(0.0, {}, [], 1e-4)  # alone, with nobody awaited: nothing to agree with
    True
    """
    if any(True for _ in awaited):
        return False
    if not disagreement <= tolerance:  # also NaN
        return False
    for report in reports.values():
        if report is None:
            return False
        if not report.done and not report.disagreement <= tolerance:
            return False
    return True


def waiting_hops(awaiting: bool, reported: Iterable[int], own_horizon: int) -> int:
    """What a node says of waiting: 1 if it awaits a missing wanted neighbour itself, else one
    more than the least non-zero figure its neighbours said, if that stays within the horizon;
    else 0 (not waiting). As a distance it cannot echo: once no member awaits anything, the
    figures count up past the horizon and vanish within a horizon of rounds.

    >>> waiting_hops(True, [0, 3], 4)
    1
    >>> waiting_hops(False, [0, 2, 3], 4)
    3
    >>> waiting_hops(False, [4], 4)  # a fifth hop is past the horizon: an echo, not news
    0
    >>> waiting_hops(False, [0, 0], 4)
    0
    """
    if awaiting:
        return 1
    hops = [k for k in reported if k > 0]
    if not hops or min(hops) + 1 > own_horizon:
        return 0
    return min(hops) + 1


def settled_depth(settled: bool, reports: Iterable[PeerSettle], own_horizon: int) -> int:
    """This node's settled depth: 0 if it is not settled, else one more than the least depth its
    neighbours reported (a finished neighbour counts as its own horizon: it saw the whole
    federation settled). With no neighbour reporting, the depth is the horizon: nothing near
    it is unsettled (a node alone only gets here once its missing neighbours are gone for good).

    >>> r = lambda depth, done=False: PeerSettle(0.0, done, depth, 4)
    >>> settled_depth(True, [r(2), r(5)], 4)
    3
    >>> settled_depth(True, [r(0, done=True)], 4)  # a done neighbour counts as its horizon
    5
    >>> settled_depth(False, [r(9)], 4)
    0
    """
    if not settled:
        return 0
    depths = [max(p.depth, p.horizon) if p.done else p.depth for p in reports]
    if not depths:
        return min(MAX_DEPTH, own_horizon)
    return min(MAX_DEPTH, 1 + min(depths))


def horizon(topology: Mapping[str, Iterable[str]], source: str | None = None) -> int:
    """The depth a node must reach to finish: the topology's diameter plus one (hops, over the
    undirected graph of ``topology``: member → its neighbours). A graph that is not connected
    has no diameter: the horizon is then the member count, which every path fits in. Above
    ``EXACT_MEMBERS`` members the diameter is bounded from ``source``'s eccentricity e (the
    diameter is at most 2e), one breadth-first search instead of one per member.

    >>> horizon({"a": ["b"], "b": ["a", "c"], "c": ["b"]})  # a path of 3: diameter 2
    3
    >>> horizon({"a": [], "b": []})  # not connected
    2
    """
    graph: dict[str, set[str]] = {}
    for member, neighbours in topology.items():
        graph.setdefault(member, set())
        for other in neighbours:
            graph[member].add(other)
            graph.setdefault(other, set()).add(member)
    if not graph:
        return 1
    if len(graph) > EXACT_MEMBERS and source in graph:
        reach = _eccentricity(graph, source)
        return min(MAX_DEPTH, len(graph) if reach is None else 2 * reach + 1)
    diameter = 0
    for start in graph:
        reach = _eccentricity(graph, start)
        if reach is None:
            return min(MAX_DEPTH, len(graph))
        diameter = max(diameter, reach)
    return min(MAX_DEPTH, diameter + 1)


def _eccentricity(graph: Mapping[str, set[str]], start: str) -> int | None:
    """The most hops from ``start`` to any member; None if some member cannot be reached."""
    distance = {start: 0}
    frontier = [start]
    while frontier:
        nxt = []
        for member in frontier:
            for other in graph[member]:
                if other not in distance:
                    distance[other] = distance[member] + 1
                    nxt.append(other)
        frontier = nxt
    return None if len(distance) < len(graph) else max(distance.values())


class Reopen(enum.Enum):
    """What a lingering done node does with a contribution from a neighbour."""

    STAY = "stay"  # nothing new (a neighbour there at its finish), or it agrees: stay done
    REOPEN = "reopen"  # a member came back with another model: consensus rounds again
    SPENT = "spent"  # it would reopen, but protocol.max_reopen reopenings are spent


def linger_time(linger_seconds: float, absent: int, heartbeat_interval: float) -> float:
    """How long a done node keeps serving after it announced done: ``linger_seconds`` when
    ``absent`` members it knew were missing at its finish (one may come back with another
    model: a healed partition), else at most ``LINGER_WHOLE_INTERVALS`` heartbeat intervals
    (the federation was whole: nobody to wait for). 0 turns lingering off.

    >>> linger_time(10.0, 1, 0.5)
    10.0
    >>> linger_time(10.0, 0, 0.5)
    1.0
    >>> linger_time(0.0, 3, 0.5)
    0.0
    """
    if absent > 0:
        return linger_seconds
    return min(linger_seconds, LINGER_WHOLE_INTERVALS * heartbeat_interval)


def linger_over(*, whole: bool, statuses: list[NodeStatus | None], told_cycle: bool,
                owed: bool) -> bool:
    """Whether a lingering node may stop before its linger time: only when the federation was
    whole at its finish (nobody absent who might come back with another model), every member
    it knows has said it is done (``statuses``: each one's last heartbeat status, None if
    never heard), a heartbeat cycle that carries this node's own done is answered
    (``told_cycle``: the members heard it, so none waits for it), and no neighbour is owed the
    final estimate. Then nobody is left for it to answer.

    >>> done = NodeStatus.DONE
    >>> linger_over(whole=True, statuses=[done, done], told_cycle=True, owed=False)
    True
    >>> linger_over(whole=True, statuses=[done, NodeStatus.CONSENSUS], told_cycle=True,
    ...             owed=False)
    False
    >>> linger_over(whole=False, statuses=[done], told_cycle=True, owed=False)
    False
    >>> linger_over(whole=True, statuses=[done, None], told_cycle=True, owed=False)
    False
    >>> linger_over(whole=True, statuses=[done], told_cycle=False, owed=False)
    False
    """
    return (whole and told_cycle and not owed
            and all(status is NodeStatus.DONE for status in statuses))


def reopen_decision(*, wanted: bool, missing_at_finish: bool, seen_done: bool, done_now: bool,
                    distance: float, tolerance: float, reopened: int,
                    max_reopen: int) -> Reopen:
    """Whether a lingering done node reopens on a contribution from a neighbour.

    It does when the sender is a neighbour it wants that *came back*: it was missing when
    this node finished (a healed partition, a member back from a pause), or this node saw it
    done and it now sends a round that is not (it reopened itself), and its estimate is further
    than ``tolerance`` from this node's model (``distance``: the relative distance of the
    consensus check). A neighbour that was linked at the finish and is finishing itself is not
    news, whatever it sends. At most ``max_reopen`` reopenings (then SPENT).

    >>> common = dict(wanted=True, seen_done=False, done_now=True, tolerance=1e-4,
    ...               reopened=0, max_reopen=3)
    >>> reopen_decision(missing_at_finish=True, distance=3e-2, **common)
    <Reopen.REOPEN: 'reopen'>
    >>> reopen_decision(missing_at_finish=True, distance=5e-5, **common)  # it agrees
    <Reopen.STAY: 'stay'>
    >>> reopen_decision(missing_at_finish=False, distance=3e-2, **common)  # there all along
    <Reopen.STAY: 'stay'>
    >>> reopen_decision(**{**common, "seen_done": True, "done_now": False,
    ...                    "reopened": 3}, missing_at_finish=False, distance=3e-2)
    <Reopen.SPENT: 'spent'>
    """
    came_back = missing_at_finish or (seen_done and not done_now)
    if not wanted or not came_back or not distance > tolerance:  # NaN: nothing to agree on
        return Reopen.STAY
    if reopened >= max_reopen:
        return Reopen.SPENT
    return Reopen.REOPEN


def reopen_round(own_round: int, peer_round: int) -> int:
    """The first round of a reopened node: after its own last one (its done announcement),
    and no earlier than the round of the member that reopened it, so that the two keep step
    (rounds go on numbering; a member far behind is not caught up by a state pull instead).

    >>> reopen_round(41, 4)
    42
    >>> reopen_round(4, 41)
    41
    """
    return max(own_round + 1, peer_round)


@dataclass
class SettleState:
    """A node's termination bookkeeping."""

    depth: int = 0  # its settled depth, sent with each contribution
    horizon: int = 1  # the depth it finishes at (topology diameter + 1, grown by extra links)
    members: int = 1  # how many members it knows of: no horizon is larger
    missing_since: dict[str, float] = field(default_factory=dict)  # wanted, not linked: since
    gone: list[str] = field(default_factory=list)  # wanted neighbours finished without
    gone_at: dict[str, float] = field(default_factory=dict)  # when each was taken for gone
    revivals: dict[str, int] = field(default_factory=dict)  # times each was awaited again
    awaited: list[str] = field(default_factory=list)  # wanted and missing, last judged
    held_seconds: float = 0.0  # time spent holding rounds for want of a live neighbour
    holds: int = 0  # rounds held for want of a live neighbour
    paced: int = 0  # rounds paced for want of enough live neighbours
    waiting: int = 0  # 0, or 1 + hops to a member awaiting a missing wanted neighbour
    waiting_since: float | None = None  # since when, without a break
    waiting_rounds: int = 0  # consensus rounds spent waiting so (free of the round limit)
    lingering: bool = False  # done, and still serving (linger.py)
    done_beat: int = 0  # the first heartbeat cycle that tells the members this node is done
    lingered_seconds: float = 0.0  # time spent lingering, all lingers together
    reopened: int = 0  # times it reopened after done
    reopens: list[dict[str, Any]] = field(default_factory=list)  # each: who, round, distance
    reopened_at: int = 0  # the first round of the last reopening: the round limit counts on
