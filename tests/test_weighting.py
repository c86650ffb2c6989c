"""Sample-weighted averaging (issue 10, ``protocol.weighting = "examples"``): the mixing row
whose stationary distribution is ∝ the nodes' example counts, the count on the wire, the
configurations it is refused with, and a simulated federation that ends at the
example-weighted mean of its last training round's models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_scenarios import node_dir, scenario_text, simulated

from gossipfl.aggregation.mixing import (
    choco_step,
    neighbour_weights,
    reported_examples,
    weighted_neighbour_weights,
)
from gossipfl.config import ConfigError, NodeConfig, ProtocolConfig, SecAggConfig, Weighting
from gossipfl.gossip.wire import (
    Contribution,
    WireError,
    decode_body,
    encode_body,
    from_named,
    named,
)
from gossipfl.node.learner import LearnerPool
from gossipfl.privacy.dp import DPConfig
from gossipfl.scenario.config import load_scenario

PEER_A = "12D3KooWA"
PEER_B = "12D3KooWB"


# -- the pure maths --------------------------------------------------------------------------------


def test_reported_examples_exact_and_rounded() -> None:
    assert [reported_examples(n) for n in (0, 1, 7, 170)] == [1, 1, 7, 170]
    # the nearest power of two in log scale: within a factor √2 of the count
    assert [reported_examples(n, "pow2") for n in (0, 1, 2, 3, 5, 6, 11, 12, 181, 182)] == [
        1, 1, 2, 4, 4, 8, 8, 16, 128, 256]
    with pytest.raises(ValueError, match="rounding must be exact or pow2"):
        reported_examples(5, "log10")
    with pytest.raises(ValueError, match="non-negative"):
        reported_examples(-1)


def test_a_weighted_row_by_hand() -> None:
    # i has degree 2 and 10 examples; b (degree 3, 5 examples) and c (degree 1, 40 examples)
    self_weight, weights = weighted_neighbour_weights(2, 10, {"b": (3, 5), "c": (1, 40)})
    assert weights == {"b": pytest.approx(0.25 * 0.5), "c": pytest.approx(1 / 3)}
    assert self_weight == pytest.approx(1 - 0.125 - 1 / 3)
    # a count of 0 on either end: the plain Metropolis weight
    assert weighted_neighbour_weights(2, 0, {"b": (3, 5)})[1] == {"b": 0.25}
    assert weighted_neighbour_weights(2, 10, {"b": (3, 0)})[1] == {"b": 0.25}
    with pytest.raises(ValueError, match="cannot have more neighbours"):
        weighted_neighbour_weights(1, 10, {"b": (1, 1), "c": (1, 1)})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=2, max_size=6),
       st.lists(st.integers(0, 4), min_size=2, max_size=6))
def test_weighted_rows_are_in_detailed_balance_and_never_outpull_metropolis(
        counts: list[int], degrees: list[int]) -> None:
    m_i, m_j = counts[0], counts[1]
    d_i, d_j = degrees[0] + 1, degrees[1] + 1
    _, row_i = weighted_neighbour_weights(d_i, m_i, {"j": (d_j, m_j)})
    _, row_j = weighted_neighbour_weights(d_j, m_j, {"i": (d_i, m_i)})
    assert m_i * row_i["j"] == pytest.approx(m_j * row_j["i"])
    _, plain = neighbour_weights(d_i, {"j": d_j})
    assert row_i["j"] <= plain["j"] + 1e-15
    if m_i == m_j:
        assert row_i["j"] == pytest.approx(plain["j"])


def ring_rows(counts: list[int]) -> list[dict[int, float]]:
    n = len(counts)
    rows = []
    for i in range(n):
        around = {(i - 1) % n: (2, counts[(i - 1) % n]), (i + 1) % n: (2, counts[(i + 1) % n])}
        _, weights = weighted_neighbour_weights(
            2, counts[i], {str(k): v for k, v in around.items()})
        rows.append({int(k): w for k, w in weights.items()})
    return rows


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 200), min_size=3, max_size=7), st.integers(0, 2**31 - 1))
def test_choco_steps_keep_and_reach_the_example_weighted_mean(counts: list[int],
                                                              seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = [rng.normal(size=3).astype(np.float32) for _ in counts]
    m = np.asarray(counts, np.float64)
    target = sum(mi * xi.astype(np.float64) for mi, xi in zip(m, x, strict=True)) / m.sum()
    rows = ring_rows(counts)
    for _ in range(4000):
        x = [choco_step(x[i], x[i], {str(j): x[j] for j in rows[i]},
                        {str(j): w for j, w in rows[i].items()}) for i in range(len(x))]
        kept = sum(mi * xi.astype(np.float64) for mi, xi in zip(m, x, strict=True)) / m.sum()
        assert np.allclose(kept, target, atol=1e-4)
        if max(float(np.abs(xi - target).max()) for xi in x) < 1e-4:
            break
    assert max(float(np.abs(xi - target).max()) for xi in x) < 1e-3


# -- the wire and the configuration ----------------------------------------------------------------


def contribution(examples: int) -> Contribution:
    return Contribution(federation="fed", round=1, sender=PEER_A, receiver=PEER_B, degree=2,
                        kind="full", base_round=-1, disagreement=0.0, done=False, tensors=(),
                        examples=examples)


def test_the_count_goes_on_the_wire_only_when_weighting() -> None:
    assert "examples" not in named(encode_body(contribution(0)))
    assert decode_body(encode_body(contribution(0)), Contribution).examples == 0
    assert decode_body(encode_body(contribution(128)), Contribution).examples == 128
    body = named(encode_body(contribution(4)))
    for bad in (-1, 2**41, 1.5, True, "4"):
        body["examples"] = bad
        with pytest.raises(WireError, match="examples"):
            decode_body(from_named(body), Contribution)


def test_weighting_is_parsed_once_and_refused_where_not_built(tmp_path: Path) -> None:
    assert ProtocolConfig(weighting="examples").weighting is Weighting.EXAMPLES
    with pytest.raises(ConfigError, match="weighting must be uniform or examples"):
        ProtocolConfig(weighting="records")
    with pytest.raises(ConfigError, match="examples_rounding must be one of exact, pow2"):
        ProtocolConfig(examples_rounding="log10")
    protocol = ProtocolConfig(weighting="examples")
    with pytest.raises(ConfigError, match="not built with secagg"):
        NodeConfig(protocol=protocol, secagg=SecAggConfig(enabled=True))
    with pytest.raises(ConfigError, match="not covered by the DP guarantee"):
        NodeConfig(protocol=protocol, privacy=DPConfig(enabled=True, noise_multiplier=1.0))
    path = tmp_path / "s.toml"
    path.write_text(scenario_text(name="w", nodes=3, rounds=1,
                                  protocol='weighting = "examples"\n',
                                  extra="[secagg]\nenabled = true\n"))
    with pytest.raises(ConfigError, match="not built with secagg"):
        load_scenario(path)


# -- a simulated federation --------------------------------------------------------------------


def test_a_weighted_federation_ends_at_the_example_weighted_mean(tmp_path: Path,
                                                                 pool: LearnerPool) -> None:
    nodes, rounds = 5, 3
    text = scenario_text(name="weighted", nodes=nodes, rounds=rounds, topology="ring",
                         degree=2, protocol='weighting = "examples"\n'
                         'examples_rounding = "exact"\n')
    text = text.replace("consensus_tolerance = 1e-4", "consensus_tolerance = 1e-6").replace(
        "max_consensus_rounds = 30", "max_consensus_rounds = 200")
    report = simulated(tmp_path, text, pool)
    counts = [n["examples"] for n in report["nodes"]]
    assert len(set(counts)) > 2, "the partition should give unequal nodes"
    last = [np.load(node_dir(tmp_path, i) / "rounds" / f"r{rounds - 1:05d}.npy")
            .astype(np.float64) for i in range(nodes)]
    m = np.asarray(counts, np.float64)
    weighted = sum(mi * xi for mi, xi in zip(m, last, strict=True)) / m.sum()
    plain = sum(last) / nodes
    assert np.linalg.norm(weighted - plain) > 1e-3 * np.linalg.norm(plain)
    finals = []
    for i in range(nodes):
        saved = sorted((node_dir(tmp_path, i) / "rounds").glob("r*.npy"))
        finals.append(np.load(saved[-1]).astype(np.float64))
    for final in finals:
        # consensus rounds keep Σ m_i x_i: every node ends at the weighted mean, not the plain
        off = np.linalg.norm(final - weighted)
        assert off < 0.05 * np.linalg.norm(weighted - plain), (off, counts)
    assert report["final_consensus_distance"] < 1e-4
