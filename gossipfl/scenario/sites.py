"""``[[sites]]`` scenarios: the nodes at private sites behind real NAT routers, relays on a
public segment (:mod:`gossipfl.scenario.sites_config` describes the options).

What ``gossipfl run`` does for such a scenario:

1. refuses at once without root, ``ip`` or ``iptables`` (:func:`check_rights`);
2. builds a NAT lab (:func:`gossipfl.scenario.natlab.nat_lab`, named after the run folder so a
   crashed run's leftovers are removed first): site I's LAN 10.66.I.0/24 behind router rI
   (MASQUERADE, nothing unsolicited let in), host K of site I at 10.66.I.(2+K) listening on port
   ``NODE_PORT + K`` (two hosts of a site never need the same source port on the router's public
   address), relay K on public host 198.18.0.(1+K) port ``RELAY_PORT``;
3. starts each relay (:mod:`gossipfl.scenario.relay_node`, not a member) in its namespace and
   waits until it serves;
4. writes each node's configuration: ``[relay] reachable = "private"`` (reserve on every relay,
   announce the relayed addresses), ``announce_listen`` (its LAN address too, so a site's own
   hosts link directly), ``hole_punch`` as ``[public]`` says, and a bootstrap list of the nodes
   before it: a node of its own site at its LAN address, any other through relay 0;
5. starts the nodes in their namespaces (``ip netns exec`` or ``setns`` in the launcher's
   children), applies ``[[public.faults]]`` as the rounds or seconds come (:meth:`step`), and
   however the run ends stops the relays and deletes every namespace (with them every link,
   route, NAT rule and sysctl: nothing is made in the runner's own namespace).

The plan (who sits where, which address, which command) is pure; :class:`SitesSession` runs it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gossipfl.config import ConfigError, dump_toml, to_dict
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.circuit import circuit_addr
from gossipfl.relay_config import Reachability, RelayConfig
from gossipfl.scenario import natlab
from gossipfl.scenario.netns import (
    Runner,
    _signals_held,
    _terminate_raises,
    exec_prefix,
    run_command,
    run_tag,
)
from gossipfl.scenario.sites_config import PublicConfig, RelayFaultKind, SiteConfig, site_of

if TYPE_CHECKING:
    from gossipfl.scenario.config import ScenarioConfig
    from gossipfl.scenario.process import NodeProcess

log = logging.getLogger("gossipfl.runner")

NODE_PORT = 4001  # host K of a site listens on NODE_PORT + K
RELAY_PORT = 4001
BOOTSTRAP_SEEDS = 8  # as the runner's: the nodes before it, at most this many
RELAY_READY_SECONDS = 30.0
RELAY_STOP_SECONDS = 5.0
RELAY_CHECK_SECONDS = 2.0  # a private node re-reserves on a lost relay this often


@dataclass(frozen=True)
class NodePlace:
    """Where a node sits: its site, its host there, its namespace and address."""

    index: int
    site: int
    site_name: str
    host: int  # its number on the site's LAN
    namespace: str
    ip: str
    port: int

    @property
    def listen(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}"


@dataclass(frozen=True)
class RelayPlace:
    """Where a relay runs: its public host's namespace and address."""

    index: int
    namespace: str
    ip: str
    port: int = RELAY_PORT

    @property
    def listen(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}"


# -- the plan (pure) -------------------------------------------------------------------------------

def lab_plan(sites: Sequence[SiteConfig], public: PublicConfig, tag: str) -> natlab.NatPlan:
    """The NAT lab of a sites scenario: one router per site, a host per node, a public host per
    relay."""
    return natlab.make_plan(len(sites), tag, drop_unsolicited=public.drop_unsolicited,
                            hosts=[s.nodes for s in sites], publics=public.relays,
                            random_ports=public.random_ports)


def site_name(sites: Sequence[SiteConfig], index: int) -> str:
    return sites[index].name or f"site{index}"


def node_places(sites: Sequence[SiteConfig], plan: natlab.NatPlan) -> list[NodePlace]:
    """Node i's place: the sites in order, each site's hosts in order."""
    return [NodePlace(index=i, site=s, site_name=site_name(sites, s), host=k,
                      namespace=plan.sites[s].hosts[k], ip=plan.sites[s].host_ips[k],
                      port=NODE_PORT + k)
            for i, (s, k) in enumerate(site_of(sites))]


def relay_places(plan: natlab.NatPlan) -> list[RelayPlace]:
    return [RelayPlace(index=k, namespace=ns, ip=ip)
            for k, (ns, ip) in enumerate(zip(plan.public_hosts, plan.public_ips, strict=True))]


