"""Real network interfaces for a scenario: each node in its own Linux network namespace.

Layout of one run (``TAG``: a short hash of the run folder, so two runs never share a name)::

    netns gfl-TAG-hub:  bridge br0, with one veth end n0, n1, ... per node (no address)
    netns gfl-TAG-nI:   veth end eth0 with the node's address (subnet's host I + 1), and lo

Nothing is made in the runner's own namespace: no interface, address or route there, so runs
with the same subnet do not meet, and deleting the run's namespaces removes every link (a veth
pair dies with either end's namespace). With a rate, a ``tbf`` qdisc caps egress on both ends
of each node's veth: the node side caps what the node sends, the hub side what it receives.

The command builders are pure (lists of ``ip``/``tc`` arguments); :func:`open_namespaces` runs
them through an injectable ``run`` and removes everything in ``finally`` (errors, Ctrl-C,
SIGTERM, timeouts), after first removing leftovers of a crashed run of the same folder.

A node enters its namespace before it opens any socket: a child forked by the launcher calls
:func:`enter_netns` (``setns(2)`` through ctypes: Python 3.11 has no ``os.setns``); a spawned
node runs under ``ip netns exec`` (which keeps the pid: it execs, it does not fork).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import ipaddress
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipfl.config import ConfigError
from gossipfl.scenario.config import NamespacesConfig

log = logging.getLogger("gossipfl.runner")

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/var/run/netns")
PREFIX = "gfl"
BRIDGE = "br0"
NODE_IFACE = "eth0"
NODE_PORT = 4001  # every node has its own address, so all can use the same port
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21  # `ip netns add` bind-mounts the namespace under /var/run/netns
COMMAND_TIMEOUT = 30.0
TBF_LATENCY_MS = 200  # the most a packet may wait in the cap's queue (sets its length)
TBF_MIN_BURST_BYTES = 32 * 1024

#: Runs one command, returns its result (``subprocess.run`` by default; tests inject a fake).
Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


class NetnsError(ConfigError):
    """A namespace could not be made: the command and what it said."""


@dataclass(frozen=True)
class NodeSlot:
    """One node's namespace, address and veth ends."""

    index: int
    namespace: str
    ip: str
    prefixlen: int
    hub_iface: str  # its veth end in the hub namespace

    @property
    def port(self) -> int:
        return NODE_PORT

    @property
    def listen(self) -> str:
        return f"/ip4/{self.ip}/tcp/{self.port}"


@dataclass(frozen=True)
class NetnsPlan:
    """Every name and address of one run's namespaces."""

    tag: str
    subnet: str
    rate_mbit: float | None
    nodes: tuple[NodeSlot, ...]

    @property
    def prefix(self) -> str:
        return f"{PREFIX}-{self.tag}-"

    @property
    def hub(self) -> str:
        return f"{self.prefix}hub"

    @property
    def namespaces(self) -> list[str]:
        return [slot.namespace for slot in self.nodes] + [self.hub]


def run_tag(out_dir: str | Path) -> str:
    """Eight hex digits that name a run folder (its absolute path)."""
    return hashlib.sha256(str(Path(out_dir).resolve()).encode()).hexdigest()[:8]


def make_plan(config: NamespacesConfig, nodes: int, out_dir: str | Path) -> NetnsPlan:
    network = ipaddress.IPv4Network(config.subnet)
    if nodes > config.capacity:
        raise ConfigError(f"namespaces.subnet {config.subnet} holds {config.capacity} nodes, "
                          f"not {nodes}")
    tag = run_tag(out_dir)
    slots = tuple(
        NodeSlot(index=i, namespace=f"{PREFIX}-{tag}-n{i}", ip=str(network.network_address + i + 1),
                 prefixlen=network.prefixlen, hub_iface=f"n{i}")
        for i in range(nodes)
    )
    return NetnsPlan(tag=tag, subnet=config.subnet, rate_mbit=config.rate_mbit, nodes=slots)


def tbf_args(rate_mbit: float) -> list[str]:
    """``tc`` arguments of a token-bucket cap at ``rate_mbit`` (burst at least 1/100 s of it)."""
    rate_bytes = rate_mbit * 1e6 / 8
    burst = max(TBF_MIN_BURST_BYTES, int(rate_bytes / 100))
    return ["tbf", "rate", f"{round(rate_mbit * 1000)}kbit", "burst", str(burst),
            "latency", f"{TBF_LATENCY_MS}ms"]


