"""A star of real secure-aggregation nodes for the secure-round tests: aggregator a with
neighbours b, c, d, e (real keys, certificates, masks and shares; no network), and the helpers
that fill its inbox and run its sum over the in-process transport."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trio
from secagg_loopback import link_star, secagg_node

from gossipfl.config import SecAggConfig
from gossipfl.gossip.wire import ConsistencyRequest, MaskedInput
from gossipfl.node import secure_round
from gossipfl.node.membership_loop import renew_stamp
from gossipfl.node.runtime import Node
from gossipfl.node.secure_round import SecAggState

SCALE = 2**20


def _node(tmp_path: Path, name: str) -> Node:
    return secagg_node(tmp_path, name,
                       SecAggConfig(enabled=True, min_contributors=3, scale=SCALE))


def build_star(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    """Aggregator a with neighbours b, c, d, e (each of which also neighbours the others)."""
    tmp = tmp_path_factory.mktemp("secagg")
    return link_star({name: _node(tmp, name) for name in "abcde"}, NOW)


NOW = 1000.0  # the star's clock: every member heard from just now (alive), unless a test says


def make_alive(star: dict[str, Node]) -> None:
    """Each test starts with every member of the star live at NOW: heard from directly, with
    a fresh signed liveness stamp (verified and held the first time; a member's own newer
    stamp is taken at most once a refresh, and hearing it is liveness anyway)."""
    stamps = {name: renew_stamp(node) for name, node in star.items()}
    for node in star.values():
        for name, other in star.items():
            if other is not node:
                node.membership.heard_from(other.peer_id, (), NOW, stamps[name])
                assert node.membership.stamp_key(other.peer_id) is not None
                assert (node.membership.live_at(other.peer_id) or 0.0) >= NOW


def clean(star: dict[str, Node]) -> None:
    """Each test starts with no secure-aggregation memory (signed sets, history, inboxes)."""
    for node in star.values():
        node.secagg = SecAggState()


def _fresh(star: dict[str, Node], r: int) -> dict[str, np.ndarray]:
    """Give every node a random public estimate; returns them by name."""
    rng = np.random.default_rng(r)
    estimates = {}
    for name, node in star.items():
        node.own.vector = rng.uniform(-2, 2, node.layout.size).astype(np.float32)
        estimates[name] = node.own.vector.copy()
    return estimates


def _masked(star: dict[str, Node], senders: str, r: int) -> dict[str, MaskedInput]:
    a = star["a"]
    inputs = {}
    for name in senders:
        node = star[name]
        message = secure_round.masked_input(node, a.peer_id, r, node.own.vector, done=False)
        inputs[node.peer_id] = message
    return inputs


def _accept(star: dict[str, Node], inputs: dict[str, MaskedInput]) -> list[str]:
    a = star["a"]

    async def main() -> list[str]:
        return [secure_round.accept_masked(a, peer, message)[0]
                for peer, message in inputs.items()]

    return trio.run(main)


def ids(star: dict[str, Node], names: str) -> list[str]:
    return sorted(star[n].peer_id for n in names)


def sign(star: dict[str, Node], r: int, survivors: list[str], dropped: list[str],
         names: str) -> dict[str, bytes]:
    """Ask each named member to sign the set; returns the signatures it gave."""
    a = star["a"]
    request = ConsistencyRequest("fed", r, a.peer_id, tuple(survivors), tuple(dropped))
    signatures = {}
    for name in names:
        response = secure_round.answer_consistency(star[name], a.peer_id, request)
        if response.signature:
            signatures[star[name].peer_id] = response.signature
    return signatures


def ask(star: dict[str, Node], name: str, r: int, inputs, survivors, dropped,
        signatures: dict[str, bytes]):
    a, node = star["a"], star[name]
    request = secure_round.unmask_request(a, r, inputs, survivors, dropped, node.peer_id,
                                          tuple(sorted(signatures.items())))
    return secure_round.answer_unmask(node, a.peer_id, request)


def _answers(star: dict[str, Node], r: int, inputs, survivors, dropped, answering: str):
    """The honest flow: survivors sign, then each named survivor answers the unmask request."""
    names = [n for n in "bcde" if star[n].peer_id in survivors]
    signatures = sign(star, r, survivors, dropped, "".join(names))
    responses = {}
    for name in answering:
        response = ask(star, name, r, inputs, survivors, dropped, signatures)
        assert response is not None
        responses[star[name].peer_id] = response
    return responses


def _expected(star: dict[str, Node], estimates: dict[str, np.ndarray], names: str) -> np.ndarray:
    a = star["a"]
    total = np.zeros_like(estimates["a"], dtype=np.float64)
    for name in names:
        total += secure_round.weight(a, a.peer_id, star[name].peer_id) * estimates[name]
    return total


def assert_sum_of(star: dict[str, Node], result: object, estimates: dict[str, np.ndarray],
                  names: str) -> None:
    """``result`` (a secure sum's) holds exactly the named members, and their weighted sum
    within quantisation (half a level per input)."""
    assert result is not None
    total, _, survivors = result  # type: ignore[misc]
    assert survivors == ids(star, names)
    bound = len(names) / (2 * SCALE) + 1e-6
    assert np.abs(total - _expected(star, estimates, names)).max() <= bound


def _inbox(star: dict[str, Node], senders: str, r: int) -> None:
    """The aggregator, at round r, accepts the named members' masked inputs."""
    star["a"].round = r
    assert _accept(star, _masked(star, senders, r)) == ["ok"] * len(senders)


def _secure_sum(star: dict[str, Node], r: int):
    async def main() -> object:
        return await secure_round.secure_sum(star["a"], r)

    return trio.run(main)
