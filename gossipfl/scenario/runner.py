"""``gossipfl run``: start a scenario's nodes as separate OS processes on loopback, watch, report.

The runner never carries model data and never decides rounds: it writes each node's
configuration, starts the processes (each in its own session, so they would go on without the
runner), shows their progress from the metrics files they write, applies the scenario's faults,
and collects what they left behind into ``report.json``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from gossipfl.config import ConfigError, NodeConfig, SecurityConfig, dump_toml, to_dict
from gossipfl.crypto.admission import admit_identity, init_federation
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.scenario.adversaries import node_adversary
from gossipfl.scenario.config import FaultConfig, JoinConfig, ScenarioConfig, load_scenario
from gossipfl.scenario.datafiles import node_data
from gossipfl.scenario.graphs import node_topology
from gossipfl.scenario.launcher import LauncherProcess, fork_launcher
from gossipfl.scenario.netcut import needs, set_up_cuts
from gossipfl.scenario.netns import (
    NetnsSession,
    check_rights,
    exec_prefix,
    make_plan,
    netns_path,
    open_namespaces,
)
from gossipfl.scenario.network import PartitionSchedule, ScenarioNetwork
from gossipfl.scenario.process import ForkedProcess, NodeProcess
from gossipfl.scenario.progress import Progress
from gossipfl.scenario.report import build_report, show_report
from gossipfl.scenario.sites import SitesSession, open_sites
from gossipfl.scenario.soak import Soak

log = logging.getLogger("gossipfl.runner")

POLL_SECONDS = 0.2
CERTIFICATE_DAYS = 7.0
STOP_GRACE_SECONDS = 10.0
#: A node's bootstrap list: the first nodes of the scenario (those before it), at most this
#: many; the rest of the federation it learns from their member lists.
BOOTSTRAP_SEEDS = 8
NODE_ENV = {
    "JAX_PLATFORMS": "cpu",
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "PYTHONUNBUFFERED": "1",
}


@contextlib.contextmanager
def reserved_ports(count: int) -> Iterator[list[int]]:
    """Ports the kernel hands out now for 127.0.0.1, held until the block ends (so relays
    bound meanwhile cannot take them), then released for the nodes to bind."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        yield [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def prepare_nodes(scenario: ScenarioConfig, out: Path,
                  network: ScenarioNetwork | None = None, *,
                  ports: list[int] | None = None,
                  hosts: list[str] | None = None) -> list[NodeProcess]:
    """Identity, ports, bootstrap lists and a TOML file for each node.

    With a ``network``, its relays are started first; a node reaches each routed peer through
    its relay only (``routes``), and its bootstrap list names the relay for such a peer.
    ``ports``: the nodes' ports as given (a simulation, where nothing binds them); by default
    free ones from the kernel. ``hosts``: each node's own address (namespaces), by default
    127.0.0.1.
    """
    if ports is not None:
        relays: dict[int, dict[int, int]] = {}
    else:
        with reserved_ports(scenario.nodes) as ports:
            relays = network.build(ports) if network is not None else {}
    nodes: list[NodeProcess] = []
    addrs: list[str] = []
    late = {j.node for j in scenario.joins}
    data = node_data(scenario)  # per-node files checked, each node given its own
    federation_dir = out / "federation"
    if scenario.admission and not (federation_dir / "federation.pub").exists():
        init_federation(federation_dir, scenario.federation_name)
    identities = []
    for index in range(scenario.nodes):
        node_dir = out / "nodes" / f"node-{index:02d}"
        node_dir.mkdir(parents=True, exist_ok=True)
        identities.append(load_or_create_identity(node_dir / "node.key")[0])
    peer_ids = [str(identity.peer_id) for identity in identities]
    for index, identity in enumerate(identities):
        node_dir = out / "nodes" / f"node-{index:02d}"
        key_file = node_dir / "node.key"
        routes = {peer_ids[dst]: f"/ip4/127.0.0.1/tcp/{port}"
                  for dst, port in relays.get(index, {}).items()}
        security = SecurityConfig()
        if scenario.admission:
            certificate = admit_identity(federation_dir, key_file, valid_days=CERTIFICATE_DAYS,
                                         now=time.time())
            security = SecurityConfig(
                admission=True, federation_public=str(federation_dir / "federation.pub"),
                certificate=str(certificate), encrypt_payloads=scenario.encrypt_payloads,
            )
        listen = f"/ip4/{hosts[index] if hosts else '127.0.0.1'}/tcp/{ports[index]}"
        bootstrap = tuple(  # a routed peer's relay, never its own address
            f"{routes[peer_ids[j]]}/p2p/{peer_ids[j]}" if peer_ids[j] in routes else addr
            for j, addr in enumerate(addrs[:BOOTSTRAP_SEEDS])
        )
        config = NodeConfig(
            federation=scenario.federation_name,
            key_file=str(key_file),
            out_dir=str(node_dir),
            listen=(listen,),
            bootstrap=bootstrap,
            node_index=index,
            node_count=scenario.nodes,
            expected_members=scenario.nodes - len(late),
            rounds=scenario.rounds,
            seed=scenario.seed,
            keep_round_models=scenario.keep_round_models,
            data=data[index],
            model=scenario.model,
            train=scenario.train,
            topology=node_topology(scenario.topology, peer_ids),
            protocol=scenario.protocol,
            security=security,
            privacy=scenario.privacy,
            secagg=scenario.secagg, robust=scenario.robust, compression=scenario.compression,
            adversary=node_adversary(scenario, index, peer_ids, node_dir.parent / "collusion"),
            slowdown=max([s.factor for s in scenario.slow if s.node == index], default=1.0),
            routes=routes, metrics_port=scenario.metrics_port and scenario.metrics_port + index,
        )
        (node_dir / "node.toml").write_text(dump_toml(to_dict(config)))
        addrs.append(f"{listen}/p2p/{identity.peer_id}")
        nodes.append(NodeProcess(index, config, str(identity.peer_id)))
    return nodes


