"""Secure aggregation between real node objects (real keys, certificates, masks and shares), no
network: the aggregator learns the weighted sum of its neighbours' estimates and nothing else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from secagg_loopback import Loopback, wire_up
from secagg_star import (
    NOW,
    SCALE,
    _accept,
    _answers,
    _expected,
    _fresh,
    _inbox,
    _masked,
    _secure_sum,
    ask,
    assert_sum_of,
    build_star,
    clean,
    ids,
    make_alive,
    sign,
)

from gossipfl.node import secure_round
from gossipfl.node.runtime import Node


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Node]:
    return build_star(tmp_path_factory)


@pytest.fixture(autouse=True)
def _alive(star: dict[str, Node]) -> None:
    make_alive(star)


@pytest.fixture(autouse=True)
def _clean(star: dict[str, Node]) -> None:
    clean(star)


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
    # no member sent its own self seed: each sent shares, its own share of its own seed included
    for response in responses.values():
        assert {owner for owner, _ in response.seed_shares} == set(survivors)
        assert not hasattr(response, "self_seed")


def test_a_dropout_before_masking_is_unmasked_from_the_survivors_pair_seeds(star) -> None:
    r = 2
    estimates = _fresh(star, r)
    inputs = _masked(star, "cde", r)  # b never sent its input
    _accept(star, inputs)
    survivors, dropped = sorted(inputs), [star["b"].peer_id]
    responses = _answers(star, r, inputs, survivors, dropped, "cde")
    total = secure_round.unmask(star["a"], r, inputs, survivors, dropped, responses)
    assert np.abs(total - _expected(star, estimates, "cde")).max() <= 3 / (2 * SCALE) + 1e-6
    # the survivors revealed pair seeds with b only, and no share of b's self seed; 3 shares
    # (of 4, threshold 3) of each survivor's seed came back, each holder's own one included
    for response in responses.values():
        assert [p for p, _ in response.pair_seeds] == [star["b"].peer_id]
        assert star["b"].peer_id not in [p for p, _ in response.seed_shares]


def test_a_dropout_after_masking_still_gives_the_right_sum(star) -> None:
    r = 3
    estimates = _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    _accept(star, inputs)
    survivors = sorted(inputs)
    # b's masked input arrived, then b vanished: it never signs nor answers
    responses = _answers(star, r, inputs, survivors, [], "cde")
    assert star["b"].peer_id not in responses
    total = secure_round.unmask(star["a"], r, inputs, survivors, [], responses)
    assert np.abs(total - _expected(star, estimates, "bcde")).max() <= 4 / (2 * SCALE) + 1e-6
    # with only two answers, no self seed (threshold 3 of 4) can be rebuilt: a clear error
    two = {p: v for p, v in responses.items() if p != star["c"].peer_id}
    with pytest.raises(ValueError, match=r"shares of .* self seed"):
        secure_round.unmask(star["a"], r, inputs, survivors, [], two)


def test_the_aggregator_cannot_claim_a_live_member_dropped(star) -> None:
    r = 4
    _fresh(star, r)
    inputs = _masked(star, "bcde", r)
    _accept(star, inputs)
    c = star["c"]
    everyone = sorted(inputs)
    assert ask(star, "c", r, inputs, everyone, [], sign(star, r, everyone, [], "bcde"))
    # now a asks again, pretending b dropped, to get c's pair seed with b as well
    fewer = [p for p in everyone if p != star["b"].peer_id]
    assert sign(star, r, fewer, ids(star, "b"), "c") == {}
    rejected = c.rejections["unmask_refused"]
    assert ask(star, "c", r, inputs, fewer, ids(star, "b"),
               sign(star, r, fewer, ids(star, "b"), "de")) is None
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


# -- the aggregator's own driver, over an in-process transport ---------------------------------


@pytest.mark.parametrize(("senders", "gone"), [("bcde", ""), ("cde", ""), ("bcde", "b")])
def test_the_driver_signs_then_unmasks_the_right_sum(star, senders: str, gone: str) -> None:
    """An honest round: all four, one dropped before masking, one vanished after masking."""
    r = 20
    estimates = _fresh(star, r)
    _inbox(star, senders, r)
    wire_up(star, gone)
    result = _secure_sum(star, r)
    assert result is not None
    total, weights, survivors = result
    assert survivors == ids(star, senders)
    a = star["a"]
    assert weights == pytest.approx(sum(secure_round.weight(a, a.peer_id, p) for p in survivors))
    assert np.abs(total - _expected(star, estimates, senders)).max() <= 4 / (2 * SCALE) + 1e-6
    assert star["a"].secagg.confirmed == {r: frozenset(survivors)}
    for name in senders:
        if name not in gone:
            assert star[name].secagg.committed[(star["a"].peer_id, r)].survivors == set(survivors)


def test_the_driver_does_not_announce_a_set_one_member_from_a_recent_one(star) -> None:
    """After a round with all four, a round with three would hand the aggregator the fourth's
    estimate by subtraction: refused, and a later round with all four goes through again."""
    _fresh(star, 21)
    a = star["a"]
    _inbox(star, "bcde", 21)
    wire_up(star)
    assert _secure_sum(star, 21) is not None
    _inbox(star, "cde", 22)
    assert _secure_sum(star, 22) is None
    assert 22 in a.secagg.refused_rounds
    _inbox(star, "bcde", 23)
    assert _secure_sum(star, 23) is not None


def test_the_driver_keeps_a_recent_set_when_a_member_returns(star) -> None:
    """Three in the first round, four in the next: the aggregator sums the same three again
    (the fourth's input counts as dropped: its pair masks go, its self mask stays)."""
    _fresh(star, 24)
    _inbox(star, "cde", 24)
    wire_up(star)
    assert _secure_sum(star, 24) is not None
    estimates = _fresh(star, 25)
    _inbox(star, "bcde", 25)
    assert_sum_of(star, _secure_sum(star, 25), estimates, "cde")


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


def _sum_on_mock_time(star: dict[str, Node], r: int, *, alive: str = "") -> tuple[object, float]:
    """Run the aggregator's secure sum on a MockClock that starts at NOW, with every node on
    that clock; the named members keep proving themselves alive (a message straight from them
    every heartbeat). Returns the result and the mock seconds until the aggregator announced
    its survivors, or refused (unmasking runs in a worker thread, during which the mock clock
    may jump: that part is not timed)."""
    a = star["a"]
    announced: list[float] = []
    sum_over = secure_round.sum_over

    async def timed_sum_over(node: Node, r: int, chosen: frozenset[str]) -> object:
        announced.append(trio.current_time())
        return await sum_over(node, r, chosen)

    async def main() -> tuple[object, float]:
        for node in star.values():
            node.clock = trio.current_time
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            async def heartbeats() -> None:
                while True:
                    for name in alive:
                        for node in star.values():
                            if node is not star[name]:
                                node.membership.heard_from(star[name].peer_id, (),
                                                           trio.current_time())
                    await trio.sleep(a.protocol.heartbeat_interval)

            nursery.start_soon(heartbeats)
            result = await secure_round.secure_sum(a, r)
            nursery.cancel_scope.cancel()
        return result, (announced[0] if announced else trio.current_time()) - start

    clock = trio.testing.MockClock(autojump_threshold=0)
    clock.jump(NOW)
    secure_round.sum_over = timed_sum_over  # type: ignore[assignment]
    try:
        return trio.run(main, clock=clock)
    finally:
        secure_round.sum_over = sum_over  # type: ignore[assignment]
        for node in star.values():
            node.clock = lambda: NOW


def test_a_member_that_died_is_waited_for_then_summed_without(star) -> None:
    """b dies after a round with all four. The members presigned the full set for round 31
    with their answers for round 30, so round 31 is refused at once, without a wait or an
    exchange. In round 32 the set of three would be too close, so the aggregator waits (not
    refuses round after round) until b's silence is churn to everyone, then sums the three;
    it waits at most the silence time."""
    _fresh(star, 30)
    _inbox(star, "bcde", 30)
    wire_up(star)
    assert _secure_sum(star, 30) is not None
    assert set(star["a"].secagg.presigned[31][1]) == set(ids(star, "bcde"))
    _fresh(star, 31)
    _inbox(star, "cde", 31)
    result, waited = _sum_on_mock_time(star, 31)
    assert result is None and star["a"].secagg.refused_rounds == [31] and waited == 0
    estimates = _fresh(star, 32)
    _inbox(star, "cde", 32)
    result, waited = _sum_on_mock_time(star, 32)
    assert 32 not in star["a"].secagg.refused_rounds
    assert_sum_of(star, result, estimates, "cde")
    silence = secure_round.silence_seconds(star["a"])
    assert silence / 2 < waited <= silence + 2 * star["a"].protocol.heartbeat_interval


def test_a_live_member_left_out_is_not_waited_for(star) -> None:
    """b is alive (it keeps proving it) but its input is not in: leaving it out is a claim, so
    the round is refused after at most a heartbeat, not held for the silence time. (Two
    rounds on: in the very next one the members' presigns of the full set refuse it.)"""
    _fresh(star, 32)
    _inbox(star, "bcde", 32)
    wire_up(star)
    assert _secure_sum(star, 32) is not None
    _inbox(star, "cde", 34)
    result, waited = _sum_on_mock_time(star, 34, alive="b")
    assert result is None and star["a"].secagg.refused_rounds == [34]
    assert 0 < waited <= 2 * star["a"].protocol.heartbeat_interval


def _wire_up_timed(star: dict[str, Node], delays: dict[str, float],
                   short: str = "") -> list[str]:
    """As :func:`wire_up`, with each named member answering after its delay (mock time), and
    the members in ``short`` answering unmask requests at once but with their seed shares
    stripped (a deviating member). Returns the members' names in the order their unmask
    answers came back."""
    a = star["a"]
    name_of = {node.peer_id: name for name, node in star.items()}
    by_id = {node.peer_id: node for node in star.values()}
    answered: list[str] = []

    class Timed(Loopback):
        async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
            name = name_of[self.member.peer_id]
            unmask = self.protocol == secure_round.PROTO_UNMASK
            if not (unmask and name in short):
                await trio.sleep(delays.get(name, 0.0))
            if unmask and name in short and self.reply is not None:
                self.reply = dataclasses.replace(self.reply, seed_shares=())
            if unmask:
                answered.append(name)
            return await super().receive(expected, max_bytes)

    @asynccontextmanager
    async def channel_to(peer: str, protocol: str, addrs=None) -> AsyncIterator[Loopback]:
        yield Timed(a.peer_id, by_id[peer], protocol)

    a.channel_to = channel_to  # type: ignore[method-assign]
    return answered


def _sum_in_a_running_node(star: dict[str, Node], r: int) -> tuple[object, float, float]:
    """The aggregator's secure sum with its node's nursery running (as in ``Node.run``):
    returns the result, the mock seconds it took, and when the nursery's last task ended.
    Unmasking runs inline, not in a worker thread: the mock clock would jump to the next
    deadline (a slow member's answer) while a thread works."""
    a = star["a"]

    async def inline(fn: Any, *args: Any) -> Any:
        return fn(*args)

    async def main() -> tuple[object, float, float]:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            a.background = nursery
            result = await secure_round.secure_sum(a, r)
            took = trio.current_time() - start
        a.background = None
        return result, took, trio.current_time() - start

    offload, a.offload = a.offload, inline  # type: ignore[method-assign]
    try:
        return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        a.offload = offload  # type: ignore[method-assign]


def test_the_aggregator_goes_on_at_the_threshold_and_the_slow_member_still_answers(
        star) -> None:
    """e answers 5 s after the others: the sum is made from the threshold (3) of signatures and
    answers, without waiting for e, whose exchanges end in the node's nursery."""
    r = 40
    estimates = _fresh(star, r)
    _inbox(star, "bcde", r)
    answered = _wire_up_timed(star, {"e": 5.0})
    result, took, ended = _sum_in_a_running_node(star, r)
    assert_sum_of(star, result, estimates, "bcde")
    assert took < 5.0 <= ended  # it did not wait for e; e's answers came later
    assert answered[-1] == "e"
    # e signed the same set and answered it: one set per aggregator and round
    assert star["e"].secagg.committed[(star["a"].peer_id, r)].survivors == set(ids(star, "bcde"))


def test_a_member_answering_first_with_its_shares_stripped_costs_only_the_wait(star) -> None:
    """b answers at once but leaves out its seed shares (a deviating member): with b among the
    first three answers the self seeds cannot be rebuilt, so the aggregator waits for every
    answer and unmasks from the honest ones: the right sum, not a failed round."""
    r = 41
    estimates = _fresh(star, r)
    _inbox(star, "bcde", r)
    answered = _wire_up_timed(star, {"c": 1.0, "d": 1.0, "e": 2.0}, short="b")
    result, took, _ = _sum_in_a_running_node(star, r)
    assert answered[0] == "b"
    assert result is not None and r not in star["a"].secagg.failed_rounds
    total, _, _ = result
    assert np.abs(total - _expected(star, estimates, "bcde")).max() <= 4 / (2 * SCALE) + 1e-6
    assert took >= 2.0  # it had to wait for e
