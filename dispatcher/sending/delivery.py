"""Sending deliveries: the plain functions every worker thread runs (SPEC §3 step 2).

A batch (one broker message) is read in one query and checked (:mod:`dispatcher.sending.checks`); what
may go is claimed in one statement, sent one after the other, and recorded in one statement at the end.
Between the claim and the record, Redis holds a mark per delivery (:mod:`dispatcher.sending.marks`):
"about to send" right before each provider call, "sent as M" (or the refusal) right after it, so the sweep
after a crash knows for each one whether the provider was never called (claimable again), maybe called
(``unknown``) or took it (``sent`` with its message id). It never sends a delivery it did not claim and
mark, and never resends one whose outcome is unknown.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from dispatcher.core import clock, sms
from dispatcher.core.errors import AmbiguousOutcome, PermanentError, ProviderError
from dispatcher.core.privacy import mask_contact, redact
from dispatcher.core.states import CLAIMABLE, Channel, Status
from dispatcher.feedback.apply import PendingLimits, apply_pending
from dispatcher.ledger.readdress import fallback_owed
from dispatcher.ledger.store import CampaignRecord, Delivery, Settle
from dispatcher.providers.base import Outgoing, OutgoingEmail, OutgoingSms
from dispatcher.runtime import Runtime
from dispatcher.sending import cached, outcomes
from dispatcher.sending import marks as send_marks
from dispatcher.sending.checks import before_claim
from dispatcher.sending.mime import build_raw
from dispatcher.sending.outcomes import Outcome, backoff
from dispatcher.sending.reminders import cancel_redeemed_reminders

__all__ = ["BatchResult", "Outcome", "backoff", "build_outgoing", "deliver", "deliver_many"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    outcomes: dict[int, Outcome] = field(default_factory=dict)
    #: The first error met (the others were still attempted); the caller raises it so the batch is retried.
    error: BaseException | None = None
    #: Ids not attempted because the batch ran out of time; the caller hands them to the broker again.
    left: list[int] = field(default_factory=list)

    def failed(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc


@dataclass
class _AfterBatch:
    """Work a batch does once at its end instead of after each send."""

    message_ids: list[str] = field(default_factory=list)

    def finish(self, rt: Runtime) -> None:
        # Events that arrived before we could record their sends are applied now (looked for after the commits).
        if self.message_ids:
            for message_id in sorted(rt.ledger.events_waiting_for(self.message_ids)):
                apply_pending(rt.ledger, message_id, rt.breaker, PendingLimits.of(rt.settings))


@dataclass(frozen=True)
class Slot:
    """A send's place under the rate limits: its token and what it cost (SMS: message parts)."""

    token: str
    cost: int = 1


def deliver(rt: Runtime, delivery_id: int) -> Outcome:
    """Send one delivery (see :func:`deliver_many`); errors propagate."""
    result = deliver_many(rt, [delivery_id])
    if result.error is not None:
        raise result.error
    return result.outcomes[delivery_id]


def deliver_many(rt: Runtime, ids: Sequence[int], *, budget: float | None = None) -> BatchResult:
    """Send several deliveries as one batch: one read, one claim, one record (see the module).

    An error on one delivery does not stop the others. After ``budget`` seconds (and at the latest after
    half of ``stale_sending_seconds``, so the sweep never sees a live batch as dead) no new send starts:
    the rest is given back and left for the caller to hand on. Without Redis (no marks) every delivery is
    claimed and recorded on its own, as before batches.
    """
    result = BatchResult()
    after = _AfterBatch()
    started = time.monotonic()
    limit = rt.settings.stale_sending_seconds / 2
    limit = limit if budget is None else min(budget, limit)
    with rt.ledger.pinned():
        try:
            found = rt.ledger.for_send_many(ids)
            # Reminders whose person has redeemed since the run was made are settled here, never sent.
            result.outcomes.update({i: Outcome(s) for i, s in cancel_redeemed_reminders(rt.ledger, found).items()})
            ready: list[tuple[Delivery, CampaignRecord]] = []
            for delivery_id in dict.fromkeys(ids):
                if delivery_id in result.outcomes:
                    continue
                try:
                    checked = _check(rt, delivery_id, found.get(delivery_id))
                except Exception as exc:
                    _warn(delivery_id, exc)
                    result.failed(exc)
                    continue
                if isinstance(checked, Outcome):
                    result.outcomes[delivery_id] = checked
                else:
                    ready.append(checked)
            groups = [ready] if rt.redis is not None else [[one] for one in ready]
            for group in groups:
                try:
                    _send_batch(rt, group, result, after, started, limit)
                except Exception as exc:
                    result.failed(exc)
        except Exception as exc:
            result.failed(exc)
        finally:
            try:
                after.finish(rt)
            except Exception as exc:
                result.failed(exc)
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
    """One delivery through the batch path, from a copy read earlier (the claim refuses a stale one)."""
    result = BatchResult()
    checked = _check(rt, delivery_id, found)
    if isinstance(checked, Outcome):
        return checked
    _send_batch(rt, [checked], result, after, time.monotonic(), float("inf"))
    if result.error is not None:
        raise result.error
    return result.outcomes.get(delivery_id, Outcome(None))


