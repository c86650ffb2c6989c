"""Live metrics for Prometheus: each node's own registry, served over HTTP when given a port.

One source of truth: a scrape shows the record the node's last round appended to
``metrics.jsonl`` (:meth:`gossipfl.node.runtime.Node.write_metrics` hands it to
:meth:`NodeMetrics.update`), plus two live values: the node's phase (set as it changes) and
its current resident set (read at the scrape). Each node has its own
:class:`~prometheus_client.CollectorRegistry`, never the process-wide default one: under
``gossipfl simulate`` many nodes share one process (and serve nothing: only a node process,
:func:`gossipfl.node.main.run_node`, starts a server).

Every metric carries the labels ``node`` (the node's index) and ``peer_id``. Values from the
record are the last measured ones: test accuracy and loss from the last evaluated round, train
loss from the last training round, ε from the last training round's record (the metric is
absent when DP is off). Before the first record, ``gossipfl_round`` is -1, the counters 0 and
the measured gauges NaN.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import psutil

from gossipfl.config import check_metrics
from gossipfl.gossip.codes import NodeStatus

if TYPE_CHECKING:  # prometheus_client loads only when a registry is asked for (a metrics port)
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric

log = logging.getLogger("gossipfl.node")

LABELS = ("node", "peer_id")

#: gauge name → (record key, help); the last non-null value of the key is shown
GAUGES: dict[str, tuple[str, str]] = {
    "gossipfl_round": ("round", "the last round the node completed (-1 before its first)"),
    "gossipfl_test_accuracy": ("test_accuracy", "test accuracy at the last evaluated round"),
    "gossipfl_test_loss": ("test_loss", "test loss at the last evaluated round"),
    "gossipfl_train_loss": ("train_loss", "local training loss at the last training round"),
    "gossipfl_disagreement": ("disagreement", "relative distance of the node's model to its "
                                              "neighbours' estimates (+Inf: none held)"),
    "gossipfl_neighbours": ("degree", "neighbours linked at the last round"),
    "gossipfl_peak_rss_bytes": ("peak_rss_bytes", "the process's peak resident set, bytes"),
}
#: counter name (without _total) → (record key, help); the record holds running totals
COUNTERS: dict[str, tuple[str, str]] = {
    "gossipfl_bytes_sent": ("bytes_sent", "application frame bytes sent"),
    "gossipfl_bytes_received": ("bytes_received", "application frame bytes received"),
    "gossipfl_messages_sent": ("messages_sent", "frames sent"),
    "gossipfl_messages_received": ("messages_received", "frames received"),
    "gossipfl_timeouts": ("timeouts", "neighbour waits that ran out"),
}
#: the phases shown (``failed`` is only a process's exit status, never a running node's)
PHASES = tuple(s for s in NodeStatus if s is not NodeStatus.FAILED)
EPSILON = "gossipfl_epsilon"
PHASE = "gossipfl_phase"
REJECTIONS = "gossipfl_rejections"
RSS = "gossipfl_rss_bytes"
#: every metric family a node exposes (counters as scraped, with _total); ε only with DP on
METRIC_NAMES = (*GAUGES, *(f"{c}_total" for c in COUNTERS), EPSILON, PHASE,
                f"{REJECTIONS}_total", RSS)


def current_rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


class NodeMetrics:
    """One node's metrics: a collector over its last record, in a registry of its own.

    :meth:`update` (the node's thread) swaps in a new snapshot; :meth:`collect` (the HTTP
    server's thread) reads the current one, so a scrape never sees half an update.
    """

    def __init__(self, node_index: int, peer_id: str, *, dp: bool = False) -> None:
        self.label_values = [str(node_index), peer_id]
        self.dp = dp
        self._lock = threading.Lock()
        self._values: dict[str, float] = {key: math.nan for key, _ in GAUGES.values()}
        self._values["round"] = -1.0
        self._values.update({key: 0.0 for key, _ in COUNTERS.values()})
        self._values["epsilon"] = 0.0
        self._rejected: dict[str, float] = {}
        self._phase = NodeStatus.JOINING

    @functools.cached_property
    def registry(self) -> CollectorRegistry:
        """The node's own registry, holding this collector; made (and prometheus_client
        imported) on first use, so a node without a metrics port never loads the library."""
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return registry

    def set_phase(self, phase: NodeStatus) -> None:
        self._phase = NodeStatus(phase)

    def update(self, record: Mapping[str, Any]) -> None:
        """Take a round's record (what ``metrics.jsonl`` gets): each value it carries replaces
        the last one; null values (not measured this round) keep it, but a null disagreement
        is +Inf (no neighbour estimate to compare with)."""
        values = dict(self._values)
        keys = [key for key, _ in (*GAUGES.values(), *COUNTERS.values())] + ["epsilon"]
        for key in keys:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
        if "disagreement" in record and record["disagreement"] is None:
            values["disagreement"] = math.inf
        rejected = self._rejected
        if isinstance(record.get("rejected"), Mapping):
            rejected = {str(k): float(v) for k, v in record["rejected"].items()}
        with self._lock:
            self._values, self._rejected = values, rejected

    def collect(self) -> Iterator[Metric]:
        """The families a scrape returns (the Collector protocol of prometheus_client)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        with self._lock:
            values, rejected, phase = self._values, self._rejected, self._phase
        labels = self.label_values
        for name, (key, text) in GAUGES.items():
            gauge = GaugeMetricFamily(name, text, labels=LABELS)
            gauge.add_metric(labels, values[key])
            yield gauge
        for name, (key, text) in COUNTERS.items():
            counter = CounterMetricFamily(name, text, labels=LABELS)
            counter.add_metric(labels, values[key])
            yield counter
        if self.dp:
            epsilon = GaugeMetricFamily(EPSILON, "DP budget spent (ε at the configured δ), as "
                                                 "of the last training round", labels=LABELS)
            epsilon.add_metric(labels, values["epsilon"])
            yield epsilon
        phases = GaugeMetricFamily(PHASE, "1 for the node's current phase, 0 for the others",
                                   labels=(*LABELS, "phase"))
        for state in PHASES:
            phases.add_metric([*labels, state.value], float(state is phase))
        yield phases
        rejections = CounterMetricFamily(REJECTIONS, "inputs dropped, by reason (a reason "
                                                     "appears once counted)",
                                         labels=(*LABELS, "reason"))
        for reason, count in sorted(rejected.items()):
            rejections.add_metric([*labels, reason], count)
        yield rejections
        rss = GaugeMetricFamily(RSS, "the process's resident set now, bytes", labels=LABELS)
        rss.add_metric(labels, float(current_rss_bytes()))
        yield rss


