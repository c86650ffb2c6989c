"""Adversaries as node roles (issue 8): each role's decisions on small exact examples, the lying
and differencing aggregators against real nodes (the star of ``test_secure_round``: aggregator
a, neighbourhood b, c, d, e, threshold 3), the floods' frames, the scenario's validation and the
report's scoring of a hand-made run folder."""

# ruff: noqa: F811  (``star`` is a fixture imported from test_secure_round, used as an argument)
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest
import trio
import trio.testing
from test_secure_round import (  # noqa: F401  (star, _alive and _clean are fixtures)
    _accept,
    _alive,
    _clean,
    _fresh,
    _masked,
    ids,
    star,
)

from gossipfl.adversary import flood
from gossipfl.adversary.aggregator import (
    Differencing,
    LyingAggregator,
    differencing_plan,
    lie_plan,
    pick_target,
    read_as_plain,
    strip_pair_masks,
)
from gossipfl.adversary.factory import make_role
from gossipfl.adversary.kinds import AGGREGATOR_KINDS, AdversaryKind
from gossipfl.adversary.prober import StateProber
from gossipfl.adversary.role import Role, parse_reconstruction_key, reconstruction_key
from gossipfl.adversary.roles import ROLES
from gossipfl.config import AdversaryConfig, ConfigError, SecAggConfig
from gossipfl.crypto import secagg
from gossipfl.gossip import wire
from gossipfl.gossip.codes import NodeStatus
from gossipfl.gossip.wire import (
    HEADER,
    MAX_CONTROL_BYTES,
    Contribution,
    Heartbeat,
    WireError,
)
from gossipfl.node import secure_round, state_sync
from gossipfl.scenario.adversaries import adversaries_section, cosine, node_adversary
from gossipfl.scenario.config import AdversarySpec, ScenarioConfig

F = frozenset


# -- kinds, config, factory ------------------------------------------------------------------------


def test_every_kind_has_a_role_and_unknown_kinds_are_refused() -> None:
    assert set(ROLES) == set(AdversaryKind)
    for kind in AdversaryKind:
        role = make_role(AdversaryConfig(kind=kind.value))
        assert role.kind is kind
        assert role.aggregates == (kind in AGGREGATOR_KINDS)
    with pytest.raises(ConfigError, match=r"unknown .*known: none, lying_aggregator"):
        AdversaryConfig(kind="sign_flipper")
    assert type(make_role(AdversaryConfig())) is Role


@pytest.mark.parametrize(("adversaries", "message"), [
    ([{"node": 0, "kind": "mystery"}], "unknown"),
    ([{"node": 0, "kind": "none"}], "honest node"),
    ([{"node": 6, "kind": "state_prober"}], "node 6: the scenario has 6"),
    ([{"node": 1, "kind": "state_prober", "target": 6}], "target 6"),
    ([{"node": 1, "kind": "lying_aggregator", "target": 1}], "cannot target itself"),
    ([{"node": 1, "kind": "state_prober"}, {"node": 1, "kind": "oversize_flood"}], "twice"),
    ([{"node": n, "kind": "state_prober"} for n in range(5)], "two honest"),
    ([{"node": 1, "kind": "narrowing"}], "narrowing narrows consensus delta rounds"),
])
def test_scenario_adversaries_are_validated(adversaries: list[dict], message: str) -> None:
    from gossipfl.config import from_dict

    with pytest.raises(ConfigError, match=message):
        from_dict(ScenarioConfig, {"nodes": 6, "adversaries": adversaries})


def test_each_node_gets_its_role_and_the_honest_ones_keep_their_estimates() -> None:
    from gossipfl.config import from_dict

    scenario = from_dict(ScenarioConfig, {"nodes": 4, "adversaries": [
        {"node": 2, "kind": "lying_aggregator", "target": 0}]})
    peers = ["p0", "p1", "p2", "p3"]
    assert scenario.adversaries == (AdversarySpec(node=2, kind="lying_aggregator", target=0),)
    assert node_adversary(scenario, 2, peers) == AdversaryConfig(
        kind="lying_aggregator", target="p0", keep_public_estimates=True)
    assert node_adversary(scenario, 1, peers) == AdversaryConfig(keep_public_estimates=True)
    assert node_adversary(ScenarioConfig(nodes=4), 1, peers) == AdversaryConfig()


