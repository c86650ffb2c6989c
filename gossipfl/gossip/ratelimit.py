"""Per-peer bounds on what a peer may make this node do: a token bucket for incoming streams and
frames, and a cap on the streams it may hold open at once. Pure state, the clock passed in.
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
