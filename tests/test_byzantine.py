"""Byzantine members (issue 9): the pure attacks on small exact inputs, the colluders' board,
each role's output as the node would send it, and their configuration."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gossipfl.adversary import attacks
from gossipfl.adversary.board import Board
from gossipfl.adversary.byzantine import BYZANTINE_ROLES, Resting
from gossipfl.adversary.kinds import BYZANTINE_KINDS, AdversaryKind
from gossipfl.aggregation.mixing import choco_step, neighbour_weights
from gossipfl.config import AdversaryConfig, ConfigError, Mode, NodeConfig, ProtocolConfig
from gossipfl.node.estimates import PeerEstimate

# -- the pure attacks ----------------------------------------------------------------------


def test_sign_flip_and_scale_are_exact_multiples() -> None:
    own = np.array([1.0, -2.0, 0.5], np.float32)
    np.testing.assert_array_equal(attacks.sign_flip(own), [-1.0, 2.0, -0.5])
    np.testing.assert_array_equal(attacks.sign_flip(own, 3.0), [-3.0, 6.0, -1.5])
    np.testing.assert_array_equal(attacks.scale(own, 1000.0), [1000.0, -2000.0, 500.0])


def test_gaussian_adds_noise_of_the_asked_spread_repeatably() -> None:
    own = np.zeros(20000, np.float32)
    first = attacks.gaussian(own, np.random.default_rng(1), 2.0)
    again = attacks.gaussian(own, np.random.default_rng(1), 2.0)
    np.testing.assert_array_equal(first, again)
    assert abs(float(first.std()) - 2.0) < 0.05 and abs(float(first.mean())) < 0.05


def test_alie_is_the_mean_less_z_spreads() -> None:
    target = np.array([1.0, 0.0], np.float32)
    honest = [np.array([3.0, 0.0], np.float32)]
    # mean (2, 0), population std (1, 0): z = 10 → (-8, 0)
    np.testing.assert_allclose(attacks.alie(target, honest, 10.0), [-8.0, 0.0])
    np.testing.assert_allclose(attacks.alie(target, [], 10.0), target)  # alone: no spread


def test_ipm_is_minus_epsilon_times_the_mean() -> None:
    target = np.array([1.0, 2.0], np.float32)
    honest = [np.array([3.0, 4.0], np.float32)]
    np.testing.assert_allclose(attacks.ipm(target, honest, 0.1), [-0.2, -0.3], rtol=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        attacks.ipm(target, [np.zeros(3, np.float32)])


def test_dissensus_reverses_the_honest_pull_on_the_target() -> None:
    """With every Byzantine neighbour sending it, the target's CHOCO step moves it by
    (1 − ε) times its honest neighbours' pull: ε = 1 freezes it, ε = 2 pushes it away."""
    target = np.array([0.0, 0.0], np.float32)
    honest = {"a": np.array([1.0, 0.0], np.float32), "b": np.array([0.0, 2.0], np.float32)}
    _, weights = neighbour_weights(4, {"a": 4, "b": 4, "x": 1, "y": 1})
    byzantine = weights["x"] + weights["y"]
    pull = sum(weights[p] * (honest[p] - target) for p in honest)
    for epsilon in (1.0, 2.0):
        sent = attacks.dissensus(target, honest, {p: weights[p] for p in honest}, byzantine,
                                 epsilon)
        estimates = {**honest, "x": sent, "y": sent}
        moved = choco_step(target, target, estimates, weights, gamma=1.0)
        np.testing.assert_allclose(moved - target, (1 - epsilon) * pull, atol=1e-6)
    with pytest.raises(ValueError, match="positive"):
        attacks.dissensus(target, honest, weights, 0.0)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float32, 6, elements=st.floats(-10, 10, width=32)),
       st.lists(arrays(np.float32, 6, elements=st.floats(-10, 10, width=32)), max_size=4),
       st.floats(0.0, 20.0))
def test_alie_stays_within_z_spreads_of_the_mean(target: np.ndarray, honest: list[np.ndarray],
                                                 z: float) -> None:
    stacked = np.stack([target, *honest]).astype(np.float64)
    sent = attacks.alie(target, honest, z).astype(np.float64)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    assert np.all(sent <= mean + 1e-3 + 1e-5 * np.abs(mean))
    np.testing.assert_allclose(mean - sent, z * std, atol=1e-3 + 1e-5 * z * np.max(std))


