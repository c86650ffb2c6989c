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
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from gossipfl.aggregation.mixing import choco_step, neighbour_weights, relative_disagreement
from gossipfl.config import Mode
from gossipfl.gossip.codes import RUNNING, AckCode, AckReason, NodeStatus
from gossipfl.gossip.membership import SILENT_INTERVALS
from gossipfl.gossip.wire import MAX_CONTROL_BYTES, Ack, Contribution
from gossipfl.node import secure_round
from gossipfl.node.checkpoint import save_dp_ledger, save_node_checkpoint, save_vector
from gossipfl.node.learner import RecordDP
from gossipfl.node.pace import SLACK, WINDOW, local_epochs, work_share
from gossipfl.node.runtime import peak_rss_bytes
from gossipfl.node.streams import close_streams
from gossipfl.privacy.dp import PrivacyUnit, privatise_update

if TYPE_CHECKING:
    from gossipfl.node.runtime import Node

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
    privacy = node.config.privacy
    # record unit: the model itself is DP-SGD's output (post-processing from here on); node
    # unit: the model is un-noised, and only the noisy x̂ may be published
    if privacy.enabled and privacy.unit == PrivacyUnit.NODE and not node.model_public:
        node.model = node.own.vector.copy()
        log.info("round %d: DP: the model is now this node's public estimate; only public "
                 "(already privatised) estimates are mixed and published from here on", r)
    node.model_public = True


async def run_rounds(node: Node) -> None:
    """Training rounds, then consensus rounds, then a last 'done' contribution."""
    config = node.config
    total = config.rounds + config.protocol.max_consensus_rounds
    last_round = total - 1
    stopped: TrainingStop | None = None
    r = node.start_round
    while r < total:
        if node.behind is not None:  # cut off or paused while the neighbours went on
            r = await node.catch_up_now(r)
            if r >= total:
                break
        if stopped is None:
            stopped = training_stop(r, config.rounds,
                                    neighbours_done=async_neighbours_done_training(node, r),
                                    budget_spent=budget_spent(node))
            if stopped is not None:
                stop_training(node, r, stopped)
        training = stopped is None
        if training:
            node.model_public = False  # the round trains on private data
        node.status = NodeStatus.TRAINING if training else NodeStatus.CONSENSUS
        await run_round(node, r, training)
        if not training and finished(node, r):
            log.info("consensus reached at round %d (disagreement %.2e)", r, node.disagreement)
            break
        if r == last_round and not training:
            log.warning("consensus round limit reached at round %d (disagreement %.2e)", r,
                        node.disagreement)
        r += 1
    stop_training(node, r, TrainingStop.DONE)  # no consensus round ran (a restart past them)
    await announce_done(node)


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


