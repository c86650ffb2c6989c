"""Tests of the privacy audit: an aggregator against the node's own protocol (real Node
objects in one process), honest-but-curious and lying, with and without record-level DP.

The audit runs here at ε = 0.5, not at its default 8: at ε = 8 the DP guarantee bounds the
membership attack by (e^16 − 1)/(e^16 + 1) > 0.999 (:func:`dp_auc_advantage_bound`), which no
figure can break, so checking against it would prove nothing; at 0.5 the bound (0.46) lies well
below what the attack gets without DP (0.85), and a run whose DP did nothing would break it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gossipfl.config import (
    DataConfig,
    ModelConfig,
    ProtocolConfig,
    SecAggConfig,
    TopologyConfig,
)
from gossipfl.learning.train import TrainConfig
from gossipfl.privacy import audit as audit_module
from gossipfl.privacy.audit import (
    AUDIT_KEYS,
    SETTINGS,
    SUM_ESTIMATORS,
    format_table,
    main,
    run_audit,
)
from gossipfl.privacy.audit_figures import (
    cosine_similarity,
    estimate_sum_minus_own,
    estimate_sum_minus_past,
    estimate_sum_share,
    membership_advantage,
)
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.observed import ObservedSimulation, RoundView, observe_scenario

SUMMARY_KEYS = {"mean", "per_round", "neighbours_mean", "step_mean"}
ROUNDS = 3
EPSILON = 0.5
DELTA = 1e-5  # the audit's


def dp_auc_advantage_bound(epsilon: float, delta: float) -> float:
    """The most ``2·AUC − 1`` a loss-threshold membership test can reach, in expectation,
    against a training run that is (ε, δ)-DP for each record (add/remove, the accountant's).

    Swapping a member ``z`` for a fresh record ``z'`` is one removal and one addition: (2ε,
    2e^ε·δ) by group privacy. ``p = P(loss(z) < loss(z'))`` over the run and the draw of the
    exchangeable ``z, z'``; the data set holding ``z'`` instead sees the same event with the
    two relabelled, of probability ``1 − p`` (ties aside), so ``p ≤ e^{2ε}(1 − p) + δ'`` and
    ``2p − 1 ≤ (e^{2ε} − 1 + 2δ')/(e^{2ε} + 1)``."""
    eps, slack = 2 * epsilon, 2 * math.exp(epsilon) * delta
    return (math.exp(eps) - 1 + 2 * slack) / (math.exp(eps) + 1)


@pytest.fixture(scope="module")
def audit() -> dict:
    return run_audit(0, rounds=ROUNDS, epsilon=EPSILON)


# --------------------------------------------------------------------------- the audit


def test_plain_gossip_hands_the_aggregator_the_update_itself(audit: dict) -> None:
    """What it holds of the target under plain gossip is the update (DP or not: the update
    published is what it receives); the cosine is 1 up to float32 rounding."""
    for setting in ("none", "record_dp", "node_dp"):
        figures = audit["reconstruction"][setting]["received"]
        assert min(figures["per_round"]) > 0.999, setting
        assert figures["neighbours_mean"] > 0.999, setting


def test_masked_inputs_read_as_plain_are_noise(audit: dict) -> None:
    for setting in ("secagg", "secagg_record_dp"):
        figures = audit["reconstruction"][setting]["masked_as_plain"]
        assert max(abs(c) for c in figures["per_round"]) < 0.05, setting
        assert abs(figures["neighbours_mean"]) < 0.05, setting
        assert len(figures["per_round"]) == ROUNDS


def test_the_sum_is_all_the_curious_aggregator_gets(audit: dict) -> None:
    """The sum-based estimators are below the received update's 1: the secure sum mixes the
    target with three others (the figures can fail both ways: 1 would mean a leak)."""
    for setting in ("secagg", "secagg_record_dp"):
        figures = audit["reconstruction"][setting]
        assert figures["best"]["estimator"] in SUM_ESTIMATORS
        assert figures["best"]["mean"] == max(figures[n]["mean"] for n in SUM_ESTIMATORS)
        assert figures["best"]["mean"] < 0.95, setting


def test_the_lying_aggregator_recovers_nothing(audit: dict) -> None:
    lie = audit["lying_aggregator"]
    assert lie["attempts"] == ROUNDS and lie["inputs_recovered"] == 0
    assert len(lie["per_round"]) == ROUNDS
    assert lie["best"] <= 0.05 and abs(lie["mean"]) <= 0.05


def test_the_lying_aggregator_would_recover_the_target_from_forgetful_members(audit) -> None:
    """The could-fail check: the same reconstruction, fed by members that answer each set as
    if it were the only one (revealing both mask kinds of the target), gets its estimate."""
    assert audit["lying_aggregator"]["control"] > 0.99


def test_record_dp_lowers_membership_inference_on_what_the_aggregator_holds(audit) -> None:
    """Under plain gossip the aggregator holds the target's estimate: without DP the loss
    threshold tells its records from held-out ones; with DP-SGD far less."""
    plain = audit["membership"]["none"]["target_estimate"]
    private = audit["membership"]["record_dp"]["target_estimate"]
    assert plain["advantage"] > 0.5
    assert private["advantage"] < plain["advantage"] - 0.25
    assert audit["parameters"]["privacy"]["target_epsilon"] == EPSILON
    for setting in ("record_dp", "secagg_record_dp", "node_dp"):
        for figures in audit["membership"][setting].values():
            # the target spent its budget (its planned steps or rounds), never more
            assert 0.95 * EPSILON <= figures["epsilon"] <= EPSILON, setting


def test_membership_inference_stays_within_what_record_dp_guarantees(audit) -> None:
    """Everything node 0 holds under record-level DP (the target's estimate, its own model, with
    or without secure aggregation) is post-processing of the target's DP-SGD: the attack's AUC
    advantage is bounded by the guarantee at the ε the target spent. Without DP it is not: the
    bound is one the attack can break. (The bound holds in expectation; one run's figure from
    198 members and 198 non-members is off it by a few hundredths, the margin here is ~0.35.)"""
    plain = audit["membership"]["none"]["target_estimate"]
    assert plain["auc_advantage"] > dp_auc_advantage_bound(EPSILON, DELTA) + 0.2
    private = [audit["membership"]["record_dp"]["target_estimate"],
               audit["membership"]["record_dp"]["own_model"],
               audit["membership"]["secagg_record_dp"]["own_model"]]
    for figures in private:
        assert figures["auc_advantage"] <= dp_auc_advantage_bound(figures["epsilon"], DELTA)
    assert dp_auc_advantage_bound(8.0, DELTA) > 0.999  # why the audit's default ε is not used


def test_secure_aggregation_learns_what_plain_gossip_learns(audit: dict) -> None:
    """The node's secure sum equals the plain one up to quantisation: node 0 ends with the
    same model, so the same accuracy and membership figures."""
    plain = audit["membership"]["none"]["own_model"]
    secure = audit["membership"]["secagg"]["own_model"]
    assert secure["test_accuracy"] == pytest.approx(plain["test_accuracy"], abs=0.01)
    assert secure["auc_advantage"] == pytest.approx(plain["auc_advantage"], abs=0.02)


def test_audit_has_the_documented_keys(audit: dict) -> None:
    assert set(audit) == set(AUDIT_KEYS)
    assert set(audit["reconstruction"]) == set(SETTINGS)
    for setting in ("none", "record_dp", "node_dp"):
        assert set(audit["reconstruction"][setting]) == {"received"}
        assert set(audit["reconstruction"][setting]["received"]) == SUMMARY_KEYS
        assert set(audit["membership"][setting]) == {"own_model", "target_estimate"}
    for setting in ("secagg", "secagg_record_dp"):
        assert set(audit["reconstruction"][setting]) == {"masked_as_plain", *SUM_ESTIMATORS,
                                                         "best"}
        assert set(audit["membership"][setting]) == {"own_model"}
    assert set(audit["membership"]) == {*SETTINGS, "lying"}
    params = audit["parameters"]
    assert params["rounds"] == ROUNDS and params["target"] in params["neighbours"]
    json.dumps(audit, allow_nan=False)  # JSON-ready
    table = format_table(audit)
    assert "lying aggregator" in table and "membership inference" in table


def test_command_line(audit: dict, tmp_path, capsys, monkeypatch) -> None:
    asked = {}

    def fake(seed: int, **kwargs) -> dict:
        asked.update(kwargs, seed=seed)
        return audit

    monkeypatch.setattr(audit_module, "run_audit", fake)
    out = tmp_path / "audit.json"
    assert main(["--out", str(out), "--rounds", "2", "--seed", "1", "--epsilon", "4"]) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(audit))
    assert (asked["seed"], asked["rounds"], asked["epsilon"]) == (1, 2, 4.0)
    assert "honest-but-curious" in capsys.readouterr().out


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="nodes"):
        run_audit(0, nodes=3)
    with pytest.raises(ValueError, match="round"):
        run_audit(0, rounds=0)
    with pytest.raises(ValueError, match="neighbour"):
        run_audit(0, target=0)
    with pytest.raises(ValueError, match="unknown settings"):
        run_audit(0, settings=("none", "telepathy"))


# ----------------------------------------------------------------------- the observed simulation


@pytest.mark.parametrize(("secure", "presign"), [(False, False), (True, False), (True, True)])
def test_whole_nodes_mix_what_the_choco_step_and_the_secure_sum_say(tmp_path, secure,
                                                                   presign) -> None:
    """Five nodes, each a neighbour of the others, each running ``Node.run`` over the in-memory
    network (what the audit drives); node 4 is stopped at the end of its round 0 (unreachable
    from then on). Plain: each live node ends a round at x½ + Σ_j w (x̂_j − x̂_i) over the
    estimates it holds, bit-identical to what its neighbours published: the live ones' of this
    round, the gone one's of round 0 in round 1 (missing, not yet dropped). Secure: each live
    aggregator ends at (1 − Σ_V w) x½ + Σ_V w x̂_j, V its four neighbours in round 0 and the
    three live ones in round 1 (the gone one's pair masks removed from the survivors'
    answers). With presigns (the default), round 1 is refused instead at every live
    aggregator (its members had presigned the full set) and each ends it at x½. The expected
    values come from the nodes' published estimates, not their code."""
    gone, w = 4, 1 / (1 + 4)  # Metropolis–Hastings: every degree is 4
    scenario = ScenarioConfig(
        name="fed", nodes=5, rounds=2, seed=0, timeout=600.0, keep_round_models=False,
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        topology=TopologyConfig(kind="full"), protocol=ProtocolConfig(max_consensus_rounds=0),
        secagg=SecAggConfig(enabled=secure, presign=presign))

    def stop_gone(sim: ObservedSimulation, index: int, view: RoundView) -> None:
        if index == gone and view.round == 0:
            sim.stop(gone)

    sim = observe_scenario(scenario, tmp_path, on_round=stop_gone)
    views, ids = sim.views, [entry.peer_id for entry in sim.entries]
    assert sorted(views[gone]) == [0]  # it trained no other round
    initial = sim.nodes[0].learner.initial_vector()
    for i in range(4):
        assert sorted(views[i]) == [0, 1]
        for r in (0, 1):
            view = views[i][r]
            others = [j for j in range(5) if j != i]
            # the round each neighbour's estimate is of: the gone one's stays at round 0
            of = {j: 0 if j == gone else r for j in others}
            if presign and r == 1:
                assert view.record["secure_aggregation"] == "refused"
                np.testing.assert_array_equal(view.model, view.half)
                continue
            if secure:
                live = [j for j in others if r == 0 or j != gone]
                expected = (1 - w * len(live)) * view.half + sum(
                    w * views[j][r].estimate.astype(np.float64) for j in live)
                assert view.record["secure_aggregation"] == f"{len(live)} contributors"
            else:
                for j in others:
                    np.testing.assert_array_equal(view.held[ids[j]], views[j][of[j]].estimate)
                expected = view.half + sum(
                    w * (views[j][of[j]].estimate.astype(np.float64) - view.estimate)
                    for j in others)
                assert view.record["missing"] == ([ids[gone]] if r == 1 else [])
            np.testing.assert_allclose(view.model, expected, atol=1e-4)
            assert not np.allclose(view.model, view.half, atol=1e-4)  # it mixed something
            assert not np.allclose(view.estimate, initial)  # and published its training
        if secure:
            assert sim.nodes[i].secagg.refused_rounds == ([1] if presign else [])
            assert sim.nodes[i].secagg.failed_rounds == []


def test_an_observed_round_is_the_nodes_own(tmp_path) -> None:
    """What the views say a round was is what the node did: the step x½ − x is its learner's
    training from the model the round began with, the update is x̂'s move, and the model each
    round begins with is the one the last ended with."""
    scenario = ScenarioConfig(
        name="fed", nodes=3, rounds=2, seed=0, timeout=600.0, keep_round_models=False,
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        train=TrainConfig(optimizer="sgd"),  # no optimiser state: round 0 trains again alike
        topology=TopologyConfig(kind="full"), protocol=ProtocolConfig(max_consensus_rounds=0))
    sim = observe_scenario(scenario, tmp_path)
    node = sim.nodes[0]
    first, second = sim.views[0][0], sim.views[0][1]
    np.testing.assert_array_equal(first.before, node.learner.initial_vector())
    np.testing.assert_array_equal(second.before, first.model)
    np.testing.assert_allclose(first.half, node.learner.train(first.before, 0).vector, atol=1e-6)
    np.testing.assert_allclose(second.update, second.estimate - first.estimate, atol=1e-6)
    assert [v.record["phase"] for v in (first, second)] == ["train", "train"]
    trained = [o for o in sim.offloaded if o.index == 0 and o.name == "train"]
    assert len(trained) == 2 and all(o.seconds > 0 for o in trained)  # timed, once a round


# --------------------------------------------------------------------------- pure figures


def test_cosine_similarity() -> None:
    a = np.array([1.0, 2.0, 3.0])
    assert cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0
    assert cosine_similarity(np.zeros(3), a) == 0.0
    with pytest.raises(ValueError, match="differ in size"):
        cosine_similarity(a, np.ones(2))


def test_membership_advantage_extremes() -> None:
    low, high = np.linspace(0.0, 1.0, 50), np.linspace(2.0, 3.0, 50)
    perfect = membership_advantage(low, high)
    assert perfect["advantage"] == 1.0 and perfect["auc"] == 1.0
    assert perfect["auc_advantage"] == 1.0 and perfect["yeom_advantage"] == pytest.approx(0.5)
    assert 1.0 <= perfect["threshold"] < 2.0
    backwards = membership_advantage(high, low)
    assert backwards["advantage"] == 0.0 and backwards["threshold"] is None
    assert backwards["auc_advantage"] == -1.0
    same = membership_advantage(low, low)
    assert same["advantage"] == 0.0 and same["auc"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="non-empty"):
        membership_advantage(np.array([]), low)
    with pytest.raises(ValueError, match="finite"):
        membership_advantage(np.array([np.nan]), low)


def test_membership_advantage_under_no_leakage_is_small() -> None:
    rng = np.random.default_rng(0)
    figures = membership_advantage(rng.random(2000), rng.random(2000))
    assert figures["advantage"] < 0.06
    assert abs(figures["auc_advantage"]) < 0.06


def test_sum_estimators() -> None:
    a, b, c = np.array([1.0, 0.0]), np.array([0.0, 1.0]), np.array([1.0, 1.0])
    weights = {"a": 0.5, "b": 0.25, "c": 0.25}
    total = 0.5 * a + 0.25 * b + 0.25 * c
    np.testing.assert_allclose(estimate_sum_share(total, 3), total / 3)
    # With a perfect proxy for the others, the target's weighted input comes out exactly.
    pair = {"a": 0.5, "b": 0.5}
    np.testing.assert_allclose(estimate_sum_minus_own(0.5 * a + 0.5 * b, pair, "a", b), 0.5 * a)
    np.testing.assert_allclose(estimate_sum_minus_own(total, weights, "a", np.zeros(2)), total)
    np.testing.assert_allclose(estimate_sum_minus_past(total, [], 3), total / 3)
    np.testing.assert_allclose(estimate_sum_minus_past(total, [a, b], 3), total - 0.5 * (a + b))
    with pytest.raises(ValueError, match="not a contributor"):
        estimate_sum_minus_own(total, weights, "z", a)
    with pytest.raises(ValueError, match="at least 1"):
        estimate_sum_share(total, 0)
