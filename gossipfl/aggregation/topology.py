"""Deterministic communication topologies over a federation's member ids.

Every node that knows the same member set (and seed) computes the same graph, with no
coordination: members are sorted first, and all randomness comes from
``np.random.default_rng`` seeded with ``seed`` together with a BLAKE2b digest of the sorted
member ids, so different federations get different graphs from the same seed. Python's
``hash()`` is never used (it is salted per process).

A topology is a ``dict`` from member id to the ``frozenset`` of its neighbours' ids. It is
symmetric, has no self-links and has every member as a key.

Besides the generated kinds, ``"edges"`` is a graph given explicitly: a list of pairs of member
ids, of which only those between members present count.

A ``"regular"`` graph is the best of ``REGULAR_CANDIDATES`` seeded draws: the smallest
:func:`diameter`, then the fewest :func:`closed_walks` (a count that falls with the second
largest eigenvalue of the mixing matrix, which sets how fast gossip averaging agrees). Random
regular graphs differ, and a poor draw costs consensus rounds: see
``tests/test_topology_choice.py`` for the spread. Both are counted in integers, so every
machine picks the same draw.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterable, Sequence
from itertools import pairwise

import numpy as np

__all__ = [
    "GENERATED_KINDS",
    "KINDS",
    "REGULAR_CANDIDATES",
    "REGULAR_MAX_ATTEMPTS",
    "Topology",
    "build_topology",
    "closed_walks",
    "diameter",
]

Topology = dict[str, frozenset[str]]

GENERATED_KINDS: tuple[str, ...] = ("ring", "full", "regular")
"""Kinds whose graph :func:`build_topology` draws itself (connected, from the member set)."""

KINDS: tuple[str, ...] = (*GENERATED_KINDS, "edges")
"""Topology kinds understood by :func:`build_topology` (``"edges"``: a graph given)."""

REGULAR_MAX_ATTEMPTS: int = 100
"""Random pairings tried for a ``"regular"`` topology before the circulant fallback."""

REGULAR_CANDIDATES: int = 8
"""Random regular graphs drawn for one ``"regular"`` topology, of which the best is kept (one
draw only over more than ``CANDIDATE_MEMBERS`` members)."""

CANDIDATE_MEMBERS: int = 128
"""Members up to which several regular graphs are drawn: ranking one costs about
``n² · degree · diameter`` steps, and every node draws its federation's graph."""

_BFS_ROWS = 256  # sources walked at once by diameter (bounds its memory to rows · n · d)

_Edge = tuple[int, int]


def _check_members(members: Sequence[str]) -> list[str]:
    """Return the member ids sorted, after checking they are unique strings."""
    for member in members:
        if not isinstance(member, str):
            raise TypeError(f"member ids must be strings, got {type(member).__name__}")
    ordered = sorted(members)
    duplicates = sorted({a for a, b in pairwise(ordered) if a == b})
    if duplicates:
        raise ValueError(f"member ids must be unique, duplicated: {duplicates}")
    return ordered