def _warn(delivery_id: int, exc: BaseException) -> None:
    log.warning("delivery %s: %s: %s", delivery_id, type(exc).__name__, redact(str(exc)))


def _check(
    rt: Runtime, delivery_id: int, found: tuple[Delivery, str | None, datetime | None, str | None] | None
) -> Outcome | tuple[Delivery, CampaignRecord]:
    """The delivery as read for the batch, through :func:`~dispatcher.sending.checks.before_claim`."""
    if found is None:
        log.warning("delivery %s: not in the ledger; message dropped", delivery_id)
        return Outcome(None)
    delivery, campaign_state, campaign_version, suppressed = found
    if delivery.status not in CLAIMABLE:
        return Outcome(delivery.status)  # a duplicate broker message: already handled
    record = cached.campaign(rt, delivery.campaign_id, campaign_state, campaign_version)
    if record is None:
        log.error("delivery %s: campaign %s missing from the ledger", delivery_id, delivery.campaign_id)
        return Outcome(None)
    held = before_claim(rt, delivery, record, suppressed, clock.now())
    return held if held is not None else (delivery, record)


def _send_batch(
    rt: Runtime,
    ready: list[tuple[Delivery, CampaignRecord]],
    result: BatchResult,
    after: _AfterBatch,
    started: float,
    limit: float,
) -> None:
    ledger = rt.ledger
    # The first send of each channel takes its rate slot before the claim: when the channel is out of slots
    # for longer than we may wait (a daily quota, a cap far below the pace), its deliveries stay as they are.
    slots: dict[int, Slot] = {}
    for channel in dict.fromkeys(d.channel for d, _ in ready):
        first = next(d for d, _ in ready if d.channel is channel)
        slot, wait = _take_slot(rt, first)
        if wait <= 0:
            slots[first.id] = slot
            continue
        again = clock.now() + timedelta(seconds=wait)
        log.info("%s: quota or rate limit, next slot in %.0fs", channel, wait)
        for d, _ in ready:
            if d.channel is channel:
                ledger.defer(d.id, again)
                result.outcomes[d.id] = Outcome(d.status, again_at=again)
        ready = [(d, r) for d, r in ready if d.channel is not channel]
    if not ready:
        return
    marks = send_marks.open_batch(rt.redis, rt.settings.send_mark_ttl_seconds) if rt.redis is not None else None
    try:
        _send_claimed(rt, ready, result, after, started, limit, slots, marks)
    finally:
        if marks is not None:  # its connection goes back on every path; the hash stays unless recorded
            marks.release()


