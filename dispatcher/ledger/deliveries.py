"""Reading deliveries (for sending, for the sweep, for reports) and the small updates that are not moves."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from sqlalchemy import bindparam, func, or_, select, update

from dispatcher.core import clock
from dispatcher.core.states import CLAIMABLE, PENDING, Status

from .connection import BaseLedger
from .records import Delivery
from .schema import (
    campaigns,
    deliveries,
    suppressions,
)

log = logging.getLogger(__name__)

_GET = select(deliveries).where(deliveries.c.id == bindparam("id"))
_FOR_SEND = select(
    deliveries,
    campaigns.c.state.label("campaign_state"),
    campaigns.c.updated_at.label("campaign_updated_at"),
    suppressions.c.reason.label("suppressed"),
).select_from(
    deliveries.outerjoin(campaigns, campaigns.c.id == deliveries.c.campaign_id).outerjoin(
        suppressions, suppressions.c.contact == deliveries.c.contact
    )
)
_FOR_SEND_MANY = _FOR_SEND.where(deliveries.c.id.in_(bindparam("ids", expanding=True)))


class DeliveryLedger(BaseLedger):
    def get(self, delivery_id: int) -> Delivery | None:
        with self._one_statement() as conn:
            row = conn.execute(_GET, {"id": delivery_id}).first()
        return None if row is None else Delivery.from_row(row)

    def for_send_many(self, ids: Sequence[int]) -> dict[int, tuple[Delivery, str | None, datetime | None, str | None]]:
        """What a worker reads before it may claim, for several deliveries in one query, by id (ids not in the
        ledger are left out): each delivery, its campaign's ``state`` and ``updated_at`` (both None when the
        campaign is missing) and the suppression reason for its contact."""
        if not ids:
            return {}
        with self._one_statement() as conn:
            rows = conn.execute(_FOR_SEND_MANY, {"ids": list(ids)}).all()
        found = {}
        for row in rows:
            m = row._mapping
            found[m["id"]] = (Delivery.from_row(row), m["campaign_state"], m["campaign_updated_at"], m["suppressed"])
        return found

    def pending_work(self, campaign_id: str) -> dict[str, tuple[int, int]]:
        """``{channel: (deliveries, sms parts)}`` still owed a send."""
        stmt = (
            select(deliveries.c.channel, func.count(), func.coalesce(func.sum(deliveries.c.sms_parts), 0))
            .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status.in_([s.value for s in PENDING]))
            .group_by(deliveries.c.channel)
        )
        with self.read() as conn:
            return {ch: (int(n), int(parts)) for ch, n, parts in conn.execute(stmt)}

    def overdue(self, now: datetime, limit: int = 5000) -> list[int]:
        """Claimable deliveries of campaigns whose send_by has passed (to be expired)."""
        with self.read() as conn:
            rows = conn.execute(select(campaigns.c.id, campaigns.c.definition)).all()
        late = [cid for cid, definition in rows if datetime.fromisoformat(definition["send_by"]) <= now]
        if not late:
            return []
        stmt = (
            select(deliveries.c.id)
            .where(deliveries.c.campaign_id.in_(late), deliveries.c.status.in_([s.value for s in CLAIMABLE]))
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def due(
        self, now: datetime, *, limit: int = 10_000, after_id: int = 0, dispatched_before: datetime | None = None
    ) -> list[int]:
        """Ids of claimable deliveries whose time has come, in active campaigns, in id order.

        ``dispatched_before`` keeps out those handed to the broker since then (probably still queued).
        """
        stmt = (
            select(deliveries.c.id)
            .join(campaigns, campaigns.c.id == deliveries.c.campaign_id)
            .where(
                deliveries.c.status.in_([s.value for s in CLAIMABLE]),
                or_(deliveries.c.not_before.is_(None), deliveries.c.not_before <= now),
                campaigns.c.state == "active",
                deliveries.c.id > after_id,
                *(
                    []
                    if dispatched_before is None
                    else [or_(deliveries.c.dispatched_at.is_(None), deliveries.c.dispatched_at < dispatched_before)]
                ),
            )
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def in_status(self, campaign_id: str, statuses: Iterable[Status], *, limit: int | None = None) -> list[int]:
        stmt = (
            select(deliveries.c.id)
            .where(deliveries.c.campaign_id == campaign_id, deliveries.c.status.in_([s.value for s in statuses]))
            .order_by(deliveries.c.id)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def stale_sending(self, before: datetime) -> list[int]:
        stmt = select(deliveries.c.id).where(
            deliveries.c.status == Status.SENDING.value, deliveries.c.updated_at < before
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def iter_campaign(self, campaign_id: str, batch: int = 5000) -> Iterator[Delivery]:
        last = 0
        while True:
            with self.read() as conn:
                rows = conn.execute(
                    select(deliveries)
                    .where(deliveries.c.campaign_id == campaign_id, deliveries.c.id > last)
                    .order_by(deliveries.c.id)
                    .limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield Delivery.from_row(row)
            last = rows[-1].id

    def defer(self, delivery_id: int, not_before: datetime) -> bool:
        """Hold a claimable delivery until ``not_before`` (e.g. the SMS window opens)."""
        with self.write() as conn:
            result = conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id, deliveries.c.status.in_([s.value for s in CLAIMABLE]))
                .values(not_before=not_before, updated_at=clock.now())
            )
        return result.rowcount == 1

    def mark_dispatched(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        with self.write() as conn:
            for start in range(0, len(ids), 1000):
                conn.execute(
                    update(deliveries).where(deliveries.c.id.in_(ids[start : start + 1000])).values(dispatched_at=at)
                )
