"""A public relay that misbehaves, for ``[[public.faults]]`` entries of kind ``tamper`` or
``drop`` (:mod:`gossipfl.scenario.sites_config`).

The relay is py-libp2p's circuit relay v2 as every relay runs it
(:class:`gossipfl.gossip.circuit.CountingRelay`), changed only where it forwards a circuit's
bytes from one end to the other (its ``_read_stream_with_retry``, which the relaying loop calls
for every chunk). Until :meth:`MisbehavingRelay.misbehave` is called it relays faithfully; after:

* ``tamper``: it flips one bit (the last byte's lowest) of every chunk it forwards, both ways,
  on every circuit, old and new;
* ``drop``: it reads every chunk and forwards none, keeping the circuits and the connections
  to both ends open (a black hole: the senders' writes succeed, nothing arrives).

What it carries is ciphertext: each circuit holds a Noise session between the two nodes (and
their model frames inside it are sealed envelopes besides), so a flipped bit fails Noise's
authentication at the far end, and silence ends in that end's timeout: either way a broken
link, never a changed model. The relay_node process switches it on at SIGUSR1 (the runner
sends it when the fault is due) and reports the counts in its ``relay.json``.
"""

from __future__ import annotations

import logging
import time
from enum import StrEnum
from typing import Any

from libp2p.abc import INetStream

from gossipfl.gossip.circuit import CountingRelay

log = logging.getLogger("gossipfl.relay_node")


class Misbehaviour(StrEnum):
    """What a misbehaving relay does to the bytes it relays, once switched on."""

    TAMPER = "tamper"  # flip a bit in every chunk
    DROP = "drop"  # forward nothing, keep every connection open


def tampered(chunk: bytes) -> bytes:
    """``chunk`` with the lowest bit of its last byte flipped (empty stays empty)."""
    if not chunk:
        return chunk
    return chunk[:-1] + bytes([chunk[-1] ^ 0x01])


class MisbehavingRelay(CountingRelay):
    """A counting relay that tampers with or drops what it relays once :meth:`misbehave` is
    called (``mode`` says which; None: never)."""

    mode: Misbehaviour | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.since: float | None = None  # time.time() when it started misbehaving
        self.tampered_chunks = 0
        self.dropped_chunks = 0
        self.dropped_bytes = 0

    def misbehave(self) -> None:
        """From now on, tamper or drop (as ``mode`` says)."""
        if self.mode is None or self.since is not None:
            return
        self.since = time.time()
        log.warning("relay: misbehaving from now on: %s", self.mode.value)

    async def _read_stream_with_retry(self, stream: INetStream,
                                      max_retries: int = 3) -> bytes | None:
        while True:
            data = await super()._read_stream_with_retry(stream, max_retries)
            if not data or self.since is None:
                return data
            if self.mode is Misbehaviour.TAMPER:
                self.tampered_chunks += 1
                return tampered(data)
            self.dropped_chunks += 1  # DROP: read on, forward nothing
            self.dropped_bytes += len(data)

    def misbehaviour(self) -> dict[str, Any]:
        """Its part of relay.json."""
        return {"misbehave": self.mode.value if self.mode else None,
                "misbehaving_since": self.since, "tampered_chunks": self.tampered_chunks,
                "dropped_chunks": self.dropped_chunks, "dropped_bytes": self.dropped_bytes}


def relay_class(mode: Misbehaviour | None) -> type[CountingRelay]:
    """The relay protocol class for a relay process: a misbehaving one set to ``mode``, or the
    plain counting relay."""
    if mode is None:
        return CountingRelay
    return type("MisbehavingRelay", (MisbehavingRelay,), {"mode": Misbehaviour(mode)})


__all__ = ["MisbehavingRelay", "Misbehaviour", "relay_class", "tampered"]
