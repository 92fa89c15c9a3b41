"""Applying provider events to the ledger (SPEC §3 step 3, §4, §12).

Events arrive duplicated and out of order. A duplicate is recognised by its key and changes nothing; a
stale event is refused by the state table (``delivered`` never goes back to ``sent``); an event for a
message whose send is not recorded yet is kept (in a bounded, expiring store) and applied when the worker
records it; an event that proves a send whose answer was lost (``unknown``) settles it.

An event concerns only a delivery sent through the provider and channel it comes from, and only that
delivery's current attempt. Suppression and the circuit breaker follow only from a move the state table
accepted, and suppress only the delivery's own contact on its own channel.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dispatcher.core import clock
from dispatcher.core.states import Channel, Status

from ..ledger import Ledger
from ..ledger.readdress import fallback_owed
from ..ledger.store import Delivery
from .events import MAX_EVENT_TYPE, SOURCES, Kind, ProviderEvent

log = logging.getLogger(__name__)

#: Where each kind of event takes the delivery it concerns.
TARGET: dict[Kind, Status] = {
    Kind.SENT: Status.SENT,
    Kind.DELIVERED: Status.DELIVERED,
    Kind.HARD_BOUNCE: Status.BOUNCED,
    Kind.SOFT_BOUNCE: Status.BOUNCED,
    Kind.COMPLAINT: Status.COMPLAINED,
    Kind.REJECTED: Status.FAILED,
    Kind.UNDELIVERABLE: Status.FAILED,
    Kind.OPTED_OUT: Status.FAILED,
}
#: Kinds that put the contact on the suppression list, for every campaign.
SUPPRESS = {Kind.HARD_BOUNCE: "hard bounce", Kind.COMPLAINT: "complaint", Kind.OPTED_OUT: "opted out"}
#: Kinds the circuit breaker counts as failures.
BREAKER = {Kind.HARD_BOUNCE, Kind.SOFT_BOUNCE, Kind.COMPLAINT}
#: Kinds after which the other channel is tried once, where the campaign has ``fallback = true``.
FALLBACK = {Kind.HARD_BOUNCE, Kind.REJECTED, Kind.UNDELIVERABLE}


@dataclass(frozen=True)
class PendingLimits:
    """How many early events may wait for their send, and for how long (``Settings.pending_events_*``)."""

    max_count: int = 100_000
    max_age: timedelta = timedelta(days=7)

    @classmethod
    def of(cls, settings: Any) -> PendingLimits:
        return cls(int(settings.pending_events_max), timedelta(seconds=float(settings.pending_events_max_age_seconds)))


@dataclass(frozen=True)
class Applied:
    event_id: int | None
    outcome: str


def dedupe_key(event: ProviderEvent) -> str:
    raw = "|".join(
        [event.source, event.event_type, event.message_id, event.at.isoformat(), event.code, event.recipient or ""]
    )
    return hashlib.sha256(raw.encode()).hexdigest()


def receive(ledger: Ledger, event: ProviderEvent, breaker: Any = None, pending: PendingLimits | None = None) -> Applied:
    """Record an event (once) and apply it if its delivery can be found."""
    event_id = ledger.record_event(
        dedupe_key(event),
        {
            "source": event.source,
            "event_type": event.event_type[:MAX_EVENT_TYPE],
            "kind": event.kind.value,
            "message_id": event.message_id,
            "reference": event.reference,
            "at": event.at,
            "code": event.code[:100],
        },
    )
    if event_id is None:
        return Applied(None, "duplicate")
    applied = apply_recorded(ledger, event_id, event, breaker)
    if applied.outcome == "pending":
        # Pruned whenever one more is kept, so the store never outgrows its bounds by more than one.
        limits = pending or PendingLimits()
        ledger.prune_pending_events(received_before=clock.now() - limits.max_age, keep=limits.max_count)
    return applied


@dataclass(frozen=True)
class _Match:
    delivery_id: int
    #: The attempt the event's message id was given for (only the current one may move the delivery).
    attempt: int


def _find(ledger: Ledger, event: ProviderEvent) -> _Match | None:
    route = SOURCES.get(event.source)
    if route is None:
        return None
    provider, channel = route
    found = ledger.delivery_for_message(event.message_id, provider=provider, channel=channel)
    if found is not None:
        return _Match(*found)
    if not event.reference:
        return None
    # A send whose answer was lost has no message id in the ledger; the echoed reference proves it, but
    # only for that very send: same provider and channel, its current attempt, still ``unknown``.
    try:
        delivery_id, attempt = (int(x) for x in event.reference.split(".", 1))
    except ValueError:
        return None
    if not ledger.settle_message_id(
        delivery_id, provider=provider, channel=channel, attempt=attempt, message_id=event.message_id
    ):
        return None
    return _Match(delivery_id, attempt)


def apply_recorded(ledger: Ledger, event_id: int, event: ProviderEvent, breaker: Any = None) -> Applied:
    match = _find(ledger, event)
    if match is None:
        ledger.finish_event(event_id, delivery_id=None, applied=False, outcome="waiting for its send")
        return Applied(event_id, "pending")
    delivery = ledger.get(match.delivery_id)
    assert delivery is not None
    outcome = _apply(ledger, delivery, match.attempt, event, breaker)
    ledger.finish_event(event_id, delivery_id=delivery.id, applied=True, outcome=outcome)
    return Applied(event_id, outcome)


def _same_contact(delivery: Delivery, recipient: str | None) -> bool:
    """Whether the recipient an event names (if it names one) is the delivery's own contact."""
    if not recipient:
        return True
    if delivery.channel is Channel.EMAIL:
        return recipient.strip().casefold() == delivery.contact.casefold()
    return recipient.strip() == delivery.contact


