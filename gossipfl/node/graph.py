"""Which graph a node builds over the members it knows, and which links it may hold.

For the generated kinds (``ring``, ``full``, ``regular``) any member may become a neighbour:
late joiners and replacements of departed neighbours are extra links. With ``topology.kind =
"edges"`` the graph is fixed: ``topology.edges`` lists every link (pairs of peer ids), and a node
links with its listed neighbours only, never anyone else (no replacement, no extra link); a
listed neighbour that comes late or comes back is linked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gossipfl.aggregation.topology import Topology, build_topology

if TYPE_CHECKING:
    from gossipfl.node.state import Node

EDGES = "edges"


def topology_over(node: Node, members: Iterable[str]) -> Topology:
    """The node's topology over ``members`` (its own kind, degree, seed and listed edges)."""
    config = node.config.topology
    return build_topology(config.kind, list(dict.fromkeys(members)), degree=config.degree,
                          seed=node.config.seed, edges=config.edges)


def is_fixed(node: Node) -> bool:
    """Whether the node's graph is the listed one (``kind = "edges"``)."""
    return node.config.topology.kind == EDGES


def listed_neighbours(node: Node) -> frozenset[str]:
    """The node's neighbours in the whole listed graph, present or not (empty unless fixed)."""
    me = node.peer_id
    return frozenset(b if a == me else a for a, b in node.config.topology.edges if me in (a, b))


def may_link(node: Node, peer: str) -> bool:
    """Whether a link with ``peer`` is allowed: always, unless the graph is fixed and ``peer``
    is not a listed neighbour."""
    return not is_fixed(node) or peer in listed_neighbours(node)
