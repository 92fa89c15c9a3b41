"""Provider events as received (deduplicated, early ones waiting, bounded) and the message ids providers gave."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update

from dispatcher.core import clock
from dispatcher.core.states import Status

from .connection import BaseLedger
from .schema import (
    deliveries,
    provider_events,
    provider_messages,
)

log = logging.getLogger(__name__)

_EVENTS_WAITING_MANY = (
    select(provider_events.c.message_id)
    .distinct()
    .where(provider_events.c.applied == 0, provider_events.c.message_id.in_(bindparam("message_ids", expanding=True)))
)


class EventLedger(BaseLedger):
    def events_waiting_for(self, message_ids: Iterable[str]) -> set[str]:
        """Which of these message ids have an event waiting for their send to be recorded (one query)."""
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return set()
        with self._one_statement() as conn:
            return {r[0] for r in conn.execute(_EVENTS_WAITING_MANY, {"message_ids": wanted})}

    def note_message_id(self, delivery_id: int, provider: str, message_id: str) -> None:
        with self.write() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.provider_message_id.is_(None))
                .values(provider=provider, provider_message_id=message_id)
            )

    # Provider events ---------------------------------------------------------------------------
    def delivery_for_message(self, message_id: str, *, provider: str, channel: str) -> tuple[int, int] | None:
        """The delivery (and the attempt) a message id was given for, by this provider on this channel.

        Never by message id alone: a message id names a send only together with the provider that gave it
        (an event from one provider must not find another provider's send of the same id).
        """
        with self.read() as conn:
            found = conn.execute(
                select(provider_messages.c.delivery_id, provider_messages.c.attempt).where(
                    provider_messages.c.message_id == message_id,
                    provider_messages.c.provider == provider,
                    provider_messages.c.channel == channel,
                )
            ).first()
            if found is None:
                found = conn.execute(
                    select(deliveries.c.id, deliveries.c.attempts).where(
                        deliveries.c.provider_message_id == message_id,
                        deliveries.c.provider == provider,
                        deliveries.c.channel == channel,
                    )
                ).first()
        return None if found is None else (int(found[0]), int(found[1]))

    def settle_message_id(
        self, delivery_id: int, *, provider: str, channel: str, attempt: int, message_id: str
    ) -> bool:
        """Give a send whose answer was lost the message id a provider event proves, if the delivery is still
        that send: ``unknown``, at that attempt, sent through that provider on that channel (compare-and-set).
        """
        with self.write() as conn:
            changed = (
                conn.execute(
                    update(deliveries)
                    .where(
                        deliveries.c.id == delivery_id,
                        deliveries.c.status == Status.UNKNOWN.value,
                        deliveries.c.attempts == attempt,
                        deliveries.c.provider == provider,
                        deliveries.c.channel == channel,
                    )
                    .values(provider_message_id=message_id)
                ).rowcount
                == 1
            )
            if changed:
                conn.execute(
                    self._provider_message_insert,
                    {
                        "message_id": message_id,
                        "delivery_id": delivery_id,
                        "attempt": attempt,
                        "channel": channel,
                        "provider": provider,
                        "sent_at": clock.now(),
                    },
                )
        return changed

    def record_event(self, dedupe_key: str, values: dict[str, Any]) -> int | None:
        """Store an event once; returns its id, or None when it was already received (a duplicate)."""
        stmt = (
            self._insert(provider_events)
            .values(dedupe_key=dedupe_key, received_at=clock.now(), **values)
            .on_conflict_do_nothing(index_elements=[provider_events.c.dedupe_key])
            .returning(provider_events.c.id)
        )
        with self.write() as conn:
            return conn.execute(stmt).scalar()

    def finish_event(self, event_id: int, *, delivery_id: int | None, applied: bool, outcome: str) -> None:
        with self.write() as conn:
            conn.execute(
                update(provider_events)
                .where(provider_events.c.id == event_id)
                .values(delivery_id=delivery_id, applied=int(applied), outcome=outcome)
            )

    def pending_events(
        self, message_id: str | None = None, limit: int = 1000, *, received_after: datetime | None = None
    ) -> list[dict[str, Any]]:
        """EventLedger waiting for their send, oldest first; ``received_after``: only those not yet expired."""
        stmt = select(provider_events).where(provider_events.c.applied == 0)
        if message_id is not None:
            stmt = stmt.where(provider_events.c.message_id == message_id)
        if received_after is not None:
            stmt = stmt.where(provider_events.c.received_at > received_after)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt.order_by(provider_events.c.at).limit(limit))]

    def prune_pending_events(self, *, received_before: datetime, keep: int) -> int:
        """Give up on waiting events received before ``received_before``, and on the oldest beyond ``keep``.

        They stay recorded (so a redelivery is still a duplicate) but are never applied. Returns how many.
        """
        waiting = and_(provider_events.c.applied == 0, provider_events.c.received_at <= received_before)
        given_up = {"applied": 1, "outcome": "expired: its send was never recorded"}
        with self.write() as conn:
            pruned = conn.execute(update(provider_events).where(waiting).values(given_up)).rowcount
            count = (
                conn.execute(
                    select(func.count()).select_from(provider_events).where(provider_events.c.applied == 0)
                ).scalar()
                or 0
            )
            if count > keep:
                oldest = (
                    select(provider_events.c.id)
                    .where(provider_events.c.applied == 0)
                    .order_by(provider_events.c.received_at, provider_events.c.id)
                    .limit(count - keep)
                )
                given_up["outcome"] = "dropped: too many events waiting"
                pruned += conn.execute(
                    update(provider_events).where(provider_events.c.id.in_(oldest)).values(given_up)
                ).rowcount
        return int(pruned)
