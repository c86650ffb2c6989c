"""Benchmark: what a node process costs before it does any work (start-up and memory).

Runs a scenario (default: the quickstart) with ``gossipfl run --spawn`` (each node a fresh
interpreter, ``python -m gossipfl node``, as a real deployment starts one) in three ways, in
this same run so that their figures compare as ratios whatever the machine's load:

- ``no cache``: ``GOSSIPFL_COMPILE_CACHE=off``, every node compiles its own steps (as before
  the cache reached spawned nodes);
- ``cold cache``: an empty cache folder (a machine's first run): the nodes compile and write
  the same entries;
- ``warm cache``: a cache already holding the steps (every later run on the machine, or a node
  started by hand after another: ``gossipfl node --compile-cache DIR``).

For each: the nodes' start-up (process start to round 0, from each ``summary.json``'s
``startup_seconds``: imports, identity, data, JAX, listening, joining, links), their peak RSS,
the run's wall time; then the import of a node's modules in a fresh interpreter.

Then the CPU per message of 36 KB (a quickstart model's contribution: 8,970 float32) between
two libp2p hosts of this process (TCP on loopback, Noise, yamux; both ends' CPU counted, as
``time.process_time``): written raw on a py-libp2p stream, against the node's send path (a
``Contribution`` encoded, sealed to its receiver with ``crypto/envelope.py``, framed and written
through ``gossip/peers.py``'s ``Channel``; read back as a ``Sealed`` frame), and sealing and
opening alone. Prints the load average with the figures (the machine may be shared).

    .venv/bin/python benchmarks/bench_overhead.py [SCENARIO] [--repeat N]
    .venv/bin/python benchmarks/bench_overhead.py --send-only [--messages N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLOATS = 8970  # the quickstart's MLP 64-64 on digits: 35,880 bytes of float32
NODE_MODULES = ("import gossipfl.node.main, gossipfl.node.runtime, gossipfl.node.round, "
                "gossipfl.node.learner, gossipfl.adversary.factory")


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0] if Path("/proc/loadavg").exists() \
        else "?"


def run(scenario: str, out: Path, cache: str | None) -> dict[str, Any]:
    """One ``gossipfl run --spawn``; its nodes' start-up and peak RSS, its wall time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))}
    env.pop("GOSSIPFL_COMPILE_CACHE", None)
    if cache is not None:
        env["GOSSIPFL_COMPILE_CACHE"] = cache
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "gossipfl", "run", "--spawn", scenario, "--out",
                    str(out), "--quiet", "--no-centralised"], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.monotonic() - start
    summaries = [json.loads(p.read_text()) for p in sorted(out.glob("nodes/*/summary.json"))]
    startup = [s["startup_seconds"] for s in summaries if s.get("startup_seconds") is not None]
    report = json.loads((out / "report.json").read_text())
    return {"wall": wall, "startup": startup,
            "rss": [s["peak_rss_bytes"] / 2**20 for s in summaries],
            "accuracy": report["summary"]["min_final_accuracy"], "load": load()}