async def run_round(node: Node, r: int, training: bool) -> None:
    if training and async_joins_late(node, r):
        return
    start = trio.current_time()
    node.estimates.clock = r
    record: dict[str, Any] = {"round": r, "phase": "train" if training else "consensus"}

    # 1. train locally (in a worker thread: the node keeps serving its peers meanwhile)
    if training:
        epochs = async_local_epochs(node, r, record)  # None: the configured epochs
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

    # 2.+3. delta and privacy: q = DP(x½ − x̂) (clip + Gaussian noise, while the budget lasts);
    # x̂ += q, exactly as every neighbour will apply it
    node.own.publish(half_step, r, privatise=privacy_step(node, r, training, record))
    if training:  # what this round spent is on disk before anything it trained on is sent
        await node.offload(save_dp_ledger, node)

    if node.config.secagg.enabled:
        # 4.-6. masked inputs out, wait, unmask the neighbourhood's sum (secure_round.py)
        missing = await secure_exchange(node, r, half_step, start, record)
    else:
        # 4. send our contribution to every live neighbour
        send_start = trio.current_time()
        await send_to_neighbours(node, r, done=False)
        record["send_seconds"] = trio.current_time() - send_start

        # 5. receive: wait for the neighbours' contributions for this round, or the timeout
        wait_start = trio.current_time()
        if node.config.protocol.mode is Mode.ASYNC:
            missing = await wait_async(node, training, start + node.protocol.round_timeout,
                                       record)
        else:
            missing = await wait_for_neighbours(node, r, start + node.protocol.round_timeout)
        record["wait_seconds"] = trio.current_time() - wait_start

        # 6. aggregate: Metropolis–Hastings weights over the neighbours we hold estimates of
        node.model = aggregate(node, half_step, r)
        present = [p for p in node.neighbours if p in node.estimates.peers]
        node.disagreement = relative_disagreement(
            node.model, [node.estimates.peers[p].vector for p in present]
        )
    node.round = r
    await update_liveness(node, r, missing)

    # 7. measure and persist
    evaluation = await node.offload(node.learner.evaluate, node.model)
    if training and not node.neighbours:
        node.isolated_rounds += 1
    record.update(
        test_loss=evaluation.loss, test_accuracy=evaluation.accuracy,
        eval_seconds=evaluation.seconds, round_seconds=trio.current_time() - start,
        time=trio.current_time(), disagreement=_finite(node.disagreement),
        neighbours=sorted(node.neighbours), degree=len(node.neighbours), missing=missing,
        bytes_sent=node.traffic.bytes_sent, bytes_received=node.traffic.bytes_received,
        messages_sent=node.traffic.messages_sent,
        messages_received=node.traffic.messages_received,
        rejected=dict(node.rejections), timeouts=node.timeouts, peak_rss_bytes=peak_rss_bytes(),
    )
    node.final_accuracy = evaluation.accuracy
    persist_start = trio.current_time()
    await node.offload(persist_round, node, r)
    record["persist_seconds"] = trio.current_time() - persist_start
    node.write_metrics(record)
    log.info("round %d %s: acc %.4f loss %.4f disagreement %.2e missing %d (%.2f s)", r,
             record["phase"], evaluation.accuracy, evaluation.loss, node.disagreement,
             len(missing), record["round_seconds"])


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


def persist_round(node: Node, r: int) -> None:
    """Checkpoint (fsync'd: model, public estimate, DP state) and, if kept, the round's model
    for the consensus-distance report."""
    save_node_checkpoint(node, node.out / "checkpoint.npz", r)
    if node.config.keep_round_models:
        save_vector(node.out / "rounds" / f"r{r:05d}.npy", node.model, durable=False)
    if node.config.adversary.keep_public_estimates:  # what adversaries' reconstructions aim at
        save_vector(node.out / "public" / f"r{r:05d}.npy", node.own.vector, durable=False)


async def secure_exchange(node: Node, r: int, half_step: np.ndarray, start: float,
                          record: dict[str, Any]) -> list[str]:
    """Steps 4-6 under secure aggregation; returns the neighbours whose input is missing."""
    send_start = trio.current_time()
    await secure_round.send_masked_inputs(node, r, done=False)
    record["send_seconds"] = trio.current_time() - send_start
    wait_start = trio.current_time()
    missing = await secure_round.wait_for_inputs(node, r, start + node.protocol.round_timeout)
    record["wait_seconds"] = trio.current_time() - wait_start
    sum_start = trio.current_time()
    result = await secure_round.secure_sum(node, r)
    record["secure_sum_seconds"] = trio.current_time() - sum_start  # sign, unmask, combine
    node.secagg.forget_before(r)
    if result is None:
        record["secure_aggregation"] = "refused"
        node.model = half_step.copy()
        return missing
    total, weights, survivors = result
    record["secure_aggregation"] = f"{len(survivors)} contributors"
    node.model = ((1.0 - weights) * half_step + total).astype(np.float32)
    neighbourhood_mean = total / weights  # all this node learns: an average, never one input
    node.disagreement = relative_disagreement(node.model, [neighbourhood_mean])
    return missing