# -- pure decisions -------------------------------------------------------------------------------


def test_the_lie_tells_the_target_one_set_and_the_others_that_it_dropped() -> None:
    s1, s2 = lie_plan(F("bcde"), "c", minimum=3)
    assert (s1, s2) == (F("bcd"), F("bde"))  # c hears {b, c, d}; b, d, e hear "c dropped"
    assert "c" not in s2 and len(s1 ^ s2) == 2
    assert lie_plan(F("bde"), "c", minimum=3) is None  # no input from the target
    assert lie_plan(F("bcd"), "c", minimum=3) is None  # the others too few to sign S2
    assert pick_target(F("bcde"), 6, "") == "d" and pick_target(F("bcde"), 6, "e") == "e"
    assert pick_target(F("bcde"), 6, "zz") == "d"  # a target outside the neighbourhood: turns


@pytest.mark.parametrize(("received", "previous", "attack", "expected"), [
    ("bcde", None, True, ("bcde", False)),  # nothing summed yet: a base sum first
    ("bcde", "bcde", True, ("bde", True)),  # the last set less the live target c
    ("bcde", "bcde", False, ("bcde", False)),
    ("bde", "bcde", True, ("bde", False)),  # c sent nothing: no claim to make, a base sum
    ("bcd", "bcd", True, ("bcd", False)),  # bd alone is too few
    ("bc", "bcde", False, (None, False)),
])
def test_the_differencing_plan(received: str, previous: str | None, attack: bool,
                               expected: tuple) -> None:
    chosen, is_attack = differencing_plan(F(received), None if previous is None else F(previous),
                                          "c", minimum=3, attack=attack)
    assert (chosen, is_attack) == (None if expected[0] is None else F(expected[0]), expected[1])


def test_pair_masks_come_off_and_what_is_left_reads_as_noise() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(-1, 1, 5000).astype(np.float32)
    q = secagg.quantise(values, 8.0, 2**20)
    seeds = {p: bytes([i + 1]) * 32 for i, p in enumerate("bde")}
    self_seed = bytes([9]) * 32
    with_pairs = secagg.mask_input(q, my_id="c", self_seed=self_seed, pair_seeds=seeds)
    self_only = (q + secagg.prg_mask(self_seed, q.size)).astype(np.uint32)
    assert np.array_equal(strip_pair_masks(with_pairs, "c", seeds), self_only)
    # with the self mask gone too, the reading is exact; with it, it is noise
    assert np.allclose(read_as_plain(q, 8.0, 2**20), values, atol=1e-6)
    assert abs(cosine(read_as_plain(self_only, 8.0, 2**20), values)) < 0.05


# -- the aggregators against real nodes ---------------------------------------------------------


def _wire_star(star, monkeypatch) -> None:
    """ask_signature / ask_unmask answered by the star's nodes directly (their real rules)."""
    by_id = {node.peer_id: node for node in star.values()}

    async def ask_signature(node, peer, request, signatures):
        response = secure_round.answer_consistency(by_id[peer], node.peer_id, request)
        if response.signature:
            signatures[peer] = response.signature

    async def ask_unmask(node, peer, request, responses):
        response = secure_round.answer_unmask(by_id[peer], node.peer_id, request)
        if response is not None:
            responses[peer] = response

    monkeypatch.setattr(secure_round, "ask_signature", ask_signature)
    monkeypatch.setattr(secure_round, "ask_unmask", ask_unmask)


def _inputs(star, r: int, estimates: dict | None = None):
    star["a"].round = r
    if estimates is None:
        estimates = _fresh(star, r)
    for name, vector in estimates.items():
        star[name].own.vector = vector.copy()
    inputs = _masked(star, "bcde", r)
    assert set(_accept(star, inputs)) == {"ok"}
    return estimates, inputs


def _run_role(star, role, r: int):
    a = star["a"]
    a.role = role
    try:
        return trio.run(secure_round.secure_sum, a, r)
    finally:
        a.role = Role(AdversaryConfig())


