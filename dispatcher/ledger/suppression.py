"""Contacts never to be sent to again, by any campaign (hard bounce, complaint, opt-out, operator)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select

from dispatcher.core import clock
from dispatcher.core.states import Channel

from .connection import BaseLedger
from .schema import (
    suppressions,
)

log = logging.getLogger(__name__)


class SuppressionLedger(BaseLedger):
    def is_suppressed(self, contact: str) -> str | None:
        with self.read() as conn:
            return conn.execute(select(suppressions.c.reason).where(suppressions.c.contact == contact)).scalar()

    def suppress(self, contact: str, channel: Channel, reason: str, source: str) -> bool:
        stmt = (
            self._insert(suppressions)
            .values(contact=contact, channel=channel.value, reason=reason, source=source, created_at=clock.now())
            .on_conflict_do_nothing(index_elements=[suppressions.c.contact])
            .returning(suppressions.c.contact)
        )
        with self.write() as conn:
            return conn.execute(stmt).first() is not None

    def unsuppress(self, contact: str) -> bool:
        with self.write() as conn:
            return conn.execute(suppressions.delete().where(suppressions.c.contact == contact)).rowcount == 1

    def suppression_list(self, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(suppressions).order_by(suppressions.c.created_at).limit(limit))
            return [dict(r._mapping) for r in rows]
