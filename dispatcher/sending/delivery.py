"""Sending one delivery: the plain function every worker thread runs (SPEC §3 step 2).

It checks the campaign and the clock, claims the delivery atomically, renders, sends, and records the
outcome. It never sends a delivery it did not claim, and never resends one whose outcome is unknown.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import quote

from dispatcher.core import clock, sms
from dispatcher.core.errors import (
    AmbiguousOutcome,
    ConfigError,
    DispatcherError,
    PermanentError,
    ProviderError,
    Throttled,
)
from dispatcher.core.privacy import mask_contact, redact, safe_code, scrub
from dispatcher.core.states import CLAIMABLE, Channel, Status
from dispatcher.feedback.apply import PendingLimits, apply_pending
from dispatcher.ledger.readdress import fallback_owed
from dispatcher.ledger.store import CampaignRecord, Delivery
from dispatcher.providers.base import Outgoing, OutgoingEmail, OutgoingSms, Provider, SendResult
from dispatcher.runtime import Runtime
from dispatcher.sending.mime import build_raw
from dispatcher.sending.reminders import cancel_redeemed_reminders
from dispatcher.sending.render import Renderer
from dispatcher.sending.sweep import held_for_send_from

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


@dataclass
class BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    #: The first error met (the others were still attempted); the caller raises it so the batch is retried.
    error: BaseException | None = None
    #: Ids not attempted because the batch ran out of time; the caller hands them to the broker again.
    left: list[int] = field(default_factory=list)


@dataclass
class _AfterBatch:
    """Work a batch does once at its end instead of after each send."""

    message_ids: list[str] = field(default_factory=list)

    def finish(self, rt: Runtime) -> None:
        # Events that arrived before we could record their sends are applied now (looked for after the commits).
        if self.message_ids:
            for message_id in sorted(rt.ledger.events_waiting_for(self.message_ids)):
                apply_pending(rt.ledger, message_id, rt.breaker, PendingLimits.of(rt.settings))


def deliver(rt: Runtime, delivery_id: int) -> Outcome:
    """Send one delivery (see :func:`deliver_many`); errors propagate."""
    result = deliver_many(rt, [delivery_id])
    if result.error is not None:
        raise result.error
    return result.outcomes[delivery_id]


def deliver_many(rt: Runtime, ids: Sequence[int], *, budget: float | None = None) -> BatchResult:
    """Send several deliveries, one after the other, as :func:`deliver` would one by one: one read for all
    of them, one database connection, and the look for early provider events once at the end.

    Each delivery is still claimed right before its own send and recorded right after it, so a worker
    that dies mid-batch leaves at most one delivery in ``sending``. An error on one delivery does not stop
    the others. After ``budget`` seconds the rest is left for the caller to hand on.
    """
    result = BatchResult()
    after = _AfterBatch()
    started = time.monotonic()
    with rt.ledger.pinned():
        try:
            found = rt.ledger.for_send_many(ids)
            # Reminders whose person has redeemed since the run was made are settled here, never sent.
            result.outcomes.update({i: Outcome(s) for i, s in cancel_redeemed_reminders(rt.ledger, found).items()})
            for n, delivery_id in enumerate(ids):
                if budget is not None and n and time.monotonic() - started > budget:
                    result.left = list(ids[n:])
                    break
                try:
                    if delivery_id in result.outcomes:
                        continue
                    result.outcomes[delivery_id] = _deliver(rt, delivery_id, found.get(delivery_id), after)
                except Exception as exc:
                    log.warning("delivery %s: %s: %s", delivery_id, type(exc).__name__, redact(str(exc)))
                    if result.error is None:
                        result.error = exc
        except Exception as exc:
            result.error = exc
        finally:
            try:
                after.finish(rt)
            except Exception as exc:
                if result.error is None:
                    result.error = exc
    if len(ids) > 1:
        tally = Counter(str(o.status or "skipped") for o in result.outcomes.values())
        log.info(
            "batch of %d deliveries: %s%s",
            len(ids),
            ", ".join(f"{n} {s}" for s, n in sorted(tally.items())),
            f", {len(result.left)} handed on" if result.left else "",
        )
    return result


def _deliver(
    rt: Runtime,
    delivery_id: int,
    found: tuple[Delivery, str | None, datetime | None, str | None] | None,
    after: _AfterBatch,
) -> Outcome:
    ledger = rt.ledger
    # The delivery, its campaign's state and whether its contact is suppressed, as read for the batch.
    if found is None:
        log.warning("delivery %s: not in the ledger; message dropped", delivery_id)
        return Outcome(None)
    delivery, campaign_state, campaign_version, suppressed = found
    if delivery.status not in CLAIMABLE:
        return Outcome(delivery.status)  # a duplicate broker message: already handled
    record = _campaign(rt, delivery.campaign_id, campaign_state, campaign_version)
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
    if held_for_send_from(rt, delivery.id, campaign, now):
        return Outcome(delivery.status)  # back in the ledger, unclaimed: released when send_from comes
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
    if suppressed is not None:
        ledger.move(delivery_id, Status.SUPPRESSED, actor="worker", detail=f"suppression list: {suppressed}")
        return Outcome(Status.SUPPRESSED)

    # Build the provider client now (the first one in a process takes a few hundred ms), not between the
    # rate slot and the call: that gap would push a whole second's sends into the next provider second.
    rt.provider(delivery.channel)
    # The rate slot is taken before the claim: waiting for it can take seconds, and a worker that dies while
    # it waits must leave the delivery claimable, not in `sending` (which the sweep would call `unknown`).
    # An SMS costs its parts, counted at enqueue from the same template and fields.
    cost = (delivery.sms_parts or 1) if delivery.channel is Channel.SMS else 1
    slot = Slot(uuid.uuid4().hex, cost)
    wait = rt.limits.acquire(delivery.channel, delivery.contact, cost=cost, token=slot.token)
    if wait > 0:
        again = clock.now() + timedelta(seconds=wait)
        ledger.defer(delivery_id, again)
        log.info("delivery %s: quota or rate limit, next slot in %.0fs", delivery_id, wait)
        return Outcome(delivery.status, again_at=again)
    claimed = ledger.claim(delivery_id, now=clock.now(), current=delivery)
    if claimed is None:
        return Outcome(None)  # another worker has it
    try:
        outgoing = build_outgoing(rt, claimed, record)
    except Exception as exc:
        return _not_built(rt, claimed, exc)
    return send_claimed(rt, claimed, outgoing, campaign.send_by, slot=slot, after=after)


def _not_built(rt: Runtime, delivery: Delivery, exc: Exception) -> Outcome:
    """The message could not be made (template, sandbox, header check...): nothing reached a provider, so
    the delivery fails for good here rather than sit in ``sending`` until the sweep calls it ``unknown``."""
    reason = _unsent_reason(delivery, exc)
    code = "render" if isinstance(exc, ConfigError) else exc.code if isinstance(exc, ProviderError) else "build"
    log.warning("delivery %s: not sent, the message could not be built: %s", delivery.id, reason)
    rt.ledger.move(
        delivery.id,
        Status.FAILED,
        actor="worker",
        detail=reason,
        provider_code=code or "build",
        values={"reason": reason},
    )
    return Outcome(Status.FAILED)


def _unsent_reason(delivery: Delivery, exc: Exception) -> str:
    """Our own errors say what is wrong without values; anything else gives its kind only. Either way the
    text is withheld if it holds this delivery's URL (with or without scheme, percent-encoded) or contact."""
    kind = type(exc).__name__
    text = redact(str(exc)) if isinstance(exc, DispatcherError) else f"the message could not be built ({kind})"
    url = delivery.receipt_url or ""
    own = [
        url,
        url.partition("://")[2],
        quote(url, safe=""),
        delivery.contact or "",
        (delivery.contact or "").partition("@")[0],
    ]
    folded = text.casefold()
    if any(len(value) >= 3 and value.casefold() in folded for value in own):
        return f"the message could not be built ({kind}; details withheld: they quoted the recipient's data)"
    return text[:500]


