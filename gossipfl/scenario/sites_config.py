"""``[[sites]]`` and ``[public]``: a scenario whose nodes sit at private sites behind real NAT,
with relays on a public segment (see :mod:`gossipfl.scenario.sites`, which builds it with
:mod:`gossipfl.scenario.natlab`).

```toml
[[sites]]              # one entry per site: its own private subnet 10.66.I.0/24 behind a NAT
name = "hospital-a"    # optional (letters, digits, - and _; at most 16)
nodes = 2              # training nodes on the site's LAN: 10.66.I.2, 10.66.I.3, ...

[public]               # the public segment 198.18.0.0/24
relays = 1             # relay/bootstrap processes (not members: they train nothing), each on its
                       # own public host 198.18.0.(1+K), port 4001
hole_punch = true      # the nodes run DCUtR: relayed links upgraded where both NATs allow
reachable = "private"  # the nodes are told they cannot be dialled; "auto": they find out, by
                       # asking the relays to dial them back (gossipfl/gossip/dialback.py)
drop_unsolicited = true  # routers drop unsolicited packets (true) or reset them (false)
random_ports = false   # routers give each connection a random public port ("symmetric" NAT:
                       # no hole punch can succeed, every cross-site link stays relayed)
circuit_bytes = 1073741824  # what one circuit may carry, both ways together

[[public.faults]]      # a relay taken down mid-run (the nodes must re-link without it)
relay = 0
kind = "kill"          # SIGKILL; "terminate": SIGTERM; "tamper": it stays up but flips a bit
                       # in every chunk it relays; "drop": it stays up, forwards nothing
at_round = 10          # once the furthest node finished this round (or at_seconds after start)
```

A tampering or dropping relay carries only ciphertext (Noise between the two nodes, the sealed
envelope inside): what it achieves is a broken link, which the nodes re-make elsewhere
(:mod:`gossipfl.scenario.relay_misbehave`).

Nodes are numbered site by site, in the order of ``[[sites]]``; their total must be the
scenario's ``nodes``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gossipfl.config_io import ConfigError

SITE_NAME = re.compile(r"^[A-Za-z0-9_-]{0,16}$")
MAX_SITES = 200  # natlab's limit (10.66.I.0/24, I < 200)
MAX_SITE_NODES = 200  # natlab's hosts per site
MAX_RELAYS = 8  # relays a private node reserves on (relay_config.MAX_RELAYS)


class RelayFaultKind(StrEnum):
    """What a relay fault does to the relay's process."""

    KILL = "kill"  # SIGKILL: a crash, its circuits and reservations gone at once
    TERMINATE = "terminate"  # SIGTERM: it stops (here: at once too, it holds no state)
    TAMPER = "tamper"  # it stays up and flips a bit in every chunk it relays
    DROP = "drop"  # it stays up, keeps every connection open and forwards nothing

    @property
    def misbehaves(self) -> bool:
        """Whether the relay stays up (tamper, drop) rather than going down."""
        return self in (RelayFaultKind.TAMPER, RelayFaultKind.DROP)


@dataclass(frozen=True)
class SiteConfig:
    """One private site: ``nodes`` hosts on a LAN behind its own NAT router."""

    nodes: int = 2
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.nodes, bool) or not isinstance(self.nodes, int) or \
                not 1 <= self.nodes <= MAX_SITE_NODES:
            raise ConfigError(f"sites.nodes must be 1..{MAX_SITE_NODES}, not {self.nodes!r}")
        if not isinstance(self.name, str) or not SITE_NAME.match(self.name):
            raise ConfigError(f"sites.name {self.name!r}: at most 16 letters, digits, - or _")


