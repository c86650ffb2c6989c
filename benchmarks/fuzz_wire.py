"""Fuzz the wire decoder, the frame reader and the node's contribution handlers at volume.

The CI tests (``tests/test_fuzz.py``) run a few hundred hypothesis examples per target; this runs
the same kinds of inputs by the hundred thousand. Hypothesis spends ~3–5 ms on each example, so
here the generators are plain ``random``-based mirrors of the test strategies (same edge values,
same modes), while everything else is shared with the tests: the mutation operators
(:func:`apply_mutation`), the two in-process nodes (:func:`build_world`), and the oracles that
decide whether an outcome is acceptable (:func:`decode_outcome`, :func:`frame_outcome`,
:func:`stream_outcome`, :func:`checked_accept`, :func:`sealed_outcome`).

Usage::

    python benchmarks/fuzz_wire.py                # 100 000 inputs, about a minute
    python benchmarks/fuzz_wire.py --count 1000000 --seed 7

Prints, per kind of input, how many were tried, decoded or accepted, and dropped (grouped by the
rule that dropped them: a WireError's first words, or the node's rejection key); then every
unexpected exception or broken invariant, with the inputs saved under ``--save-dir``. Exits 1 if
there was any.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import pickle
import random
import string
import struct
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gossipfl.crypto.envelope import seal  # noqa: E402
from gossipfl.gossip.wire import (  # noqa: E402
    DEFAULT_MAX_PAYLOAD_BYTES,
    HEADER,
    HEADER_BYTES,
    MAX_CONTROL_BYTES,
    MAX_MEMBERS,
    MAX_ROUND,
    WIRE_VERSION,
    Ack,
    Contribution,
    Heartbeat,
    LinkReply,
    LinkRequest,
    MemberInfo,
    Sealed,
    Tensor,
    encode_body,
    encode_frame,
)
from tests.test_fuzz import (  # noqa: E402
    BYTES_EDGES,
    DIM_EDGES,
    DTYPE_NAMES,
    FEDERATION,
    FLOAT_EDGES,
    HANDLER_FAULTS,
    INT_EDGES,
    MESSAGE_TYPES,
    PEER_A,
    PEER_B,
    ROUND_EDGES,
    SEAL_FAULTS,
    STR_EDGES,
    WRONG_TENSORS,
    HandlerState,
    SealedCase,
    StreamCase,
    World,
    apply_mutation,
    body_dict,
    build_world,
    checked_accept,
    container_paths,
    decode_outcome,
    decode_refused,
    fix_length,
    frame_outcome,
    install_state,
    pack,
    replace_at,
    rule_of,
    sealed_outcome,
    stream_outcome,
)
from tests.test_wire_bombs import BOMBS, _measure  # noqa: E402

#: Share of the inputs each kind gets (decoder 75 %, handlers 25 %).
KINDS: dict[str, float] = {
    "bytes": 0.12,  # arbitrary bytes and arbitrary msgpack documents → decode_body
    "field": 0.14,  # a valid body with one (possibly nested) field replaced → decode_body
    "keys": 0.08,  # a valid body with keys removed / added → decode_body
    "tensors": 0.10,  # contribution bodies with stressed tensor entries → decode_body
    "frames": 0.15,  # valid frames mutated (flips, truncation, insertion...) → decode_frame
    "stream": 0.15,  # header + body over a chunked fake stream → read_frame
    "bombs": 0.01,  # 64 KiB–4 MiB of empty arrays/maps, short strings... → decode_body, traced
    "plain": 0.10,  # Contribution objects → Node._accept_contribution, admission off
    "admission": 0.05,  # the same → Node._accept_contribution, admission on
    "sealed": 0.10,  # envelopes (genuine, forged, tampered) → Node._open_sealed + accept
}
DECODER_KINDS = ("bytes", "field", "keys", "tensors", "frames", "stream", "bombs")
#: what decoding a bomb may allocate at most, whatever its size (tracemalloc peak)
BOMB_PEAK_BYTES = 4 * 1024 * 1024
ALPHABET = string.printable + "\x00\u00e9\u00df\u0416\u4e2d\u6587\U0001f600\u200b\uffff"


# -- random generators (mirrors of the hypothesis strategies in tests/test_fuzz.py) ------------


class Gen:
    """Random inputs of every kind, from one seeded ``random.Random``."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # scalars and msgpack values

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def text(self, max_size: int, min_size: int = 0) -> str:
        size = self.rng.randint(min_size, max_size)
        if self.chance(0.5):
            return "".join(self.rng.choices(string.ascii_letters + string.digits, k=size))
        return "".join(self.rng.choices(ALPHABET, k=size))

    def binary(self, max_size: int, min_size: int = 0) -> bytes:
        return self.rng.randbytes(self.rng.randint(min_size, max_size))

    def float64(self) -> float:
        r = self.rng.random()
        if r < 0.3:
            return self.rng.choice(FLOAT_EDGES)
        if r < 0.6:
            return struct.unpack(">d", self.rng.randbytes(8))[0]
        return self.rng.uniform(-1e6, 1e6)

    def scalar(self) -> Any:
        pick = self.rng.randrange(10)
        if pick == 0:
            return None
        if pick == 1:
            return self.chance(0.5)
        if pick == 2:
            return self.rng.randint(-(2**63), 2**64 - 1)
        if pick == 3:
            return self.rng.choice(INT_EDGES)
        if pick == 4:
            return self.rng.randint(-300, 300)
        if pick == 5:
            return self.float64()
        if pick == 6:
            return self.text(16)
        if pick == 7:
            return self.rng.choice(STR_EDGES)
        if pick == 8:
            return self.binary(32)
        return self.rng.choice(BYTES_EDGES)

    def key(self) -> Any:
        return self.text(12) if self.chance(0.7) else self.binary(6)

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth < 3 and r < 0.15:
            return [self.value(depth + 1) for _ in range(self.rng.randint(0, 5))]
        if depth < 3 and r < 0.25:
            return {self.key(): self.value(depth + 1) for _ in range(self.rng.randint(0, 4))}
        return self.scalar()

    def extra_key(self) -> Any:
        r = self.rng.random()
        if r < 0.6:
            return self.key()
        if r < 0.65:
            return self.rng.randint(-5, 5)
        return self.rng.choice(["v", "t", "fed", "round", "sender", "receiver", "tensors",
                                "members", "status", "data", "extra"])

    # valid messages

    def peer(self) -> str:
        return self.rng.choice([PEER_A, PEER_B]) if self.chance(0.5) else self.text(12)

    def addrs(self) -> tuple[str, ...]:
        return tuple(self.text(24) for _ in range(self.rng.randint(0, 3)))

    def wire_round(self, low: int) -> int:
        return self.rng.randint(low, 50) if self.chance(0.5) else self.rng.randint(low, MAX_ROUND)

    def float32_values(self, count: int, special: float = 0.0) -> np.ndarray:
        values = np.asarray([self.rng.uniform(-1e6, 1e6) for _ in range(count)], np.float32)
        for i in range(count):
            if self.chance(special):
                values[i] = self.rng.choice(
                    [math.nan, math.inf, -math.inf, 3.4e38, -3.4e38, 3.0e38, 1e-45])
        return values

    def tensor(self) -> Tensor:
        shape = tuple(self.rng.randint(0, 3) for _ in range(self.rng.randint(0, 3)))
        data = self.float32_values(math.prod(shape)).tobytes()
        return Tensor(self.text(8), "float32", shape, data)

    def contribution(self) -> Contribution:
        round_ = self.wire_round(0)
        kind = self.rng.choice(["delta", "full"]) if round_ > 0 else "full"
        base = -1 if kind == "full" else self.rng.randint(0, round_ - 1)
        return Contribution(
            self.text(10), round_, self.peer(), self.peer(), self.rng.randint(0, MAX_MEMBERS),
            kind, base, self.rng.uniform(-1e9, 1e9), self.chance(0.5),
            tuple(self.tensor() for _ in range(self.rng.randint(0, 3))),
        )

    def message(self) -> Any:
        kind = self.rng.choice(MESSAGE_TYPES)
        if kind is Heartbeat:
            members = tuple(MemberInfo(self.peer(), self.addrs(), self.rng.uniform(0, 1e9))
                            for _ in range(self.rng.randint(0, 3)))
            return Heartbeat(self.text(10), self.peer(), self.addrs(), members,
                             self.wire_round(-1), self.rng.randint(0, MAX_MEMBERS),
                             self.rng.choice(["joining", "training", "consensus", "done"]),
                             self.binary(64))
        if kind is LinkRequest:
            return LinkRequest(self.text(10), self.peer(), self.text(32), self.wire_round(-1))
        if kind is LinkReply:
            return LinkReply(self.text(10), self.peer(),
                             self.rng.choice(["accepted", "not_ready", "rejected"]),
                             self.text(20), self.wire_round(-1))
        if kind is Ack:
            return Ack(self.text(10), self.wire_round(-1), self.peer(),
                       self.rng.choice(["ok", "need_full", "rejected"]), self.text(20))
        if kind is Sealed:
            return Sealed(self.text(10), self.wire_round(0), self.peer(), self.peer(),
                          self.binary(64))
        return self.contribution()

    # decoder inputs: (expected type, bytes, label)

    def arbitrary_body(self) -> bytes:
        pick = self.rng.randrange(4)
        if pick == 0:
            return self.binary(512)
        if pick == 1:
            return pack(self.value())
        extra = {self.extra_key(): self.value() for _ in range(self.rng.randint(0, 12))}
        kind = "contribution" if pick == 2 else self.rng.choice(MESSAGE_TYPES).KIND
        return pack({"v": WIRE_VERSION, "t": kind, "fed": FEDERATION, **extra})

    def field_replaced(self) -> tuple[type[Any], bytes, str]:
        message = self.message()
        body = body_dict(message)
        if self.chance(0.5):
            path: tuple[Any, ...] = (self.rng.choice(sorted(body)),)
        else:
            path = self.rng.choice(container_paths(body)[1:])
        replace_at(body, path, self.value())
        return type(message), pack(body), message.KIND

    def keys_changed(self) -> tuple[type[Any], bytes, str]:
        message = self.message()
        body: dict[Any, Any] = body_dict(message)
        original = set(body)
        for key in self.rng.sample(sorted(body), self.rng.randint(0, 3)):
            del body[key]
        for _ in range(self.rng.randint(0, 3)):
            key = self.extra_key()
            if key not in original:
                body[key] = self.value()
        if set(body) == original:
            body["unexpected"] = None
        return type(message), pack(body), message.KIND

    def tensor_entry(self) -> Any:
        if self.chance(0.05):
            return self.value()
        name = self.text(8) if self.chance(7 / 8) else self.rng.choice(["x" * 129, self.scalar()])
        dtype = "float32"
        if self.chance(1 / 3):
            dtype = self.rng.choice(DTYPE_NAMES) if self.chance(0.5) else self.scalar()
        shape: Any = [self.rng.randint(0, 4) if self.chance(0.6) else self.rng.choice(DIM_EDGES)
                      for _ in range(self.rng.randint(0, 9))]
        if self.chance(0.1):
            shape = self.value()
        valid = isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        count = math.prod(shape) if valid else -1
        how = self.rng.choice(["exact", "exact", "exact", "short", "long", "random", "other"])
        if how == "exact" and 0 <= count <= 64:
            data: Any = self.float32_values(count, special=0.1).tobytes()
        elif how == "exact" and count >= 0:
            data = b""
        elif how in ("short", "long") and 0 <= count <= 64:
            data = bytes(count * 4 + (-1 if how == "short" and count else 1))
        elif how == "random":
            data = self.binary(48)
        else:
            data = self.value()
        entry = [name, dtype, shape, data]
        if self.chance(0.05):
            entry = entry[: self.rng.randint(0, 3)] or [*entry, None]
        return entry

    def tensor_body(self) -> tuple[type[Any], bytes, str]:
        body = body_dict(self.contribution())
        body["tensors"] = [self.tensor_entry() for _ in range(self.rng.randint(0, 3))]
        return Contribution, pack(body), "contribution"

    def mutation(self, header: bool = True) -> tuple[Any, ...]:
        kinds = ["flip", "truncate", "insert", "delete", "overwrite"] + (["header"] * header)
        kind = self.rng.choice(kinds)
        at = self.rng.randint(0, 2**16)
        if kind == "flip":
            return (kind, at, self.rng.randint(0, 7))
        if kind == "truncate":
            return (kind, at)
        if kind in ("insert", "overwrite"):
            return (kind, at, self.binary(8, 1))
        if kind == "delete":
            return (kind, at, self.rng.randint(1, 8))
        return (kind, self.rng.randint(0, 2**32 - 1) if self.chance(0.5) else self.rng.choice(
            [0, 1, MAX_CONTROL_BYTES, MAX_CONTROL_BYTES + 1, DEFAULT_MAX_PAYLOAD_BYTES + 1,
             2**32 - 1]))

    def mutated_body(self) -> bytes:
        body = encode_body(self.message())
        for _ in range(self.rng.randint(1, 4)):
            body = apply_mutation(body, self.mutation(header=False))
        return body

    def mutated_frame(self) -> tuple[type[Any], bytes, int, str]:
        message = self.message()
        frame = encode_frame(message)
        ops = [self.mutation() for _ in range(self.rng.randint(1, 4))]
        for op in ops:
            frame = apply_mutation(frame, op)
        if len(frame) >= HEADER_BYTES and self.chance(0.5):  # reach the body parser too
            frame = fix_length(frame)
        expected = type(message) if self.chance(0.5) else self.rng.choice(MESSAGE_TYPES)
        cap = DEFAULT_MAX_PAYLOAD_BYTES if self.chance(0.75) else self.rng.randint(
            1, len(frame) + 8)
        return expected, frame, cap, "+".join(op[0] for op in ops)

    def stream_case(self) -> StreamCase:
        cap = self.rng.randint(1, 600) if self.chance(0.6) else self.rng.choice(
            [MAX_CONTROL_BYTES, DEFAULT_MAX_PAYLOAD_BYTES])
        message = self.message()
        pick = self.rng.randrange(3)
        body = (encode_body(message) if pick == 0 else self.arbitrary_body() if pick == 1
                else self.mutated_body())
        r = self.rng.random()
        if r < 0.4:
            announced = len(body)
        elif r < 0.7:
            announced = self.rng.randint(0, 2**32 - 1)
        else:
            announced = self.rng.choice([0, 1, cap - 1, cap, cap + 1, len(body) + 1,
                                         max(len(body) - 1, 0), 2**32 - 1])
        announced = min(max(announced, 0), 2**32 - 1)
        data = HEADER.pack(announced) + body + self.binary(8)
        if self.chance(0.4):
            data = data[: self.rng.randint(0, len(data))]
        chunks = [self.rng.randint(1, 64) for _ in range(self.rng.randint(1, 12))]
        expected = type(message) if self.chance(0.5) else self.rng.choice(MESSAGE_TYPES)
        return StreamCase(data, announced, cap, chunks, self.chance(0.5), expected)

    # handler inputs

    def handler_state(self, size: int) -> HandlerState:
        held = None if self.chance(0.3) else self.rng.randint(0, 20)
        vector = self.float32_values(size, special=0.05)
        vector[~np.isfinite(vector)] = np.float32(3.4e38)  # what a node holds is finite
        return HandlerState(held, tuple(float(v) for v in vector), self.rng.randint(-1, 19))

    def faults(self, names: list[str]) -> set[str]:
        return set() if self.chance(0.4) else set(self.rng.sample(names, self.rng.randint(1, 2)))

    def handler_tensors(self, layout: Any, special: float, wrong: bool) -> tuple[Tensor, ...]:
        def make(name: str, shape: tuple[int, ...]) -> Tensor:
            values = self.float32_values(math.prod(shape), special)
            return Tensor(name, "float32", shape, values.tobytes())

        tensors = [make(n, s) for n, s in zip(layout.names, layout.shapes, strict=True)]
        if not wrong:
            return tuple(tensors)
        mode = self.rng.choice(WRONG_TENSORS)
        i = self.rng.randrange(len(tensors))
        if mode == "wrong_name":
            tensors[i] = Tensor(self.text(10), "float32", tensors[i].shape, tensors[i].data)
        elif mode == "wrong_shape":
            shape = tuple(self.rng.randint(0, 5) for _ in range(self.rng.randint(0, 3)))
            tensors[i] = make(tensors[i].name, shape)
        elif mode == "missing":
            del tensors[i]
        elif mode == "extra":
            shape = tuple(self.rng.randint(0, 4) for _ in range(self.rng.randint(0, 2)))
            tensors.insert(i, make(self.text(10), shape))
        elif mode == "swapped":
            tensors.reverse()
        elif mode == "wrong_dtype":
            t = tensors[i]
            dtype = self.rng.choice(["float64", "float16", "int32"])
            data = np.frombuffer(t.data, np.float32).astype(dtype).tobytes()
            tensors[i] = Tensor(t.name, dtype, t.shape, data)
        else:
            tensors = []
        return tuple(tensors)

    def handler_contribution(self, world: World, node: Any, state: HandlerState,
                             special: float) -> tuple[str, Contribution]:
        faults = self.faults(HANDLER_FAULTS)
        roles = world.roles
        sender = roles["member" if "member" in faults else "stranger" if "stranger" in faults
                       else "neighbour"]
        remote = sender
        if "remote" in faults:
            remote = self.rng.choice(sorted(set(roles.values()) - {sender}))
        held = -1 if state.round is None else state.round
        r = self.rng.random()
        round_ = (held + self.rng.choice([1, 2, 0]) if r < 0.5 else self.rng.randint(-2, 25)
                  if r < 0.8 else self.rng.choice(ROUND_EDGES))
        r = self.rng.random()
        base = (held if r < 0.5 else -1 if r < 0.65 else self.rng.randint(-2, 25) if r < 0.85
                else self.rng.choice(ROUND_EDGES))
        federation = self.text(6) if "federation" in faults else FEDERATION
        receiver = node.peer_id
        if "receiver" in faults:
            receiver = self.rng.choice([world.b.peer_id, "", node.peer_id + "x"])
        message = Contribution(
            federation, round_, sender, receiver, self.rng.randint(0, MAX_MEMBERS),
            self.rng.choice(["delta", "full"]), base, self.rng.uniform(0, 1e9),
            self.chance(0.5), self.handler_tensors(node.layout, special, "tensors" in faults),
        )
        return remote, message

    def sealed_case(self, world: World, state: HandlerState, special: float) -> SealedCase:
        node = world.sealed
        roles = world.roles
        faults = self.faults(SEAL_FAULTS)
        sealer_role = ("member" if "sealer_member" in faults else "stranger"
                       if "sealer_stranger" in faults else "neighbour")
        sealer = roles[sealer_role]
        remote = sealer
        if "remote" in faults:
            remote = self.rng.choice(sorted(set(roles.values()) - {sealer}))
        _, message = self.handler_contribution(world, node, state, special)
        if "inner_sender" not in faults:
            message = dataclasses.replace(message, sender=sealer)
        what = "contribution"
        payload = encode_body(message)
        if "payload" in faults:
            what = self.rng.choice(["field", "tensors", "mutated", "bytes"])
            payload = {
                "field": lambda: self.field_replaced()[1],
                "tensors": lambda: self.tensor_body()[1],
                "mutated": self.mutated_body,
                "bytes": lambda: self.binary(200),
            }[what]()
        header_round = message.round
        if "h_round" in faults or not 0 <= header_round <= MAX_ROUND:
            header_round = (self.rng.randint(0, 25) if self.chance(0.5)
                            else self.rng.randint(0, MAX_ROUND))
        h_federation = self.text(6, 1) if "h_federation" in faults else FEDERATION
        h_receiver = world.c.peer_id if "h_receiver" in faults else node.peer_id
        h_sender = sealer
        if "h_sender" in faults:
            h_sender = self.rng.choice(sorted(set(roles.values()) - {sealer}))
        data = seal(payload, federation=h_federation, round=header_round, sender=h_sender,
                    receiver=h_receiver, sender_signing_key=world.signing_key(sealer),
                    receiver_x25519_public=world.receiver_x25519)
        if "mutate" in faults:
            for _ in range(self.rng.randint(1, 3)):
                data = apply_mutation(data, self.mutation(header=False))
        if "random" in faults:
            data = self.binary(300) if self.chance(0.5) else b"GFE\x01" + self.binary(300)
        sealed = Sealed(message.federation, header_round, message.sender, message.receiver, data)
        if "clear" in faults:
            field = self.rng.choice(["federation", "round", "sender", "receiver"])
            value: Any = {
                "federation": self.text(10), "round": self.rng.choice(ROUND_EDGES),
                "sender": self.rng.choice(sorted(roles.values())),
                "receiver": self.rng.choice([node.peer_id, world.b.peer_id]),
            }[field]
            sealed = dataclasses.replace(sealed, **{field: value})
        label = f"{sealer_role}:{what}:{'+'.join(sorted(faults)) or 'clean'}"
        return SealedCase(remote, sealed, payload, label)