# -- the board ------------------------------------------------------------------------------


def test_the_board_keeps_the_newest_estimate_and_refuses_paths(tmp_path: Path) -> None:
    board = Board(tmp_path / "collusion")
    assert board.read("peerA") is None
    board.post("peerA", 3, np.ones(4, np.float32))
    board.post("peerA", 2, np.zeros(4, np.float32))  # older: ignored
    held = board.read("peerA")
    assert held is not None and held[0] == 3 and held[1].tolist() == [1.0] * 4
    board.post("peerA", 5, np.full(4, 2.0, np.float32))
    held = Board(tmp_path / "collusion").read("peerA")  # another colluder's view
    assert held is not None and held[0] == 5 and held[1][0] == 2.0
    assert not list((tmp_path / "collusion").glob(".*"))  # no temporary left
    for bad in ("", "../x", ".hidden"):
        with pytest.raises(ValueError, match="not a peer id"):
            board.post(bad, 1, np.ones(2, np.float32))


# -- the roles -----------------------------------------------------------------------------


class FakeLearner:
    def __init__(self) -> None:
        self.y = np.array([0, 1, 9, 3], np.int32)
        self.dataset = SimpleNamespace(num_classes=10)

    def train(self, vector: np.ndarray, round_: int, epochs: Any = None, dp: Any = None) -> Any:
        raise AssertionError("a resting learner must not train")


def fake_node(own: np.ndarray, *, peer_id: str = "me", mode: Mode = Mode.SYNC,
              topology: dict[str, frozenset[str]] | None = None) -> Any:
    protocol = ProtocolConfig(mode=mode, round_timeout=4.0, request_timeout=4.0)
    return SimpleNamespace(
        own=SimpleNamespace(vector=own.astype(np.float32)), peer_id=peer_id,
        learner=FakeLearner(), estimates=SimpleNamespace(peers={}), topology=topology or {},
        config=NodeConfig(protocol=protocol, seed=1))


def role_of(kind: str, **config: Any) -> Any:
    adversary = AdversaryConfig(kind=kind, **config)
    return BYZANTINE_ROLES[adversary.role](adversary)


def payload(role: Any, node: Any, peer: str = "t", r: int = 0) -> tuple[str, int, np.ndarray]:
    async def main() -> tuple[str, int, np.ndarray]:
        return await role.payload(node, peer, r, "delta", r - 1, np.zeros_like(node.own.vector))
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_every_byzantine_kind_has_a_role() -> None:
    assert set(BYZANTINE_ROLES) == set(BYZANTINE_KINDS)
    assert AdversaryKind.LYING_AGGREGATOR not in BYZANTINE_KINDS


@pytest.mark.parametrize(("kind", "expected"), [("sign_flip", [-1.0, 2.0]),
                                                 ("scale", [1000.0, -2000.0])])
def test_a_training_attacker_sends_its_own_model_transformed(kind: str, expected: list) -> None:
    node = fake_node(np.array([1.0, -2.0]))
    role = role_of(kind)
    role.setup(node)
    assert not isinstance(node.learner, Resting)
    sent = payload(role, node)
    assert sent[0] == "full" and sent[1] == -1
    np.testing.assert_allclose(sent[2], expected)
    role.acked("t", 0, True)
    role.acked("t", 0, False)
    assert (role.tally.attempts, role.tally.succeeded, role.tally.details["refused"]) == (1, 1, 1)


def test_a_fellow_attacker_gets_the_honest_payload() -> None:
    node = fake_node(np.array([1.0, -2.0]))
    role = role_of("sign_flip", colluders=("friend",))
    role.setup(node)
    sent = payload(role, node, peer="friend", r=3)
    assert sent[0] == "delta" and sent[1] == 2 and role.tally.attempts == 0


def test_the_gaussian_attacker_is_noisy_but_centred_on_its_model() -> None:
    node = fake_node(np.full(5000, 3.0))
    role = role_of("gaussian", strength=0.5)
    role.setup(node)
    sent = payload(role, node)[2]
    assert abs(float(sent.mean()) - 3.0) < 0.05 and abs(float(sent.std()) - 0.5) < 0.05


