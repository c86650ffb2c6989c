"""The contributor's side of secure aggregation (gossipfl.node.secure_inputs): the honest range
check before masking, and a Byzantine member's crafted vector going into its masked input.

Real node objects (the star of test_secure_round.py), no network: the masked input's stream is
replaced by an aggregator that takes everything, and what each send masked is recorded."""

# ruff: noqa: F811  (``star`` is a fixture imported from test_secure_round, used as an argument)

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from test_secure_round import (  # noqa: F401  (star, _alive and _clean are fixtures)
    SCALE,
    _alive,
    _clean,
    star,
)

from gossipfl.adversary.byzantine import BYZANTINE_ROLES
from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.config import AdversaryConfig
from gossipfl.crypto import secagg
from gossipfl.gossip.codes import AckCode
from gossipfl.gossip.wire import Ack
from gossipfl.node import secure_inputs, streams
from gossipfl.node.secure_inputs import InputCheck, check_input

CLIP = 8.0  # SecAggConfig's default, which the star uses


# -- the pure check --------------------------------------------------------------------------


def test_the_quantiser_clips_out_of_range_values_to_its_edge_and_never_wraps() -> None:
    """What happens today to a value past ±clip: it is summed as ±clip (biased, not wrapped)."""
    words = secagg.quantise(np.array([100.0, -1e9, 3.0]), CLIP, SCALE)
    total = secagg.dequantise_sum(words, 1, CLIP, SCALE)
    np.testing.assert_allclose(total, [CLIP, -CLIP, 3.0], atol=1 / SCALE)


def test_the_range_check_finds_the_most_severe_problem() -> None:
    fine = np.array([1.0, -2.0, 0.5], np.float32)
    assert check_input(fine, 0.2, CLIP, 100.0).verdict is InputCheck.OK
    # w·x̂ past ±clip in two coordinates (50·0.2 = 10 > 8): sent at the edge
    wide = np.array([50.0, -45.0, 30.0], np.float32)
    check = check_input(wide, 0.2, CLIP, 100.0)
    assert (check.verdict, check.clipped) == (InputCheck.CLIPPED, 2) and check.verdict.sends
    # beyond the norm bound of its own model: not sent, whatever the quantiser would do
    check = check_input(wide, 0.2, CLIP, 50.0)
    assert check.verdict is InputCheck.OVER_BOUND and not check.verdict.sends
    assert check.norm == pytest.approx(float(np.linalg.norm(wide)))
    assert check_input(fine * 1e6, 1e-9, CLIP, 100.0).verdict is InputCheck.OVER_BOUND
    for bad in (np.nan, np.inf, -np.inf):
        check = check_input(np.array([1.0, bad], np.float32), 0.2, CLIP, math.inf)
        assert check.verdict is InputCheck.NOT_FINITE and not check.verdict.sends
    assert check_input(wide, 0.2, CLIP, math.inf).verdict is InputCheck.CLIPPED  # bound off


# -- a contributor's sends --------------------------------------------------------------------


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Every masked input built (aggregator → the vector masked); every aggregator takes it."""
    masked: dict[str, np.ndarray] = {}
    build = secure_inputs.masked_input

    def recording(node: Any, aggregator: str, r: int, estimate: np.ndarray,
                  done: bool) -> Any:
        masked[aggregator] = np.asarray(estimate, np.float32).copy()
        return build(node, aggregator, r, estimate, done)

    class Taking:
        """The aggregator's end: it takes every input and acks it."""

        async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
            self.round = message.round

        async def receive(self, expected: Any, max_bytes: int, known: Any = None) -> Ack:
            return Ack("fed", self.round, "aggregator", AckCode.OK, "")

    async def request(node: Any, peer: str, protocol: str, exchange: Any) -> Ack:
        assert protocol == secure_inputs.PROTO_MASKED
        return await exchange(Taking())

    monkeypatch.setattr(secure_inputs, "masked_input", recording)
    monkeypatch.setattr(streams, "request", request)
    return masked


def send(node: Any, r: int) -> dict[str, str]:
    async def main() -> dict[str, str]:
        return await secure_inputs.send_masked_inputs(node, r, done=False)
    return trio.run(main)


def aggregators(nodes: dict[str, Any], name: str) -> list[str]:
    return sorted(node.peer_id for n, node in nodes.items() if n != name)


def test_an_honest_contributor_masks_its_estimate_and_reports_nothing(star, sent,
                                                                     monkeypatch) -> None:
    b = star["b"]
    monkeypatch.setattr(b.own, "vector", np.full(b.layout.size, 0.5, np.float32))
    assert send(b, 3) == {}
    assert sorted(sent) == aggregators(star, "b")
    for vector in sent.values():
        np.testing.assert_array_equal(vector, b.own.vector)


