"""The ``[relay]`` section of a node's configuration: circuit relay v2 (py-libp2p's
``libp2p.relay.circuit_v2``), as :mod:`gossipfl.gossip.circuit` runs it.

* ``serve = true``: this node relays for others (the HOP role), within the limits below. Peers
  must be able to dial it, so it needs a ``listen`` address with a concrete IP (a host listening
  on ``0.0.0.0`` advertises ``/ip4/0.0.0.0``, which no one can dial).
* ``reachable = "private"``: this node cannot be dialled (behind a NAT or a firewall). It
  reserves a slot on a relay (those in ``use``, else the bootstrap list's nodes) and announces
  only its relayed addresses, ``<relay>/p2p-circuit/p2p/<self>``, in its signed liveness stamp;
  members dial it there. ``"public"`` (the default): it announces where it listens.
  ``"auto"``: it asks the relays it would use (``use``, else the bootstrap list's nodes) to dial
  it back (:mod:`gossipfl.gossip.dialback`) and is public if one such connection arrives, else
  private.

* ``announce_listen = true`` (private or auto): announce the addresses it listens on too, before
  the relayed ones: peers on its own LAN (a site's other hosts) dial it there
  directly; a peer elsewhere fails on them (its network has no route there, or a wrong host
  answers and Noise refuses its peer id) and dials the relayed addresses next.

* ``hole_punch = true``: DCUtR (py-libp2p's ``dcutr.py``) runs beside: a relayed link to a
  peer that runs it too is upgraded to a direct connection where both NATs allow it (they keep
  the source port and drop unsolicited packets); elsewhere the link stays relayed.

Any node can dial a relayed address (a node with no relay role makes a dialer when it first
needs one).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import multiaddr

from gossipfl.config_io import ConfigError

MAX_RELAYS = 8  # relays a private node reserves on (at most)


class Reachability(StrEnum):
    """Whether peers can dial this node at the addresses it listens on (``relay.reachable``)."""

    PUBLIC = "public"  # announces its listen addresses
    PRIVATE = "private"  # behind NAT: reserves on relays, announces the relayed addresses
    AUTO = "auto"  # asks its peers to dial it back (gossip/dialback.py): then one of those


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class RelayConfig:
    serve: bool = False  # relay circuits for other members (HOP)
    reservations: int = 64  # serve: reservations held at once
    circuits_per_peer: int = 16  # serve: open circuits to one reserved peer
    circuit_bytes: int = 1 << 30  # serve: bytes one circuit carries, both ways together
    circuit_seconds: int = 3600  # serve: lifetime of one circuit (checked when data arrives)
    reservation_seconds: int = 3600  # serve: a reservation's validity (refreshed by its holder)
    reachable: Reachability = Reachability.PUBLIC
    use: tuple[str, ...] = ()  # relays to reserve on (/ip4/IP/tcp/PORT/p2p/ID); else bootstrap
    check_seconds: float = 5.0  # private: how often the link to each relay is checked
    hole_punch: bool = False  # DCUtR: upgrade relayed links to direct ones (both ends need it)
    announce_listen: bool = False  # private: announce the listen addresses too (LAN peers)

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "reachable", Reachability(self.reachable))
        except ValueError:
            raise ConfigError(f"relay.reachable must be \"public\", \"private\" or \"auto\", "
                              f"not {self.reachable!r}") from None
        for name in ("reservations", "circuits_per_peer", "circuit_bytes", "circuit_seconds",
                     "reservation_seconds"):
            value = getattr(self, name)
            _require(not isinstance(value, bool) and isinstance(value, int) and value >= 1,
                     f"relay.{name} must be a positive integer, not {value!r}")
        _require(self.circuit_bytes >= 64 * 1024,
                 f"relay.circuit_bytes must be at least 65536 (a circuit carries whole model "
                 f"frames), not {self.circuit_bytes}")
        _require(self.check_seconds > 0, "relay.check_seconds must be positive")
        _require(len(self.use) <= MAX_RELAYS, f"relay.use names at most {MAX_RELAYS} relays")
        for addr in self.use:
            relay_address(addr, "relay.use")
        _require(not self.announce_listen or self.reachable is not Reachability.PUBLIC,
                 "relay.announce_listen is for a private node (a public one announces where "
                 "it listens anyway)")
        _require(not (self.serve and self.reachable is not Reachability.PUBLIC),
                 "relay.serve needs a node that can be dialled: relay.reachable = \"public\"")

    @property
    def private(self) -> bool:
        return self.reachable is Reachability.PRIVATE

    @property
    def may_be_private(self) -> bool:
        """Private, or to be found out (``auto``): needs relays to reserve on."""
        return self.reachable is not Reachability.PUBLIC


def relay_address(addr: str, where: str) -> tuple[str, str]:
    """(relay peer id, its address) from ``/ip4/IP/tcp/PORT/p2p/ID``: a relay is dialled
    directly, so no ``/p2p-circuit`` part, and a concrete IP. ConfigError naming ``where``."""
    try:
        maddr = multiaddr.Multiaddr(addr)
        names = [p.name for p in maddr.protocols()]
        peer = maddr.value_for_protocol("p2p") if "p2p" in names else ""
    except Exception:
        raise ConfigError(f"{where}: {addr!r} is not a multiaddr") from None
    _require("p2p-circuit" not in names,
             f"{where}: {addr!r} is a relayed address; name the relay itself")
    _require("tcp" in names and bool(peer),
             f"{where}: {addr!r} must be /ip4/IP/tcp/PORT/p2p/PEER_ID (the relay's peer id)")
    host = _ip_of(maddr, names)
    _require(host is None or not ipaddress.ip_address(host).is_unspecified,
             f"{where}: {addr!r} names an unspecified address ({host}), which no one can dial")
    return str(peer), addr


def _ip_of(maddr: multiaddr.Multiaddr, names: Sequence[str]) -> str | None:
    for proto in ("ip4", "ip6"):
        if proto in names:
            return str(maddr.value_for_protocol(proto))
    return None


def concrete_listen(listen: Sequence[str]) -> bool:
    """Whether some listen address names a concrete IP (not 0.0.0.0 or ::)."""
    for addr in listen:
        try:
            maddr = multiaddr.Multiaddr(addr)
            host = _ip_of(maddr, [p.name for p in maddr.protocols()])
        except Exception:
            continue
        if host is not None and not ipaddress.ip_address(host).is_unspecified:
            return True
    return False


def relay_candidates(relay: RelayConfig, bootstrap: Sequence[str]) -> list[tuple[str, str]]:
    """The relays a private node reserves on: ``relay.use``, else the bootstrap list's nodes
    (one that does not serve relay v2 refuses the reservation; the node tries the next)."""
    named = relay.use or tuple(bootstrap)
    found: list[tuple[str, str]] = []
    for addr in named[:MAX_RELAYS]:
        try:
            found.append(relay_address(addr, "relay"))
        except ConfigError:
            continue
    return found


def check_relay(relay: RelayConfig, listen: Sequence[str], bootstrap: Sequence[str]) -> None:
    """The rules that span sections (called by NodeConfig once)."""
    _require(not relay.serve or concrete_listen(listen),
             "relay.serve: peers must dial this node, so listen needs a concrete IP address "
             "(e.g. /ip4/198.18.0.1/tcp/4001), not only 0.0.0.0 or ::")
    _require(not relay.hole_punch or concrete_listen(listen),
             "relay.hole_punch: DCUtR advertises the addresses this node listens on when no "
             "relay has observed it, so listen needs a concrete IP address, not only 0.0.0.0 "
             "or ::")
    _require(not relay.may_be_private or bool(relay_candidates(relay, bootstrap)),
             f"relay.reachable = \"{relay.reachable.value}\" needs a relay (and, for auto, a "
             "peer to dial it back): name one in relay.use or in "
             "bootstrap (/ip4/IP/tcp/PORT/p2p/PEER_ID)")


__all__ = ["MAX_RELAYS", "Reachability", "RelayConfig", "check_relay", "concrete_listen",
           "relay_address", "relay_candidates"]
