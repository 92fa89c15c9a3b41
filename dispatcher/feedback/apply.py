"""Applying provider events to the ledger (SPEC §3 step 3, §4).

Events arrive duplicated and out of order. A duplicate is recognised by its key and changes nothing; a
stale event is refused by the state table (``delivered`` never goes back to ``sent``); an event for a
message whose send is not recorded yet is kept and applied when the worker records it; an event that
proves a send whose answer was lost (``unknown``) settles it.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from ..ledger import Ledger
from ..ledger.store import Delivery
from ..privacy import redact
from ..states import Channel, Status
from .events import Kind, ProviderEvent

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


@dataclass(frozen=True)
class Applied:
    event_id: int | None
    outcome: str


def dedupe_key(event: ProviderEvent) -> str:
    raw = "|".join([event.source, event.event_type, event.message_id, event.at.isoformat(), event.code,
                    event.recipient or ""])
    return hashlib.sha256(raw.encode()).hexdigest()


def receive(ledger: Ledger, event: ProviderEvent, breaker: Any = None) -> Applied:
    """Record an event (once) and apply it if its delivery can be found."""
    event_id = ledger.record_event(dedupe_key(event), {
        "source": event.source, "event_type": event.event_type, "kind": event.kind.value,
        "message_id": event.message_id, "reference": event.reference, "at": event.at,
        "code": event.code[:100], "detail": redact(event.detail),
    })
    if event_id is None:
        return Applied(None, "duplicate")
    return apply_recorded(ledger, event_id, event, breaker)


def _find(ledger: Ledger, event: ProviderEvent) -> int | None:
    found = ledger.delivery_for_message(event.message_id)
    if found is not None or not event.reference:
        return found
    # A send whose answer was lost has no message id in the ledger; the echoed reference proves it.
    try:
        delivery_id, attempt = (int(x) for x in event.reference.split(".", 1))
    except ValueError:
        return None
    delivery = ledger.get(delivery_id)
    if delivery is None or delivery.attempts != attempt or delivery.status is not Status.UNKNOWN:
        return None
    ledger.note_message_id(delivery_id, event.source, event.message_id)
    return delivery_id


def apply_recorded(ledger: Ledger, event_id: int, event: ProviderEvent, breaker: Any = None) -> Applied:
    delivery_id = _find(ledger, event)
    if delivery_id is None:
        ledger.finish_event(event_id, delivery_id=None, applied=False, outcome="waiting for its send")
        return Applied(event_id, "pending")
    delivery = ledger.get(delivery_id)
    assert delivery is not None
    outcome = _apply(ledger, delivery, event, breaker)
    ledger.finish_event(event_id, delivery_id=delivery_id, applied=True, outcome=outcome)
    return Applied(event_id, outcome)


def _apply(ledger: Ledger, delivery: Delivery, event: ProviderEvent, breaker: Any) -> str:
    actor = f"event:{event.source}:{event.event_type}"
    current = delivery.provider_message_id in (None, event.message_id)
    if event.kind in SUPPRESS:
        # An earlier attempt may have gone to the other contact: suppress what the event names.
        contact = delivery.contact if current else event.recipient
        if contact:
            channel = Channel.EMAIL if "@" in contact else Channel.SMS
            ledger.suppress(contact, channel, SUPPRESS[event.kind], actor)
    if event.kind in BREAKER and breaker is not None:
        breaker.record_failure(delivery.campaign_id, counted_attempt=False)
    target = TARGET.get(event.kind)
    if target is None:
        return "recorded"
    if not current:
        return "recorded: concerns an earlier attempt"
    values: dict[str, Any] = {"last_event_at": event.at}
    if target in (Status.FAILED, Status.BOUNCED, Status.COMPLAINED):
        values["reason"] = redact(f"{event.event_type} {event.code}: {event.detail}".strip(" :"))[:500]
    moved = ledger.move(delivery.id, target, actor=actor, provider_code=event.code[:100] or event.event_type,
                        detail=redact(event.detail)[:500] or None, values=values)
    if moved is None:
        return f"ignored: {delivery.status} does not go to {target}"
    return f"moved:{target}"


def apply_pending(ledger: Ledger, message_id: str | None = None, breaker: Any = None) -> int:
    """Apply events that arrived before their send was recorded. Returns how many were applied."""
    applied = 0
    for row in ledger.pending_events(message_id):
        event = ProviderEvent(row["source"], row["event_type"], Kind(row["kind"]), row["message_id"], row["at"],
                              row["code"] or "", row["detail"] or "", reference=row["reference"])
        if apply_recorded(ledger, row["id"], event, breaker).outcome != "pending":
            applied += 1
    return applied