def aggregate(node: Node, half_step: np.ndarray, r: int) -> np.ndarray:
    """x_i ← x½ + γ Σ_j W_ij (x̂_j − x̂_i), with each neighbour's estimate as of round r.

    A neighbour one round ahead already sent its round r+1 estimate; using its round-r one keeps
    the rounds synchronous, so a run does not depend on which process the scheduler favoured.
    """
    held = {p: node.estimates.peers[p] for p in node.neighbours if p in node.estimates.peers}
    self_weight, weights = neighbour_weights(
        len(node.neighbours), {p: e.degree for p, e in held.items()}
    )
    del self_weight  # choco_step uses the weights of the neighbours only
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
    return choco_step(
        half_step, node.own.vector, {p: e.as_of(r) for p, e in held.items()}, weights,
        gamma=node.protocol.gamma,
    )


async def send_to_neighbours(node: Node, r: int, *, done: bool) -> None:
    targets = [
        p for p in node.neighbours
        if not (p in node.estimates.peers and node.estimates.peers[p].done)
    ]
    async with trio.open_nursery() as nursery:
        for peer in targets:
            nursery.start_soon(send_contribution, node, peer, r, done)


async def send_contribution(node: Node, peer: str, r: int, done: bool) -> None:
    """Send our round-r estimate (delta or full) to one neighbour and read its ack.

    Uses the neighbour's open stream; a broken stream (the peer restarted, or closed it as
    idle) is replaced by a new one once before the neighbour counts as unreachable.
    """
    state = node.neighbours[peer]
    # a frozen or overloaded neighbour may hold the stream open without answering: never let
    # one send hold the round longer than the round itself may last
    limit = min(node.protocol.request_timeout, node.protocol.round_timeout)
    with trio.move_on_after(limit) as scope:
        for attempt in (1, 2):
            try:
                ack = await _exchange(node, peer, r, done)
                break
            except Exception as error:
                if state.channel is not None:
                    await state.channel.reset()
                    state.channel = None
                if attempt == 2:
                    state.unreachable_round = r
                    log.warning("could not send round %d to %s: %s: %s", r, peer,
                                type(error).__name__, error)
                    node.notify()
                    return
        if ack.status == AckCode.OK:
            state.peer_holds = r
        elif AckReason.of(ack.reason) is AckReason.NOT_NEIGHBOUR:
            # it dropped us (we were cut off or paused): stop waiting for it; the re-link loop
            # asks it back
            log.warning("%s no longer counts us as a neighbour (round %d); re-linking", peer, r)
            await node.drop_neighbour(peer, r, "it dropped this node")
            return
        else:
            log.warning("%s did not take our round %d: %s %s", peer, r, ack.status, ack.reason)
    if scope.cancelled_caught:
        node.timeouts += 1
        state.unreachable_round = r
        if state.channel is not None:
            await state.channel.reset()
            state.channel = None
        log.warning("sending round %d to %s timed out", r, peer)
        node.notify()


async def _exchange(node: Node, peer: str, r: int, done: bool) -> Ack:
    assert node.net is not None
    state = node.neighbours[peer]

    def frame(kind: str, base: int, array: np.ndarray) -> Contribution:
        return Contribution(
            federation=node.config.federation, round=r, sender=node.peer_id, receiver=peer,
            degree=len(node.neighbours), kind=kind, base_round=base,
            disagreement=_finite(node.disagreement, default=1e9), done=done,
            tensors=node.layout.to_tensors(array), training=node.status == NodeStatus.TRAINING,
        )

    if state.channel is None:
        state.channel = await node.net.open(peer, node.addrs_of(peer),
                                            node.contribution_protocol)
    channel = state.channel
    kind, base, array = node.own.payload_for(state.peer_holds)
    await node.send_payload(channel, frame(kind, base, array))
    ack = await channel.receive(Ack, MAX_CONTROL_BYTES)
    if ack.status == AckCode.NEED_FULL and kind == "delta":
        await node.send_payload(channel, frame("full", -1, node.own.vector))
        ack = await channel.receive(Ack, MAX_CONTROL_BYTES)
    if ack.round != r or ack.sender != peer:
        raise ConnectionError(f"ack for round {ack.round} from {ack.sender}, expected {r}")
    return ack


