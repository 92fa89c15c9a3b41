"""``dispatcher report``: who was told, by which channel, when, and with what evidence (SPEC §9–10).

One row per delivery, contacts masked, never a receipt URL. Rows rejected at import are accounted for by
the rejects files named in the ledger's import records.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from dispatcher.core.clock import JST
from dispatcher.core.csvout import SafeCsvWriter
from dispatcher.core.privacy import mask_contact, redact
from dispatcher.core.states import Status
from dispatcher.ledger import Ledger
from dispatcher.ledger.store import Delivery

COLUMNS = [
    "user_id",
    "channel",
    "contact",
    "status",
    "attempts",
    "provider_message_id",
    "first_sent_at",
    "last_event_at",
    "reason",
    "notified",
    "evidence",
    "row",
    "flags",
    # Second wave: the first channel's evidence when the delivery moved to the other one (fallback, resend).
    "first_channel",
    "first_status",
    "first_provider_message_id",
    "fallback_at",
]

#: A person counts as notified when a channel reached them (SPEC §10); a complaint proves receipt.
NOTIFIED = frozenset({Status.DELIVERED, Status.SENT, Status.COMPLAINED})


@dataclass
class ReportSummary:
    rows: int = 0
    notified: int = 0
    rejected: int = 0


def _time(value: datetime | None) -> str:
    return value.astimezone(JST).isoformat(timespec="seconds") if value else ""


def evidence(d: Delivery) -> str:
    if d.status is Status.DELIVERED:
        return f"delivery reported by {d.provider} at {_time(d.last_event_at)}"
    if d.status is Status.SENT:
        return f"accepted by {d.provider} at {_time(d.first_sent_at)}; no failure reported"
    if d.status is Status.COMPLAINED:
        return "recipient marked it as spam (received)"
    if d.status is Status.UNKNOWN:
        return "the provider's answer was lost: may have been sent; resolve with an event or `resend --status unknown`"
    return redact(d.reason or "")


def _pages(ledger: Ledger, campaign_id: str, size: int = 5000) -> Iterator[list[Delivery]]:
    page: list[Delivery] = []
    for d in ledger.iter_campaign(campaign_id, batch=size):
        page.append(d)
        if len(page) >= size:
            yield page
            page = []
    if page:
        yield page


def write_report(ledger: Ledger, campaign_id: str, path: Path) -> ReportSummary:
    """One row per delivery of the campaign, with the person's redemption and each reminder run's state
    (``reminder_<template>_status``; empty when that run did not include the person)."""
    summary = ReportSummary()
    runs = [
        (child, (purpose or child).removeprefix("reminder:")) for child, purpose in ledger.child_campaigns(campaign_id)
    ]
    columns = [*COLUMNS, "redeemed_at", *(f"reminder_{name}_status" for _, name in runs)]
    with SafeCsvWriter(path, columns) as writer:
        for page in _pages(ledger, campaign_id):
            users = [d.user_id for d in page]
            redeemed = ledger.redemptions_of(campaign_id, users)
            reminders = [ledger.statuses_of(child, users) for child, _ in runs]
            for d in page:
                _write_row(writer, d, redeemed.get(d.user_id), [r.get(d.user_id, "") for r in reminders])
                summary.rows += 1
                summary.notified += d.status in NOTIFIED
    summary.rejected = sum(i["rejected"] for i in ledger.imports(campaign_id))
    return summary


def _write_row(writer: SafeCsvWriter, d: Delivery, redeemed_at: datetime | None, reminders: list[str]) -> None:
    notified = d.status in NOTIFIED
    writer.write(
        [
            d.user_id,
            d.channel.value,
            mask_contact(d.channel.value, d.contact),
            d.status.value,
            d.attempts,
            d.provider_message_id or "",
            _time(d.first_sent_at),
            _time(d.last_event_at),
            redact(d.reason or ""),
            "yes" if notified else "no",
            evidence(d),
            d.row_no,
            d.flags,
            d.first_channel or "",
            d.first_status or "",
            d.first_provider_message_id or "",
            _time(d.fallback_at),
            _time(redeemed_at),
            *reminders,
        ]
    )
