"""A scenario's ``[topology]``: the node's :class:`~gossipfl.config.TopologyConfig`, but with an
explicit graph (``kind = "edges"``) given over node *indices*, which the runner turns into the
nodes' peer ids (:func:`node_topology`) when it writes each node's configuration.

.. code-block:: toml

    [topology]
    kind = "edges"
    edges = [[0, 1], [1, 2], [2, 3], [3, 0], [4, 0], [5, 2]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gossipfl.config import ConfigError, TopologyConfig, check_edges


@dataclass(frozen=True)
class ScenarioTopology:
    """``kind`` and ``degree`` as a node's; ``edges``: for ``kind = "edges"``, the links as
    pairs of node indices (0 … nodes − 1), each link once, in either order."""

    kind: str = "regular"
    degree: int = 4
    edges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        if self.degree < 1:
            raise ConfigError("topology.degree must be at least 1")
        check_edges(self.kind, self.edges)

    def check_nodes(self, nodes: int) -> None:
        """The rules that need the node count: every index names a node, every node has a
        link (a node with none would hold its rounds for want of a neighbour)."""
        if self.kind != "edges":
            return
        for edge in self.edges:
            for end in edge:
                if isinstance(end, bool) or not isinstance(end, int):
                    raise ConfigError(f"topology.edges: {list(edge)}: a scenario names each "
                                      "node by its index (0 to nodes - 1)")
                if not 0 <= end < nodes:
                    raise ConfigError(f"topology.edges: {list(edge)} names node {end}, the "
                                      f"scenario has nodes 0 to {nodes - 1}")
        linked = {end for edge in self.edges for end in edge}
        alone = [n for n in range(nodes) if n not in linked]
        if alone:
            raise ConfigError(f"topology.edges: node(s) {alone} have no link")


def scenario_topology(topology: ScenarioTopology | TopologyConfig) -> ScenarioTopology:
    """A scenario's ``[topology]``, also when code gives it as a node's :class:`TopologyConfig`
    (kind and degree; edges, if any, must then be node indices too, which
    :meth:`ScenarioTopology.check_nodes` checks)."""
    if isinstance(topology, ScenarioTopology):
        return topology
    return ScenarioTopology(kind=topology.kind, degree=topology.degree,
                            edges=topology.edges)  # type: ignore[arg-type]


def node_topology(topology: ScenarioTopology, peer_ids: Sequence[str]) -> TopologyConfig:
    """A node's ``[topology]`` from the scenario's: the same kind and degree, and the listed
    links with each node index replaced by that node's peer id (``peer_ids[index]``)."""
    edges = tuple((peer_ids[a], peer_ids[b]) for a, b in topology.edges)
    return TopologyConfig(kind=topology.kind, degree=topology.degree, edges=edges)
