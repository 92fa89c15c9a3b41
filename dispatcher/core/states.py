"""Delivery states and the one table of allowed transitions (SPEC §4)."""

from __future__ import annotations

from enum import StrEnum
from functools import cache

from dispatcher.core.errors import IllegalTransition


class Status(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    SENT = "sent"
    DELIVERED = "delivered"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


class Channel(StrEnum):
    EMAIL = "email"
    SMS = "sms"


S = Status

#: Every allowed move. Anything not listed is refused, which is how a stale or duplicated event is kept
#: from moving a delivery backwards (e.g. ``delivered -> sent``).
TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.QUEUED: frozenset({S.SENDING, S.EXPIRED, S.SUPPRESSED, S.CANCELLED}),
    S.RETRYING: frozenset({S.SENDING, S.EXPIRED, S.SUPPRESSED, S.CANCELLED}),
    S.SENDING: frozenset({S.SENT, S.RETRYING, S.FAILED, S.UNKNOWN, S.SUPPRESSED}),
    # A provider event may arrive for a message whose "sent" we never recorded.
    S.UNKNOWN: frozenset({S.SENT, S.DELIVERED, S.BOUNCED, S.COMPLAINED, S.FAILED, S.QUEUED}),
    S.SENT: frozenset({S.DELIVERED, S.BOUNCED, S.COMPLAINED, S.FAILED}),
    # SES may report a bounce or a complaint after a delivery; never the other way round.
    S.DELIVERED: frozenset({S.BOUNCED, S.COMPLAINED}),
    S.BOUNCED: frozenset({S.COMPLAINED, S.QUEUED}),
    S.FAILED: frozenset({S.QUEUED}),
    S.EXPIRED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.SUPPRESSED: frozenset(),
    S.COMPLAINED: frozenset(),
}

#: Moves only an operator's explicit act may make (never automatic processing): sending one person their
#: message again although it went (``sent``, ``delivered``: "it never arrived"), to a corrected contact
#: (``suppressed``), and re-addressing work not yet sent (``queued``/``retrying`` stay owed one send).
OPERATOR_TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.SENT: frozenset({S.QUEUED}),
    S.DELIVERED: frozenset({S.QUEUED}),
    S.SUPPRESSED: frozenset({S.QUEUED}),
    S.QUEUED: frozenset({S.QUEUED}),
    S.RETRYING: frozenset({S.QUEUED}),
}

#: States in which nothing more happens without an operator or a provider event.
SETTLED = frozenset(
    {S.SENT, S.DELIVERED, S.BOUNCED, S.COMPLAINED, S.FAILED, S.EXPIRED, S.SUPPRESSED, S.CANCELLED, S.UNKNOWN}
)
#: States a worker may claim.
CLAIMABLE = frozenset({S.QUEUED, S.RETRYING})
#: States still owed a send attempt.
PENDING = frozenset({S.QUEUED, S.RETRYING, S.SENDING})


def allowed(current: Status, *, operator: bool = False) -> frozenset[Status]:
    """Where a delivery may go from ``current``; ``operator``: by an operator's explicit act."""
    extra = OPERATOR_TRANSITIONS.get(current, frozenset()) if operator else frozenset()
    return TRANSITIONS[current] | extra


@cache
def sources_of(target: Status, *, operator: bool = False) -> frozenset[Status]:
    """Every state from which ``target`` may be reached."""
    return frozenset(src for src in Status if target in allowed(src, operator=operator))


def check(current: Status, target: Status, *, operator: bool = False) -> None:
    if target not in allowed(current, operator=operator):
        raise IllegalTransition(f"delivery cannot go from {current} to {target}")
