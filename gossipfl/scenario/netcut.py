"""Partitions on real interfaces: a scenario's ``[[partitions]]`` cut and healed at the IP layer
between nodes that each run in their own network namespace (:mod:`gossipfl.scenario.netns`).

On loopback the relays cut (:mod:`gossipfl.scenario.network`); in namespaces every packet
between two nodes crosses the hub's bridge, so a cut is made there and, for a reset cut, in the
nodes' own routing tables. iproute2 only: these kernels have no netem, gact, iptables or nft, but
they have the ``clsact`` qdisc, the ``u32`` classifier and the ``mirred`` action.

* Counting (the whole run): each hub port of a node that a partition separates gets a
  ``clsact`` qdisc and, per address across, an ingress ``u32`` filter at preference
  ``COUNT_PREF`` that mirrors the packet to a sink veth and lets it go on; its counters are what
  crossed (bytes and packets). The sink's peer is up but unbridged and has no address: the
  copies, addressed to another host's MAC, die there.
* Cut of partition k: the same matches at preference ``DROP_PREF + k``, ahead of the counting
  ones, redirect the packets to the sink instead: dropped, counted, never counted as crossing.
  With ``silent = true`` that is all, as the loopback relays' stall: nothing is answered, open
  connections stall, new dials hang in SYN retries, and a connection neither end gave up on
  resumes after the heal. Otherwise (a reset cut, as the relays' cut: open connections reset,
  new ones refused) every node of the partition also gets a ``prohibit`` route (metric
  ``DROP_PREF + k``) to each address across, so a dial fails at once (EACCES), and ``ss -K``
  aborts its TCP connections to them (ECONNABORTED at both ends, each killed in its own
  namespace; the number reset goes in the report).
* Heal of partition k: its filters and routes go. A pair another partition still separates keeps
  that partition's (each partition has its own preference and metric).

The commands go in batches (``tc -batch``, ``ip -batch``: one process per namespace), written
to the run's ``netns/`` folder, so a cut is quick even for a large federation and on record.
The builders are pure; :class:`NetnsNetwork` runs them through the namespace session's runner.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipfl.config import ConfigError, to_dict
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.netns import (
    PREFIX,
    NetnsError,
    NetnsPlan,
    NetnsSession,
    NodeSlot,
    Runner,
    _checked,
    check_rights,
    exec_prefix,
    probe_in,
    run_command,
)
from gossipfl.scenario.network import PartitionSchedule, PartitionState

log = logging.getLogger("gossipfl.runner")

SINK = "sink0"  # in the hub: where dropped packets and the counting copies go
SINK_PEER = "sink1"
COUNT_PREF = 50000  # tc filter preference of the counting filters (after every drop filter)
DROP_PREF = 100  # partition k's drop filters: DROP_PREF + k; its prohibit routes: metric too
ACROSS_KEYS = ("bytes_across", "packets_across")
DROP_KEYS = ("bytes_dropped", "packets_dropped")

#: Filter counters from ``tc -s filter show``: (preference, destination address) -> (bytes,
#: packets); a snapshot of the hub keys them by source node too.
FilterStats = dict[tuple[int, str], tuple[int, int]]
Snapshot = dict[tuple[int, int, str], tuple[int, int]]


@dataclass(frozen=True)
class Batch:
    """Lines for ``tool -n namespace -batch FILE`` (each line: one command without the tool)."""

    tool: str  # "ip" or "tc"
    namespace: str
    lines: tuple[tuple[str, ...], ...]

    def text(self) -> str:
        return "".join(" ".join(line) + "\n" for line in self.lines)

    def command(self, path: str | Path) -> list[str]:
        return [self.tool, "-n", self.namespace, "-batch", str(path)]


def by_source(pairs: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    """``{src: [dst, ...]}``, both sorted."""
    grouped: dict[int, list[int]] = {}
    for src, dst in sorted(pairs):
        grouped.setdefault(src, []).append(dst)
    return grouped


def match_dst(ip: str) -> tuple[str, ...]:
    """A ``u32`` match of IPv4 packets addressed to ``ip``."""
    return ("protocol", "ip", "u32", "match", "ip", "dst", f"{ip}/32")


def drop_pref(index: int) -> int:
    """Partition ``index``'s tc preference and route metric."""
    pref = DROP_PREF + index
    if pref >= COUNT_PREF:
        raise ConfigError(f"namespaces: at most {COUNT_PREF - DROP_PREF} partitions")
    return pref