def start_node(node: NodeProcess, *, standby: bool = False,
               timeout: float = 600.0) -> subprocess.Popen[bytes]:
    """One fresh interpreter per node (``--spawn``): slower to start, nothing shared.

    With ``standby``, the interpreter imports everything and then waits for the file
    ``<out>/go`` (see :func:`release_standby`): a restart then takes a fraction of a second
    instead of the several seconds a fresh interpreter needs to import JAX and libp2p.
    """
    env = {**os.environ, **NODE_ENV, **compile_cache_env()}
    command = [sys.executable, "-m", "gossipfl", "node", "--config", str(node.out / "node.toml")]
    if node.netns:  # `ip netns exec` execs the node in its namespace: the pid stays the same
        command = exec_prefix(node.netns) + command
    if standby:
        command += ["--start-when", str(node.out / "go"), "--start-timeout", str(timeout)]
    with open(node.out / "stdout.log", "ab") as output:  # a restart appends
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    if not standby:
        node.process = process
    return process


def compile_cache_env() -> dict[str, str]:
    """The spawned nodes' JAX compilation cache: the caller's ``GOSSIPFL_COMPILE_CACHE``, else
    the machine's (``~/.cache/gossipfl/xla``), so that a machine compiles a model's steps once
    (the first run's nodes compile them, later runs load them)."""
    from gossipfl.node.compile_cache import ENV, default_folder

    return {ENV: os.environ.get(ENV) or default_folder()}


def release_standby(node: NodeProcess) -> None:
    """Start a restarted node: its standby process if it has one, else a fresh interpreter."""
    if node.standby is not None and node.standby.poll() is None:
        (node.out / "go").touch()
        node.process, node.standby = node.standby, None
    else:
        start_node(node)