# -- bookkeeping -----------------------------------------------------------------------------


class Tally:
    def __init__(self, save_dir: Path) -> None:
        self.save_dir = save_dir
        self.tried: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        self.problems: dict[tuple[str, str], list[str]] = {}
        self.problem_counts: Counter[tuple[str, str]] = Counter()
        self.seconds: Counter[str] = Counter()

    def run(self, kind: str, case: Any, check: Callable[[], str], raw: bytes | None) -> None:
        self.tried[kind] += 1
        try:
            outcome = check()
        except AssertionError as error:
            self.problem(kind, f"VIOLATION {str(error).splitlines()[0][:120]}", case, raw)
            return
        except Exception as error:
            what = f"UNEXPECTED {type(error).__name__}: {rule_of(str(error), 8)}"
            self.problem(kind, what, case, raw)
            return
        self.outcomes[kind][rule_of(outcome)] += 1

    def problem(self, kind: str, what: str, case: Any, raw: bytes | None) -> None:
        key = (kind, what)
        self.problem_counts[key] += 1
        self.outcomes[kind]["(problem)"] += 1
        saved = self.problems.setdefault(key, [])
        if len(saved) >= 3:
            return
        self.save_dir.mkdir(parents=True, exist_ok=True)
        stem = self.save_dir / f"{kind}-{len(self.problems):03d}-{len(saved)}"
        with open(stem.with_suffix(".txt"), "w") as handle:
            handle.write(f"kind: {kind}\nproblem: {what}\ncase: {case!r}\n\n")
            handle.write(traceback.format_exc())
        if raw is not None:
            stem.with_suffix(".bin").write_bytes(raw)
        with contextlib.suppress(Exception):  # a case that does not pickle still has its .txt
            stem.with_suffix(".pickle").write_bytes(pickle.dumps(case))
        saved.append(str(stem))


