"""Start one node process: logging, identity, data, then the trio event loop."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gossipfl.config import NodeConfig
from gossipfl.gossip.codes import NodeStatus

if TYPE_CHECKING:
    from gossipfl.node.learner import LearnerPool as Pool

log = logging.getLogger("gossipfl.node")


class RefusedHandshakes(logging.Filter):
    """Turn py-libp2p's debug note of a failed inbound security handshake into a warning.

    Our host offers Noise only, so a peer that speaks plaintext (or secio, or TLS) fails the
    handshake inside py-libp2p, which notes it at DEBUG. Every other debug record of that logger
    is dropped here; warnings and errors pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        message = record.getMessage()
        if not message.startswith("failed to upgrade security"):
            return False
        record.msg = "refused a connection: %s (only Noise is accepted; plaintext is never)"
        record.args = (message,)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.name = "gossipfl.security"
        return True


def configure_logging(out_dir: Path, name: str, level: str = "INFO") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter(
        f"%(asctime)s.%(msecs)03d %(levelname)s [{name}] %(name)s: %(message)s", "%H:%M:%S"
    )
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level)
    file_handler = logging.FileHandler(out_dir / "node.log")
    file_handler.setFormatter(fmt)
    root.addHandler(file_handler)
    stream_handler = logging.StreamHandler(sys.stderr)
    stream_handler.setFormatter(fmt)
    stream_handler.setLevel(logging.WARNING)
    root.addHandler(stream_handler)
    # py-libp2p is chatty at INFO; keep its warnings (failed handshakes, refused security).
    for noisy in ("libp2p", "multiaddr", "async_service", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # py-libp2p detaches its loggers (propagate off, no handler) unless LIBP2P_DEBUG is set, so
    # its warnings would bypass node.log; route them through ours.
    logging.getLogger("libp2p").propagate = True
    swarm = logging.getLogger("libp2p.network.swarm")
    swarm.setLevel(logging.DEBUG)
    swarm.addFilter(RefusedHandshakes())


def run_node(config: NodeConfig, log_level: str = "INFO",
             compile_cache: str | None = None, data: Pool | None = None) -> int:
    """Run a node to its end (``compile_cache``: the machine's folder of compiled steps, see
    :mod:`gossipfl.node.compile_cache`; ``data``: its data set and partition, loaded by the
    launcher before it forked). Exit code 0: done or stopped by a signal; 2: cannot go on."""
    import trio

    from gossipfl.crypto.identity import IdentityError, load_or_create_identity

    out = Path(config.out_dir)
    try:
        identity, created = load_or_create_identity(config.key_file)
    except IdentityError as error:
        print(f"gossipfl node: {error}", file=sys.stderr)
        return 2
    configure_logging(out, f"node {config.node_index} {str(identity.peer_id)[-8:]}", log_level)
    log.info("identity %s (%s key file %s)", identity.peer_id,
             "created" if created else "loaded", config.key_file)

    from gossipfl.gossip.circuit import CircuitError
    from gossipfl.node.compile_cache import node_executables
    from gossipfl.node.learner import LearnerPool, LocalLearner
    from gossipfl.node.runtime import Node, NodeError
    from gossipfl.node.security import SecurityError

    try:
        if data is None and compile_cache is not None:  # a generated data set kept there
            data = LearnerPool(data_cache=compile_cache)
        learner = LocalLearner(config, pool=data, executables=node_executables(compile_cache))
    except ValueError as error:  # the data: a missing or malformed file, a bad split
        log.error("data: %s", error)
        print(f"gossipfl node: data: {error}", file=sys.stderr)
        return 2
    log.info("data: %s, partition %s: %d training examples; model %s with %d parameters",
             config.data.dataset, config.data.partition, len(learner.y), config.model.name,
             learner.size)
    from gossipfl.node.compression import mixing_warnings

    for warning in mixing_warnings(config.compression.kind, config.protocol.gamma, config.train,
                                   config.topology):
        log.warning("%s", warning)
    from gossipfl.adversary.factory import make_role
    from gossipfl.node.phases import thread_sched

    try:
        node = Node(config, identity, learner, make_role(config.adversary), sched=thread_sched)
    except SecurityError as error:
        log.error("%s", error)
        return 2
    from gossipfl.node.prom import MetricsServer

    status = NodeStatus.STOPPED
    # metrics_port: served from the moment the node listens (task_status.started) to its exit
    try:
        with MetricsServer(node.prom, config.metrics_port, config.metrics_addr) as metrics:
            status = NodeStatus(trio.run(functools.partial(node.run, task_status=metrics)))
    except* (NodeError, CircuitError) as group:  # raised in the node's nursery: grouped
        for error in _leaves(group):
            log.error("%s", error)
        status = NodeStatus.FAILED
    log.info("exit: %s (pid %d)", status, os.getpid())
    return 2 if status is NodeStatus.FAILED else 0


def _leaves(error: BaseException) -> list[BaseException]:
    """The errors in ``error``, groups (nurseries nest them) opened."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