def test_the_lying_aggregator_recovers_nothing_and_gets_only_the_other_sum(star,
                                                                          monkeypatch) -> None:
    _wire_star(star, monkeypatch)
    r = 60
    estimates, inputs = _inputs(star, r)
    target = star["c"].peer_id
    role = LyingAggregator(AdversaryConfig(kind="lying_aggregator", target=target))
    total, _, survivors = _run_role(star, role, r)
    others = [n for n in "bde"]
    assert survivors == ids(star, "bde")
    w = inputs[target].weight
    assert np.allclose(total, sum(w * estimates[n] for n in others), atol=1e-4)
    tally = role.tally
    assert (tally.attempts, tally.succeeded) == (1, 0)
    assert tally.details["signatures_on_target_set"] == 1  # the target alone signed its set
    assert tally.details["answers_on_target_set"] == 0  # one signature is not a threshold
    (key,) = tally.reconstructions
    assert parse_reconstruction_key(key) == (r, target)
    # what it holds of c is masked: noise at the edge of the range, nowhere near c's estimate
    # (15 parameters here, too few for a cosine bar; the scenario measures that)
    assert np.abs(tally.reconstructions[key] - estimates["c"]).mean() > 10


def test_the_lying_aggregators_reconstruction_is_exact_when_handed_both_mask_kinds(
        star, monkeypatch) -> None:
    """The could-fail check: were members to reveal a target's self shares in one set and its
    pair seeds in another, ``best_guess`` would unmask it alone (cosine 1, counted)."""
    r = 61
    estimates, inputs = _inputs(star, r)
    a, target = star["a"], star["c"].peer_id
    everyone, rest = ids(star, "bcde"), ids(star, "bde")
    role = LyingAggregator(AdversaryConfig(kind="lying_aggregator"))
    held = []
    for survivors, dropped in ((everyone, []), (rest, [target])):
        for name in "bcde":  # forgetful members: each set as if it were the only one
            star[name].secagg.committed.clear()
            star[name].secagg.revealed.clear()
            star[name].secagg.signed.clear()
        signatures = {}
        request = wire.ConsistencyRequest("fed", r, a.peer_id, tuple(survivors), tuple(dropped))
        for peer in survivors:
            node = next(n for n in star.values() if n.peer_id == peer)
            signatures[peer] = secure_round.answer_consistency(node, a.peer_id,
                                                               request).signature
        for peer in survivors:
            node = next(n for n in star.values() if n.peer_id == peer)
            unmask = secure_round.unmask_request(a, r, inputs, survivors, dropped, peer,
                                                 tuple(sorted(signatures.items())))
            held.append(secure_round.answer_unmask(node, a.peer_id, unmask))
    role.note(a, r, target, inputs[target], [h for h in held if h is not None])
    assert role.tally.succeeded == 1
    (guess,) = role.tally.reconstructions.values()
    assert cosine(guess, estimates["c"]) > 0.999


def test_the_differencing_aggregator_is_refused_unless_the_rule_is_off(star,
                                                                      monkeypatch) -> None:
    _wire_star(star, monkeypatch)
    for rule, expected in ((2, 0), (1, 1)):
        for node in star.values():
            node.secagg = secure_round.SecAggState()
            node.config = node.config.__class__(**{
                **node.config.__dict__,
                "secagg": SecAggConfig(enabled=True, min_contributors=3, scale=2**20,
                                       min_set_difference=rule)})
        role = Differencing(AdversaryConfig(kind="differencing"))
        estimates = None
        for r in (70, 71, 72):  # estimates unchanged (training moves little); 71 is let pass
            estimates, _ = _inputs(star, r, estimates)
            _run_role(star, role, r)
        assert (role.tally.attempts, role.tally.succeeded) == (1, expected)
        if expected:
            (key,) = role.tally.reconstructions
            _, peer = parse_reconstruction_key(key)
            name = next(n for n, node in star.items() if node.peer_id == peer)
            assert cosine(role.tally.reconstructions[key], estimates[name]) > 0.999
    for node in star.values():
        node.config = node.config.__class__(**{
            **node.config.__dict__,
            "secagg": SecAggConfig(enabled=True, min_contributors=3, scale=2**20)})


