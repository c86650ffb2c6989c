"""Floods: heartbeats that carry 255 made-up members (trap addresses), and oversize and
msgpack-bomb frames on the payload and membership protocols, as a member and as a stranger
(a fresh, uncertified identity). What they may cost an honest node is bounded by
:mod:`gossipfl.gossip.membership`, :mod:`gossipfl.gossip.peers` and :mod:`gossipfl.gossip.wire`;
these roles measure it from the attacker's side (dials to its trap, frames taken as valid)."""

from __future__ import annotations

import dataclasses
import logging
import secrets
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.role import Role, next_round
from gossipfl.crypto.identity import Identity
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.peers import Channel, PeerNet, Traffic
from gossipfl.gossip.wire import HEADER, MAX_CONTROL_BYTES, MAX_MEMBERS, Ack, Heartbeat, MemberInfo
from gossipfl.node.membership_loop import PROTO_MEMBERSHIP, heartbeat
from gossipfl.node.secure_round import PROTO_MASKED

if TYPE_CHECKING:
    from gossipfl.node.runtime import Node

log = logging.getLogger("gossipfl.adversary")

FAKE_MEMBERS = MAX_MEMBERS - 1  # 255 made-up ids; the last entry poisons a real member
BOMB_BYTES = 4 * 1024 * 1024  # the measured bomb (280 MiB of RSS before the fix)
REPLY_SECONDS = 2.0


def fresh_identity() -> Identity:
    key_pair = create_new_key_pair(secrets.token_bytes(32))
    return Identity(key_pair=key_pair, peer_id=ID.from_pubkey(key_pair.public_key))


def fake_ids(count: int) -> list[str]:
    """``count`` made-up peer ids that look real (fresh Ed25519 keys, no certificate)."""
    return [str(fresh_identity().peer_id) for _ in range(count)]


