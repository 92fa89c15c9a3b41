"""The dashboard's own ledger reads. Every one is bounded: by an index and a LIMIT, or by a time range.

Counts come from the maintained counters (``Ledger.counts``); nothing here counts a whole campaign. Rows
leave this module with contacts already masked and reasons redacted; the receipt URL is never selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, func, select, union_all

from dispatcher.core.privacy import mask_contact, redact
from dispatcher.core.states import PENDING, Channel, Status

from ..ledger import Ledger
from ..ledger.schema import deliveries, transitions

#: States in which a delivery did not reach the person (the "top failure reasons" look at these).
FAILURES: tuple[Status, ...] = (Status.FAILED, Status.BOUNCED, Status.COMPLAINED, Status.UNKNOWN, Status.EXPIRED)
#: Failure reasons are tallied over at most this many deliveries per failure state (bounded on huge campaigns;
#: enough to rank the reasons, the counts are then scaled to the state's total).
REASON_SAMPLE = 300
#: SMS parts of the pending work are estimated from this many pending SMS (the plan needs parts).
PARTS_SAMPLE = 200
PAGE_SIZE = 50


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    user_id: str
    channel: str
    contact: str  # masked
    status: str
    attempts: int
    provider_code: str | None
    reason: str | None  # redacted
    first_sent_at: datetime | None
    last_event_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True)
class DeliveryPage:
    rows: list[DeliveryRow]
    #: Keyset cursors: the id to continue after (next page) / before (previous page), if any.
    next_after: int | None
    prev_before: int | None


def delivery_page(
    ledger: Ledger,
    campaign_id: str,
    *,
    status: Status | None = None,
    channel: Channel | None = None,
    after: int | None = None,
    before: int | None = None,
    limit: int = PAGE_SIZE,
) -> DeliveryPage:
    """One page of a campaign's deliveries in id order (keyset pagination: no OFFSET, no count)."""
    c = deliveries.c
    stmt: Select[Any] = select(
        c.id,
        c.user_id,
        c.channel,
        c.contact,
        c.status,
        c.attempts,
        c.provider_code,
        c.reason,
        c.first_sent_at,
        c.last_event_at,
        c.updated_at,
    ).where(c.campaign_id == campaign_id)
    if status is not None:
        stmt = stmt.where(c.status == status.value)
    if channel is not None:
        stmt = stmt.where(c.channel == channel.value)
    backwards = before is not None and after is None
    if backwards:
        stmt = stmt.where(c.id < before).order_by(c.id.desc())
    else:
        if after is not None:
            stmt = stmt.where(c.id > after)
        stmt = stmt.order_by(c.id)
    with ledger.read() as conn:
        fetched = list(conn.execute(stmt.limit(limit + 1)).all())
    more = len(fetched) > limit
    fetched = fetched[:limit]
    if backwards:
        fetched.reverse()
    rows = [
        DeliveryRow(
            id=r.id,
            user_id=r.user_id,
            channel=r.channel,
            contact=mask_contact(r.channel, r.contact),
            status=r.status,
            attempts=r.attempts,
            provider_code=r.provider_code,
            reason=redact(r.reason) if r.reason else None,
            first_sent_at=r.first_sent_at,
            last_event_at=r.last_event_at,
            updated_at=r.updated_at,
        )
        for r in fetched
    ]
    if not rows:
        return DeliveryPage(rows, None, None)
    if backwards:
        return DeliveryPage(rows, rows[-1].id, rows[0].id if more else None)
    return DeliveryPage(rows, rows[-1].id if more else None, rows[0].id if after is not None else None)


def _minute(value: Any) -> datetime:
    if isinstance(value, str):  # SQLite: strftime text
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def sends_per_minute(ledger: Ledger, campaign_id: str, since: datetime, until: datetime) -> dict[datetime, int]:
    """``{minute (UTC): sends accepted by a provider}`` in ``[since, until)``, from the transition log.

    Uses ``ix_transitions_campaign_at``; the time range is what bounds the work.
    """
    at = transitions.c.at
    bucket: Any = (
        func.date_trunc("minute", at) if ledger.dialect == "postgresql" else func.strftime("%Y-%m-%d %H:%M:00", at)
    )
    stmt = (
        select(bucket.label("minute"), func.count())
        .where(
            transitions.c.campaign_id == campaign_id,
            at >= since,
            at < until,
            transitions.c.to_status == Status.SENT.value,
            transitions.c.from_status == Status.SENDING.value,
        )
        .group_by(bucket)
    )
    with ledger.read() as conn:
        return {_minute(minute): int(n) for minute, n in conn.execute(stmt)}