class MetricsServer:
    """Serves a node's registry at ``http://ADDR:PORT/metrics`` once the node listens.

    Given to :meth:`gossipfl.node.runtime.Node.run` as its ``task_status``: the server starts
    when the node has bound its own listen addresses (so a metrics port can never take a port
    meant for the node's transport) and stops when the ``with`` block ends. A port that cannot
    be bound (in use, not allowed) is logged and the node runs on without metrics. Port 0
    serves nothing; a port outside 0-65535 or an address that is not an IP address is a
    ConfigError.
    """

    def __init__(self, metrics: NodeMetrics, port: int, addr: str = "127.0.0.1") -> None:
        check_metrics(port, addr)
        self.metrics = metrics
        self.port = port
        self.addr = addr
        self.server: Any = None
        self.thread: threading.Thread | None = None

    def started(self, value: object = None) -> None:
        if not self.port or self.server is not None:
            return
        from prometheus_client import start_http_server  # only with a metrics port

        try:
            self.server, self.thread = start_http_server(self.port, addr=self.addr,
                                                         registry=self.metrics.registry)
        except OSError as error:
            log.error("metrics: cannot serve on %s port %d (%s); the node runs on without "
                      "metrics", self.addr, self.port, error.strerror or error)
            return
        log.info("metrics: serving Prometheus metrics at http://%s:%d/metrics", self.addr,
                 self.port)

    def close(self) -> None:
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        if self.thread is not None:
            self.thread.join(timeout=5.0)
        self.server = self.thread = None

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["METRIC_NAMES", "PHASES", "MetricsServer", "NodeMetrics", "current_rss_bytes"]
