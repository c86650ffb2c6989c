"""Restart, catch-up and the state protocol, on real node objects without a network: the public
estimate x̂ is checkpointed apart from the private model and is all a resumed node publishes;
the DP budget spent survives every kind of stop; under secure aggregation no plaintext path to
one member's estimate exists (the state protocol is not served, nothing is pulled)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from gossipfl.config import DataConfig, ModelConfig, NodeConfig, ProtocolConfig, SecAggConfig
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.wire import Ack, Contribution, LinkRequest
from gossipfl.node import resume, runtime, state_sync
from gossipfl.node import round as round_module
from gossipfl.node.catchup import (
    StateRefusal,
    rounds_in_progress,
    secure_catch_up_round,
    state_refusal,
)
from gossipfl.node.checkpoint import load_checkpoint, save_checkpoint, save_dp_ledger
from gossipfl.node.estimates import OwnEstimate
from gossipfl.node.exchange import send_contribution
from gossipfl.node.learner import LocalLearner
from gossipfl.node.links import topology_digest
from gossipfl.node.resume import restore
from gossipfl.node.round import TrainingStop, persist_round, run_rounds, training_stop
from gossipfl.node.runtime import NeighbourState, Node, NodeError
from gossipfl.node.state_sync import (
    PROTO_STATE,
    catch_up,
    catch_up_now,
    on_state_request,
    pull_neighbourhood,
)
from gossipfl.privacy.dp import DPConfig

DP = DPConfig(enabled=True, unit="node", clip_norm=1.0, noise_multiplier=3.0, delta=1e-5,
              target_epsilon=8.0)
RECORD = DPConfig(enabled=True, clip_norm=1.0, delta=1e-5, target_epsilon=8.0)  # DP-SGD steps
TIGHT = replace(DP, noise_multiplier=1.0)  # two rounds at most


def _node(tmp_path: Path, *, dp: bool = False, secagg: bool = False, mode: str = "sync",
          rounds: int = 10, consensus: int = 4, privacy: DPConfig = DP) -> Node:
    key_file = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key_file)
    config = NodeConfig(
        federation="fed", key_file=str(key_file), out_dir=str(tmp_path), rounds=rounds,
        keep_round_models=False,
        data=DataConfig(dataset="iris", partition="iid"), model=ModelConfig(name="logreg"),
        protocol=ProtocolConfig(mode=mode, max_consensus_rounds=consensus),
        privacy=privacy if dp else DPConfig(),
    )
    node = Node(config, identity, LocalLearner(config))
    if secagg:  # only the flag is read here; a full secagg set-up needs admission keys
        node.config = replace(node.config, secagg=SecAggConfig())
        object.__setattr__(node.config.secagg, "enabled", True)
    node.status = "training"
    return node


def _full(node: Node, value: float) -> np.ndarray:
    return np.full(node.layout.size, value, np.float32)


class FakeChannel:
    """One stream from ``remote``: records what is sent, answers contributions with ok."""

    def __init__(self, remote: str, request: Any = None) -> None:
        self.remote = remote
        self.request = request
        self.sent: list[Any] = []
        self.reads = 0

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        self.sent.append(message)

    async def receive(self, expected: type, max_bytes: int, known: Any = None) -> Any:
        self.reads += 1
        if expected is Ack:
            return Ack("fed", self.sent[-1].round, self.remote, "ok", "")
        assert self.request is not None, "the handler read a request it should have refused"
        return self.request

    async def close(self) -> None:
        pass

    async def reset(self) -> None:
        pass


class FakeNet:
    def __init__(self) -> None:
        self.channels: list[FakeChannel] = []

    async def open(self, peer: str, addrs: Any, protocol: str) -> FakeChannel:
        self.channels.append(FakeChannel(peer))
        return self.channels[-1]


# -- point 9: the DP budget spent survives a clean stop ----------------------------------------


@pytest.mark.parametrize("privacy", [DP, RECORD], ids=["node", "record"])
@pytest.mark.parametrize("status", ["stopped", "done"])
def test_a_clean_stop_with_dp_keeps_the_budget_spent_and_a_resume_restores_it(
        tmp_path: Path, status: str, privacy: DPConfig) -> None:
    node = _node(tmp_path, dp=True, privacy=privacy)
    restore(node)  # nothing saved yet: a fresh start
    for _ in range(3):
        node.budget.spend()
    node.round, node.status = 5, status
    node._write_final()  # SIGTERM, Ctrl-C or the end: the final checkpoint
    assert load_checkpoint(tmp_path / "checkpoint.npz").meta["dp_rounds"] == 3
    if status == "done":
        assert load_checkpoint(tmp_path / "final.npz").meta["dp_rounds"] == 3
    again = _node(tmp_path, dp=True, privacy=privacy)  # same key file, same folder
    assert again.budget.spent == 0
    restore(again)
    assert again.resumed_from == 5
    assert again.budget.spent == 3
    assert again.budget.epsilon() == pytest.approx(node.budget.epsilon())


def test_every_round_checkpoint_carries_the_same_dp_state(tmp_path: Path) -> None:
    node = _node(tmp_path, dp=True)
    restore(node)
    node.budget.spend()
    node.budget.spend()
    persist_round(node, 4)
    state = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state.meta["dp_rounds"] == 2 and state.round == 4
    again = _node(tmp_path, dp=True)
    restore(again)
    assert again.budget.spent == 2


def test_a_dp_state_that_cannot_be_restored_stops_the_node(tmp_path: Path) -> None:
    node = _node(tmp_path, dp=True)
    save_checkpoint(tmp_path / "checkpoint.npz", node.model, 3, public=node.own.vector,
                    status="stopped", dp_rounds=10**6)  # more than the target allows
    with pytest.raises(NodeError, match="forget the privacy budget"):
        restore(node)
    save_checkpoint(tmp_path / "checkpoint.npz", node.model, 3, public=node.own.vector,
                    status="stopped", dp_rounds="3")
    with pytest.raises(NodeError, match="not a count"):
        restore(node)


def test_a_node_stopped_before_loading_its_state_leaves_the_checkpoint_alone(
        tmp_path: Path) -> None:
    # e.g. its port was taken, or its DP state could not be restored: the final write must not
    # replace a checkpoint it never loaded (a fresh model and a budget of 0 would follow)
    node = _node(tmp_path, dp=True)
    save_checkpoint(tmp_path / "checkpoint.npz", _full(node, 3.0), 7, public=node.own.vector,
                    status="stopped", dp_rounds=2)
    node.status = "stopped"
    node._write_final()
    state = load_checkpoint(tmp_path / "checkpoint.npz")
    assert state.round == 7 and state.meta["dp_rounds"] == 2
    # a model of another size is not resumed, but the budget spent on this data still is
    other = _node(tmp_path, dp=True)
    save_checkpoint(tmp_path / "checkpoint.npz", np.zeros(3, np.float32), 7,
                    public=np.zeros(3, np.float32), status="stopped", dp_rounds=2)
    restore(other)
    assert other.resumed_from is None and other.budget.spent == 2


# -- point 3: a resumed node publishes its public estimate, never its model ---------------------


def _stopped_and_resumed(tmp_path: Path) -> tuple[Node, Node]:
    """A DP node stopped at round 5 with model 3s and public estimate 1s, and the node
    resumed from its folder."""
    node = _node(tmp_path, dp=True)
    restore(node)
    node.model, node.own = _full(node, 3.0), OwnEstimate(_full(node, 1.0), round=5)
    node.round, node.status = 5, "stopped"
    node._write_final()
    again = _node(tmp_path, dp=True)
    restore(again)
    return node, again


def test_resume_restores_the_public_estimate_not_the_model(tmp_path: Path) -> None:
    node, again = _stopped_and_resumed(tmp_path)
    np.testing.assert_array_equal(again.model, _full(node, 3.0))  # private, kept to train on
    np.testing.assert_array_equal(again.own.vector, _full(node, 1.0))  # public: x̂
    assert again.own.round == 5


def test_the_first_full_contribution_after_a_resume_carries_the_public_estimate(
        tmp_path: Path) -> None:
    node, again = _stopped_and_resumed(tmp_path)
    again.neighbours["a"] = NeighbourState()  # re-linked: it holds nothing of us
    again.net = FakeNet()  # type: ignore[assignment]
    # the round's delta, privatised (here: the budget is spent, so the delta is zero)
    again.own.publish(again.model, 6, privatise=np.zeros_like)
    trio.run(send_contribution, again, "a", 6, False)
    (sent,) = again.net.channels[0].sent
    assert isinstance(sent, Contribution) and sent.kind == "full" and sent.round == 6
    vector = again.layout.from_tensors(sent.tensors)
    np.testing.assert_array_equal(vector, _full(node, 1.0))  # x̂, and nothing of the model
    assert again.neighbours["a"].peer_holds == 6


def test_an_old_checkpoint_resumes_with_the_initial_model_as_public_estimate(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = _node(tmp_path, dp=True)
    initial = node.own.vector.copy()
    # the format before this change: the model only (here with the per-round DP count)
    save_checkpoint(tmp_path / "checkpoint.npz", _full(node, 3.0), 6, status="training",
                    dp_rounds=2)
    caplog.set_level(logging.WARNING)
    restore(node)
    np.testing.assert_array_equal(node.model, _full(node, 3.0))
    np.testing.assert_array_equal(node.own.vector, initial)  # never the private model
    assert not np.array_equal(node.own.vector, node.model)
    assert node.budget.spent == 2
    assert "does not hold the public estimate" in caplog.text


# -- point 1: no plaintext path to an estimate under secure aggregation -------------------------


def test_state_refusal_rules() -> None:
    assert state_refusal(secure_aggregation=True, neighbour=True,
                         member=True) is StateRefusal.SECURE_AGGREGATION
    assert state_refusal(secure_aggregation=False, neighbour=False,
                         member=True) is StateRefusal.NOT_NEIGHBOUR
    assert state_refusal(secure_aggregation=False, neighbour=True,
                         member=False) is StateRefusal.NOT_NEIGHBOUR
    assert state_refusal(secure_aggregation=False, neighbour=True, member=True) is None


def _request(node: Node, sender: str) -> LinkRequest:
    return LinkRequest("fed", sender, topology_digest(node), 3, rejoin=True)


def test_under_secure_aggregation_a_state_request_from_a_neighbour_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the aggregator of this node's neighbourhood is a neighbour: it asks, it gets nothing
    node = _node(tmp_path, secagg=True)
    node.neighbours["agg"] = NeighbourState()
    node.own = OwnEstimate(_full(node, 1.0), round=4)
    channel = FakeChannel("agg", _request(node, "agg"))
    caplog.set_level(logging.WARNING)
    trio.run(on_state_request, node, channel)
    assert channel.sent == [] and channel.reads == 0  # refused before reading anything
    assert node.rejections["state_refused_secagg"] == 1
    assert "secure aggregation" in caplog.text


def test_without_secure_aggregation_the_state_served_is_the_public_estimate(
        tmp_path: Path) -> None:
    node = _node(tmp_path, dp=True)
    node.neighbours["a"] = NeighbourState()
    node.model, node.own = _full(node, 3.0), OwnEstimate(_full(node, 1.0), round=4)
    channel = FakeChannel("a", _request(node, "a"))
    trio.run(on_state_request, node, channel)
    (served,) = channel.sent
    assert served.kind == "full" and served.round == 4
    np.testing.assert_array_equal(node.layout.from_tensors(served.tensors), _full(node, 1.0))
    # a stranger gets nothing, and nothing it sent is read
    stranger = FakeChannel("x", _request(node, "x"))
    trio.run(on_state_request, node, stranger)
    assert stranger.sent == [] and stranger.reads == 0
    assert node.rejections["not_neighbour"] == 1


def test_a_node_that_published_nothing_serves_no_state(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Its x̂ is the initial model, as of no round: labelled round 0 it would stand for its real
    round 0, which the puller would then refuse as stale while holding another vector."""
    node = _node(tmp_path)
    node.neighbours["a"] = NeighbourState()
    assert node.own.round == -1
    channel = FakeChannel("a", _request(node, "a"))
    caplog.set_level(logging.INFO)
    trio.run(on_state_request, node, channel)
    assert channel.sent == [] and node.neighbours["a"].peer_holds == -1
    assert "no public estimate published yet" in caplog.text