def _check_int(value: int, name: str, minimum: int) -> int:
    """Return ``value`` as an ``int`` of at least ``minimum`` or raise naming the broken rule."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _rng(seed: int, ordered: Sequence[str]) -> np.random.Generator:
    """Generator seeded by ``seed`` and a BLAKE2b digest of the sorted member ids."""
    return np.random.default_rng([seed, _digest(ordered)])


def _digest(ordered: Sequence[str]) -> int:
    """A BLAKE2b digest of the sorted member ids, as an integer."""
    digest = hashlib.blake2b(digest_size=16, person=b"gossipfl-topo")
    for member in ordered:
        encoded = member.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    return int.from_bytes(digest.digest(), "big")


def _edges_to_topology(ordered: Sequence[str], edges: Iterable[_Edge]) -> Topology:
    """Turn index pairs over ``ordered`` into a symmetric topology."""
    neighbours: list[set[str]] = [set() for _ in ordered]
    for i, j in edges:
        neighbours[i].add(ordered[j])
        neighbours[j].add(ordered[i])
    return {member: frozenset(peers) for member, peers in zip(ordered, neighbours, strict=True)}


def _connected_edges(n: int, edges: Iterable[_Edge]) -> bool:
    """Whether the graph on nodes ``0..n-1`` with these edges is connected."""
    adjacency: list[list[int]] = [[] for _ in range(n)]
    for i, j in edges:
        adjacency[i].append(j)
        adjacency[j].append(i)
    seen = {0}
    stack = [0]
    while stack:
        for j in adjacency[stack.pop()]:
            if j not in seen:
                seen.add(j)
                stack.append(j)
    return len(seen) == n


def _ring_edges(rng: np.random.Generator, n: int) -> set[_Edge]:
    """A Hamiltonian cycle through a seeded permutation (one link for two nodes)."""
    order = rng.permutation(n).tolist()
    if n < 2:
        return set()
    return {_edge(order[k], order[(k + 1) % n]) for k in range(n)}


def _edge(i: int, j: int) -> _Edge:
    return (i, j) if i < j else (j, i)


def _random_pairing(rng: np.random.Generator, stubs_per_node: Sequence[int]) -> set[_Edge] | None:
    """One attempt at a simple graph with the given degrees by random stub pairing.

    Pairing in the style of Steger & Wormald (1999): stubs are shuffled and paired; pairs that
    would be a self-loop or a repeated edge go back into the pool, which is reshuffled until it
    is empty. Returns ``None`` when no valid pair is left (or the bounded number of rounds runs
    out) so that the caller can retry.
    """
    edges: set[_Edge] = set()
    pool = np.repeat(np.arange(len(stubs_per_node)), stubs_per_node)
    for _ in range(4 * len(pool) + 16):
        if len(pool) == 0:
            return edges
        shuffled = rng.permutation(pool).tolist()
        leftover: list[int] = []
        for u, v in zip(shuffled[0::2], shuffled[1::2], strict=True):
            if u == v or _edge(u, v) in edges:
                leftover += [u, v]
            else:
                edges.add(_edge(u, v))
        remaining = sorted(set(leftover))
        if not any(
            _edge(u, v) not in edges for a, u in enumerate(remaining) for v in remaining[a + 1 :]
        ):
            return edges if not leftover else None
        pool = np.array(sorted(leftover), dtype=np.int64)
    return None


def _circulant_edges(rng: np.random.Generator, n: int, degree: int) -> set[_Edge]:
    """Connected graph of max degree ``degree`` (``2 <= degree < n - 1``) over a permutation.

    Node ``k`` of a seeded permutation is linked to nodes ``k ± 1, …, k ± ⌊d/2⌋``. For odd
    ``d`` a matching across the cycle adds one more link per node (all but one node when ``n``
    is odd), so the result is ``d``-regular whenever ``n * d`` is even.
    """
    order = rng.permutation(n).tolist()
    edges = {
        _edge(order[k], order[(k + s) % n]) for k in range(n) for s in range(1, degree // 2 + 1)
    }
    if degree % 2 == 1:
        half = n // 2
        edges |= {_edge(order[k], order[k + half]) for k in range(half)}
    return edges


def _regular_edges(rng: np.random.Generator, n: int, degree: int) -> set[_Edge]:
    """Random connected ``degree``-regular graph (one node one short if ``n * degree`` is odd)."""
    stubs = [degree] * n
    if (n * degree) % 2 == 1:
        stubs[int(rng.integers(n))] -= 1
    for _ in range(REGULAR_MAX_ATTEMPTS):
        edges = _random_pairing(rng, stubs)
        if edges is not None and _connected_edges(n, edges):
            return edges
    return _circulant_edges(rng, n, degree)


def _adjacency_rows(n: int, edges: Iterable[_Edge]) -> np.ndarray:
    """Each node's neighbours as a row of an ``(n, width)`` table, padded with the node itself."""
    rows: list[list[int]] = [[i] for i in range(n)]
    for i, j in edges:
        rows[i].append(j)
        rows[j].append(i)
    width = max((len(row) for row in rows), default=1)
    return np.array([row + [row[0]] * (width - len(row)) for row in rows], dtype=np.intp)


