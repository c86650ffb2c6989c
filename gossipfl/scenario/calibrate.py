"""The short calibration behind ``gossipfl estimate`` (issue 13): what one node's work costs on
the machine at hand, measured with the project's own code, in a few seconds.

- **Learning**: the scenario's dataset, every node's partition and the model, loaded with
  :mod:`gossipfl.learning`; one node's real training step (the real :class:`Trainer`, DP-SGD
  when record-level DP is on) timed for one round of local epochs after compilation (the first
  call, compilation included, is timed too), and the evaluation on the test set.
- **Wire**: the bytes of one real contribution frame as the scenario sends it (a full estimate
  and a delta, compressed as ``[compression]`` says, sealed with the real envelope when
  payloads are sealed), an ack, a heartbeat listing every member (certificates and liveness
  stamps when admission is on), a link request and reply, and with secure aggregation a real
  masked input (quantised, masked, self seed Shamir-shared and encrypted to each co-neighbour),
  the consistency request and signed response, the unmask request (shares and signatures) and
  response. Keys are made in memory (no files).
- **CPU per message**: the CPU time to build, seal, frame, open and decode one contribution
  (both ends of one exchange), and one heartbeat.
- **Memory**: this process's resident set after importing what a node imports (JAX, libp2p,
  the node runtime) and training and evaluating one model: the base for a node's peak RSS.

The cost model that turns these figures into per-node estimates is
:mod:`gossipfl.scenario.estimate` (pure).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gossipfl.config import NodeConfig
from gossipfl.gossip.wire_fields import MAX_MEMBERS as MAX_MEMBERS_LISTED
from gossipfl.scenario.config import ScenarioConfig

#: Timed repetitions of the steady training round and of the message codec.
TRAIN_REPEATS = 3
CODEC_REPEATS = 5
Names = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class SecAggBytes:
    """Frame bytes of one secure-aggregation exchange per neighbour (degree d): a sealed
    masked input, the aggregator's consistency request and the signed response, its unmask
    request (shares and threshold signatures) and the response (seed shares)."""

    masked_input: int
    consistency_request: int
    consistency_response: int
    unmask_request: int
    unmask_response: int
    cpu_seconds: float  # build + seal + open + decode one masked input (both ends)


@dataclass(frozen=True)
class Calibration:
    """What the calibration measured (seconds: CPU seconds of this machine, one core)."""

    cores: int
    parameters: int
    examples: tuple[int, ...]  # training examples per node (the scenario's partition)
    steps: tuple[int, ...]  # minibatch steps per node in a training round
    test_examples: int
    import_seconds: float  # a fresh interpreter importing JAX, libp2p and the node runtime
    compile_seconds: float  # the warm-up child: JAX, data, model, first round (compiling)
    node_first_seconds: float  # a node child the same way, loading from the compile cache
    train_seconds: float  # one steady training round of node 0 (its local epochs)
    eval_seconds: float  # one evaluation on the test set
    full_bytes: int  # one contribution frame carrying the full estimate (as sent)
    delta_bytes: int  # one carrying a delta (compressed when the scenario compresses)
    ack_bytes: int
    heartbeat_bytes: int  # one heartbeat listing every member
    link_bytes: int  # a link request plus its reply
    message_cpu_seconds: float  # one contribution: build, seal, frame, open, decode
    heartbeat_cpu_seconds: float  # one heartbeat: build, frame, decode, check its stamps
    secagg: SecAggBytes | None
    base_rss_bytes: int  # peak RSS of a forked child that loaded, trained and evaluated
    calibration_seconds: float

    def train_seconds_for(self, index: int) -> float:
        """One steady training round of node ``index`` (scales with its minibatch steps)."""
        return self.train_seconds * self.steps[index] / max(1, self.steps[0])


def _timed(call: Callable[[], object]) -> float:
    """CPU seconds ``call()`` took in this process (all its threads): on a shared machine,
    what a node will ask of the cores, whatever else runs there now."""
    start = time.process_time()
    call()
    return time.process_time() - start


def _best_time(call: Callable[[], object], repeats: int) -> float:
    """The least of ``repeats`` timings: on a shared machine, the least disturbed."""
    return min(_timed(call) for _ in range(repeats))


def node_config(scenario: ScenarioConfig, index: int = 0) -> NodeConfig:
    """The learning part of node ``index``'s configuration, as the runner writes it."""
    return NodeConfig(federation=scenario.federation_name, node_index=index,
                      node_count=scenario.nodes, rounds=scenario.rounds, seed=scenario.seed,
                      data=scenario.data, model=scenario.model, train=scenario.train,
                      protocol=scenario.protocol, privacy=scenario.privacy,
                      compression=scenario.compression)


