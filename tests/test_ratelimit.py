"""The per-peer token bucket and open-stream cap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gossipfl.gossip.ratelimit import PeerLimiter


def test_burst_then_rate() -> None:
    limiter = PeerLimiter(rate=10.0, burst=5, max_open=2)
    assert [limiter.allow("a", 0.0) for _ in range(6)] == [True] * 5 + [False]
    assert limiter.allow("b", 0.0)  # buckets are per peer
    assert not limiter.allow("a", 0.05)  # half a token refilled
    assert limiter.allow("a", 0.1)
    assert [limiter.allow("a", 10.0) for _ in range(6)] == [True] * 5 + [False]  # capped


def test_open_stream_cap() -> None:
    limiter = PeerLimiter(rate=1.0, burst=1, max_open=2)
    assert limiter.open("a") and limiter.open("a") and not limiter.open("a")
    assert limiter.open("b")
    limiter.close("a")
    assert limiter.open_streams("a") == 1 and limiter.open("a")


def test_tracked_peers_are_bounded() -> None:
    limiter = PeerLimiter(rate=1.0, burst=1, max_open=1, max_peers=3)
    for i in range(100):
        limiter.allow(f"p{i}", 0.0)
    assert len(limiter._buckets) == 3


@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    limiter = PeerLimiter(rate=20.0, burst=10, max_open=1)
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        allowed += limiter.allow("a", now)
    assert allowed <= 10 + 20.0 * now + 1e-9