def setup_commands(plan: NetnsPlan) -> list[list[str]]:
    """Every command that builds the run's namespaces, bridge, links, addresses and caps."""
    hub = plan.hub
    commands = [["ip", "netns", "add", hub],
                ["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"],
                ["ip", "-n", hub, "link", "set", BRIDGE, "up"]]
    for slot in plan.nodes:
        ns = slot.namespace
        commands += [
            ["ip", "netns", "add", ns],
            ["ip", "-n", hub, "link", "add", slot.hub_iface, "type", "veth",
             "peer", "name", NODE_IFACE, "netns", ns],
            ["ip", "-n", hub, "link", "set", slot.hub_iface, "master", BRIDGE],
            ["ip", "-n", hub, "link", "set", slot.hub_iface, "up"],
            ["ip", "-n", ns, "addr", "add", f"{slot.ip}/{slot.prefixlen}", "dev", NODE_IFACE],
            ["ip", "-n", ns, "link", "set", NODE_IFACE, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ]
        if plan.rate_mbit is not None:
            cap = tbf_args(plan.rate_mbit)
            commands += [  # what the node sends, and what it receives
                ["tc", "-n", ns, "qdisc", "add", "dev", NODE_IFACE, "root", *cap],
                ["tc", "-n", hub, "qdisc", "add", "dev", slot.hub_iface, "root", *cap],
            ]
    return commands


def teardown_commands(names: Sequence[str]) -> list[list[str]]:
    """Delete these namespaces (and with them every interface in them)."""
    return [["ip", "netns", "delete", name] for name in names]


def qdisc_commands(plan: NetnsPlan, slot: NodeSlot) -> dict[str, list[str]]:
    """The commands that show a node's two caps with their counters."""
    return {"node_side": ["tc", "-s", "-n", slot.namespace, "qdisc", "show", "dev", NODE_IFACE],
            "hub_side": ["tc", "-s", "-n", plan.hub, "qdisc", "show", "dev", slot.hub_iface]}


def parse_netns_list(text: str) -> list[str]:
    """Names from ``ip netns list`` (lines like ``name (id: 3)`` or ``name``)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def run_names(plan: NetnsPlan, listed: Sequence[str]) -> list[str]:
    """The listed namespaces that belong to this run (leftovers included), hub last."""
    mine = [name for name in listed if name.startswith(plan.prefix)]
    return sorted(mine, key=lambda name: (name == plan.hub, name))


def parse_sent_bytes(text: str) -> int | None:
    """The ``Sent N bytes`` counter of the first ``tbf`` qdisc in ``tc -s qdisc show``."""
    match = re.search(r"qdisc tbf .*?\n\s*Sent (\d+) bytes", text)
    return int(match.group(1)) if match else None


def effective_caps(status_text: str) -> int:
    """The effective capability bits from ``/proc/<pid>/status``."""
    match = re.search(r"^CapEff:\s*([0-9a-fA-F]+)$", status_text, re.MULTILINE)
    return int(match.group(1), 16) if match else 0


def missing_rights(*, need_tc: bool, need_ss: bool = False,
                   which: Callable[[str], str | None] = shutil.which,
                   status_text: Callable[[], str] | None = None) -> list[str]:
    """What this process lacks to make namespaces (empty: nothing)."""
    if status_text is None:
        status_text = lambda: Path("/proc/self/status").read_text()  # noqa: E731
    missing = []
    try:
        caps = effective_caps(status_text())
    except OSError:
        caps = 0
    for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"), (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")):
        if not caps & (1 << bit):
            missing.append(name)
    for tool in ("ip", *(["tc"] if need_tc else []), *(["ss"] if need_ss else [])):
        if which(tool) is None:
            missing.append(f"the `{tool}` command (Debian: apt-get install iproute2)")
    return missing


def check_rights(*, need_tc: bool, need_ss: bool = False,
                 which: Callable[[str], str | None] = shutil.which,
                 status_text: Callable[[], str] | None = None) -> None:
    """ConfigError, naming what is missing, unless this process can make namespaces (``tc``:
    for caps and partitions, ``ss``: for partitions that reset connections)."""
    missing = missing_rights(need_tc=need_tc, need_ss=need_ss, which=which,
                             status_text=status_text)
    if missing:
        raise ConfigError("namespaces.enabled needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and "
                          f"iproute2; missing: {', '.join(missing)}")


def run_command(command: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, check=False,
                          timeout=COMMAND_TIMEOUT)


def _checked(run: Runner, command: Sequence[str]) -> str:
    try:
        result = run(command)
    except (OSError, subprocess.SubprocessError) as error:
        raise NetnsError(f"namespaces: `{' '.join(command)}` failed: {error}") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout or "").strip()
        raise NetnsError(f"namespaces: `{' '.join(command)}` failed ({result.returncode}): "
                         f"{said}")
    return result.stdout or ""


def listed_namespaces(run: Runner = run_command) -> list[str]:
    return parse_netns_list(_checked(run, ["ip", "netns", "list"]))


def remove(names: Sequence[str], run: Runner = run_command) -> list[str]:
    """Delete these namespaces, each regardless of the others; returns the errors."""
    errors = []
    for command in teardown_commands(names):
        try:
            _checked(run, command)
        except NetnsError as error:
            errors.append(str(error))
    return errors


def exec_prefix(namespace: str) -> list[str]:
    """The command prefix that runs a program inside ``namespace`` (same pid)."""
    return ["ip", "netns", "exec", namespace]


def netns_path(namespace: str) -> Path:
    return NETNS_DIR / namespace


def enter_netns(path: str | Path) -> None:
    """Move this process into the network namespace bound at ``path`` (before any socket)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns({path}): {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class NetnsSession:
    """The namespaces of a running scenario: what the runner asks of them while they exist."""

    plan: NetnsPlan
    run: Runner = run_command
    qdiscs: dict[int, dict[str, str]] = field(default_factory=dict)

    def snapshot(self) -> None:
        """Record ``tc -s qdisc show`` of both ends of every node's link (call before the
        namespaces go: the counters say how much passed each cap)."""
        for slot in self.plan.nodes:
            shown = {}
            for side, command in qdisc_commands(self.plan, slot).items():
                try:
                    shown[side] = _checked(self.run, command).strip()
                except NetnsError as error:
                    shown[side] = str(error)
            self.qdiscs[slot.index] = shown

    def section(self) -> dict[str, Any]:
        """The ``namespaces`` section of report.json."""
        nodes = []
        for slot in self.plan.nodes:
            shown = self.qdiscs.get(slot.index, {})
            nodes.append({
                "index": slot.index, "namespace": slot.namespace, "ip": slot.ip,
                "listen": slot.listen, "rate_mbit": self.plan.rate_mbit,
                "qdisc": shown,
                "sent_bytes_capped": {side: parse_sent_bytes(text)
                                      for side, text in shown.items()},
            })
        return {"subnet": self.plan.subnet, "hub": self.plan.hub, "bridge": BRIDGE,
                "rate_mbit": self.plan.rate_mbit, "nodes": nodes}


@contextlib.contextmanager
def _terminate_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit meanwhile (so ``finally`` blocks run), in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (a cleanup is not cut short)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def open_namespaces(plan: NetnsPlan, *, run: Runner = run_command,
                    check: Callable[[], None] | None = None) -> Iterator[NetnsSession]:
    """Make the run's namespaces (after removing leftovers with its names); remove them all
    when the block ends, however it ends. ``check`` (default :func:`check_rights`) refuses
    first, with a ConfigError, when this process lacks the rights."""
    if check is None:
        check = lambda: check_rights(need_tc=plan.rate_mbit is not None)  # noqa: E731
    check()
    stale = run_names(plan, listed_namespaces(run))
    if stale:
        log.warning("removing %d namespaces left by an earlier run: %s", len(stale),
                    " ".join(stale))
        errors = remove(stale, run)
        if errors:
            raise NetnsError("; ".join(errors))
    with _terminate_raises():
        try:
            for command in setup_commands(plan):
                _checked(run, command)
            log.info("%d nodes in namespaces %s*, subnet %s, cap %s Mbit/s", len(plan.nodes),
                     plan.prefix, plan.subnet, plan.rate_mbit or "none")
            yield NetnsSession(plan, run)
        finally:
            with _signals_held():
                cleanup(plan, run)


def probe_commands(name: str) -> list[list[str]]:
    """A namespace with a bridge, a veth pair and a tbf cap: what a run needs of the kernel."""
    return [["ip", "netns", "add", name],
            ["ip", "-n", name, "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
            ["tc", "-n", name, "qdisc", "add", "dev", "p0", "root", *tbf_args(1.0)]]


def probe(run: Runner = run_command, check: Callable[[], None] | None = None) -> str | None:
    """None when this process can make what a run needs (in a namespace it then deletes),
    else why not. ``check``: as for :func:`open_namespaces`."""
    return probe_in(f"{PREFIX}-probe-{os.getpid()}", probe_commands,
                    check or (lambda: check_rights(need_tc=True)), run)


def probe_in(name: str, commands: Callable[[str], list[list[str]]], check: Callable[[], None],
             run: Runner) -> str | None:
    """Run ``check``, then ``commands(name)`` in a namespace ``name`` that is deleted after:
    None if all went through, else why not."""
    try:
        check()
        try:
            for command in commands(name):
                _checked(run, command)
        finally:
            if name in listed_namespaces(run):
                remove([name], run)
    except ConfigError as error:
        return str(error)
    return None


def cleanup(plan: NetnsPlan, run: Runner = run_command) -> None:
    """Delete every namespace of the run that exists (node namespaces, then the hub)."""
    try:
        names = run_names(plan, listed_namespaces(run))
    except NetnsError as error:
        log.error("%s: deleting the run's namespaces blindly", error)
        names = plan.namespaces
    for error in remove(names, run):
        log.error("%s", error)


__all__ = ["NetnsError", "NetnsPlan", "NetnsSession", "NodeSlot", "check_rights", "cleanup",
           "enter_netns", "exec_prefix", "make_plan", "missing_rights", "netns_path",
           "open_namespaces", "probe", "setup_commands", "tbf_args"]