def test_a_free_rider_rests_and_sends_the_estimate_it_started_with() -> None:
    node = fake_node(np.array([0.5, 0.5]))
    role = role_of("free_rider")
    role.setup(node)
    assert isinstance(node.learner, Resting)
    result = node.learner.train(np.array([7.0, 8.0], np.float32), 3)
    assert result.vector.tolist() == [7.0, 8.0] and result.epochs == 0.0  # no work
    node.own.vector = np.array([9.0, 9.0], np.float32)  # it mixed in the others' work
    np.testing.assert_array_equal(payload(role, node, r=5)[2], [0.5, 0.5])


def test_a_label_flipper_trains_on_flipped_labels_and_sends_what_it_trained() -> None:
    node = fake_node(np.array([1.0]))
    role = role_of("label_flip")
    role.setup(node)
    assert node.learner.y.tolist() == [9, 8, 0, 6]
    sent = payload(role, node, r=2)
    assert sent[0] == "delta" and sent[1] == 1  # the protocol's own payload


def entry(vector: list[float], r: int) -> PeerEstimate:
    return PeerEstimate(vector=np.array(vector, np.float32), round=r, degree=3, disagreement=0.0,
                        done=False)


def test_alie_aims_at_the_target_s_neighbourhood_from_the_board_rushing(tmp_path: Path) -> None:
    """Target t's honest neighbours are a (which we hear), b (which colluder x hears) and c
    (which no colluder hears: not waited for); the attacker waits for this round's estimates,
    which come in while it waits."""
    graph = {"t": frozenset({"me", "a", "b", "c", "x"}), "a": frozenset({"t", "me"}),
             "b": frozenset({"t", "x"}), "c": frozenset({"t"}), "me": frozenset({"t", "a"}),
             "x": frozenset({"t", "b"})}
    node = fake_node(np.zeros(2), topology=graph)
    role = role_of("alie", strength=1.0, board=str(tmp_path / "board"), colluders=("x",))
    role.setup(node)
    node.estimates.peers["t"] = entry([5.0, 5.0], 3)  # last round's: the attacker waits
    other = Board(tmp_path / "board")

    async def main() -> tuple[str, int, np.ndarray]:
        async def arrive() -> None:
            await trio.sleep(0.5)
            node.estimates.peers["t"] = entry([1.0, 0.0], 4)
            node.estimates.peers["a"] = entry([3.0, 0.0], 4)
            other.post("b", 4, np.array([2.0, 0.0], np.float32))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(arrive)
            return await role.payload(node, "t", 4, "delta", 3, np.zeros(2, np.float32))

    sent = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))[2]
    # mean (2, 0), std (sqrt(2/3), 0), z = 1
    np.testing.assert_allclose(sent, [2.0 - np.sqrt(2 / 3), 0.0], rtol=1e-5)
    assert role.tally.details["stale_inputs"] == 0 and role.tally.details["lacking_inputs"] == 1
    # what it heard of t and a is on the board for the colluders; x is a colluder: never posted
    assert Board(tmp_path / "board").read("a")[0] == 4
    assert Board(tmp_path / "board").read("x") is None
    assert node.config.robust.norm_ratio == 0.0  # it hears every honest estimate, unbounded


def test_a_rushing_attacker_gives_up_waiting_and_uses_what_it_last_knew(tmp_path: Path) -> None:
    graph = {"t": frozenset({"me", "a"}), "a": frozenset({"t"}), "me": frozenset({"t"})}
    node = fake_node(np.zeros(2), topology=graph)
    role = role_of("ipm", board=str(tmp_path / "board"))
    role.setup(node)
    node.estimates.peers["t"] = entry([2.0, 2.0], 1)  # nothing newer ever comes

    async def main() -> tuple[float, np.ndarray]:
        start = trio.current_time()
        sent = await role.payload(node, "t", 2, "delta", 1, np.zeros(2, np.float32))
        return trio.current_time() - start, sent[2]

    waited, sent = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert waited == pytest.approx(2.0, abs=0.05)  # RUSH_SHARE of the 4 s send limit
    np.testing.assert_allclose(sent, [-0.2, -0.2], rtol=1e-6)  # −0.1 × t's stale estimate
    assert role.tally.details["stale_inputs"] == 1 and role.tally.details["lacking_inputs"] == 1


