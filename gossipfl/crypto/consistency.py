"""The survivor set a member helps unmask: consistency (Bonawitz et al., CCS 2017, round 3) and
the multi-round differencing rule (after So et al., 2021). Pure decisions, no I/O.

Why: the aggregator decides who survived. Asked in isolation, members could be told different
sets, and the union of what they reveal would strip one member's masks. So:

* **One set per aggregator and round.** A member signs (Ed25519, its identity key) the canonical
  bytes of the announced set (:meth:`SurvivorSet.canonical_bytes`) and never signs or answers
  another set for that aggregator and round. It reveals only when the request carries at least
  the Shamir threshold of valid signatures, from distinct survivors, on that very set. The
  threshold is a majority of the neighbourhood, so two different sets cannot both collect it
  from honest members.
* **Self masks only from threshold shares.** A member never sends its own self seed: it returns
  shares (its own share of its own seed included) of every survivor's self seed, and its pair
  seeds with the dropped; never both kinds for one member (:func:`plan_reveal`).
* **No sums that differ by one member.** Subtracting two rounds' sums over sets that differ by
  one member gives that member's estimate, close enough since estimates move slowly. A member
  refuses a set whose symmetric difference with a set it signed for the same aggregator within
  ``history_rounds`` rounds is non-empty but smaller than ``min_difference`` (identical sets are
  fine). This pairwise rule does not bound what a long run of sets spans (see the README).
* **Churn is excused, claims are not.** A difference made only of members this member has itself
  seen silent within the window (no progress of their signed liveness stamps, direct or
  relayed, and no direct message, for the silence time: see :func:`seen_silent`; a relayed
  "heard just now" is not proof of life) does not count: a member that really died or came
  back changes the set by one, and refusing would stop the neighbourhood's mixing for the
  whole window. An aggregator that *claims* a live member dropped (the differencing attack) is
  still refused, since the others keep seeing its stamps progress.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from gossipfl.crypto import liveness
from gossipfl.crypto.admission import AdmissionError, verify_key_from_peer_id

DOMAIN = b"gossipfl/secagg/survivor-set/v1\x00"
SIGNATURE_BYTES = 64


class Refusal(enum.Enum):
    """Why a member will not sign a survivor set, or not unmask for it."""

    NO_INPUT = "no_input"  # we sent this aggregator no masked input for that round
    WRONG_ROUND = "wrong_round"  # the set names another federation, aggregator or round
    NOT_A_SPLIT = "not_a_split"  # survivors and dropped do not split the neighbourhood
    NOT_A_SURVIVOR = "not_a_survivor"  # we are not in the set
    TOO_FEW_SURVIVORS = "too_few_survivors"  # below min_contributors or the Shamir threshold
    OTHER_SET = "other_set"  # we signed or answered another set for this aggregator and round
    TOO_CLOSE = "too_close"  # differs from a recent set by too few members
    TOO_FEW_SIGNATURES = "too_few_signatures"
    FOREIGN_SIGNER = "foreign_signer"  # a signature from outside the survivors
    DUPLICATE_SIGNER = "duplicate_signer"
    BAD_SIGNATURE = "bad_signature"  # forged, or over another set
    REVEAL_CONFLICT = "reveal_conflict"  # would reveal both mask kinds for one member


def threshold(members: int) -> int:
    """Shamir threshold over a neighbourhood of ``members``: a strict majority."""
    return members // 2 + 1


def minimum_survivors(members: int, min_contributors: int) -> int:
    """The fewest survivors a set may have: enough to be a secret and to rebuild self seeds."""
    return max(min_contributors, threshold(members))


def _field(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


@dataclass(frozen=True)
class SurvivorSet:
    """What an aggregator announces for one round: who is summed and who dropped."""

    federation: str
    aggregator: str
    round: int
    survivors: frozenset[str]
    dropped: frozenset[str]

    def canonical_bytes(self) -> bytes:
        """Unambiguous bytes to sign: domain ‖ federation ‖ aggregator ‖ round ‖ V ‖ dropped,
        strings length-prefixed, sets sorted and counted."""
        parts = [DOMAIN, _field(self.federation), _field(self.aggregator),
                 self.round.to_bytes(8, "big")]
        for group in (self.survivors, self.dropped):
            parts.append(len(group).to_bytes(2, "big"))
            parts.extend(_field(p) for p in sorted(group))
        return b"".join(parts)


def too_close(candidate: frozenset[str], round_: int, history: Mapping[int, frozenset[str]], *,
              history_rounds: int, min_difference: int,
              excused: frozenset[str] = frozenset()) -> int | None:
    """The round of a recent set that ``candidate`` differs from by 1..min_difference-1 members
    (a sum over it minus ours would isolate fewer than ``min_difference`` members), else None.
    A difference made only of ``excused`` members (seen silent: real churn) does not count."""
    for past_round, past in sorted(history.items(), reverse=True):
        if abs(round_ - past_round) > history_rounds:
            continue
        difference = candidate ^ past
        if 0 < len(difference) < min_difference and not difference <= excused:
            return past_round
    return None


def seen_silent(seen: Mapping[str, int], members: Iterable[str],
                live_at: Callable[[str], float | None], now: float, silence: float,
                round_: int, history_rounds: int) -> dict[str, int]:
    """``seen`` (member → last round it was seen silent) updated at ``round_``: a member of
    ``members`` whose last proof of life (``live_at``: signed-stamp progress or direct
    hearing, never a relayed age; see :mod:`gossipfl.crypto.liveness`) is more than
    ``silence`` seconds old, or who never gave one, is silent now; rounds older than the window
    are dropped, so the table stays as small as the members."""
    updated = {p: r for p, r in seen.items() if r >= round_ - history_rounds}
    for peer in members:
        if liveness.silent(live_at(peer), now, silence):
            updated[peer] = round_
    return updated


def excused(seen: Mapping[str, int], round_: int, history_rounds: int) -> frozenset[str]:
    """The members seen silent within the window: a set that differs by them only is churn."""
    return frozenset(p for p, r in seen.items() if abs(round_ - r) <= history_rounds)


def remember(history: Mapping[int, frozenset[str]], round_: int, survivors: frozenset[str],
             history_rounds: int) -> dict[int, frozenset[str]]:
    """``history`` with ``survivors`` signed at ``round_``, rounds older than the window dropped:
    at most ``history_rounds + 1`` entries per aggregator stay (plus any ahead of ``round_``)."""
    kept = {r: s for r, s in history.items() if r >= round_ - history_rounds}
    kept[round_] = survivors
    return kept


def check_set(announced: SurvivorSet, *, federation: str, aggregator: str, me: str,
              members: frozenset[str], have_input: bool, min_contributors: int,
              committed: SurvivorSet | None, history: Mapping[int, frozenset[str]],
              history_rounds: int, min_difference: int,
              excused: frozenset[str] = frozenset()) -> Refusal | None:
    """Whether ``me`` may sign (or, unsigned so far, answer) ``announced``; None means yes.

    ``committed`` is the set this member already signed or answered for this aggregator and
    round (a replay of that very set passes); ``history`` maps rounds to the survivor sets it
    signed for this aggregator.
    """
    if announced.federation != federation or announced.aggregator != aggregator:
        return Refusal.WRONG_ROUND
    if not have_input:
        return Refusal.NO_INPUT
    survivors, dropped = announced.survivors, announced.dropped
    if survivors & dropped or survivors | dropped != members:
        return Refusal.NOT_A_SPLIT
    if me not in survivors:
        return Refusal.NOT_A_SURVIVOR
    if len(survivors) < minimum_survivors(len(members), min_contributors):
        return Refusal.TOO_FEW_SURVIVORS
    if committed is not None:
        return None if committed == announced else Refusal.OTHER_SET
    if too_close(survivors, announced.round, history, history_rounds=history_rounds,
                 min_difference=min_difference, excused=excused) is not None:
        return Refusal.TOO_CLOSE
    return None


def choose_survivors(received: frozenset[str], round_: int,
                     confirmed: Mapping[int, frozenset[str]], *, minimum: int,
                     history_rounds: int, min_difference: int,
                     excused: frozenset[str] = frozenset()) -> frozenset[str] | None:
    """The survivor set an honest aggregator announces, or None to refuse the round.

    The inputs received, unless the members would refuse them as too close to a set confirmed
    within the window; then the most recent confirmed set inside them that passes (the other
    inputs count as dropped: their pair masks are removed, their self masks never are).
    """
    if len(received) < minimum:
        return None
    rule = {"history_rounds": history_rounds, "min_difference": min_difference,
            "excused": excused}
    if too_close(received, round_, confirmed, **rule) is None:
        return received
    for past_round, past in sorted(confirmed.items(), reverse=True):
        if abs(round_ - past_round) > history_rounds or not past <= received:
            continue
        if len(past) >= minimum and too_close(past, round_, confirmed, **rule) is None:
            return past
    return None


def sign_set(announced: SurvivorSet, signing_key: SigningKey) -> bytes:
    return bytes(signing_key.sign(announced.canonical_bytes()).signature)


def check_signatures(announced: SurvivorSet, signatures: Iterable[tuple[str, bytes]], *,
                     needed: int,
                     verify_key_of: Callable[[str], VerifyKey] = verify_key_from_peer_id,
                     ) -> Refusal | None:
    """None when at least ``needed`` distinct survivors signed ``announced``, every signature
    given is valid, and none comes from outside the survivors or twice."""
    message = announced.canonical_bytes()
    seen: set[str] = set()
    for signer, signature in signatures:
        if signer in seen:
            return Refusal.DUPLICATE_SIGNER
        seen.add(signer)
        if signer not in announced.survivors:
            return Refusal.FOREIGN_SIGNER
        if len(signature) != SIGNATURE_BYTES:
            return Refusal.BAD_SIGNATURE
        try:
            verify_key_of(signer).verify(message, signature)
        except (BadSignatureError, AdmissionError, ValueError):
            return Refusal.BAD_SIGNATURE
    if len(seen) < needed:
        return Refusal.TOO_FEW_SIGNATURES
    return None


@dataclass(frozen=True)
class Reveal:
    """What one member returns: shares of these members' self seeds, pair seeds with these."""

    self_shares_of: frozenset[str]
    pair_seeds_with: frozenset[str]


def plan_reveal(announced: SurvivorSet, *, revealed_self: frozenset[str],
                revealed_pair: frozenset[str]) -> Reveal | Refusal:
    """Self-seed shares of the survivors, pair seeds with the dropped, unless that would reveal,
    with what this member revealed before for this aggregator and round, both kinds for one
    member (the double-masking rule, kept across requests and replays)."""
    reveal = Reveal(frozenset(announced.survivors), frozenset(announced.dropped))
    if reveal.self_shares_of & (revealed_pair | reveal.pair_seeds_with) or \
            reveal.pair_seeds_with & revealed_self:
        return Refusal.REVEAL_CONFLICT
    return reveal


__all__ = ["DOMAIN", "Refusal", "Reveal", "SurvivorSet", "check_set", "check_signatures",
           "choose_survivors", "minimum_survivors", "plan_reveal", "remember", "sign_set",
           "threshold", "too_close"]
