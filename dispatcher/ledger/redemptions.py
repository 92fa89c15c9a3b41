"""RedemptionLedger: the receipt site's word that a person has their points, and the reminder runs.

A redemption is a fact about a person in a campaign, kept once with where it came from, who loaded it and
when (the row itself is the audit record). A reminder run is a campaign of its own (``parent_id`` set,
``purpose`` = ``reminder:<template>``) whose deliveries are ordinary deliveries: everything the send path
guarantees for a first message holds for a reminder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update

from dispatcher.core import clock
from dispatcher.core.clock import JST
from dispatcher.core.states import Status

from .connection import BaseLedger
from .schema import campaigns, deliveries, redemptions, suppressions

log = logging.getLogger(__name__)

#: What counts as notified (SPEC §10): a channel reached the person and no failure event came back.
NOTIFIED_FOR_REMINDER = (Status.DELIVERED.value, Status.SENT.value)

_KNOWN_USERS = select(deliveries.c.user_id).where(
    deliveries.c.campaign_id == bindparam("campaign"), deliveries.c.user_id.in_(bindparam("users", expanding=True))
)
_REDEEMED_AMONG = (
    select(deliveries.c.id)
    .select_from(
        deliveries.join(campaigns, campaigns.c.id == deliveries.c.campaign_id).join(
            redemptions,
            and_(redemptions.c.campaign_id == campaigns.c.parent_id, redemptions.c.user_id == deliveries.c.user_id),
        )
    )
    .where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
)


@dataclass(frozen=True)
class RedemptionCounts:
    new: int
    filled: int
    unchanged: int


class RedemptionLedger(BaseLedger):
    # redemptions -----------------------------------------------------------------------------------
    def known_users(self, campaign_id: str, user_ids: Sequence[str]) -> set[str]:
        """Which of these users have a delivery in the campaign."""
        if not user_ids:
            return set()
        with self.read() as conn:
            return set(conn.execute(_KNOWN_USERS, {"campaign": campaign_id, "users": list(user_ids)}).scalars())

    def add_redemptions(
        self, campaign_id: str, rows: Sequence[tuple[str, datetime | None]], *, source: str, actor: str
    ) -> RedemptionCounts:
        """Record redemptions of known users (idempotent per campaign + user).

        A person already recorded stays as recorded, except that a time the first file did not give (we
        then kept the moment we learnt it, ``redeemed_at == recorded_at``) is filled in by a later file
        that gives one. Rows for the same user within ``rows`` count once (the first wins).
        """
        now = clock.now()
        first: dict[str, datetime | None] = {}
        for user_id, at in rows:
            first.setdefault(user_id, at)
        if not first:
            return RedemptionCounts(0, 0, 0)
        with self.write() as conn:
            have = {
                r.user_id: r
                for r in conn.execute(
                    select(redemptions.c.user_id, redemptions.c.redeemed_at, redemptions.c.recorded_at).where(
                        redemptions.c.campaign_id == campaign_id, redemptions.c.user_id.in_(list(first))
                    )
                )
            }
            new = [
                {
                    "campaign_id": campaign_id,
                    "user_id": user_id,
                    "redeemed_at": at or now,
                    "source": source,
                    "actor": actor,
                    "recorded_at": now,
                }
                for user_id, at in first.items()
                if user_id not in have
            ]
            if new:
                stmt = self._insert(redemptions).on_conflict_do_nothing(
                    index_elements=[redemptions.c.campaign_id, redemptions.c.user_id]
                )
                conn.execute(stmt, new)
            fill = [
                {"c": campaign_id, "u": user_id, "at": at, "src": f"; time from {source} ({actor})"}
                for user_id, at in first.items()
                if at is not None and user_id in have and have[user_id].redeemed_at == have[user_id].recorded_at
            ]
            if fill:
                conn.execute(
                    update(redemptions)
                    .where(
                        redemptions.c.campaign_id == bindparam("c"),
                        redemptions.c.user_id == bindparam("u"),
                        redemptions.c.redeemed_at == redemptions.c.recorded_at,
                    )
                    .values(
                        redeemed_at=bindparam("at", type_=redemptions.c.redeemed_at.type),
                        source=redemptions.c.source + bindparam("src"),
                    ),
                    fill,
                )
        return RedemptionCounts(len(new), len(fill), len(first) - len(new) - len(fill))

    def redeemed_count(self, campaign_id: str) -> int:
        with self.read() as conn:
            stmt = select(func.count()).select_from(redemptions).where(redemptions.c.campaign_id == campaign_id)
            return int(conn.execute(stmt).scalar_one())

    def redemptions_of(self, campaign_id: str, user_ids: Sequence[str]) -> dict[str, datetime]:
        """``{user_id: redeemed_at}`` for those of these users who redeemed."""
        if not user_ids:
            return {}
        stmt = select(redemptions.c.user_id, redemptions.c.redeemed_at).where(
            redemptions.c.campaign_id == campaign_id, redemptions.c.user_id.in_(list(user_ids))
        )
        with self.read() as conn:
            return {u: at for u, at in conn.execute(stmt)}

    def statuses_of(self, campaign_id: str, user_ids: Sequence[str]) -> dict[str, str]:
        """``{user_id: status}`` of these users' deliveries in a campaign (a reminder run, for the report)."""
        if not user_ids:
            return {}
        stmt = select(deliveries.c.user_id, deliveries.c.status).where(
            deliveries.c.campaign_id == campaign_id, deliveries.c.user_id.in_(list(user_ids))
        )
        with self.read() as conn:
            return {u: st for u, st in conn.execute(stmt)}

    def redeemed_among(self, delivery_ids: Sequence[int]) -> set[int]:
        """Those of these deliveries that belong to a reminder run whose person has redeemed (one query)."""
        if not delivery_ids:
            return set()
        with self._one_statement() as conn:
            return set(conn.execute(_REDEEMED_AMONG, {"ids": list(delivery_ids)}).scalars())

    def redeemed_by_channel(self, campaign_id: str) -> dict[str, int]:
        """Redemptions counted by the channel of the person's delivery."""
        stmt = (
            select(deliveries.c.channel, func.count())
            .select_from(
                redemptions.join(
                    deliveries,
                    and_(
                        deliveries.c.campaign_id == redemptions.c.campaign_id,
                        deliveries.c.user_id == redemptions.c.user_id,
                    ),
                )
            )
            .where(redemptions.c.campaign_id == campaign_id)
            .group_by(deliveries.c.channel)
        )
        with self.read() as conn:
            return {ch: int(n) for ch, n in conn.execute(stmt)}

    def _jst_day(self, column: Any) -> Any:
        if self.dialect == "postgresql":
            return func.to_char(column + timedelta(hours=9), "YYYY-MM-DD")
        return func.strftime("%Y-%m-%d", column, "+9 hours")

    def per_day(self, campaign_id: str) -> dict[str, dict[str, int]]:
        """``{"notified": {day: n}, "redeemed": {day: n}}`` by JST day: first sends of people now notified,
        and redemptions."""
        sent_day = self._jst_day(deliveries.c.first_sent_at)
        notified = (
            select(sent_day, func.count())
            .where(
                deliveries.c.campaign_id == campaign_id,
                deliveries.c.status.in_([*NOTIFIED_FOR_REMINDER, Status.COMPLAINED.value]),
                deliveries.c.first_sent_at.is_not(None),
            )
            .group_by(sent_day)
        )
        red_day = self._jst_day(redemptions.c.redeemed_at)
        redeemed = select(red_day, func.count()).where(redemptions.c.campaign_id == campaign_id).group_by(red_day)
        with self.read() as conn:
            return {
                "notified": {str(d): int(n) for d, n in conn.execute(notified)},
                "redeemed": {str(d): int(n) for d, n in conn.execute(redeemed)},
            }

    # reminder runs ---------------------------------------------------------------------------------
    def child_campaigns(self, campaign_id: str) -> list[tuple[str, str | None]]:
        """``[(id, purpose)]`` of the reminder runs made from this campaign, oldest first."""
        stmt = (
            select(campaigns.c.id, campaigns.c.purpose)
            .where(campaigns.c.parent_id == campaign_id)
            .order_by(campaigns.c.created_at, campaigns.c.id)
        )
        with self.read() as conn:
            return [(i, p) for i, p in conn.execute(stmt)]

    def campaign_definition(self, campaign_id: str) -> dict[str, Any] | None:
        """The stored definition as JSON (unparsed: it is copied into a reminder run as it is)."""
        with self.read() as conn:
            row = conn.execute(select(campaigns.c.definition).where(campaigns.c.id == campaign_id)).first()
        return None if row is None else dict(row.definition)

    def save_reminder_campaign(
        self,
        reminder_id: str,
        parent_id: str,
        purpose: str,
        name: str,
        definition: dict[str, Any],
        templates: dict[str, str],
        state: str,
        reason: str,
    ) -> bool:
        """Create the reminder run's campaign row once; False when it already exists (left as it is)."""
        now = clock.now()
        stmt = (
            self._insert(campaigns)
            .values(
                id=reminder_id,
                name=name,
                definition=definition,
                templates=templates,
                state=state,
                state_reason=reason,
                created_at=now,
                updated_at=now,
                parent_id=parent_id,
                purpose=purpose,
            )
            .on_conflict_do_nothing(index_elements=[campaigns.c.id])
            .returning(campaigns.c.id)
        )
        with self.write() as conn:
            created = conn.execute(stmt).first() is not None
        with self._cache_lock:
            self._campaign_cache.pop(reminder_id, None)
        return created

    def refresh_statistics(self) -> None:
        """PostgreSQL: let the planner see the deliveries as they are now (sampled, a second or two). A list
        just loaded leaves statistics that say "a few rows", and a range scan of a campaign may then be
        planned on the wrong index (all its rows for every page)."""
        if self.dialect == "postgresql":
            with self._one_statement() as conn:
                conn.exec_driver_sql("ANALYZE deliveries")

    def id_range(self, campaign_id: str) -> tuple[int, int] | None:
        """The smallest and largest delivery id of a campaign (None when it has none)."""
        stmt = select(func.min(deliveries.c.id), func.max(deliveries.c.id)).where(
            deliveries.c.campaign_id == campaign_id
        )
        with self.read() as conn:
            low, high = conn.execute(stmt).one()
        return None if low is None else (int(low), int(high))

    def reminder_candidates(self, parent_id: str, reminder_id: str, low: int, high: int) -> list[dict[str, Any]]:
        """The parent's deliveries with ids in ``[low, high]`` that may get this reminder, in id order:
        notified (delivered, or sent with no failure event), not redeemed, contact not suppressed, not
        already in the reminder run. Complained, bounced, failed, unknown and unsent people never are.

        One range scan of the parent's window, then three look-ups by key for its people (redemptions,
        suppressions, the run): each is an index probe whatever the planner believes about table sizes
        (a join planned on the statistics of a run still being written degenerates into nested loops)."""
        stmt = (
            select(
                deliveries.c.id,
                deliveries.c.user_id,
                deliveries.c.row_no,
                deliveries.c.channel,
                deliveries.c.contact,
                deliveries.c.email,
                deliveries.c.phone,
                deliveries.c.flags,
                deliveries.c.receipt_url,
                deliveries.c.fields,
            )
            .where(
                deliveries.c.id >= low,
                deliveries.c.id <= high,
                deliveries.c.campaign_id == parent_id,
                deliveries.c.status.in_(NOTIFIED_FOR_REMINDER),
            )
            .order_by(deliveries.c.id)
        )
        with self.read() as conn:
            rows = [dict(row._mapping) for row in conn.execute(stmt)]
            if not rows:
                return []
            users = [r["user_id"] for r in rows]
            contacts = list({r["contact"] for r in rows})
            redeemed = set(
                conn.execute(
                    select(redemptions.c.user_id).where(
                        redemptions.c.campaign_id == parent_id, redemptions.c.user_id.in_(users)
                    )
                ).scalars()
            )
            suppressed = set(
                conn.execute(select(suppressions.c.contact).where(suppressions.c.contact.in_(contacts))).scalars()
            )
            present = set(conn.execute(_KNOWN_USERS, {"campaign": reminder_id, "users": users}).scalars())
        return [
            r
            for r in rows
            if r["user_id"] not in redeemed and r["contact"] not in suppressed and r["user_id"] not in present
        ]


def jst_day(instant: datetime) -> str:
    return instant.astimezone(JST).strftime("%Y-%m-%d")
