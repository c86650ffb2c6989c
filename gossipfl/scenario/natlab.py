"""Real NAT on one machine: private hosts behind their own NAT routers, and a public segment.

Layout of one lab (``TAG``: random hex, so two labs never share a name)::

    netns gfl-nat-TAG-hub:    bridge br0 (the "internet"), one veth end per public host/router
    netns gfl-nat-TAG-pub:    eth0 198.18.0.1/24 (a public host: relay, bootstrap, prober)
    netns gfl-nat-TAG-rI:     wan 198.18.0.(10+I)/24, lan 10.66.I.1/24; ip_forward=1;
                              MASQUERADE of 10.66.I.0/24 out of wan; wan->lan forwarding only
                              for connections the private side opened (conntrack), the rest dropped
    netns gfl-nat-TAG-pI:     eth0 10.66.I.2/24, default route via 10.66.I.1 (a private host)
    netns gfl-nat-TAG-pI-K:   eth0 10.66.I.(2+K)/24: the site's further hosts (``hosts``), each
                              on a veth whose router end hK sits on a bridge ``lan`` (the
                              router's LAN address then lives on the bridge)
    netns gfl-nat-TAG-pubK:   eth0 198.18.0.(1+K)/24: further public hosts (``publics``)

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
MAX_SITE_HOSTS = 200  # private hosts on one site's LAN
MAX_PUBLICS = ROUTER_BASE - PUBLIC_HOST  # public hosts below the routers' addresses
WAN = "wan"
LAN = "lan"


@dataclass(frozen=True)
class NatSite:
    """A private site behind its own NAT router: one host (``host``), or several (``hosts``,
    the first being ``host``) on the site's LAN."""

    index: int
    router: str  # namespace of the NAT router
    host: str  # namespace of the private host
    wan_ip: str  # the router's public address (what the far end sees)
    lan_ip: str  # the router's private address (the host's gateway)
    host_ip: str  # the private host's address
    subnet: str  # the site's private subnet
    hosts: tuple[str, ...] = ()  # every host's namespace (default: ``host`` alone)
    host_ips: tuple[str, ...] = ()  # every host's address (default: ``host_ip`` alone)

    def __post_init__(self) -> None:
        if not self.hosts:
            object.__setattr__(self, "hosts", (self.host,))
            object.__setattr__(self, "host_ips", (self.host_ip,))