def setup_batches(plan: NetnsPlan, pairs: Iterable[tuple[int, int]]) -> list[Batch]:
    """The sink veth, then a ``clsact`` qdisc on each source's hub port with one counting filter
    per destination across."""
    sink = Batch("ip", plan.hub, (("link", "add", SINK, "type", "veth", "peer", "name", SINK_PEER),
                                  ("link", "set", SINK_PEER, "up"), ("link", "set", SINK, "up")))
    lines: list[tuple[str, ...]] = []
    for src, dsts in by_source(pairs).items():
        port = plan.nodes[src].hub_iface
        lines.append(("qdisc", "add", "dev", port, "clsact"))
        lines += [("filter", "add", "dev", port, "ingress", "pref", str(COUNT_PREF),
                   *match_dst(plan.nodes[dst].ip),
                   "action", "mirred", "egress", "mirror", "dev", SINK, "continue")
                  for dst in dsts]
    return [sink, Batch("tc", plan.hub, tuple(lines))]


def cut_batches(plan: NetnsPlan, index: int, pairs: Iterable[tuple[int, int]], *,
                silent: bool) -> list[Batch]:
    """Partition ``index``'s cut: drop filters in the hub; unless ``silent``, prohibit routes in
    each source's namespace too."""
    pref = str(drop_pref(index))
    grouped = by_source(pairs)
    hub = tuple(("filter", "add", "dev", plan.nodes[src].hub_iface, "ingress", "pref", pref,
                 *match_dst(plan.nodes[dst].ip), "action", "mirred", "egress", "redirect",
                 "dev", SINK)
                for src, dsts in grouped.items() for dst in dsts)
    return [Batch("tc", plan.hub, hub),
            *([] if silent else route_batches(plan, grouped, "add", pref))]


def route_batches(plan: NetnsPlan, grouped: dict[int, list[int]], verb: str,
                  pref: str) -> list[Batch]:
    """In each source's namespace, ``verb`` ("add" or "del") a ``prohibit`` route to each of
    its destinations across the cut (a reset cut's refused dials)."""
    return [Batch("ip", plan.nodes[src].namespace,
                  tuple(("route", verb, "prohibit", f"{plan.nodes[dst].ip}/32", "metric", pref)
                        for dst in dsts))
            for src, dsts in grouped.items()]


def heal_batches(plan: NetnsPlan, index: int, pairs: Iterable[tuple[int, int]], *,
                 silent: bool) -> list[Batch]:
    """Undo :func:`cut_batches`: the partition's drop filters (by preference) and routes."""
    pref = str(drop_pref(index))
    grouped = by_source(pairs)
    hub = tuple(("filter", "del", "dev", plan.nodes[src].hub_iface, "ingress", "pref", pref)
                for src in grouped)
    return [Batch("tc", plan.hub, hub),
            *([] if silent else route_batches(plan, grouped, "del", pref))]


def kill_commands(plan: NetnsPlan, pairs: Iterable[tuple[int, int]], *,
                  kill: bool = True) -> list[list[str]]:
    """Per source: abort its TCP sockets to every destination across (``ss -K``: one line, no
    header, per socket it closed); with ``kill`` false, list those still established (a kernel
    without ``sock_destroy`` closes none)."""
    commands = []
    for src, dsts in by_source(pairs).items():
        expression: list[str] = []
        for dst in dsts:
            expression += [*(["or"] if expression else []), "dst", plan.nodes[dst].ip]
        what = ["-K"] if kill else ["state", "established"]
        commands.append([*exec_prefix(plan.nodes[src].namespace), "ss", "-t", "-n", "-H", *what,
                         *expression])
    return commands


def stats_command(plan: NetnsPlan, src: int) -> list[str]:
    """The filters (with counters) on node ``src``'s hub port."""
    return ["tc", "-s", "-n", plan.hub, "filter", "show", "dev", plan.nodes[src].hub_iface,
            "ingress"]


_PREF = re.compile(r"^filter .*\bpref (\d+)\b")
_MATCH = re.compile(r"^\s*match ([0-9a-f]{8})/ffffffff at 16\b")
_SENT = re.compile(r"^\s*Sent (\d+) bytes (\d+) pkt\b")


