"""Tests of the privacy audit: a curious neighbour against plain gossip, secure sums and DP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from gossipfl.crypto import secagg
from gossipfl.privacy.audit import (
    AUDIT_KEYS,
    RECONSTRUCTION_SETTINGS,
    SUM_ESTIMATORS,
    centred_dequantise,
    cosine_similarity,
    estimate_sum_minus_own,
    estimate_sum_minus_past,
    estimate_sum_share,
    format_table,
    main,
    membership_advantage,
    run_audit,
)

SUMMARY_KEYS = {"mean", "per_round", "neighbours_mean", "step_mean"}
MEMBERSHIP_KEYS = {
    "advantage", "threshold", "auc", "auc_advantage", "yeom_advantage", "members", "non_members",
    "member_mean_loss", "non_member_mean_loss", "test_accuracy",
}


@pytest.fixture(scope="module")
def audit() -> dict:
    return run_audit(0)


# --------------------------------------------------------------------------- the audit


def test_no_protection_reconstruction_is_exact(audit: dict) -> None:
    figures = audit["reconstruction"]["none"]["received"]
    assert figures["mean"] > 0.99
    assert figures["neighbours_mean"] > 0.99
    assert all(c > 0.99 for c in figures["per_round"])


def test_masked_vector_reveals_nothing(audit: dict) -> None:
    for setting in ("secagg", "secagg_dp"):
        figures = audit["reconstruction"][setting]["masked_as_plain"]
        assert abs(figures["mean"]) < 0.05, setting
        assert abs(figures["neighbours_mean"]) < 0.05, setting


def test_dp_noise_hides_the_received_update(audit: dict) -> None:
    assert abs(audit["reconstruction"]["dp"]["received"]["mean"]) < 0.2
    # Against the training step, no sum-based estimator does well under secagg + DP.
    for name in SUM_ESTIMATORS:
        assert abs(audit["reconstruction"]["secagg_dp"][name]["step_mean"]) < 0.2, name


def test_cosines_are_cosines(audit: dict) -> None:
    for setting in RECONSTRUCTION_SETTINGS:
        for name, figures in audit["reconstruction"][setting].items():
            if name == "best":
                continue
            values = [figures["mean"], figures["neighbours_mean"], figures["step_mean"],
                      *figures["per_round"]]
            assert all(-1.0 <= v <= 1.0 for v in values), (setting, name)
            assert len(figures["per_round"]) == audit["parameters"]["rounds"]


def test_membership_inference(audit: dict) -> None:
    no_dp = audit["membership"]["no_dp"]
    dp = audit["membership"]["dp"]
    for figures in (no_dp, dp):
        assert 0.0 <= figures["advantage"] <= 1.0
        assert -1.0 <= figures["auc_advantage"] <= 1.0
        assert -1.0 <= figures["yeom_advantage"] <= 1.0
        assert 0.0 <= figures["auc"] <= 1.0
        assert figures["members"] == figures["non_members"] > 0
    assert dp["advantage"] <= no_dp["advantage"] or dp["advantage"] <= 0.2
    assert dp["auc_advantage"] <= no_dp["auc_advantage"] or dp["auc_advantage"] <= 0.2


def test_audit_has_the_documented_keys(audit: dict) -> None:
    assert set(audit) == set(AUDIT_KEYS)
    assert set(audit["reconstruction"]) == set(RECONSTRUCTION_SETTINGS)
    for setting in ("none", "dp"):
        assert set(audit["reconstruction"][setting]) == {"received"}
        assert set(audit["reconstruction"][setting]["received"]) == SUMMARY_KEYS
    for setting in ("secagg", "secagg_dp"):
        figures = audit["reconstruction"][setting]
        assert set(figures) == {"masked_as_plain", *SUM_ESTIMATORS, "best"}
        for name in ("masked_as_plain", *SUM_ESTIMATORS):
            assert set(figures[name]) == SUMMARY_KEYS
        assert figures["best"]["estimator"] in SUM_ESTIMATORS
        assert figures["best"]["mean"] == max(figures[n]["mean"] for n in SUM_ESTIMATORS)
    assert set(audit["membership"]) == {"no_dp", "dp"}
    for figures in audit["membership"].values():
        assert set(figures) == MEMBERSHIP_KEYS
    params = audit["parameters"]
    assert params["nodes"] == 6 and params["rounds"] == 5 and params["seed"] == 0
    assert params["target"] in params["neighbours"]
    assert len(params["neighbours"]) >= secagg.MIN_CONTRIBUTORS
    assert math.isfinite(params["privacy"]["epsilon"])
    json.dumps(audit, allow_nan=False)  # JSON-ready
    assert "membership inference" in format_table(audit)


def test_audit_is_deterministic(audit: dict) -> None:
    assert run_audit(0) == audit


def test_command_line(tmp_path, capsys) -> None:
    out = tmp_path / "audit.json"
    assert main(["--out", str(out), "--rounds", "2", "--seed", "1"]) == 0
    written = json.loads(out.read_text())
    assert set(written) == set(AUDIT_KEYS)
    assert written["parameters"]["rounds"] == 2
    assert "update reconstruction" in capsys.readouterr().out


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="nodes"):
        run_audit(0, nodes=3)
    with pytest.raises(ValueError, match="rounds"):
        run_audit(0, rounds=0)
    with pytest.raises(ValueError, match="neighbour"):
        run_audit(0, target=0)


# --------------------------------------------------------------------------- pure figures


def test_cosine_similarity() -> None:
    a = np.array([1.0, 2.0, 3.0])
    assert cosine_similarity(a, 2 * a) == pytest.approx(1.0)
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert cosine_similarity(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 0.0
    assert cosine_similarity(np.zeros(3), a) == 0.0
    with pytest.raises(ValueError):
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
    with pytest.raises(ValueError):
        membership_advantage(np.array([]), low)
    with pytest.raises(ValueError):
        membership_advantage(np.array([np.nan]), low)


def test_membership_advantage_under_no_leakage_is_small() -> None:
    rng = np.random.default_rng(0)
    figures = membership_advantage(rng.random(2000), rng.random(2000))
    assert figures["advantage"] < 0.06
    assert abs(figures["auc_advantage"]) < 0.06


def test_centred_dequantise() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(0, 0.5, 1000)
    q = secagg.quantise(v, secagg.DEFAULT_CLIP, secagg.DEFAULT_SCALE)
    back = centred_dequantise(q, secagg.DEFAULT_CLIP, secagg.DEFAULT_SCALE)
    np.testing.assert_allclose(back, v, atol=1 / secagg.DEFAULT_SCALE)
    # A masked vector reads as noise of the size of the whole ring.
    seed = bytes(range(32))
    masked = secagg.mask_input(q, my_id="a", self_seed=seed,
                               pair_seeds={"b": bytes(32 * [1]), "c": bytes(32 * [2])})
    noise = centred_dequantise(masked, secagg.DEFAULT_CLIP, secagg.DEFAULT_SCALE)
    assert abs(cosine_similarity(noise, v)) < 0.1
    assert np.abs(noise).max() > 100 * np.abs(v).max()


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
    with pytest.raises(ValueError):
        estimate_sum_minus_own(total, weights, "z", a)
    with pytest.raises(ValueError):
        estimate_sum_share(total, 0)