def start_forked(nodes: list[NodeProcess], out: Path,
                 timeout: float) -> subprocess.Popen[bytes] | LauncherProcess:
    """Start the launcher, which forks one process per node (see :mod:`launcher`): forked from
    here where safe, else a fresh interpreter; within ``timeout``, a first compile included."""
    state_path = out / "launcher.json"
    env = {**NODE_ENV, **compile_cache_env()}
    argv = [str(state_path), *(f"--netns={netns_path(n.netns)}" for n in nodes if n.netns),
            *(str(n.out / "node.toml") for n in nodes)]
    launcher: subprocess.Popen[bytes] | LauncherProcess | None = fork_launcher(
        argv, out / "launcher.log", env)
    if launcher is None:
        with open(out / "launcher.log", "wb") as output:
            launcher = subprocess.Popen(
                [sys.executable, "-m", "gossipfl.scenario.launcher", *argv],
                stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env},
                start_new_session=True)
    deadline = time.monotonic() + timeout
    while not state_path.exists():
        if launcher.poll() is not None:
            raise RuntimeError(f"the node launcher exited ({launcher.returncode}); see "
                               f"{out / 'launcher.log'}")
        if time.monotonic() > deadline:
            launcher.kill()
            raise RuntimeError("the node launcher did not start the nodes in time")
        time.sleep(0.05)
    pids = json.loads(state_path.read_text())["pids"]
    for node in nodes:
        node.process = ForkedProcess(int(pids[str(node.index)]), node.index, state_path, launcher)
    return launcher


def stop_all(nodes: list[NodeProcess]) -> None:
    """SIGTERM the nodes still running, then SIGKILL those that outlive the grace period."""
    for node in nodes:  # standbys that were never needed
        if node.standby is not None and node.standby.poll() is None:
            node.standby.kill()
            node.standby.wait()
    running = [n for n in nodes if n.process and n.process.poll() is None]
    for node in running:
        assert node.process is not None
        with contextlib.suppress(ProcessLookupError):
            node.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for node in running:
        assert node.process is not None
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()