@dataclass(frozen=True)
class RelayFaultConfig:
    """Take relay ``relay`` down (or make it tamper or drop) once the furthest node finished
    round ``at_round``, or ``at_seconds`` after the nodes were started (exactly one of the
    two)."""

    relay: int = 0
    kind: RelayFaultKind = RelayFaultKind.KILL
    at_round: int | None = None
    at_seconds: float | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", RelayFaultKind(self.kind))
        except ValueError:
            raise ConfigError(f"public.faults.kind must be one of "
                              f"{[k.value for k in RelayFaultKind]}, not {self.kind!r}") from None
        if self.relay < 0:
            raise ConfigError("public.faults.relay must be >= 0")
        if (self.at_round is None) == (self.at_seconds is None):
            raise ConfigError("public.faults: give exactly one of at_round and at_seconds")
        if (self.at_round or 0) < 0 or (self.at_seconds or 0.0) < 0:
            raise ConfigError("public.faults.at_round and at_seconds must be >= 0")

    def due(self, max_round: int, seconds: float) -> bool:
        if self.at_round is not None:
            return max_round >= self.at_round
        return seconds >= (self.at_seconds or 0.0)


@dataclass(frozen=True)
class PublicConfig:
    """The public segment: ``relays`` relay/bootstrap processes, one per public host."""

    relays: int = 1
    hole_punch: bool = True
    reachable: str = "private"
    drop_unsolicited: bool = True
    random_ports: bool = False
    circuit_bytes: int = 1 << 30
    faults: tuple[RelayFaultConfig, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.relays, bool) or not 1 <= self.relays <= MAX_RELAYS:
            raise ConfigError(f"public.relays must be 1..{MAX_RELAYS}, not {self.relays!r}")
        if self.reachable not in ("private", "auto"):
            raise ConfigError(f"public.reachable must be \"private\" or \"auto\", not "
                              f"{self.reachable!r}")
        if self.circuit_bytes < 64 * 1024:
            raise ConfigError("public.circuit_bytes must be at least 65536 (a circuit carries "
                              "whole model frames)")
        hit = [f.relay for f in self.faults]
        for relay in hit:
            if relay >= self.relays:
                raise ConfigError(f"public.faults names relay {relay}; there are {self.relays} "
                                  f"(0..{self.relays - 1})")
        if len(set(hit)) != len(hit):
            raise ConfigError("public.faults names a relay twice")
        if hit and len(set(hit)) >= self.relays:
            raise ConfigError("public.faults takes down (or makes misbehave) every relay: at "
                              "least one must stay faithful (the private nodes reach other "
                              "sites only through a relay)")


def check_sites(sites: Sequence[SiteConfig], public: PublicConfig, *, nodes: int,
                namespaces: bool, links: bool, partitions: bool) -> None:
    """The rules that span the scenario (called by ScenarioConfig once)."""
    if not sites:
        if public != PublicConfig():
            raise ConfigError("[public] describes the relays of [[sites]]: give [[sites]] too")
        return
    if len(sites) > MAX_SITES:
        raise ConfigError(f"sites: at most {MAX_SITES} sites, not {len(sites)}")
    total = sum(s.nodes for s in sites)
    if total != nodes:
        raise ConfigError(f"[[sites]] hold {total} nodes "
                          f"({' + '.join(str(s.nodes) for s in sites)}); the scenario has "
                          f"nodes = {nodes}: they must match (node i sits at the site its "
                          f"index falls in, in the order of [[sites]])")
    names = [s.name for s in sites if s.name]
    if len(set(names)) != len(names):
        raise ConfigError("sites: two sites share a name")
    if namespaces:
        raise ConfigError("[[sites]] and [namespaces] both place the nodes in network "
                          "namespaces: give one of them (sites: behind NAT routers; "
                          "namespaces: one flat bridge)")
    if links or partitions:
        raise ConfigError("[[sites]] cannot be combined with [[links]] or [[partitions]] "
                          "(their relays and cuts assume loopback or [namespaces]); a relay "
                          "going down is a [[public.faults]] entry")


def site_of(sites: Sequence[SiteConfig]) -> list[tuple[int, int]]:
    """Per node index: (its site, its host number on that site's LAN)."""
    return [(i, k) for i, site in enumerate(sites) for k in range(site.nodes)]


__all__ = ["PublicConfig", "RelayFaultConfig", "RelayFaultKind", "SiteConfig", "check_sites",
           "site_of"]
