"""How each link of a ``[[sites]]`` run was made, for ``report.json`` and the terminal table.

Every node writes ``relay.json`` (:meth:`gossipfl.gossip.peers.PeerNet.relay_summary`): per
peer, how many streams rode a ``direct`` and how many a ``relayed`` connection, and (with
``hole_punch``) whether each DCUtR upgrade it started made a direct connection. A link (a pair
of nodes, both ends' counts together) was:

* ``direct``: every stream direct (a site's own hosts on their LAN);
* ``relayed``: every stream through a relay;
* ``hole-punched``: relayed first, then direct after a DCUtR upgrade one end saw succeed;
* ``direct+relayed``: both, without a punch either end saw (e.g. a direct dial after a relay);
* none: no stream at all (the two never exchanged: neither neighbours nor heartbeat partners).

Each end also notes the seconds from its own start to its first stream with the other
(``first_contact`` in relay.json): a link's ``first_contact_seconds`` holds both ends' (node
index → seconds), and each node's entry its own (``first_contact``: peer index → seconds).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.scenario.sites import site_name

if TYPE_CHECKING:
    from gossipfl.scenario.process import NodeProcess
    from gossipfl.scenario.sites import SitesSession


# a misbehaving relay's counts in its relay.json (gossipfl/scenario/relay_misbehave.py)
MISBEHAVIOUR = ("misbehaving_since", "tampered_chunks", "dropped_chunks", "dropped_bytes")


class LinkHow(StrEnum):
    DIRECT = "direct"
    RELAYED = "relayed"
    HOLE_PUNCHED = "hole-punched"
    MIXED = "direct+relayed"


def link_how(direct: int, relayed: int, punched: bool) -> LinkHow | None:
    """A link's kind from the streams over each kind of connection and whether a hole punch
    succeeded (see the module's docstring); None without a stream."""
    if direct and relayed:
        return LinkHow.HOLE_PUNCHED if punched else LinkHow.MIXED
    if direct:
        return LinkHow.DIRECT
    if relayed:
        return LinkHow.RELAYED
    return None


def pair_links(relay_files: Mapping[int, Mapping[str, Any]],
               peer_ids: Sequence[str]) -> dict[tuple[int, int], dict[str, Any]]:
    """(i, j) with i < j → both ends' stream counts, whether a punch succeeded, the kind, and
    each end's time to first contact."""
    index_of = {p: i for i, p in enumerate(peer_ids)}
    found: dict[tuple[int, int], dict[str, Any]] = {}
    for me, data in relay_files.items():
        streams = data.get("link_streams") or {}
        punches = data.get("hole_punch") or {}
        contact = data.get("first_contact") or {}
        for peer in set(streams) | set(punches):
            other = index_of.get(peer)
            if other is None or other == me:
                continue
            entry = found.setdefault((min(me, other), max(me, other)),
                                     {"direct": 0, "relayed": 0, "punched": False,
                                      "first_contact_seconds": {}})
            counts = streams.get(peer) or {}
            entry["direct"] += int(counts.get("direct", 0))
            entry["relayed"] += int(counts.get("relayed", 0))
            entry["punched"] = entry["punched"] or bool(punches.get(peer))
            if peer in contact:
                entry["first_contact_seconds"][str(me)] = float(contact[peer])
    for entry in found.values():
        how = link_how(entry["direct"], entry["relayed"], entry["punched"])
        entry["how"] = how.value if how else None
    return found


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def sites_section(session: SitesSession, nodes: Sequence[NodeProcess],
                  entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``sites`` section of report.json; also writes, into each node's entry, its site,
    address and how each of its links was made (``links``: peer index → kind)."""
    peer_ids = [n.peer_id for n in nodes]
    files = {n.index: _read(n.out / "relay.json") for n in nodes}
    pairs = pair_links(files, peer_ids)
    index_of = {p: i for i, p in enumerate(peer_ids)}
    neighbours = {(min(e["index"], index_of[p]), max(e["index"], index_of[p]))
                  for e in entries for p in e.get("neighbours", []) if p in index_of}
    places = session.places
    for entry in entries:
        place = places[entry["index"]]
        mine = {b if a == entry["index"] else a: link for (a, b), link in pairs.items()
                if entry["index"] in (a, b)}
        relay = files.get(entry["index"], {})
        entry.update({
            "site": place.site_name, "ip": place.ip, "namespace": place.namespace,
            "links": {str(j): link["how"] for j, link in sorted(mine.items())},
            "first_contact": {str(j): seconds for j, link in sorted(mine.items())
                              if (seconds := link["first_contact_seconds"].get(
                                  str(entry["index"]))) is not None},
            "reserved_on": relay.get("reserved_on", []),
            "reachable": relay.get("reachable"),  # as found, with [public] reachable = "auto"
            "dialback": relay.get("dialback", {}),
            "relayed_dials": relay.get("relayed_dials", {}),
            "handshake_failures": relay.get("handshake_failures", {}),
        })
    links = [{"nodes": [a, b], "same_site": places[a].site == places[b].site,
              "neighbours": (a, b) in neighbours, **link} for (a, b), link in sorted(pairs.items())]
    relays = []
    for relay in session.relays:
        state = _read(relay.folder / "relay.json")
        relays.append({"index": relay.place.index, "addr": relay.addr,
                       "namespace": relay.place.namespace, "down": relay.down,
                       "misbehaving": relay.misbehaving,
                       "status": "down" if relay.down else state.get("status"),
                       "relayed_bytes": state.get("relayed_bytes"),
                       "reservations_held": state.get("reservations_held"),
                       "connected_peers": len(state.get("connected_peers", [])),
                       "dialbacks_answered": state.get("dialbacks_answered", {}),
                       **{key: state[key] for key in MISBEHAVIOUR if key in state}})
    return {
        "sites": [{"index": s.index, "name": site_name(session.scenario.sites, s.index),
                   "subnet": s.subnet, "router_wan": s.wan_ip,
                   "nodes": [p.index for p in places if p.site == s.index]}
                  for s in session.plan.sites],
        "relays": relays,
        "relay_events": session.events,
        "hole_punch": session.scenario.public.hole_punch,
        "reachable": session.scenario.public.reachable,
        "drop_unsolicited": session.scenario.public.drop_unsolicited,
        "random_ports": session.scenario.public.random_ports,
        "links": links,
        "neighbour_links": dict(Counter(str(link["how"]) for link in links
                                        if link["neighbours"])),
        "all_links": dict(Counter(str(link["how"]) for link in links)),
    }


def add_to(report: dict[str, Any], session: SitesSession, nodes: Sequence[NodeProcess]) -> None:
    report["sites"] = sites_section(session, nodes, report["nodes"])


def contact_span(entry: Mapping[str, Any], neighbours: Mapping[str, list[str]]) -> str:
    """A node's times to first contact with its neighbours, ``first-last`` (seconds)."""
    wanted = {j for peers in neighbours.values() for j in peers}
    times = [t for j, t in (entry.get("first_contact") or {}).items() if j in wanted]
    return f"{min(times):.2f}-{max(times):.2f}" if times else "-"


def print_links(report: dict[str, Any]) -> None:
    """The terminal table: per node, its site and how each neighbour link was made; then the
    relays."""
    from rich.console import Console
    from rich.table import Table

    section = report["sites"]
    by_node: dict[int, dict[str, list[str]]] = {}
    for link in section["links"]:
        if not link["neighbours"]:
            continue
        a, b = link["nodes"]
        how = str(link["how"])
        by_node.setdefault(a, {}).setdefault(how, []).append(str(b))
        by_node.setdefault(b, {}).setdefault(how, []).append(str(a))
    kinds = [k.value for k in LinkHow]
    table = Table(title="links to neighbours, by how they were made")
    for column in ("node", "site", "address", *kinds, "first contact, s"):
        table.add_column(column, justify="right")
    for entry in report["nodes"]:
        mine = by_node.get(entry["index"], {})
        table.add_row(str(entry["index"]), entry.get("site", "-"), entry.get("ip", "-"),
                      *(" ".join(sorted(mine.get(k, []), key=int)) or "-" for k in kinds),
                      contact_span(entry, mine))
    console = Console()
    console.print(table)
    relays = Table(title="relays")
    for column in ("relay", "address", "status", "reservations", "relayed MB"):
        relays.add_column(column, justify="right")
    for relay in section["relays"]:
        down = relay["down"] or relay.get("misbehaving")
        status = (f"{down['kind']} at round {down['max_round']}" if down
                  else str(relay["status"]))
        sent = relay["relayed_bytes"]
        relays.add_row(str(relay["index"]), relay["addr"].split("/p2p/")[0], status,
                       str(relay["reservations_held"]),
                       "-" if sent is None else f"{sent / 1e6:.2f}")
    console.print(relays)
    console.print(f"neighbour links: {section['neighbour_links']}   all links: "
                  f"{section['all_links']}")


__all__ = ["LinkHow", "add_to", "contact_span", "link_how", "pair_links", "print_links",
           "sites_section"]