# -- the runs ----------------------------------------------------------------------------------


def bomb_outcome(body: bytes, expected: type[Any]) -> str:
    """A structural bomb is refused, in memory that does not grow with it and in well under a
    second."""
    outcome, peak, elapsed = _measure(body, expected)
    assert outcome != "decoded", "a bomb decoded"
    assert peak < BOMB_PEAK_BYTES, f"decoding a {len(body)}-byte bomb peaked at {peak} bytes"
    assert elapsed < 1.0, f"decoding a {len(body)}-byte bomb took {elapsed:.2f} s"
    return outcome


def run_decoders(gen: Gen, tally: Tally, counts: dict[str, int]) -> None:
    for _ in range(counts["bombs"]):
        bomb = gen.rng.choice(BOMBS)
        size = gen.rng.randint(64 * 1024, 4 * 1024 * 1024)
        body = bomb(size)
        expected = gen.rng.choice(MESSAGE_TYPES)
        tally.run("bombs", (expected.__name__, bomb.__name__, size),
                  lambda b=body, e=expected: bomb_outcome(b, e), None)
    for _ in range(counts["bytes"]):
        body = gen.arbitrary_body() if gen.chance(0.7) else gen.mutated_body()
        expected = gen.rng.choice(MESSAGE_TYPES)
        tally.run("bytes", (expected.__name__, body),
                  lambda b=body, e=expected: decode_outcome(b, e), body)
    for kind, make, check in (("field", gen.field_replaced, decode_outcome),
                              ("keys", gen.keys_changed, decode_refused),
                              ("tensors", gen.tensor_body, decode_outcome)):
        for _ in range(counts[kind]):
            expected, body, label = make()
            tally.run(kind, (expected.__name__, label, body),
                      lambda b=body, e=expected, c=check: c(b, e), body)
    for _ in range(counts["frames"]):
        expected, frame, cap, label = gen.mutated_frame()
        tally.run("frames", (expected.__name__, cap, label, frame),
                  lambda f=frame, e=expected, c=cap: frame_outcome(f, e, c), frame[HEADER_BYTES:])
    for _ in range(counts["stream"]):
        case = gen.stream_case()
        tally.run("stream", case, lambda c=case: stream_outcome(c), case.data[HEADER_BYTES:])


