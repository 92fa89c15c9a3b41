"""Per-campaign counts by channel and state, kept with every change so status pages need not count rows."""

from __future__ import annotations

import logging
import random

from sqlalchemy import Connection, func, select

from .connection import BaseLedger
from .schema import (
    deliveries,
    delivery_counts,
)

log = logging.getLogger(__name__)

COUNT_SHARDS = 16


class CounterLedger(BaseLedger):
    def _bump(self, conn: Connection, campaign_id: str, channel: str, status: str, by: int) -> None:
        stmt = self._insert(delivery_counts).values(
            campaign_id=campaign_id, channel=channel, status=status, shard=random.randrange(COUNT_SHARDS), n=by
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[
                delivery_counts.c.campaign_id,
                delivery_counts.c.channel,
                delivery_counts.c.status,
                delivery_counts.c.shard,
            ],
            set_={"n": delivery_counts.c.n + by},
        )
        conn.execute(stmt)

    def recount(self, campaign_id: str) -> None:
        """Rebuild a campaign's counters from the deliveries themselves (repair; never needed normally)."""
        with self.write() as conn:
            conn.execute(delivery_counts.delete().where(delivery_counts.c.campaign_id == campaign_id))
            rows = conn.execute(
                select(deliveries.c.channel, deliveries.c.status, func.count())
                .where(deliveries.c.campaign_id == campaign_id)
                .group_by(deliveries.c.channel, deliveries.c.status)
            ).all()
            if rows:
                conn.execute(
                    delivery_counts.insert(),
                    [
                        {"campaign_id": campaign_id, "channel": ch, "status": st, "shard": 0, "n": n}
                        for ch, st, n in rows
                    ],
                )

    def counts(self, campaign_id: str) -> dict[tuple[str, str], int]:
        """``{(channel, status): n}`` for one campaign, from the maintained counters."""
        stmt = (
            select(delivery_counts.c.channel, delivery_counts.c.status, func.sum(delivery_counts.c.n))
            .where(delivery_counts.c.campaign_id == campaign_id)
            .group_by(delivery_counts.c.channel, delivery_counts.c.status)
        )
        with self.read() as conn:
            return {(ch, st): int(n) for ch, st, n in conn.execute(stmt) if n}

    def count_rows(self, campaign_id: str) -> dict[tuple[str, str], int]:
        """The same counts, by counting the deliveries (slow on big campaigns; for checks and repair)."""
        stmt = (
            select(deliveries.c.channel, deliveries.c.status, func.count())
            .where(deliveries.c.campaign_id == campaign_id)
            .group_by(deliveries.c.channel, deliveries.c.status)
        )
        with self.read() as conn:
            return {(ch, st): n for ch, st, n in conn.execute(stmt)}