def recent_outcomes(ledger: Ledger, campaign_id: str, since: datetime) -> dict[tuple[str, str | None], int]:
    """``{(to_status, provider_code): n}`` of the moves out of ``sending`` since ``since`` (bounded by time).

    A move to ``retrying`` without a provider code is a wait for a rate-limit slot, not a provider error.
    """
    stmt = (
        select(transitions.c.to_status, transitions.c.provider_code, func.count())
        .where(
            transitions.c.campaign_id == campaign_id,
            transitions.c.at >= since,
            transitions.c.from_status == Status.SENDING.value,
        )
        .group_by(transitions.c.to_status, transitions.c.provider_code)
    )
    with ledger.read() as conn:
        return {(to, code): int(n) for to, code, n in conn.execute(stmt)}


@dataclass(frozen=True)
class FailureReason:
    status: str
    reason: str  # redacted
    count: int
    #: True when the count is scaled up from a sample (the state has more than REASON_SAMPLE deliveries).
    estimated: bool


def failure_reasons(
    ledger: Ledger, campaign_id: str, by_status: dict[str, int], *, top: int = 8
) -> list[FailureReason]:
    """The most common reasons among failed deliveries, per failure state.

    Each state reads at most :data:`REASON_SAMPLE` rows (index on campaign and state); where it has more,
    each reason's share of the sample is scaled to the state's total from the counters.
    """
    c = deliveries.c
    totals = {s.value: by_status.get(s.value, 0) for s in FAILURES if by_status.get(s.value, 0)}
    if not totals:
        return []
    samples = [
        select(c.status.label("status"), func.coalesce(c.reason, c.provider_code, "").label("reason"))
        .where(c.campaign_id == campaign_id, c.status == status)
        .limit(REASON_SAMPLE)
        .subquery()
        for status in totals
    ]
    union = union_all(*(select(s.c.status, s.c.reason) for s in samples)).subquery()
    stmt = select(union.c.status, union.c.reason, func.count()).group_by(union.c.status, union.c.reason)
    with ledger.read() as conn:
        counted = [(status, reason, int(n)) for status, reason, n in conn.execute(stmt)]
    seen = {status: 0 for status in totals}
    for status, _, n in counted:
        seen[status] += n
    found: list[FailureReason] = []
    for status, reason, n in counted:
        scale = totals[status] / seen[status] if seen[status] < totals[status] else 1.0
        found.append(FailureReason(status, redact(reason), round(n * scale), scale != 1.0))
    found.sort(key=lambda r: (-r.count, r.status, r.reason))
    return found[:top]


def pending_work(ledger: Ledger, campaign_id: str, counts: dict[tuple[str, str], int]) -> dict[str, tuple[int, int]]:
    """``{channel: (deliveries, sms parts)}`` still owed a send, as ``plan`` wants it, without a scan.

    Deliveries come from the counters; SMS parts are the average of a bounded sample times the count.
    """
    pending = {ch.value: sum(n for (c, st), n in counts.items() if c == ch.value and st in PENDING) for ch in Channel}
    sms = pending[Channel.SMS.value]
    parts = sms
    if sms:
        c = deliveries.c
        sample = (
            select(c.sms_parts.label("parts"))
            .where(
                c.campaign_id == campaign_id, c.channel == Channel.SMS.value, c.status.in_([s.value for s in PENDING])
            )
            .limit(PARTS_SAMPLE)
            .subquery()
        )
        with ledger.read() as conn:
            average = conn.execute(select(func.avg(func.coalesce(sample.c.parts, 1)))).scalar()
        parts = round(sms * float(average or 1))
    return {Channel.EMAIL.value: (pending[Channel.EMAIL.value], 0), Channel.SMS.value: (sms, parts)}
