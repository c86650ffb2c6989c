"""Real NAT on one machine: private hosts behind their own NAT routers, and a public segment.

Layout of one lab (``TAG``: random hex, so two labs never share a name)::

    netns gfl-nat-TAG-hub:    bridge br0 (the "internet"), one veth end per public host/router
    netns gfl-nat-TAG-pub:    eth0 198.18.0.1/24 (a public host: relay, bootstrap, prober)
    netns gfl-nat-TAG-rI:     wan 198.18.0.(10+I)/24, lan 10.66.I.1/24; ip_forward=1;
                              MASQUERADE of 10.66.I.0/24 out of wan; wan->lan forwarding only
                              for connections the private side opened (conntrack), the rest dropped
    netns gfl-nat-TAG-pI:     eth0 10.66.I.2/24, default route via 10.66.I.1 (a private host)

So a private host can dial any public address (the far end sees the router's wan address), and
nothing on the public segment can open a connection to it: the router has no port forward, and even
a public host that routes 10.66.I.0/24 through the router's wan address is dropped. Public
addresses come from 198.18.0.0/15 (the benchmarking range), inside these namespaces only.

Nothing is made in the caller's own namespace (no interface, route or iptables rule there):
deleting the lab's namespaces removes every link, rule and sysctl with them. The command builders
are pure; :func:`nat_lab` runs them through an injectable ``run`` and deletes the namespaces in
``finally``, however the block ends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from gossipfl.config import ConfigError
from gossipfl.scenario.netns import (
    BRIDGE,
    NODE_IFACE,
    NetnsError,
    Runner,
    exec_prefix,
    listed_namespaces,
    missing_rights,
    remove,
    run_command,
)

log = logging.getLogger("gossipfl.natlab")

PREFIX = "gfl-nat-"
PUBLIC_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
PUBLIC_HOST = 1  # the public host's address in PUBLIC_SUBNET
ROUTER_BASE = 10  # router I's wan address is PUBLIC_SUBNET host ROUTER_BASE + I
PRIVATE_BASE = ipaddress.IPv4Network("10.66.0.0/16")  # site I: 10.66.I.0/24
MAX_SITES = 200
WAN = "wan"
LAN = "lan"


@dataclass(frozen=True)
class NatSite:
    """One private host behind its own NAT router."""

    index: int
    router: str  # namespace of the NAT router
    host: str  # namespace of the private host
    wan_ip: str  # the router's public address (what the far end sees)
    lan_ip: str  # the router's private address (the host's gateway)
    host_ip: str  # the private host's address
    subnet: str  # the site's private subnet


@dataclass(frozen=True)
class NatPlan:
    """Every name and address of one lab."""

    tag: str
    sites: tuple[NatSite, ...]
    drop_unsolicited: bool = True  # see :func:`router_rules`

    @property
    def prefix(self) -> str:
        return f"{PREFIX}{self.tag}-"

    @property
    def hub(self) -> str:
        return f"{self.prefix}hub"

    @property
    def public(self) -> str:
        """The public host's namespace (relay, bootstrap node, prober)."""
        return f"{self.prefix}pub"

    @property
    def public_ip(self) -> str:
        return str(PUBLIC_SUBNET.network_address + PUBLIC_HOST)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, hub last."""
        names = [self.public]
        for site in self.sites:
            names += [site.host, site.router]
        return [*names, self.hub]


def make_plan(sites: int, tag: str | None = None, *, drop_unsolicited: bool = True) -> NatPlan:
    """A lab with ``sites`` private hosts, each behind its own NAT router."""
    if not 1 <= sites <= MAX_SITES:
        raise ConfigError(f"natlab: sites must be 1..{MAX_SITES}, not {sites}")
    tag = tag if tag is not None else secrets.token_hex(4)
    if not tag.isalnum() or len(tag) > 12:
        raise ConfigError(f"natlab: tag must be up to 12 letters or digits, not {tag!r}")
    prefix = f"{PREFIX}{tag}-"
    made = []
    for i in range(sites):
        subnet = list(PRIVATE_BASE.subnets(new_prefix=24))[i]
        made.append(NatSite(
            index=i, router=f"{prefix}r{i}", host=f"{prefix}p{i}",
            wan_ip=str(PUBLIC_SUBNET.network_address + ROUTER_BASE + i),
            lan_ip=str(subnet.network_address + 1), host_ip=str(subnet.network_address + 2),
            subnet=str(subnet)))
    return NatPlan(tag=tag, sites=tuple(made), drop_unsolicited=drop_unsolicited)


def _in(namespace: str, *command: str) -> list[str]:
    return [*exec_prefix(namespace), *command]


def router_rules(site: NatSite, drop_unsolicited: bool = True) -> list[list[str]]:
    """The router's NAT: masquerade the site out of wan; let in from wan only what belongs to a
    connection the site opened; drop the rest (no port forward, no unsolicited inbound).

    ``drop_unsolicited``: a packet from wan to the router itself that belongs to no connection is
    dropped (a "stealth" router, like most home and office NATs); else the router's kernel
    answers it, so an unsolicited TCP SYN gets a reset (connection refused)."""
    ipt = ["iptables", "-w", "5"]
    rules = [
        _in(site.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"),
        _in(site.router, *ipt, "-t", "nat", "-A", "POSTROUTING", "-s", site.subnet, "-o", WAN,
            "-j", "MASQUERADE"),
        _in(site.router, *ipt, "-A", "FORWARD", "-i", LAN, "-o", WAN, "-j", "ACCEPT"),
        _in(site.router, *ipt, "-A", "FORWARD", "-i", WAN, "-o", LAN, "-m", "conntrack",
            "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
        _in(site.router, *ipt, "-A", "FORWARD", "-i", WAN, "-o", LAN, "-j", "DROP"),
    ]
    if drop_unsolicited:
        rules += [
            _in(site.router, *ipt, "-A", "INPUT", "-i", WAN, "-m", "conntrack",
                "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            _in(site.router, *ipt, "-A", "INPUT", "-i", WAN, "-j", "DROP"),
        ]
    return rules


def setup_commands(plan: NatPlan) -> list[list[str]]:
    """Every command that builds the lab (in order)."""
    hub, pub = plan.hub, plan.public
    plen = PUBLIC_SUBNET.prefixlen
    commands = [["ip", "netns", "add", hub],
                ["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"],
                ["ip", "-n", hub, "link", "set", BRIDGE, "up"],
                ["ip", "netns", "add", pub],
                ["ip", "-n", hub, "link", "add", "pub", "type", "veth", "peer", "name",
                 NODE_IFACE, "netns", pub],
                ["ip", "-n", hub, "link", "set", "pub", "master", BRIDGE],
                ["ip", "-n", hub, "link", "set", "pub", "up"],
                ["ip", "-n", pub, "addr", "add", f"{plan.public_ip}/{plen}", "dev", NODE_IFACE],
                ["ip", "-n", pub, "link", "set", NODE_IFACE, "up"],
                ["ip", "-n", pub, "link", "set", "lo", "up"]]
    for site in plan.sites:
        r, h, leg = site.router, site.host, f"w{site.index}"
        splen = ipaddress.IPv4Network(site.subnet).prefixlen
        commands += [
            ["ip", "netns", "add", r],
            ["ip", "-n", hub, "link", "add", leg, "type", "veth", "peer", "name", WAN, "netns", r],
            ["ip", "-n", hub, "link", "set", leg, "master", BRIDGE],
            ["ip", "-n", hub, "link", "set", leg, "up"],
            ["ip", "-n", r, "addr", "add", f"{site.wan_ip}/{plen}", "dev", WAN],
            ["ip", "-n", r, "link", "set", WAN, "up"],
            ["ip", "-n", r, "link", "set", "lo", "up"],
            ["ip", "netns", "add", h],
            ["ip", "-n", r, "link", "add", LAN, "type", "veth", "peer", "name", NODE_IFACE,
             "netns", h],
            ["ip", "-n", r, "addr", "add", f"{site.lan_ip}/{splen}", "dev", LAN],
            ["ip", "-n", r, "link", "set", LAN, "up"],
            ["ip", "-n", h, "addr", "add", f"{site.host_ip}/{splen}", "dev", NODE_IFACE],
            ["ip", "-n", h, "link", "set", NODE_IFACE, "up"],
            ["ip", "-n", h, "link", "set", "lo", "up"],
            ["ip", "-n", h, "route", "add", "default", "via", site.lan_ip],
            *router_rules(site, plan.drop_unsolicited),
        ]
    return commands


def lab_names(plan: NatPlan, listed: Sequence[str]) -> list[str]:
    """The listed namespaces that belong to this lab, hub last."""
    mine = [name for name in listed if name.startswith(plan.prefix)]
    return sorted(mine, key=lambda name: (name == plan.hub, name))


def _checked(run: Runner, command: Sequence[str]) -> str:
    try:
        result = run(command)
    except (OSError, subprocess.SubprocessError) as error:
        raise NetnsError(f"natlab: `{' '.join(command)}` failed: {error}") from None
    if result.returncode != 0:
        said = (result.stderr or result.stdout or "").strip()
        raise NetnsError(f"natlab: `{' '.join(command)}` failed ({result.returncode}): {said}")
    return result.stdout or ""


def missing(which: Callable[[str], str | None] = shutil.which,
            status_text: Callable[[], str] | None = None) -> list[str]:
    """What this process lacks to build a lab (empty: nothing)."""
    lacks = missing_rights(need_tc=False, which=which, status_text=status_text)
    if which("iptables") is None:
        lacks.append("the `iptables` command (Debian: apt-get install iptables)")
    return lacks


def cleanup(plan: NatPlan, run: Runner = run_command) -> list[str]:
    """Delete every namespace of the lab that exists; returns the errors."""
    try:
        names = lab_names(plan, listed_namespaces(run))
    except NetnsError:
        names = plan.namespaces
    return remove(names, run)


@contextlib.contextmanager
def nat_lab(sites: int, *, tag: str | None = None, drop_unsolicited: bool = True,
            run: Runner = run_command,
            check: Callable[[], list[str]] | None = None) -> Iterator[NatPlan]:
    """Build a lab with ``sites`` NATed private hosts and one public host; delete it all when
    the block ends, however it ends. ConfigError (naming what is missing) without root,
    ``ip`` or ``iptables``; NetnsError (the command and what it said) if a step fails."""
    lacks = (check or missing)()
    if lacks:
        raise ConfigError(f"natlab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 and "
                          f"iptables; missing: {', '.join(lacks)}")
    plan = make_plan(sites, tag, drop_unsolicited=drop_unsolicited)
    try:
        for command in setup_commands(plan):
            _checked(run, command)
        yield plan
    finally:
        for error in cleanup(plan, run):
            log.error("%s", error)


def probe(run: Runner = run_command, check: Callable[[], list[str]] | None = None) -> str | None:
    """None when this process can build a lab (one site, built and deleted), else why not."""
    try:
        with nat_lab(1, run=run, check=check):
            pass
    except ConfigError as error:  # NetnsError is a ConfigError
        return str(error)
    return None


__all__ = ["NatPlan", "NatSite", "cleanup", "lab_names", "make_plan", "missing", "nat_lab",
           "probe", "router_rules", "setup_commands"]
