"""Throughput of the estimate exchange over loopback: a plain py-libp2p stream, the node's sealed
contribution path, and its masked (secure-aggregation) input, in one run.

Two hosts made as a node makes them (:func:`gossipfl.gossip.host.make_host`: TCP, Noise,
yamux), in this one process and event loop, talk over 127.0.0.1. Each measurement sends one
message of ``n`` float32 parameters and waits for its acknowledgement, ``--reps`` times on one
open stream a path (as a node keeps its contribution streams open), after one warm-up exchange;
the paths take turns, one exchange each a repetition, so that a machine whose speed drifts
during the run slows them alike:

1. ``plain``: the bytes of a contribution frame as they are (no encoding, no crypto), read whole
   by the receiver, a one-byte answer.
2. ``contribution``: the node's path: a :class:`Contribution` built from the vector (its
   ``Layout``; the tensors views of the vector, as the node's exchange makes them), sealed
   (:meth:`gossipfl.node.security.NodeSecurity.seal`: signed, encrypted to the receiver),
   written as a wire frame on a :class:`Channel`; the receiver reads the frame,
   opens the envelope, decodes the contribution and takes the vector off it
   (``Layout.from_tensors``), then answers with an :class:`Ack` frame.
   ``contribution-clear``, the same without sealing (``encrypt_payloads = false``), splits the
   cost of the wire encoding from the envelope's.
3. ``masked``: the secure-aggregation input the node builds
   (:func:`gossipfl.node.secure_inputs.masked_input`: quantise, pair masks with 4 neighbours,
   self mask, Shamir shares of the self seed), sealed and sent the same way; the receiver opens
   it and views its words as uint32.

MB/s is parameter megabytes (4 bytes each, 10^6 bytes a MB) per second of a whole exchange,
sender and receiver together (they share this process's one core, as the ratios do). The
issue's bar: ``contribution`` >= 0.7 x ``plain`` at 1M parameters. ``--profile PATH`` prints
where that path's exchanges spend their time (cProfile).

    python benchmarks/bench_exchange.py [--sizes 100000 1000000] [--reps 5] [--profile contribution]
        [--sort tottime] [--rows 18]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np
import trio
from libp2p.network.stream.exceptions import StreamError

from gossipfl.config import NodeConfig, ProtocolConfig, SecAggConfig, SecurityConfig
from gossipfl.crypto.admission import admit_identity, init_federation
from gossipfl.crypto.identity import Identity, load_or_create_identity
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.framing import StreamEnded, read_exactly
from gossipfl.gossip.host import make_host
from gossipfl.gossip.peers import Channel, PeerNet, Traffic
from gossipfl.gossip.wire import (
    HEADER_BYTES,
    MAX_CONTROL_BYTES,
    Ack,
    Contribution,
    MaskedInput,
    Sealed,
    encode_frame,
    frame_length,
)
from gossipfl.node.estimates import OwnEstimate
from gossipfl.node.layout import Layout
from gossipfl.node.secagg_state import SecAggState
from gossipfl.node.secure_inputs import masked_input
from gossipfl.node.security import NodeSecurity

FEDERATION = "bench-exchange"
PLAIN, CLEAR, SEALED, MASKED = ("/bench/plain", "/bench/clear", "/bench/sealed", "/bench/masked")
NEIGHBOURS = 4  # the aggregator's degree in the masked case (the default regular degree)
CAP = 64 * 1024 * 1024


@dataclass
class Peer:
    identity: Identity
    peer_id: str
    security: NodeSecurity
    config: NodeConfig


def make_peers(folder: Path, count: int) -> list[Peer]:
    """``count`` admitted members of one federation, each knowing every other's certificate."""
    init_federation(folder / "federation", FEDERATION)
    peers = []
    for index in range(count):
        key = folder / f"node-{index}.key"
        identity = load_or_create_identity(key)[0]
        certificate = admit_identity(folder / "federation", key, valid_days=1.0, now=time.time())
        config = NodeConfig(
            federation=FEDERATION, key_file=str(key),
            security=SecurityConfig(admission=True, encrypt_payloads=True,
                                    federation_public=str(folder / "federation" /
                                                          "federation.pub"),
                                    certificate=str(certificate)),
            protocol=ProtocolConfig(max_payload_bytes=CAP),
            secagg=SecAggConfig(enabled=True),
        )
        peers.append(Peer(identity, str(identity.peer_id), NodeSecurity(config, identity),
                          config))
    for peer in peers:
        for other in peers:
            if other is not peer:
                assert peer.security.admit(other.peer_id, other.security.own_certificate) is None
    return peers