def test_an_honest_contributor_sends_clipped_coordinates_and_says_so(star, sent, monkeypatch,
                                                                     caplog) -> None:
    b = star["b"]
    estimate = np.zeros(b.layout.size, np.float32)
    estimate[0] = 60.0  # w = 0.2: 12, past the quantiser's ±8
    monkeypatch.setattr(b.own, "vector", estimate)
    monkeypatch.setattr(b, "model", np.full(b.layout.size, 1.0, np.float32))
    with caplog.at_level("WARNING", logger="gossipfl.secagg"):
        found = send(b, 4)
    assert found == {p: "clipped" for p in aggregators(star, "b")}
    assert sorted(sent) == aggregators(star, "b")  # sent all the same: the sum stays valid
    assert "past the quantiser's range" in caplog.text


@pytest.mark.parametrize("broken", ["nan", "huge"])
def test_an_honest_contributor_with_a_broken_estimate_does_not_contribute(
        star, sent, monkeypatch, caplog, broken: str) -> None:
    b = star["b"]
    model = np.full(b.layout.size, 0.1, np.float32)
    estimate = model * 1e4 if broken == "huge" else model.copy()  # 10⁴×: past the bound of 100×
    if broken == "nan":
        estimate[3] = np.nan
    monkeypatch.setattr(b.own, "vector", estimate)
    monkeypatch.setattr(b, "model", model)
    with caplog.at_level("ERROR", logger="gossipfl.secagg"):
        found = send(b, 5)
    verdict = "not_finite" if broken == "nan" else "over_bound"
    assert found == {p: verdict for p in aggregators(star, "b")}
    assert sent == {}  # nothing masked, nothing sent: its aggregators see a dropout
    assert "not contributed" in caplog.text
    assert all(state.unreachable_round != 5 for state in b.neighbours.values())


def test_a_byzantine_member_masks_its_crafted_vector_unchecked(star, sent, monkeypatch) -> None:
    b = star["b"]
    role = BYZANTINE_ROLES[AdversaryKind.SCALE](AdversaryConfig(kind="scale"))
    own = np.full(b.layout.size, 0.1, np.float32)
    monkeypatch.setattr(b, "role", role)
    monkeypatch.setattr(b.own, "vector", own)
    monkeypatch.setattr(b, "model", own.copy())
    assert send(b, 6) == {}  # no range check: 1000× its model goes out, far past the bound
    assert sorted(sent) == aggregators(star, "b")
    for vector in sent.values():
        np.testing.assert_allclose(vector, 1000 * own, rtol=1e-6)
    assert (role.tally.attempts, role.tally.succeeded) == (4, 4)  # each aggregator took it


# -- pipelined acks ---------------------------------------------------------------------------


class _SlowAggregator:
    """Every aggregator's end of our masked-input streams (the real ``streams.ask`` over it):
    it records each frame and acks it only when the test says so."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.release: dict[tuple[str, int], trio.Event] = {}

    async def open(self, peer: str, addrs: Any, protocol: str) -> Any:
        assert protocol == secure_inputs.PROTO_MASKED
        return _End(self, peer)


class _End:
    def __init__(self, far: _SlowAggregator, peer: str) -> None:
        self.far, self.peer, self.remote = far, peer, peer

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        key = (self.peer, message.round)
        self.far.sent.append(key)
        self.far.release[key] = trio.Event()

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        key = self.far.sent[max(i for i, k in enumerate(self.far.sent) if k[0] == self.peer)]
        await self.far.release[key].wait()
        return Ack("fed", key[1], self.peer, AckCode.OK, "")

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


def test_a_round_goes_on_before_the_aggregators_ack_and_the_next_input_waits(star) -> None:
    """A round's masked inputs return once written; the acks are read in the node's nursery;
    the next round's input to an aggregator waits (its stream's lock) until the last is
    acked; the final (done) inputs wait for every ack."""
    b = star["b"]
    far = _SlowAggregator()
    targets = aggregators(star, "b")

    async def payload(channel: Any, message: Any) -> None:
        await channel.send(message, 0)

    async def inline(fn: Any, *args: Any) -> Any:  # no worker thread: the waits are the locks
        return fn(*args)

    async def main() -> None:
        b.net, b.send_payload, b.offload = far, payload, inline
        async with trio.open_nursery() as nursery:
            b.background = nursery
            with trio.fail_after(5):
                assert await secure_inputs.send_masked_inputs(b, 3, done=False) == {}
            assert sorted(far.sent) == [(p, 3) for p in targets]  # written, none acked
            returned = trio.Event()

            async def next_round() -> None:
                await secure_inputs.send_masked_inputs(b, 4, done=True)
                returned.set()

            nursery.start_soon(next_round)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(far.sent) == [(p, 3) for p in targets]  # round 4 waits for the acks
            for p in targets:
                far.release[(p, 3)].set()
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(k for k in far.sent if k[1] == 4) == [(p, 4) for p in targets]
            assert not returned.is_set()  # done: it waits for its acks too
            for p in targets:
                far.release[(p, 4)].set()
            with trio.fail_after(5):
                await returned.wait()
            b.background = None

    trio.run(main)
