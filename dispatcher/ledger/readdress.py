"""Re-address and requeue: the one operation that sends a delivery again, possibly to another contact or on
the other channel (one-person resend, the corrections file, automatic fallback).

It is a single move (compare-and-set on the state the caller saw, audit row, counters moved from the old
channel to the new one) in one transaction, so a process killed after it leaves a ``queued`` delivery that
the sweep hands to the broker, and the atomic claim keeps a duplicate broker message harmless.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from dispatcher.core import clock
from dispatcher.core.privacy import mask_contact
from dispatcher.core.states import Channel, Status

from .moves import MoveLedger
from .records import Delivery
from .schema import deliveries, transitions

log = logging.getLogger(__name__)

#: Where a fallback may start from: what a hard bounce or a permanent failure left.
FALLBACK_FROM = frozenset({Status.FAILED, Status.BOUNCED})


def fallback_owed(delivery: Delivery) -> bool:
    """Whether a hard bounce or permanent failure of this delivery owes it a fallback, if its campaign has
    one: its row has the other contact and it has not fallen back before (never twice)."""
    other = delivery.phone if delivery.channel is Channel.EMAIL else delivery.email
    return bool(other) and delivery.fallback_at is None


@dataclass(frozen=True)
class Address:
    """Where a delivery goes: its channel and the contact on it (normalised)."""

    channel: Channel
    contact: str

    def masked(self) -> str:
        return mask_contact(self.channel.value, self.contact)


class ReaddressLedger(MoveLedger):
    def readdress(
        self,
        delivery: Delivery,
        to: Address,
        *,
        actor: str,
        why: str,
        operator: bool = True,
        sms_parts: int | None = None,
        values: dict[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Delivery | None:
        """Queue ``delivery`` (as the caller read it) again on ``to``, from the state it was read in.

        The retry bound counts from here (``attempts_base``); the provider and message id of the old attempt
        are cleared, so a late event for it can no longer match the delivery as it is now (its message id
        stays in ``provider_messages`` and is recorded, not applied). The audit row names the actor, why,
        and the old and new contact masked. None when the delivery changed meanwhile (nothing done).
        """
        old = Address(delivery.channel, delivery.contact)
        moved_values: dict[str, Any] = {
            "channel": to.channel.value,
            "contact": to.contact,
            "attempts_base": delivery.attempts,
            "not_before": None,
            "dispatched_at": None,
            "provider": None,
            "provider_message_id": None,
            "provider_code": None,
            "reason": None,
            "fallback_due_at": None,
            **(values or {}),
        }
        if to.channel is not delivery.channel and delivery.first_channel is None:
            # The first channel's evidence stays in the report beside the new channel's.
            moved_values.setdefault("first_channel", delivery.channel.value)
            moved_values.setdefault("first_status", delivery.status.value)
            moved_values.setdefault("first_provider_message_id", delivery.provider_message_id)
        if to.channel is Channel.EMAIL:
            moved_values["email"] = to.contact
            moved_values["sms_parts"] = None
        else:
            moved_values["phone"] = to.contact
            moved_values["sms_parts"] = sms_parts
        change = f"{old.masked()} -> {to.masked()}" if old != to else f"again to {to.masked()}"
        detail = f"{why}; {change}"[:1000]
        return self.move(
            delivery.id,
            Status.QUEUED,
            actor=actor,
            expect=[delivery.status],
            detail=detail,
            values=moved_values,
            operator=operator,
            now=now,
            current=delivery,
        )

    def fallback_due(self, limit: int = 1000) -> list[int]:
        """Deliveries owed a fallback whose fallback was not yet decided (for the sweep)."""
        stmt = (
            select(deliveries.c.id)
            .where(
                deliveries.c.fallback_due_at.is_not(None),
                deliveries.c.fallback_at.is_(None),
                deliveries.c.status.in_([s.value for s in FALLBACK_FROM]),
            )
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def close_fallback(self, delivery: Delivery, *, actor: str, why: str | None) -> bool:
        """No fallback for this delivery (``why`` says why, kept as its reason and in the audit trail; None:
        the campaign has none, quietly). Its state does not change. False if it changed meanwhile."""
        now = clock.now()
        new: dict[str, Any] = {"fallback_due_at": None}
        if why is not None:
            new["reason"] = f"{delivery.reason or delivery.status.value}; no fallback: {why}"[:500]
        with self.write() as conn:
            done = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.id == delivery.id,
                    deliveries.c.status == delivery.status.value,
                    deliveries.c.fallback_due_at.is_not(None),
                )
                .values(**new)
            )
            if done.rowcount != 1:
                return False
            if why is not None:
                conn.execute(
                    transitions.insert(),
                    {
                        "delivery_id": delivery.id,
                        "campaign_id": delivery.campaign_id,
                        "at": now,
                        "from_status": delivery.status.value,
                        "to_status": delivery.status.value,
                        "attempt": delivery.attempts,
                        "provider_code": None,
                        "detail": f"no fallback: {why}"[:1000],
                        "actor": actor,
                    },
                )
        return True