class _RelinkedWhileSending(FakeChannel):
    """A channel whose send lets a re-link of its peer run (links.reset_link) meanwhile."""

    def __init__(self, node: Node, remote: str, request: Any, *, drop: bool = False) -> None:
        super().__init__(remote, request)
        self.node, self.drop = node, drop

    async def send(self, message: Any, max_bytes: int, known: Any = None) -> None:
        await trio.sleep(0.1)
        if self.drop:
            del self.node.neighbours[self.remote]
        else:
            self.node.neighbours[self.remote] = NeighbourState(linked_at=trio.current_time())
        await super().send(message, max_bytes)


def test_the_state_served_counts_as_held_only_on_the_link_it_went_over(tmp_path: Path) -> None:
    node = _node(tmp_path)
    node.neighbours["a"] = NeighbourState()
    node.own = OwnEstimate(_full(node, 1.0), round=4)
    trio.run(on_state_request, node, FakeChannel("a", _request(node, "a")))
    assert node.neighbours["a"].peer_holds == 4  # our next contribution to it: a delta
    # linked afresh while the state went out: the new link holds nothing of ours yet (the
    # peer forgot it at the re-link), so the next contribution is full; dropped: no error
    node.neighbours["b"] = NeighbourState()
    trio.run(on_state_request, node, _RelinkedWhileSending(node, "b", _request(node, "b")),
             clock=trio.testing.MockClock(autojump_threshold=0))
    assert node.neighbours["b"].peer_holds == -1
    node.neighbours["c"] = NeighbourState()
    trio.run(on_state_request, node, _RelinkedWhileSending(node, "c", _request(node, "c"),
                                                            drop=True),
             clock=trio.testing.MockClock(autojump_threshold=0))
    assert "c" not in node.neighbours


