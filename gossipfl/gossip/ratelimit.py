"""Per-peer bounds on what a peer may make this node do: a token bucket for incoming streams and
frames, and a cap on the streams it may hold open at once; per node, the bytes of frames in
flight and how often refusals are logged. Pure state, the clock passed in.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class PeerLimiter:
    """``rate`` tokens a second per peer, at most ``burst`` banked; ``max_open`` streams at once.

    At most ``max_peers`` peers are tracked (least recently seen forgotten first), so the limiter's
    own memory is bounded too.
    """

    rate: float
    burst: float
    max_open: int
    max_peers: int = 1024
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _open: dict[str, int] = field(default_factory=dict)

    def allow(self, peer: str, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens of ``peer``'s bucket; False (and nothing spent) if it is empty."""
        bucket = self._buckets.pop(peer, None)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        self._buckets[peer] = bucket
        while len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        if bucket.tokens < cost:
            return False
        bucket.tokens -= cost
        return True

    def open(self, peer: str) -> bool:
        """Count a stream opened by ``peer``; False if it already holds ``max_open``."""
        count = self._open.get(peer, 0)
        if count >= self.max_open:
            return False
        self._open[peer] = count + 1
        return True

    def close(self, peer: str) -> None:
        count = self._open.get(peer, 0) - 1
        if count > 0:
            self._open[peer] = count
        else:
            self._open.pop(peer, None)

    def open_streams(self, peer: str) -> int:
        return self._open.get(peer, 0)


@dataclass
class InFlight:
    """Bytes of frames being read and decoded at once, all peers together.

    A frame's announced length is reserved from its header, before its body is read, and
    released once it is decoded (or refused). ``limit`` bounds everyone; ``stranger_limit`` (at
    most ``limit``) bounds the share of peers that are not certified members, so that fresh
    identities, which cost nothing, can never take the room members' payloads need.
    """

    limit: int
    stranger_limit: int
    held: int = 0
    held_by_strangers: int = 0
    refused: int = 0
    peak: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.stranger_limit <= self.limit:
            raise ValueError("stranger_limit must be in (0, limit]")

    def reserve(self, size: int, *, member: bool) -> bool:
        """Hold ``size`` bytes for one frame; False (nothing held, counted) when over a cap."""
        if self.held + size > self.limit or (
            not member and self.held_by_strangers + size > self.stranger_limit
        ):
            self.refused += 1
            return False
        self.held += size
        if not member:
            self.held_by_strangers += size
        self.peak = max(self.peak, self.held)
        return True

    def release(self, size: int, *, member: bool) -> None:
        self.held -= size
        if not member:
            self.held_by_strangers -= size


@dataclass
class LogGate:
    """When a refusal may be logged: once per ``interval`` per key (a peer, a reason), and at
    most ``max_lines`` lines per interval in all, so that many fresh identities cannot flood the
    log either. Its own memory is bounded (keys older than an interval are forgotten)."""

    interval: float = 1.0
    max_lines: int = 10
    max_keys: int = 1024
    _last: dict[object, float] = field(default_factory=dict)
    _window_start: float = float("-inf")
    _lines: int = 0

    def allow(self, key: object, now: float) -> bool:
        if now - self._window_start >= self.interval:
            self._window_start, self._lines = now, 0
        if self._lines >= self.max_lines:
            return False
        if now - self._last.get(key, float("-inf")) < self.interval:
            return False
        if len(self._last) >= self.max_keys:
            self._last = {k: t for k, t in self._last.items() if now - t < self.interval}
            if len(self._last) >= self.max_keys:
                return False
        self._last[key] = now
        self._lines += 1
        return True
