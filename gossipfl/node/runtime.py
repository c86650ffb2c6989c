"""One gossipfl node: the composition root of its transport, its state and its protocols.

The node owns one trio nursery. Its tasks: the membership heartbeat loop
(:mod:`~gossipfl.node.membership_loop`), the stream handlers (membership, link
(:mod:`~gossipfl.node.links`), contribution (:mod:`~gossipfl.node.contributions`), state
(:mod:`~gossipfl.node.state_sync`), secure aggregation (:mod:`~gossipfl.node.secure_round`)),
the signal watcher, and the main sequence: resume (:mod:`~gossipfl.node.resume`) → join → form
links → catch up → rounds (:mod:`gossipfl.node.round`) → consensus → final model. Every network
wait runs under a deadline; a dead or slow peer costs at most a timeout, never a stall. The
protocol modules see the node through :class:`gossipfl.node.state.Node` and never import this
module.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio

from gossipfl.adversary.role import Role
from gossipfl.aggregation.mixing import reported_examples
from gossipfl.config import NodeConfig, Weighting
from gossipfl.crypto.admission import identity_signing_key
from gossipfl.crypto.identity import Identity
from gossipfl.gossip.addresses import split_p2p_addr
from gossipfl.gossip.cert_holders import CertHolders
from gossipfl.gossip.circuit import Circuits
from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.host import make_host
from gossipfl.gossip.membership import STAMP_REFRESH, Membership
from gossipfl.gossip.peers import Channel, ConnectionReaper, PeerNet, ReadPolicy, Traffic
from gossipfl.gossip.ratelimit import InFlight, LogGate, PeerLimiter
from gossipfl.gossip.resources import host_limits
from gossipfl.gossip.transport import Network, Offload, Transport
from gossipfl.gossip.wire import Contribution, Known, M, MaskedInput, Sealed
from gossipfl.gossip.wire_contribution import origin_digest
from gossipfl.learning.params import named_arrays
from gossipfl.node import contributions, exchange, links, membership_loop, resume, state_sync
from gossipfl.node.checkpoint import atomic_write_json, save_node_checkpoint
from gossipfl.node.contributions import FUTURE_ROUNDS, PROTO_CONTRIBUTION, PROTO_SEALED
from gossipfl.node.estimates import OwnEstimate, PeerEstimates
from gossipfl.node.layout import Layout
from gossipfl.node.learner import LocalLearner
from gossipfl.node.links import PROTO_LINK
from gossipfl.node.membership_loop import (
    HEARSAY_DIALS,
    HEARTBEAT_EXTRA,
    HEARTBEAT_FANOUT,
    PROTO_MEMBERSHIP,
)
from gossipfl.node.phases import Sched
from gossipfl.node.prom import NodeMetrics
from gossipfl.node.round import record_dp, run_rounds
from gossipfl.node.secagg_state import SecAggState
from gossipfl.node.security import NodeSecurity
from gossipfl.node.serving import close_idle_connections, guard
from gossipfl.node.state import Acceleration, NeighbourState, NodeError
from gossipfl.node.state_sync import PROTO_STATE, consensus_round
from gossipfl.node.streams import serve_requests
from gossipfl.node.summary import node_summary, peak_rss_bytes, process_age
from gossipfl.node.termination import SettleState
from gossipfl.privacy.dp import noise_generator
from gossipfl.relay_config import relay_candidates

log = logging.getLogger("gossipfl.node")

ENVELOPE_ALLOWANCE = 4096  # bytes an envelope and the sealed frame add around a contribution


class Node:
    """A federation member. Build it, then ``await node.run()`` inside ``trio.run``."""

    def __init__(self, config: NodeConfig, identity: Identity, learner: LocalLearner,
                 role: Role | None = None, *, rng: random.Random | None = None,
                 network: Network | None = None, offload: Offload | None = None,
                 signals: bool = True, durable: bool = True,
                 sched: Sched | None = None) -> None:
        """``rng``: the node's own draws (whom to heartbeat). ``network``: where the node's
        transport comes from (an in-memory network, gossipfl.gossip.memory); None: a libp2p
        host listening on ``config.listen``. ``offload``: how blocking work (training,
        evaluation, disk) runs; by default in a worker thread, so the node keeps serving its
        peers meanwhile. ``signals``: whether SIGTERM and SIGINT stop the node (a process of
        its own); off when many nodes share a process. ``durable``: whether checkpoints are
        fsync'd (a process that may crash); off in a simulation, which has no crash to survive.
        ``sched``: reads the node thread's scheduler statistics, to split a round's phases
        into running and waiting for a CPU (a process of its own; gossipfl.node.phases)."""
        self.config = config
        self.network = network
        self.offload: Offload = offload if offload is not None else trio.to_thread.run_sync
        self.signals = signals
        self.durable = durable
        self.sched = sched
        self.synced_at = -math.inf  # when the last fsync'd checkpoint was written
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        # the node's own draws (whom to heartbeat): from its seed, index and id unless given
        self.rng = rng if rng is not None else random.Random(
            f"{config.seed}/{config.node_index}/{self.peer_id}")
        self.learner = learner
        self.out = Path(config.out_dir)
        self.protocol = config.protocol
        self.membership = Membership(self.peer_id, config.protocol.member_timeout,
                                     federation=config.federation)
        # liveness stamps (gossipfl.crypto.liveness): this run's epoch is its start time, so a
        # restart's stamps order after every stamp of the runs before it
        self.stamp_key = identity_signing_key(identity)
        self.stamp_epoch = time.time_ns()
        self.membership.epoch = self.stamp_epoch  # its versions count within this run
        self.membership.refresh = config.protocol.member_timeout * STAMP_REFRESH
        self.stamp_seq = 0
        self.beat_now = trio.Event()  # wakes the heartbeat loop (this node's status changed)
        self.beaten_seq = 0  # the last heartbeat cycle whose answers are in (or timed out)
        self.own_stamp = b""
        self.traffic = Traffic()
        self.prom = NodeMetrics(config.node_index, self.peer_id, dp=config.privacy.enabled)
        self.rejections: Counter[str] = Counter()
        self.timeouts = 0
        self.layout = Layout.from_named(named_arrays(learner.template))
        initial = learner.initial_vector()
        self.model = initial.copy()
        origin = origin_digest(initial)
        self.own = OwnEstimate(initial.copy(), origin=origin)
        self.estimates = PeerEstimates.empty(self.layout.size, initial.copy(), origin)
        self.topology: dict[str, frozenset[str]] | None = None
        self.wanted: set[str] = set()  # this node's neighbours by topology (+ late joiners)
        self.link_cap = 0  # the most neighbours it takes (topology degree + extra_links)
        self.degree_target = 0  # how many neighbours it keeps linked (its degree at formation)
        self.replacements: list[dict[str, Any]] = []  # links made for neighbours gone for good
        self.extra_refused: dict[str, float] = {}
        self.neighbours: dict[str, NeighbourState] = {}
        self.addr_book: dict[str, tuple[str, ...]] = {}  # last addresses heard, kept for re-links
        # (round, status) heard directly
        self.member_state: dict[str, tuple[int, NodeStatus]] = {}
        self.cert_holders = CertHolders()  # whose certificates each peer holds (heartbeats)
        self.heard_at: dict[str, float] = {}  # when each member last heartbeat us directly
        self.hearsay_dialled: dict[str, int] = {}  # admission off: dials of hearsay ids
        self.stale_revocations_logged: dict[str, int] = {}  # peer → our serial when logged
        self.behind: int | None = None  # a neighbour's round far ahead of ours: catch up
        self.joined_late = False
        self.relinks = 0  # lost neighbours linked again (after an outage or a partition)
        self.catch_ups: list[dict[str, Any]] = []
        self.linked_at: dict[str, float] = {}
        self.relink_refused: dict[str, float] = {}
        self.relink_failures: dict[str, tuple[int, float]] = {}  # unanswered asks, last at
        self.relink_now = trio.Event()  # wakes the re-link loop (a lost neighbour heartbeat us)
        self.dropped: list[dict[str, Any]] = []
        self.round = -1
        self.start_round = 0
        self.resumed_from: int | None = None
        self.model_public = False  # the model holds only public values (round.stop_training)
        # whether this node's state is its own (resumed, or fresh): only then may a checkpoint
        # replace the one on disk, whose model, x̂ and DP budget would otherwise be lost
        self.state_loaded = False
        self.rejoins_served = 0
        self.diverged_rounds: list[int] = []
        self.velocity: tuple[int, np.ndarray] | None = None  # outer momentum (node/outer.py)
        self.tail: tuple[int, np.ndarray] | None = None  # train.outer_average (node/outer.py)
        self.acceleration = Acceleration()  # consensus memory (node/accelerate.py)
        # [robust] rule = "filter": per neighbour, (rounds it was left out, rounds filtered)
        self.filter_counts: dict[str, tuple[int, int]] = {}
        self.step_scale = 0.0  # its own last training step, decaying (filter, tau_steps)
        self.async_seen: dict[str, int] = {}  # async mode: neighbours' rounds at our last round
        self.status = NodeStatus.JOINING
        self.disagreement = math.inf
        self.addrs: list[str] = []
        self.changed = trio.Event()
        self.background: trio.Nursery | None = None  # the node's nursery while it runs
        self.bootstrap = [split_p2p_addr(a) for a in config.bootstrap]
        self.final_accuracy: float | None = None
        self.startup_seconds: float | None = None  # process start to round 0 (a process)
        self.history: list[dict[str, Any]] = []
        self.isolated_rounds = 0
        self.settle = SettleState()  # termination: depth, horizon, neighbours awaited or gone
        self.net: Transport | None = None
        self.security = NodeSecurity(config, identity)
        self.secagg = SecAggState()
        # the deviation this node runs (gossipfl.adversary.factory.make_role); honest by default
        self.role = role if role is not None else Role(config.adversary)
        self.clock: Callable[[], float] = trio.current_time  # tests drive the steps with theirs
        self.limiter = PeerLimiter(rate=config.protocol.peer_rate,
                                   burst=config.protocol.peer_burst,
                                   max_open=config.protocol.peer_streams)
        self._log_gate = LogGate()
        in_flight = config.protocol.max_in_flight_bytes or 4 * self.payload_cap
        self.in_flight = InFlight(limit=in_flight, stranger_limit=in_flight // 8)
        self.read_policy = ReadPolicy(self.security.is_member, self.in_flight)
        self.reaper = ConnectionReaper(stranger_grace=config.protocol.request_timeout,
                                       idle_after=self.idle_timeout)
        self.budget: Any = None
        self.dp_rng: np.random.Generator | None = None
        self.dp_exhausted_round: int | None = None
        if config.privacy.enabled:
            # fresh OS entropy, never the scenario seed: noise (and Poisson batches) that peers
            # could predict would protect nothing
            self.dp_rng = noise_generator()
            self.budget = self.make_budget()
        self.role.setup(self)  # last: a Byzantine role may change the learner

    def make_budget(self, spent: int = 0) -> Any:
        """The DP budget (record: RecordBudget, DP-SGD steps; node: PrivacyBudget, rounds), with
        ``spent`` (its ``.spent``) restored from a checkpoint; σ calibrated from the plan."""
        from gossipfl.privacy.accountant import make_budget

        train = self.config.train
        return make_budget(self.config.privacy, rounds=self.config.rounds,
                           records=len(self.learner.y), batch_size=train.batch_size,
                           local_epochs=train.local_epochs, spent=spent)

    @property
    def status(self) -> NodeStatus:
        return self._status

    @status.setter
    def status(self, value: NodeStatus | str) -> None:
        self._status = NodeStatus(value)  # a plain string is parsed (ValueError if unknown)
        self.prom.set_phase(self._status)  # live metrics show it at once

    @property
    def contribution_protocol(self) -> str:
        return PROTO_SEALED if self.security.sealed else PROTO_CONTRIBUTION

    @property
    def reported_examples(self) -> int:
        """The example count this node tells its neighbours (0: it does not weight)."""
        protocol = self.config.protocol
        if protocol.weighting is not Weighting.EXAMPLES:
            return 0
        return reported_examples(len(self.learner.y), protocol.examples_rounding)

    @property
    def serves_state(self) -> bool:
        """Whether the state protocol is registered: never under secure aggregation, where it
        would hand one member's estimate to whoever asks (catchup.py)."""
        return not self.config.secagg.enabled

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> str:
        """Run the node to the end; returns its final status ("done" or "stopped")."""
        transport = self.net = self.make_transport()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            async with transport.running() as addrs, trio.open_nursery() as nursery:
                self.background = nursery
                self.serve_protocols(transport)
                self.addrs = addrs
                self._write_node_info()
                log.info("listening on %s", ", ".join(self.addrs))
                if self.signals:
                    nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                nursery.start_soon(membership_loop.heartbeat_loop, self)
                nursery.start_soon(close_idle_connections, self)
                nursery.start_soon(self.role.run, self)  # an adversary's deviation (if any)
                if self.signals:  # a process of its own: compile while it joins
                    nursery.start_soon(self._prepare)
                task_status.started(self.addrs)
                if self.serves_state:  # never under secure aggregation (catchup.py)
                    transport.serve(PROTO_STATE, guard(
                        self, functools.partial(state_sync.on_state_request, self),
                        members_only=True))
                resume.restore(self)
                if self.budget is not None:  # live metrics: the ε spent before a restart
                    self.prom.update({"epsilon": self.budget.epsilon()})
                await membership_loop.join(self)
                await links.form_links(self)
                if self.resumed_from is not None or self.joined_late:
                    await state_sync.catch_up(self)
                nursery.start_soon(links.relink_loop, self)
                if self.signals:  # a process of its own: from its start to round 0
                    self.startup_seconds = process_age()
                    log.info("round 0 starts %.2f s after the process started (%.2f s of "
                             "CPU)", self.startup_seconds, time.process_time())
                self.status = NodeStatus.TRAINING
                await run_rounds(self)  # the one place a round is composed
                self.status = NodeStatus.DONE
                nursery.cancel_scope.cancel()
        finally:
            self.background = None
            if self.signals:  # stopping now either way: a second signal must not cut the
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # final writes short
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            if self.status != NodeStatus.DONE:
                self.status = NodeStatus.STOPPED
            self._write_final()
        return self.status

    def make_transport(self) -> Transport:
        """The node's transport: from its network (in memory), else a libp2p host."""
        if self.network is not None:
            return self.network.attach(self.peer_id, self.traffic, self.read_policy,
                                       tuple(self.config.listen))
        relay = self.config.relay  # relay roles run only where configured (gossip/circuit.py)
        roles = relay.serve or relay.may_be_private or relay.hole_punch
        host, listen = make_host(self.identity, self.config.listen, identify=roles,
                                 limits=host_limits(self.config, self.payload_cap))
        circuits = Circuits(host, relay, relay_candidates(relay, self.config.bootstrap)) \
            if roles else None
        return PeerNet(host, self.traffic, self.config.routes, self.read_policy, self.reaper,
                       listen, circuits, federation=self.config.federation)

    def serve_protocols(self, transport: Transport) -> None:
        """Register the node's handlers (each guarded: deadline, read policy, rate limits)."""
        def bound(handler: Callable[..., Any]) -> Callable[[Channel], Any]:
            return functools.partial(handler, self)

        transport.serve(PROTO_MEMBERSHIP, guard(  # a request stream: a neighbour's is kept
            self, functools.partial(serve_requests, self,
                                    handler=bound(membership_loop.on_heartbeat)),
            timeout=math.inf, what="heartbeat"))
        transport.serve(PROTO_LINK, guard(self, bound(links.on_link), members_only=True))
        if self.config.secagg.enabled:
            # imported here: a node without secure aggregation never loads its code
            from gossipfl.node.secure_round import (
                PROTO_CONSISTENCY,
                PROTO_MASKED,
                PROTO_UNMASK,
                on_consistency_request,
                on_masked_input,
                on_unmask_request,
            )

            # each served as a persistent request stream (timeouts inside)
            for protocol, what, handler in (
                    (PROTO_MASKED, "masked", on_masked_input),
                    (PROTO_UNMASK, "unmask", on_unmask_request),
                    (PROTO_CONSISTENCY, "consistency", on_consistency_request)):
                transport.serve(protocol, guard(
                    self, functools.partial(serve_requests, self, handler=bound(handler)),
                    timeout=math.inf, members_only=True, what=what))
        transport.serve(self.contribution_protocol,  # per-frame deadlines inside
                        guard(self, bound(contributions.on_contribution), timeout=math.inf,
                              members_only=True))

    async def _prepare(self) -> None:
        seconds = await self.offload(self.learner.prepare, record_dp(self))
        log.info("training and evaluation steps ready in %.2f s", seconds)

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.warning("stopping on %s: writing a checkpoint", signal.Signals(signum).name)
                scope.cancel()
                return

    def _write_node_info(self) -> None:
        atomic_write_json(self.out / "node.json", {
            "peer_id": self.peer_id, "pid": os.getpid(), "addrs": self.addrs,
            "node_index": self.config.node_index, "federation": self.config.federation,
            "parameters": self.layout.size, "examples": len(self.learner.y),
        })

    def _write_final(self) -> None:
        # the same checkpoint as every round's (public estimate and DP state included), so a
        # node stopped cleanly resumes as one killed would, ε and all
        if self.state_loaded:
            save_node_checkpoint(self, self.out / "checkpoint.npz", self.round)
            if self.status == NodeStatus.DONE:
                save_node_checkpoint(self, self.out / "final.npz", self.round)
        else:
            log.warning("stopped before its saved state was loaded: the checkpoint on disk is "
                        "left as it was")
        self.role.write(self.out)
        if isinstance(self.net, PeerNet):  # circuit relay v2 roles; direct or relayed links
            atomic_write_json(self.out / "relay.json", self.net.relay_summary())
        atomic_write_json(self.out / "summary.json", node_summary(self))
        log.info("finished with status %s at round %d", self.status, self.round)

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def channel_to(self, peer: str, protocol: str,
                         addrs: tuple[str, ...] | None = None) -> AsyncIterator[Channel]:
        """A new stream to ``peer`` for ``protocol`` (dialling it if needed), closed after."""
        assert self.net is not None
        known = self.addrs_of(peer) if addrs is None else addrs
        channel = await self.net.open(peer, known, protocol)
        try:
            yield channel
        finally:
            await channel.close()

    async def greet(self, peer: str) -> None:
        """One heartbeat exchange with ``peer``: each side's certificate reaches the other (a
        member known only by hearsay does not know us yet)."""
        await membership_loop.send_heartbeat(self, peer, self.addrs_of(peer))

    def addrs_of(self, peer: str) -> tuple[str, ...]:
        """Where to dial ``peer``: the last addresses it gave us itself (its own heartbeat, over
        a channel authenticated as it), else the addresses membership holds signed by it (its
        liveness stamp signs them: how a member never met is found); never an address a
        reporter only claims (none: it is not dialled until it is heard from or its signed
        addresses arrive)."""
        return self.addr_book.get(peer) or self.membership.addrs(peer)

    @property
    def payload_cap(self) -> int:
        """Frame cap for messages that carry parameters (plus room for an envelope)."""
        return self.protocol.max_payload_bytes + ENVELOPE_ALLOWANCE

    async def send_payload(self, channel: Channel, message: Contribution | MaskedInput) -> None:
        """Send a parameter-carrying message, sealed (signed and encrypted to its receiver) when
        payloads are sealed. The message is sealed or encoded before the first await: its
        tensors may be views of a live array (``Layout.to_tensors(copy=False)``)."""
        known = self.sum_table(message.aggregator) if isinstance(message, MaskedInput) else None
        if self.security.sealed:
            await channel.send(self.security.seal(message, known), self.payload_cap)
        else:
            await channel.send(message, self.payload_cap, known)

    async def receive_payload(self, channel: Channel, expected: type[M]) -> tuple[M | None, int]:
        """Receive one; returns (message, round), message None when its envelope was refused
        (the refusal is logged and counted)."""
        known = self.sum_table(self.peer_id) if expected is MaskedInput else None
        if self.security.sealed:
            sealed = await channel.receive(Sealed, self.payload_cap)
            return (contributions.open_sealed_message(self, channel.remote, sealed, expected,
                                                      known), sealed.round)
        message = await channel.receive(expected, self.payload_cap, known)
        return message, message.round

    def sum_table(self, aggregator: str) -> Known | None:
        """``aggregator``'s sum's peers as both ends order them (wire.Known)."""
        return (None if self.topology is None
                else Known.of(aggregator, self.topology.get(aggregator, ())))

    async def wait_for(self, pending: Callable[[], list[str]], deadline: float) -> list[str]:
        """Wait until ``pending()`` is empty or ``deadline`` passes; returns what still pends.

        Woken by :meth:`notify` (a contribution arrived, a peer failed), never polling.
        """
        while True:
            waiting = pending()
            remaining = deadline - trio.current_time()
            if not waiting or remaining <= 0:
                return waiting
            event = self.changed
            with trio.move_on_after(remaining):
                await event.wait()

    def hand_over(self, peer: str) -> None:
        """Hand ``peer`` our current estimate in the background (exchange.hand_over)."""
        if self.background is not None and exchange.needs_hand_over(self, peer):
            self.background.start_soon(exchange.hand_over, self, peer)

    def notify(self) -> None:
        """Wake whoever waits for a change (a contribution arrived, a peer failed)."""
        event, self.changed = self.changed, trio.Event()
        event.set()

    def flood(self, peer: str, detail: str, key: str = "flood") -> None:
        """Count input dropped by the bounds (per peer, in flight, membership) under ``key``; log
        it at most once a second a peer and ten lines a second in all (fresh peer ids are
        free)."""
        self.rejections[key] += 1
        if self._log_gate.allow((key, peer), trio.current_time()):
            log.warning("dropped input from %s: %s (%s; %d dropped so far from all peers)",
                        peer, key, detail, self.rejections[key])

    def reject(self, peer: str, what: str, reason_key: str, detail: str) -> None:
        self.rejections[reason_key] += 1
        log.warning("dropped %s from %s: %s (%s)", what, peer, reason_key, detail)

    def check_origin(self, channel: Channel, what: str, federation: str, sender: str) -> bool:
        remote = channel.remote
        if federation != self.config.federation:
            self.reject(remote, what, "federation", f"federation {federation!r}")
            return False
        if sender != remote:
            self.reject(remote, what, "sender_mismatch", f"frame names sender {sender}")
            return False
        return True

    @property
    def idle_timeout(self) -> float:
        return max(60.0, 2 * self.protocol.round_timeout)

    def write_metrics(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        self.prom.update(record)  # live metrics (gossipfl.node.prom) show the same record
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")


__all__ = ["ENVELOPE_ALLOWANCE", "FUTURE_ROUNDS", "HEARSAY_DIALS", "HEARTBEAT_EXTRA",
           "HEARTBEAT_FANOUT", "PROTO_CONTRIBUTION", "PROTO_LINK", "PROTO_MEMBERSHIP",
           "PROTO_SEALED", "PROTO_STATE", "NeighbourState", "Node", "NodeError",
           "consensus_round", "peak_rss_bytes", "split_p2p_addr"]