class FakeHost:
    """What Node.run asks of a libp2p host, recording the protocols it serves."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def run(self, listen_addrs: Any) -> Any:
        yield

    def set_stream_handler(self, protocol: str, handler: Any) -> None:
        self.handlers[protocol] = handler

    def get_addrs(self) -> list[str]:
        return []


class _Registered(Exception):
    pass


@pytest.mark.parametrize("secagg", [True, False])
def test_the_state_protocol_is_registered_only_without_secure_aggregation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secagg: bool) -> None:
    node = _node(tmp_path, secagg=secagg)
    host = FakeHost()
    monkeypatch.setattr(runtime, "make_host", lambda identity, listen, **_: (host, listen))
    monkeypatch.setattr(runtime.signal, "signal", lambda *args: None)  # leave pytest's alone

    def stop_here(_: Node) -> None:  # the step after the handlers are registered
        raise _Registered

    monkeypatch.setattr(resume, "restore", stop_here)
    with pytest.raises((_Registered, BaseExceptionGroup)) as raised:  # a nursery may group it
        trio.run(node.run, clock=trio.testing.MockClock(autojump_threshold=0))
    assert raised.type is _Registered or raised.value.subgroup(_Registered) is not None
    assert runtime.PROTO_LINK in host.handlers  # the registration did run
    assert (PROTO_STATE in host.handlers) is not secagg
    assert node.serves_state is not secagg


def test_under_secure_aggregation_a_restart_pulls_nothing_and_goes_on_at_the_neighbours_round(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path, secagg=True)
    node.neighbours = {p: NeighbourState() for p in ("a", "b", "c")}
    # heartbeats carry the last round finished; a masked input names the round it is for
    node.member_state = {"a": (11, "training"), "b": (10, "training"), "c": (2, "training"),
                         "x": (10**6, "training")}  # x is no neighbour: not counted
    node.secagg.peer_status["b"] = (12, 0.5, False)
    node.round = node.resumed_from = 5
    node.model = _full(node, 3.0)

    async def no_pull(_: Node) -> dict:
        raise AssertionError("a neighbour's estimate was pulled under secure aggregation")

    monkeypatch.setattr(state_sync, "pull_neighbourhood", no_pull)
    caplog.set_level(logging.WARNING)
    trio.run(catch_up, node)
    assert node.start_round == 12 and node.round == 11
    np.testing.assert_array_equal(node.model, _full(node, 3.0))  # its own model
    assert node.catch_ups == [{"from_round": 5, "to_round": 12, "neighbours": 3,
                               "why": "restart"}]
    assert "masked sum" in caplog.text


@pytest.mark.parametrize(
    ("reports", "jump"),
    [
        ({"a": 20, "b": 20, "c": 3}, 21),  # most are ahead: their round
        ({"a": 10**6, "b": 8, "c": 8}, 10),  # one far-off claim: stay
        ({}, 10),  # nobody reported: stay
    ],
)
def test_under_secure_aggregation_a_node_behind_jumps_without_pulling(
        tmp_path: Path, reports: dict[str, int], jump: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path, secagg=True)
    node.neighbours = {p: NeighbourState() for p in ("a", "b", "c")}
    node.member_state = {p: (r, "training") for p, r in reports.items()}
    node.round, node.behind = 9, 25
    node.model = _full(node, 3.0)

    async def no_pull(_: Node, peer: str, pulled: dict) -> None:
        raise AssertionError("a state request was sent under secure aggregation")

    monkeypatch.setattr(state_sync, "pull_state", no_pull)
    assert trio.run(catch_up_now, node, 10) == jump
    assert node.behind is None
    np.testing.assert_array_equal(node.model, _full(node, 3.0))
    assert node.round == jump - 1 if jump > 10 else node.round == 9
    assert trio.run(pull_neighbourhood, node) == {}  # and never by another road


def test_rounds_in_progress_from_heartbeats_and_masked_inputs() -> None:
    beats = {"a": (7, "training"), "b": (7, "done"), "c": (-1, "joining"), "d": (3, "consensus")}
    assert rounds_in_progress(["a", "b", "c", "d", "e"], beats, {"d": 9, "e": 2}) == {
        "a": 8, "d": 9, "e": 2}
    assert secure_catch_up_round(5, []) == 5
    assert secure_catch_up_round(5, [8, 9, 2]) == 8
    assert secure_catch_up_round(5, [1, 2, 3]) == 5  # never backwards


# -- point 5 and every other stop: the model becomes x̂ before anything more is published -------


@pytest.mark.parametrize(
    ("r", "neighbours_done", "spent", "expected"),
    [
        (3, False, False, None),
        (10, False, False, TrainingStop.ROUNDS_DONE),
        (14, False, False, TrainingStop.ROUNDS_DONE),  # a restart or jump past them
        (3, True, False, TrainingStop.NEIGHBOURS_DONE),
        (3, False, True, TrainingStop.BUDGET_SPENT),
    ],
)
def test_training_stop_rules(r: int, neighbours_done: bool, spent: bool,
                             expected: TrainingStop | None) -> None:
    assert training_stop(r, 10, neighbours_done=neighbours_done, budget_spent=spent) is expected


def _record_rounds(node: Node, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Stand in for the round (train + 1, publish with a stand-in privatisation) and record,
    at the start of each, what the node would publish: model − x̂ (delta) or x̂."""
    seen: list[dict[str, Any]] = []

    async def fake_round(node: Node, r: int, training: bool) -> None:
        seen.append({"round": r, "training": training, "status": node.status,
                     "unpublished": float(np.abs(node.model - node.own.vector).max())})
        half = node.model + 1.0 if training else node.model
        node.own.publish(half, r, privatise=(lambda d: d * 0.5) if training else None)
        node.model, node.round = half, r

    async def fake_done(node: Node) -> None:
        seen.append({"round": "done",
                     "unpublished": float(np.abs(node.model - node.own.vector).max())})

    monkeypatch.setattr(round_module, "run_round", fake_round)
    monkeypatch.setattr(round_module, "announce_done", fake_done)
    node.neighbours.setdefault("a", NeighbourState())  # a live neighbour: no round is held
    return seen