# -- the prober and the floods --------------------------------------------------------------------


def test_the_prober_asks_every_neighbour_and_counts_what_comes_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    layout = SimpleNamespace(from_tensors=lambda tensors: np.ones(3, np.float32))
    asked: list[str] = []

    async def pull_state(_: object, peer: str, pulled: dict) -> None:
        asked.append(peer)
        if peer == "leaky":
            pulled[peer] = SimpleNamespace(tensors=())

    monkeypatch.setattr(state_sync, "pull_state", pull_state)  # the node's own request
    node = SimpleNamespace(neighbours={"b": None, "leaky": None, "a": None}, layout=layout)
    prober = StateProber(AdversaryConfig(kind="state_prober"))
    trio.run(prober.probe, node, 4)
    assert asked == ["a", "b", "leaky"]
    assert (prober.tally.attempts, prober.tally.succeeded) == (3, 1)
    assert list(prober.tally.reconstructions) == [reconstruction_key(4, "leaky")]


def test_the_prober_asks_every_neighbour_as_the_rounds_begin_however_fast_they_go(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A federation whose rounds all end within a heartbeat interval of their start (a fast
    run) still gets one full probe: the first is made as the node's rounds begin, not after
    its first round ends (a probe made once the last round is done would be cut short)."""
    asked: list[tuple[str, int, float]] = []
    node = SimpleNamespace(neighbours={"b": None, "a": None}, status=NodeStatus.JOINING,
                           round=-1, protocol=SimpleNamespace(heartbeat_interval=0.5),
                           layout=None)

    async def pull_state(_: object, peer: str, pulled: dict) -> None:
        asked.append((peer, node.round, trio.current_time()))

    async def rounds() -> None:
        await trio.sleep(1.0)  # joining
        node.status = NodeStatus.TRAINING
        for r in range(4):  # four rounds in 0.2 s, all within one heartbeat interval
            await trio.sleep(0.05)
            node.round = r
        node.status = NodeStatus.DONE

    async def main() -> None:
        prober = StateProber(AdversaryConfig(kind="state_prober"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(prober.deviate, node)
            await rounds()
            nursery.cancel_scope.cancel()  # the node's end ends its deviation
        assert prober.tally.attempts == len(asked)

    monkeypatch.setattr(state_sync, "pull_state", pull_state)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [(peer, r) for peer, r, _ in asked[:2]] == [("a", -1), ("b", -1)]
    assert all(1.0 <= t < 1.05 for _, _, t in asked[:2])  # before the first round ended


def test_the_flood_heartbeat_holds_255_made_up_ids_at_the_trap_and_passes_the_wire() -> None:
    fakes = flood.fake_ids(255)
    assert len(set(fakes)) == 255 and all(f.startswith("12D3KooW") for f in fakes)
    beat = Heartbeat("fed", "me", ("/ip4/127.0.0.1/tcp/1",), (), 3, 4, "training", b"cert")
    trap = "/ip4/127.0.0.1/tcp/9"
    flooded = flood.flood_heartbeat(beat, fakes, trap, ["r1", "r2"], 3, b"cert")
    made_up = [m for m in flooded.members if m.peer_id in set(fakes)]
    assert len(made_up) == 255 and len(flooded.members) == 256
    assert {m.addrs for m in flooded.members} == {(trap,)}
    assert flooded.members[-1].peer_id == "r2"  # a real member, announced at the trap
    old = bytes(wire.STAMP_BYTES)  # the last stamp it held for r1 (a replay)
    fresh = flood.flood_heartbeat(beat, fakes, trap, ["r1", "r2"], 4, b"cert", {"r1": old})
    assert [(m.peer_id, m.addrs, m.age, m.stamp) for m in fresh.members] == [
        ("r1", (trap,), 0.0, old), ("r2", (trap,), 0.0, b"")]  # every real member "heard just now"
    assert wire.decode_frame(wire.encode_frame(fresh, MAX_CONTROL_BYTES), Heartbeat) == fresh
    assert sum(1 for m in made_up if m.certificate) == 127  # its own certificate: a check each
    frame = wire.encode_frame(flooded, MAX_CONTROL_BYTES)
    assert wire.decode_frame(frame, Heartbeat) == flooded


def test_bomb_and_oversize_frames_have_the_shapes_the_bounds_refuse() -> None:
    frame = flood.bomb_frame(1 << 20)
    (length,) = HEADER.unpack(frame[:4])
    assert length == len(frame) - 4 and len(frame) == (1 << 20) + 4
    # a million empty arrays: an array header of that count, then one 0x90 (an empty
    # fixarray) each, read without building the million lists (12 s in a loaded worker)
    unpacker = msgpack.Unpacker()
    unpacker.feed(frame[4:])
    count = unpacker.read_array_header()
    assert count == (1 << 20) - 5
    assert frame[-count:] == b"\x90" * count and len(frame) - count == 4 + 5
    with pytest.raises(WireError):
        wire.decode_body(frame[4:], Contribution)
    oversize = flood.oversize_frame(MAX_CONTROL_BYTES)
    with pytest.raises(WireError, match="exceeds"):
        wire.frame_length(oversize[:4], MAX_CONTROL_BYTES)


# -- the report ---------------------------------------------------------------------------------


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(path.suffix, str) and path.suffix == ".npy":
        np.save(path, data)
    else:
        path.write_text(json.dumps(data))


def test_the_report_scores_each_adversary_from_the_run_folder(tmp_path: Path) -> None:
    from gossipfl.config import from_dict

    scenario = from_dict(ScenarioConfig, {"nodes": 4, "adversaries": [
        {"node": 0, "kind": "lying_aggregator"}, {"node": 1, "kind": "membership_flood"}]})
    nodes = [SimpleNamespace(index=i, peer_id=f"p{i}", out=tmp_path / f"node-{i:02d}")
             for i in range(4)]
    rng = np.random.default_rng(1)
    truth = {p: rng.normal(size=50).astype(np.float32) for p in ("p2", "p3")}
    for node in nodes:
        _write(node.out / "topology.json", {"members": ["p0", "p1", "p2", "p3"],
                                            "neighbours": ["p2", "p3"]})
    _write(nodes[3].out / "topology.json", {"members": ["p0", "p2", "p3", "fake1"],
                                            "neighbours": []})
    _write(nodes[2].out / "summary.json", {"privacy": {"secure_aggregation": {
        "refused_rounds": [11, 12, 13]}}})
    for peer, vector in truth.items():
        _write(tmp_path / f"node-0{peer[1]}" / "public" / "r00005.npy", vector)
    liar = nodes[0].out / "adversary"
    _write(liar / "summary.json", {"kind": "lying_aggregator", "attempts": 3, "succeeded": 0,
                                   "details": {"x": 1}})
    np.savez(liar / "reconstructions.npz", **{
        reconstruction_key(5, "p2"): truth["p2"] * 3.0,  # exact up to scale: cosine 1
        reconstruction_key(5, "p3"): -truth["p3"]})
    _write(nodes[1].out / "adversary" / "summary.json", {
        "kind": "membership_flood", "attempts": 9, "succeeded": 0, "details": {"trap_dials": 0},
        "fake_ids": ["fake1", "fake2"]})
    section = adversaries_section(scenario, nodes)
    liar_entry, flood_entry = section
    assert (liar_entry["attempts"], liar_entry["succeeded"]) == (3, 0)
    assert liar_entry["best_cosine"]["p2"] == pytest.approx(1.0)
    assert liar_entry["best_cosine"]["p3"] == pytest.approx(-1.0)
    assert liar_entry["max_cosine"] == pytest.approx(1.0)
    # node 3 lost genuine p1 and took fake1: both count against the flood
    assert flood_entry["details"]["genuine_missing_from_topologies"] == 1
    assert flood_entry["details"]["fake_ids_in_topologies"] == 1
    assert flood_entry["details"]["honest_refused_secure_rounds"] == 3
    assert flood_entry["succeeded"] == 2 and "fake_ids" not in flood_entry
    assert flood_entry["max_cosine"] is None