def relay_addr(place: RelayPlace, peer_id: str) -> str:
    return f"{place.listen}/p2p/{peer_id}"


def node_relay_config(public: PublicConfig, relays: Sequence[str]) -> RelayConfig:
    """A site node's ``[relay]``: private (or finding out, ``[public] reachable = "auto"``),
    reserving on every relay, announcing its LAN address too, hole punching as ``[public]``
    says."""
    return RelayConfig(reachable=Reachability(public.reachable), use=tuple(relays),
                       hole_punch=public.hole_punch, announce_listen=True,
                       check_seconds=RELAY_CHECK_SECONDS)


def bootstrap_list(index: int, places: Sequence[NodePlace], peer_ids: Sequence[str],
                   first_relay: str) -> tuple[str, ...]:
    """Node ``index``'s bootstrap list: the nodes before it (at most ``BOOTSTRAP_SEEDS``), one of
    its own site at its LAN address, any other through the first relay."""
    me = places[index]
    found = []
    for other in places[:index][:BOOTSTRAP_SEEDS]:
        peer = peer_ids[other.index]
        found.append(f"{other.listen}/p2p/{peer}" if other.site == me.site
                     else circuit_addr(first_relay, peer))
    return tuple(found)


def relay_command(place: RelayPlace, key: Path, out: Path, circuit_bytes: int,
                  seconds: float, misbehave: RelayFaultKind | None = None) -> list[str]:
    """The command that runs relay ``place`` in its namespace (``misbehave``: a tamper or drop
    fault is planned for it: it relays faithfully until SIGUSR1)."""
    return [*exec_prefix(place.namespace), sys.executable, "-m", "gossipfl.scenario.relay_node",
            "--key", str(key), "--listen", place.listen, "--out", str(out),
            "--circuit-bytes", str(circuit_bytes), "--seconds", str(seconds),
            *(["--misbehave", misbehave.value] if misbehave is not None else [])]


def misbehaving_relays(public: PublicConfig) -> dict[int, RelayFaultKind]:
    """Relay index → the tamper or drop fault planned for it."""
    return {f.relay: f.kind for f in public.faults if f.kind.misbehaves}


def check_rights(which: Callable[[str], str | None] | None = None,
                 status_text: Callable[[], str] | None = None) -> None:
    """ConfigError, naming what is missing, unless this process can build the NAT lab."""
    lacks = natlab.missing(**({"which": which} if which else {}), status_text=status_text)
    if lacks:
        raise ConfigError(f"[[sites]] builds real NAT in network namespaces: it needs root "
                          f"(CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 and iptables; missing: "
                          f"{', '.join(lacks)}")


# -- the running part ------------------------------------------------------------------------------

@dataclass
class RelayProcess:
    place: RelayPlace
    folder: Path
    peer_id: str
    process: subprocess.Popen[bytes] | None = None
    down: dict[str, Any] | None = None  # the fault that took it down: kind, round, seconds
    misbehaving: dict[str, Any] | None = None  # a tamper or drop fault: kind, round, seconds

    @property
    def addr(self) -> str:
        return relay_addr(self.place, self.peer_id)