def diameter(n: int, edges: Iterable[_Edge]) -> int:
    """The most hops between two of the nodes ``0..n-1`` of the graph with ``edges`` (``n``
    for a disconnected graph, so that it ranks after every connected one). Breadth-first
    from every node at once.

    >>> diameter(4, [(0, 1), (1, 2), (2, 3)]), diameter(4, [(0, 1), (1, 2), (2, 3), (3, 0)])
    (3, 2)
    >>> diameter(3, [(0, 1)])
    3
    """
    table = _adjacency_rows(n, edges)
    longest = 0
    for start in range(0, n, _BFS_ROWS):
        sources = np.arange(start, min(n, start + _BFS_ROWS))
        reached = np.zeros((len(sources), n), dtype=bool)
        reached[np.arange(len(sources)), sources] = True
        frontier, hops = reached, 0
        while (grown := frontier[:, table].any(axis=2) & ~reached).any():
            hops += 1
            reached = reached | grown
            frontier = grown
        if not reached.all():
            return n
        longest = max(longest, hops)
    return longest


def closed_walks(n: int, edges: Iterable[_Edge], degree: int) -> int:
    """The closed walks of ``L`` steps in the graph with a loop at every node: the trace of
    ``(A + I)^L``, that is ``Σ (λᵢ + 1)^L`` over the adjacency eigenvalues, ``L`` the largest
    even length up to 16 whose count fits in 62 bits. For a ``degree``-regular graph the
    mixing matrix is ``(A + I) / (degree + 1)`` and its largest eigenvalue is fixed, so the
    fewer such walks, the smaller the others, above all the second largest, which sets how
    fast gossip averaging agrees. Exact integers: every machine counts the same.

    >>> closed_walks(4, [(0, 1), (1, 2), (2, 3), (3, 0)], 2)  # eigenvalues of A + I: 3, 1, 1, -1
    43046724
    """
    length = 16
    while length > 2 and n * (degree + 1) ** length >= 2 ** 62:
        length -= 2
    loops = np.eye(n, dtype=np.int64)
    table = _adjacency_rows(n, edges)
    for i, row in enumerate(table):
        loops[i, row] = 1
    return int(np.trace(np.linalg.matrix_power(loops, length)))


@functools.lru_cache(maxsize=8)
def _best_regular_edges(seed: int, key: int, n: int, degree: int) -> frozenset[_Edge]:
    """The draw (of ``REGULAR_CANDIDATES``, from the generator of ``seed`` and ``key``, the
    digest of the members) with the smallest diameter, then the fewest
    :func:`closed_walks`; the first of equals. Kept for the next node of a simulation: every
    node of one federation draws the same graph."""
    rng = np.random.default_rng([seed, key])
    draws = REGULAR_CANDIDATES if n <= CANDIDATE_MEMBERS else 1
    candidates = [_regular_edges(rng, n, degree) for _ in range(draws)]
    if len(candidates) > 1:
        spans = [diameter(n, edges) for edges in candidates]
        shortest = [e for e, span in zip(candidates, spans, strict=True) if span == min(spans)]
        walks = [closed_walks(n, edges, degree) for edges in shortest]
        candidates = [shortest[walks.index(min(walks))]]
    return frozenset(candidates[0])


def _given_edges(ordered: Sequence[str], edges: Iterable[Collection[str]]) -> set[_Edge]:
    """The listed pairs of member ids between members of ``ordered``, as index pairs."""
    position = {member: k for k, member in enumerate(ordered)}
    kept: set[_Edge] = set()
    for edge in edges:
        pair = tuple(edge)
        if len(pair) != 2 or not all(isinstance(m, str) for m in pair):
            raise TypeError(f"an edge must be a pair of member ids, got {edge!r}")
        a, b = pair
        if a == b:
            raise ValueError(f"an edge must join two members, not {a!r} to itself")
        if a in position and b in position:
            kept.add(_edge(position[a], position[b]))
    return kept


