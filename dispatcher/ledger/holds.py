"""Work held in the ledger until a campaign's ``send_from`` (SPEC §9, second wave).

Held deliveries are ``queued`` with ``not_before = send_from`` and ``dispatched_at`` empty: nothing of them is
on the broker (Dramatiq would prefetch delayed messages into worker memory), and the sweep hands them over
as soon as ``not_before`` has come, because a delivery never dispatched always passes its grace filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import or_, select, update

from dispatcher.core import clock
from dispatcher.core.states import CLAIMABLE

from .connection import BaseLedger
from .schema import campaigns, deliveries

_CLAIMABLE = [s.value for s in CLAIMABLE]


class HoldLedger(BaseLedger):
    def hold(self, ids: Sequence[int], until: datetime) -> int:
        """Keep claimable deliveries in the ledger until ``until``; returns how many were held."""
        held = 0
        now = clock.now()
        with self.write() as conn:
            for start in range(0, len(ids), 1000):
                result = conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(ids[start : start + 1000]), deliveries.c.status.in_(_CLAIMABLE))
                    .values(not_before=until, dispatched_at=None, updated_at=now)
                )
                held += result.rowcount
        return held

    def retime_held(self, campaign_id: str, old: datetime, new: datetime | None) -> int:
        """The campaign's ``send_from`` moved from ``old`` to ``new``: what waited for ``old`` now waits for
        ``new`` (or, with no ``send_from`` any more, is due at once). Returns how many deliveries moved."""
        with self.write() as conn:
            result = conn.execute(
                update(deliveries)
                .where(
                    deliveries.c.campaign_id == campaign_id,
                    deliveries.c.status.in_(_CLAIMABLE),
                    deliveries.c.not_before == old,
                )
                .values(not_before=new, dispatched_at=None, updated_at=clock.now())
            )
        return int(result.rowcount)

    def _send_froms(self) -> list[tuple[str, datetime]]:
        """``(campaign id, send_from)`` of the active campaigns that have one."""
        with self.read() as conn:
            rows = conn.execute(select(campaigns.c.id, campaigns.c.definition).where(campaigns.c.state == "active"))
            found = [(cid, d["send_from"]) for cid, d in rows if d.get("send_from")]
        return [(cid, datetime.fromisoformat(at)) for cid, at in found]

    def next_send_from(self, now: datetime) -> datetime | None:
        """The earliest ``send_from`` still ahead of ``now`` among active campaigns (the sweeper wakes then)."""
        return min((at for _, at in self._send_froms() if at > now), default=None)

    def starting(self, since: datetime, now: datetime) -> list[str]:
        """Active campaigns whose ``send_from`` lies in ``(since, now]``: they have just started."""
        return sorted(cid for cid, at in self._send_froms() if since < at <= now)

    def due_in(self, campaign_ids: Sequence[str], now: datetime, *, after_id: int = 0, limit: int = 5000) -> list[int]:
        """Claimable deliveries of these campaigns whose time has come, whatever ``dispatched_at`` says."""
        stmt = (
            select(deliveries.c.id)
            .where(
                deliveries.c.campaign_id.in_(list(campaign_ids)),
                deliveries.c.status.in_(_CLAIMABLE),
                or_(deliveries.c.not_before.is_(None), deliveries.c.not_before <= now),
                deliveries.c.id > after_id,
            )
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())