def _private(node: Node) -> None:
    node.model, node.own = _full(node, 5.0), OwnEstimate(_full(node, 1.0), round=2)


@pytest.mark.parametrize("dp", [True, False])
def test_async_early_stop_resets_to_the_public_estimate_under_dp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dp: bool) -> None:
    node = _node(tmp_path, dp=dp, mode="async", rounds=10, consensus=2)
    seen = _record_rounds(node, monkeypatch)
    node.neighbours["a"] = NeighbourState()
    message = Contribution("fed", 2, "a", node.peer_id, 1, "full", -1, 0.5, False, (),
                           training=False)  # a has finished training
    node.estimates.apply(message, _full(node, 0.0))
    _private(node)
    node.start_round = 3
    trio.run(run_rounds, node)
    first = seen[0]
    assert first["round"] == 3 and first["training"] is False and first["status"] == "consensus"
    if dp:  # nothing un-noised left: the model is x̂ before the round publishes
        assert first["unpublished"] == 0.0
        assert all(s["unpublished"] == 0.0 for s in seen)
    else:  # without DP the trained model stays (plain CHOCO publishes it anyway)
        assert first["unpublished"] == 4.0


def test_a_spent_budget_stops_training_and_resets_to_the_public_estimate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path, dp=True, rounds=10, consensus=2, privacy=TIGHT)
    seen = _record_rounds(node, monkeypatch)
    while node.budget.can_spend():
        node.budget.spend()
    _private(node)
    node.start_round = 3
    trio.run(run_rounds, node)
    assert seen[0]["round"] == 3 and seen[0]["training"] is False
    assert seen[0]["unpublished"] == 0.0
    assert node.dp_exhausted_round == 3