class SitesSession:
    """A sites scenario's lab while it exists: its relays, its nodes' places and faults."""

    def __init__(self, scenario: ScenarioConfig, out: Path, plan: natlab.NatPlan) -> None:
        self.scenario = scenario
        self.plan = plan
        self.places = node_places(scenario.sites, plan)
        self.relays = []
        for place in relay_places(plan):
            folder = out / "relays" / f"relay-{place.index}"
            folder.mkdir(parents=True, exist_ok=True)
            identity = load_or_create_identity(folder / "node.key")[0]
            self.relays.append(RelayProcess(place, folder, str(identity.peer_id)))
        self.pending = list(scenario.public.faults)
        self.started: float | None = None
        self.events: list[dict[str, Any]] = []

    def start_relays(self, timeout: float = RELAY_READY_SECONDS) -> None:
        """Start every relay in its namespace; return once each serves (NetnsError if one
        exits or is not serving within ``timeout``)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        misbehave = misbehaving_relays(self.scenario.public)
        for relay in self.relays:
            command = relay_command(relay.place, relay.folder / "node.key", relay.folder,
                                    self.scenario.public.circuit_bytes,
                                    self.scenario.timeout + 60.0,
                                    misbehave.get(relay.place.index))
            with open(relay.folder / "stdout.log", "ab") as output:
                relay.process = subprocess.Popen(command, stdout=output,
                                                 stderr=subprocess.STDOUT, env=env,
                                                 start_new_session=True)
        deadline = time.monotonic() + timeout
        for relay in self.relays:
            assert relay.process is not None
            while not (relay.folder / "relay.json").exists():
                if relay.process.poll() is not None or time.monotonic() > deadline:
                    raise natlab.NetnsError(
                        f"sites: relay {relay.place.index} did not start serving (see "
                        f"{relay.folder / 'stdout.log'})")
                time.sleep(0.05)
        log.info("%d relay(s) serving: %s", len(self.relays),
                 " ".join(r.addr for r in self.relays))

    def prepare(self, prepare_nodes: Callable[..., list[NodeProcess]]) -> list[NodeProcess]:
        """The nodes, prepared by the runner's ``prepare_nodes(ports=, hosts=)``, then given
        their ``[relay]`` section, bootstrap list and namespace."""
        nodes = prepare_nodes(ports=[p.port for p in self.places],
                              hosts=[p.ip for p in self.places])
        relays = [r.addr for r in self.relays]
        peer_ids = [n.peer_id for n in nodes]
        for node, place in zip(nodes, self.places, strict=True):
            node.config = replace(
                node.config, relay=node_relay_config(self.scenario.public, relays),
                bootstrap=bootstrap_list(place.index, self.places, peer_ids, relays[0]))
            (node.out / "node.toml").write_text(dump_toml(to_dict(node.config)))
            node.netns = place.namespace
        return nodes

    def step(self, rounds: list[int], now: float) -> list[dict[str, Any]]:
        """Take down the relays whose fault is due; returns the events applied now."""
        if self.started is None:
            self.started = now
        when = {"max_round": max(rounds, default=-1), "seconds": round(now - self.started, 3)}
        applied = []
        for fault in list(self.pending):
            if not fault.due(when["max_round"], when["seconds"]):
                continue
            self.pending.remove(fault)
            relay = self.relays[fault.relay]
            if relay.process is not None and relay.process.poll() is None:
                relay.process.send_signal(
                    signal.SIGUSR1 if fault.kind.misbehaves else
                    signal.SIGKILL if fault.kind is RelayFaultKind.KILL else signal.SIGTERM)
            if fault.kind.misbehaves:
                relay.misbehaving = {"kind": fault.kind.value, **when}
            else:
                relay.down = {"kind": fault.kind.value, **when}
            event = {"relay": fault.relay, "event": fault.kind.value, **when}
            log.warning("relay %d: %s (furthest node at round %d, %.1f s in)", fault.relay,
                        fault.kind.value, when["max_round"], when["seconds"])
            self.events.append(event)
            applied.append(event)
        return applied

    def stop(self) -> None:
        """SIGTERM every relay still running (it writes its last relay.json), SIGKILL after
        ``RELAY_STOP_SECONDS``."""
        running = [r.process for r in self.relays
                   if r.process is not None and r.process.poll() is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        deadline = time.monotonic() + RELAY_STOP_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def open_sites(scenario: ScenarioConfig, out: Path, *, run: Runner = run_command,
               check: Callable[[], None] | None = None) -> Iterator[SitesSession]:
    """Build the scenario's NAT lab (after deleting leftovers of a run of the same folder),
    start its relays; when the block ends, however it ends (errors, Ctrl-C, SIGTERM), stop
    the relays and delete every namespace."""
    (check or check_rights)()
    plan = lab_plan(scenario.sites, scenario.public, run_tag(out))
    for error in natlab.cleanup(plan, run):
        log.error("%s", error)
    with _terminate_raises():
        session = None
        try:
            with natlab.nat_lab(len(plan.sites), tag=plan.tag,
                                drop_unsolicited=plan.drop_unsolicited,
                                random_ports=plan.random_ports,
                                hosts=[len(s.hosts) for s in plan.sites],
                                publics=plan.publics, run=run, check=list) as made:
                session = SitesSession(scenario, out, made)
                log.info("%d sites behind NAT (%s*), %d relay(s)", len(made.sites), made.prefix,
                         len(session.relays))
                try:
                    session.start_relays()
                    yield session
                finally:
                    with _signals_held():
                        session.stop()
        finally:
            with _signals_held():
                for error in natlab.cleanup(plan, run):
                    log.error("%s", error)


__all__ = ["NODE_PORT", "RELAY_PORT", "NodePlace", "RelayPlace", "SitesSession",
           "bootstrap_list", "check_rights", "lab_plan", "misbehaving_relays", "node_places",
           "node_relay_config", "open_sites", "relay_command", "relay_places"]