def resolve_faults(scenario: ScenarioConfig) -> list[FaultConfig]:
    """The scenario's faults, with random rounds (``at_round = -1``) drawn from its seed.

    Random rounds fall in the first two thirds of the training rounds: a node restarted later
    would often come back to a federation that has already finished.
    """
    import random as _random

    rng = _random.Random(scenario.seed * 7919 + 17)
    return [replace(f, at_round=rng.randint(1, max(1, 2 * scenario.rounds // 3)))
            if f.at_round < 0 else f for f in scenario.faults]


def resolve_joins(scenario: ScenarioConfig) -> list[JoinConfig]:
    """The late joiners, with random rounds (``at_round = -1``) drawn from the seed in the first
    half of training."""
    import random as _random

    rng = _random.Random(scenario.seed * 104729 + 31)
    return [replace(j, at_round=rng.randint(1, max(1, scenario.rounds // 2)))
            if j.at_round < 0 else j for j in scenario.joins]


def federation_round(nodes: list[NodeProcess]) -> int:
    """The furthest round any running node has finished."""
    return max((n.last_round for n in nodes if n.process is not None), default=-1)


def apply_fault(target: NodeProcess, fault: FaultConfig, now: float) -> None:
    """Signal ``target`` as ``fault`` says (see :class:`FaultConfig`); a restart's start and a
    pause's SIGCONT are left to :func:`watch`'s timers (``restart_at``, ``resume_at``)."""
    assert target.process is not None
    if fault.kind == "pause":
        target.process.send_signal(signal.SIGSTOP)
        target.resume_at = now + fault.down_seconds
        target.events.append(f"SIGSTOP after round {target.last_round}")
        return
    if fault.kind in ("kill", "restart"):
        target.process.kill()
        target.killed_at = now
        target.killed_after_round = target.last_round
    else:
        target.process.terminate()
    if fault.kind == "restart":
        target.restart_at = now + fault.down_seconds
    name = "SIGTERM" if fault.kind == "terminate" else "SIGKILL"
    target.events.append(f"{name} after round {target.last_round}")


def churn_fault(target: NodeProcess, fault: FaultConfig, *, timeout: float) -> None:
    """A churn event: as :func:`apply_fault`, a restart first readied with a standby process
    (importing while the node is down; without one, a fresh interpreter starts it late)."""
    if fault.kind == "restart" and target.standby is None:
        (target.out / "go").unlink(missing_ok=True)  # a standby before it already used it
        target.standby = start_node(target, standby=True, timeout=timeout)
    apply_fault(target, fault, time.monotonic())


def watch(scenario: ScenarioConfig, nodes: list[NodeProcess], quiet: bool,
          network: PartitionSchedule | SitesSession | None = None,
          soak: Soak | None = None) -> bool:
    """Poll until every node has exited or the scenario times out; returns False on timeout.

    With a ``network``, its partitions are cut and healed as the nodes' rounds (or the seconds
    since the start) reach their times; with a ``soak``, its churn and RSS samples are taken.
    """
    pending = resolve_faults(scenario)
    for fault in pending:
        if fault.kind == "restart" and nodes[fault.node].standby is None:
            nodes[fault.node].standby = start_node(nodes[fault.node], standby=True,
                                                   timeout=scenario.timeout)
    joins = resolve_joins(scenario)
    for join in joins:  # started now, importing; released when the federation is far enough
        nodes[join.node].join_round = join.at_round
        if nodes[join.node].standby is None:
            nodes[join.node].standby = start_node(nodes[join.node], standby=True,
                                                  timeout=scenario.timeout)
    deadline = time.monotonic() + scenario.timeout
    with Progress(nodes, scenario.rounds, quiet) as progress:
        while time.monotonic() < deadline:
            for node in nodes:
                node.poll_metrics()
                if node.exit_code is None and node.process is not None:
                    node.exit_code = node.process.poll()
            for fault in list(pending):
                target = nodes[fault.node]
                if target.last_round >= fault.at_round and target.exit_code is None:
                    apply_fault(target, fault, time.monotonic())
                    pending.remove(fault)
            for join in list(joins):
                late = nodes[join.node]
                if federation_round(nodes) >= join.at_round:
                    late.events.append(f"joined late (federation at round "
                                       f"{federation_round(nodes)})")
                    release_standby(late)
                    joins.remove(join)
            for node in nodes:
                if node.resume_at is not None and time.monotonic() >= node.resume_at:
                    assert node.process is not None
                    node.process.send_signal(signal.SIGCONT)
                    node.resume_at = None
                    node.events.append(f"SIGCONT (stopped after round {node.last_round})")
                if node.restart_at is not None and time.monotonic() >= node.restart_at:
                    assert node.process is not None
                    node.process.wait()
                    node.restart_at = None
                    node.killed_at = None
                    node.exit_code = None
                    node.restarts += 1
                    node.events.append(f"restarted (after round {node.killed_after_round})")
                    release_standby(node)
            if network is not None:
                network.step([n.last_round for n in nodes], time.monotonic())
            if soak is not None:
                soak.step(nodes, time.monotonic())
            progress.update()
            if not joins and all(n.exit_code is not None and n.restart_at is None
                                 for n in nodes):
                return True
            time.sleep(POLL_SECONDS)
    return False


def run_folder(path: str | Path, scenario: ScenarioConfig, out: str | Path | None,
               kind: str = "") -> Path:
    """The folder of a new run of the scenario file ``path`` (``out``, or
    ``runs/<name>[-kind]-<time>``), made, with the scenario file copied in; ConfigError if
    it already holds a run."""
    node_data(scenario)  # per-node data files: refused before anything is made
    stamp = time.strftime("%Y%m%d-%H%M%S")
    label = f"{scenario.name}-{kind}" if kind else scenario.name
    out_dir = Path(out) if out else Path("runs") / f"{label}-{stamp}"
    if (out_dir / "nodes").exists():
        raise ConfigError(f"{out_dir} already holds a run; choose another --out (or remove it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scenario.toml").write_text(Path(path).read_text())
    return out_dir


def run_scenario(path: str | Path, *, out: str | Path | None = None, quiet: bool = False,
                 centralised: bool = True, spawn: bool = False, metrics: int | None = None,
                 html: bool = True) -> int:
    """Run a scenario file end to end; returns 0 when every surviving node finished.

    Nodes are forked from one launcher process (shared imports) unless ``spawn`` asks for a
    fresh interpreter per node. ``metrics``: a base port, node i serves metrics on it + i.
    ``html``: write ``report.html`` beside ``report.json`` (``gossipfl report DIR`` writes it
    later).
    """
    scenario = load_scenario(path, metrics)
    from gossipfl.node.compression import mixing_warnings

    for warning in mixing_warnings(scenario.compression.kind, scenario.protocol.gamma,
                                   scenario.train, scenario.topology):
        print(f"gossipfl run: warning: {warning}", file=sys.stderr)
    spaces = scenario.namespaces
    if spaces.enabled:  # refuse before making anything
        check_rights(**needs(scenario))
    if scenario.sites:  # private sites behind real NAT (gossipfl/scenario/sites.py)
        from gossipfl.scenario.sites import check_rights as sites_rights

        sites_rights()
        out_dir = run_folder(path, scenario, out)
        with open_sites(scenario, out_dir) as sites:
            return _run(scenario, out_dir, None, quiet=quiet, centralised=centralised,
                        spawn=spawn, sites=sites, html=html)
    out_dir = run_folder(path, scenario, out)
    if not spaces.enabled:
        return _run(scenario, out_dir, None, quiet=quiet, centralised=centralised, spawn=spawn,
                    html=html)
    with open_namespaces(make_plan(spaces, scenario.nodes, out_dir)) as session:
        return _run(scenario, out_dir, session, quiet=quiet, centralised=centralised,
                    spawn=spawn, html=html)


def _run(scenario: ScenarioConfig, out_dir: Path, netns: NetnsSession | None, *, quiet: bool,
         centralised: bool, spawn: bool, sites: SitesSession | None = None,
         html: bool = True) -> int:
    relays = ScenarioNetwork(scenario) if netns is None and sites is None and (
        scenario.links or scenario.partitions) else None
    cuts = set_up_cuts(scenario, netns, out_dir / "netns") if netns is not None else None
    network: PartitionSchedule | None = relays or cuts
    network_section = None
    launcher = None
    nodes: list[NodeProcess] = []
    try:
        if sites is not None:
            nodes = sites.prepare(functools.partial(prepare_nodes, scenario, out_dir))
        elif netns is None:
            nodes = prepare_nodes(scenario, out_dir, relays)
        else:
            slots = netns.plan.nodes
            nodes = prepare_nodes(scenario, out_dir, ports=[s.port for s in slots],
                                  hosts=[s.ip for s in slots])
            for node, slot in zip(nodes, slots, strict=True):
                node.netns = slot.namespace
        start = time.monotonic()
        if network is not None:
            network.started = start
        late = {j.node for j in scenario.joins}
        first = [n for n in nodes if n.index not in late]
        if spawn or not hasattr(os, "fork"):
            for node in first:
                start_node(node)
        else:
            launcher = start_forked(first, out_dir, timeout=scenario.timeout)
        soak = Soak(scenario, start, functools.partial(churn_fault, timeout=scenario.timeout))
        finished = watch(scenario, nodes, quiet, network or sites, soak)
    finally:
        stop_all(nodes)
        if sites is not None:
            sites.stop()
        if launcher is not None:
            try:
                launcher.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
        if network is not None:
            try:
                network_section = network.section()
            finally:
                network.close()
        if netns is not None:
            netns.snapshot()
    wall = time.monotonic() - start
    for node in nodes:
        node.poll_metrics()
        if node.process is not None:
            node.exit_code = node.process.poll()
    if not finished:
        print(f"gossipfl run: scenario timed out after {scenario.timeout:.0f} s; nodes stopped",
              file=sys.stderr)
    report = build_report(scenario, nodes, wall_seconds=wall, centralised=centralised,
                          timed_out=not finished, network=network_section,
                          namespaces=netns.section() if netns is not None else None)
    soak.add_to(report)
    more = None
    if sites is not None:
        from gossipfl.scenario.sites_report import add_to, print_links

        add_to(report, sites, nodes)
        more = print_links
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    show_report(report, out_dir, quiet=quiet, html=html, more=more)
    survivors_ok = all(n.exit_code == 0 for n in nodes if n.killed_at is None)
    return 0 if finished and survivors_ok else 1


__all__ = ["NodeProcess", "prepare_nodes", "replace", "run_scenario"]