def parse_filter_stats(text: str) -> FilterStats:
    """Counters per (preference, destination) from ``tc -s filter show`` of u32 filters that
    match one destination address each and carry one action."""
    stats: FilterStats = {}
    pref: int | None = None
    dst: str | None = None
    for line in text.splitlines():
        if match := _PREF.match(line):
            pref, dst = int(match.group(1)), None
        elif match := _MATCH.match(line):
            dst = ".".join(str(b) for b in bytes.fromhex(match.group(1)))
        elif (match := _SENT.match(line)) and pref is not None and dst is not None:
            old = stats.get((pref, dst), (0, 0))
            stats[(pref, dst)] = (old[0] + int(match.group(1)), old[1] + int(match.group(2)))
            dst = None
    return stats


def count_lines(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.strip())


def partition_counts(plan: NetnsPlan, snapshot: Snapshot, pairs: Iterable[tuple[int, int]],
                     index: int) -> dict[str, int]:
    """What crossed between the partition's sides and what its cut dropped, summed over its
    pairs, in a hub snapshot."""
    counts = dict.fromkeys((*ACROSS_KEYS, *DROP_KEYS), 0)
    pref = drop_pref(index)
    for src, dst in pairs:
        ip = plan.nodes[dst].ip
        for keys, at in ((ACROSS_KEYS, COUNT_PREF), (DROP_KEYS, pref)):
            sent, packets = snapshot.get((src, at, ip), (0, 0))
            counts[keys[0]] += sent
            counts[keys[1]] += packets
    return counts


def _delta(end: dict[str, int], start: dict[str, int], keys: Iterable[str]) -> dict[str, int]:
    return {k: end[k] - start.get(k, 0) for k in keys}


