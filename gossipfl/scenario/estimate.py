"""The cost model behind ``gossipfl estimate`` (issue 13): a scenario and a calibration
(:mod:`gossipfl.scenario.calibrate`) in, per-node figures out. Pure functions: no clock, no
I/O, no randomness beyond the scenario's own seed.

**Rounds.** The training rounds, then the consensus rounds: after training, the nodes'
relative disagreement shrinks by the mixing matrix's second largest eigenvalue modulus ρ
(Metropolis–Hastings weights over the scenario's graph, drawn as the nodes draw it, over
stand-in member ids) every round, from ``d0`` (the disagreement left at the end of training, a
constant measured from runs) to ``consensus_tolerance``; then the settled depth climbs to the
horizon (diameter + 1) one round at a time. Capped at ``max_consensus_rounds``.

**Bytes** (each node, application frames, as report.json counts them): per round one
contribution to each neighbour (the first a full estimate, the others deltas, compressed as the
scenario says, sealed when payloads are sealed) and one ack for each received, plus the final
``done`` contribution; with secure aggregation instead a masked input to each neighbour, answered
by the aggregator's unmask request and the member's answer on the same stream (the answer
presigns the next round's set), both ways; the consistency request and signed response once, in
the first round (later rounds with every input in use the presigns); the final ``done`` input
is acked. Heartbeats: every cycle (a heartbeat interval plus the
answers' wait) a node heartbeats its neighbours and two other members, each answers with its
own heartbeat, and as many heartbeat it. Received equals sent on average (the links are
symmetric).

**Time.** A round costs a node CPU: its local training (the calibrated step, scaled by its
examples), the evaluation, the codec and crypto of each contribution (calibrated) plus a
transport cost per frame (libp2p, Noise, yamux, trio: a constant measured from runs) and a
fixed cost per round (the checkpoint, the metrics line). N node processes share the machine's
cores, and heartbeats take their share first, so a synchronous round lasts the larger of the
slowest node's CPU and the sum over the nodes over the cores left. Wall time: start-up (the
warm-up compilation, each node's start, membership forming; not the imports: ``gossipfl run``
forks the launcher from itself, imports done) + the rounds + the lingering (a whole
federation's ends as soon as every member has heard every other is done: a fraction of a
heartbeat interval) and exit.

**Memory.** A node's peak RSS: the calibration process's resident set (it imported what a
node imports and trained the model) plus the node's own state: the model, its public estimate,
optimiser state and each neighbour's estimate (two copies), and the frames in flight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from gossipfl.aggregation.compress import CompressionKind, kept
from gossipfl.aggregation.topology import build_topology
from gossipfl.crypto.secagg_sparse import packed_bytes, ring_width, round_levels
from gossipfl.node.compression import full_round, waivable
from gossipfl.node.extras import EXTRA_TURNS, HEARTBEAT_EXTRA, HEARTBEAT_FANOUT
from gossipfl.node.termination import horizon
from gossipfl.scenario.calibrate import Calibration
from gossipfl.scenario.config import ScenarioConfig

LINGER_INTERVALS = 0.25  # a whole federation's linger: its members' done heartbeats crossing
#: members one meets while joining, at most: its heartbeats and others' to it over about four
#: cycles of joining
JOIN_PEERS = 8 * HEARTBEAT_FANOUT
MIN_CORES_LEFT = 0.25
GRAPH_DRAWS = 8  # random graphs drawn for a kind the run draws at random
RANDOM_KINDS = ("regular", "ring")  # heartbeats never take more than three quarters of the machine


@dataclass(frozen=True)
class ModelConstants:
    """The few constants the model takes from measured runs, not from calibration (see the
    README's "Estimating a deployment" for the runs they were fitted on)."""

    final_disagreement: float = 2e-2  # d0: a neighbourhood's relative disagreement at the
    # end of training (the largest, as the settling rule needs every neighbour within reach)
    secagg_final_disagreement: float = 5e-3  # the same to the neighbourhood's mean (secagg)
    frame_cpu_seconds: float = 2.0e-4  # transport CPU per frame sent or received
    byte_cpu_seconds: float = 2.4e-8  # and per byte (Noise, yamux: about 40 MB/s)
    stream_cpu_seconds: float = 5.5e-3  # a heartbeat's new stream (not a neighbour's): open
    round_cpu_seconds: float = 5.0e-3  # per node per round: checkpoint, metrics, scheduling
    train_dispatch_seconds: float = 1.0e-3  # handing training to the worker thread and back
    join_intervals: float = 3.0  # heartbeat intervals until the membership is complete
    join_pair_cpu_seconds: float = 1.6e-2  # a pair of members meeting: dial, Noise, checks
    exit_seconds: float = 0.1  # the runner noticing the exits
    exit_cpu_seconds: float = 0.05  # each node's final writes (final.npz, summary, report)
    answer_seconds: float = 0.04  # a heartbeat cycle's wait for answers, per process a core
    heartbeat_share: float = 0.5  # of the calibrated heartbeat (every member listed) a steady
    # heartbeat carries: a delta, the entries changed since the peer's ack (membership.py)
    state_copies: int = 6  # model-sized vectors a node holds besides its neighbours'
    runtime_rss_bytes: int = 12 * 2**20  # a running node (host, trio, threads) beyond the
    # calibration's node child
    reference_frame_seconds: float = 1.1e-4  # the transport probe on the machine the CPU
    # constants above were fitted on (calibrate_transport.py); refitted (was 1.6e-4) when
    # yamux's credit came to be returned every other read, which cheapened the probe's frames
    # more than a node's whole work


#: The constants that are Python's own work (the event loop, py-libp2p, bookkeeping): they
#: scale with the transport probe's figure on the machine at hand against the reference.
SCALED = ("frame_cpu_seconds", "byte_cpu_seconds", "stream_cpu_seconds", "round_cpu_seconds",
          "train_dispatch_seconds", "join_pair_cpu_seconds", "exit_cpu_seconds",
          "answer_seconds")
SPEED_LIMITS = (0.2, 10.0)  # a probe outside these (a broken measurement) is clipped


def machine_factor(frame_seconds: float, reference: float) -> float:
    """How much slower than the reference machine this one runs the event loop: the probe's
    figure over the reference's, clipped to :data:`SPEED_LIMITS`.

    >>> machine_factor(3.2e-4, 1.6e-4), machine_factor(1e-9, 1.6e-4)
    (2.0, 0.2)
    """
    low, high = SPEED_LIMITS
    return min(high, max(low, frame_seconds / reference))


def scaled(constants: ModelConstants, factor: float) -> ModelConstants:
    """``constants`` with each of :data:`SCALED` multiplied by ``factor``."""
    return replace(constants, **{name: getattr(constants, name) * factor for name in SCALED})


@dataclass(frozen=True)
class GraphFigures:
    """The scenario's graph as the model sees it."""

    degrees: tuple[int, ...]
    diameter_plus_one: int  # the horizon
    rho: float  # second largest eigenvalue modulus of the Metropolis–Hastings matrix


@dataclass(frozen=True)
class NodeEstimate:
    index: int
    examples: int
    degree: int
    train_seconds_per_round: float  # as the node will see it (with contention)
    round_seconds: float  # a training round
    rounds: int  # training + expected consensus
    wall_seconds: float
    peak_rss_bytes: int
    bytes_sent: int
    bytes_received: int


@dataclass(frozen=True)
class Estimate:
    """Per-node figures and the formulae's terms (``terms``: name → value, for the table and
    for checking the model against a run)."""

    scenario: str
    nodes: tuple[NodeEstimate, ...]
    training_rounds: int
    consensus_rounds: int
    wall_seconds: float
    max_peak_rss_bytes: int
    terms: dict[str, float] = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        return self.training_rounds + self.consensus_rounds


def stand_in_ids(count: int, draw: int = 0) -> list[str]:
    return [f"member-{draw}-{i:05d}" for i in range(count)]


def graph_figures(scenario: ScenarioConfig) -> GraphFigures:
    """Degrees, horizon and ρ of the scenario's graph, drawn over stand-in ids. The run draws
    a random regular graph from its members' ids, unknown before it starts: its degrees are
    known, its ρ and horizon are taken as the mean over ``GRAPH_DRAWS`` draws."""
    spec = scenario.topology
    draws = GRAPH_DRAWS if spec.kind in RANDOM_KINDS else 1
    rhos, horizons, degrees = [], [], ()
    for draw in range(draws):
        ids = stand_in_ids(scenario.nodes, draw)
        edges = [(ids[a], ids[b]) for a, b in spec.edges]
        topology = build_topology(spec.kind, ids, degree=spec.degree, seed=scenario.seed,
                                  edges=edges)
        degrees = tuple(len(topology[m]) for m in ids)
        rhos.append(mixing_rho(ids, topology))
        horizons.append(horizon(topology))
    return GraphFigures(degrees, round(sum(horizons) / draws), sum(rhos) / draws)


def mixing_rho(ids: list[str], topology: dict[str, frozenset[str]]) -> float:
    """Second largest eigenvalue modulus of W, W_ij = 1 / (1 + max(d_i, d_j)) on each link."""
    index = {m: i for i, m in enumerate(ids)}
    n = len(ids)
    w = np.zeros((n, n))
    for m, peers in topology.items():
        for p in peers:
            w[index[m], index[p]] = 1.0 / (1 + max(len(peers), len(topology[p])))
    w[np.diag_indices(n)] = 1.0 - w.sum(axis=1)
    moduli = np.sort(np.abs(np.linalg.eigvalsh(w)))[::-1]
    return float(moduli[1]) if n > 1 else 0.0


def consensus_rounds(graph: GraphFigures, tolerance: float, limit: int,
                     final_disagreement: float) -> int:
    """Rounds from the end of training until a node finishes: the disagreement falls by ρ a
    round from ``final_disagreement`` to ``tolerance``, then the depth climbs to the horizon.

    >>> consensus_rounds(GraphFigures((2, 2, 2), 2, 0.25), 1e-4, 60, 1e-2)  # 4 + 2
    6
    """
    if final_disagreement <= tolerance or graph.rho <= 0.0:
        settle = 0
    elif graph.rho >= 1.0:
        return limit  # a graph in parts never agrees: the limit ends it
    else:
        settle = math.ceil(math.log(tolerance / final_disagreement) / math.log(graph.rho)
                           - 1e-9)
    return min(limit, settle + graph.diameter_plus_one)


def heartbeat_targets(nodes: int, degree: int) -> float:
    """Heartbeat exchanges a node starts each cycle once links are formed: one end of each
    link heartbeats, the other answers (membership_loop.answered_lately), so half its links
    on average, and ``HEARTBEAT_EXTRA`` members that are no neighbours."""
    return degree / 2 + min(HEARTBEAT_EXTRA, max(0, nodes - 1 - degree))


def contribution_bytes(cal: Calibration, degree: int, rounds: int) -> int:
    """One direction of a node's contribution traffic over ``rounds`` rounds and the final
    ``done`` contribution: to each neighbour a full estimate first, then deltas, and the acks
    for what it receives.

    >>> from dataclasses import replace
    >>> contribution_bytes(_toy(), degree=2, rounds=3)  # 2 × (1000 + 3 × 400) + 2 × 4 × 50
    4800
    """
    frames = degree * (cal.full_bytes + rounds * cal.delta_bytes)
    return frames + degree * (rounds + 1) * cal.ack_bytes


def secagg_bytes(cal: Calibration, degree: int, rounds: int,
                 words: list[int] | None = None) -> int:
    """One direction of a node's secure-aggregation traffic: a masked input to each neighbour
    each round; as aggregator an unmask request to each neighbour a round (its answer to the
    input), and as member the answers to its neighbours' (the sums are symmetric: what it sends
    as one it receives as the other); the consistency exchange in the first round only (then
    the answers' presigns stand in for it); the final ``done`` input and its ack. ``words``:
    each round's bytes of masked words (:func:`masked_words_bytes`) where the calibrated input
    carries the full estimate's (4 a parameter); None: every round full."""
    s = cal.secagg
    assert s is not None
    first = s.consistency_request + s.consistency_response if rounds else 0
    inputs = rounds * s.masked_input if words is None else sum(
        s.masked_input - 4 * cal.parameters + w for w in words[:rounds])
    return degree * (inputs + rounds * (s.unmask_request + s.unmask_response) + first
                     + s.masked_input + cal.ack_bytes)


def masked_words_bytes(scenario: ScenarioConfig, parameters: int, degree: int,
                       round_: int) -> int:
    """The bytes of a member's masked words in round ``round_`` by the node's own round rules
    (:func:`gossipfl.node.compression.full_round`, :mod:`gossipfl.crypto.secagg_sparse`): 4 a
    parameter in a full round; in an int8/int4 delta round the round's ring at equal weights
    (Σc = ``degree``, as on a regular graph); 4 a kept coordinate with random-k. A round full
    by ``full_every`` alone counts as waived (:func:`gossipfl.node.compression.waivable`: a
    steady run's sums are exact).

    >>> from gossipfl.config import CompressionConfig, SecAggConfig
    >>> s = ScenarioConfig(rounds=30, secagg=SecAggConfig(enabled=True, consensus_deltas=True),
    ...                    compression=CompressionConfig(kind="int4"))
    >>> [masked_words_bytes(s, 8970, 4, r) for r in (0, 1, 10, 30, 31)]
    [35880, 6729, 6729, 13455, 13455]
    >>> first = replace(s, secagg=replace(s.secagg, first_deltas=True))
    >>> masked_words_bytes(first, 8970, 4, 0)
    6729
    """
    kind = CompressionKind(scenario.compression.kind)
    if kind is CompressionKind.NONE or (
            full_round(scenario.secagg, scenario.rounds, round_, kind)
            and not waivable(scenario.secagg, scenario.rounds, round_, kind)):
        return 4 * parameters
    if kind is CompressionKind.RANDK:
        return 4 * kept(parameters, scenario.compression.ratio)
    levels = round_levels(kind.value, scenario.rounds, round_, scenario.secagg.delta_levels,
                          scenario.secagg.coarse_consensus)
    return packed_bytes(parameters, ring_width(levels, degree))


def round_bytes(cal: Calibration, degree: int) -> int:
    """One direction of a node's traffic in one round (as :func:`contribution_bytes` and
    :func:`secagg_bytes` count it, without the first and the last frames)."""
    if cal.secagg is None:
        return degree * (cal.delta_bytes + cal.ack_bytes)
    s = cal.secagg
    return degree * (s.masked_input + s.unmask_request + s.unmask_response)


def frames_per_round(degree: int, secure: bool) -> int:
    """Frames a node sends and receives in one round: per neighbour its contribution and the
    ack, theirs and our ack; with secure aggregation, in a round everyone was in, its masked
    input and the light unmask request that answers it (not answered: the presign comes with
    the next input, gossipfl.node.secure_early), and as many the other way."""
    del secure  # the same count either way since the light requests
    return degree * 4


def estimate(scenario: ScenarioConfig, cal: Calibration,
             constants: ModelConstants = ModelConstants(),
             graph: GraphFigures | None = None) -> Estimate:
    """Per-node resource figures for ``scenario`` on the calibrated machine (its cores, with
    nothing else running; the constants fitted from runs scaled to its speed)."""
    factor = machine_factor(cal.frame_seconds, constants.reference_frame_seconds)
    k = scaled(constants, factor)
    graph = graph if graph is not None else graph_figures(scenario)
    n, protocol, secure = scenario.nodes, scenario.protocol, cal.secagg is not None
    training = scenario.rounds
    consensus = consensus_rounds(
        graph, protocol.consensus_tolerance, protocol.max_consensus_rounds,
        k.secagg_final_disagreement if secure else k.final_disagreement)
    rounds = training + consensus
    cores = max(1, cal.cores)

    # heartbeats: a cycle every interval plus the wait for the answers (longer the more
    # processes share a core); each exchange carries two heartbeats, one with a neighbour is
    # started by one end of the link only, and the members beyond the neighbours are kept for
    # EXTRA_TURNS cycles on streams kept open (a neighbour's stays open), so a new stream
    # once in that many cycles for each
    cycle = protocol.heartbeat_interval + k.answer_seconds * n / cores
    targets = [heartbeat_targets(n, d) for d in graph.degrees]
    heartbeat_load = sum(t * 2 * cal.heartbeat_cpu_seconds
                         + (t - d / 2) / EXTRA_TURNS * k.stream_cpu_seconds
                         for t, d in zip(targets, graph.degrees, strict=True)) / cycle
    cores_left = max(cores * MIN_CORES_LEFT, cores - heartbeat_load)

    # CPU a node spends in a round, without and with training
    eval_share = 1.0 / max(1, scenario.train.eval_every)
    message_cpu = cal.message_cpu_seconds + (cal.secagg.cpu_seconds if secure else 0.0)
    exchange = [d * message_cpu + frames_per_round(d, secure) * k.frame_cpu_seconds
                + 2 * round_bytes(cal, d) * k.byte_cpu_seconds
                + eval_share * cal.eval_seconds + k.round_cpu_seconds for d in graph.degrees]
    train = [cal.train_seconds_for(i) + k.train_dispatch_seconds for i in range(n)]
    train_round = [t + x for t, x in zip(train, exchange, strict=True)]
    contention = max(1.0, n / cores_left)
    round_train = max(max(train_round), sum(train_round) / cores_left)
    round_consensus = max(max(exchange), sum(exchange) / cores_left)
    # a node compiles (or loads) its steps while it joins (node/learner.py: prepare), so
    # its first round starts when the later of the two is over
    pairs = n * min(n - 1, JOIN_PEERS)  # members meeting each other while joining
    joining = pairs * k.join_pair_cpu_seconds / cores_left
    start_up = max(cal.compile_seconds, joining + k.join_intervals * protocol.heartbeat_interval)
    finish = (LINGER_INTERVALS * protocol.heartbeat_interval + k.exit_seconds
              + n * k.exit_cpu_seconds / cores_left)
    rounds_seconds = training * round_train + consensus * round_consensus
    wall = start_up + rounds_seconds + finish
    cycles = (wall - cal.compile_seconds) / cycle  # a node's life

    vector = 4 * cal.parameters
    nodes = []
    words = {d: [masked_words_bytes(scenario, cal.parameters, d, r) for r in range(rounds)]
             for d in set(graph.degrees)} if secure else {}
    for i, d in enumerate(graph.degrees):
        traffic = (secagg_bytes(cal, d, rounds, words[d]) if secure
                   else contribution_bytes(cal, d, rounds))
        beats = int(cycles * 2 * targets[i] * cal.heartbeat_bytes * k.heartbeat_share)
        total = traffic + beats + d * cal.link_bytes
        state = (k.state_copies + 2 * d) * vector + 2 * d * max(cal.full_bytes, vector)
        nodes.append(NodeEstimate(
            index=i, examples=cal.examples[i], degree=d,
            train_seconds_per_round=train[i] * contention, round_seconds=round_train,
            rounds=rounds, wall_seconds=wall,
            peak_rss_bytes=int(cal.base_rss_bytes + k.runtime_rss_bytes + state),
            bytes_sent=total, bytes_received=total))
    terms = {
        "cores": float(cores), "cores_left": cores_left, "machine_factor": factor,
        "heartbeat_load": heartbeat_load,
        "contention": contention, "rho": graph.rho, "horizon": float(graph.diameter_plus_one),
        "joining_seconds": joining, "start_up_seconds": start_up,
        "import_seconds": cal.import_seconds,
        "compile_seconds": cal.compile_seconds,
        "train_round_seconds": round_train,
        "consensus_round_seconds": round_consensus, "finish_seconds": finish,
        "train_seconds": cal.train_seconds, "node_first_seconds": cal.node_first_seconds,
        "heartbeat_cycle_seconds": cycle, "heartbeat_bytes": float(cal.heartbeat_bytes),
        "contribution_bytes": float(cal.delta_bytes), "message_cpu_seconds": message_cpu,
    }
    return Estimate(scenario.name, tuple(nodes), training, consensus, wall,
                    max(e.peak_rss_bytes for e in nodes), terms)


def _toy() -> Calibration:
    """A small calibration for the doctests."""
    return Calibration(
        cores=2, other_load=0.0, parameters=100, examples=(10, 20, 30), steps=(1, 1, 1),
        test_examples=10,
        import_seconds=1.0, compile_seconds=2.0, node_first_seconds=0.5, train_seconds=0.1,
        eval_seconds=0.01, full_bytes=1000, delta_bytes=400,
        ack_bytes=50, heartbeat_bytes=300, link_bytes=100, message_cpu_seconds=0.001,
        heartbeat_cpu_seconds=0.0005, frame_seconds=1.6e-4, secagg=None, base_rss_bytes=100 * 2**20,
        calibration_seconds=3.0)


__all__ = ["Estimate", "GraphFigures", "ModelConstants", "NodeEstimate", "consensus_rounds",
           "contribution_bytes", "estimate", "graph_figures", "heartbeat_targets",
           "machine_factor", "masked_words_bytes", "mixing_rho", "round_bytes", "scaled",
           "secagg_bytes"]
