"""Reading and writing whole wire frames on a libp2p stream.

A frame's announced length is checked against the cap before anything is allocated, and exactly
that many bytes are read (a sender closing its stream does not end a py-libp2p read). Callers put
every call under a deadline (``trio.move_on_after``/``fail_after``).
"""

from __future__ import annotations

from typing import Protocol

from libp2p.network.stream.exceptions import StreamEOF

from gossipfl.gossip.wire import (
    HEADER_BYTES,
    Known,
    M,
    Message,
    WireError,
    decode_body,
    encode_frame_pieces,
    frame_length,
)

#: A frame body up to this size is written together with its header (one write); a larger one
#: after it, so that megabytes of parameters are not copied just to prepend four bytes (a body
#: whose one large binary comes last, as a sealed message's envelope, is written as its header
#: and msgpack prefix, then the binary, in place).
JOIN_BELOW_BYTES = 64 * 1024


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


class StreamEnded(ConnectionError):
    """The stream ended in the middle of a frame."""


class StreamClosed(StreamEnded):
    """The stream ended cleanly, between frames."""


class Overloaded(ConnectionError):
    """The node holds too many bytes of frames in flight to take this one now (refused from its
    header, before its body is read)."""


class FrameBudget(Protocol):
    """Where a frame's announced length is reserved before its body is read."""

    def reserve(self, size: int) -> bool: ...

    def release(self, size: int) -> None: ...


#: what a :class:`BufferedReader` asks its stream for at least
READ_CHUNK = 64 * 1024


class BufferedReader:
    """A stream's reading side that, while ``ahead`` is set, asks for at least
    :data:`READ_CHUNK` bytes a read and keeps what it got beyond the caller's request for the
    next one (at most one chunk held); otherwise it reads exactly what it is asked for.

    A frame read as a header and then a body costs two reads, and py-libp2p's yamux answers a
    read shorter than its buffer by copying the front out and shifting the rest: reading ahead
    took the CPU of a 36 KB frame's send path (both ends) from 2.9 to 1.9 times that of the raw
    stream (``benchmarks/bench_overhead.py``). A channel reads ahead only for a certified
    member (:class:`gossipfl.gossip.peers.Channel`): anyone else's frame is refused from its
    header before a byte of its body is taken from the stream."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.pending = b""
        self.ahead = False

    async def read(self, n: int | None = None) -> bytes:
        if not self.pending:
            if not self.ahead:
                return await self.stream.read(n)
            chunk = await self.stream.read(READ_CHUNK if n is None else max(n, READ_CHUNK))
            if n is None or len(chunk) <= n:
                return chunk
            self.pending = chunk
        size = len(self.pending) if n is None else min(n, len(self.pending))
        chunk, self.pending = self.pending[:size], self.pending[size:]
        return chunk

    async def write(self, data: bytes) -> None:
        await self.stream.write(data)

    async def close(self) -> None:
        await self.stream.close()

    async def reset(self) -> None:
        await self.stream.reset()


async def read_exactly(stream: ByteStream, n: int, *, frame_start: bool = False) -> bytearray:
    """Read exactly ``n`` bytes. At a frame start, an end before any byte is a clean close.

    The buffer grows as bytes arrive (a peer that announces much and sends little costs only
    what it sent) and is returned as is, never copied."""
    buffer = bytearray()
    while len(buffer) < n:
        try:
            chunk = await stream.read(n - len(buffer))
        except StreamEOF:
            chunk = b""
        if not chunk:
            if frame_start and not buffer:
                raise StreamClosed("stream closed between frames")
            raise StreamEnded(f"stream ended after {len(buffer)} of {n} bytes")
        buffer += chunk
    return buffer


async def read_frame(stream: ByteStream, expected: type[M] | tuple[type[Message], ...],
                     max_bytes: int,
                     budget: FrameBudget | None = None,
                     known: Known | None = None) -> tuple[M, int]:
    """Read one frame and decode it; returns the message and the bytes read.

    The announced length is checked against ``max_bytes`` and reserved from ``budget`` before a
    byte of the body is read; the reservation lasts until the frame is decoded or refused.
    Raises :class:`WireError` for a frame that breaks the wire rules (too long, malformed...),
    :class:`Overloaded` when the budget has no room, and :class:`StreamEnded` if the stream ends
    early.
    """
    header = await read_exactly(stream, HEADER_BYTES, frame_start=True)
    length = frame_length(header, max_bytes)
    if budget is not None and not budget.reserve(length):
        raise Overloaded(f"no room for a frame of {length} bytes: too many bytes in flight")
    try:
        body = await read_exactly(stream, length)
        return decode_body(body, expected, known=known), HEADER_BYTES + length
    finally:
        if budget is not None:
            budget.release(length)


async def write_frame(stream: ByteStream, message: Message, max_bytes: int,
                      known: Known | None = None) -> int:
    """Encode and write one frame (one write, or two for a large one: see
    :data:`JOIN_BELOW_BYTES`); returns the bytes written. ``known``: as
    :func:`gossipfl.gossip.wire.encode_body`'s."""
    pieces = encode_frame_pieces(message, max_bytes, known)
    size = sum(len(piece) if not isinstance(piece, memoryview) else piece.nbytes
               for piece in pieces)
    if size - HEADER_BYTES < JOIN_BELOW_BYTES:
        await stream.write(b"".join(pieces))
    elif len(pieces) == 2:  # the header (and a sealed message's prefix), then the rest
        await stream.write(pieces[0])  # type: ignore[arg-type]
        await stream.write(pieces[1])  # type: ignore[arg-type]
    else:
        frame = b"".join(pieces)
        await stream.write(frame[:HEADER_BYTES])
        await stream.write(memoryview(frame)[HEADER_BYTES:])  # type: ignore[arg-type]
    return size


__all__ = [
    "READ_CHUNK", "BufferedReader", "ByteStream", "FrameBudget", "Overloaded", "StreamClosed",
    "StreamEnded", "WireError", "read_exactly", "read_frame", "write_frame",
]
