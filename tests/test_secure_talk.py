"""A secure round's conversation with each member on the stream its input came on, and the
presigns, as whole nodes run them (``Node.run`` over the in-memory network, on a mock clock):
with every input in, the rounds after the first cost no consistency exchange and no ack."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
import trio.testing

from gossipfl.config import DataConfig, ModelConfig, ProtocolConfig, SecAggConfig, TopologyConfig
from gossipfl.gossip.wire import UnmaskRequest, UnmaskResponse
from gossipfl.node import secure_talk
from gossipfl.node.secagg_state import SecAggState
from gossipfl.scenario.config import ScenarioConfig
from gossipfl.scenario.observed import observe_scenario


def _traffic(folder: Path, rounds: int, presign: bool) -> list[dict[str, int]]:
    """Bytes each node sent, by message kind, in a 5-node secure run of ``rounds`` rounds."""
    scenario = ScenarioConfig(
        name="fed", nodes=5, rounds=rounds, seed=0, timeout=600.0, keep_round_models=False,
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        topology=TopologyConfig(kind="full"), protocol=ProtocolConfig(max_consensus_rounds=0),
        secagg=SecAggConfig(enabled=True, presign=presign))
    sim = observe_scenario(scenario, folder)
    for i in range(5):
        assert sim.nodes[i].secagg.refused_rounds == [] == sim.nodes[i].secagg.failed_rounds
    return [{**sim.nodes[i].traffic.by_kind_sent, "early": sim.nodes[i].secagg.early_rounds}
            for i in range(5)]


@pytest.fixture(scope="module")
def one_round(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, int]]:
    return _traffic(tmp_path_factory.mktemp("one"), 1, True)


def test_later_rounds_cost_an_input_a_request_and_an_answer_per_member(tmp_path,
                                                                      one_round) -> None:
    for short, long in zip(one_round, _traffic(tmp_path, 3, True), strict=True):
        # the consistency exchange of round 0 only; acks only for the final (done) inputs
        for kind in ("consistency_request", "consistency_response", "ack"):
            assert long[kind] == short[kind] > 0, kind
        # with each member every round: an unmask request (the answer to its input) and its
        # answer, which presigns the next round's set; from round 1 on, with the seeds dealt
        # a round ahead, the sums come from early shares (none in round 0: nothing was dealt)
        # and the requests and answers are light: no shares, no signatures
        assert short["early"] == 0 and long["early"] >= 1
        assert short["unmask_request"] < long["unmask_request"] < 3 * short["unmask_request"]
        # a light request is not answered (its presign comes with the next input)
        assert long["unmask_response"] < 3 * short["unmask_response"]


def test_without_presigns_every_round_runs_the_consistency_exchange(tmp_path,
                                                                   one_round) -> None:
    for short, long in zip(one_round, _traffic(tmp_path, 2, False), strict=True):
        assert long["consistency_request"] == 2 * short["consistency_request"]
        assert long["ack"] == short["ack"]  # the inputs are still answered by the requests
        assert long["unmask_response"] < 2 * short["unmask_response"]  # no presigns in them


# -- the held stream, step by step (a fake channel, mock time) ----------------------------------


class _Member:
    """The member's end of a held stream: records what the aggregator sends, answers a
    request with ``answer`` (None: it resets the stream, as a refusal does)."""

    def __init__(self, answer: UnmaskResponse | None) -> None:
        self.remote, self.sent, self.answer = "member", [], answer

    async def send(self, message: object, max_bytes: int, known: Any = None) -> None:
        self.sent.append(message)

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> UnmaskResponse:
        await trio.sleep(0.1)
        if self.answer is None:
            raise ConnectionResetError("reset")
        return self.answer


def _aggregator() -> SimpleNamespace:
    return SimpleNamespace(secagg=SecAggState(), protocol=ProtocolConfig(request_timeout=6.0),
                           peer_id="aggregator", sum_table=lambda aggregator: None)


REQUEST = UnmaskRequest("fed", 7, "aggregator", ("member", "b", "c"), (), (), ())
ANSWER = UnmaskResponse("fed", 7, "member", (), ())


def _hold_then_ask(node: SimpleNamespace, member: _Member,
                   after: float | None) -> tuple[object, object]:
    """The aggregator's handler holds ``member``'s stream for round 7; the round asks it after
    ``after`` mock seconds (None: as soon as every task waits). Returns what the handler
    returned and what the round got."""
    async def main() -> tuple[object, object]:
        async with trio.open_nursery() as nursery:
            held: list[object] = []

            async def hold() -> None:
                held.append(await secure_talk.hold_for_request(node, member, 7))

            nursery.start_soon(hold)
            if after is None:
                await trio.testing.wait_all_tasks_blocked()
            else:
                await trio.sleep(after)
            answer = await secure_talk.ask_held(node, "member", REQUEST)
        return held[0], answer

    return trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_held_stream_carries_the_request_and_its_answer() -> None:
    node, member = _aggregator(), _Member(ANSWER)
    held, answer = _hold_then_ask(node, member, 1.0)  # within park_seconds (2 s here)
    assert (held, answer, member.sent) == (True, ANSWER, [REQUEST])
    assert node.secagg.parked == {}


def test_a_stream_not_asked_in_time_is_acked_and_the_request_goes_elsewhere() -> None:
    node, member = _aggregator(), _Member(ANSWER)

    async def main() -> tuple[object, object, float]:
        start = trio.current_time()
        held = await secure_talk.hold_for_request(node, member, 7)
        return held, await secure_talk.ask_held(node, "member", REQUEST), \
            trio.current_time() - start

    held, answer, took = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # None: the caller acks the input; False: ask on an unmask stream of our own
    assert (held, answer, member.sent) == (None, False, [])
    assert took == secure_talk.park_seconds(node) == 2.0


def test_a_refusal_on_a_held_stream_is_no_answer_and_ends_the_stream() -> None:
    node, member = _aggregator(), _Member(None)
    assert _hold_then_ask(node, member, None) == (False, None)
    assert member.sent == [REQUEST]


class _Silent(_Member):
    """A deviating member: it takes the request and never answers."""

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> UnmaskResponse:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


def test_a_member_that_never_answers_costs_the_round_only_its_answer() -> None:
    """It takes the request and goes silent: the handler gives up after the park time (on a
    mock clock, so ask_held's own wait, the longer request timeout, never ends it), the
    round gets no answer from it, and nothing stays held."""
    node, member = _aggregator(), _Silent(ANSWER)
    assert _hold_then_ask(node, member, None) == (False, None)
    assert member.sent == [REQUEST] and node.secagg.parked == {}
    assert secure_talk.park_seconds(node) < node.protocol.request_timeout


def test_a_finished_round_acks_every_input_it_still_holds() -> None:
    node, clock = _aggregator(), trio.testing.MockClock()  # time moves only when told

    async def main() -> None:
        held: list[tuple[str, object]] = []
        async with trio.open_nursery() as nursery:
            for r, name in ((6, "a"), (7, "b"), (8, "c")):
                async def hold(r: int = r, name: str = name) -> None:
                    member = _Member(ANSWER)
                    member.remote = name
                    held.append((name, await secure_talk.hold_for_request(node, member, r)))

                nursery.start_soon(hold)
            await trio.testing.wait_all_tasks_blocked()
            assert len(node.secagg.parked) == 3
            secure_talk.release(node, 7)
            await trio.testing.wait_all_tasks_blocked()
            assert sorted(held) == [("a", None), ("b", None)]  # at once: no time has passed
            assert list(node.secagg.parked) == [(8, "c")]
            clock.jump(secure_talk.park_seconds(node))  # the last one times out and is acked
        assert sorted(held) == [("a", None), ("b", None), ("c", None)]

    trio.run(main, clock=clock)


def test_small_secure_work_runs_on_the_loop_and_large_work_in_the_worker_thread() -> None:
    """A worker-thread hop costs more than masking a small vector: up to INLINE_WORDS words are
    computed in place, longer vectors are offloaded."""
    from types import SimpleNamespace

    from gossipfl.node.secagg_state import INLINE_WORDS, compute

    offloaded: list[int] = []

    async def offload(fn, *args):  # type: ignore[no-untyped-def]
        offloaded.append(args[0])
        return fn(*args)

    node = SimpleNamespace(offload=offload)

    async def main() -> list[int]:
        return [await compute(node, words, lambda n: n * 2, words)  # type: ignore[arg-type]
                for words in (1, INLINE_WORDS, INLINE_WORDS + 1)]

    assert trio.run(main) == [2, 2 * INLINE_WORDS, 2 * (INLINE_WORDS + 1)]
    assert offloaded == [INLINE_WORDS + 1]
