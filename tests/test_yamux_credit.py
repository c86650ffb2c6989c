"""Yamux credit (gossipfl/gossip/host.py, ``YAMUX_TUNING``): a member that reads messages one
by one sends a WINDOW_UPDATE frame every other read, not every read, and a message larger than
the window still arrives whole. Two real hosts on loopback (TCP, Noise, yamux) in one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import multiaddr
import pytest
import trio
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.host import YAMUX_TUNING, make_host
from gossipfl.gossip.peers import Channel, PeerNet, Traffic

PROTOCOL = "/gossipfl-test/credit/1.0.0"
SMALL = 3_000  # about a heartbeat
COUNT = 60  # 180 kB in all: more than half the window (128 KiB), less than the window


def _exchange(tmp_path: Path, sizes: list[int], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Send one message of each size on one stream; the reader reads each whole. Returns the
    bytes read and the WINDOW_UPDATE frames sent (both ends)."""
    updates: list[int] = []
    original = YamuxStream.send_window_update

    async def counted(self: YamuxStream, delta: int, skip_lock: bool = False) -> None:
        updates.append(delta)
        await original(self, delta, skip_lock=skip_lock)

    monkeypatch.setattr(YamuxStream, "send_window_update", counted)
    found: dict[str, Any] = {"read": []}

    async def main() -> None:
        ends = []
        for name in ("a", "b"):
            identity, _ = load_or_create_identity(tmp_path / f"{name}.key")
            host, listen = make_host(identity, ["/ip4/127.0.0.1/tcp/0"], identify=False)
            ends.append((str(identity.peer_id), PeerNet(host, Traffic(), listen=listen)))
        (_, net_a), (b, net_b) = ends
        done = trio.Event()

        async def on_stream(channel: Channel) -> None:
            stream = channel.stream  # type: ignore[attr-defined]
            for size in sizes:
                got = 0
                while got < size:
                    chunk = await stream.read(size - got)
                    assert chunk, "the stream ended early"
                    got += len(chunk)
                found["read"].append(got)
            done.set()

        with trio.fail_after(60):  # a stall (no credit back) fails here, not a hang
            async with net_a.running(), net_b.running() as addrs_b:
                net_b.serve(PROTOCOL, on_stream)
                addrs = tuple(str(multiaddr.Multiaddr(x)) for x in addrs_b)
                channel = await net_a.open(b, addrs, PROTOCOL)
                before = len(updates)  # the stream's opening is not counted
                for size in sizes:
                    await channel.stream.write(bytes(size))  # type: ignore[attr-defined]
                await done.wait()
                found["updates"] = updates[before:]
                await channel.close()

    trio.run(main)
    return found


def test_messages_read_one_by_one_send_credit_in_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in YAMUX_TUNING.items():
        monkeypatch.setenv(name, value)  # as make_host leaves it (a test before may not have)
    found = _exchange(tmp_path, [SMALL] * COUNT, monkeypatch)
    assert found["read"] == [SMALL] * COUNT
    # py-libp2p's auto-tuning grows a new stream's window a few times (as often as reads come
    # within a few round trips: it varies with the load), each a large credit; apart from
    # those, with release on read off, it returns credit on a read that finds the window short
    # of its target, counting the bytes read twice, so the next read owes none: a frame every
    # other read
    credits = [delta for delta in found["updates"] if delta <= 2 * SMALL]
    assert len(credits) <= COUNT // 2 + 1
    assert len(found["updates"]) - len(credits) <= 8  # the growth: at most 8 doublings


def test_the_library_default_sends_a_frame_per_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the tuning removes: with py-libp2p's default, each read sends credit back."""
    monkeypatch.setenv("PY_YAMUX_RELEASE_ON_READ", "1")
    found = _exchange(tmp_path, [SMALL] * COUNT, monkeypatch)
    assert found["read"] == [SMALL] * COUNT
    assert len(found["updates"]) >= COUNT - 2  # a frame a read (credit, or the window grown)


def test_a_message_larger_than_the_window_arrives_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in YAMUX_TUNING.items():
        monkeypatch.setenv(name, value)
    sizes = [4 << 20, SMALL, 1 << 20]  # 16 windows, then small, then 4 windows
    found = _exchange(tmp_path, sizes, monkeypatch)
    assert found["read"] == sizes
    assert found["updates"]  # the sender was given credit back as it went


def test_make_host_keeps_a_value_the_user_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PY_YAMUX_RELEASE_ON_READ", "1")
    identity, _ = load_or_create_identity(tmp_path / "k.key")
    make_host(identity, ["/ip4/127.0.0.1/tcp/0"], identify=False)
    import os

    assert os.environ["PY_YAMUX_RELEASE_ON_READ"] == "1"
    monkeypatch.delenv("PY_YAMUX_RELEASE_ON_READ")
    make_host(identity, ["/ip4/127.0.0.1/tcp/0"], identify=False)
    assert os.environ["PY_YAMUX_RELEASE_ON_READ"] == "0"