def run_handlers(gen: Gen, tally: Tally, counts: dict[str, int], world: World,
                 special: float) -> None:
    """Inside trio: sequences of 1–4 inputs, each sequence from a fresh random held state."""
    neighbour = world.b.peer_id
    for kind, node in (("plain", world.plain), ("admission", world.sealed)):
        left = counts[kind]
        while left > 0:
            state = gen.handler_state(node.layout.size)
            install_state(node, state, neighbour)
            for _ in range(min(left, gen.rng.randint(1, 4))):
                remote, message = gen.handler_contribution(world, node, state, special)
                tally.run(kind, (remote, message),
                          lambda n=node, r=remote, m=message: checked_accept(n, r, m), None)
                left -= 1
    node = world.sealed
    left = counts["sealed"]
    while left > 0:
        state = gen.handler_state(node.layout.size)
        install_state(node, state, neighbour)
        for _ in range(min(left, gen.rng.randint(1, 3))):
            case = gen.sealed_case(world, state, special)
            tally.run("sealed", case, lambda c=case: sealed_outcome(node, c), case.payload)
            left -= 1


def split(count: int) -> dict[str, int]:
    counts = {kind: int(count * share) for kind, share in KINDS.items()}
    counts["field"] += count - sum(counts.values())
    return counts