NODE_MODULES = ("gossipfl.node.learner", "gossipfl.node.main", "gossipfl.node.round",
                "gossipfl.node.runtime")


def _import_node_modules(scenario: ScenarioConfig, fresh: bool) -> float:
    """Import what the launcher imports before it forks the nodes, here; with ``fresh``, also
    time a fresh interpreter doing it (as the launcher does, from scratch)."""
    modules = NODE_MODULES + (("gossipfl.privacy.accountant",) if scenario.privacy.enabled
                              else ())
    for module in modules:
        importlib.import_module(module)
    if not fresh:
        return 0.0
    before = _children_cpu()
    done = subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], check=False,
                          capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if done.returncode != 0:
        raise CalibrationError("importing the node's modules in a fresh interpreter failed: "
                               + done.stderr.decode(errors="replace").strip()[-300:])
    return _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _learning(scenario: ScenarioConfig, cache: str | None) -> dict[str, Any]:
    """Load the data and model, time one node's training round (the first call, compilation
    or cache load included, then steady) and evaluation; with ``cache``, through JAX's
    on-disk compilation cache in that folder, as the launcher's children do. ``ready``: the
    CPU seconds from the call (in a fresh child: the fork) to the end of the first round's
    training and evaluation (JAX's backend, the data, compilation or cache load)."""
    started = time.process_time()
    if cache is not None:
        from gossipfl.scenario.launcher import enable_compile_cache

        enable_compile_cache(cache)
    from gossipfl.learning.params import named_arrays
    from gossipfl.learning.partition import partition_indices
    from gossipfl.learning.train import DPSGD
    from gossipfl.node.learner import LearnerPool, LocalLearner

    config = node_config(scenario)
    learner = LocalLearner(config, LearnerPool())
    spec = config.data
    if spec.partition == "none":
        examples = [len(learner.dataset.y_train)] * scenario.nodes
    else:
        parts = partition_indices(learner.dataset.y_train, scenario.nodes, scheme=spec.partition,
                                  seed=spec.seed, alpha=spec.alpha,
                                  shards_per_node=spec.shards_per_node)
        examples = [len(p) for p in parts]
    vector = learner.initial_vector()
    dp = None
    if scenario.privacy.enabled and scenario.privacy.unit == "record":
        rate = min(1.0, scenario.train.batch_size / max(1, len(learner.y)))
        noise = scenario.privacy.noise_multiplier or 1.0
        dp = DPSGD(clip_norm=scenario.privacy.clip_norm, noise_multiplier=noise,
                   sample_rate=rate, rng=np.random.default_rng())

    def train() -> None:
        learner.trainer.train(learner.template, learner.opt_state, learner.x, learner.y,
                              epochs=scenario.train.local_epochs, seed=1, dp=dp)

    def evaluate() -> None:
        learner.evaluate(vector)

    first_train = _timed(train)
    first_eval = _timed(evaluate)
    ready = time.process_time() - started  # the child's CPU up to its first round's end
    return {
        "parameters": int(vector.size), "examples": examples,
        "test_examples": len(learner.dataset.y_test), "train_examples": len(learner.y),
        "first_train": first_train, "first_eval": first_eval, "ready": ready,
        "train": _best_time(train, TRAIN_REPEATS), "eval": _best_time(evaluate, TRAIN_REPEATS),
        "names": [[name, list(np.shape(a))] for name, a in named_arrays(learner.template)],
        "rss": peak_rss_bytes(),
    }