@pytest.mark.parametrize("start", [12, 14])  # a restart into consensus, or past every round
def test_a_restart_past_the_training_rounds_publishes_only_the_public_estimate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start: int) -> None:
    node = _node(tmp_path, dp=True, rounds=10, consensus=4)
    seen = _record_rounds(node, monkeypatch)
    _private(node)  # resumed: the checkpoint's private model, its x̂ apart
    node.start_round = start
    trio.run(run_rounds, node)
    assert seen and all(s["unpublished"] == 0.0 for s in seen)
    assert seen[-1]["round"] == "done"


def test_training_rounds_end_with_the_reset_and_a_public_catch_up_is_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = _node(tmp_path, dp=True, rounds=10, consensus=2)
    seen = _record_rounds(node, monkeypatch)
    _private(node)
    node.start_round = 8
    trio.run(run_rounds, node)
    assert [s["training"] for s in seen[:3]] == [True, True, False]
    assert seen[2]["unpublished"] == 0.0  # round 10: consensus starts from x̂
    # a catch-up (no secure aggregation) that lands past the training rounds took the
    # neighbours' public estimates: nothing private to reset, the pulled mean is kept
    node = _node(tmp_path, dp=True, rounds=10, consensus=2)
    seen = _record_rounds(node, monkeypatch)
    _private(node)
    node.start_round, node.round, node.behind = 9, 8, 25

    async def pull(_: Node) -> dict[str, tuple[int, np.ndarray]]:
        return {p: (11, _full(node, 7.0)) for p in ("a", "b")}

    monkeypatch.setattr(state_sync, "pull_neighbourhood", pull)
    trio.run(run_rounds, node)
    assert seen[0]["round"] == 11 and seen[0]["training"] is False
    assert seen[0]["unpublished"] == 6.0  # the pulled mean (7) against x̂ (1): kept


