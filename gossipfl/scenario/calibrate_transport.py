"""The transport half of the calibration (:mod:`gossipfl.scenario.calibrate`): what one frame
costs in py-libp2p on this machine (TCP on loopback, Noise, yamux, trio), measured between two
real hosts of this process.

The cost model (:mod:`gossipfl.scenario.estimate`) holds a few CPU constants fitted from runs
on one machine (a frame's transport cost, a round's bookkeeping, a pair of members meeting).
They are Python's interpretive work, so they scale with how fast this machine runs Python's
event loop, which the codec and training timings (numpy, libsodium, XLA) do not tell. This
probe is that scale: a ping-pong of small frames on one stream, both ends' CPU counted
(``time.process_time``), divided by the frames sent and received. The least of a few
repetitions is kept (on a shared machine, the least disturbed).
"""

from __future__ import annotations

import time

PROBE_FRAMES = 150  # ping-pongs a repetition: 4 frame events each (sent and received, 2 ways)
PROBE_WARM_UP = 20  # ping-pongs before the clock starts (yamux windows, trio's first waits)
PROBE_REPEATS = 3
PROBE_BYTES = 100  # an ack's size: the per-frame cost, not the per-byte one
PROBE_DEADLINE_SECONDS = 30.0
PROTOCOL = "/gossipfl/calibrate/1.0.0"


def _identity() -> object:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    from gossipfl.crypto.identity import Identity

    pair = create_new_key_pair()
    return Identity(pair, ID.from_pubkey(pair.public_key))


async def _ping_pong(frames: int, repeats: int) -> float:
    import multiaddr
    import trio

    from gossipfl.gossip.host import make_host
    from gossipfl.gossip.peers import Channel, PeerNet, Traffic

    nets = []
    for _ in range(2):
        identity = _identity()
        host, listen = make_host(identity, ["/ip4/127.0.0.1/tcp/0"],  # type: ignore[arg-type]
                                 identify=False)
        nets.append((identity, PeerNet(host, Traffic(), listen=listen)))
    (_, a), (b_identity, b) = nets
    payload = b"\x00" * PROBE_BYTES
    rounds = PROBE_WARM_UP + frames * repeats

    async def read_exactly(stream: object) -> None:
        got = 0
        while got < PROBE_BYTES:
            chunk = await stream.read(PROBE_BYTES - got)  # type: ignore[attr-defined]
            if not chunk:
                raise EOFError("the probe's stream closed early")
            got += len(chunk)

    async def echo(channel: Channel) -> None:
        stream = channel.stream
        for _ in range(rounds):
            await read_exactly(stream)
            await stream.write(payload)  # type: ignore[attr-defined]

    best = float("inf")
    with trio.fail_after(PROBE_DEADLINE_SECONDS):
        async with a.running(), b.running() as b_addrs:
            b.serve(PROTOCOL, echo)
            addrs = tuple(str(multiaddr.Multiaddr(x)) for x in b_addrs)
            channel = await a.open(str(b_identity.peer_id), addrs,  # type: ignore[attr-defined]
                                   PROTOCOL)
            stream = channel.stream
            for _ in range(PROBE_WARM_UP):
                await stream.write(payload)  # type: ignore[attr-defined]
                await read_exactly(stream)
            for _ in range(repeats):
                start = time.process_time()
                for _ in range(frames):
                    await stream.write(payload)  # type: ignore[attr-defined]
                    await read_exactly(stream)
                best = min(best, (time.process_time() - start) / (4 * frames))
            await channel.close()
    return best


def frame_seconds(frames: int = PROBE_FRAMES, repeats: int = PROBE_REPEATS) -> float:
    """CPU seconds py-libp2p spends on one small frame sent or received on this machine (the
    least of ``repeats`` runs of ``frames`` ping-pongs between two hosts of this process)."""
    import trio

    return trio.run(_ping_pong, frames, repeats)


__all__ = ["frame_seconds"]