def import_seconds(repeat: int) -> float:
    """The least wall time of a fresh interpreter importing a node's modules."""
    best = float("inf")
    for _ in range(repeat):
        start = time.monotonic()
        subprocess.run([sys.executable, "-c", NODE_MODULES], check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
        best = min(best, time.monotonic() - start)
    return best


async def send_costs(messages: int, folder: Path) -> dict[str, float]:
    """CPU seconds per message: raw stream, node send path, sealing alone, opening alone."""
    import multiaddr
    import numpy as np
    import trio

    from gossipfl.crypto.envelope import open_envelope, seal
    from gossipfl.crypto.identity import load_or_create_identity
    from gossipfl.crypto.member_keys import identity_signing_key, identity_x25519_keypair
    from gossipfl.crypto.sessions import OpenKeys, SealKeys
    from gossipfl.gossip.host import make_host
    from gossipfl.gossip.peers import Channel, PeerNet, Traffic
    from gossipfl.gossip.wire import (
        DEFAULT_MAX_PAYLOAD_BYTES,
        Contribution,
        Sealed,
        Tensor,
        encode_body_pieces,
    )

    ends = []
    for name in ("a", "b"):
        identity, _ = load_or_create_identity(folder / f"{name}.key")
        host, listen = make_host(identity, ["/ip4/127.0.0.1/tcp/0"])
        ends.append((identity, PeerNet(host, Traffic(), listen=listen)))
    (sender, net_a), (receiver, net_b) = ends
    a, b = str(sender.peer_id), str(receiver.peer_id)
    signing = identity_signing_key(sender)
    x25519_private, x25519_public = identity_x25519_keypair(receiver)
    vector = np.random.default_rng(0).normal(size=FLOATS).astype(np.float32)
    raw = bytes(vector.data)
    seal_keys, open_keys = SealKeys(), OpenKeys()  # as a node keeps them (crypto/sessions.py)

    def sealed(round_: int) -> Sealed:
        message = Contribution(federation="bench", round=round_, sender=a, receiver=b, degree=4,
                               kind="full", base_round=-1, disagreement=0.0, done=False,
                               tensors=(Tensor.from_array("w", vector),))
        data = seal(encode_body_pieces(message), federation="bench", round=round_, sender=a,
                    receiver=b, sender_signing_key=signing, receiver_x25519_public=x25519_public,
                    keys=seal_keys)
        return Sealed("bench", round_, a, b, data)

    results: dict[str, float] = {}
    received = trio.Semaphore(0)

    async def on_raw(channel: Channel) -> None:
        total, want = 0, messages * len(raw)
        while total < want:
            chunk = await channel.stream.read(1 << 16)  # type: ignore[attr-defined]
            if not chunk:
                break
            total += len(chunk)
        received.release()

    async def on_frames(channel: Channel) -> None:
        for _ in range(messages):
            await channel.receive(Sealed, DEFAULT_MAX_PAYLOAD_BYTES)
        received.release()

    with trio.fail_after(600):
        async with net_a.running(), net_b.running() as addrs_b:
            net_b.serve("/bench/raw/1.0.0", on_raw)
            net_b.serve("/bench/frames/1.0.0", on_frames)
            addrs = tuple(str(multiaddr.Multiaddr(x)) for x in addrs_b)
            for name, protocol in (("raw stream", "/bench/raw/1.0.0"),
                                   ("node send path", "/bench/frames/1.0.0")):
                channel = await net_a.open(b, addrs, protocol)
                start = time.process_time()
                for number in range(messages):
                    if name == "raw stream":
                        await channel.stream.write(raw)  # type: ignore[attr-defined]
                    else:
                        await channel.send(sealed(number), DEFAULT_MAX_PAYLOAD_BYTES)
                await received.acquire()
                results[name] = (time.process_time() - start) / messages
                await channel.close()
    start = time.process_time()
    envelopes = [sealed(number).data for number in range(messages)]
    results["sealing alone"] = (time.process_time() - start) / messages
    verify = signing.verify_key
    start = time.process_time()
    for number, data in enumerate(envelopes):
        open_envelope(data, federation="bench", expected_round=number, expected_sender=a,
                      receiver=b, receiver_x25519_private=x25519_private,
                      sender_verify_key=verify, keys=open_keys)
    results["opening alone"] = (time.process_time() - start) / messages
    return results


def print_send_costs(messages: int) -> None:
    import trio

    with tempfile.TemporaryDirectory(prefix="gossipfl-send-") as folder:
        costs = trio.run(send_costs, messages, Path(folder))
    raw = costs["raw stream"]
    print(f"\nCPU per message of {FLOATS * 4:,} bytes, {messages} messages, both ends in this "
          f"process (load {load()}):")
    for name, seconds in costs.items():
        print(f"{name:>15}: {seconds * 1e3:7.3f} ms  ({seconds / raw:.2f}x the raw stream)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/quickstart.toml")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each way (default 1)")
    parser.add_argument("--messages", type=int, default=300, help="messages per send path")
    parser.add_argument("--send-only", action="store_true", help="only the per-message CPU")
    args = parser.parse_args()
    if args.send_only:
        print_send_costs(args.messages)
        return 0
    with tempfile.TemporaryDirectory(prefix="gossipfl-overhead-") as folder:
        base = Path(folder)
        machine = base / "machine-cache"
        run(args.scenario, base / "prime", str(machine))  # fills the machine's cache
        ways: dict[str, list[dict[str, Any]]] = {"no cache": [], "cold cache": [],
                                                 "warm cache": []}
        for number in range(args.repeat):  # interleaved: the load hits each way alike
            ways["no cache"].append(run(args.scenario, base / f"off-{number}", "off"))
            ways["cold cache"].append(run(args.scenario, base / f"cold-{number}",
                                          str(base / f"cold-cache-{number}")))
            ways["warm cache"].append(run(args.scenario, base / f"warm-{number}", str(machine)))
    print(f"\n{args.scenario}, gossipfl run --spawn, {args.repeat} run(s) each "
          f"(load average before each run in brackets)")
    print(f"{'':>11} {'start-up s (median / max)':>26} {'peak RSS MB (max)':>18} "
          f"{'wall s':>7} {'min acc':>8}  load")
    figures: dict[str, tuple[float, float, float]] = {}
    for name, runs in ways.items():
        startup = [s for r in runs for s in r["startup"]]
        rss = max(x for r in runs for x in r["rss"])
        wall = statistics.median(r["wall"] for r in runs)
        figures[name] = (statistics.median(startup), rss, wall)
        print(f"{name:>11} {statistics.median(startup):>13.2f} / {max(startup):<10.2f} "
              f"{rss:>18.0f} {wall:>7.1f} {min(r['accuracy'] for r in runs):>8.4f}  "
              f"[{', '.join(r['load'] for r in runs)}]")
    off = figures["no cache"]
    for name in ("cold cache", "warm cache"):
        got = figures[name]
        print(f"{name} / no cache: start-up {got[0] / off[0]:.2f}x, peak RSS "
              f"{got[1] / off[1]:.2f}x, wall {got[2] / off[2]:.2f}x")
    print(f"imports of a node's modules in a fresh interpreter: {import_seconds(3):.2f} s "
          f"(best of 3; load {load()})")
    print_send_costs(args.messages)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