@pytest.mark.parametrize("privacy", [DP, RECORD], ids=["node", "record"])
def test_budget_spent_before_a_sigkill_is_not_forgotten(tmp_path: Path,
                                                         privacy: DPConfig) -> None:
    """Killed between its send and its round's checkpoint: the write-ahead ledger, written
    before the send, still holds what was spent (with or without a checkpoint before it)."""
    node = _node(tmp_path, dp=True, privacy=privacy)
    restore(node)
    node.budget.spend()
    persist_round(node, 0)  # round 0 checkpointed: 1 spent
    node.budget.spend()
    node.budget.spend()
    save_dp_ledger(node)  # round 1 sent, then SIGKILL before its checkpoint
    again = _node(tmp_path, dp=True, privacy=privacy)
    restore(again)
    assert again.budget.spent == 3 and again.resumed_from == 0
    # no checkpoint at all (killed in round 0): the ledger alone
    (tmp_path / "checkpoint.npz").unlink()
    for stale in tmp_path.glob("checkpoint.prev.npz"):
        stale.unlink()
    fresh = _node(tmp_path, dp=True, privacy=privacy)
    restore(fresh)
    assert fresh.budget.spent == 3 and fresh.resumed_from is None


def test_an_unreadable_dp_ledger_stops_the_node(tmp_path: Path) -> None:
    node = _node(tmp_path, dp=True)
    (tmp_path / "dp_ledger.json").write_text("{not json")
    with pytest.raises(NodeError, match="DP ledger"):
        restore(node)