def build_topology(
    kind: str, members: Sequence[str], *, degree: int = 4, seed: int = 0,
    edges: Iterable[Collection[str]] = (),
) -> Topology:
    """Build a deterministic, symmetric communication graph over ``members``.

    Kinds:

    * ``"ring"``: each member linked to its predecessor and successor in a seeded random
      permutation of the sorted ids (a single link for two members, none for one).
    * ``"full"``: the complete graph.
    * ``"regular"``: a random connected ``degree``-regular graph, drawn by seeded random stub
      pairing that rejects self-loops, repeated edges and disconnected results, retried up to
      ``REGULAR_MAX_ATTEMPTS`` times before falling back to a connected circulant graph (which
      is also ``degree``-regular); the best of ``REGULAR_CANDIDATES`` such draws (up to
      ``CANDIDATE_MEMBERS`` members): the smallest :func:`diameter`, then the fewest
      :func:`closed_walks`. If ``n * degree`` is odd, one member gets ``degree − 1``
      links. If ``degree >= n − 1`` the complete graph is returned.
    * ``"edges"``: the graph ``edges`` lists (pairs of member ids, either order), restricted
      to the pairs whose two ends are both in ``members``. A member none of whose listed
      neighbours is present has no neighbour; the graph need not be connected.

    ``degree`` is only used by ``"regular"``, ``edges`` only (and always) by ``"edges"``. The
    result depends only on ``kind``, the *set* of members, ``degree``, ``seed`` and the *set*
    of edges, never on the order of ``members``.

    Args:
        kind: One of ``KINDS``.
        members: Unique member ids.
        degree: Target degree for ``"regular"``, at least 1.
        seed: Non-negative seed; different seeds give different random graphs.
        edges: For ``"edges"``: the links, as pairs of member ids (ids of non-members are
            allowed and ignored); must be empty for the other kinds.

    Returns:
        ``{member: frozenset(neighbours)}``, symmetric, without self-links, every member a key,
        and (but for ``"edges"``) connected whenever there are at least two members.

    Raises:
        TypeError: If a member id is not a string, ``degree``/``seed`` not an integer, or an
            edge not a pair of strings.
        ValueError: If ``kind`` is unknown, member ids repeat, ``degree < 1``, ``seed < 0``,
            a ``"regular"`` graph of degree 1 is asked for over more than two members (it
            cannot be connected), an edge joins a member to itself, or ``edges`` are given
            with another kind than ``"edges"``.

    Example:
        >>> topology = build_topology("ring", ["c", "a", "b"])
        >>> sorted(topology["a"])
        ['b', 'c']
        >>> build_topology("edges", ["a", "b", "c"], edges=[("a", "b"), ("b", "z")])["b"]
        frozenset({'a'})
    """
    if kind not in KINDS:
        raise ValueError(f"unknown topology kind {kind!r}, expected one of {list(KINDS)}")
    ordered = _check_members(members)
    d = _check_int(degree, "degree", 1)
    s = _check_int(seed, "seed", 0)
    n = len(ordered)
    edges = tuple(edges)
    if kind == "edges":
        return _edges_to_topology(ordered, _given_edges(ordered, edges))
    if edges:
        raise ValueError(f"edges are given only with the kind 'edges', not {kind!r}")
    if kind == "regular" and 1 < d < n - 1:
        return _edges_to_topology(ordered, _best_regular_edges(s, _digest(ordered), n, d))
    rng = _rng(s, ordered)

    if kind == "ring":
        return _edges_to_topology(ordered, _ring_edges(rng, n))
    if kind == "full" or d >= n - 1:
        return _edges_to_topology(ordered, ((i, j) for i in range(n) for j in range(i + 1, n)))
    if d == 1:
        raise ValueError(
            f"a 'regular' topology of degree 1 over {n} members cannot be connected; "
            "degree must be at least 2 when there are more than two members"
        )
    raise AssertionError("unreachable")  # pragma: no cover
