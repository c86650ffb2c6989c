"""The round, composed in one place: train → delta → (privacy) → send → receive → aggregate.

Rounds are each node's own business. A node advances when it holds every live neighbour's
contribution for the round, or when the round timeout passes; a neighbour that fails to deliver
``max_missed_rounds`` rounds in a row is dropped (and the drop is logged and reported). After the
training rounds come consensus rounds (averaging only) until this node and its neighbours agree
within the tolerance, or the consensus round limit is reached. In async mode a training round
waits only for the neighbours more than ``protocol.max_lead`` rounds behind (wait_async), and a
node its neighbours wait for trains less (pace.py).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import trio

from gossipfl.aggregation.bounds import mean_within, sum_bound
from gossipfl.aggregation.mixing import (
    choco_step,
    neighbour_weights,
    relative_disagreement,
    weighted_neighbour_weights,
)
from gossipfl.config import Mode
from gossipfl.gossip.codes import NodeStatus
from gossipfl.node import linger, settle
from gossipfl.node.accelerate import consensus_step
from gossipfl.node.checkpoint import persist_round, save_dp_ledger, sync_due
from gossipfl.node.compression import round_compressor
from gossipfl.node.exchange import (
    close_channels,
    finite,
    send_to_neighbours,
    update_liveness,
    wait_async,
    wait_for_neighbours,
)
from gossipfl.node.learner import RecordDP
from gossipfl.node.outer import end_average, outer_step
from gossipfl.node.pace import SLACK, WINDOW, local_epochs, work_share
from gossipfl.node.phases import timed
from gossipfl.node.robust_step import robust_step, screen_losses
from gossipfl.node.settle import Verdict
from gossipfl.node.state import Node
from gossipfl.node.state_sync import catch_up_now
from gossipfl.node.summary import peak_rss_bytes
from gossipfl.node.termination import Hold
from gossipfl.privacy.dp import PrivacyUnit, privatise_update

log = logging.getLogger("gossipfl.round")


class TrainingStop(enum.Enum):
    """Why a node stops training (it does not train again in this run)."""

    ROUNDS_DONE = "the training rounds are over"
    NEIGHBOURS_DONE = "every neighbour has finished training"
    BUDGET_SPENT = "the privacy budget is spent"
    DONE = "the node is done"


def training_stop(r: int, rounds: int, *, neighbours_done: bool,
                  budget_spent: bool) -> TrainingStop | None:
    """Whether a node still training stops at round ``r``, and why; None: it trains."""
    if r >= rounds:  # also a restart or a catch-up that lands past the training rounds
        return TrainingStop.ROUNDS_DONE
    if neighbours_done:
        return TrainingStop.NEIGHBOURS_DONE
    if budget_spent:
        return TrainingStop.BUDGET_SPENT
    return None


def budget_spent(node: Node) -> bool:
    """With DP on: whether the node can no longer spend privacy budget on a round."""
    return node.budget is not None and not node.budget.can_spend()


def stop_training(node: Node, r: int, why: TrainingStop) -> None:
    """The one place training ends, whatever the reason (training rounds over, async early
    stop, budget spent, a restart or catch-up past the training rounds, done).

    With node-level DP the model becomes the public estimate x̂ (already privatised) before anything
    more is published: from here on only public estimates are mixed and published, which is
    post-processing and spends nothing; the un-noised model never leaves. A model known to
    hold only public values (a catch-up took the neighbours' public estimates) is kept.
    """
    if why is TrainingStop.BUDGET_SPENT and node.dp_exhausted_round is None:
        node.dp_exhausted_round = r
        config = node.config.privacy
        log.warning("privacy budget spent: epsilon %.3f of %.3f at delta %g after %d %s; "
                    "no longer training", node.budget.epsilon(), config.target_epsilon,
                    config.delta, node.budget.spent,
                    "DP-SGD steps" if node.budget.unit == "record" else "rounds")
    elif why is not TrainingStop.DONE:
        log.info("round %d: stopping training: %s", r, why.value)
    # train.outer_average: the tail's mean, before anything is published (a model known to
    # hold only public values is kept: the mean of private models would not be)
    end_average(node, r, keep=node.model_public)
    privacy = node.config.privacy
    # record unit: the model itself is DP-SGD's output (post-processing from here on); node
    # unit: the model is un-noised, and only the noisy x̂ may be published
    if privacy.enabled and privacy.unit == PrivacyUnit.NODE and not node.model_public:
        node.model = node.own.vector.copy()
        log.info("round %d: DP: the model is now this node's public estimate; only public "
                 "(already privatised) estimates are mixed and published from here on", r)
    node.model_public = True


async def run_rounds(node: Node) -> None:
    """Training rounds, then consensus rounds, then a last 'done' contribution; then the node
    lingers, and consensus rounds start again if a member comes back with another model
    (linger.py), until it lingers out.

    Before each round a node with too few live neighbours holds it (settle.hold). Consensus
    rounds end when the settled depth reaches the horizon (the federation holds one model:
    termination.py), or after ``max_consensus_rounds`` of them, not counting those spent
    awaiting a missing wanted neighbour (paced a heartbeat apart, bounded by gone_seconds)."""
    r, stopped = node.start_round, None
    while True:
        r, stopped = await rounds_until_done(node, r, stopped)
        stop_training(node, r, TrainingStop.DONE)  # no consensus round ran (a restart past them)
        await announce_done(node)
        if not await linger.linger(node):
            return
        r = node.round + 1  # reopened: rounds go on numbering


async def rounds_until_done(node: Node, r: int,
                            stopped: TrainingStop | None) -> tuple[int, TrainingStop | None]:
    """Rounds from ``r`` until the node finishes; returns the round it stopped at and why it
    stopped training (None: it never did)."""
    config = node.config
    while True:
        # rounds spent awaiting a missing neighbour do not count toward the limit
        total = settle.round_limit(node)
        if node.behind is not None:  # cut off or paused while the neighbours went on
            r = await catch_up_now(node, r)
        if r >= total:
            if r > config.rounds and stopped is not None:
                log.warning("consensus round limit reached at round %d (disagreement %.2e, "
                            "settled depth %d of %d)", r - 1, node.disagreement,
                            node.settle.depth, node.settle.horizon)
            return r, stopped
        if stopped is None:
            stopped = training_stop(r, config.rounds,
                                    neighbours_done=async_neighbours_done_training(node, r),
                                    budget_spent=budget_spent(node))
            if stopped is not None:
                stop_training(node, r, stopped)
        training = stopped is None
        decision = await settle.hold(node, r)
        if decision is Hold.GIVE_UP:
            return r, stopped
        if decision is Hold.ALONE and training:
            node.isolated_rounds += 1  # allow_alone: a training round with no neighbour
        if training:
            node.model_public = False  # the round trains on private data
        node.status = NodeStatus.TRAINING if training else NodeStatus.CONSENSUS
        verdict = await run_round(node, r, training)
        if verdict is Verdict.FINISH:
            log.info("consensus reached at round %d (disagreement %.2e; settled depth %d: "
                     "every member within %d hops agrees)", r, node.disagreement,
                     node.settle.depth, node.settle.horizon - 1)
            return r, stopped
        if verdict is Verdict.AWAIT:
            await settle.pace(node)
        elif node.settle.reopened:
            await linger.await_live(node)
        r += 1


def async_neighbours_done_training(node: Node, r: int) -> bool:
    """Async mode: a slower node stops training once all its neighbours have finished theirs,
    so the federation is not held to the pace of its slowest members."""
    if node.config.protocol.mode is not Mode.ASYNC or r == 0 or not node.neighbours:
        return False
    return all(p in node.estimates.peers and not node.estimates.peers[p].training
               for p in node.neighbours)


def async_local_epochs(node: Node, r: int, record: dict[str, Any]) -> float | None:
    """Async mode with ``protocol.pace``: the local work for training round ``r`` (pace.py), from
    this node's last training round (its work; whether it waited for a neighbour) and how far
    the neighbour furthest ahead is; the lag goes into ``record``. None elsewhere: the
    configured epochs."""
    protocol = node.config.protocol
    if protocol.mode is not Mode.ASYNC or not protocol.pace:
        return None
    training = [e.round for p, e in node.estimates.peers.items()
                if p in node.neighbours and e.training and not e.done]
    lag = max(0, max(training, default=r - 1) - (r - 1))
    recent = [h for h in node.history[-WINDOW:]  # round 0 compiles: not a measure of work
              if h["phase"] == "train" and "local_epochs" in h and h["round"] > 0]
    configured = node.config.train.local_epochs
    record["lag"] = lag
    if not recent:
        return float(configured)
    share = work_share([h["work_seconds"] for h in recent], [h["round_seconds"] for h in recent])
    # behind means a neighbour waits for us: with a bounded lead L it is L + 1 rounds ahead
    slack = protocol.max_lead if protocol.max_lead is not None else SLACK
    return local_epochs(recent[-1]["local_epochs"], lag, held=recent[-1].get("held", False),
                        work_share=share, configured=configured,
                        minimum=protocol.pace_min_epochs, slack=slack)


def async_joins_late(node: Node, r: int) -> bool:
    """Async mode with a bounded lead L: whether this node skips training round ``r`` because a
    neighbour still training is further ahead than the bound allows. Such a neighbour never
    waited for us: we joined late (our first round was slow, or we started late). Like a restarted
    node, we take up the round the neighbours are in rather than train, one by one, rounds they
    finished long ago: it goes on at the round the furthest neighbour waits for (its round less
    L), from the neighbours' mean model plus its own last update. Skipped rounds do not age the
    estimates we hold (staleness counts the rounds we take part in)."""
    lead = node.config.protocol.max_lead
    if node.config.protocol.mode is not Mode.ASYNC or lead is None or r == 0:
        return False
    ahead = max((e.round for p, e in node.estimates.peers.items()
                 if p in node.neighbours and e.training and not e.done), default=-1)
    resume = ahead - lead  # a neighbour can be L + 1 rounds past our last round, no further
    if resume <= r:
        return False
    if node.estimates.clock == r - 1 and node.own.last_delta is not None:
        # the first round skipped: take up the neighbours' mean model (as a restarted node does),
        # plus the update this node trained in its last round (its data's share, which mixing its
        # stale estimate would mostly lose)
        held = [e.vector for p, e in node.estimates.peers.items() if p in node.neighbours]
        node.model = (np.mean(held, axis=0) + node.own.last_delta).astype(np.float32)
    if r + 1 == resume:
        log.info("joined late: neighbours at round %d; rounds up to %d skipped", ahead, r)
    for estimate in node.estimates.peers.values():
        estimate.arrived = max(estimate.arrived, r)
    node.round = r  # what neighbours may send us is bounded relative to this
    return True


async def run_round(node: Node, r: int, training: bool) -> Verdict:
    """One round, top to bottom; returns what it says of termination (a training round goes
    on; a consensus round may finish the node, or find it awaiting a missing neighbour)."""
    if training and async_joins_late(node, r):
        return Verdict.GO_ON
    start = trio.current_time()
    node.estimates.clock = r
    record: dict[str, Any] = {"round": r, "phase": "train" if training else "consensus"}

    # 1. train locally (in a worker thread: the node keeps serving its peers meanwhile)
    round_start = node.model  # outer momentum's x (train.outer_momentum; node/outer.py)
    if training:
        epochs = async_local_epochs(node, r, record)  # None: the configured epochs
        with timed(record, "train_step"):  # on the send phase's clock: hand-offs included
            result = await node.offload(node.learner.train, node.model, r, epochs,
                                        record_dp(node))
        if node.config.slowdown > 1.0:  # an emulated slower machine
            await trio.sleep((node.config.slowdown - 1.0) * result.seconds)
        if epochs is not None:
            record.update(local_epochs=result.epochs, work_seconds=trio.current_time() - start)
        half_step = result.vector
        if not np.isfinite(half_step).all():
            node.diverged_rounds.append(r)
            log.error("round %d: local training diverged (NaN or infinite parameters); this "
                      "round's training is discarded and the model before it kept", r)
            half_step = node.model if np.isfinite(node.model).all() else node.own.vector.copy()
        record.update(train_loss=result.loss, train_seconds=result.seconds)
    else:  # with DP on the model holds public values only by now (stop_training)
        half_step = node.model
        record.update(train_loss=None, train_seconds=0.0)

    # 2.+3. q = DP(x½ − x̂) (clip + Gaussian noise, while the budget lasts); x̂ += q, exactly as
    # every neighbour will apply it (a delta in a full round an aggregator waived: secure_sparse)
    node.own.publish(half_step, r, privatise=privacy_step(node, r, training, record),
                     compress=round_compressor(node, r))
    if training:  # what this round spent is on disk before anything it trained on is sent
        await node.offload(save_dp_ledger, node)

    if node.config.secagg.enabled:
        # 4.-6. masked inputs out, wait, unmask the neighbourhood's sum (secure_round.py)
        missing = await secure_exchange(node, r, half_step, start, record)
    else:
        # 4. send our contribution to every live neighbour
        with timed(record, "send", node.sched):
            await send_to_neighbours(node, r, done=False)

        # 5. receive: wait for the neighbours' contributions for this round, or the timeout
        wait_start = trio.current_time()
        if node.config.protocol.mode is Mode.ASYNC:
            missing = await wait_async(node, training, start + node.protocol.round_timeout,
                                       record)
        else:
            missing = await wait_for_neighbours(node, r, start + node.protocol.round_timeout)
        record["wait_seconds"] = trio.current_time() - wait_start

        # 6. aggregate: Metropolis–Hastings weights over the neighbours we hold estimates of
        losses = await screen_losses(node, r) if node.config.robust.screen else None
        node.model = aggregate(node, half_step, r, record, losses)
        if not training:  # heavy-ball consensus (node/accelerate.py)
            consensus_step(node, r, half_step, missing, record)
        present = [p for p in node.neighbours if p in node.estimates.peers]
        node.disagreement = relative_disagreement(
            node.model, [node.estimates.peers[p].vector for p in present])
    if training:  # momentum on the averaged model: the node's own, never what it publishes
        outer_step(node, r, round_start)
    node.round = r
    await update_liveness(node, r, missing)

    # 7. measure (every train.eval_every rounds, and in the last training round and the last
    # round) and persist
    verdict = Verdict.GO_ON if training else finished(node, r)
    ending = verdict is Verdict.FINISH
    if evaluates(r, node.config.train.eval_every, last_training=node.config.rounds - 1,
                 last=settle.round_limit(node) - 1, ending=ending):
        evaluation = await node.offload(node.learner.evaluate, node.model)
        record.update(test_loss=evaluation.loss, test_accuracy=evaluation.accuracy,
                      eval_seconds=evaluation.seconds)
        node.final_accuracy = evaluation.accuracy
    else:
        record.update(test_loss=None, test_accuracy=None, eval_seconds=0.0)
    record.update(
        round_seconds=trio.current_time() - start,
        time=trio.current_time(), disagreement=finite(node.disagreement),
        neighbours=sorted(node.neighbours), degree=len(node.neighbours), missing=missing,
        bytes_sent=node.traffic.bytes_sent, bytes_received=node.traffic.bytes_received,
        messages_sent=node.traffic.messages_sent, messages_received=node.traffic.messages_received,
        rejected=dict(node.rejections), timeouts=node.timeouts, peak_rss_bytes=peak_rss_bytes(),
        depth=node.settle.depth, awaited=list(node.settle.awaited),
        reopened=node.settle.reopened,
    )
    persist_start = trio.current_time()
    if sync_due(node, persist_start):  # an fsync: in a worker thread
        await node.offload(persist_round, node, r, True)
    else:  # a write to the page cache (well under a millisecond): no thread hand-off
        persist_round(node, r, False)
    record["persist_seconds"] = trio.current_time() - persist_start
    node.write_metrics(record)
    log.info("round %d %s: acc %s loss %s disagreement %.2e missing %d (%.2f s)", r,
             record["phase"], _figure(record["test_accuracy"]), _figure(record["test_loss"]),
             node.disagreement, len(missing), record["round_seconds"])
    return verdict


def evaluates(r: int, every: int, *, last_training: int, last: int, ending: bool) -> bool:
    """Whether round ``r`` evaluates the model on the test set: every ``every`` rounds (0,
    every, 2 every, ...), and always in the last training round, the round limit's last round,
    and a round that ends the node's run (its final model)."""
    return ending or r % every == 0 or r in (last_training, last)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def record_dp(node: Node) -> RecordDP | None:
    """Record-level DP for local training (DP-SGD), or None (no DP, or node-level DP)."""
    if node.budget is None or node.budget.unit is not PrivacyUnit.RECORD:
        return None
    assert node.dp_rng is not None
    return RecordDP(node.budget, node.dp_rng)


def privacy_step(node: Node, r: int, training: bool,
                 record: dict[str, Any]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The node-level DP transform for this round's delta, or None (no DP, consensus rounds, or
    record-level DP: DP-SGD already privatised the training, and what is published from its
    output is post-processing, so no second noise is added and nothing more is spent)."""
    if node.budget is None or not training:
        return None
    config = node.budget.config
    if node.budget.unit is PrivacyUnit.RECORD:
        record["epsilon"] = node.budget.epsilon()
        if node.budget.exhausted and node.dp_exhausted_round is None:
            node.dp_exhausted_round = r
        return None
    if not node.budget.can_spend():
        if node.dp_exhausted_round is None:
            node.dp_exhausted_round = r
            log.warning("privacy budget spent: epsilon %.3f of %.3f at delta %g after %d rounds; "
                        "no longer contributing updates", node.budget.epsilon(),
                        config.target_epsilon, config.delta, node.budget.rounds_spent)
        record["epsilon"] = node.budget.epsilon()
        return np.zeros_like
    record["epsilon"] = node.budget.spend()
    rng = node.dp_rng
    assert rng is not None
    return lambda delta: privatise_update(delta, config, rng)


async def secure_exchange(node: Node, r: int, half_step: np.ndarray, start: float,
                          record: dict[str, Any]) -> list[str]:
    """Steps 4-6 under secure aggregation; returns the neighbours whose input is missing."""
    from gossipfl.node import secure_round, secure_sparse  # only with secure aggregation on

    with timed(record, "send", node.sched):
        checked = await secure_round.send_masked_inputs(node, r, done=False)
    if checked:  # what the range check found in our own inputs (gossipfl.node.secure_inputs)
        record["input_check"] = checked
    wait_start = trio.current_time()
    missing = await secure_round.wait_for_inputs(node, r, start + node.protocol.round_timeout)
    record["wait_seconds"] = trio.current_time() - wait_start
    sum_start = trio.current_time()
    result = await secure_round.secure_sum(node, r)
    record["secure_sum_seconds"] = trio.current_time() - sum_start  # sign, unmask, combine
    node.secagg.forget_before(r)
    if result is None:
        record["secure_aggregation"] = "refused"
        node.secagg.running = None  # random-k: deltas wait for a full round (secure_sparse)
        node.model = half_step.copy()
        return missing
    total, weights, survivors = result
    if secure_sparse.compressed(node):  # random-k deltas: CHOCO on a running sum
        return secure_sparse.mix(node, r, half_step, result, record, missing)
    bound = sum_bound(half_step, node.config.robust.norm_ratio, len(survivors))
    if not mean_within(total / weights, half_step, bound):
        # masking hides who sent what: only the sum can be checked (a member that scaled its
        # input, or sent words that decode far off), and then the round's sum is refused; the
        # bound is for its size: one member past the plain bound moves the mean past it
        node.rejections["norm_sum"] += 1
        log.warning("round %d: the secure sum's neighbourhood mean lies farther than %.3g "
                    "from our model (robust.norm_ratio, %d contributors): not mixed in", r,
                    bound, len(survivors))
        record["secure_aggregation"] = "refused: norm bound"
        node.model = half_step.copy()
        return missing
    record["secure_aggregation"] = f"{len(survivors)} contributors"
    node.model = ((1.0 - weights) * half_step + total).astype(np.float32)
    neighbourhood_mean = total / weights  # all this node learns: an average, never one input
    node.disagreement = relative_disagreement(node.model, [neighbourhood_mean])
    return missing


def aggregate(node: Node, half_step: np.ndarray, r: int, record: dict[str, Any] | None = None,
              losses: dict[str, float] | None = None) -> np.ndarray:
    """x_i ← x½ + γ Σ_j W_ij (x̂_j − x̂_i), with each neighbour's estimate as of round r.

    A neighbour one round ahead already sent its round r+1 estimate; using its round-r one keeps
    the rounds synchronous, so a run does not depend on which process the scheduler favoured.
    """
    held = {p: node.estimates.peers[p] for p in node.neighbours if p in node.estimates.peers}
    own_examples = node.reported_examples
    if own_examples:  # weights ∝ examples: the federation keeps the example-weighted mean
        _, weights = weighted_neighbour_weights(
            len(node.neighbours), own_examples,
            {p: (e.degree, e.examples) for p, e in held.items()})
    else:
        _, weights = neighbour_weights(len(node.neighbours),
                                       {p: e.degree for p, e in held.items()})
    protocol = node.config.protocol
    if protocol.mode is Mode.ASYNC and protocol.max_lead is None:
        # staleness weighting: an estimate that arrived k of our rounds ago counts decay^k as
        # much; the weight it loses stays with this node
        decay = protocol.staleness_decay
        weights = {p: w * decay ** max(0, r - held[p].arrived) for p, w in weights.items()}
    elif protocol.mode is Mode.ASYNC and node.status == NodeStatus.TRAINING:
        # with a bounded lead rounds keep step, so an estimate k rounds older than ours counts
        # decay^k as much (a late joiner's first estimate, many rounds old, hardly counts);
        # consensus rounds wait as in sync and mix as in sync
        decay = protocol.staleness_decay
        weights = {p: w * decay ** max(0, r - held[p].round) for p, w in weights.items()}
    estimates = {p: e.as_of(r) for p, e in held.items()}
    if node.config.robust.rule == "none":
        return choco_step(half_step, node.own.vector, estimates, weights,
                          gamma=node.protocol.gamma)
    return robust_step(node, half_step, estimates, weights, record, losses)


def finished(node: Node, r: int) -> Verdict:
    """After consensus round ``r``: whether the node may finish (settle.judge). Under secure
    aggregation a node whose live neighbours are too few to aggregate ends here too: nothing
    more can be averaged securely."""
    verdict = settle.judge(node, r)
    if not node.config.secagg.enabled or verdict is Verdict.FINISH:
        return verdict
    live = [p for p in node.neighbours
            if not node.secagg.peer_status.get(p, (-1, 0.0, False))[2]]
    if r in node.secagg.refused_rounds and len(live) < node.config.secagg.min_contributors:
        log.warning("round %d: the neighbours still running are too few for secure "
                    "aggregation; ending consensus here", r)
        return Verdict.FINISH
    return verdict


async def announce_done(node: Node) -> None:
    """Publish the final model to the neighbours with done=True, so they stop waiting for us."""
    r = node.round + 1
    node.own.publish(node.model, r, compress=round_compressor(node, r))
    node.status = NodeStatus.DONE
    node.settle.done_beat = node.stamp_seq + 1
    node.beat_now.set()  # tell every member at once: a lingering one waits for it
    if node.config.secagg.enabled:
        from gossipfl.node import secure_round  # only with secure aggregation on

        await secure_round.send_masked_inputs(node, r, done=True)
        return
    await send_to_neighbours(node, r, done=True)
    await close_channels(node)
