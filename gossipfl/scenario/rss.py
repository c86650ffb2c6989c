"""Each node process's resident set over a run (for soaks): sampled by the runner, bounded,
and summed up as a growth between the first and the last quarter.

A node restarted gets a new process (a new pid): its samples go on in the same series, and the
report says where each process's life begins and ends (``rss_lives``). A node's
``rss_growth`` is taken over its longest life (the one with the most samples; the later of
equals): a restart starts from a fresh, small process, so a growth across lives would measure
the restarts, not a leak.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

RSS_SAMPLES = 600  # the most samples a node's series keeps in the report
MIN_GROWTH_SAMPLES = 4  # fewer samples in a life: no growth (a quarter would be empty)


def rss_growth(values: Sequence[float]) -> float | None:
    """mean(last quarter) / mean(first quarter) − 1 over ``values`` in time order (a quarter:
    ``len // 4`` values); None with fewer than :data:`MIN_GROWTH_SAMPLES` values or a first
    quarter of mean 0."""
    quarter = len(values) // 4
    if len(values) < MIN_GROWTH_SAMPLES or quarter == 0:
        return None
    first = math.fsum(values[:quarter]) / quarter
    last = math.fsum(values[-quarter:]) / quarter
    return None if first <= 0 else last / first - 1.0


def thin_evenly(items: Sequence[T], cap: int) -> list[T]:
    """At most ``cap`` of ``items``, evenly spread, the first and the last always kept."""
    if cap < 1:
        raise ValueError("cap must be at least 1")
    n = len(items)
    if n <= cap:
        return list(items)
    if cap == 1:
        return [items[-1]]
    return [items[round(i * (n - 1) / (cap - 1))] for i in range(cap)]


@dataclass
class BoundedSeries:
    """Every ``stride``-th value offered, at most ``2 * cap`` kept: once full, every other
    value goes and the stride doubles, so what is kept stays evenly spaced."""

    cap: int
    stride: int = 1
    offered: int = 0
    items: list[Any] = field(default_factory=list)

    def add(self, item: Any) -> None:
        if self.offered % self.stride == 0:
            self.items.append(item)
            if len(self.items) > 2 * self.cap:
                self.items = self.items[::2]
                self.stride *= 2
        self.offered += 1


def read_rss(pid: int) -> int | None:
    """The resident set of process ``pid`` in bytes; None if it is gone (or a zombie)."""
    import psutil

    try:
        rss = int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None
    return rss or None


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the start
    rss: int  # bytes
    pid: int


class RssSampler:
    """Samples the given processes every ``every`` seconds (``step`` may be called more often);
    ``read``: the reader of a pid's resident set (a test's fake, else :func:`read_rss`)."""

    def __init__(self, every: float, started: float, *, cap: int = RSS_SAMPLES,
                 read: Callable[[int], int | None] = read_rss) -> None:
        self.every = every
        self.started = started
        self.cap = cap
        self.read = read
        self.next_at = started
        self.series: dict[int, BoundedSeries] = {}

    def step(self, now: float, processes: Iterable[tuple[int, int]]) -> None:
        """Sample each (node index, pid) of ``processes`` if a sample is due."""
        if now < self.next_at:
            return
        self.next_at = now + self.every
        for index, pid in processes:
            rss = self.read(pid)
            if rss is not None:
                series = self.series.setdefault(index, BoundedSeries(self.cap))
                series.add(Sample(round(now - self.started, 3), rss, pid))

    def node_section(self, index: int) -> dict[str, Any]:
        """``rss_samples`` ([seconds, bytes], at most ``cap``), ``rss_lives`` (per process:
        pid, first and last sample's seconds, samples, growth) and ``rss_growth`` (the longest
        life's)."""
        samples: list[Sample] = self.series[index].items if index in self.series else []
        lives = split_lives(samples)
        entries = [{"pid": life[0].pid, "from": life[0].seconds, "to": life[-1].seconds,
                    "samples": len(life), "growth": rss_growth([s.rss for s in life])}
                   for life in lives]
        longest = max(range(len(lives)), key=lambda i: (len(lives[i]), i), default=None)
        return {
            "rss_samples": [[s.seconds, s.rss] for s in thin_evenly(samples, self.cap)],
            "rss_lives": entries,
            "rss_growth": None if longest is None else entries[longest]["growth"],
        }


def split_lives(samples: Sequence[Sample]) -> list[list[Sample]]:
    """The samples cut where the pid changes (one list per process life, in order)."""
    lives: list[list[Sample]] = []
    for sample in samples:
        if not lives or lives[-1][-1].pid != sample.pid:
            lives.append([])
        lives[-1].append(sample)
    return lives


def add_rss(report: dict[str, Any], sampler: RssSampler) -> None:
    """Each node's RSS series into ``report["nodes"]``, the largest growth into its
    summary (``max_rss_growth``; None if no node had enough samples)."""
    growths = []
    for entry in report["nodes"]:
        entry.update(sampler.node_section(entry["index"]))
        if entry["rss_growth"] is not None:
            growths.append(entry["rss_growth"])
    report["summary"]["max_rss_growth"] = max(growths, default=None)
    report["rss_sample_seconds"] = sampler.every


__all__ = ["BoundedSeries", "RssSampler", "add_rss", "read_rss", "rss_growth", "split_lives",
           "thin_evenly"]