@dataclass(frozen=True)
class NatPlan:
    """Every name and address of one lab."""

    tag: str
    sites: tuple[NatSite, ...]
    drop_unsolicited: bool = True  # see :func:`router_rules`
    random_ports: bool = False  # see :func:`router_rules`
    publics: int = 1  # public hosts on the hub (relays, bootstrap nodes)

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
    def public_hosts(self) -> tuple[str, ...]:
        """Every public host's namespace (the first is :attr:`public`)."""
        return (self.public, *(f"{self.prefix}pub{k}" for k in range(1, self.publics)))

    @property
    def public_ips(self) -> tuple[str, ...]:
        return tuple(str(PUBLIC_SUBNET.network_address + PUBLIC_HOST + k)
                     for k in range(self.publics))

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, hub last."""
        names = list(self.public_hosts)
        for site in self.sites:
            names += [*site.hosts, site.router]
        return [*names, self.hub]


def make_plan(sites: int, tag: str | None = None, *, drop_unsolicited: bool = True,
              hosts: Sequence[int] | None = None, publics: int = 1,
              random_ports: bool = False) -> NatPlan:
    """A lab with ``sites`` private sites, each behind its own NAT router, with ``hosts[I]``
    private hosts at site I (default one each), and ``publics`` public hosts."""
    if not 1 <= sites <= MAX_SITES:
        raise ConfigError(f"natlab: sites must be 1..{MAX_SITES}, not {sites}")
    counts = [1] * sites if hosts is None else list(hosts)
    if len(counts) != sites or not all(1 <= n <= MAX_SITE_HOSTS for n in counts):
        raise ConfigError(f"natlab: hosts must give each of the {sites} sites 1.."
                          f"{MAX_SITE_HOSTS} hosts, not {counts}")
    if not 1 <= publics <= MAX_PUBLICS:
        raise ConfigError(f"natlab: publics must be 1..{MAX_PUBLICS}, not {publics}")
    tag = tag if tag is not None else secrets.token_hex(4)
    if not tag.isalnum() or len(tag) > 12:
        raise ConfigError(f"natlab: tag must be up to 12 letters or digits, not {tag!r}")
    prefix = f"{PREFIX}{tag}-"
    made = []
    for i in range(sites):
        subnet = list(PRIVATE_BASE.subnets(new_prefix=24))[i]
        names = tuple(f"{prefix}p{i}" + (f"-{k}" if k else "") for k in range(counts[i]))
        ips = tuple(str(subnet.network_address + 2 + k) for k in range(counts[i]))
        made.append(NatSite(
            index=i, router=f"{prefix}r{i}", host=names[0],
            wan_ip=str(PUBLIC_SUBNET.network_address + ROUTER_BASE + i),
            lan_ip=str(subnet.network_address + 1), host_ip=ips[0],
            subnet=str(subnet), hosts=names, host_ips=ips))
    return NatPlan(tag=tag, sites=tuple(made), drop_unsolicited=drop_unsolicited,
                   publics=publics, random_ports=random_ports)


def _in(namespace: str, *command: str) -> list[str]:
    return [*exec_prefix(namespace), *command]


def router_rules(site: NatSite, drop_unsolicited: bool = True,
                 random_ports: bool = False) -> list[list[str]]:
    """The router's NAT: masquerade the site out of wan; let in from wan only what belongs to a
    connection the site opened; drop the rest (no port forward, no unsolicited inbound).

    ``drop_unsolicited``: a packet from wan to the router itself that belongs to no connection is
    dropped (a "stealth" router, like most home and office NATs); else the router's kernel
    answers it, so an unsolicited TCP SYN gets a reset (connection refused). Hole punching
    gets through either kind when the two peers' SYNs cross in flight, and through a
    resetting one only then: which happens first is a race.

    ``random_ports``: every connection out gets a random public port (``--random-fully``; an
    address- and port-dependent mapping, a "symmetric" NAT), so the port the relay observed is
    not the one a punch leaves from and no hole punch can succeed."""
    ipt = ["iptables", "-w", "5"]
    rules = [
        _in(site.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"),
        _in(site.router, *ipt, "-t", "nat", "-A", "POSTROUTING", "-s", site.subnet, "-o", WAN,
            "-j", "MASQUERADE", *(["--random-fully"] if random_ports else [])),
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
    hub = plan.hub
    commands = [["ip", "netns", "add", hub],
                ["ip", "-n", hub, "link", "add", BRIDGE, "type", "bridge"],
                ["ip", "-n", hub, "link", "set", BRIDGE, "up"]]
    for k, (pub, ip) in enumerate(zip(plan.public_hosts, plan.public_ips, strict=True)):
        commands += _public_commands(hub, pub, "pub" if k == 0 else f"pub{k}", ip)
    for site in plan.sites:
        commands += _site_commands(hub, site, plan.drop_unsolicited, plan.random_ports)
    return commands


def _public_commands(hub: str, pub: str, leg: str, ip: str) -> list[list[str]]:
    plen = PUBLIC_SUBNET.prefixlen
    return [["ip", "netns", "add", pub],
            ["ip", "-n", hub, "link", "add", leg, "type", "veth", "peer", "name",
             NODE_IFACE, "netns", pub],
            ["ip", "-n", hub, "link", "set", leg, "master", BRIDGE],
            ["ip", "-n", hub, "link", "set", leg, "up"],
            ["ip", "-n", pub, "addr", "add", f"{ip}/{plen}", "dev", NODE_IFACE],
            ["ip", "-n", pub, "link", "set", NODE_IFACE, "up"],
            ["ip", "-n", pub, "link", "set", "lo", "up"]]


def _site_commands(hub: str, site: NatSite, drop_unsolicited: bool,
                   random_ports: bool) -> list[list[str]]:
    """The router (wan leg on the hub) and the site's hosts: one on a veth straight to the
    router's ``lan``; several each on a veth whose router end sits on a bridge ``lan``."""
    r, leg = site.router, f"w{site.index}"
    plen = PUBLIC_SUBNET.prefixlen
    splen = ipaddress.IPv4Network(site.subnet).prefixlen
    commands = [
        ["ip", "netns", "add", r],
        ["ip", "-n", hub, "link", "add", leg, "type", "veth", "peer", "name", WAN, "netns", r],
        ["ip", "-n", hub, "link", "set", leg, "master", BRIDGE],
        ["ip", "-n", hub, "link", "set", leg, "up"],
        ["ip", "-n", r, "addr", "add", f"{site.wan_ip}/{plen}", "dev", WAN],
        ["ip", "-n", r, "link", "set", WAN, "up"],
        ["ip", "-n", r, "link", "set", "lo", "up"],
    ]
    bridged = len(site.hosts) > 1
    if bridged:
        commands.append(["ip", "-n", r, "link", "add", LAN, "type", "bridge"])
    for k, (h, ip) in enumerate(zip(site.hosts, site.host_ips, strict=True)):
        end = f"h{k}" if bridged else LAN
        commands += [["ip", "netns", "add", h],
                     ["ip", "-n", r, "link", "add", end, "type", "veth", "peer", "name",
                      NODE_IFACE, "netns", h]]
        if bridged:
            commands += [["ip", "-n", r, "link", "set", end, "master", LAN],
                         ["ip", "-n", r, "link", "set", end, "up"]]
        else:
            commands += [["ip", "-n", r, "addr", "add", f"{site.lan_ip}/{splen}", "dev", LAN],
                         ["ip", "-n", r, "link", "set", LAN, "up"]]
        commands += [["ip", "-n", h, "addr", "add", f"{ip}/{splen}", "dev", NODE_IFACE],
                     ["ip", "-n", h, "link", "set", NODE_IFACE, "up"],
                     ["ip", "-n", h, "link", "set", "lo", "up"],
                     ["ip", "-n", h, "route", "add", "default", "via", site.lan_ip]]
    if bridged:
        commands += [["ip", "-n", r, "addr", "add", f"{site.lan_ip}/{splen}", "dev", LAN],
                     ["ip", "-n", r, "link", "set", LAN, "up"]]
    return [*commands, *router_rules(site, drop_unsolicited, random_ports)]


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
            hosts: Sequence[int] | None = None, publics: int = 1,
            random_ports: bool = False, run: Runner = run_command,
            check: Callable[[], list[str]] | None = None) -> Iterator[NatPlan]:
    """Build a lab with ``sites`` NATed private hosts and one public host; delete it all when
    the block ends, however it ends. ConfigError (naming what is missing) without root,
    ``ip`` or ``iptables``; NetnsError (the command and what it said) if a step fails."""
    lacks = (check or missing)()
    if lacks:
        raise ConfigError(f"natlab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 and "
                          f"iptables; missing: {', '.join(lacks)}")
    plan = make_plan(sites, tag, drop_unsolicited=drop_unsolicited, hosts=hosts,
                     publics=publics, random_ports=random_ports)
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
