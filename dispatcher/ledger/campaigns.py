"""CampaignLedger: the definition as loaded, the templates snapshotted at enqueue time, and the campaign's state."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update

from dispatcher.core import clock
from dispatcher.core.campaign import Campaign, campaign_to_dict, parse_campaign

from .connection import BaseLedger
from .records import CampaignRecord
from .schema import (
    campaigns,
)

log = logging.getLogger(__name__)


class CampaignLedger(BaseLedger):
    def save_campaign(
        self,
        campaign: Campaign,
        templates: dict[str, str],
        *,
        parent_id: str | None = None,
        purpose: str | None = None,
    ) -> None:
        """Record (or update) a campaign. ``parent_id``/``purpose``: a run made for another campaign (a
        reminder run: ``purpose="reminder:<template>"``); set when the record is first written."""
        now = clock.now()
        definition = campaign_to_dict(campaign)
        definition["deadline"] = campaign.deadline.isoformat()
        definition["send_by"] = campaign.send_by.isoformat()
        if campaign.send_from is not None:
            definition["send_from"] = campaign.send_from.isoformat()
        stmt = self._insert(campaigns).values(
            id=campaign.id,
            name=campaign.name,
            definition=definition,
            templates=templates,
            state="active",
            created_at=now,
            updated_at=now,
            parent_id=parent_id,
            purpose=purpose,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[campaigns.c.id],
            set_={"name": campaign.name, "definition": definition, "templates": templates, "updated_at": now},
        )
        with self.write() as conn:
            conn.execute(stmt)
        with self._cache_lock:
            self._campaign_cache.pop(campaign.id, None)

    def campaign(self, campaign_id: str, *, fresh: bool = False) -> CampaignRecord | None:
        if not fresh:
            with self._cache_lock:
                cached = self._campaign_cache.get(campaign_id)
            if cached is not None:
                return cached
        with self.read() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.id == campaign_id)).first()
        if row is None:
            return None
        definition = dict(row.definition)
        definition["deadline"] = datetime.fromisoformat(definition["deadline"])
        definition["send_by"] = datetime.fromisoformat(definition["send_by"])
        if definition.get("send_from") is not None:
            definition["send_from"] = datetime.fromisoformat(definition["send_from"])
        record = CampaignRecord(
            parse_campaign(definition, where=f"ledger campaign {campaign_id}"),
            dict(row.templates),
            row.state,
            row.state_reason,
            row.parent_id,
            row.purpose,
        )
        with self._cache_lock:
            self._campaign_cache[campaign_id] = record
        return record

    def campaign_ids(self, *, include_reminders: bool = False) -> list[str]:
        """Campaigns in the order they were made; reminder runs (children of a campaign) only when asked."""
        stmt = select(campaigns.c.id).order_by(campaigns.c.created_at)
        if not include_reminders:
            stmt = stmt.where(campaigns.c.parent_id.is_(None))
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def set_campaign_state(self, campaign_id: str, state: str, reason: str | None) -> bool:
        with self.write() as conn:
            result = conn.execute(
                update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(state=state, state_reason=reason, updated_at=clock.now())
            )
        with self._cache_lock:
            self._campaign_cache.pop(campaign_id, None)
        return result.rowcount == 1