def _send_claimed(
    rt: Runtime,
    ready: list[tuple[Delivery, CampaignRecord]],
    result: BatchResult,
    after: _AfterBatch,
    started: float,
    limit: float,
    slots: dict[int, Slot],
    marks: send_marks.BatchMarks | None,
) -> None:
    ledger = rt.ledger
    claimed = ledger.claim_many([d for d, _ in ready], mark=marks.claim_mark if marks else None, now=clock.now())
    records = {d.id: r for d, r in ready}
    taken = {d.id for d in claimed}
    for d, _ in ready:
        if d.id not in taken:
            result.outcomes[d.id] = Outcome(None)  # another worker has it
    settles: list[Settle] = []
    held: dict[Channel, datetime] = {}
    # The state was read with the batch: a wait for the first rate slot before the claim counts.
    checked, stopped = started, set[str]()
    for n, delivery in enumerate(claimed):
        if time.monotonic() - checked > STATE_RECHECK_SECONDS:  # a pause or cancel holds the rest of the batch
            checked, stopped = time.monotonic(), _stopped(rt, {d.campaign_id for d in claimed[n:]})
        if delivery.campaign_id in stopped:
            settles.append(outcomes.given_back(delivery, "the campaign was paused or cancelled")[0])
            result.outcomes[delivery.id] = Outcome(None)
            continue
        if n and time.monotonic() - started > limit:
            result.left = [d.id for d in claimed[n:]]
            settles += [outcomes.given_back(d, "the batch ran out of time; handed on")[0] for d in claimed[n:]]
            break
        try:
            done = _send_one(rt, delivery, records[delivery.id], marks, held, slots.pop(delivery.id, None), after)
        except Exception as exc:  # before the provider call (the call's own errors are outcomes)
            _warn(delivery.id, exc)
            result.failed(exc)
            done = outcomes.given_back(delivery, f"{type(exc).__name__} before the provider call")
        if done is None:
            result.outcomes[delivery.id] = Outcome(None)  # the sweep took it back before we marked it
            continue
        settles.append(done[0])
        result.outcomes[delivery.id] = done[1]
    _record(rt, settles, marks)


#: How often a batch in progress looks whether its campaign was paused (one small read per thread and second).
STATE_RECHECK_SECONDS = 1.0


def _stopped(rt: Runtime, campaign_ids: set[str]) -> set[str]:
    """Those of these campaigns that are no longer active (paused or cancelled since the batch was read)."""
    return {c for c in campaign_ids if (r := rt.ledger.campaign(c, fresh=True)) is None or r.state != "active"}


def _record(rt: Runtime, settles: list[Settle], marks: send_marks.BatchMarks | None) -> None:
    if marks is not None:
        try:
            marks.flush()
        except Exception as exc:  # the record below is what counts; the marks only matter if it fails
            log.warning("send marks: %s: %s", type(exc).__name__, redact(str(exc)))
    moved = rt.ledger.record_many(settles, mark=marks.claim_mark if marks is not None else None)
    for s in settles:
        if s.delivery.id not in moved and s.message_id:
            # Someone settled it first (an operator, the sweep); keep their verdict, note the message id.
            rt.ledger.note_message_id(s.delivery.id, str(s.values.get("provider")), s.message_id)
    if marks is not None:
        try:
            marks.close()
        except Exception as exc:
            log.warning("send marks not removed (they expire): %s", type(exc).__name__)


def _take_slot(rt: Runtime, delivery: Delivery, marks: send_marks.BatchMarks | None = None) -> tuple[Slot, float]:
    # Build the provider client first (the first one in a process takes a few hundred ms), not between the
    # rate slot and the call: that gap would push a whole second's sends into the next provider second.
    rt.provider(delivery.channel)
    # An SMS costs its parts, counted at enqueue from the same template and fields.
    cost = (delivery.sms_parts or 1) if delivery.channel is Channel.SMS else 1
    slot = Slot(uuid.uuid4().hex, cost)
    # With marks: the slot and this delivery's "about to send" mark in one script, in one round trip with
    # the previous send's outcome mark and re-stamp (queued on the batch's line).
    run = marks.with_slot(delivery.id) if marks is not None else None
    return slot, rt.limits.acquire(delivery.channel, delivery.contact, cost=cost, token=slot.token, run=run)


