"""Sending one delivery: the plain function every worker thread runs (SPEC §3 step 2).

It checks the campaign and the clock, claims the delivery atomically, renders, sends, and records the
outcome. It never sends a delivery it did not claim, and never resends one whose outcome is unknown.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from . import clock, sms
from .errors import AmbiguousOutcome, ConfigError, PermanentError, ProviderError, Throttled
from .feedback.apply import apply_pending
from .ledger.store import CampaignRecord, Delivery
from .mime import build_message
from .privacy import mask_contact
from .providers.base import Outgoing, OutgoingEmail, OutgoingSms, Provider, SendResult
from .runtime import Runtime
from .states import CLAIMABLE, Channel, Status

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: Status | None
    #: When the delivery should be looked at again (a retry or a held SMS), else None.
    again_at: datetime | None = None


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [base/2, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return random.uniform(min(base / 2, ceiling), ceiling)


def deliver(rt: Runtime, delivery_id: int) -> Outcome:
    ledger = rt.ledger
    delivery = ledger.get(delivery_id)
    if delivery is None:
        log.warning("delivery %s: not in the ledger; message dropped", delivery_id)
        return Outcome(None)
    if delivery.status not in CLAIMABLE:
        return Outcome(delivery.status)  # a duplicate broker message: already handled
    record = ledger.campaign(delivery.campaign_id, fresh=True)
    if record is None:
        log.error("delivery %s: campaign %s missing from the ledger", delivery_id, delivery.campaign_id)
        return Outcome(None)
    campaign = record.campaign
    now = clock.now()

    if record.state == "paused":
        return Outcome(delivery.status)  # resume re-enqueues everything due
    if record.state == "cancelled":
        ledger.move(delivery_id, Status.CANCELLED, actor="worker", detail="campaign cancelled")
        return Outcome(Status.CANCELLED)
    if now >= campaign.send_by:
        ledger.move(delivery_id, Status.EXPIRED, actor="worker", detail="send_by passed before sending")
        return Outcome(Status.EXPIRED)
    if delivery.not_before and delivery.not_before > now + timedelta(seconds=1):
        return Outcome(delivery.status, again_at=delivery.not_before)
    if delivery.channel is Channel.SMS and not campaign.sms_window.contains(now):
        low, high = rt.settings.sms_window_spread
        # Spread the start over the first minutes rather than a burst exactly on the hour.
        opening = campaign.sms_window.next_opening(now) + timedelta(seconds=random.uniform(low, high))
        if opening >= campaign.send_by:
            ledger.move(delivery_id, Status.EXPIRED, actor="worker", detail="no SMS window left before send_by")
            return Outcome(Status.EXPIRED)
        ledger.defer(delivery_id, opening)
        return Outcome(delivery.status, again_at=opening)
    reason = ledger.is_suppressed(delivery.contact)
    if reason is not None:
        ledger.move(delivery_id, Status.SUPPRESSED, actor="worker", detail=f"suppression list: {reason}")
        return Outcome(Status.SUPPRESSED)

    # Build the provider client now (the first one in a process takes a few hundred ms), not between the
    # rate slot and the call: that gap would push a whole second's sends into the next provider second.
    rt.provider(delivery.channel)
    claimed = ledger.claim(delivery_id, now=clock.now())
    if claimed is None:
        return Outcome(None)  # another worker has it
    try:
        outgoing = build_outgoing(rt, claimed, record)
    except ConfigError as exc:
        ledger.move(delivery_id, Status.FAILED, actor="worker", detail=str(exc), provider_code="render",
                    values={"reason": str(exc)})
        return Outcome(Status.FAILED)
    # Take the rate slot last, right before the provider call, so slot time and send time stay close.
    slot = uuid.uuid4().hex
    wait = rt.limits.acquire(claimed.channel, claimed.contact, cost=getattr(outgoing, "parts", 1), token=slot)
    if wait > 0:
        again = clock.now() + timedelta(seconds=wait)
        ledger.move(delivery_id, Status.RETRYING, actor="worker", expect=[Status.SENDING],
                    detail=f"quota or rate limit: not attempted, next slot in {wait:.0f}s",
                    values={"attempts": claimed.attempts - 1, "not_before": again})
        return Outcome(Status.RETRYING, again_at=again)
    return send_claimed(rt, claimed, outgoing, campaign.send_by, slot=slot)


def build_outgoing(rt: Runtime, delivery: Delivery, record: CampaignRecord) -> Outgoing:
    """The message for a claimed delivery; its reference names the delivery and this attempt."""
    renderer = rt.renderer(record)
    reference = f"{delivery.id}.{delivery.attempts}"
    if delivery.channel is Channel.EMAIL:
        email = renderer.email(delivery.fields, delivery.receipt_url)
        message = build_message(
            email, to=delivery.contact, sender=rt.settings.email_sender,
            sender_name=rt.settings.email_sender_name, delivery_ref=reference, sent_at=clock.now(),
        )
        return OutgoingEmail(reference, delivery.campaign_id, delivery.contact, message)
    text = renderer.sms(delivery.fields, delivery.receipt_url)
    return OutgoingSms(reference, delivery.campaign_id, delivery.contact, text, sms.parts(text),
                       expires_at=record.campaign.deadline)


def _call(rt: Runtime, provider: Provider, delivery: Delivery, outgoing: Outgoing, slot: str | None) -> SendResult:
    """The provider call; when it is over, its rate slot counts from then (it may have arrived then)."""
    try:
        return provider.send(outgoing)
    finally:
        if slot is not None:
            rt.limits.sent(delivery.channel, delivery.contact, slot, cost=getattr(outgoing, "parts", 1))


def send_claimed(rt: Runtime, delivery: Delivery, outgoing: Outgoing, send_by: datetime,
                 slot: str | None = None) -> Outcome:
    ledger = rt.ledger
    provider = rt.provider(delivery.channel)
    who = f"delivery {delivery.id} ({mask_contact(delivery.channel, delivery.contact)})"
    try:
        result = _call(rt, provider, delivery, outgoing, slot)
    except AmbiguousOutcome as exc:
        log.warning("%s: outcome unknown, will not resend by itself: %s", who, exc)
        ledger.move(delivery.id, Status.UNKNOWN, actor="worker", detail=str(exc), provider_code=exc.code,
                    values={"provider": provider.name, "reason": str(exc)})
        return Outcome(Status.UNKNOWN)
    except PermanentError as exc:
        log.warning("%s: refused for good: %s", who, exc)
        ledger.move(delivery.id, Status.FAILED, actor="worker", detail=str(exc), provider_code=exc.code,
                    values={"provider": provider.name, "reason": str(exc)})
        rt.breaker.record_failure(delivery.campaign_id)
        return Outcome(Status.FAILED)
    except ProviderError as exc:
        return _retry_later(rt, delivery, exc, provider.name, send_by)

    now = clock.now()
    values = {"provider": provider.name, "provider_message_id": result.message_id, "reason": None,
              "last_event_at": now}
    if delivery.first_sent_at is None:
        values["first_sent_at"] = now
    if isinstance(outgoing, OutgoingSms):
        values["sms_parts"] = outgoing.parts
    moved = ledger.move(delivery.id, Status.SENT, actor="worker", values=values, now=now,
                        detail=f"accepted by {provider.name}")
    if moved is None:
        # Someone settled it first (an operator, the sweep); keep their verdict, note the message id.
        ledger.note_message_id(delivery.id, provider.name, result.message_id)
    # Events that arrived before we could record the send are applied now.
    apply_pending(ledger, result.message_id, rt.breaker)
    rt.breaker.record_success(delivery.campaign_id)
    log.info("%s: sent via %s", who, provider.name)
    return Outcome(Status.SENT)


def _retry_later(rt: Runtime, delivery: Delivery, exc: ProviderError, provider: str, send_by: datetime) -> Outcome:
    ledger = rt.ledger
    settings = rt.settings
    delay = exc.retry_after or backoff(delivery.attempts, settings.retry_base_seconds, settings.retry_max_seconds)
    again = clock.now() + timedelta(seconds=delay)
    common = {"provider": provider, "reason": str(exc)}
    if delivery.attempts - delivery.attempts_base >= settings.max_attempts:
        ledger.move(delivery.id, Status.FAILED, actor="worker", provider_code=exc.code, values=common,
                    detail=f"gave up after {delivery.attempts} attempts: {exc}")
        rt.breaker.record_failure(delivery.campaign_id)
        return Outcome(Status.FAILED)
    if again >= send_by:
        ledger.move(delivery.id, Status.RETRYING, actor="worker", provider_code=exc.code,
                    values={**common, "not_before": again}, detail=str(exc))
        ledger.move(delivery.id, Status.EXPIRED, actor="worker", detail="next retry would be after send_by")
        return Outcome(Status.EXPIRED)
    level = logging.INFO if isinstance(exc, Throttled) else logging.WARNING
    log.log(level, "delivery %s: %s; retry %d in %.1fs", delivery.id, exc, delivery.attempts + 1, delay)
    ledger.move(delivery.id, Status.RETRYING, actor="worker", provider_code=exc.code,
                values={**common, "not_before": again}, detail=str(exc))
    return Outcome(Status.RETRYING, again_at=again)