async def close_channels(node: Node) -> None:
    for state in node.neighbours.values():
        if state.channel is not None:
            await state.channel.close()
            state.channel = None
        await close_streams(state)




def gone_silent(heard_at: float | None, now: float, interval: float) -> bool:
    """Whether a neighbour we heard from directly has not heartbeat us for
    ``SILENT_INTERVALS`` intervals (killed, paused, cut off). One never heard from directly is
    not judged."""
    return heard_at is not None and now - heard_at > SILENT_INTERVALS * interval


async def wait_for_neighbours(node: Node, r: int, deadline: float) -> list[str]:
    """Wait until every live neighbour delivered round r (or is done); returns those missing.

    A neighbour that has gone silent (no heartbeat for a few intervals: killed, paused, cut
    off) is not waited for: its neighbours go on at once instead of spending the round timeout
    on it, which in the synchronous protocol its neighbours' neighbours would wait out too. The
    heartbeat loop wakes the wait every interval so that silence is noticed. Its contribution,
    if it comes later, is mixed in a later round."""
    interval = node.protocol.heartbeat_interval

    def pending() -> list[str]:
        if node.behind is not None:  # the neighbours went on without us: catch up instead
            return []
        now = trio.current_time()
        return [
            p for p, state in node.neighbours.items()
            if node.estimates.holds(p) < r
            and not (p in node.estimates.peers and node.estimates.peers[p].done)
            and state.unreachable_round != r
            and not gone_silent(node.heard_at.get(p), now, interval)
        ]

    waiting = await node.wait_for(pending, deadline)
    if waiting:
        node.timeouts += 1
        log.warning("round %d: no contribution from %s within %.1f s", r, ", ".join(waiting),
                    node.protocol.round_timeout)
    return sorted(
        p for p in node.neighbours
        if node.estimates.holds(p) < r
        and not (p in node.estimates.peers and node.estimates.peers[p].done)
    )


async def wait_async(node: Node, training: bool, deadline: float,
                     record: dict[str, Any]) -> list[str]:
    """Async mode: no barrier while training. With ``protocol.max_lead`` = L (not None), a
    training round r waits only for the neighbours more than L rounds behind (until each has
    delivered round r − L: bounded staleness); with no bound it waits for news from half of its
    live neighbours (the faster ones: a slow neighbour's estimate is mixed, staleness-weighted,
    whenever it comes).
    A consensus round waits for every neighbour's round r with a bounded lead, for news from each
    without. All under the round timeout. Returns the
    neighbours that could not be reached this round, and with a bounded lead those still too far
    behind at the timeout (liveness counts only those). ``record["held"]``: whether the round
    waited for a neighbour behind the bound."""
    lead = node.config.protocol.max_lead
    if lead is not None:
        # consensus rounds wait as in sync (rounds keep within the bound of each other)
        r = node.estimates.clock
        least = r - lead if training else r
        return await wait_bounded(node, least, deadline, record, unheard=not training)
    seen = node.async_seen

    def pending() -> list[str]:
        live = [p for p in node.neighbours
                if not (p in node.estimates.peers and node.estimates.peers[p].done)]
        fresh = [p for p in live if node.estimates.holds(p) > seen.get(p, -1)]
        # consensus rounds (no training left to wait for) wait for every live neighbour, so the
        # fast cannot spin through the round limit before the slow have joined
        quorum = max(1, math.ceil(len(live) / 2)) if training else len(live)
        return [] if len(fresh) >= quorum or not live else [p for p in live if p not in fresh]

    await node.wait_for(pending, deadline)
    node.async_seen = {p: node.estimates.holds(p) for p in node.neighbours}
    return sorted(p for p, state in node.neighbours.items()
                  if state.unreachable_round == node.estimates.clock)


