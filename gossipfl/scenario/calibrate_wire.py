"""The wire half of the calibration (:mod:`gossipfl.scenario.calibrate`): the bytes of real
frames as a scenario sends them, built, sealed, framed, opened and decoded with the project's own
wire and crypto code (keys made in memory), and the CPU that costs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gossipfl.scenario.config import ScenarioConfig

CODEC_REPEATS = 5  # timed repetitions of each codec measurement (the least is kept)
Names = list[tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class SecAggBytes:
    """Frame bytes of one secure-aggregation exchange per neighbour (degree d): a sealed
    masked input (with the next round's dealt shares and its early shares), the aggregator's
    consistency request and the signed response, its light unmask request (the dealt shares
    relayed) and its answer (none: the presign comes with the next input)."""

    masked_input: int
    consistency_request: int
    consistency_response: int
    unmask_request: int
    unmask_response: int
    cpu_seconds: float  # build + seal + open + decode one masked input (both ends)


def timed(call: Callable[[], object]) -> float:
    """CPU seconds ``call()`` took in this process (all its threads): on a shared machine,
    what a node will ask of the cores, whatever else runs there now."""
    start = time.process_time()
    call()
    return time.process_time() - start


def best_time(call: Callable[[], object], repeats: int) -> float:
    """The least of ``repeats`` timings: on a shared machine, the least disturbed."""
    return min(timed(call) for _ in range(repeats))


@dataclass(frozen=True)
class _Member:
    """An in-memory federation member: its signing key, peer id and X25519 keys, and its
    envelope keys as a node keeps them (``crypto/sessions.py``)."""

    signing: object
    peer_id: str
    x_private: object
    x_public: bytes
    seal_keys: object
    open_keys: object


def make_members(count: int) -> list[_Member]:
    from nacl.public import PrivateKey
    from nacl.signing import SigningKey

    from gossipfl.crypto.admission import member_x25519_keypair, peer_id_of
    from gossipfl.crypto.sessions import OpenKeys, SealKeys

    members = []
    for _ in range(count):
        key = SigningKey.generate()
        private, public = member_x25519_keypair(bytes(key))
        members.append(_Member(key, peer_id_of(key.verify_key), PrivateKey(bytes(private)),
                               public, SealKeys(), OpenKeys()))
    return members


def sealed_round_trip(body: Any, fed: str, sender: _Member, receiver: _Member,
                      cap: int) -> tuple[bytes, memoryview]:
    """``body`` (bytes, or a message's pieces: ``encode_body_pieces``) sealed from ``sender`` to
    ``receiver`` as a node seals it, framed, and opened again: (the frame, the opened
    payload)."""
    from gossipfl.crypto.admission import verify_key_from_peer_id
    from gossipfl.crypto.envelope import open_envelope, seal
    from gossipfl.gossip.wire import Sealed, encode_frame

    data = seal(body, federation=fed, round=1, sender=sender.peer_id,
                receiver=receiver.peer_id, sender_signing_key=sender.signing,
                receiver_x25519_public=receiver.x_public, max_payload_bytes=cap,
                keys=sender.seal_keys)
    frame = encode_frame(Sealed(fed, 1, data), cap)
    _, payload = open_envelope(data, federation=fed, expected_round=1,
                               expected_sender=sender.peer_id, receiver=receiver.peer_id,
                               receiver_x25519_private=receiver.x_private,
                               sender_verify_key=verify_key_from_peer_id(sender.peer_id),
                               max_payload_bytes=cap, keys=receiver.open_keys)
    return frame, payload


def contribution_frames(scenario: ScenarioConfig, names: Names, a: _Member,
                         b: _Member) -> tuple[int, int, int, float]:
    """(full frame bytes, delta frame bytes, ack bytes, CPU seconds per exchange)."""
    from gossipfl.gossip.codes import AckCode
    from gossipfl.gossip.wire import (
        DEFAULT_MAX_PAYLOAD_BYTES,
        SEALED_IMPLIED,
        Ack,
        Contribution,
        decode_body,
        encode_body,
        encode_body_pieces,
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
            tensors=() if packed else layout.to_tensors(array, copy=False), packed=packed,
            training=True,
            depth=0, horizon=3, waiting=0)

    def exchange(kind: str, array: np.ndarray) -> int:
        contribution = message(kind, array)
        if not sealed:
            frame = encode_frame(contribution, cap)
            decode_body(encode_body(contribution), Contribution)
            return len(frame)
        implied = SEALED_IMPLIED[Contribution]  # as a node seals and opens it
        frame, payload = sealed_round_trip(encode_body_pieces(contribution, implied), fed, a,
                                           b, cap)
        decode_body(payload, Contribution, dict(zip(implied, (a.peer_id, b.peer_id),
                                                    strict=True)))
        return len(frame)

    full_bytes = exchange("full", full)
    delta_bytes = exchange("delta", delta)
    cpu = best_time(lambda: exchange("delta", delta), CODEC_REPEATS)
    ack = Ack(fed, 1, b.peer_id, AckCode.OK, "")
    return full_bytes, delta_bytes, len(encode_frame(ack)), cpu


def heartbeat_frame(scenario: ScenarioConfig,
                    members: list[_Member]) -> tuple[int, int, float]:
    """(heartbeat bytes, link request + reply bytes, CPU seconds per heartbeat)."""
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
    now = time.time()

    def stamp(m: _Member, where: str) -> bytes:
        return sign_stamp(fed, m.peer_id, int(now), 1000, m.signing, (where,)) \
            if scenario.admission else b""

    addrs = [f"/ip4/127.0.0.1/tcp/{40000 + i}/p2p/{m.peer_id}" for i, m in enumerate(members)]
    stamps = [stamp(m, addrs[i]) for i, m in enumerate(members)]
    sender = members[0]
    # a steady-state heartbeat: the receiver holds every certificate (it answered us, and it
    # listed the members to us), so none travels (cert_holders.py); the first ones carry
    # them, which the estimate leaves out
    entries = tuple(MemberInfo(m.peer_id, (addrs[i],), 0.5, b"", stamps[i])
                    for i, m in enumerate(members[1:], start=1))

    def beat() -> int:
        heartbeat = Heartbeat(federation=fed, sender=sender.peer_id, addrs=(addrs[0],),
                              members=entries, round=12, degree=4, status=NodeStatus.TRAINING,
                              certificate=b"", revocations=b"", stamp=stamps[0])
        frame = encode_frame(heartbeat)
        received = decode_body(encode_body(heartbeat), Heartbeat)
        if scenario.admission:  # every member's stamp is news each cycle: checked (up to 64)
            verify_stamp(received.stamp, federation=fed, peer_id=received.sender,
                         addrs=received.addrs)
            for info in received.members[:MAX_STAMP_CHECKS]:
                verify_stamp(info.stamp, federation=fed, peer_id=info.peer_id, addrs=info.addrs)
        return len(frame)

    size = beat()
    cpu = best_time(beat, CODEC_REPEATS)
    request = LinkRequest(fed, sender.peer_id, "0" * 64, -1)
    reply = LinkReply(fed, members[1].peer_id, LinkCode.ACCEPTED, "")
    return size, len(encode_frame(request)) + len(encode_frame(reply)), cpu


def secagg_frames(scenario: ScenarioConfig, parameters: int, degree: int) -> SecAggBytes:
    """One aggregator's neighbourhood of ``degree`` members: the real masked input one of them
    sends it, and the consistency and unmask messages of the round."""
    from gossipfl.crypto import secagg, shamir
    from gossipfl.crypto.consistency import SurvivorSet, sign_set, threshold
    from gossipfl.gossip.wire import (
        DEFAULT_MAX_PAYLOAD_BYTES,
        ConsistencyRequest,
        ConsistencyResponse,
        MaskedInput,
        UnmaskRequest,
        decode_body,
        encode_body,
        encode_frame,
    )

    fed, config = scenario.federation_name, scenario.secagg
    aggregator, *members = make_members(degree + 1)
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
        share_ids = shamir.share_ids_for(ids)
        shares = shamir.split_secret(self_seed, threshold(len(ids)), sorted(share_ids.values()))
        sealed_shares = tuple(
            (other, secagg.encrypt_seed_share(
                sender=me.peer_id, recipient=other, context=context,
                share=shamir.encode_share(share_ids[other], shares[share_ids[other]]),
                sender_private=bytes(me.x_private), recipient_public=by_id[other].x_public))
            for other in sorted(ids) if other != me.peer_id)
        # a steady round's input (gossipfl.node.secure_early): no shares of its own seed (they
        # went with the last input; secure_inputs.finish_input), the next round's dealt shares
        # (as many, as long as these), the early shares, one per member, and a presign
        early = tuple((i, shamir.encode_share(share_ids[i], shares[share_ids[i]]))
                      for i in sorted(ids))
        return MaskedInput(federation=fed, round=1, sender=me.peer_id,
                           aggregator=aggregator.peer_id, weight=w, disagreement=1e-2,
                           done=False, data=y.astype("<u4").tobytes(), shares=(),
                           depth=0, horizon=3, waiting=0, next_shares=sealed_shares,
                           predealt=True, early=early, presign=bytes(64))

    def exchange() -> tuple[int, MaskedInput]:
        message = masked()
        body = encode_body(message)
        if scenario.encrypt_payloads:
            frame, body = sealed_round_trip(body, fed, me, aggregator, cap)
        else:
            frame = encode_frame(message, cap)
        decode_body(body, MaskedInput)
        return len(frame), message

    size, message = exchange()
    cpu = best_time(exchange, CODEC_REPEATS)
    announced = SurvivorSet(fed, aggregator.peer_id, 1, frozenset(ids), frozenset())
    signatures = tuple((m.peer_id, sign_set(announced, m.signing)) for m in members)
    request = ConsistencyRequest(fed, 1, aggregator.peer_id, tuple(sorted(ids)), ())
    response = ConsistencyResponse(fed, 1, me.peer_id, signatures[0][1], "")
    share = dict(message.next_shares)
    # a steady round's request and answer are light (gossipfl.node.secure_early): the next
    # round's dealt shares relayed, and the answer's presign of the next round's set
    relayed = tuple((owner, share[members[1].peer_id]) for owner in ids
                    if owner != members[1].peer_id)
    unmask = UnmaskRequest(fed, 1, aggregator.peer_id, tuple(sorted(ids)), (), (), (), relayed,
                           light=True)
    return SecAggBytes(size, len(encode_frame(request)), len(encode_frame(response)),
                       len(encode_frame(unmask)), 0, cpu)  # a light request has no answer


__all__ = ["SecAggBytes", "best_time", "contribution_frames", "heartbeat_frame", "make_members",
           "secagg_frames", "timed"]
