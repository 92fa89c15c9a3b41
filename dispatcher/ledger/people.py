"""PeopleLedger: finding one person of a campaign the way a caller names them, and everything kept about them.

Every lookup is an index seek: by user (the campaign + user unique key), by inquiry number
(``ix_deliveries_campaign_inquiry``) or by contact (``ix_deliveries_campaign_contact``). Two slower
fallbacks run only when the seek finds nobody: rows written before ``deliveries.inquiry_no`` existed are
matched on ``fields->inquiry_no``, and a contact that is not the one a delivery goes to is matched on the
row's other contact (``email``/``phone`` columns) — both bounded to the one campaign.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, select

from dispatcher.core.states import Channel

from .connection import BaseLedger
from .records import Delivery
from .schema import (
    campaigns,
    deliveries,
    provider_messages,
    transitions,
)

log = logging.getLogger(__name__)

#: More people than this behind one inquiry number or contact is not a person any more: the rest are left out.
MAX_MATCHES = 50


class PeopleLedger(BaseLedger):
    def _people(self, *conditions: ColumnElement[bool]) -> list[Delivery]:
        stmt = select(deliveries).where(and_(*conditions)).order_by(deliveries.c.user_id).limit(MAX_MATCHES)
        with self.read() as conn:
            return [Delivery.from_row(row) for row in conn.execute(stmt)]

    def person_by_user(self, campaign_id: str, user_id: str) -> Delivery | None:
        found = self._people(deliveries.c.campaign_id == campaign_id, deliveries.c.user_id == user_id)
        return found[0] if found else None

    def people_by_inquiry(self, campaign_id: str, inquiry_no: str) -> list[Delivery]:
        """Deliveries whose inquiry number is ``inquiry_no`` (already NFKC-normalised by the caller)."""
        in_campaign = deliveries.c.campaign_id == campaign_id
        found = self._people(in_campaign, deliveries.c.inquiry_no == inquiry_no)
        if found:
            return found
        # Rows written before the column existed carry the number in their fields only.
        return self._people(
            in_campaign,
            deliveries.c.inquiry_no.is_(None),
            deliveries.c.fields["inquiry_no"].as_string() == inquiry_no,
        )

    def people_by_contact(self, campaign_id: str, channel: Channel, contact: str) -> list[Delivery]:
        """Deliveries going to ``contact`` (normalised as enqueue does: E.164, or the address with its domain
        in lower case), else those whose row holds it as the other contact."""
        in_campaign = deliveries.c.campaign_id == campaign_id
        found = self._people(in_campaign, deliveries.c.contact == contact)
        if found:
            return found
        column = deliveries.c.email if channel is Channel.EMAIL else deliveries.c.phone
        return self._people(in_campaign, deliveries.c.channel != channel.value, column == contact)

    def person_trails(self, delivery_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """The audit rows of each delivery, oldest first."""
        trails: dict[int, list[dict[str, Any]]] = {i: [] for i in delivery_ids}
        if not delivery_ids:
            return trails
        stmt = (
            select(transitions)
            .where(transitions.c.delivery_id.in_(list(delivery_ids)))
            .order_by(transitions.c.delivery_id, transitions.c.id)
        )
        with self.read() as conn:
            for row in conn.execute(stmt):
                trails[row.delivery_id].append(dict(row._mapping))
        return trails

    def person_messages(self, delivery_id: int) -> list[dict[str, Any]]:
        """Every message id a provider gave this delivery, one per attempt that reached a provider."""
        stmt = (
            select(provider_messages)
            .where(provider_messages.c.delivery_id == delivery_id)
            .order_by(provider_messages.c.attempt, provider_messages.c.sent_at)
        )
        with self.read() as conn:
            return [dict(row._mapping) for row in conn.execute(stmt)]

    def person_reminders(self, campaign_id: str, user_id: str) -> list[tuple[str | None, Delivery]]:
        """This person's deliveries in the campaign's reminder runs (child campaigns), oldest run first, each
        with the run's ``purpose`` (``reminder:<template>``)."""
        stmt = (
            select(deliveries, campaigns.c.purpose.label("run_purpose"))
            .join(campaigns, campaigns.c.id == deliveries.c.campaign_id)
            .where(campaigns.c.parent_id == campaign_id, deliveries.c.user_id == user_id)
            .order_by(campaigns.c.created_at, deliveries.c.id)
        )
        with self.read() as conn:
            return [(row.run_purpose, Delivery.from_row(row)) for row in conn.execute(stmt)]
