"""The protocol's states and reply codes, as enums.

Each is a :class:`~enum.StrEnum`: a member is equal to its value and serialises as it, so the
wire (msgpack), checkpoints, metrics and summaries carry the same strings as before. Strings
that come in (from the wire, from a file) are parsed into members once, at the edge
(:func:`parse`; :mod:`gossipfl.gossip.wire` refuses an unknown code with a ``WireError``), and
the code behind that edge compares members, never free text.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

E = TypeVar("E", bound=StrEnum)


def parse(cls: type[E], value: object, what: str) -> E:
    """The member of ``cls`` whose value is ``value``; ValueError naming the known ones if none
    (a member of ``cls`` is returned as it is)."""
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(member.value for member in cls)
        raise ValueError(f"{what} {value!r} is unknown (known: {known})") from None


class NodeStatus(StrEnum):
    """Where a node is in its run. The first four travel in heartbeats; the last two are local
    (a run's ending), and a heartbeat says ``done`` for them (:attr:`advertised`)."""

    JOINING = "joining"  # meeting the members, forming links
    TRAINING = "training"  # in its training rounds
    CONSENSUS = "consensus"  # in its consensus rounds (training over)
    DONE = "done"  # finished: final model published
    STOPPED = "stopped"  # stopped before the end (a signal); resumes from its checkpoint
    FAILED = "failed"  # could not go on (the process's exit status only)

    @property
    def running(self) -> bool:
        """Still in the rounds (training or consensus)."""
        return self in RUNNING

    @property
    def advertised(self) -> NodeStatus:
        """What a heartbeat says: a node that stopped or failed is done as far as peers go."""
        return self if self in HEARTBEAT_STATUSES else NodeStatus.DONE


#: The statuses a heartbeat may carry (the wire refuses the others).
HEARTBEAT_STATUSES = frozenset({NodeStatus.JOINING, NodeStatus.TRAINING, NodeStatus.CONSENSUS,
                                NodeStatus.DONE})
#: Statuses of a member still in the rounds.
RUNNING = frozenset({NodeStatus.TRAINING, NodeStatus.CONSENSUS})


class AckCode(StrEnum):
    """A receiver's answer to a contribution (or a masked input)."""

    OK = "ok"  # applied
    NEED_FULL = "need_full"  # a delta on a base the receiver does not hold: send the estimate
    REJECTED = "rejected"  # refused (the ack's reason says why)


class AckReason(StrEnum):
    """The refusals of a contribution that the peers act on (a receiver closes the stream on
    :attr:`WRONG_FEDERATION` and :attr:`NOT_NEIGHBOUR`; a sender told :attr:`NOT_NEIGHBOUR`
    drops the link and asks it back). An ack's ``reason`` is otherwise free text for logs (a
    layout or estimate error); these codes are the exact texts a node sends, so the wire is
    unchanged: :meth:`of` reads one back."""

    WRONG_FEDERATION = "wrong federation"
    SENDER_MISMATCH = "sender does not match the connection"
    MISADDRESSED = "misaddressed"
    NOT_MEMBER = "not a member"
    NOT_NEIGHBOUR = "not a neighbour"
    TOO_FAR_AHEAD = "round too far ahead"
    ENVELOPE_REFUSED = "envelope refused"

    @classmethod
    def of(cls, reason: str) -> AckReason | None:
        """The code an ack's reason holds; None for free text."""
        try:
            return cls(reason)
        except ValueError:
            return None


class DialbackCode(StrEnum):
    """The answer to a dial-back request (:mod:`gossipfl.gossip.dialback`)."""

    DIALLED = "dialled"  # a new connection to the requester, at its observed IP, was made
    FAILED = "failed"  # tried: no connection could be made there
    REFUSED = "refused"  # not tried: asked over a relay, too soon again, or busy


class LinkCode(StrEnum):
    """The answer to a link request."""

    ACCEPTED = "accepted"
    NOT_READY = "not_ready"  # still joining: ask again later
    REJECTED = "rejected"  # the reply's reason says why (logged only)