def report(tally: Tally, elapsed: float, count: int, seed: int) -> None:
    print(f"gossipfl wire/handler fuzz: {sum(tally.tried.values())} inputs "
          f"(requested {count}, seed {seed}) in {elapsed:.1f} s")
    print()
    header = f"{'kind':<10} {'tried':>8} {'accepted':>9} {'dropped':>8} {'problems':>9}  seconds"
    print(header)
    print("-" * len(header))
    for kind in KINDS:
        outcomes = tally.outcomes[kind]
        accepted = sum(v for k, v in outcomes.items() if k in ("decoded", "ok", "need_full"))
        problems = outcomes["(problem)"]
        dropped = tally.tried[kind] - accepted - problems
        print(f"{kind:<10} {tally.tried[kind]:>8} {accepted:>9} {dropped:>8} {problems:>9}  "
              f"{tally.seconds[kind]:7.1f}")
    print("(accepted: decoded fine, or acked ok / need_full by the node)")
    print()
    print("Outcomes by rule (first words of the WireError / the node's rejection key):")
    for kind in KINDS:
        print(f"  [{kind}]")
        for rule, n in tally.outcomes[kind].most_common():
            if rule != "(problem)":
                print(f"    {n:>7}  {rule}")
    print()
    if not tally.problem_counts:
        print("Unexpected exceptions / broken invariants: none")
        return
    print("Unexpected exceptions / broken invariants:")
    for (kind, what), n in tally.problem_counts.most_common():
        print(f"  {n:>7}  [{kind}] {what}")
        for stem in tally.problems[(kind, what)]:
            print(f"             saved: {stem}.*")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="inputs in all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--special", type=float, default=0.05,
                        help="share of NaN/Inf/huge values in handler tensors (default 0.05)")
    parser.add_argument("--save-dir", type=Path,
                        default=Path(tempfile.gettempdir()) / "gossipfl-fuzz-failures")
    args = parser.parse_args(argv)
    logging.getLogger("gossipfl").setLevel(logging.CRITICAL)  # every drop logs a warning
    warnings.simplefilter("ignore", RuntimeWarning)  # float32 overflows, casts of NaN
    np.seterr(all="ignore")

    counts = split(args.count)
    gen = Gen(random.Random(args.seed))
    tally = Tally(args.save_dir)
    start = time.perf_counter()

    for kind in DECODER_KINDS:
        one = {k: (counts[k] if k == kind else 0) for k in counts}
        t = time.perf_counter()
        run_decoders(gen, tally, one)
        tally.seconds[kind] += time.perf_counter() - t

    with tempfile.TemporaryDirectory(prefix="gossipfl-fuzz-") as directory:
        t = time.perf_counter()
        world = build_world(Path(directory))
        setup = time.perf_counter() - t
        for kind in ("plain", "admission", "sealed"):
            one = {k: (counts[k] if k == kind else 0) for k in counts}
            t = time.perf_counter()

            async def handlers(one: dict[str, int] = one) -> None:
                run_handlers(gen, tally, one, world, args.special)

            trio.run(handlers)
            tally.seconds[kind] += time.perf_counter() - t

    elapsed = time.perf_counter() - start
    report(tally, elapsed, args.count, args.seed)
    print(f"\n(node setup {setup:.2f} s included; problems saved under {args.save_dir})"
          if tally.problem_counts else f"\n(node setup {setup:.2f} s included)")
    return 1 if tally.problem_counts else 0


if __name__ == "__main__":
    sys.exit(main())