async def wait_bounded(node: Node, least: int, deadline: float, record: dict[str, Any], *,
                       unheard: bool) -> list[str]:
    """Wait until every live neighbour has delivered round ``least`` (or is done, or could not be
    reached this round); returns those still behind at the deadline, and the unreachable.
    ``record["held"]``: whether there was anyone to wait for.

    A neighbour not heard from yet is waited for only if ``unheard`` (consensus rounds, so that
    the fast cannot spin through the round limit before a late joiner has joined), and never
    counted missing: one whose first round is slow joins late (async_joins_late). In training
    rounds a node only ever waits for neighbours behind it, so no two wait for each other."""
    r = node.estimates.clock

    def behind() -> list[str]:
        return [p for p, state in node.neighbours.items()
                if p in node.estimates.peers and node.estimates.holds(p) < least
                and not node.estimates.peers[p].done and state.unreachable_round != r]

    def pending() -> list[str]:
        silent = [p for p, state in node.neighbours.items()
                  if unheard and p not in node.estimates.peers and state.unreachable_round != r]
        return sorted(behind() + silent)

    record["held"] = bool(pending())
    await node.wait_for(pending, deadline)
    node.async_seen = {p: node.estimates.holds(p) for p in node.neighbours}
    return sorted(set(behind()) | {p for p, state in node.neighbours.items()
                                   if state.unreachable_round == r})


def still_working(heard_at: float | None, beat_round: int, status: NodeStatus | None,
                  now: float, r: int, interval: float) -> bool:
    """Whether a neighbour that missed round ``r`` is alive and keeping up: it heartbeat us
    directly within the last three heartbeat intervals, while training or in consensus, having
    finished round r − 2 or later (a heartbeat carries the last round finished: it is working on
    our round or the one before). Such a neighbour is itself waiting for a neighbour of its own that
    is gone (a cascade of timeouts, as on one side of a partition): it is not counted missing.
    A neighbour that is silent, stopped, or further behind is."""
    return (heard_at is not None and not gone_silent(heard_at, now, interval)
            and status in RUNNING and beat_round >= r - 2)


async def update_liveness(node: Node, r: int, missing: list[str]) -> None:
    """Count missed rounds; drop a neighbour that missed too many in a row. A neighbour that
    could be reached this round and is alive and keeping up (``still_working``) is not counted."""
    now = trio.current_time()
    for peer in list(node.neighbours):
        state = node.neighbours[peer]
        if peer not in missing:
            state.missed = 0
            continue
        beat_round, status = node.member_state.get(peer, (-1, None))
        if state.unreachable_round != r and still_working(
                node.heard_at.get(peer), beat_round, status, now, r,
                node.protocol.heartbeat_interval):
            log.info("round %d: no contribution from %s, but it is alive and keeping up "
                     "(its last round %d); the miss is not counted", r, peer, beat_round)
            continue
        state.missed += 1
        if state.missed >= node.protocol.max_missed_rounds:
            log.warning("dropping neighbour %s: no contribution for %d rounds", peer,
                        state.missed)
            await node.drop_neighbour(peer, r, "missed rounds")


def finished(node: Node, r: int) -> bool:
    if not node.config.secagg.enabled:
        return consensus_reached(node)
    live = [p for p in node.neighbours
            if not node.secagg.peer_status.get(p, (-1, 0.0, False))[2]]
    if r in node.secagg.refused_rounds and len(live) < node.config.secagg.min_contributors:
        log.warning("round %d: the neighbours still running are too few for secure "
                    "aggregation; ending consensus here", r)
        return True
    return secure_round.consensus_reached(node)


def consensus_reached(node: Node) -> bool:
    tolerance = node.protocol.consensus_tolerance
    if node.disagreement > tolerance:
        return False
    for peer in node.neighbours:
        estimate = node.estimates.peers.get(peer)
        if estimate is None:
            return False
        if not estimate.done and estimate.disagreement > tolerance:
            return False
    return True


async def announce_done(node: Node) -> None:
    """Publish the final model to the neighbours with done=True, so they stop waiting for us."""
    r = node.round + 1
    node.own.publish(node.model, r)
    node.status = NodeStatus.DONE
    if node.config.secagg.enabled:
        await secure_round.send_masked_inputs(node, r, done=True)
        return
    await send_to_neighbours(node, r, done=True)
    await close_channels(node)


def _finite(value: float, default: float | None = None) -> float | None:
    return value if math.isfinite(value) else default
