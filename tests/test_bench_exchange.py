"""The exchange benchmark runs end to end (two libp2p hosts over loopback) and each path carries
the vector intact; its figures are not asserted (see the README's Benchmarks). Also the frame
writer's path for large frames, which it measures."""

from __future__ import annotations

import trio

from benchmarks.bench_exchange import run


def test_every_exchange_path_runs_and_delivers() -> None:
    rows = trio.run(run, [20_000], 1)  # asserts the vector arrived intact
    (row,) = rows
    assert row["parameters"] == 20_000 and row["frame_bytes"] > 80_000
    for name in ("plain", "contribution-clear", "contribution", "masked"):
        wall, cpu = row[name]
        assert wall > 0 and cpu >= 0, name


class _Collect:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.writes.append(data)


def test_a_large_frame_is_written_as_encoded_without_joining_its_body() -> None:
    import numpy as np

    from gossipfl.gossip.codes import AckCode
    from gossipfl.gossip.framing import JOIN_BELOW_BYTES, write_frame
    from gossipfl.gossip.wire import HEADER_BYTES, Ack, Contribution, Tensor, encode_frame

    vector = np.arange(100_000, dtype=np.float32)
    big = Contribution(federation="f", round=1, sender="a", receiver="b", degree=1,
                       kind="full", base_round=-1, disagreement=0.0, done=False,
                       tensors=(Tensor.from_array("w", vector),), packed=None, training=True,
                       depth=0, horizon=1, waiting=0, examples=1)
    small = Ack(federation="f", round=1, sender="b", status=AckCode.OK, reason="")
    for message, writes in ((big, 2), (small, 1)):
        stream = _Collect()
        size = trio.run(write_frame, stream, message, 1 << 26)
        assert b"".join(stream.writes) == encode_frame(message, 1 << 26)
        assert size == sum(map(len, stream.writes)) and len(stream.writes) == writes
    assert len(encode_frame(big)) - HEADER_BYTES >= JOIN_BELOW_BYTES