def _concerns(delivery: Delivery, attempt: int, event: ProviderEvent) -> str | None:
    """Why the event does not concern the delivery as it is now, or None when it does."""
    provider, channel = SOURCES[event.source]
    if delivery.channel.value != channel or delivery.provider != provider:
        return "recorded: the delivery is now on another channel or provider"
    if attempt != delivery.attempts or delivery.provider_message_id != event.message_id:
        return "recorded: concerns an earlier attempt"
    if not _same_contact(delivery, event.recipient):
        return "recorded: names another recipient"
    return None


def _apply(ledger: Ledger, delivery: Delivery, attempt: int, event: ProviderEvent, breaker: Any) -> str:
    target = TARGET.get(event.kind)
    if target is None:
        return "recorded"
    elsewhere = _concerns(delivery, attempt, event)
    if elsewhere is not None:
        return elsewhere
    actor = f"event:{event.source}:{event.event_type}"[:100]
    values: dict[str, Any] = {"last_event_at": event.at}
    if target in (Status.FAILED, Status.BOUNCED, Status.COMPLAINED):
        # Codes only: a provider's free text may echo the receipt URL or the address.
        values["reason"] = f"{event.event_type} {event.code}".strip()[:500]
    if event.kind in FALLBACK and fallback_owed(delivery):
        values["fallback_due_at"] = clock.now()  # in the same transaction as the move; the sweep acts on it
    moved = ledger.move(
        delivery.id,
        target,
        actor=actor,
        provider_code=event.code[:100] or event.event_type,
        values=values,
        current=delivery,
    )
    if moved is None:
        return f"ignored: {delivery.status} does not go to {target}"
    # Only an accepted move has consequences, and only for the contact this delivery was sent to.
    if event.kind in SUPPRESS:
        ledger.suppress(delivery.contact, delivery.channel, SUPPRESS[event.kind], actor)
    if event.kind in BREAKER and breaker is not None:
        breaker.record_failure(delivery.campaign_id, counted_attempt=False)
    return f"moved:{target}"


def apply_pending(
    ledger: Ledger, message_id: str | None = None, breaker: Any = None, pending: PendingLimits | None = None
) -> int:
    """Apply events that arrived before their send was recorded (never expired ones). Returns how many."""
    limits = pending or PendingLimits()
    applied = 0
    for row in ledger.pending_events(message_id, received_after=clock.now() - limits.max_age):
        event = ProviderEvent(
            row["source"],
            row["event_type"],
            Kind(row["kind"]),
            row["message_id"],
            row["at"],
            row["code"] or "",
            reference=row["reference"],
        )
        if apply_recorded(ledger, row["id"], event, breaker).outcome != "pending":
            applied += 1
    return applied
