"""Benchmark: what signing, encryption, DP and secure-aggregation masking cost one node per round.

For P parameters and degree d = 4, times one node's per-round data path with the real gossipfl
code, in one process, single-threaded:

* **plain round** (what a node does today without protection): build its Contribution frame for
  each of its d neighbours (``Layout.to_tensors``, ``encode_frame``) and decode the d frames it
  receives (``decode_frame``, ``Layout.from_tensors``).
* **protected round**: the same framing, plus

  - DP: ``privatise_update`` (clip + Gaussian noise) once per round;
  - sign+encrypt+open: ``seal`` each of the d outgoing contribution bodies (then the ``Sealed``
    frame around it) and ``open_envelope`` the d incoming ones (``verify_key_from_peer_id``
    included), as :class:`gossipfl.node.security.NodeSecurity` does;
  - masking as contributor, in each of the d neighbourhoods it belongs to (neighbourhood of
    neighbour j = j's d neighbours): fresh round keys and self seed, ``agree_seed`` with its
    d-1 co-neighbours, ``quantise`` (stochastic rounding) of its Metropolis-Hastings-weighted
    privatised update, ``mask_input``;
  - unmasking as aggregator of its own neighbourhood (its d neighbours): ``unmask_sum`` of the d
    masked vectors with the rebuilt self seeds, ``dequantise_sum``;
  - Shamir + share encryption: in each neighbourhood it belongs to, ``split_secret`` of its self
    seed and mask key and ``encrypt_shares`` to each of the d holders; as a holder,
    ``decrypt_shares`` of the d members' shares; as aggregator, ``combine_shares`` of its d
    neighbours' self seeds from the threshold (3 of 4) responders' shares.

The other nodes' work (their masking, sealing, share encryption) is done untimed between the
timed phases. Frames carry a float32 vector of P values both ways: a masked uint32 vector has the
same size, but the wire refuses it (see the note printed at the end).

    .venv/bin/python benchmarks/bench_privacy_cost.py            # 100k and 1M parameters
    .venv/bin/python benchmarks/bench_privacy_cost.py --quick    # 100k only
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from gossipfl.crypto import secagg, shamir
from gossipfl.crypto.admission import (
    identity_signing_key,
    identity_x25519_keypair,
    verify_key_from_peer_id,
)
from gossipfl.crypto.envelope import MAX_OVERHEAD_BYTES, open_envelope, seal
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.wire import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Contribution,
    Sealed,
    Tensor,
    WireError,
    decode_body,
    decode_frame,
    encode_body,
    encode_frame,
)
from gossipfl.node.layout import Layout
from gossipfl.privacy.dp import DPConfig, privatise_update

FEDERATION = "bench"
DEGREE = 4
RING = 9  # ring lattice C_9(1, 2): every node has degree 4, neighbourhoods overlap as in a ring
ROUND = 5
THRESHOLD = DEGREE // 2 + 1  # a strict majority of the d members of a neighbourhood
WEIGHT = 1.0 / (1 + DEGREE)  # Metropolis-Hastings weight between two degree-d nodes
CLIP, SCALE = secagg.DEFAULT_CLIP, secagg.DEFAULT_SCALE
DP_CONFIG = DPConfig(enabled=True, clip_norm=1.0, noise_multiplier=1.0)
CAP = DEFAULT_MAX_PAYLOAD_BYTES
BUCKETS = ("framing", "dp", "seal", "mask", "unmask", "shamir")
LABELS = {
    "framing": "framing (plain's + Sealed frame)",
    "dp": "DP clip+noise (once)",
    "seal": "sign+encrypt d, open d",
    "mask": "masking as contributor (d nbhds)",
    "unmask": "unmasking as aggregator",
    "shamir": "Shamir + share encryption",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def make_layout(params: int) -> Layout:
    """A small MLP-like layout with exactly ``params`` float32 parameters."""
    hidden, out = 128, 10
    rest = params - hidden - hidden * out - out
    din = rest // hidden
    names = ["dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias"]
    shapes: list[tuple[int, ...]] = [(din, hidden), (hidden,), (hidden, out), (out,)]
    if rest - din * hidden:
        names.append("embed")
        shapes.append((rest - din * hidden,))
    layout = Layout(tuple(names), tuple(shapes))
    assert layout.size == params
    return layout


class Timer:
    """Accumulates perf_counter time per bucket."""

    def __init__(self) -> None:
        self.spent = dict.fromkeys(BUCKETS, 0.0)

    def run(self, bucket: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.spent[bucket] += time.perf_counter() - start
        return result


class World:
    """A degree-4 ring lattice of real identities; node 0 is the measured node."""

    def __init__(self, key_dir: Path) -> None:
        self.ids: list[str] = []
        self.signing: list[Any] = []
        self.x25519: list[tuple[Any, bytes]] = []
        for n in range(RING):
            identity, _ = load_or_create_identity(key_dir / f"node{n}.key")
            self.ids.append(str(identity.peer_id))
            self.signing.append(identity_signing_key(identity))
            self.x25519.append(identity_x25519_keypair(identity))

    def neighbours(self, n: int) -> list[int]:
        return sorted((n + k) % RING for k in (-2, -1, 1, 2))

    def contribution(self, sender: int, receiver: int, tensors: tuple[Tensor, ...]) -> Contribution:
        return Contribution(
            federation=FEDERATION, round=ROUND, sender=self.ids[sender],
            receiver=self.ids[receiver], degree=DEGREE, kind="delta", base_round=ROUND - 1,
            disagreement=0.01, done=False, tensors=tensors,
        )

    def seal_to(self, sender: int, receiver: int, body: bytes) -> bytes:
        return seal(
            body, federation=FEDERATION, round=ROUND, sender=self.ids[sender],
            receiver=self.ids[receiver], sender_signing_key=self.signing[sender],
            receiver_x25519_public=self.x25519[receiver][1], max_payload_bytes=CAP,
        )


class Bench:
    """Everything for one parameter count: the node's update, and its neighbours' inputs."""

    def __init__(self, world: World, params: int, seed: int = 0) -> None:
        self.world = world
        self.params = params
        self.layout = make_layout(params)
        self.rng = np.random.default_rng(seed)
        self.me = 0
        self.nbrs = world.neighbours(0)
        self.update = (self.rng.standard_normal(params) * 0.01).astype(np.float32)

        # What the neighbours send node 0: their (privatised) updates as contributions.
        self.others = {
            k: privatise_update(self.rng.standard_normal(params) * 0.01, DP_CONFIG, self.rng)
            for k in self.nbrs
        }
        self.plain_in = []
        self.sealed_in = []
        for k in self.nbrs:
            message = world.contribution(k, 0, self.layout.to_tensors(self.others[k]))
            self.plain_in.append(encode_frame(message, CAP))
            data = world.seal_to(k, 0, encode_body(message))
            sealed = Sealed(FEDERATION, ROUND, world.ids[k], world.ids[0], data)
            self.sealed_in.append(encode_frame(sealed, CAP + MAX_OVERHEAD_BYTES + 4096))

        # Node 0 as aggregator of its own neighbourhood N(0) = its d neighbours: their masked
        # vectors and the responders' self-seed shares (all the neighbours' work, untimed).
        members = [world.ids[k] for k in self.nbrs]
        share_ids = secagg.share_ids_for(members)
        context0 = secagg.seed_context(FEDERATION, world.ids[0], ROUND)
        keys = {m: secagg.RoundKeys.generate() for m in members}
        self_seeds = {m: secagg.fresh_self_seed() for m in members}
        self.aggregated_masked: dict[str, np.ndarray] = {}
        self.expected_sum = np.zeros(params, np.float64)
        for k, m in zip(self.nbrs, members, strict=True):
            pair_seeds = {
                o: secagg.agree_seed(keys[m].mask_private, keys[o].mask_public, context=context0)
                for o in members if o != m
            }
            weighted = self.others[k] * np.float32(WEIGHT)
            self.expected_sum += np.clip(weighted, -CLIP, CLIP)
            q = secagg.quantise(weighted, CLIP, SCALE, rng=self.rng)
            self.aggregated_masked[m] = secagg.mask_input(
                q, my_id=m, self_seed=self_seeds[m], pair_seeds=pair_seeds
            )
        responders = sorted(members)[:THRESHOLD]
        self.seed_shares: dict[str, dict[str, bytes]] = {m: {} for m in members}
        for owner in members:
            split = shamir.split_secret(self_seeds[owner], THRESHOLD, list(share_ids.values()))
            for holder in responders:
                x = share_ids[holder]
                self.seed_shares[owner][holder] = shamir.encode_share(x, split[x])

        # Node 0 as contributor: the co-neighbours in each neighbour j's neighbourhood N(j).
        self.nbhd = {j: [world.ids[n] for n in world.neighbours(j)] for j in self.nbrs}
        self.co_keys = {
            j: {m: secagg.RoundKeys.generate() for m in self.nbhd[j] if m != world.ids[0]}
            for j in self.nbrs
        }
        self.contexts = {j: secagg.seed_context(FEDERATION, world.ids[j], ROUND) for j in self.nbrs}
        self.bytes: dict[str, int] = {}

    # -- the plain round -------------------------------------------------------------------------

    def plain_round(self) -> float:
        start = time.perf_counter()
        out = []
        for k in self.nbrs:
            message = self.world.contribution(self.me, k, self.layout.to_tensors(self.update))
            out.append(encode_frame(message, CAP))
        received = []
        for frame in self.plain_in:
            message = decode_frame(frame, Contribution, CAP)
            received.append(self.layout.from_tensors(message.tensors))
        elapsed = time.perf_counter() - start
        self.bytes["plain_out"] = sum(len(f) for f in out)
        self.bytes["plain_in"] = sum(len(f) for f in self.plain_in)
        self.bytes["body"] = len(encode_body(self.world.contribution(
            self.me, self.nbrs[0], self.layout.to_tensors(self.update))))
        return elapsed

    # -- the protected round ---------------------------------------------------------------------

    def protected_round(self, check: bool = False) -> dict[str, float]:
        t = Timer()
        world, me_id, rng = self.world, self.world.ids[self.me], self.rng

        # Phase 0 (node 0, before the round's data): fresh round keys and self seeds per
        # neighbourhood it contributes to.
        keys: dict[int, secagg.RoundKeys] = {}
        seeds: dict[int, bytes] = {}
        for j in self.nbrs:
            keys[j] = t.run("mask", secagg.RoundKeys.generate)
            seeds[j] = t.run("mask", secagg.fresh_self_seed)

        # Untimed: each co-neighbour seals its shares to node 0 (node 0 is a holder in N(j)).
        to_me: dict[int, dict[str, bytes]] = {}
        for j in self.nbrs:
            share_ids = secagg.share_ids_for(self.nbhd[j])
            to_me[j] = {}
            for owner, owner_keys in self.co_keys[j].items():
                split = shamir.split_secret(os.urandom(32), THRESHOLD, list(share_ids.values()))
                x = share_ids[me_id]
                to_me[j][owner] = secagg.encrypt_shares(
                    sender=owner, recipient=me_id, context=self.contexts[j],
                    self_seed_share=shamir.encode_share(x, split[x]),
                    mask_key_share=shamir.encode_share(x, split[x]),
                    sender_share_private=owner_keys.share_private,
                    recipient_share_public=keys[j].share_public,
                )

        # Phase 1: DP once, then per neighbourhood: shares, masking, frame, seal.
        private = t.run("dp", privatise_update, self.update, DP_CONFIG, rng)
        frames_out: list[bytes] = []
        share_bytes_out = 0
        for j in self.nbrs:
            members = self.nbhd[j]
            context = self.contexts[j]
            share_ids = t.run("shamir", secagg.share_ids_for, members)
            x_values = list(share_ids.values())
            b_split = t.run("shamir", shamir.split_secret, seeds[j], THRESHOLD, x_values)
            c_split = t.run("shamir", shamir.split_secret, keys[j].mask_private, THRESHOLD,
                            x_values)
            for holder in members:
                x = share_ids[holder]
                holder_public = (keys[j].share_public if holder == me_id
                                 else self.co_keys[j][holder].share_public)
                ciphertext = t.run(
                    "shamir", secagg.encrypt_shares, sender=me_id, recipient=holder,
                    context=context,
                    self_seed_share=shamir.encode_share(x, b_split[x]),
                    mask_key_share=shamir.encode_share(x, c_split[x]),
                    sender_share_private=keys[j].share_private,
                    recipient_share_public=holder_public,
                )
                share_bytes_out += len(ciphertext)
                if holder == me_id:
                    to_me[j][me_id] = ciphertext

            start = time.perf_counter()
            pair_seeds = {
                other: secagg.agree_seed(keys[j].mask_private, other_keys.mask_public,
                                         context=context)
                for other, other_keys in self.co_keys[j].items()
            }
            q = secagg.quantise(private * np.float32(WEIGHT), CLIP, SCALE, rng=rng)
            masked = secagg.mask_input(q, my_id=me_id, self_seed=seeds[j], pair_seeds=pair_seeds)
            t.spent["mask"] += time.perf_counter() - start
            assert masked.nbytes == private.nbytes  # uint32 vs float32: the same size

            # The frame carries a float32 vector of P values (see the module docstring).
            start = time.perf_counter()
            message = world.contribution(self.me, j, self.layout.to_tensors(private))
            body = encode_body(message)
            t.spent["framing"] += time.perf_counter() - start
            data = t.run("seal", world.seal_to, self.me, j, body)
            start = time.perf_counter()
            sealed = Sealed(FEDERATION, ROUND, me_id, world.ids[j], data)
            frames_out.append(encode_frame(sealed, CAP + MAX_OVERHEAD_BYTES + 4096))
            t.spent["framing"] += time.perf_counter() - start

        # Phase 2: receive and open the d sealed contributions.
        received = []
        for k, frame in zip(self.nbrs, self.sealed_in, strict=True):
            sealed = t.run("framing", decode_frame, frame, Sealed, CAP + MAX_OVERHEAD_BYTES + 4096)
            start = time.perf_counter()
            round_, payload = open_envelope(
                sealed.data, federation=FEDERATION, expected_round=sealed.round,
                expected_sender=world.ids[k], receiver=me_id,
                receiver_x25519_private=world.x25519[self.me][0],
                sender_verify_key=verify_key_from_peer_id(world.ids[k]),
                max_payload_bytes=CAP,
            )
            t.spent["seal"] += time.perf_counter() - start
            start = time.perf_counter()
            message = decode_body(payload, Contribution)
            if (message.round, message.sender, message.receiver) != (
                round_, sealed.sender, sealed.receiver
            ):
                raise WireError("inside differs from outside")
            received.append(self.layout.from_tensors(message.tensors))
            t.spent["framing"] += time.perf_counter() - start

        # Phase 3: as a holder in each N(j), open the d members' shares (own included).
        for j in self.nbrs:
            for owner, ciphertext in to_me[j].items():
                sender_public = (keys[j].share_public if owner == me_id
                                 else self.co_keys[j][owner].share_public)
                t.run("shamir", secagg.decrypt_shares, ciphertext, sender=owner,
                      recipient=me_id, context=self.contexts[j],
                      recipient_share_private=keys[j].share_private,
                      sender_share_public=sender_public)

        # Phase 4: as aggregator of N(0): rebuild self seeds, unmask, dequantise.
        start = time.perf_counter()
        rebuilt = {
            owner: shamir.combine_shares(
                dict(shamir.decode_share(s) for s in shares.values()), THRESHOLD
            )
            for owner, shares in self.seed_shares.items()
        }
        t.spent["shamir"] += time.perf_counter() - start
        start = time.perf_counter()
        total = secagg.unmask_sum(
            self.aggregated_masked, survivors_self_seeds=rebuilt, dropped_pair_seeds={}
        )
        result = secagg.dequantise_sum(total, len(self.aggregated_masked), CLIP, SCALE)
        t.spent["unmask"] += time.perf_counter() - start

        if check:
            error = float(np.max(np.abs(result - self.expected_sum)))
            bound = DEGREE / SCALE + 1e-5 * float(np.max(np.abs(self.expected_sum))) + 1e-6
            assert error <= bound, f"secure sum off by {error} (bound {bound})"
            for k, vector in zip(self.nbrs, received, strict=True):
                assert np.array_equal(vector, self.others[k]), "opened contribution differs"
        self.bytes["sealed_out"] = sum(len(f) for f in frames_out)
        self.bytes["sealed_in"] = sum(len(f) for f in self.sealed_in)
        self.bytes["envelope"] = len(data) - len(body)
        self.bytes["share_ct"] = share_bytes_out
        self.bytes["share_ct_one"] = share_bytes_out // (DEGREE * DEGREE)
        return t.spent


def wire_refuses_masked(layout: Layout) -> str:
    """Try to carry a masked uint32 vector in a Contribution (as float32 bits); the wire's
    answer."""
    rng = np.random.default_rng(1)
    masked = rng.integers(0, 2**32, layout.size, dtype=np.uint32)
    try:
        Tensor.from_array("masked", masked)
    except WireError as error:
        first = f"Tensor.from_array(uint32): {error}"
    else:
        first = "Tensor.from_array(uint32) accepted"
    world_free = Contribution(
        federation=FEDERATION, round=ROUND, sender="a", receiver="b", degree=DEGREE,
        kind="delta", base_round=ROUND - 1, disagreement=0.0, done=False,
        tensors=(Tensor.from_array("masked", masked.view(np.float32)),),
    )
    try:
        decode_frame(encode_frame(world_free, CAP), Contribution, CAP)
    except WireError as error:
        return f"{first}; as float32 bits, decode_frame: {error}"
    return f"{first}; as float32 bits, decode_frame accepted it"


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def measure(world: World, params: int, reps: int) -> dict[str, Any]:
    bench = Bench(world, params)
    bench.plain_round()  # warm-up
    bench.protected_round(check=True)  # warm-up, and checks the secure sum and the envelopes
    plain: list[float] = []
    protected: list[dict[str, float]] = []
    for _ in range(reps):
        gc.collect()
        plain.append(bench.plain_round())
        gc.collect()
        protected.append(bench.protected_round())
    totals = [sum(p.values()) for p in protected]
    return {
        "params": params,
        "plain": median_ms(plain),
        "protected": median_ms(totals),
        "parts": {b: median_ms([p[b] for p in protected]) for b in BUCKETS},
        "spread": (min(totals) * 1e3, max(totals) * 1e3, min(plain) * 1e3, max(plain) * 1e3),
        "bytes": dict(bench.bytes),
        "layout": bench.layout,
    }


def report(rows: list[dict[str, Any]], reps: int) -> None:
    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} logical CPUs visible); single thread "
          f"(BLAS limited to 1); measured in one process on this machine.")
    try:
        load = Path("/proc/loadavg").read_text().split()[:3]
        print(f"load average (1, 5, 15 min) at the end: {' '.join(load)} (other processes "
              f"share these CPUs; see the min-max spread)")
    except OSError:
        pass
    print(f"degree d = {DEGREE}, Shamir threshold {THRESHOLD} of {DEGREE}, secagg clip {CLIP} "
          f"scale 2**{int(math.log2(SCALE))}, DP clip_norm {DP_CONFIG.clip_norm} sigma "
          f"{DP_CONFIG.noise_multiplier}; median of {reps} repetitions after one warm-up.\n")
    print(f"{'params':>10} {'plain ms':>9} {'protected ms':>13} {'ratio':>7}   "
          f"{'protected min-max':>17}   {'plain min-max':>13}")
    for row in rows:
        pmin, pmax, qmin, qmax = row["spread"]
        print(f"{row['params']:>10,} {row['plain']:>9.1f} {row['protected']:>13.1f} "
              f"{row['protected'] / row['plain']:>6.2f}x   {pmin:>8.1f}-{pmax:<8.1f}   "
              f"{qmin:>6.1f}-{qmax:.1f}")

    print("\nprotected round, breakdown (median ms per bucket; x plain = bucket / plain round):")
    print(f"{'':>38}" + "".join(f"{row['params']:>12,}" for row in rows) + "   x plain")
    for bucket in BUCKETS:
        cells = "".join(f"{row['parts'][bucket]:>12.1f}" for row in rows)
        ratios = " ".join(f"{row['parts'][bucket] / row['plain']:.2f}" for row in rows)
        print(f"  {LABELS[bucket]:<36}{cells}   {ratios}")
    print(f"  {'sum of bucket medians':<36}"
          + "".join(f"{sum(row['parts'].values()):>12.1f}" for row in rows))

    print("\nbytes per round (node 0: d frames out, d frames in):")
    print(f"{'':>38}" + "".join(f"{row['params']:>14,}" for row in rows))
    lines = [
        ("contribution body (one)", lambda b: b["body"]),
        ("plain frames out + in", lambda b: b["plain_out"] + b["plain_in"]),
        ("sealed frames out + in", lambda b: b["sealed_out"] + b["sealed_in"]),
        ("  envelope overhead (one frame)", lambda b: b["envelope"]),
        ("  sealed - plain frame (one)",
         lambda b: (b["sealed_out"] - b["plain_out"]) // DEGREE),
        ("share ciphertexts out (d*d)", lambda b: b["share_ct"]),
        ("  one share ciphertext", lambda b: b["share_ct_one"]),
    ]
    for label, get in lines:
        print(f"  {label:<36}" + "".join(f"{get(row['bytes']):>14,}" for row in rows))
    for row in rows:
        b = row["bytes"]
        plain = b["plain_out"] + b["plain_in"]
        protected = b["sealed_out"] + b["sealed_in"] + 2 * b["share_ct"]
        print(f"  {row['params']:,} params: protected/plain bytes = {protected / plain:.5f} "
              f"(frames + share ciphertexts out and in; masked uint32 = float32 = "
              f"{4 * row['params']:,} bytes per vector)")
    print("  not counted: round public keys, Shamir responses and the aggregator's relaying of "
          "share ciphertexts (tens of bytes to a few kB; they have no wire message yet)")
    print("\nnote: frames carry a float32 vector of P values both ways; the masked vector is "
          "computed and timed but cannot travel in a Contribution:\n  "
          + wire_refuses_masked(rows[0]["layout"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k parameters only")
    parser.add_argument("--reps", type=int, default=11, help="timed repetitions (>= 5)")
    args = parser.parse_args()
    if args.reps < 5:
        parser.error("--reps must be at least 5")
    sizes = (100_000,) if args.quick else (100_000, 1_000_000)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gossipfl-bench-keys-") as key_dir:
        world = World(Path(key_dir))
        with threadpool_limits(limits=1):
            rows = [measure(world, params, args.reps) for params in sizes]
    report(rows, args.reps)
    print(f"\n(whole run {time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