class NetnsNetwork(PartitionSchedule):
    """A scenario's partitions on real interfaces: built once the namespaces exist, before the
    nodes start; stepped while they run; its section read before the namespaces go."""

    def __init__(self, scenario: ScenarioConfig, session: NetnsSession, folder: Path) -> None:
        super().__init__(scenario)
        self.plan = session.plan
        self.run: Runner = session.run
        self.folder = folder
        self.pairs = set().union(*(state.pairs for state in self.partitions))
        self.resets: dict[int, list[int]] = {}  # partition -> TCP connections its cut aborted,
        # and those still established after (ss -K closes none without sock_destroy)
        self._written = 0

    def build(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for batch in setup_batches(self.plan, self.pairs):
            self._apply(batch, "setup")
        log.info("partitions in namespaces: %d links counted at the hub", len(self.pairs) // 2)

    def _apply(self, batch: Batch, label: str) -> None:
        if not batch.lines:
            return
        name = batch.namespace.removeprefix(self.plan.prefix)
        path = self.folder / f"{self._written:03d}-{label}-{name}.{batch.tool}"
        self._written += 1
        path.write_text(batch.text())
        _checked(self.run, batch.command(path))

    def snapshot(self) -> Snapshot:
        """Every counting and drop filter's counters in the hub, by (source, pref, dst)."""
        snapshot: Snapshot = {}
        for src in sorted({src for src, _ in self.pairs}):
            for (pref, dst), counts in parse_filter_stats(
                    _checked(self.run, stats_command(self.plan, src))).items():
                snapshot[(src, pref, dst)] = counts
        return snapshot

    def _cut(self, index: int, state: PartitionState) -> None:
        silent = state.config.silent
        for batch in cut_batches(self.plan, index, state.pairs, silent=silent):
            self._apply(batch, f"cut{index}")
        if not silent:
            self.resets[index] = [
                sum(count_lines(_checked(self.run, command))
                    for command in kill_commands(self.plan, state.pairs, kill=kill))
                for kill in (True, False)]
            if self.resets[index][1]:
                log.warning("partition %d: ss -K left %d connections across open (a kernel "
                            "without sock_destroy?): they stall until the nodes time them out",
                            index, self.resets[index][1])
        state.stats_at_cut = partition_counts(self.plan, self.snapshot(), state.pairs, index)

    def _heal(self, index: int, state: PartitionState) -> None:
        state.stats_at_heal = partition_counts(self.plan, self.snapshot(), state.pairs, index)
        for batch in heal_batches(self.plan, index, state.pairs, silent=state.config.silent):
            self._apply(batch, f"heal{index}")

    def section(self) -> dict[str, Any]:
        """The ``network`` section of report.json (call while the namespaces exist)."""
        try:
            snapshot: Snapshot | None = self.snapshot()
        except NetnsError as error:
            log.error("partition counters unreadable: %s", error)
            snapshot = None
        partitions = []
        total = dict.fromkeys(ACROSS_KEYS, 0)
        if snapshot is not None:
            for (_src, pref, _dst), (sent, packets) in snapshot.items():
                if pref == COUNT_PREF:
                    total["bytes_across"] += sent
                    total["packets_across"] += packets
        for index, state in enumerate(self.partitions):
            entry: dict[str, Any] = {
                **to_dict(state.config),
                "groups": [list(g) for g in state.config.resolved_groups(self.scenario.nodes)],
                "cut": state.cut, "healed": state.healed,
            }
            end = None if snapshot is None else partition_counts(self.plan, snapshot,
                                                                 state.pairs, index)
            if state.cut is not None:
                entry["before_cut"] = {k: state.stats_at_cut[k] for k in ACROSS_KEYS}
                during_end = state.stats_at_heal or end
                if during_end is not None:
                    entry["while_cut"] = _delta(during_end, state.stats_at_cut,
                                                (*ACROSS_KEYS, *DROP_KEYS))
                    reset, left = self.resets.get(index, (0, 0))
                    entry["while_cut"].update(connections_reset=reset, connections_left=left)
            if state.healed is not None and end is not None:
                entry["after_heal"] = _delta(end, state.stats_at_heal, ACROSS_KEYS)
            partitions.append(entry)
        return {
            "namespaces": True,  # cut at the IP layer (hub filters, routes), not by relays
            "links": [], "routed_links": 0,
            "counted_links": len(self.pairs) // 2,
            "totals": total,
            "partitions": partitions,
            "events": self.events,
            "batches": str(self.folder),
        }


def set_up_cuts(scenario: ScenarioConfig, session: NetnsSession,
                folder: Path) -> NetnsNetwork | None:
    """The scenario's partitions on its namespaces, their counters in place (None without
    partitions; relays, and so ``[[links]]``, stay on loopback)."""
    if not scenario.partitions:
        return None
    network = NetnsNetwork(scenario, session, folder)
    network.build()
    return network


def needs(scenario: ScenarioConfig) -> dict[str, bool]:
    """The tools a namespace scenario needs, as :func:`netns.check_rights` takes them."""
    return {"need_tc": scenario.namespaces.rate_mbit is not None or bool(scenario.partitions),
            "need_ss": any(not p.silent for p in scenario.partitions)}


def probe_commands(name: str) -> list[list[str]]:
    """What a partition needs of the kernel, in a throwaway namespace ``name`` (its own hub, with
    two ports, and its own node)."""
    slots = tuple(NodeSlot(index=i, namespace=name, ip=f"10.0.0.{i + 1}", prefixlen=30,
                           hub_iface=f"n{i}") for i in range(2))
    plan = NetnsPlan(tag="probe", subnet="10.0.0.0/30", rate_mbit=None, nodes=slots)
    commands = [["ip", "netns", "add", name],
                ["ip", "-n", name, "link", "add", "n0", "type", "veth", "peer", "name", "n1"]]
    pairs = {(0, 1)}
    for batch in (*setup_batches(plan, pairs), *cut_batches(plan, 0, pairs, silent=False)):
        commands += [[batch.tool, "-n", name, *line] for line in batch.lines]
    return commands


def probe(run: Runner = run_command, check: Callable[[], None] | None = None) -> str | None:
    """None when this process can cut and count links as a partition does (tried in a namespace
    it then deletes), else why not. ``check``: the rights check (default: root, ip, tc, ss)."""
    return probe_in(f"{PREFIX}-cutprobe-{os.getpid()}", probe_commands,
                    check or (lambda: check_rights(need_tc=True, need_ss=True)), run)


__all__ = ["Batch", "NetnsNetwork", "count_lines", "cut_batches", "heal_batches",
           "kill_commands", "needs", "parse_filter_stats", "partition_counts", "probe",
           "set_up_cuts", "setup_batches", "stats_command"]