class _SendCache:
    """Per runtime: each campaign's record by the version it was read at, and the renderer for a record."""

    def __init__(self) -> None:
        self.campaigns: dict[str, tuple[tuple[datetime, str], CampaignRecord]] = {}
        self.renderers: dict[str, tuple[CampaignRecord, Renderer]] = {}


_caches: weakref.WeakKeyDictionary[Runtime, _SendCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache(rt: Runtime) -> _SendCache:
    with _caches_lock:
        cache = _caches.get(rt)
        if cache is None:
            cache = _caches[rt] = _SendCache()
        return cache


def _campaign(rt: Runtime, campaign_id: str, state: str | None, version: datetime | None) -> CampaignRecord | None:
    """The campaign as it is now. Its state was just read with the delivery; the definition and templates
    (a JSON document to parse) are read again only when the row changed: every change to a campaign
    (saving its definition, pause, resume, cancel) sets its ``updated_at``."""
    if state is None or version is None:
        return rt.ledger.campaign(campaign_id, fresh=True)
    cache = _cache(rt)
    known = cache.campaigns.get(campaign_id)
    if known is not None and known[0] == (version, state):
        return known[1]
    record = rt.ledger.campaign(campaign_id, fresh=True)
    if record is not None and record.state == state:
        cache.campaigns[campaign_id] = ((version, state), record)
    return record


def _renderer(rt: Runtime, record: CampaignRecord) -> Renderer:
    """``rt.renderer(record)``, without hashing the templates again for a record already seen."""
    cache = _cache(rt)
    known = cache.renderers.get(record.campaign.id)
    if known is not None and known[0] is record:
        return known[1]
    renderer = rt.renderer(record)
    cache.renderers[record.campaign.id] = (record, renderer)
    return renderer


def build_outgoing(rt: Runtime, delivery: Delivery, record: CampaignRecord) -> Outgoing:
    """The message for a claimed delivery; its reference names the delivery and this attempt."""
    renderer = _renderer(rt, record)
    reference = f"{delivery.id}.{delivery.attempts}"
    if delivery.channel is Channel.EMAIL:
        email = renderer.email(delivery.fields, delivery.receipt_url)
        raw = build_raw(
            email,
            to=delivery.contact,
            sender=rt.settings.email_sender,
            sender_name=rt.settings.email_sender_name,
            delivery_ref=reference,
            sent_at=clock.now(),
        )
        return OutgoingEmail(reference, delivery.campaign_id, delivery.contact, raw)
    text = renderer.sms(delivery.fields, delivery.receipt_url)
    return OutgoingSms(
        reference, delivery.campaign_id, delivery.contact, text, sms.parts(text), expires_at=record.campaign.deadline
    )


@dataclass(frozen=True)
class Slot:
    """A send's place under the rate limits: its token and what it cost (SMS: message parts)."""

    token: str
    cost: int = 1


def _call(rt: Runtime, provider: Provider, delivery: Delivery, outgoing: Outgoing, slot: Slot) -> SendResult:
    """The provider call; when it is over, its rate slot counts from then (it may have arrived then)."""
    try:
        return provider.send(outgoing)
    finally:
        rt.limits.sent(delivery.channel, delivery.contact, slot.token, cost=slot.cost)


def send_claimed(
    rt: Runtime, delivery: Delivery, outgoing: Outgoing, send_by: datetime, slot: Slot, after: _AfterBatch
) -> Outcome:
    ledger = rt.ledger
    provider = rt.provider(delivery.channel)
    who = f"delivery {delivery.id} ({mask_contact(delivery.channel, delivery.contact)})"
    try:
        result = _call(rt, provider, delivery, outgoing, slot)
    except AmbiguousOutcome as exc:
        return _settle(
            rt, delivery, provider.name, exc, Status.UNKNOWN, f"{who}: outcome unknown, will not resend by itself"
        )
    except PermanentError as exc:
        # A fallback is owed (if the campaign has one) in the same transaction as the failure.
        owed: dict[str, object] | None = {"fallback_due_at": clock.now()} if fallback_owed(delivery) else None
        outcome = _settle(rt, delivery, provider.name, exc, Status.FAILED, f"{who}: refused for good", owed)
        rt.breaker.record_failure(delivery.campaign_id)
        return outcome
    except ProviderError as exc:
        return _retry_later(rt, delivery, exc, provider.name, send_by)

    now = clock.now()
    values: dict[str, object] = {
        "provider": provider.name,
        "provider_message_id": result.message_id,
        "reason": None,
        "last_event_at": now,
    }
    if delivery.first_sent_at is None:
        values["first_sent_at"] = now
    if isinstance(outgoing, OutgoingSms):
        values["sms_parts"] = outgoing.parts
    moved = ledger.move(
        delivery.id,
        Status.SENT,
        actor="worker",
        values=values,
        now=now,
        detail=f"accepted by {provider.name}",
        current=delivery,
    )
    if moved is None:
        # Someone settled it first (an operator, the sweep); keep their verdict, note the message id.
        ledger.note_message_id(delivery.id, provider.name, result.message_id)
    after.message_ids.append(result.message_id)  # its early provider events are looked for after the batch
    rt.breaker.record_success(delivery.campaign_id)
    # One line per batch says what happened (the ledger has every send); this one only when debugging.
    log.debug("%s: sent via %s", who, provider.name)
    return Outcome(Status.SENT)


def _kept(exc: ProviderError, delivery: Delivery) -> tuple[str, str]:
    """What may be kept of a provider error (ledger ``reason``, transition ``detail``, logs): its text
    without this delivery's receipt URL and contact in any writing, redacted and bounded, and its code
    when it is a short token."""
    secrets = (delivery.receipt_url, delivery.contact)
    return scrub(str(exc), secrets), safe_code(exc.code, secrets) or ""


def _settle(
    rt: Runtime,
    delivery: Delivery,
    provider: str,
    exc: ProviderError,
    to: Status,
    what: str,
    extra: dict[str, object] | None = None,
) -> Outcome:
    """Record a send that ended for good (``failed``) or without an answer (``unknown``), with only what may
    be kept of the provider's reply."""
    reason, code = _kept(exc, delivery)
    log.warning("%s: %s", what, reason)
    rt.ledger.move(
        delivery.id,
        to,
        actor="worker",
        detail=reason,
        provider_code=code,
        values={"provider": provider, "reason": reason, **(extra or {})},
    )
    return Outcome(to)


def _retry_later(rt: Runtime, delivery: Delivery, exc: ProviderError, provider: str, send_by: datetime) -> Outcome:
    ledger = rt.ledger
    settings = rt.settings
    # Attempts since the last resend: after a resend the backoff starts again from the base, as the bound does.
    since_resend = delivery.attempts - delivery.attempts_base
    delay = exc.retry_after or backoff(since_resend, settings.retry_base_seconds, settings.retry_max_seconds)
    again = clock.now() + timedelta(seconds=delay)
    reason, code = _kept(exc, delivery)
    common = {"provider": provider, "reason": reason}
    if since_resend >= settings.max_attempts:
        gave_up = f"gave up after {delivery.attempts} attempts: {reason}"  # the reason says retries ran out
        ledger.move(
            delivery.id,
            Status.FAILED,
            actor="worker",
            provider_code=code,
            values={**common, "reason": gave_up},
            detail=gave_up,
        )
        rt.breaker.record_failure(delivery.campaign_id)
        return Outcome(Status.FAILED)
    if again >= send_by:
        ledger.move(
            delivery.id,
            Status.RETRYING,
            actor="worker",
            provider_code=code,
            values={**common, "not_before": again},
            detail=reason,
        )
        ledger.move(delivery.id, Status.EXPIRED, actor="worker", detail="next retry would be after send_by")
        return Outcome(Status.EXPIRED)
    level = logging.INFO if isinstance(exc, Throttled) else logging.WARNING
    log.log(level, "delivery %s: %s; retry %d in %.1fs", delivery.id, reason, delivery.attempts + 1, delay)
    ledger.move(
        delivery.id,
        Status.RETRYING,
        actor="worker",
        provider_code=code,
        values={**common, "not_before": again},
        detail=reason,
    )
    return Outcome(Status.RETRYING, again_at=again)
