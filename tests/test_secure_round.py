"""Secure aggregation between real node objects (real keys, certificates, masks and shares), no
network: the aggregator learns the weighted sum of its neighbours' estimates and nothing else.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import trio

from gossipfl.config import DataConfig, ModelConfig, NodeConfig, SecAggConfig, SecurityConfig
from gossipfl.crypto.admission import admit_identity, init_federation
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.node import secure_round
from gossipfl.node.learner import LocalLearner
from gossipfl.node.runtime import NeighbourState, Node

SCALE = 2**20


def _node(tmp_path: Path, name: str) -> Node:
    federation = tmp_path / "federation"
    if not (federation / "federation.pub").exists():
        init_federation(federation, "fed")
    key_file = tmp_path / name / "node.key"
    identity, _ = load_or_create_identity(key_file)
    cert = admit_identity(federation, key_file, valid_days=1, now=time.time())
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path / name),
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        security=SecurityConfig(admission=True,
                                federation_public=str(federation / "federation.pub"),
                                certificate=str(cert)),
        secagg=SecAggConfig(enabled=True, min_contributors=3, scale=SCALE),
    )
    return Node(config, identity, LocalLearner(config))


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    """Aggregator a with neighbours b, c, d, e (each of which also neighbours the others)."""
    tmp = tmp_path_factory.mktemp("secagg")
    nodes = {name: _node(tmp, name) for name in "abcde"}
    ids = {name: node.peer_id for name, node in nodes.items()}
    topology = {ids[n]: frozenset(ids[m] for m in "abcde" if m != n) for n in "abcde"}
    for node in nodes.values():
        node.topology = topology
        for other in nodes.values():
            if other is not node:
                assert node.security.admit(other.peer_id, other.security.own_certificate) is None
                node.neighbours[other.peer_id] = NeighbourState()
    return nodes


def _fresh(star: dict[str, Node], r: int) -> dict[str, np.ndarray]:
    """Give every node a random public estimate; returns them by name."""
    rng = np.random.default_rng(r)
    estimates = {}
    for name, node in star.items():
        node.own.vector = rng.uniform(-2, 2, node.layout.size).astype(np.float32)
        estimates[name] = node.own.vector.copy()
    return estimates


def _masked(star: dict[str, Node], senders: str, r: int) -> dict[str, object]:
    a = star["a"]
    inputs = {}
    for name in senders:
        node = star[name]
        message = secure_round.masked_input(node, a.peer_id, r, node.own.vector, done=False)
        inputs[node.peer_id] = message
    return inputs


def _accept(star: dict[str, Node], inputs: dict[str, object]) -> list[str]:
    a = star["a"]

    async def main() -> list[str]:
        return [secure_round.accept_masked(a, peer, message)[0]
                for peer, message in inputs.items()]

    return trio.run(main)


def _answers(star: dict[str, Node], r: int, inputs, survivors, dropped, answering: str):
    a = star["a"]
    by_id = {node.peer_id: node for node in star.values()}
    responses = {}
    for peer in survivors:
        if by_id[peer] in [star[n] for n in answering]:
            request = secure_round.unmask_request(a, r, inputs, survivors, dropped, peer)
            response = secure_round.answer_unmask(by_id[peer], a.peer_id, request)
            assert response is not None
            responses[peer] = response
    return responses


def _expected(star: dict[str, Node], estimates: dict[str, np.ndarray], names: str) -> np.ndarray:
    a = star["a"]
    total = np.zeros_like(estimates["a"], dtype=np.float64)
    for name in names:
        total += secure_round.weight(a, a.peer_id, star[name].peer_id) * estimates[name]
    return total


def test_secure_sum_equals_the_weighted_sum(star: dict[str, Node]) -> None:
    r = 1
    estimates = _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    assert _accept(star, inputs) == ["ok"] * 4
    survivors = sorted(inputs)
    responses = _answers(star, r, inputs, survivors, [], "bcde")
    total = secure_round.unmask(star["a"], r, inputs, survivors, [], responses)
    error = np.abs(total - _expected(star, estimates, "bcde")).max()
    assert error <= 4 / (2 * SCALE) + 1e-6  # 4 inputs, each rounded to the nearest 1/SCALE


def test_a_dropout_before_masking_is_unmasked_from_the_survivors_pair_seeds(star) -> None:
    r = 2
    estimates = _fresh(star, r)
    inputs = _masked(star, "cde", r)  # b never sent its input
    _accept(star, inputs)
    survivors, dropped = sorted(inputs), [star["b"].peer_id]
    responses = _answers(star, r, inputs, survivors, dropped, "cde")
    total = secure_round.unmask(star["a"], r, inputs, survivors, dropped, responses)
    assert np.abs(total - _expected(star, estimates, "cde")).max() <= 3 / (2 * SCALE) + 1e-6
    # the survivors revealed pair seeds with b only, and no share of b's self seed
    for response in responses.values():
        assert [p for p, _ in response.pair_seeds] == [star["b"].peer_id]
        assert star["b"].peer_id not in [p for p, _ in response.seed_shares]


def test_a_dropout_after_masking_still_gives_the_right_sum(star) -> None:
    r = 3
    estimates = _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    _accept(star, inputs)
    survivors = sorted(inputs)
    # b's masked input arrived, then b vanished: it never answers the unmask request
    responses = _answers(star, r, inputs, survivors, [], "cde")
    assert star["b"].peer_id not in responses
    total = secure_round.unmask(star["a"], r, inputs, survivors, [], responses)
    assert np.abs(total - _expected(star, estimates, "bcde")).max() <= 4 / (2 * SCALE) + 1e-6
    # with only two answers, b's self seed (threshold 3 of 4) cannot be rebuilt: a clear error
    two = {p: v for p, v in responses.items() if p != star["c"].peer_id}
    with pytest.raises(ValueError, match="shares of its self seed"):
        secure_round.unmask(star["a"], r, inputs, survivors, [], two)


def test_the_aggregator_cannot_claim_a_live_member_dropped(star) -> None:
    r = 4
    _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    _accept(star, inputs)
    a, c = star["a"], star["c"]
    everyone = sorted(inputs)
    first = secure_round.unmask_request(a, r, inputs, everyone, [], c.peer_id)
    assert secure_round.answer_unmask(c, a.peer_id, first) is not None
    # now a asks again, pretending b dropped, to get c's pair seed with b as well
    fewer = [p for p in everyone if p != star["b"].peer_id]
    second = secure_round.unmask_request(a, r, inputs, fewer, [star["b"].peer_id], c.peer_id)
    rejected = c.rejections["unmask_refused"]
    assert secure_round.answer_unmask(c, a.peer_id, second) is None
    assert c.rejections["unmask_refused"] == rejected + 1


def test_too_few_contributors_is_refused_and_late_inputs_after_fixing_are_refused(
    star,
) -> None:
    r = 5
    _fresh(star, r)
    a = star["a"]
    inputs = _masked(star, "bc", r)
    _accept(star, inputs)

    async def main() -> object:
        return await secure_round.secure_sum(a, r)

    assert trio.run(main) is None  # two contributors: no secret, no aggregation
    assert r in a.secagg.refused_rounds
    late = _masked(star, "d", r)
    assert _accept(star, late) == ["rejected"]
    assert a.rejections["late"] >= 1


def test_a_masked_input_reveals_nothing_by_itself(star) -> None:
    a, b = star["a"], star["b"]
    truth = np.random.default_rng(7).normal(0, 1, 100_000).astype(np.float32)
    message = secure_round.masked_input(b, a.peer_id, 7, truth, done=False)
    words = np.frombuffer(message.data, dtype="<u4")
    assert abs(np.corrcoef(words.astype(np.float64), truth)[0, 1]) < 0.02
    counts = np.bincount(words >> 24, minlength=256)  # the top byte is uniform
    expected = words.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 350  # 255 degrees of freedom: p ≈ 1e-4 at 350