def flood_heartbeat(beat: Heartbeat, fakes: list[str], trap: str, real: list[str], turn: int,
                    certificate: bytes, stamps: Mapping[str, bytes] | None = None) -> Heartbeat:
    """``beat`` with its member list replaced. Odd turns: the fakes at the trap address (every
    other one with the sender's own certificate, which cannot vouch for them but costs a
    check), and one real member, in turn, announced there too. Even turns: every real member
    it knows, "heard just now" (age 0) at the trap address, dead ones included, each with the
    last liveness stamp it ever held for it (``stamps``; a dead member's is old: a replay, all a
    liar can send without that member's key)."""
    if turn % 2 == 0:
        held = stamps or {}
        entries = [MemberInfo(peer, (trap,), 0.0, stamp=held.get(peer, b"")) for peer in real]
    else:
        entries = [MemberInfo(fake, (trap,), 0.0, certificate if i % 2 else b"")
                   for i, fake in enumerate(fakes[:FAKE_MEMBERS])]
        if real:
            entries.append(MemberInfo(real[turn // 2 % len(real)], (trap,), 0.0))
    return dataclasses.replace(beat, members=tuple(entries[:MAX_MEMBERS]))


def bomb_frame(size: int) -> bytes:
    """A frame whose body is one msgpack array of ``size − 5`` empty arrays."""
    n = size - 5
    body = b"\xdd" + struct.pack(">I", n) + b"\x90" * n
    return HEADER.pack(len(body)) + body


def oversize_frame(cap: int, sent: int = 1024) -> bytes:
    """A header announcing one byte over ``cap``, then ``sent`` bytes of its body."""
    return HEADER.pack(cap + 1) + b"\0" * sent


class MembershipFlood(Role):
    """Heartbeats to every member it knows, carrying in turn 255 made-up ids at a trap address
    (and one real member announced there), then every member it ever knew as heard just now.
    Its own ``succeeded``: dials to the trap (the report adds genuine members missing from, and
    fakes present in, honest topologies)."""

    kind = AdversaryKind.MEMBERSHIP_FLOOD

    async def deviate(self, node: Node) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        trap = f"/ip4/127.0.0.1/tcp/{listeners[0].socket.getsockname()[1]}"
        fakes = await node.offload(fake_ids, FAKE_MEMBERS)
        self.tally.extra.update(fake_ids=fakes, trap=trap)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._trapped, listeners)
            turn, ever = 0, set()  # every member it ever knew: the dead are announced too
            stamps: dict[str, bytes] = {}  # the last stamp it held for each: replayed
            while True:
                await trio.sleep(node.protocol.heartbeat_interval)
                members = sorted(p for p in node.membership.ids() if node.security.is_member(p))
                ever |= set(members)
                stamps.update((m.peer_id, m.stamp) for m in
                              node.membership.snapshot(trio.current_time()) if m.stamp)
                beat = flood_heartbeat(heartbeat(node, node.peer_id), fakes, trap,
                                       sorted(ever), turn, node.security.own_certificate,
                                       stamps)
                for peer in members:
                    nursery.start_soon(self._send, node, peer, beat)
                turn += 1

    async def _trapped(self, stream: trio.SocketStream) -> None:
        self.tally.succeeded += 1
        self.tally.details["trap_dials"] += 1
        await stream.aclose()

    async def _send(self, node: Node, peer: str, beat: Heartbeat) -> None:
        self.tally.attempts += 1
        with trio.move_on_after(node.protocol.request_timeout):
            try:
                async with node.channel_to(peer, PROTO_MEMBERSHIP) as channel:
                    await channel.send(beat, MAX_CONTROL_BYTES)
                    await channel.receive(Heartbeat, MAX_CONTROL_BYTES)
                self.tally.details["answered"] += 1
            except Exception:
                self.tally.details["refused"] += 1


class OversizeFlood(Role):
    """Each round, to each neighbour: an oversize header and a bomb on the contribution,
    masked-input and membership protocols as a member, and the same bombs from a fresh
    uncertified identity. ``succeeded``: bytes of its frames a neighbour took as valid."""

    kind = AdversaryKind.OVERSIZE_FLOOD

    def frames(self, node: Node) -> list[tuple[str, str, bytes]]:
        """(protocol, what, frame) to send each neighbour each round."""
        payload = min(BOMB_BYTES, node.payload_cap)
        return [
            (node.contribution_protocol, "bomb", bomb_frame(payload)),
            (node.contribution_protocol, "oversize", oversize_frame(node.payload_cap)),
            (PROTO_MASKED, "bomb", bomb_frame(payload // 4)),
            (PROTO_MEMBERSHIP, "bomb", bomb_frame(MAX_CONTROL_BYTES)),
            (PROTO_MEMBERSHIP, "oversize", oversize_frame(MAX_CONTROL_BYTES)),
        ]

    async def deviate(self, node: Node) -> None:
        from gossipfl.gossip.host import make_host

        stranger = fresh_identity()
        host, listen = make_host(stranger, ["/ip4/127.0.0.1/tcp/0"])
        net = PeerNet(host, Traffic())
        self.tally.extra["stranger"] = str(stranger.peer_id)
        async with host.run(listen_addrs=listen):
            r = -1
            while True:
                r = await next_round(node, r, node.protocol.heartbeat_interval)
                frames = self.frames(node)
                for peer in sorted(node.neighbours):
                    for protocol, what, frame in frames:
                        short = protocol.split("/")[2]
                        await self._send(node, peer, protocol, f"member_{what}_{short}", frame,
                                         None)
                        await self._send(node, peer, protocol, f"stranger_{what}_{short}",
                                         frame, net)

    async def _send(self, node: Node, peer: str, protocol: str, what: str, frame: bytes,
                    net: PeerNet | None) -> None:
        self.tally.attempts += 1
        self.tally.details["bytes_sent"] += len(frame)
        with trio.move_on_after(node.protocol.request_timeout):
            try:
                if net is None:
                    async with node.channel_to(peer, protocol) as channel:
                        taken = await self._write(channel, frame)
                else:
                    channel = await net.open(peer, node.addrs_of(peer), protocol)
                    try:
                        taken = await self._write(channel, frame)
                    finally:
                        await channel.reset()
            except Exception:
                taken = False
            self.tally.details[f"{what}_{'taken' if taken else 'refused'}"] += 1
            if taken:
                self.tally.succeeded += len(frame)

    @staticmethod
    async def _write(channel: Channel, frame: bytes) -> bool:
        """Write the raw frame; True if the peer answers as if it were valid."""
        await channel.stream.write(frame)
        with trio.move_on_after(REPLY_SECONDS):
            try:
                reply = await channel.receive(Ack, MAX_CONTROL_BYTES)
            except Exception:
                return False
            return reply.status == AckCode.OK
        return False