def test_byzantine_configuration_is_checked() -> None:
    from gossipfl.config import SecAggConfig
    from gossipfl.scenario.config import AdversarySpec, ScenarioConfig

    with pytest.raises(ConfigError, match="strength"):
        AdversaryConfig(kind="alie", strength=-1.0)
    with pytest.raises(ConfigError, match="strength"):
        AdversarySpec(node=1, kind="ipm", strength=-0.5)
    # with secure aggregation every kind runs: crafted ones mask their crafted vector
    # (gossipfl.node.secure_inputs), label_flip its poisoned model
    for kind in ("sign_flip", "scale", "alie", "label_flip"):
        ScenarioConfig(nodes=4, secagg=SecAggConfig(enabled=True),
                       adversaries=(AdversarySpec(node=1, kind=kind),))


def test_byzantine_members_get_the_board_and_each_other() -> None:
    from gossipfl.scenario.adversaries import node_adversary
    from gossipfl.scenario.config import AdversarySpec, ScenarioConfig

    scenario = ScenarioConfig(nodes=5, adversaries=(AdversarySpec(node=1, kind="alie",
                                                                  strength=2.0),
                                                    AdversarySpec(node=3, kind="dissensus")))
    ids = ["p0", "p1", "p2", "p3", "p4"]
    first = node_adversary(scenario, 1, ids, Path("/run/collusion"))
    assert (first.kind, first.strength, first.board) == ("alie", 2.0, "/run/collusion")
    assert first.colluders == ("p1", "p3") and not first.keep_public_estimates
    honest = node_adversary(scenario, 0, ids, Path("/run/collusion"))
    assert honest.role is AdversaryKind.NONE and honest.board == ""


# -- under secure aggregation --------------------------------------------------------------


def masked(role: Any, node: Any, aggregator: str = "t", r: int = 0) -> np.ndarray:
    async def main() -> np.ndarray:
        return await role.masked_estimate(node, aggregator, r, node.own.vector)
    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("kind", ["sign_flip", "scale", "free_rider"])
def test_a_byzantine_member_masks_what_it_would_send_in_the_clear(kind: str) -> None:
    node = fake_node(np.array([1.0, -2.0]))
    role = role_of(kind)
    role.setup(node)
    assert not role.checks_inputs  # a crafted input skips the honest range check
    np.testing.assert_array_equal(masked(role, node), payload(role, node)[2])
    assert role.tally.attempts == 2


def test_a_label_flipper_masks_its_estimate_and_is_checked_as_an_honest_node() -> None:
    node = fake_node(np.array([1.0, -2.0]))
    role = role_of("label_flip")
    role.setup(node)
    assert role.checks_inputs
    np.testing.assert_array_equal(masked(role, node, r=3), [1.0, -2.0])
    assert role.tally.attempts == 1


def test_a_colluder_under_secure_aggregation_aims_at_the_aggregator_without_waiting() -> None:
    """No estimate is heard in the clear under secure aggregation: it does not wait for one,
    and crafts from what it holds (here an old estimate of the aggregator t)."""
    from gossipfl.config import SecAggConfig, SecurityConfig

    graph = {"t": frozenset({"me", "a"}), "a": frozenset({"t"}), "me": frozenset({"t"})}
    node = fake_node(np.zeros(2), topology=graph)
    node.config = NodeConfig(protocol=node.config.protocol, seed=1,
                             security=SecurityConfig(admission=True, federation_public="f.pub",
                                                     certificate="c.cert"),
                             secagg=SecAggConfig(enabled=True))
    role = role_of("ipm")
    role.setup(node)
    node.estimates.peers["t"] = entry([2.0, 2.0], 1)

    async def main() -> tuple[float, np.ndarray]:
        start = trio.current_time()
        vector = await role.masked_estimate(node, "t", 2, node.own.vector)
        return trio.current_time() - start, vector

    waited, vector = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert waited == 0.0
    np.testing.assert_allclose(vector, [-0.2, -0.2], rtol=1e-6)  # −0.1 × t's estimate
    assert role.tally.attempts == 1 and role.tally.details["lacking_inputs"] == 1