def _send_one(
    rt: Runtime,
    delivery: Delivery,
    record: CampaignRecord,
    marks: send_marks.BatchMarks | None,
    held: dict[Channel, datetime],
    slot: Slot | None,
    after: _AfterBatch,
) -> tuple[Settle, Outcome] | None:
    """One claimed delivery: build, rate slot, mark, call. Raises only before the provider call."""
    try:
        outgoing = build_outgoing(rt, delivery, record)
    except Exception as exc:
        return outcomes.not_built(delivery, exc)
    if delivery.channel in held:
        return outcomes.given_back(delivery, "waiting for a rate slot", held[delivery.channel])
    if slot is None:
        try:
            slot, wait = _take_slot(rt, delivery, marks)
        except send_marks.Revoked:
            return None
        if wait > 0:
            held[delivery.channel] = again = clock.now() + timedelta(seconds=wait)
            log.info("delivery %s: quota or rate limit, next slot in %.0fs", delivery.id, wait)
            return outcomes.given_back(delivery, "waiting for a rate slot", again)
    if marks is not None and delivery.id not in marks.marked and not marks.about(delivery.id):
        return None
    try:
        return _call_and_settle(rt, delivery, outgoing, record.campaign.send_by, slot, marks, after)
    except Exception as exc:  # the provider may have been called: never hand it back, never resend
        _warn(delivery.id, exc)
        name = rt.provider(delivery.channel).name
        return outcomes.settle(delivery, name, exc, Status.UNKNOWN, f"delivery {delivery.id}: error after the call")


def build_outgoing(rt: Runtime, delivery: Delivery, record: CampaignRecord) -> Outgoing:
    """The message for a claimed delivery; its reference names the delivery and this attempt."""
    renderer = cached.renderer(rt, record)
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


def _after_call(rt: Runtime, delivery: Delivery, slot: Slot, marks: send_marks.BatchMarks | None) -> None:
    """The call is over: its rate slot counts from now (it may have arrived now). With marks, the re-stamp
    is queued on the batch's line with the outcome mark: both go with the next round trip (the next send's
    rate slot or mark, or the end of the batch), before any wait for a slot."""
    rt.limits.sent(delivery.channel, delivery.contact, slot.token, cost=slot.cost, pipe=marks.line if marks else None)


def _call_and_settle(
    rt: Runtime,
    delivery: Delivery,
    outgoing: Outgoing,
    send_by: datetime,
    slot: Slot,
    marks: send_marks.BatchMarks | None,
    after: _AfterBatch,
) -> tuple[Settle, Outcome]:
    provider = rt.provider(delivery.channel).name
    who = f"delivery {delivery.id} ({mask_contact(delivery.channel, delivery.contact)})"
    note = marks.outcome if marks is not None else lambda *_: None
    try:
        result = rt.provider(delivery.channel).send(outgoing)
    except AmbiguousOutcome as exc:
        done = outcomes.settle(delivery, provider, exc, Status.UNKNOWN, f"{who}: outcome unknown, will not resend")
    except PermanentError as exc:
        done = outcomes.settle(delivery, provider, exc, Status.FAILED, f"{who}: refused for good")
        if fallback_owed(delivery):  # a fallback is owed (if the campaign has one), recorded with the failure
            done[0].values["fallback_due_at"] = clock.now()
        note(delivery.id, send_marks.REFUSED, str(done[0].values["provider_code"] or "refused"))
        outcomes.count_failure(rt, delivery.campaign_id)
    except ProviderError as exc:
        done = outcomes.retry_later(rt, delivery, exc, provider, send_by)
        if done[0].to is Status.FAILED:
            note(delivery.id, send_marks.REFUSED, str(done[0].values["provider_code"] or "gave-up"))
        else:
            note(delivery.id, send_marks.NOT_TAKEN)
    except Exception as exc:  # not one of the provider's known answers: it may have taken the message
        what = f"{who}: outcome unknown ({type(exc).__name__})"
        done = outcomes.settle(delivery, provider, exc, Status.UNKNOWN, what)
    else:
        note(delivery.id, send_marks.SENT, provider, result.message_id)
        parts = outgoing.parts if isinstance(outgoing, OutgoingSms) else None
        after.message_ids.append(result.message_id)  # its early provider events are looked for after the batch
        rt.breaker.record_success(delivery.campaign_id)
        # One line per batch says what happened (the ledger has every send); this one only when debugging.
        log.debug("%s: sent via %s", who, provider)
        done = outcomes.sent(delivery, provider, result.message_id, clock.now(), parts)
    _after_call(rt, delivery, slot, marks)
    return done
