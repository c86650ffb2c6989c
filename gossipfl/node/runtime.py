"""One gossipfl node: a libp2p host, membership gossip, neighbour links, and the round loop.

The node owns one trio nursery. Its tasks: the membership heartbeat loop, the stream handlers
(membership, link, contribution), the signal watcher, and the main sequence
join → form links → rounds (:mod:`gossipfl.node.round`) → consensus → final model. Every network
wait runs under a deadline; a dead or slow peer costs at most a timeout, never a stall.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import resource
import secrets
import signal
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import multiaddr
import numpy as np
import trio
from libp2p.abc import INetStream

from gossipfl.aggregation.topology import build_topology
from gossipfl.config import NodeConfig
from gossipfl.crypto.identity import Identity
from gossipfl.gossip.framing import StreamClosed, StreamEnded
from gossipfl.gossip.host import make_host
from gossipfl.gossip.membership import Membership
from gossipfl.gossip.peers import Channel, PeerNet, Traffic
from gossipfl.gossip.ratelimit import PeerLimiter
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
from gossipfl.node.checkpoint import atomic_write_json, save_checkpoint
from gossipfl.node.estimates import EstimateError, OwnEstimate, PeerEstimates
from gossipfl.node.layout import Layout, LayoutError
from gossipfl.node.learner import LocalLearner
from gossipfl.node.secure_round import (
    PROTO_MASKED,
    PROTO_UNMASK,
    SecAggState,
    on_masked_input,
    on_unmask_request,
)
from gossipfl.node.security import EnvelopeError, NodeSecurity

log = logging.getLogger("gossipfl.node")

PROTO_MEMBERSHIP = "/gossipfl/membership/1.0.0"
PROTO_LINK = "/gossipfl/link/1.0.0"
PROTO_CONTRIBUTION = "/gossipfl/contribution/1.0.0"
PROTO_SEALED = "/gossipfl/sealed-contribution/1.0.0"
PROTO_STATE = "/gossipfl/state/1.0.0"
HEARTBEAT_FANOUT = 16
HEARTBEAT_EXTRA = 2
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


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def split_p2p_addr(addr: str) -> tuple[str, str]:
    """'/ip4/../tcp/../p2p/ID' → (ID, the whole address). Raises ValueError without /p2p/."""
    maddr = multiaddr.Multiaddr(addr)
    peer_id = maddr.value_for_protocol("p2p")
    if not peer_id:
        raise ValueError(f"bootstrap address {addr} has no /p2p/<peer id> part")
    return str(peer_id), addr


class Node:
    """A federation member. Build it, then ``await node.run()`` inside ``trio.run``."""

    def __init__(self, config: NodeConfig, identity: Identity, learner: LocalLearner) -> None:
        self.config = config
        self.identity = identity
        self.peer_id = str(identity.peer_id)
        self.learner = learner
        self.out = Path(config.out_dir)
        self.protocol = config.protocol
        self.membership = Membership(self.peer_id, config.protocol.member_timeout)
        self.traffic = Traffic()
        self.rejections: Counter[str] = Counter()
        self.timeouts = 0
        self.layout = Layout.from_named(named_arrays(learner.template))
        initial = learner.initial_vector()
        self.model = initial.copy()
        self.own = OwnEstimate(initial.copy())
        self.estimates = PeerEstimates.empty(self.layout.size)
        self.topology: dict[str, frozenset[str]] | None = None
        self.neighbours: dict[str, NeighbourState] = {}
        self.dropped: list[dict[str, Any]] = []
        self.round = -1
        self.start_round = 0
        self.resumed_from: int | None = None
        self.rejoins_served = 0
        self.diverged_rounds: list[int] = []
        self.async_seen: dict[str, int] = {}  # async mode: neighbours' rounds at our last round
        self.status = "joining"
        self.disagreement = math.inf
        self.addrs: list[str] = []
        self.changed = trio.Event()
        self.bootstrap = [split_p2p_addr(a) for a in config.bootstrap]
        self.final_accuracy: float | None = None
        self.history: list[dict[str, Any]] = []
        self.isolated_rounds = 0
        self.net: PeerNet | None = None
        self.security = NodeSecurity(config, identity)
        self.secagg = SecAggState()
        self.limiter = PeerLimiter(rate=config.protocol.peer_rate,
                                   burst=config.protocol.peer_burst,
                                   max_open=config.protocol.peer_streams)
        self._flood_logged: dict[str, float] = {}
        self.budget: Any = None
        self.dp_rng: np.random.Generator | None = None
        self.dp_exhausted_round: int | None = None
        if config.privacy.enabled:
            from gossipfl.privacy.accountant import PrivacyBudget

            self.budget = PrivacyBudget(config.privacy)
            # fresh entropy: noise that peers could predict would protect nothing
            self.dp_rng = np.random.default_rng(secrets.randbits(128))

    @property
    def contribution_protocol(self) -> str:
        return PROTO_SEALED if self.security.sealed else PROTO_CONTRIBUTION

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> str:
        """Run the node to the end; returns its final status ("done" or "stopped")."""
        from gossipfl.node.round import run_rounds  # the one place a round is composed

        host, listen = make_host(self.identity, self.config.listen)
        self.net = PeerNet(host, self.traffic, self.config.routes)
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            async with host.run(listen_addrs=listen), trio.open_nursery() as nursery:
                host.set_stream_handler(PROTO_MEMBERSHIP, self._guard(self._on_heartbeat))
                host.set_stream_handler(PROTO_LINK, self._guard(self._on_link))
                if self.config.secagg.enabled:
                    host.set_stream_handler(PROTO_MASKED, self._guard(self._on_masked))
                    host.set_stream_handler(PROTO_UNMASK, self._guard(self._on_unmask))
                host.set_stream_handler(
                    self.contribution_protocol,
                    self._guard(self._on_contribution, timeout=math.inf),  # per frame inside
                )
                self.addrs = [str(a) for a in host.get_addrs()]
                self._write_node_info()
                log.info("listening on %s", ", ".join(self.addrs))
                nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                nursery.start_soon(self._heartbeat_loop)
                task_status.started(self.addrs)
                host.set_stream_handler(PROTO_STATE, self._guard(self._on_state_request))
                self._resume()
                await self._join()
                await self._form_links()
                if self.resumed_from is not None:
                    await self._catch_up()
                self.status = "training"
                await run_rounds(self)
                self.status = "done"
                nursery.cancel_scope.cancel()
        finally:
            # Stopping now either way: a second signal must not cut the final writes short.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            if self.status != "done":
                self.status = "stopped"
            self._write_final()
        return self.status

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
        save_checkpoint(self.out / "checkpoint.npz", self.model, self.round, status=self.status)
        if self.status == "done":
            save_checkpoint(self.out / "final.npz", self.model, self.round, status="done")
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
            "parameters": self.layout.size,
            "examples": len(self.learner.y),
            "privacy": self.privacy_summary(),
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
                epsilon=self.budget.epsilon(), delta=dp.delta, target_epsilon=dp.target_epsilon,
                noise_multiplier=dp.noise_multiplier, clip_norm=dp.clip_norm,
                rounds_spent=self.budget.rounds_spent,
                stopped_contributing_round=self.dp_exhausted_round,
            )
        return summary

    # -- helpers -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def channel_to(self, peer: str, protocol: str,
                         addrs: tuple[str, ...] | None = None) -> AsyncIterator[Channel]:
        """A new stream to ``peer`` for ``protocol`` (dialling it if needed), closed after."""
        assert self.net is not None
        known = self.membership.addrs(peer) if addrs is None else addrs
        channel = await self.net.open(peer, known, protocol)
        try:
            yield channel
        finally:
            await channel.close()

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

    def flood(self, peer: str, detail: str) -> None:
        """Count input dropped by the per-peer bounds; log it at most once a second a peer."""
        self.rejections["flood"] += 1
        now = trio.current_time()
        if now - self._flood_logged.get(peer, -math.inf) >= 1.0:
            self._flood_logged[peer] = now
            log.warning("dropped input from %s: flood (%s; %d dropped so far from all peers)",
                        peer, detail, self.rejections["flood"])

    def reject(self, peer: str, what: str, reason_key: str, detail: str) -> None:
        self.rejections[reason_key] += 1
        log.warning("dropped %s from %s: %s (%s)", what, peer, reason_key, detail)

    def _guard(self, handler: Any, timeout: float | None = None) -> Any:
        """Wrap a stream handler: a deadline, and no exception ever escapes into libp2p."""
        limit = self.protocol.request_timeout if timeout is None else timeout

        async def guarded(stream: INetStream) -> None:
            channel = Channel(stream, self.traffic)
            remote = channel.remote
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
            members=self.membership.snapshot(now), round=self.round,
            degree=len(self.neighbours), status=self.status if self.status != "stopped"
            else "done", certificate=self.security.own_certificate,
        )

    def _absorb(self, beat: Heartbeat) -> None:
        now = trio.current_time()
        if self.membership.heard_from(beat.sender, beat.addrs, now):
            log.info("new member %s (heard directly)", beat.sender)
        for peer in self.membership.merge(beat.members, now):
            log.info("new member %s (via %s)", peer, beat.sender)

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
        if not self._admitted(channel, "heartbeat", beat):
            await channel.reset()
            if self.security.enabled and self.net is not None:
                await self.net.disconnect(channel.remote)  # no certificate, no connection
            return
        self._absorb(beat)
        await channel.send(self.heartbeat(), MAX_CONTROL_BYTES)

    def heartbeat_targets(self) -> dict[str, tuple[str, ...]]:
        """Whom to heartbeat now: everyone while joining; then the neighbours and a few others.

        Each heartbeat is a libp2p stream, which costs CPU in every process; once links are
        formed, neighbours plus ``HEARTBEAT_EXTRA`` random members keep membership fresh (ages
        travel with the member lists, so hearsay covers the rest).
        """
        members = self.membership.ids()
        if self.topology is None:
            chosen = members if len(members) <= HEARTBEAT_FANOUT else random.sample(
                members, HEARTBEAT_FANOUT)
        else:
            others = [p for p in members if p not in self.neighbours]
            chosen = [p for p in members if p in self.neighbours]
            chosen += random.sample(others, min(HEARTBEAT_EXTRA, len(others)))
        targets = {p: self.membership.addrs(p) for p in chosen}
        for peer, addr in self.bootstrap:
            if peer not in self.membership and peer != self.peer_id:
                targets[peer] = (addr,)
        return targets

    async def _heartbeat_loop(self) -> None:
        while True:
            async with trio.open_nursery() as nursery:
                for peer, addrs in self.heartbeat_targets().items():
                    nursery.start_soon(self._send_heartbeat, peer, addrs)
            for peer in self.membership.prune(trio.current_time()):
                log.warning("forgot member %s: silent for %.1f s", peer,
                            self.protocol.member_timeout)
            await trio.sleep(self.protocol.heartbeat_interval)

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
            if self._admitted(channel, "heartbeat reply", reply):
                self._absorb(reply)

    async def _join(self) -> None:
        """Wait until the federation's membership is known (expected count, or stable)."""
        expected = self.config.expected_members
        settle = self.config.settle_seconds
        last_count, stable_since = -1, trio.current_time()
        # A node that restarts needs its own neighbours back, not the whole federation (which may
        # have lost members for good since it started).
        saved = self._saved_members() if self.resumed_from is not None else None
        wanted = None
        if saved:
            topology = build_topology(self.config.topology.kind, saved,
                                      degree=self.config.topology.degree, seed=self.config.seed)
            wanted = set(topology.get(self.peer_id, frozenset()))
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
        import hashlib

        members = sorted(self.topology or {})
        return hashlib.blake2b("\n".join(members).encode(), digest_size=8).hexdigest()

    def known_members(self) -> list[str]:
        """Members to build the topology over: those admitted, when admission is on."""
        return [p for p in self.membership.ids() if self.security.is_member(p)]

    def _resume(self) -> None:
        """Start from the last checkpoint, if this node ran before (same identity, same folder)."""
        from gossipfl.node.checkpoint import load_latest_checkpoint

        state = load_latest_checkpoint(self.out / "checkpoint.npz")
        if state is None:
            return
        params, round_, meta = state
        if meta.get("status") == "done":
            log.warning("the checkpoint says this node had finished; starting again from it")
        if params.shape != self.model.shape:
            log.error("checkpoint holds %d parameters, the model has %d: not resuming",
                      params.size, self.model.size)
            return
        self.model = params.copy()
        self.own = OwnEstimate(params.copy())
        self.round = round_
        self.resumed_from = round_
        if self.budget is not None:
            from gossipfl.privacy.accountant import PrivacyBudget

            self.budget = PrivacyBudget(self.config.privacy,
                                        rounds_spent=int(meta.get("dp_rounds", 0)))
        members = self._saved_members()
        log.warning("resuming from the checkpoint of round %d (%s members in the saved "
                    "topology)", round_, len(members) if members else "no")

    def _saved_members(self) -> list[str] | None:
        try:
            members = json.loads((self.out / "topology.json").read_text())["members"]
        except (OSError, ValueError, KeyError):
            return None
        return [str(m) for m in members]

    async def _form_links(self) -> None:
        # The topology is the federation's from its start: a node that restarts reuses the member
        # set it saved then, so it finds the same neighbours, who still have it in theirs.
        members = self._saved_members() or [self.peer_id, *self.known_members()]
        self.topology = build_topology(self.config.topology.kind, members,
                                       degree=self.config.topology.degree, seed=self.config.seed)
        atomic_write_json(self.out / "topology.json", {"members": sorted(members)})
        wanted = set(self.topology[self.peer_id])
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

    async def _request_link(self, peer: str, refused: set[str]) -> None:
        request = LinkRequest(self.config.federation, self.peer_id, self._topology_digest(),
                              self.round, rejoin=self.resumed_from is not None)
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
            if reply.status == "accepted":
                self.neighbours.setdefault(peer, NeighbourState())
            elif reply.status == "rejected":
                log.warning("%s refused a link: %s", peer, reply.reason)
                refused.add(peer)

    async def _on_link(self, channel: Channel) -> None:
        request = await channel.receive(LinkRequest, MAX_CONTROL_BYTES)
        if not self._check_origin(channel, "link request", request.federation, request.sender):
            return
        if not self.security.is_member(request.sender):
            self.reject(request.sender, "link request", "not_member", "no valid certificate")
            status, reason = "rejected", "no valid certificate seen"
        elif self.topology is None:
            status, reason = "not_ready", "still joining"
        elif request.sender in self.topology.get(self.peer_id, frozenset()):
            status, reason = "accepted", ""
            if request.rejoin:
                await self._relink(request.sender)
            else:
                self.neighbours.setdefault(request.sender, NeighbourState())
        else:
            status, reason = "rejected", "not a neighbour in my topology"
        await channel.send(
            LinkReply(self.config.federation, self.peer_id, status, reason, self.round),
            MAX_CONTROL_BYTES
        )

    async def _relink(self, peer: str) -> None:
        """A neighbour restarted: it lost our estimate and we drop the one we held of it."""
        old = self.neighbours.pop(peer, None)
        if old is not None and old.channel is not None:
            await old.channel.reset()
        self.neighbours[peer] = NeighbourState()
        self.estimates.forget(peer)
        self.rejoins_served += 1
        log.warning("neighbour %s rejoined after a restart", peer)
        self.notify()

    async def _catch_up(self) -> None:
        """After a restart: pull the neighbours' current estimates and continue from them.

        The node takes the mean of what its neighbours hold now (not its old checkpoint, which
        would drag the average back) and joins the round they are in.
        """
        pulled: dict[str, Contribution] = {}
        async with trio.open_nursery() as nursery:
            for peer in list(self.neighbours):
                nursery.start_soon(self._pull_state, peer, pulled)
        if not pulled:
            log.warning("no neighbour answered the state request; continuing from the checkpoint")
            self.start_round = (self.resumed_from or 0) + 1
            return
        vectors = []
        for peer, message in pulled.items():
            vector = self.layout.from_tensors(message.tensors)
            try:
                self.estimates.apply(message, vector)
            except EstimateError as error:
                log.warning("state from %s not usable: %s", peer, error.reason)
                continue
            vectors.append(vector)
        if vectors:
            self.model = np.mean(vectors, axis=0).astype(np.float32)
        self.start_round = max(m.round for m in pulled.values())
        self.round = self.start_round - 1
        log.warning("caught up from %d neighbour(s): continuing at round %d (checkpoint was "
                    "round %d)", len(vectors), self.start_round, self.resumed_from)

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
        """Give a (re)joining neighbour our current public estimate and round."""
        request = await channel.receive(LinkRequest, MAX_CONTROL_BYTES)
        remote = channel.remote
        if not self._check_origin(channel, "state request", request.federation, request.sender):
            return
        if remote not in self.neighbours or not self.security.is_member(remote):
            self.reject(remote, "state request", "not_neighbour", "no link with this peer")
            return
        message = Contribution(
            federation=self.config.federation, round=max(self.own.round, 0),
            sender=self.peer_id, receiver=remote, degree=len(self.neighbours), kind="full",
            base_round=-1, disagreement=float(min(self.disagreement, 1e9)),
            done=self.status == "done", tensors=self.layout.to_tensors(self.own.vector),
            training=self.status == "training",
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
                status, reason = "rejected", "envelope refused"
            else:
                status, reason = self._accept_contribution(channel.remote, message)
            ack = Ack(self.config.federation, round_, self.peer_id, status, reason)
            with trio.fail_after(self.protocol.request_timeout):
                await channel.send(ack, MAX_CONTROL_BYTES)
            if status == "rejected" and reason in ("wrong federation", "not a neighbour"):
                return

    async def _on_masked(self, channel: Channel) -> None:
        await on_masked_input(self, channel)

    async def _on_unmask(self, channel: Channel) -> None:
        await on_unmask_request(self, channel)

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

    def _accept_contribution(self, remote: str, message: Contribution) -> tuple[str, str]:
        """Validate and apply one contribution; returns the ack (status, reason)."""
        if message.federation != self.config.federation:
            self.reject(remote, "contribution", "federation", repr(message.federation))
            return "rejected", "wrong federation"
        if message.sender != remote:
            self.reject(remote, "contribution", "sender_mismatch", f"names {message.sender}")
            return "rejected", "sender does not match the connection"
        if message.receiver != self.peer_id:
            self.reject(remote, "contribution", "misaddressed", f"for {message.receiver}")
            return "rejected", "misaddressed"
        if not self.security.is_member(message.sender):
            self.reject(remote, "contribution", "not_member", "no valid certificate")
            return "rejected", "not a member"
        if message.sender not in self.neighbours:
            self.reject(remote, "contribution", "not_neighbour", "no link with this peer")
            return "rejected", "not a neighbour"
        # a round far beyond both the sender's last one and ours would make every later genuine
        # contribution look stale (in async mode neighbours' rounds drift apart, one at a time)
        if message.round > max(self.round, self.estimates.holds(message.sender), 0) + FUTURE_ROUNDS:
            self.reject(remote, "contribution", "future",
                        f"round {message.round}, this node is at {self.round}")
            return "rejected", "round too far ahead"
        try:
            vector = self.layout.from_tensors(message.tensors)
            self.estimates.apply(message, vector)
        except LayoutError as error:
            self.reject(remote, "contribution", "layout", str(error))
            return "rejected", str(error)
        except EstimateError as error:
            if error.status == "need_full":
                log.info("asking %s for its full estimate: %s", remote, error.reason)
            else:
                self.reject(remote, "contribution", error.key, error.reason)
            return error.status, error.reason
        self.neighbours[message.sender].missed = 0
        self.membership.heard_from(message.sender, (), trio.current_time())
        self.notify()
        return "ok", ""

    def write_metrics(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
