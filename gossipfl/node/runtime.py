"""One gossipfl node: a libp2p host, membership gossip, neighbour links, and the round loop.

The node owns one trio nursery. Its tasks: the membership heartbeat loop, the stream handlers
(membership, link, contribution), the signal watcher, and the main sequence
join → form links → rounds (:mod:`gossipfl.node.round`) → consensus → final model. Every network
wait runs under a deadline; a dead or slow peer costs at most a timeout, never a stall.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import random
import resource
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import multiaddr
import numpy as np
import trio

from gossipfl.adversary.role import Role
from gossipfl.aggregation.topology import build_topology
from gossipfl.config import Mode, NodeConfig
from gossipfl.crypto import liveness
from gossipfl.crypto.admission import identity_signing_key
from gossipfl.crypto.identity import Identity
from gossipfl.gossip.codes import RUNNING, AckCode, AckReason, LinkCode, NodeStatus
from gossipfl.gossip.framing import Overloaded, StreamClosed, StreamEnded
from gossipfl.gossip.host import make_host
from gossipfl.gossip.membership import Membership
from gossipfl.gossip.peers import Channel, ConnectionReaper, PeerNet, ReadPolicy, Traffic
from gossipfl.gossip.ratelimit import InFlight, LogGate, PeerLimiter
from gossipfl.gossip.transport import Network, Offload, Transport
from gossipfl.gossip.wire import (
    MAX_CONTROL_BYTES,
    Ack,
    Contribution,
    Heartbeat,
    LinkReply,
    LinkRequest,
    M,
    MaskedInput,
    Sealed,
    WireError,
)
from gossipfl.learning.params import named_arrays
from gossipfl.node.catchup import (
    rounds_in_progress,
    secure_catch_up_round,
    state_refusal,
    upper_median,
)
from gossipfl.node.checkpoint import (
    CheckpointError,
    atomic_write_json,
    restore_dp_state,
    restored_public_estimate,
    save_node_checkpoint,
)
from gossipfl.node.estimates import EstimateError, OwnEstimate, PeerEstimates
from gossipfl.node.layout import Layout, LayoutError
from gossipfl.node.learner import LocalLearner
from gossipfl.node.secure_round import (
    PROTO_CONSISTENCY,
    PROTO_MASKED,
    PROTO_UNMASK,
    SecAggState,
    on_consistency_request,
    on_masked_input,
    on_unmask_request,
)
from gossipfl.node.security import EnvelopeError, NodeSecurity, RevocationUpdate
from gossipfl.node.streams import close_streams, serve_requests
from gossipfl.privacy.dp import noise_generator

log = logging.getLogger("gossipfl.node")

PROTO_MEMBERSHIP = "/gossipfl/membership/1.0.0"
PROTO_LINK = "/gossipfl/link/1.0.0"
PROTO_CONTRIBUTION = "/gossipfl/contribution/1.0.0"
PROTO_SEALED = "/gossipfl/sealed-contribution/1.0.0"
PROTO_STATE = "/gossipfl/state/1.0.0"
HEARTBEAT_FANOUT = 16
HEARTBEAT_EXTRA = 2
HEARSAY_DIALS = 3  # admission off: dials of an id only heard of, until it is heard from
# A neighbour is at most a round or two ahead in the synchronous protocol; a contribution far
# beyond that would make every later genuine one look stale, so it is refused.
FUTURE_ROUNDS = 3
ENVELOPE_ALLOWANCE = 4096  # bytes an envelope and the sealed frame add around a contribution


class NodeError(RuntimeError):
    """The node cannot go on (no members, no neighbours): the message says why."""


@dataclass
class NeighbourState:
    missed: int = 0  # consecutive rounds without its contribution
    peer_holds: int = -1  # the round of our estimate it acknowledged
    unreachable_round: int = -1  # last round in which sending to it failed
    channel: Channel | None = None  # our open contribution stream to it
    # our open secure-aggregation request streams to it, per protocol (streams.py)
    streams: dict[str, Channel] = field(default_factory=dict)
    stream_locks: dict[str, trio.Lock] = field(default_factory=dict)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def consensus_round(rounds: Iterable[int]) -> int:
    """The round to jump to from the rounds neighbours report: the upper median, so that one
    neighbour claiming a far-off round cannot carry a node there on its own."""
    return upper_median(rounds)


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """'/ip4/../tcp/../p2p/ID' → (ID, the whole address). Raises ValueError without /p2p/."""
    maddr = multiaddr.Multiaddr(addr)
    peer_id = maddr.value_for_protocol("p2p")
    if not peer_id:
        raise ValueError(f"bootstrap address {addr} has no /p2p/<peer id> part")
    return str(peer_id), addr


class Node:
    """A federation member. Build it, then ``await node.run()`` inside ``trio.run``."""

    def __init__(self, config: NodeConfig, identity: Identity, learner: LocalLearner,
                 role: Role | None = None, *, rng: random.Random | None = None,
                 network: Network | None = None, offload: Offload | None = None,
                 signals: bool = True) -> None:
        """``rng``: the node's own draws (whom to heartbeat). ``network``: where the node's
        transport comes from (an in-memory network, gossipfl.gossip.memory); None: a libp2p
        host listening on ``config.listen``. ``offload``: how blocking work (training,
        evaluation, disk) runs; by default in a worker thread, so the node keeps serving its
        peers meanwhile. ``signals``: whether SIGTERM and SIGINT stop the node (a process of
        its own); off when many nodes share a process."""
        self.config = config
        self.network = network
        self.offload: Offload = offload if offload is not None else trio.to_thread.run_sync
        self.signals = signals
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
        self._stamp_key = identity_signing_key(identity)
        self.stamp_epoch = time.time_ns()
        self.stamp_seq = 0
        self.own_stamp = b""
        self.traffic = Traffic()
        self.rejections: Counter[str] = Counter()
        self.timeouts = 0
        self.layout = Layout.from_named(named_arrays(learner.template))
        initial = learner.initial_vector()
        self.model = initial.copy()
        self.own = OwnEstimate(initial.copy())
        self.estimates = PeerEstimates.empty(self.layout.size)
        self.topology: dict[str, frozenset[str]] | None = None
        self.wanted: set[str] = set()  # this node's neighbours by topology (+ late joiners)
        self.link_cap = 0  # the most neighbours it takes (topology degree + extra_links)
        self.degree_target = 0  # how many neighbours it keeps linked (its degree at formation)
        self.replacements: list[dict[str, Any]] = []  # links made for neighbours gone for good
        self._extra_refused: dict[str, float] = {}
        self.neighbours: dict[str, NeighbourState] = {}
        self.addr_book: dict[str, tuple[str, ...]] = {}  # last addresses heard, kept for re-links
        # (round, status) heard directly
        self.member_state: dict[str, tuple[int, NodeStatus]] = {}
        self.heard_at: dict[str, float] = {}  # when each member last heartbeat us directly
        self._hearsay_dialled: dict[str, int] = {}  # admission off: dials of hearsay ids
        self._stale_revocations_logged: dict[str, int] = {}  # peer → our serial when logged
        self.behind: int | None = None  # a neighbour's round far ahead of ours: catch up
        self.joined_late = False
        self.relinks = 0  # lost neighbours linked again (after an outage or a partition)
        self.catch_ups: list[dict[str, Any]] = []
        self._linked_at: dict[str, float] = {}
        self._relink_refused: dict[str, float] = {}
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
        self.async_seen: dict[str, int] = {}  # async mode: neighbours' rounds at our last round
        self.status = NodeStatus.JOINING
        self.disagreement = math.inf
        self.addrs: list[str] = []
        self.changed = trio.Event()
        self.bootstrap = [split_p2p_addr(a) for a in config.bootstrap]
        self.final_accuracy: float | None = None
        self.history: list[dict[str, Any]] = []
        self.isolated_rounds = 0
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

    @property
    def contribution_protocol(self) -> str:
        return PROTO_SEALED if self.security.sealed else PROTO_CONTRIBUTION

    @property
    def serves_state(self) -> bool:
        """Whether the state protocol is registered: never under secure aggregation, where it
        would hand one member's estimate to whoever asks (catchup.py)."""
        return not self.config.secagg.enabled

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> str:
        """Run the node to the end; returns its final status ("done" or "stopped")."""
        from gossipfl.node.round import run_rounds  # the one place a round is composed

        transport = self.net = self.make_transport()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            async with transport.running() as addrs, trio.open_nursery() as nursery:
                self.serve_protocols(transport)
                self.addrs = addrs
                self._write_node_info()
                log.info("listening on %s", ", ".join(self.addrs))
                if self.signals:
                    nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._close_idle_connections)
                nursery.start_soon(self.role.run, self)  # an adversary's deviation (if any)
                task_status.started(self.addrs)
                if self.serves_state:  # never under secure aggregation (catchup.py)
                    transport.serve(
                        PROTO_STATE, self._guard(self._on_state_request, members_only=True))
                self._resume()
                await self._join()
                await self._form_links()
                if self.resumed_from is not None or self.joined_late:
                    await self._catch_up()
                nursery.start_soon(self._relink_loop)
                self.status = NodeStatus.TRAINING
                await run_rounds(self)
                self.status = NodeStatus.DONE
                nursery.cancel_scope.cancel()
        finally:
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
        host, listen = make_host(self.identity, self.config.listen)
        return PeerNet(host, self.traffic, self.config.routes, self.read_policy, self.reaper,
                       listen)

    def serve_protocols(self, transport: Transport) -> None:
        """Register the node's handlers (each guarded: deadline, read policy, rate limits)."""
        transport.serve(PROTO_MEMBERSHIP, self._guard(self._on_heartbeat))
        transport.serve(PROTO_LINK, self._guard(self._on_link, members_only=True))
        if self.config.secagg.enabled:
            # each served as a persistent request stream (timeouts inside)
            transport.serve(PROTO_MASKED, self._guard(
                self._on_masked, timeout=math.inf, members_only=True))
            transport.serve(PROTO_UNMASK, self._guard(
                self._on_unmask, timeout=math.inf, members_only=True))
            transport.serve(PROTO_CONSISTENCY, self._guard(
                self._on_consistency, timeout=math.inf, members_only=True))
        transport.serve(self.contribution_protocol,  # per-frame deadlines inside
                        self._guard(self._on_contribution, timeout=math.inf, members_only=True))

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
        atomic_write_json(self.out / "summary.json", self.summary())
        log.info("finished with status %s at round %d", self.status, self.round)

    def summary(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "pid": os.getpid(),
            "node_index": self.config.node_index,
            "status": self.status,
            "round": self.round,
            "final_accuracy": self.final_accuracy,
            "bytes_sent": self.traffic.bytes_sent,
            "bytes_received": self.traffic.bytes_received,
            "messages_sent": self.traffic.messages_sent,
            "messages_received": self.traffic.messages_received,
            "bytes_sent_by_kind": dict(self.traffic.by_kind_sent),
            "train_seconds": sum(h.get("train_seconds", 0.0) for h in self.history),
            "eval_seconds": sum(h.get("eval_seconds", 0.0) for h in self.history),
            "peak_rss_bytes": peak_rss_bytes(),
            "rejected": dict(self.rejections),
            "timeouts": self.timeouts,
            "neighbours": sorted(self.neighbours),
            "dropped_neighbours": self.dropped,
            "isolated_rounds": self.isolated_rounds,
            "resumed_from": self.resumed_from,
            "diverged_rounds": self.diverged_rounds,
            "rejoins_served": self.rejoins_served,
            "joined_late": self.joined_late,
            "relinks": self.relinks,
            "replacements": self.replacements,
            "catch_ups": self.catch_ups,
            "parameters": self.layout.size,
            "examples": len(self.learner.y),
            "privacy": self.privacy_summary(),
            "role": self.role.kind.value,
            "in_flight": {"peak_bytes": self.in_flight.peak, "limit": self.in_flight.limit,
                          "refused": self.in_flight.refused},
        }

    def privacy_summary(self) -> dict[str, Any]:
        dp = self.config.privacy
        summary: dict[str, Any] = {
            "transport": "noise", "admission": self.security.enabled,
            "payload_encryption": self.security.sealed, "dp": dp.enabled,
        }
        summary["secure_aggregation"] = {
            "enabled": self.config.secagg.enabled,
            "min_contributors": self.config.secagg.min_contributors,
            "refused_rounds": self.secagg.refused_rounds,
            "failed_rounds": self.secagg.failed_rounds,
        }
        if self.budget is not None:
            summary.update(
                unit=str(self.budget.unit), epsilon=self.budget.epsilon(), delta=dp.delta,
                target_epsilon=dp.target_epsilon, noise_multiplier=self.budget.noise_multiplier,
                clip_norm=dp.clip_norm, noise_source="PCG64 seeded from os entropy (secrets)",
                stopped_contributing_round=self.dp_exhausted_round,
            )
            if self.budget.unit == "record":
                summary.update(
                    sampling="poisson", sampling_probability=self.budget.sample_rate,
                    expected_batch=self.budget.sample_rate * len(self.learner.y),
                    records=len(self.learner.y),
                    steps_spent=self.budget.spent,
                )
            else:
                summary.update(sampling="none (every round)", sampling_probability=1.0,
                               rounds_spent=self.budget.rounds_spent)
        return summary

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

    def addrs_of(self, peer: str) -> tuple[str, ...]:
        """Where to dial ``peer``: what membership knows, else the last addresses it gave us
        (membership forgets a member silent for a while; a lost neighbour is still asked back)."""
        return self.membership.addrs(peer) or self.addr_book.get(peer, ())

    @property
    def payload_cap(self) -> int:
        """Frame cap for messages that carry parameters (plus room for an envelope)."""
        return self.protocol.max_payload_bytes + ENVELOPE_ALLOWANCE

    async def send_payload(self, channel: Channel, message: Contribution | MaskedInput) -> None:
        """Send a parameter-carrying message, sealed (signed and encrypted to its receiver) when
        payloads are sealed."""
        if self.security.sealed:
            await channel.send(self.security.seal(message), self.payload_cap)
        else:
            await channel.send(message, self.payload_cap)

    async def receive_payload(self, channel: Channel, expected: type[M]) -> tuple[M | None, int]:
        """Receive one; returns (message, round), message None when its envelope was refused
        (the refusal is logged and counted)."""
        if self.security.sealed:
            sealed = await channel.receive(Sealed, self.payload_cap)
            return self.open_sealed_message(channel.remote, sealed, expected), sealed.round
        message = await channel.receive(expected, self.payload_cap)
        return message, message.round

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

    def _guard(self, handler: Any, timeout: float | None = None, *,
               members_only: bool = False) -> Any:
        """Wrap a stream handler: a deadline, and no exception ever escapes into libp2p.

        Frames are read under :attr:`read_policy` (payload-sized only from certified members,
        all within the in-flight cap). With ``members_only`` (and admission on), a peer without
        a valid certificate gets its stream reset and its connection closed before a byte is
        read."""
        limit = self.protocol.request_timeout if timeout is None else timeout
        what = getattr(handler, "__name__", "stream").removeprefix("_on_")

        async def guarded(channel: Channel) -> None:
            remote = channel.remote
            self.reaper.touch(remote, trio.current_time())
            if members_only and self.security.enabled and not self.security.is_member(remote):
                self.flood(remote, f"{what} stream without a valid certificate: disconnected",
                           key="not_member")
                await channel.reset()
                if self.net is not None:
                    await self.net.disconnect(remote)
                return
            if not self.limiter.allow(remote, trio.current_time()):
                self.flood(remote, "more streams a second than allowed")
                await channel.reset()
                return
            if not self.limiter.open(remote):
                self.flood(remote, f"more than {self.limiter.max_open} streams open at once")
                await channel.reset()
                return
            try:
                await serve(channel, remote)
            finally:
                self.limiter.close(remote)

        async def serve(channel: Channel, remote: str) -> None:
            try:
                with trio.move_on_after(limit) as scope:
                    await handler(channel)
                if scope.cancelled_caught:
                    self.timeouts += 1
                    log.warning("timed out serving %s", remote)
                    await channel.reset()
                    return
            except WireError as error:
                self.reject(remote, "frame", "malformed", str(error))
                await channel.reset()
                return
            except Overloaded as error:
                self.flood(remote, str(error), key="in_flight")
                await channel.reset()
                return
            except StreamClosed:
                await channel.close()
                return
            except (StreamEnded, ConnectionError) as error:
                log.info("stream from %s ended early: %s", remote, error)
                await channel.reset()
                return
            except Exception as error:  # a broken stream must not take the node down
                log.warning("error serving %s: %s: %s", remote, type(error).__name__, error)
                await channel.reset()
                return
            await channel.close()

        return guarded

    async def _close_idle_connections(self) -> None:
        """Close the connections of peers without a certificate after ``request_timeout``, and
        any connection without a stream for :attr:`idle_timeout` (see
        :class:`ConnectionReaper`)."""
        assert self.net is not None
        is_member = self.security.is_member if self.security.enabled else None
        while True:
            await trio.sleep(min(self.protocol.request_timeout, 5.0))
            try:
                closing = self.reaper.sweep(trio.current_time(), self.net.open_streams(),
                                            is_member)
            except Exception as error:  # libp2p's connection table: never take the node down
                log.warning("could not list connections: %s: %s", type(error).__name__, error)
                continue
            for peer, why in closing:
                log.info("closing the %s connection of %s", why.value, peer)
                with trio.move_on_after(self.protocol.request_timeout):
                    await self.net.disconnect(peer)

    def _check_origin(self, channel: Channel, what: str, federation: str, sender: str) -> bool:
        remote = channel.remote
        if federation != self.config.federation:
            self.reject(remote, what, "federation", f"federation {federation!r}")
            return False
        if sender != remote:
            self.reject(remote, what, "sender_mismatch", f"frame names sender {sender}")
            return False
        return True

    # -- membership --------------------------------------------------------------------------

    def heartbeat(self) -> Heartbeat:
        now = trio.current_time()
        return Heartbeat(
            federation=self.config.federation, sender=self.peer_id, addrs=tuple(self.addrs),
            members=self.security.gossiped(self.membership.snapshot(now)), round=self.round,
            degree=len(self.neighbours), status=self.status.advertised,
            certificate=self.security.own_certificate,
            revocations=self.security.revocation_bytes, stamp=self.own_stamp,
        )

    def renew_stamp(self) -> bytes:
        """Sign this cycle's liveness stamp (once per heartbeat cycle): the next sequence
        number of this run."""
        self.stamp_seq += 1
        self.own_stamp = liveness.sign_stamp(self.config.federation, self.peer_id,
                                             self.stamp_epoch, self.stamp_seq, self._stamp_key)
        return self.own_stamp

    def _absorb(self, beat: Heartbeat) -> None:
        """Take an admitted member's heartbeat: it is heard directly; its member list is
        hearsay (with admission on, only certified members are taken; see ``membership.py``
        for the caps that keep one reporter from filling the table)."""
        now = trio.current_time()
        if self.membership.heard_from(beat.sender, beat.addrs, now, beat.stamp):
            log.info("new member %s (heard directly)", beat.sender)
        if beat.addrs:
            self.addr_book[beat.sender] = beat.addrs
        self.member_state[beat.sender] = (beat.round, beat.status)
        self.heard_at[beat.sender] = now
        self.note_peer_round(beat.sender, beat.round, beat.status)
        hearsay = self.security.hearsay(beat.members)
        for peer in self.membership.merge(hearsay, now, reporter=beat.sender,
                                          vouched=self.security.enabled):
            log.info("new member %s (via %s)", peer, beat.sender)
        for reporter, peer, reason in self.membership.take_forged():
            self.reject(reporter, "liveness stamp", "bad_stamp", f"stamp of {peer}: {reason}")

    def _take_revocations(self, peer: str, data: bytes) -> frozenset[str]:
        """A revocation list a peer sent: a newer valid one is honoured at once (the revoked
        leave membership, the topology and the neighbours); a forged or older one is refused
        with a log line. Returns the newly revoked peers (their links are then dropped)."""
        return self._revocations_judged(peer, *self.security.take_revocations(data))

    def _revocations_judged(self, peer: str, verdict: RevocationUpdate, newly: frozenset[str],
                            detail: str) -> frozenset[str]:
        if verdict is RevocationUpdate.INVALID:
            self.reject(peer, "revocation list", "bad_revocations", detail)
        elif verdict is RevocationUpdate.OLDER:
            # a member that has not had the newer list yet (our reply carries it): log once
            serial = self.security.revocations.serial if self.security.revocations else 0
            if self._stale_revocations_logged.get(peer) != serial:
                self._stale_revocations_logged[peer] = serial
                log.info("refused an older revocation list from %s (%s)", peer, detail)
        elif verdict is RevocationUpdate.NEWER:
            log.warning("revocation list %s from %s: %d peer(s) revoked now", detail, peer,
                        len(newly))
        for revoked in sorted(newly):
            log.warning("member %s revoked: no longer a member", revoked)
            if revoked == self.peer_id:
                log.error("this node is on the federation's revocation list: members will "
                          "refuse it")
            self.membership.forget(revoked)
            self._hearsay_dialled.pop(revoked, None)
            self.wanted.discard(revoked)
            self.member_state.pop(revoked, None)
        return newly

    async def _drop_revoked(self, revoked: frozenset[str]) -> None:
        for peer in sorted(revoked):
            await self.drop_neighbour(peer, self.round, "revoked")

    def _admitted(self, channel: Channel, what: str, beat: Heartbeat) -> bool:
        """Origin checks, then the membership certificate (when admission is on)."""
        if not self._check_origin(channel, what, beat.federation, beat.sender):
            return False
        reason = self.security.admit(beat.sender, beat.certificate)
        if reason is not None:
            self.reject(beat.sender, what, "not_member", reason)
            return False
        return True

    async def _on_heartbeat(self, channel: Channel) -> None:
        beat = await channel.receive(Heartbeat, MAX_CONTROL_BYTES)
        # a list signed by the federation key counts whoever carries it (checked first, so that
        # a revoked sender's own heartbeat is refused below)
        revoked = self._take_revocations(channel.remote, beat.revocations)
        if not self._admitted(channel, "heartbeat", beat):
            await channel.reset()
            if self.security.enabled and self.net is not None:
                await self.net.disconnect(channel.remote)  # no certificate, no connection
            await self._drop_revoked(revoked)
            return
        self._absorb(beat)
        await channel.send(self.heartbeat(), MAX_CONTROL_BYTES)
        await self._drop_revoked(revoked)

    def may_dial(self, peer: str) -> bool:
        """Whether a member heard of may be dialled at the addresses we were told: with
        admission on, only certified, unrevoked ids (an id someone made up has no certificate,
        so its addresses, which its inventor chose, are never dialled). With admission off, an
        id only heard of is dialled (the only way to meet a member of an open federation), at
        most ``HEARSAY_DIALS`` times until it is heard from directly."""
        if self.security.enabled:
            return self.security.is_certified(peer)
        return (self.membership.is_direct(peer)
                or self._hearsay_dialled.get(peer, 0) < HEARSAY_DIALS)

    def heartbeat_targets(self) -> dict[str, tuple[str, ...]]:
        """Whom to heartbeat now: everyone while joining; then the neighbours and a few others.

        Each heartbeat is a libp2p stream, which costs CPU in every process; once links are
        formed, neighbours plus ``HEARTBEAT_EXTRA`` random members keep membership fresh (ages
        travel with the member lists, so hearsay covers the rest).
        """
        members = [p for p in self.membership.ids() if self.may_dial(p)]
        if self.topology is None:
            chosen = members if len(members) <= HEARTBEAT_FANOUT else self.rng.sample(
                members, HEARTBEAT_FANOUT)
        else:
            others = [p for p in members if p not in self.neighbours]
            chosen = [p for p in members if p in self.neighbours]
            chosen += self.rng.sample(others, min(HEARTBEAT_EXTRA, len(others)))
        targets = {p: self.membership.addrs(p) for p in chosen}
        for peer in chosen:
            if not self.membership.is_direct(peer):
                self._hearsay_dialled[peer] = self._hearsay_dialled.get(peer, 0) + 1
        for peer, addr in self.bootstrap:
            if (peer not in self.membership and peer != self.peer_id
                    and peer not in self.security.revoked):
                targets[peer] = (addr,)
        return targets

    async def _heartbeat_loop(self) -> None:
        """Heartbeat every interval. Each cycle waits for its heartbeats' answers (so the rate
        stays one cycle per interval plus a round trip: each heartbeat is a libp2p stream, which
        costs CPU in every process), but at most one interval: a peer that does not answer (cut
        off, paused) keeps its heartbeat in flight under the request timeout and is skipped
        until it ends, so it delays no one else's. The neighbours that are alive keep hearing
        from us every cycle, which their liveness counting relies on."""
        in_flight: set[str] = set()

        async def send(peer: str, addrs: tuple[str, ...], done: trio.Event) -> None:
            try:
                await self._send_heartbeat(peer, addrs)
            finally:
                in_flight.discard(peer)
                done.set()

        interval = self.protocol.heartbeat_interval
        async with trio.open_nursery() as nursery:
            while True:
                self.renew_stamp()
                answers = []
                for peer, addrs in self.heartbeat_targets().items():
                    if peer not in in_flight:
                        in_flight.add(peer)
                        answers.append(trio.Event())
                        nursery.start_soon(send, peer, addrs, answers[-1])
                with trio.move_on_after(interval):
                    for answer in answers:
                        await answer.wait()
                # the configured list file, re-read when its holder writes a newer one
                await self._drop_revoked(self._revocations_judged(
                    "the revocations file", *self.security.poll_revocations_file()))
                for peer in self.membership.prune(trio.current_time()):
                    self._hearsay_dialled.pop(peer, None)
                    log.warning("forgot member %s: silent for %.1f s", peer,
                                self.protocol.member_timeout)
                self.notify()  # a round waiting on a neighbour notices it went silent
                await trio.sleep(interval)

    async def _send_heartbeat(self, peer: str, addrs: tuple[str, ...]) -> None:
        with trio.move_on_after(self.protocol.request_timeout):
            try:
                async with self.channel_to(peer, PROTO_MEMBERSHIP, addrs) as channel:
                    await channel.send(self.heartbeat(), MAX_CONTROL_BYTES)
                    reply = await channel.receive(Heartbeat, MAX_CONTROL_BYTES)
            except WireError as error:
                self.reject(peer, "heartbeat reply", "malformed", str(error))
                return
            except Exception as error:
                log.debug("heartbeat to %s failed: %s", peer, error)
                return
            revoked = self._take_revocations(peer, reply.revocations)
            if self._admitted(channel, "heartbeat reply", reply):
                self._absorb(reply)
            await self._drop_revoked(revoked)

    async def _join(self) -> None:
        """Wait until the federation's membership is known (expected count, or stable)."""
        expected = self.config.expected_members
        settle = self.config.settle_seconds
        last_count, stable_since = -1, trio.current_time()
        # A node that restarts needs its own neighbours back, not the whole federation (which may
        # have lost members for good since it started).
        saved = self._saved_neighbours() if self.resumed_from is not None else None
        wanted = set(saved) if saved else None
        with trio.move_on_after(self.protocol.join_timeout):
            while True:
                known = set(self.known_members())
                count = len(known) + 1
                now = trio.current_time()
                if count != last_count:
                    last_count, stable_since = count, now
                settled = now - stable_since >= settle
                if wanted is not None:
                    done = wanted <= known or bool(wanted & known and settled)
                elif self.federation_running():
                    # joining late: the member lists we were sent name whoever is there now
                    done = count > 1 and now - stable_since >= min(settle, 1.0)
                elif expected:
                    done = count >= expected
                else:
                    done = count > 1 and settled
                if done:
                    break
                await trio.sleep(0.05)
        count = len(self.known_members()) + 1
        if count < 2:
            raise NodeError(
                f"no other member found within {self.protocol.join_timeout:.0f} s "
                f"(bootstrap: {len(self.bootstrap)} address(es)); refusing to train alone"
            )
        if expected and count < expected:
            log.warning("joining with %d of %d expected members", count, expected)
        log.info("membership: %d members", count)

    # -- links -------------------------------------------------------------------------------

    def _topology_digest(self) -> str:
        members = sorted(self.topology or {})
        return hashlib.blake2b("\n".join(members).encode(), digest_size=8).hexdigest()

    def known_members(self) -> list[str]:
        """Members to build the topology over: those admitted (certificate presented, not
        revoked) when admission is on; else those heard from directly (an id only heard of may
        have been made up)."""
        if self.security.enabled:
            return [p for p in self.membership.ids() if self.security.is_member(p)]
        return [p for p in self.membership.ids() if self.membership.is_direct(p)]

    def _resume(self) -> None:
        """Start from the last checkpoint, if this node ran before (same identity, same folder):
        the private model as the model, the public estimate stored apart from it as x̂ (what
        is published and served: never the model), and the DP budget spent."""
        from gossipfl.node.checkpoint import load_latest_checkpoint

        state = load_latest_checkpoint(self.out / "checkpoint.npz")
        if state is None:
            try:  # killed before its first checkpoint: the write-ahead ledger may know more
                restore_dp_state(self, None)
            except CheckpointError as error:
                raise NodeError(f"{error}; refusing to start rather than forget the privacy "
                                "budget spent") from None
            self.state_loaded = True
            return
        round_ = state.round
        if state.meta.get("status") == NodeStatus.DONE:
            log.warning("the checkpoint says this node had finished; starting again from it")
        try:  # the budget spent is the data's, whatever the model: restored in every case
            restore_dp_state(self, state.meta)
        except CheckpointError as error:
            raise NodeError(f"{error}; refusing to start rather than forget the privacy budget "
                            "spent") from None
        if state.model.shape != self.model.shape:
            log.error("checkpoint holds %d parameters, the model has %d: not resuming",
                      state.model.size, self.model.size)
            self.state_loaded = True  # another model: this run's checkpoints replace it
            return
        self.model = state.model.copy()
        self.own = restored_public_estimate(state, self.own.vector)  # self.own: the initial
        self.round = round_
        self.resumed_from = round_
        self.state_loaded = True
        members = self._saved_members()
        log.warning("resuming from the checkpoint of round %d (%s members in the saved "
                    "topology)", round_, len(members) if members else "no")

    def _saved_topology(self, key: str) -> list[str] | None:
        try:
            saved = json.loads((self.out / "topology.json").read_text())[key]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return [str(m) for m in saved]

    def _saved_members(self) -> list[str] | None:
        return self._saved_topology("members")

    def _saved_neighbours(self) -> list[str] | None:
        """The neighbours saved at the last start (topology ones plus late joiners taken)."""
        saved = self._saved_topology("neighbours")
        if saved is not None:
            return saved
        members = self._saved_members()
        if not members:
            return None
        topology = build_topology(self.config.topology.kind, members,
                                  degree=self.config.topology.degree, seed=self.config.seed)
        return sorted(topology.get(self.peer_id, frozenset()))

    def _save_topology(self, members: list[str]) -> None:
        atomic_write_json(self.out / "topology.json",
                          {"members": sorted(members), "neighbours": sorted(self.wanted)})

    def federation_running(self) -> bool:
        """Some member we heard from directly is already past link formation (we are late)."""
        return any((status in RUNNING or status == NodeStatus.DONE) and round_ >= 0
                   for round_, status in self.member_state.values())

    async def _form_links(self) -> None:
        # The topology is the federation's from its start: a node that restarts reuses the member
        # set and the neighbours it saved then, so it finds the same neighbours, who still have
        # it in theirs.
        saved = self._saved_members()
        if saved is None and self.federation_running():
            await self._join_late()
            return
        members = saved or [self.peer_id, *self.known_members()]
        self.topology = build_topology(self.config.topology.kind, members,
                                       degree=self.config.topology.degree, seed=self.config.seed)
        saved_neighbours = self._saved_neighbours() if saved else None
        self.wanted = set(saved_neighbours or self.topology[self.peer_id])
        self.degree_target = len(self.topology[self.peer_id])
        self.link_cap = self.degree_target + self.protocol.extra_links
        self._save_topology(members)
        wanted = set(self.wanted)
        log.info("topology %s over %d members: %d neighbour(s) wanted",
                 self.config.topology.kind, len(members), len(wanted))
        refused: set[str] = set()
        last_change, linked = trio.current_time(), 0
        with trio.move_on_after(self.protocol.join_timeout):
            while wanted - set(self.neighbours) - refused:
                async with trio.open_nursery() as nursery:
                    for peer in sorted(wanted - set(self.neighbours) - refused):
                        nursery.start_soon(self._request_link, peer, refused)
                if len(self.neighbours) != linked:
                    last_change, linked = trio.current_time(), len(self.neighbours)
                # some links confirmed and no new one for a while: the others are gone for good
                # (a member that left), so go on with these rather than wait out the timeout
                if linked and trio.current_time() - last_change >= self.config.settle_seconds:
                    break
                if wanted - set(self.neighbours) - refused:
                    await trio.sleep(0.1)
        missing = wanted - set(self.neighbours)
        if missing:
            log.warning("links not confirmed with %s", ", ".join(sorted(missing)))
        if not self.neighbours:
            raise NodeError("no neighbour confirmed a link; refusing to train alone")
        log.info("neighbours: %s", ", ".join(sorted(self.neighbours)))

    def _late_degree(self) -> int:
        """How many neighbours a late joiner looks for: its degree in a topology of the same
        kind over the members it found."""
        members = [self.peer_id, *self.known_members()]
        topology = build_topology(self.config.topology.kind, members,
                                  degree=self.config.topology.degree, seed=self.config.seed)
        return max(1, len(topology[self.peer_id]))

    async def _join_late(self) -> None:
        """Join a federation already training: ask members (in an order of our own, so joiners
        spread out) to take us as an extra neighbour, until we have our degree of them."""
        if self.config.secagg.enabled:
            raise NodeError("the federation is already training and secure aggregation needs "
                            "the topology fixed at formation: a late joiner cannot take part")
        self.joined_late = True
        degree = self._late_degree()
        running = self.running_members()
        log.warning("joining late: the federation is already training; asking up to %d of %d "
                    "running member(s) for a link", degree, len(running))
        self.topology = {self.peer_id: frozenset()}
        refused: set[str] = set()
        with trio.move_on_after(self.protocol.join_timeout):
            queue = list(running)
            while queue and len(self.neighbours) < degree:
                need = degree - len(self.neighbours)
                batch, queue = queue[:need], queue[need:]
                async with trio.open_nursery() as nursery:
                    for peer in batch:
                        nursery.start_soon(functools.partial(
                            self._request_link, peer, refused, joining=True))
        if not self.neighbours:
            raise NodeError(f"joining late: none of the {len(running)} running member(s) took "
                            "this node as a neighbour; refusing to train alone")
        self.wanted = set(self.neighbours)
        self.degree_target = degree
        self.link_cap = len(self.wanted) + self.protocol.extra_links
        self.topology = {self.peer_id: frozenset(self.wanted)}
        self._save_topology([self.peer_id, *running])
        log.info("neighbours: %s", ", ".join(sorted(self.neighbours)))

    async def _request_link(self, peer: str, refused: set[str], *, joining: bool = False,
                            repair: bool = False) -> None:
        rejoin = self.resumed_from is not None or repair
        request = LinkRequest(self.config.federation, self.peer_id, self._topology_digest(),
                              self.round, rejoin=rejoin, joining=joining)
        with trio.move_on_after(self.protocol.request_timeout):
            try:
                async with self.channel_to(peer, PROTO_LINK) as channel:
                    await channel.send(request, MAX_CONTROL_BYTES)
                    reply = await channel.receive(LinkReply, MAX_CONTROL_BYTES)
            except Exception as error:
                log.debug("link request to %s failed: %s", peer, error)
                return
            if not self._check_origin(channel, "link reply", reply.federation, reply.sender):
                return
            if reply.status == LinkCode.ACCEPTED:
                if joining or repair:
                    await self._reset_link(peer)
                else:
                    self.neighbours.setdefault(peer, NeighbourState())
                if repair:
                    self.relinks += 1
                    log.warning("re-linked with neighbour %s (it is at round %d, this node at "
                                "%d)", peer, reply.round, self.round)
                    self.note_peer_round(peer, reply.round, NodeStatus.TRAINING)
            elif reply.status == LinkCode.REJECTED:
                log.log(logging.INFO if repair or joining else logging.WARNING,
                        "%s refused a link: %s", peer, reply.reason)
                refused.add(peer)

    async def _reset_link(self, peer: str) -> None:
        """Start a link afresh: each end forgets what it held of the other (a restart, a
        repair after an outage, a late joiner), so the next contributions are full estimates.
        A link reset moments ago (both ends asked at once) is kept as it is."""
        now = trio.current_time()
        if peer in self.neighbours and now - self._linked_at.get(peer, -math.inf) < \
                self.protocol.relink_interval:
            return
        old = self.neighbours.pop(peer, None)
        if old is not None and old.channel is not None:
            await old.channel.reset()
        if old is not None:
            await close_streams(old, reset=True)
        self.neighbours[peer] = NeighbourState()
        self.estimates.forget(peer)
        self._linked_at[peer] = now
        self.notify()

    async def _relink_loop(self) -> None:
        """Ask lost neighbours back: a neighbour dropped for missed rounds (it paused, or a
        partition cut it off) that answers again is linked afresh. Each ask is one stream under
        the request timeout; one that refused is left alone for a while. One the membership
        forgot (silent for ``member_timeout``) may be gone for good, or behind a partition that
        will heal, so it is still asked every interval (one cheap failed dial while it is away;
        a node that gave up on it would leave a healed partition apart). While such neighbours
        leave this node short of its degree, it links with other members too
        (``_replace_departed``)."""
        interval = self.protocol.relink_interval
        while True:
            await trio.sleep(interval)
            if not self.status.running:
                continue
            now = trio.current_time()
            lost = [p for p in sorted(self.wanted - set(self.neighbours))
                    if self._relink_refused.get(p, -math.inf) <= now
                    and self.member_state.get(p, (-1, None))[1] != NodeStatus.DONE]
            if lost:
                refused: set[str] = set()
                async with trio.open_nursery() as nursery:
                    for peer in lost:
                        nursery.start_soon(functools.partial(self._request_link, peer,
                                                             refused, repair=True))
                for peer in refused:
                    self._relink_refused[peer] = now + 10 * interval
            if not self.config.secagg.enabled:
                await self._replace_departed(now)

    def running_members(self) -> list[str]:
        """Members heard to be training or in consensus, in an order of this node's own (a hash
        of both ids), so that nodes asking for links at once spread over different members."""
        return sorted(
            (p for p in self.known_members()
             if self.member_state.get(p, (-1, None))[1] in RUNNING),
            key=lambda p: hashlib.blake2b(f"{self.peer_id}/{p}".encode()).digest(),
        )

    def replacement_candidates(self, now: float) -> list[str]:
        """Running members we are not linked with, leaving out those that refused lately."""
        return [p for p in self.running_members()
                if p not in self.wanted and self._extra_refused.get(p, -math.inf) <= now]

    async def _replace_departed(self, now: float) -> None:
        """Neighbours gone for good (the membership forgot them: silent for
        ``member_timeout``) that leave this node short of its degree are replaced: it asks other
        running members for an extra link, as a late joiner does, one per missing neighbour. A
        departed neighbour stays wanted; if it comes back it is linked again, above the degree
        (up to the link cap)."""
        gone = sorted(p for p in self.wanted - set(self.neighbours) if p not in self.membership)
        need = min(len(gone), self.degree_target - len(self.neighbours))
        if need <= 0:
            return
        candidates = self.replacement_candidates(now)[:need]
        if not candidates:
            return
        before = set(self.neighbours)
        refused: set[str] = set()
        async with trio.open_nursery() as nursery:
            for peer in candidates:
                nursery.start_soon(functools.partial(self._request_link, peer, refused,
                                                     joining=True))
        for peer in refused:
            self._extra_refused[peer] = now + 10 * self.protocol.relink_interval
        new = sorted(set(self.neighbours) - before - self.wanted)
        if not new:
            return
        self.wanted.update(new)
        self._save_topology(self._saved_members() or [self.peer_id, *self.wanted])
        for peer in new:
            self.replacements.append({"peer_id": peer, "round": self.round, "replacing": gone})
        log.warning("round %d: neighbour(s) %s gone for good; linked with %s instead",
                    self.round, ", ".join(gone), ", ".join(new))

    def note_peer_round(self, peer: str, round_: int, status: NodeStatus) -> None:
        """A neighbour told us its round. In the synchronous protocol a neighbour can be more
        than a round or two ahead only if it stopped waiting for us (we were cut off, paused or
        dropped): then pulling its state beats dragging the average back."""
        if (self.protocol.mode is not Mode.SYNC or peer not in self.neighbours
                or status not in RUNNING or not self.status.running):
            return
        ahead = round_ - self.round > self.protocol.catch_up_rounds
        if ahead and (self.behind is None or round_ > self.behind):
            self.behind = round_
            self.notify()

    async def drop_neighbour(self, peer: str, r: int, reason: str) -> None:
        """Stop waiting for ``peer`` (it stays wanted: the re-link loop asks it back)."""
        state = self.neighbours.pop(peer, None)
        if state is None:
            return
        self.estimates.forget(peer)
        self._linked_at.pop(peer, None)
        self.dropped.append({"peer_id": peer, "round": r, "reason": reason})
        self.notify()
        if state.channel is not None:
            await state.channel.reset()
        await close_streams(state, reset=True)
        if self.net is not None:
            # a connection that went silent (a partition that drops packets, a frozen peer)
            # would carry the next re-link request into the void: start from a fresh dial
            with trio.move_on_after(self.protocol.request_timeout):
                await self.net.disconnect(peer)
        if not self.neighbours:
            log.error("no neighbours left: this node trains alone until one comes back")

    async def _on_link(self, channel: Channel) -> None:
        request = await channel.receive(LinkRequest, MAX_CONTROL_BYTES)
        if not self._check_origin(channel, "link request", request.federation, request.sender):
            return
        if not self.security.is_member(request.sender):
            self.reject(request.sender, "link request", "not_member", "no valid certificate")
            status, reason = LinkCode.REJECTED, "no valid certificate seen"
        elif self.topology is None:
            status, reason = LinkCode.NOT_READY, "still joining"
        elif self.status == NodeStatus.DONE:
            status, reason = LinkCode.REJECTED, "finished"
        elif request.sender in self.wanted:
            status, reason = LinkCode.ACCEPTED, ""
            if request.rejoin:
                await self._relink(request.sender)
            else:
                self.neighbours.setdefault(request.sender, NeighbourState())
        elif request.joining:
            status, reason = self._take_joiner(request.sender)
            if status == LinkCode.ACCEPTED:
                await self._reset_link(request.sender)
        else:
            status, reason = LinkCode.REJECTED, "not a neighbour in my topology"
        await channel.send(
            LinkReply(self.config.federation, self.peer_id, status, reason, self.round),
            MAX_CONTROL_BYTES
        )
        if status == LinkCode.ACCEPTED:
            self.note_peer_round(request.sender, request.round, NodeStatus.TRAINING)

    def _take_joiner(self, peer: str) -> tuple[LinkCode, str]:
        """A late joiner asks to be our neighbour: yes while we have room (degree + extra)."""
        if self.config.secagg.enabled:
            return LinkCode.REJECTED, "secure aggregation: the topology is fixed at formation"
        if len(self.neighbours) >= self.link_cap:
            return LinkCode.REJECTED, f"no room: {len(self.neighbours)} neighbours already"
        self.wanted.add(peer)
        self._save_topology(self._saved_members() or [self.peer_id, *self.wanted])
        log.warning("took %s as an extra neighbour, a late joiner or one replacing a departed "
                    "neighbour (%d neighbours now)", peer, len(self.neighbours) + 1)
        return LinkCode.ACCEPTED, ""

    async def _relink(self, peer: str) -> None:
        """A neighbour restarted or comes back after an outage: it lost our estimate (or we
        dropped it) and we drop the one we held of it."""
        await self._reset_link(peer)
        self.rejoins_served += 1
        log.warning("neighbour %s rejoined after a restart or an outage", peer)

    async def _catch_up(self) -> None:
        """After a restart or a late join: pull the neighbours' current estimates and continue
        from them.

        The node takes the mean of what its neighbours hold now (not its old checkpoint, which
        would drag the average back) and joins the round they are in. Under secure aggregation
        nothing is pulled (:meth:`_catch_up_secure`).
        """
        if self.config.secagg.enabled:
            self._catch_up_secure(self.round + 1, "restart")
            self.start_round = self.round + 1
            return
        pulled = await self._pull_neighbourhood()
        if not pulled:
            log.warning("no neighbour answered the state request; continuing from %s",
                        "the checkpoint" if self.resumed_from is not None else "the start")
            self.start_round = self.round + 1
            return
        self.model = np.mean([v for _, v in pulled.values()], axis=0).astype(np.float32)
        self.model_public = True  # the neighbours' public estimates only
        self.start_round = consensus_round(r for r, _ in pulled.values())
        self.round = self.start_round - 1
        log.warning("caught up from %d neighbour(s): continuing at round %d (%s)", len(pulled),
                    self.start_round, "joined late" if self.resumed_from is None
                    else f"checkpoint was round {self.resumed_from}")
        self.catch_ups.append({"from_round": self.resumed_from, "to_round": self.start_round,
                               "neighbours": len(pulled),
                               "why": "restart" if self.resumed_from is not None else "late"})

    async def catch_up_now(self, r: int) -> int:
        """Mid-run: a neighbour said it is far ahead (we were cut off, paused or dropped). Pull
        every neighbour's state; if most of them are ahead of round ``r``, take the mean of
        those ahead as our model and return the round to go on from; else return ``r``."""
        target, self.behind = self.behind, None
        if self.config.secagg.enabled:
            return self._catch_up_secure(r, "behind")
        pulled = await self._pull_neighbourhood()
        jump = consensus_round(r for r, _ in pulled.values()) if pulled else r
        if jump <= r:
            log.info("round %d: a neighbour reported round %s, but most are not ahead (%d "
                     "answered); going on", r, target, len(pulled))
            return r
        ahead = [v for round_, v in pulled.values() if round_ > r]
        self.model = np.mean(ahead, axis=0).astype(np.float32)
        self.model_public = True  # the neighbours' public estimates only
        self.round = jump - 1
        self.catch_ups.append({"from_round": r, "to_round": jump, "neighbours": len(ahead),
                               "why": "behind"})
        log.warning("round %d: neighbours were ahead; caught up from %d of them: continuing at "
                    "round %d", r, len(ahead), jump)
        return jump

    def _catch_up_secure(self, r: int, why: str) -> int:
        """Under secure aggregation: no neighbour's estimate is pulled (that would be one
        member's estimate in the clear). The node keeps its own model and goes on at the round
        most of its neighbours are in, as their heartbeats and masked inputs told it; its next
        secure round brings in the neighbourhood's masked sum. Returns the round to go on at
        (``r``: stay) and sets ``self.round`` to the one before."""
        masked = {p: status[0] for p, status in self.secagg.peer_status.items()}
        in_progress = rounds_in_progress(self.neighbours, self.member_state, masked)
        jump = secure_catch_up_round(r, in_progress.values())
        log.warning("secure aggregation (%s): no neighbour's estimate is pulled; going on from "
                    "this node's own model at round %d (%d neighbour(s) reported their round); "
                    "its next secure round brings in the neighbourhood's masked sum", why, jump,
                    len(in_progress))
        if jump <= r:
            return r
        self.round = jump - 1
        self.catch_ups.append({"from_round": r if why == "behind" else self.resumed_from,
                               "to_round": jump, "neighbours": len(in_progress), "why": why})
        return jump

    async def _pull_neighbourhood(self) -> dict[str, tuple[int, np.ndarray]]:
        """Pull every neighbour's current public estimate and hold it as its estimate; returns
        peer → (round, vector) for those that answered with a usable one. Never under secure
        aggregation (no plaintext path to one member's estimate): returns nothing."""
        if self.config.secagg.enabled:
            log.error("not pulling neighbours' estimates: secure aggregation is on")
            return {}
        pulled: dict[str, Contribution] = {}
        async with trio.open_nursery() as nursery:
            for peer in list(self.neighbours):
                nursery.start_soon(self._pull_state, peer, pulled)
        result = {}
        for peer, message in pulled.items():
            try:
                vector = self.layout.from_tensors(message.tensors)
            except LayoutError as error:
                self.reject(peer, "state", "layout", str(error))
                continue
            held = self.estimates.peers.get(peer)
            self.estimates.forget(peer)  # the pulled state replaces whatever we held
            try:
                self.estimates.apply(message, vector)
            except EstimateError as error:
                if held is not None:
                    self.estimates.peers[peer] = held
                self.reject(peer, "state", error.key, error.reason)
                continue
            result[peer] = (message.round, vector)
        return result

    async def _pull_state(self, peer: str, pulled: dict[str, Contribution]) -> None:
        request = LinkRequest(self.config.federation, self.peer_id, self._topology_digest(),
                              self.round, rejoin=True)
        with trio.move_on_after(self.protocol.request_timeout):
            try:
                async with self.channel_to(peer, PROTO_STATE) as channel:
                    await channel.send(request, MAX_CONTROL_BYTES)
                    message, _ = await self.receive_payload(channel, Contribution)
            except Exception as error:
                log.info("state request to %s failed: %s", peer, error)
                return
            if message is not None and message.sender == peer and message.kind == "full":
                pulled[peer] = message

    async def _on_state_request(self, channel: Channel) -> None:
        """Give a (re)joining neighbour our current public estimate x̂ (never the private model)
        and round; refused to anyone under secure aggregation (catchup.py)."""
        remote = channel.remote  # authenticated by Noise: judged before anything is read
        refusal = state_refusal(secure_aggregation=self.config.secagg.enabled,
                                neighbour=remote in self.neighbours,
                                member=self.security.is_member(remote))
        if refusal is not None:
            self.reject(remote, "state request", refusal.key, refusal.value)
            return
        request = await channel.receive(LinkRequest, MAX_CONTROL_BYTES)
        if not self._check_origin(channel, "state request", request.federation, request.sender):
            return
        message = Contribution(
            federation=self.config.federation, round=max(self.own.round, 0),
            sender=self.peer_id, receiver=remote, degree=len(self.neighbours), kind="full",
            base_round=-1, disagreement=float(min(self.disagreement, 1e9)),
            done=self.status == NodeStatus.DONE,
            tensors=self.layout.to_tensors(self.own.vector),
            training=self.status == NodeStatus.TRAINING,
        )
        await self.send_payload(channel, message)
        # it holds our estimate as of this round now
        self.neighbours[remote].peer_holds = self.own.round

    # -- contributions -----------------------------------------------------------------------

    async def _on_contribution(self, channel: Channel) -> None:
        """Serve one neighbour's contribution stream: a frame, an ack, and again.

        The stream stays open across rounds (opening a libp2p stream costs several times more
        CPU than sending on one). Each frame must arrive within ``idle_timeout`` of the last;
        an idle stream is closed, and the sender opens a new one when it next needs to.
        """
        while True:
            with trio.move_on_after(self.idle_timeout) as scope:
                message, round_ = await self.receive_payload(channel, Contribution)
            if scope.cancelled_caught:
                log.debug("closing the idle contribution stream from %s", channel.remote)
                return
            if not self.limiter.allow(channel.remote, trio.current_time()):
                self.flood(channel.remote, "more frames a second than allowed")
                return
            if message is None:
                status, reason = AckCode.REJECTED, AckReason.ENVELOPE_REFUSED
            else:
                status, reason = self._accept_contribution(channel.remote, message)
            ack = Ack(self.config.federation, round_, self.peer_id, status, reason)
            with trio.fail_after(self.protocol.request_timeout):
                await channel.send(ack, MAX_CONTROL_BYTES)
            if status == AckCode.REJECTED and AckReason.of(reason) in (
                    AckReason.WRONG_FEDERATION, AckReason.NOT_NEIGHBOUR):
                return

    async def _on_masked(self, channel: Channel) -> None:
        await serve_requests(self, channel, functools.partial(on_masked_input, self))

    async def _on_unmask(self, channel: Channel) -> None:
        await serve_requests(self, channel, functools.partial(on_unmask_request, self))

    async def _on_consistency(self, channel: Channel) -> None:
        await serve_requests(self, channel, functools.partial(on_consistency_request, self))

    def _open_sealed(self, remote: str, sealed: Sealed) -> Contribution | None:
        return self.open_sealed_message(remote, sealed, Contribution)

    def open_sealed_message(self, remote: str, sealed: Sealed, expected: type[M]) -> M | None:
        """Open an envelope; a tampered, redirected or forged one is dropped with a log line."""
        what = f"sealed {expected.KIND}"
        if not self.security.is_member(remote):
            self.reject(remote, what, "not_member", "no valid certificate")
            return None
        if sealed.receiver != self.peer_id:
            self.reject(remote, what, "misaddressed", f"for {sealed.receiver}")
            return None
        try:
            return self.security.open(remote, sealed, expected)
        except EnvelopeError as error:
            self.reject(remote, what, f"envelope_{error.reason}", str(error))
        except (WireError, ValueError) as error:  # anything else the inside may break
            self.reject(remote, what, "malformed", str(error))
        return None

    @property
    def idle_timeout(self) -> float:
        return max(60.0, 2 * self.protocol.round_timeout)

    def _accept_contribution(self, remote: str, message: Contribution) -> tuple[AckCode, str]:
        """Validate and apply one contribution; returns the ack (status, reason: an
        :class:`AckReason` where peers act on it, else text for logs)."""
        if message.federation != self.config.federation:
            self.reject(remote, "contribution", "federation", repr(message.federation))
            return AckCode.REJECTED, AckReason.WRONG_FEDERATION
        if message.sender != remote:
            self.reject(remote, "contribution", "sender_mismatch", f"names {message.sender}")
            return AckCode.REJECTED, AckReason.SENDER_MISMATCH
        if message.receiver != self.peer_id:
            self.reject(remote, "contribution", "misaddressed", f"for {message.receiver}")
            return AckCode.REJECTED, AckReason.MISADDRESSED
        if not self.security.is_member(message.sender):
            self.reject(remote, "contribution", "not_member", "no valid certificate")
            return AckCode.REJECTED, AckReason.NOT_MEMBER
        if message.sender not in self.neighbours:
            self.reject(remote, "contribution", "not_neighbour", "no link with this peer")
            return AckCode.REJECTED, AckReason.NOT_NEIGHBOUR
        # a round far beyond the sender's last one (as its contributions and heartbeats told us)
        # and ours would make every later genuine contribution look stale (in async mode
        # neighbours' rounds drift apart, one at a time)
        known = max(self.round, self.estimates.holds(message.sender),
                    self.member_state.get(message.sender, (-1, None))[0], 0)
        if message.round > known + FUTURE_ROUNDS:
            self.note_peer_round(message.sender, message.round, NodeStatus.TRAINING)
            self.reject(remote, "contribution", "future",
                        f"round {message.round}, this node is at {self.round}")
            return AckCode.REJECTED, AckReason.TOO_FAR_AHEAD
        try:
            vector = self.layout.from_tensors(message.tensors)
            self.estimates.apply(message, vector)
        except LayoutError as error:
            self.reject(remote, "contribution", "layout", str(error))
            return AckCode.REJECTED, str(error)
        except EstimateError as error:
            if error.status == AckCode.NEED_FULL:
                log.info("asking %s for its full estimate: %s", remote, error.reason)
            else:
                self.reject(remote, "contribution", error.key, error.reason)
            return error.status, error.reason
        self.neighbours[message.sender].missed = 0
        self.membership.heard_from(message.sender, (), trio.current_time())
        self.notify()
        return AckCode.OK, ""

    def write_metrics(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