def peak_rss_bytes() -> int:
    """This process's peak resident set, as a node reports its own."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``work()`` in a forked child (the way the launcher starts nodes: this process imported
    the modules, the child initialises JAX); its JSON result back through a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read)
            try:
                result: dict[str, Any] = work()
            except Exception as error:  # reported to the parent, which raises it
                result, code = {"error": f"{type(error).__name__}: {error}"}, 1
            with os.fdopen(write, "w") as pipe:
                json.dump(result, pipe)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(text) if text else {"error": "the calibration child died"}
    if "error" in result:
        raise CalibrationError(f"calibration failed: {result['error']}")
    return result


class CalibrationError(RuntimeError):
    """The calibration could not measure the scenario (the message says why)."""


@dataclass(frozen=True)
class _Member:
    """An in-memory federation member: its signing key, peer id and X25519 keys."""

    signing: object
    peer_id: str
    x_private: object
    x_public: bytes


def _members(count: int) -> list[_Member]:
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    from gossipfl.crypto.admission import member_x25519_keypair, peer_id_of

    members = []
    for _ in range(count):
        key = SigningKey.generate()
        private, public = member_x25519_keypair(bytes(key))
        members.append(_Member(key, peer_id_of(key.verify_key), PrivateKey(bytes(private)),
                               public))
    return members


def _contribution_frames(scenario: ScenarioConfig, names: Names, a: _Member,
                         b: _Member) -> tuple[int, int, int, float]:
    """(full frame bytes, delta frame bytes, ack bytes, CPU seconds per exchange)."""
    from gossipfl.crypto.admission import verify_key_from_peer_id
    from gossipfl.crypto.envelope import open_envelope, seal
    from gossipfl.gossip.codes import AckCode
    from gossipfl.gossip.wire import (
        DEFAULT_MAX_PAYLOAD_BYTES,
        Ack,
        Contribution,
        Sealed,
        decode_body,
        encode_body,
        encode_frame,
    )
    from gossipfl.node.compression import compressor, to_packed
    from gossipfl.node.layout import Layout

    fed = scenario.federation_name
    layout = Layout(tuple(n for n, _ in names), tuple(tuple(s) for _, s in names))
    rng = np.random.default_rng(0)
    full = rng.standard_normal(layout.size).astype(np.float32)
    delta = (rng.standard_normal(full.size) * 1e-2).astype(np.float32)
    compress = compressor(scenario.compression, fed, a.peer_id, 1)
    sealed = scenario.admission and scenario.encrypt_payloads
    cap = max(DEFAULT_MAX_PAYLOAD_BYTES, scenario.protocol.max_payload_bytes)

    def message(kind: str, array: np.ndarray) -> Contribution:
        encoded = compress(array) if compress is not None and kind == "delta" else None
        packed = None if encoded is None else to_packed(encoded)
        return Contribution(
            federation=fed, round=1, sender=a.peer_id, receiver=b.peer_id, degree=4, kind=kind,
            base_round=0 if kind == "delta" else -1, disagreement=1e-2, done=False,
            tensors=() if packed else layout.to_tensors(array), packed=packed, training=True,
            depth=0, horizon=3, waiting=0)

    def exchange(kind: str, array: np.ndarray) -> int:
        contribution = message(kind, array)
        if not sealed:
            frame = encode_frame(contribution, cap)
            decode_body(encode_body(contribution), Contribution)
            return len(frame)
        data = seal(encode_body(contribution), federation=fed, round=1, sender=a.peer_id,
                    receiver=b.peer_id, sender_signing_key=a.signing,
                    receiver_x25519_public=b.x_public, max_payload_bytes=cap)
        frame = encode_frame(Sealed(fed, 1, a.peer_id, b.peer_id, data), cap)
        _, payload = open_envelope(data, federation=fed, expected_round=1,
                                   expected_sender=a.peer_id, receiver=b.peer_id,
                                   receiver_x25519_private=b.x_private,
                                   sender_verify_key=verify_key_from_peer_id(a.peer_id),
                                   max_payload_bytes=cap)
        decode_body(payload, Contribution)
        return len(frame)

    full_bytes = exchange("full", full)
    delta_bytes = exchange("delta", delta)
    cpu = _best_time(lambda: exchange("delta", delta), CODEC_REPEATS)
    ack = Ack(fed, 1, b.peer_id, AckCode.OK, "")
    return full_bytes, delta_bytes, len(encode_frame(ack)), cpu


def _heartbeat_frame(scenario: ScenarioConfig, members: list[_Member]) -> tuple[int, int, float]:
    """(heartbeat bytes, link request + reply bytes, CPU seconds per heartbeat)."""
    from nacl.signing import SigningKey

    from gossipfl.crypto.certificates import issue_certificate
    from gossipfl.crypto.liveness import sign_stamp, verify_stamp
    from gossipfl.gossip.codes import LinkCode, NodeStatus
    from gossipfl.gossip.membership import MAX_STAMP_CHECKS
    from gossipfl.gossip.wire import (
        Heartbeat,
        LinkReply,
        LinkRequest,
        MemberInfo,
        decode_body,
        encode_body,
        encode_frame,
    )

    fed = scenario.federation_name
    federation_key = SigningKey.generate()
    now = time.time()

    def certificate(m: _Member) -> bytes:
        if not scenario.admission:
            return b""
        return issue_certificate(federation_key, fed, m.peer_id, m.x_public, now=now,
                                 valid_for=86400.0).to_bytes()

    def stamp(m: _Member) -> bytes:
        return sign_stamp(fed, m.peer_id, int(now), 1000, m.signing) if scenario.admission \
            else b""

    certificates = [certificate(m) for m in members]
    stamps = [stamp(m) for m in members]
    addrs = [f"/ip4/127.0.0.1/tcp/{40000 + i}/p2p/{m.peer_id}" for i, m in enumerate(members)]
    sender = members[0]
    entries = tuple(MemberInfo(m.peer_id, (addrs[i],), 0.5, certificates[i], stamps[i])
                    for i, m in enumerate(members[1:], start=1))

    def beat() -> int:
        heartbeat = Heartbeat(federation=fed, sender=sender.peer_id, addrs=(addrs[0],),
                              members=entries, round=12, degree=4, status=NodeStatus.TRAINING,
                              certificate=certificates[0], revocations=b"", stamp=stamps[0])
        frame = encode_frame(heartbeat)
        received = decode_body(encode_body(heartbeat), Heartbeat)
        if scenario.admission:  # every member's stamp is news each cycle: checked (up to 64)
            verify_stamp(received.stamp, federation=fed, peer_id=received.sender)
            for info in received.members[:MAX_STAMP_CHECKS]:
                verify_stamp(info.stamp, federation=fed, peer_id=info.peer_id)
        return len(frame)

    size = beat()
    cpu = _best_time(beat, CODEC_REPEATS)
    request = LinkRequest(fed, sender.peer_id, "0" * 64, -1)
    reply = LinkReply(fed, members[1].peer_id, LinkCode.ACCEPTED, "")
    return size, len(encode_frame(request)) + len(encode_frame(reply)), cpu


def _secagg_frames(scenario: ScenarioConfig, parameters: int, degree: int) -> SecAggBytes:
    """One aggregator's neighbourhood of ``degree`` members: the real masked input one of them
    sends it, and the consistency and unmask messages of the round."""
    from gossipfl.crypto import secagg, shamir
    from gossipfl.crypto.admission import verify_key_from_peer_id
    from gossipfl.crypto.consistency import SurvivorSet, sign_set, threshold
    from gossipfl.crypto.envelope import open_envelope, seal
    from gossipfl.gossip.wire import (
        DEFAULT_MAX_PAYLOAD_BYTES,
        ConsistencyRequest,
        ConsistencyResponse,
        MaskedInput,
        Sealed,
        UnmaskRequest,
        UnmaskResponse,
        decode_body,
        encode_body,
        encode_frame,
    )

    fed, config = scenario.federation_name, scenario.secagg
    aggregator, *members = _members(degree + 1)
    me = members[0]
    ids = [m.peer_id for m in members]
    context = secagg.seed_context(fed, aggregator.peer_id, 1)
    cap = max(DEFAULT_MAX_PAYLOAD_BYTES, scenario.protocol.max_payload_bytes)
    by_id = {m.peer_id: m for m in members}
    vector = (np.random.default_rng(0).standard_normal(parameters) * 0.1).astype(np.float32)

    def masked() -> MaskedInput:
        w = 1.0 / (1 + degree)
        q = secagg.quantise(w * vector, config.clip, config.scale)
        self_seed = secagg.fresh_self_seed()
        pairs = {o.peer_id: secagg.agree_seed(bytes(me.x_private), o.x_public, context=context)
                 for o in members[1:]}
        y = secagg.mask_input(q, my_id=me.peer_id, self_seed=self_seed, pair_seeds=pairs)
        share_ids = secagg.share_ids_for(ids)
        shares = shamir.split_secret(self_seed, threshold(len(ids)), sorted(share_ids.values()))
        sealed_shares = tuple(
            (other, secagg.encrypt_seed_share(
                sender=me.peer_id, recipient=other, context=context,
                share=shamir.encode_share(share_ids[other], shares[share_ids[other]]),
                sender_private=bytes(me.x_private), recipient_public=by_id[other].x_public))
            for other in sorted(ids) if other != me.peer_id)
        return MaskedInput(federation=fed, round=1, sender=me.peer_id,
                           aggregator=aggregator.peer_id, weight=w, disagreement=1e-2,
                           done=False, data=y.astype("<u4").tobytes(), shares=sealed_shares,
                           depth=0, horizon=3, waiting=0)

    def exchange() -> tuple[int, MaskedInput]:
        message = masked()
        body = encode_body(message)
        if scenario.encrypt_payloads:
            data = seal(body, federation=fed, round=1, sender=me.peer_id,
                        receiver=aggregator.peer_id, sender_signing_key=me.signing,
                        receiver_x25519_public=aggregator.x_public, max_payload_bytes=cap)
            frame = encode_frame(Sealed(fed, 1, me.peer_id, aggregator.peer_id, data), cap)
            _, body = open_envelope(data, federation=fed, expected_round=1,
                                    expected_sender=me.peer_id, receiver=aggregator.peer_id,
                                    receiver_x25519_private=aggregator.x_private,
                                    sender_verify_key=verify_key_from_peer_id(me.peer_id),
                                    max_payload_bytes=cap)
        else:
            frame = encode_frame(message, cap)
        decode_body(body, MaskedInput)
        return len(frame), message

    size, message = exchange()
    cpu = _best_time(exchange, CODEC_REPEATS)
    announced = SurvivorSet(fed, aggregator.peer_id, 1, frozenset(ids), frozenset())
    signatures = tuple((m.peer_id, sign_set(announced, m.signing)) for m in members)
    request = ConsistencyRequest(fed, 1, aggregator.peer_id, tuple(sorted(ids)), ())
    response = ConsistencyResponse(fed, 1, me.peer_id, signatures[0][1], "")
    share = dict(message.shares)
    unmask = UnmaskRequest(fed, 1, aggregator.peer_id, tuple(sorted(ids)), (),
                           tuple((owner, share[members[1].peer_id]) for owner in ids
                                 if owner != members[1].peer_id), signatures)
    seed_share = shamir.encode_share(1, bytes(shamir.VALUE_BYTES))
    answer = UnmaskResponse(fed, 1, me.peer_id, tuple((i, seed_share) for i in sorted(ids)), ())
    return SecAggBytes(size, len(encode_frame(request)), len(encode_frame(response)),
                       len(encode_frame(unmask)), len(encode_frame(answer)), cpu)


def scenario_degree(scenario: ScenarioConfig) -> int:
    """The most links a node of the scenario has."""
    topology, n = scenario.topology, scenario.nodes
    if topology.kind == "ring":
        return min(2, n - 1)
    if topology.kind == "full":
        return n - 1
    if topology.kind == "edges":
        counts = [sum(1 for e in topology.edges if i in e) for i in range(n)]
        return max(counts)
    return min(topology.degree, n - 1)


def calibrate(scenario: ScenarioConfig, *, isolated: bool = True) -> Calibration:
    """Measure one node's costs for ``scenario`` on this machine (a few seconds).

    ``isolated`` (the CLI): as the launcher does, this process imports and forks, a first
    child compiles into a fresh compilation cache and times the steady steps, a second loads
    from it like a node and reports its peak RSS; this process must not have started JAX.
    Otherwise (tests) everything runs here, without a cache."""
    start = time.perf_counter()
    import_seconds = _import_node_modules(scenario, fresh=isolated)
    if isolated:
        with tempfile.TemporaryDirectory(prefix="gossipfl-calibrate-") as cache:
            warm = in_child(lambda: _learning(scenario, cache))
            node = in_child(lambda: _learning(scenario, cache))
    else:
        warm = node = _learning(scenario, None)
    members = _members(min(scenario.nodes, MAX_MEMBERS_LISTED))
    names = [(str(n), tuple(int(x) for x in shape)) for n, shape in warm["names"]]
    full, delta, ack, message_cpu = _contribution_frames(scenario, names, members[0],
                                                         members[1])
    heartbeat, link, heartbeat_cpu = _heartbeat_frame(scenario, members)
    secure = (_secagg_frames(scenario, int(warm["parameters"]), scenario_degree(scenario))
              if scenario.secagg.enabled else None)
    batch, epochs = scenario.train.batch_size, scenario.train.local_epochs
    return Calibration(
        cores=os.cpu_count() or 1, parameters=int(warm["parameters"]),
        examples=tuple(warm["examples"]),
        steps=tuple(epochs * -(-e // batch) for e in warm["examples"]),
        test_examples=int(warm["test_examples"]), import_seconds=import_seconds,
        compile_seconds=float(warm["ready"]), node_first_seconds=float(node["ready"]),
        train_seconds=min(warm["train"], node["train"]), eval_seconds=min(warm["eval"],
                                                                          node["eval"]),
        full_bytes=full, delta_bytes=delta, ack_bytes=ack, heartbeat_bytes=heartbeat,
        link_bytes=link, message_cpu_seconds=message_cpu, heartbeat_cpu_seconds=heartbeat_cpu,
        secagg=secure, base_rss_bytes=int(node["rss"]),
        calibration_seconds=time.perf_counter() - start,
    )


def mean_examples(calibration: Calibration) -> float:
    return math.fsum(calibration.examples) / max(1, len(calibration.examples))


__all__ = ["Calibration", "CalibrationError", "SecAggBytes", "calibrate", "in_child",
           "node_config", "peak_rss_bytes", "scenario_degree"]
