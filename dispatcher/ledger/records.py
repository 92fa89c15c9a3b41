"""What the ledger hands out: a delivery as read, and a campaign with its template snapshot."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from dispatcher.core.campaign import Campaign
from dispatcher.core.states import Channel, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    id: int
    campaign_id: str
    user_id: str
    row_no: int
    channel: Channel
    contact: str
    email: str | None
    phone: str | None
    flags: str
    receipt_url: str
    fields: dict[str, Any]
    status: Status
    attempts: int
    attempts_base: int
    not_before: datetime | None
    provider: str | None
    provider_message_id: str | None
    provider_code: str | None
    reason: str | None
    sms_parts: int | None
    first_sent_at: datetime | None
    last_event_at: datetime | None
    fallback_due_at: datetime | None = None
    fallback_at: datetime | None = None
    first_channel: str | None = None
    first_status: str | None = None
    first_provider_message_id: str | None = None

    def __repr__(self) -> str:  # keeps contacts and the URL out of tracebacks and logs
        return f"Delivery(id={self.id}, campaign={self.campaign_id!r}, status={self.status})"

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        m = row._mapping
        return cls(
            id=m["id"],
            campaign_id=m["campaign_id"],
            user_id=m["user_id"],
            row_no=m["row_no"],
            channel=Channel(m["channel"]),
            contact=m["contact"],
            email=m["email"],
            phone=m["phone"],
            flags=m["flags"],
            receipt_url=m["receipt_url"],
            fields=m["fields"] or {},
            status=Status(m["status"]),
            attempts=m["attempts"],
            attempts_base=m["attempts_base"] or 0,
            not_before=m["not_before"],
            provider=m["provider"],
            provider_message_id=m["provider_message_id"],
            provider_code=m["provider_code"],
            reason=m["reason"],
            sms_parts=m["sms_parts"],
            first_sent_at=m["first_sent_at"],
            last_event_at=m["last_event_at"],
            fallback_due_at=m.get("fallback_due_at"),
            fallback_at=m.get("fallback_at"),
            first_channel=m.get("first_channel"),
            first_status=m.get("first_status"),
            first_provider_message_id=m.get("first_provider_message_id"),
        )


#: Columns a move may set that a Delivery carries as they are (a slim move rebuilds the Delivery from them).
_SLIM_KEYS = frozenset(
    {
        "status",
        "updated_at",
        "attempts",
        "not_before",
        "provider",
        "provider_message_id",
        "provider_code",
        "reason",
        "sms_parts",
        "first_sent_at",
        "last_event_at",
    }
)
_DELIVERY_FIELDS = frozenset(f.name for f in fields(Delivery)) - {"status", "attempts"}


@dataclass(frozen=True)
class CampaignRecord:
    campaign: Campaign
    templates: dict[str, str]
    state: str
    state_reason: str | None
    #: A reminder run's campaign it was made from (None for a campaign of its own) and what it is for.
    parent_id: str | None = None
    purpose: str | None = None