def contribution(sender: str, receiver: str, r: int, layout: Layout,
                 vector: np.ndarray) -> Contribution:
    """A full-estimate contribution as :func:`gossipfl.node.exchange._exchange` builds it."""
    return Contribution(
        federation=FEDERATION, round=r, sender=sender, receiver=receiver, degree=NEIGHBOURS,
        kind="full", base_round=-1, disagreement=0.1, done=False,
        tensors=layout.to_tensors(vector, copy=False), packed=None, training=True, depth=0,
        horizon=3, waiting=0, examples=100,
    )


def stub_node(peers: list[Peer], size: int) -> Any:
    """What :func:`masked_input` reads of a node: peers[0] contributing to peers[1]'s sum, in
    a neighbourhood of peers[1] and NEIGHBOURS - 1 others (each of degree NEIGHBOURS), with
    a model of ``size`` parameters (its estimate counts the words it masks)."""
    ids = [p.peer_id for p in peers]
    group = frozenset(ids[: NEIGHBOURS + 1])
    me = peers[0]
    return SimpleNamespace(
        config=me.config, peer_id=me.peer_id, security=me.security,
        topology={peer: group for peer in ids}, secagg=SecAggState(),  # the node's own
        disagreement=0.1, settle=SimpleNamespace(depth=0, horizon=3, waiting=0),
        own=OwnEstimate(np.zeros(size, np.float32)), layout=SimpleNamespace(size=size),
    )


def ack(r: int, sender: str) -> Ack:
    return Ack(federation=FEDERATION, round=r, sender=sender, status=AckCode.OK, reason="")


@contextlib.contextmanager
def until_closed() -> Iterator[None]:
    """A handler's loop ends when the sender closes its stream."""
    with contextlib.suppress(StreamEnded, StreamError):
        yield


