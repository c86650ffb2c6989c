"""Adversaries that aggregate their own neighbourhood: the lying aggregator and the
differencing aggregator drive the node's own secure-aggregation functions
(:mod:`gossipfl.node.secure_round`) with the survivor sets they choose, and keep what comes back;
the narrowing aggregator announces narrowings the honest rule would not.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import trio

from gossipfl.adversary.kinds import AdversaryKind
from gossipfl.adversary.role import Role, SumResult
from gossipfl.config import AdversaryConfig
from gossipfl.crypto import consistency, secagg, shamir
from gossipfl.crypto.secagg_sparse import NARROW_LEVELS
from gossipfl.gossip.wire import ConsistencyRequest, MaskedInput, UnmaskResponse
from gossipfl.node import secure_round, secure_sparse

if TYPE_CHECKING:
    from gossipfl.node.runtime import Node

log = logging.getLogger("gossipfl.adversary")

F = frozenset
KEEP_SUMS = 8  # sums the differencing aggregator keeps to subtract


# -- pure decisions and maths --------------------------------------------------------------------


def pick_target(members: frozenset[str], r: int, configured: str) -> str:
    """The configured target if it is a member, else each member in turn (by round)."""
    if configured in members:
        return configured
    ordered = sorted(members)
    return ordered[r % len(ordered)]


def lie_plan(received: frozenset[str], target: str,
             minimum: int) -> tuple[frozenset[str], frozenset[str]] | None:
    """The issue's attack on ``target``: S1 = the target and ``minimum − 1`` others (told to
    the target: "the rest dropped"), S2 = every other input (told to them: "the target
    dropped"). None when the others are too few for S2 to gather threshold signatures."""
    others = sorted(received - {target})
    if target not in received or len(others) < minimum:
        return None
    return F({target, *others[:minimum - 1]}), F(others)


def differencing_plan(received: frozenset[str], previous: frozenset[str] | None, target: str,
                      minimum: int, attack: bool) -> tuple[frozenset[str] | None, bool]:
    """The set to announce and whether it is the attack: on attack turns, the last summed set
    less ``target`` (one live member apart); otherwise every input received (a base sum)."""
    if attack and previous is not None and target in previous & received:
        claim = previous - {target}
        if len(claim) >= minimum and claim <= received:
            return claim, True
    return (received if len(received) >= minimum else None), False


def strip_pair_masks(words: np.ndarray, target: str, pair_seeds: dict[str, bytes]) -> np.ndarray:
    """``target``'s masked words less every pair mask whose seed (with that member) is known."""
    words = words.astype(np.uint32)
    for other, seed in sorted(pair_seeds.items()):
        mask = secagg.prg_mask(seed, words.size)
        words = words - mask if secagg.pair_sign(target, other) > 0 else words + mask
    return words


def read_as_plain(words: np.ndarray, clip: float, scale: int) -> np.ndarray:
    """Quantised words read as if no mask were left (modulo 2^32, as signed values around the
    quantisation offset), clipped to the range an input can take."""
    offset = np.uint32(secagg.quantisation_offset(clip, scale))
    signed = (words.astype(np.uint32) - offset).view(np.int32).astype(np.float64)
    return np.clip(signed / scale, -clip, clip).astype(np.float32)


def pieces_of(target: str, responses: list[UnmaskResponse]) -> tuple[
        dict[str, bytes], list[UnmaskResponse]]:
    """From every answer held: the pair seeds others revealed with ``target`` (by member), and
    per answer the shares of ``target``'s self seed it carried."""
    pairs: dict[str, bytes] = {}
    shares: list[UnmaskResponse] = []
    for response in responses:
        for gone, seed in response.pair_seeds:
            if gone == target:
                pairs[response.sender] = seed
        held = tuple(s for s in response.seed_shares if s[0] == target)
        if held:
            shares.append(UnmaskResponse(response.federation, response.round, response.sender,
                                         held, ()))
    return pairs, shares


def self_seed_from(shares: list[UnmaskResponse], members: frozenset[str],
                   target: str) -> bytes | None:
    """``target``'s self seed, if at least the threshold of its holders' shares came back."""
    ids = shamir.share_ids_for(sorted(members))
    held = {}
    for response in shares:
        for owner, encoded in response.seed_shares:
            share_id, value = shamir.decode_share(encoded)
            if owner == target and share_id == ids.get(response.sender):
                held[share_id] = value
    need = consistency.threshold(len(members))
    return shamir.combine_shares(held, need) if len(held) >= need else None


# -- the roles --------------------------------------------------------------------------------


class _Aggregator(Role):
    aggregates = True

    def best_guess(self, node: Node, target: str, masked: MaskedInput,
                   responses: list[UnmaskResponse]) -> tuple[np.ndarray, bool]:
        """Unmask ``target`` alone with everything held: its self seed from the shares that
        came back (the node's own Shamir threshold) and every pair seed revealed with it; what
        is left once those masks are off, read as plain. Returns (its estimate of x̂_target,
        whether every mask came off)."""
        members = secure_round.neighbourhood(node, node.peer_id)
        pairs, shares = pieces_of(target, responses)
        words = strip_pair_masks(np.frombuffer(masked.data, dtype="<u4"), target, pairs)
        seed = self_seed_from(shares, members, target)
        if seed is not None:
            words = (words - secagg.prg_mask(seed, words.size)).astype(np.uint32)
        config = node.config.secagg
        unmasked = seed is not None and set(pairs) >= members - {target}
        return read_as_plain(words, config.clip, config.scale) / masked.weight, unmasked

    def note(self, node: Node, r: int, target: str, masked: MaskedInput,
             responses: list[UnmaskResponse]) -> None:
        guess, unmasked = self.best_guess(node, target, masked, responses)
        self.tally.reconstructed(r, target, guess)
        if unmasked:
            self.tally.succeeded += 1
            self.tally.details["inputs_recovered"] += 1
            log.warning("round %d: unmasked %s's input alone", r, target)


class LyingAggregator(_Aggregator):
    """Each round, tells the target "survivors {t, a, b}" and the others "t dropped", asks
    every survivor of either set to unmask (with every signature it holds) and tries to unmask
    the target alone. ``succeeded``: inputs unmasked alone."""

    kind = AdversaryKind.LYING_AGGREGATOR

    async def secure_sum(self, node: Node, r: int) -> SumResult:
        node.secagg.closed.add(r)
        inputs = dict(node.secagg.inbox.get(r, {}))
        members = secure_round.neighbourhood(node, node.peer_id)
        minimum = consistency.minimum_survivors(len(members), node.config.secagg.min_contributors)
        target = pick_target(members, r, self.config.target)
        plan = lie_plan(F(inputs), target, minimum)
        if plan is None:
            self.tally.details["rounds_without_enough_inputs"] += 1
            return await secure_round.honest_sum(node, r)
        self.tally.attempts += 1
        s1, s2 = plan
        fed, me = node.config.federation, node.peer_id
        signatures: dict[frozenset[str], dict[str, bytes]] = {s1: {}, s2: {}}
        async with trio.open_nursery() as nursery:
            for told, survivors in [(target, s1), *((p, s2) for p in sorted(s2))]:
                request = ConsistencyRequest(fed, r, me, tuple(sorted(survivors)),
                                             tuple(sorted(members - survivors)))
                nursery.start_soon(secure_round.ask_signature, node, told, request,
                                   signatures[survivors])
        self.tally.details["signatures_on_target_set"] += len(signatures[s1])
        self.tally.details["signatures_on_other_set"] += len(signatures[s2])
        every = tuple(sorted({**signatures[s1], **signatures[s2]}.items()))
        answers: dict[frozenset[str], dict[str, UnmaskResponse]] = {s1: {}, s2: {}}
        async with trio.open_nursery() as nursery:
            for peer, survivors in [*((p, s1) for p in sorted(s1)),
                                    *((p, s2) for p in sorted(s2))]:
                attached = tuple(sorted(signatures[s2].items())) if survivors == s2 else every
                request = secure_round.unmask_request(node, r, inputs, sorted(survivors),
                                                      sorted(members - survivors), peer,
                                                      attached)
                nursery.start_soon(secure_round.ask_unmask, node, peer, request,
                                   answers[survivors])
        self.tally.details["answers_on_target_set"] += len(answers[s1])
        self.tally.details["answers_on_other_set"] += len(answers[s2])
        held = [*answers[s1].values(), *answers[s2].values()]
        await node.offload(self.note, node, r, target, inputs[target], held)
        return self._other_sum(node, r, inputs, members, s2, answers[s2])

    def _other_sum(self, node: Node, r: int, inputs: dict[str, MaskedInput],
                   members: frozenset[str], s2: frozenset[str],
                   answers: dict[str, UnmaskResponse]) -> SumResult:
        """The sum over S2, which its members signed: what an honest aggregator of S2 learns
        (the node mixes with it, as an honest one would)."""
        try:
            total = secure_round.unmask(node, r, inputs, sorted(s2), sorted(members - s2),
                                        answers)
        except ValueError:
            node.secagg.failed_rounds.append(r)
            return None
        return total, sum(inputs[p].weight for p in s2), sorted(s2)


class Differencing(_Aggregator):
    """In turns of three rounds: a base sum over every input; a round it lets pass unsummed
    (its members presigned the full set for it with their answers, so no other set could be
    signed there: gossipfl.node.secure_presign); then the base set less one live member, to
    subtract the two sums. ``succeeded``: rounds in which it got a sum one member apart from
    another it held, that member being live (it sent its input); its reconstruction of that
    member is then the difference. Pairs one apart because a member really went silent are
    counted apart (``one_apart_by_churn``): the rule excuses churn, and says so."""

    kind = AdversaryKind.DIFFERENCING

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.sums: list[tuple[int, frozenset[str], np.ndarray]] = []
        self.turn = 0

    async def secure_sum(self, node: Node, r: int) -> SumResult:
        node.secagg.closed.add(r)
        inputs = dict(node.secagg.inbox.get(r, {}))
        members = secure_round.neighbourhood(node, node.peer_id)
        minimum = consistency.minimum_survivors(len(members), node.config.secagg.min_contributors)
        previous = self.sums[-1][1] if self.sums else None
        target = pick_target(members, self.turn // 3, self.config.target)
        step, self.turn = self.turn % 3, self.turn + 1
        if step == 1:
            self.tally.details["rounds_let_pass"] += 1
            return None
        chosen, attack = differencing_plan(F(inputs), previous, target, minimum,
                                           attack=step == 2)
        if chosen is None:
            self.tally.details["rounds_without_enough_inputs"] += 1
            return None
        if attack:
            self.tally.attempts += 1
        result = await secure_round.sum_over(node, r, chosen)
        if result is None:
            self.tally.details["refused" if attack else "base_refused"] += 1
            if attack:  # the target's input, masked: all it holds of it this round
                await node.offload(self.note, node, r, target, inputs[target], [])
            return None
        total, weights, survivors = result
        self.tally.details["sums" if not attack else "attack_sums"] += 1
        self.sums = [*self.sums, (r, F(survivors), total / 1.0)][-KEEP_SUMS:]
        self._subtract(r, inputs)
        return total, weights, survivors

    def _subtract(self, r: int, inputs: dict[str, MaskedInput]) -> None:
        """Count the round and keep the difference if the newest sum is one member from another
        sum held (scored against that member's estimate in the round of the sum holding it)."""
        _, newest, total = self.sums[-1]
        for earlier_round, earlier, other in reversed(self.sums[:-1]):
            apart = newest ^ earlier
            if len(apart) == 1:
                (member,) = apart
                sign, when = (1.0, r) if member in newest else (-1.0, earlier_round)
                weight = inputs[member].weight if member in inputs else 1.0
                guess = sign * (total - other) / weight
                if member in inputs:  # a live member claimed dropped: the attack worked
                    self.tally.reconstructed(when, member, guess)
                    self.tally.succeeded += 1
                    self.tally.details["one_apart_by_claim"] += 1
                else:  # it really sent nothing: churn, which the rule excuses (README)
                    self.tally.reconstructed(when, member, guess, churn=True)
                    self.tally.details["one_apart_by_churn"] += 1
                return


class NarrowingAggregator(Role):
    """Narrows every consensus delta round of its own sum to one level each side (announced two
    rounds ahead, as the honest rule does), whatever its sums were: an attempt to hold its
    members to a level a round, so the consensus crawls. A member takes a narrowing only while
    its own disagreement is within ``NARROW_SETTLED`` tolerances
    (:func:`gossipfl.node.secure_sparse.note_narrowing`); before, it sends wide words this
    aggregator refuses. ``attempts``: rounds narrowed; ``succeeded``: those whose sum completed
    narrowed (enough members held to one level)."""

    kind = AdversaryKind.NARROWING

    def __init__(self, config: AdversaryConfig) -> None:
        super().__init__(config)
        self.claimed: set[int] = set()
        self.completed: set[int] = set()

    def narrowing(self, node: Node, r: int, honest: tuple[int, int]) -> tuple[int, int]:
        last_round = node.secagg.last_sum[0]  # its newest completed sum (round r or r − 1)
        if last_round in self.claimed and last_round not in self.completed:
            self.completed.add(last_round)
            self.tally.succeeded += 1
        ahead = r + 2
        if not secure_sparse.can_narrow(node, node.peer_id, ahead):
            return honest
        levels = NARROW_LEVELS[0]
        node.secagg.narrowed[ahead] = levels
        self.claimed.add(ahead)
        self.tally.attempts += 1
        return ahead, levels