def test_a_restarted_node_keeps_distrusting_the_neighbours_its_filter_found_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # issue 9: the distance filter's counts (rounds left out, rounds seen) were not
    # checkpointed, so a restarted node trusted a Byzantine neighbour again
    node = _node(tmp_path)
    restore(node)
    node.filter_counts = {"liar": (7, 9), "honest": (0, 9)}
    node.round, node.status = 9, "stopped"
    node._write_final()
    again = _node(tmp_path)
    restore(again)
    assert again.filter_counts == {"liar": (7, 9), "honest": (0, 9)}
    # counts that are not sound are logged and skipped, never trusted
    path = tmp_path / "checkpoint.npz"
    state = load_checkpoint(path)
    meta = {**state.meta, "filter_counts": {"liar": [7, 9], "bad": [9, 7], "worse": "x"}}
    save_checkpoint(path, state.model, state.round, public=state.public,
                    public_round=state.public_round,
                    **{k: v for k, v in meta.items() if k not in ("format", "public_round")})
    third = _node(tmp_path)
    with caplog.at_level(logging.ERROR, logger="gossipfl.checkpoint"):
        restore(third)
    assert third.filter_counts == {"liar": (7, 9)}
    assert "'bad'" in caplog.text and "'worse'" in caplog.text


def test_a_lost_member_is_dialled_where_it_said_it_listens_not_where_hearsay_puts_it(
        tmp_path: Path) -> None:
    # a membership flooder re-announces a forgotten member at a trap address: the re-link must
    # dial the addresses the member gave in its own heartbeat (addr_book), not the table's
    node = _node(tmp_path)
    own, trap = ("/ip4/127.0.0.1/tcp/4001",), ("/ip4/127.0.0.1/tcp/6666",)
    node.addr_book["lost"] = own
    node.membership.heard_from("lost", trap, 0.0)
    assert node.addrs_of("lost") == own
    # a member never met is found through the table (hearsay is how first contact happens)
    node.membership.heard_from("stranger", trap, 0.0)
    assert node.addrs_of("stranger") == trap