class Bench:
    def __init__(self, peers: list[Peer], size: int) -> None:
        self.sender, self.receiver = peers[0], peers[1]
        self.node = stub_node(peers, size)
        rows = 1000
        self.layout = Layout(("w", "b"), ((rows, size // rows), (size - rows * (size // rows),)))
        self.vector = np.random.default_rng(0).normal(0, 0.1, size).astype(np.float32)
        self.frame = encode_frame(contribution(self.sender.peer_id, self.receiver.peer_id, 1,
                                               self.layout, self.vector), CAP)
        self.received: list[np.ndarray] = []  # the contributions' vectors, as taken off
        self.masked: list[np.ndarray] = []  # the masked inputs' words

    # -- the receiver's handlers --------------------------------------------------------------

    async def serve_plain(self, channel: Channel) -> None:
        stream = channel.stream
        with until_closed():
            while True:
                header = await read_exactly(stream, HEADER_BYTES, frame_start=True)
                await read_exactly(stream, frame_length(header, CAP))
                await stream.write(b"k")

    async def serve_contribution(self, channel: Channel, sealed: bool) -> None:
        me = self.receiver
        with until_closed():
            while True:
                if sealed:
                    envelope = await channel.receive(Sealed, CAP)
                    message = me.security.open(channel.remote, envelope, Contribution)
                else:
                    message = await channel.receive(Contribution, CAP)
                self.received.append(self.layout.from_tensors(message.tensors))
                await channel.send(ack(message.round, me.peer_id), MAX_CONTROL_BYTES)

    async def serve_masked(self, channel: Channel) -> None:
        me = self.receiver
        with until_closed():
            while True:
                envelope = await channel.receive(Sealed, CAP)
                message = me.security.open(channel.remote, envelope, MaskedInput)
                self.masked.append(np.frombuffer(message.data, dtype="<u4"))
                await channel.send(ack(message.round, me.peer_id), MAX_CONTROL_BYTES)

    # -- the sender's side: one exchange each -------------------------------------------------

    async def send_plain(self, channel: Channel, r: int) -> None:
        await channel.stream.write(self.frame)
        await read_exactly(channel.stream, 1)

    async def send_clear(self, channel: Channel, r: int) -> None:
        me = self.sender
        await channel.send(contribution(me.peer_id, self.receiver.peer_id, r, self.layout,
                                        self.vector), CAP)
        await channel.receive(Ack, MAX_CONTROL_BYTES)

    async def send_sealed(self, channel: Channel, r: int) -> None:
        me = self.sender
        message = contribution(me.peer_id, self.receiver.peer_id, r, self.layout, self.vector)
        await channel.send(me.security.seal(message), CAP)
        await channel.receive(Ack, MAX_CONTROL_BYTES)

    async def send_masked(self, channel: Channel, r: int) -> None:
        me = self.sender
        message = masked_input(self.node, self.receiver.peer_id, r, self.vector, False)
        await channel.send(me.security.seal(message), CAP)
        await channel.receive(Ack, MAX_CONTROL_BYTES)


Exchange = Callable[[Channel, int], Awaitable[None]]


async def measure(net: PeerNet, receiver: Peer, addrs: tuple[str, ...],
                  paths: list[tuple[str, str, Exchange]], reps: int,
                  profiled: dict[str | None, cProfile.Profile | None],
                  ) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds (this process: both ends) per exchange of each path, the medians
    of ``reps``, after one warm-up each on its own open stream. The paths take turns, one
    exchange each a repetition, the order rotated every repetition: a machine whose speed
    drifts during the run (a shared one) slows every path alike, so the ratios hold."""
    channels = {}
    for name, protocol, exchange in paths:
        channels[name] = await net.open(receiver.peer_id, addrs, protocol)
        await exchange(channels[name], 1)
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _, _ in paths}
    for rep in range(reps):
        turn = paths[rep % len(paths):] + paths[:rep % len(paths)]
        for name, _, exchange in turn:
            profile = profiled.get(name)
            if profile is not None:
                profile.enable()
            start, cpu = time.perf_counter(), time.process_time()
            await exchange(channels[name], rep + 2)
            times[name][0].append(time.perf_counter() - start)
            times[name][1].append(time.process_time() - cpu)
            if profile is not None:
                profile.disable()
    for channel in channels.values():
        await channel.close()
    return {name: (float(np.median(w)), float(np.median(c))) for name, (w, c) in times.items()}


async def run(sizes: list[int], reps: int, profile: str | None = None,
              sort: str = "tottime", rows_shown: int = 18) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        peers = make_peers(Path(tmp), NEIGHBOURS + 1)
        hosts = [make_host(p.identity, ["/ip4/127.0.0.1/tcp/0"]) for p in peers[:2]]
        nets = [PeerNet(host, Traffic(), listen=listen) for host, listen in hosts]
        async with nets[0].running(), nets[1].running() as addrs:
            for size in sizes:
                bench = Bench(peers, size)
                nets[1].serve(PLAIN, bench.serve_plain)
                nets[1].serve(CLEAR, lambda c, b=bench: b.serve_contribution(c, False))
                nets[1].serve(SEALED, lambda c, b=bench: b.serve_contribution(c, True))
                nets[1].serve(MASKED, bench.serve_masked)
                profiler = cProfile.Profile() if profile else None
                profiled = {profile: profiler}
                row: dict[str, Any] = {"parameters": size, "frame_bytes": len(bench.frame)}
                paths = [("plain", PLAIN, bench.send_plain),
                         ("contribution-clear", CLEAR, bench.send_clear),
                         ("contribution", SEALED, bench.send_sealed),
                         ("masked", MASKED, bench.send_masked)]
                row.update(await measure(nets[0], peers[1], tuple(addrs), paths, reps,
                                         profiled))
                assert len(bench.received) == 2 * (reps + 1) and all(
                    np.array_equal(v, bench.vector) for v in bench.received), \
                    "a contribution's vector did not arrive intact"
                assert len(bench.masked) == reps + 1, "a masked input did not arrive"
                rows.append(row)
                if profiler is not None:
                    print(f"\n-- cProfile: {profile} exchanges, {size:,} parameters (sender and "
                          f"receiver), by {sort} --")
                    stats = pstats.Stats(profiler, stream=sys.stdout).sort_stats(sort)
                    stats.print_stats(rows_shown)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=5, help="timed exchanges per path")
    parser.add_argument("--profile", choices=("plain", "contribution-clear", "contribution",
                                              "masked"), help="cProfile this path's exchanges")
    parser.add_argument("--sort", default="tottime", help="the profile's order (pstats key)")
    parser.add_argument("--rows", type=int, default=18, help="the profile's lines shown")
    args = parser.parse_args(argv)
    rows = trio.run(run, args.sizes, args.reps, args.profile, args.sort, args.rows)
    names = ("plain", "contribution-clear", "contribution", "masked")
    for clock, column in (("wall", 0), ("CPU", 1)):
        print(f"\n{clock:>4} {'parameters':>10}  " + "  ".join(f"{n:>22}" for n in names))
        for row in rows:
            mb = row["parameters"] * 4 / 1e6
            cells = []
            for name in names:
                rate = mb / row[name][column]
                ratio = row["plain"][column] / row[name][column]
                cells.append(f"{rate:8.1f} MB/s ({ratio:4.2f}x)")
            print(f"{'':>4} {row['parameters']:>10,}  " + "  ".join(f"{c:>22}" for c in cells))
    print("\nMB/s: parameter MB (4 B each, 10^6 B a MB) per second of one exchange (message and "
          "ack), the median of the timed ones; wall: elapsed, CPU: this process's CPU time, "
          "both ends (steadier on a busy machine). (x): against plain. Bar: contribution >= "
          "0.70x plain at 1M.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


__all__ = ["Bench", "main", "make_peers"]
