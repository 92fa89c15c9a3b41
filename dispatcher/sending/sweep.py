"""Recovery from the ledger (SPEC §4): what the broker lost is found again here.

- ``sending`` left by a dead worker for longer than ``stale_sending_seconds`` is settled from its batch's
  send marks (dispatcher/sending/marks.py): no mark (the provider was never called) → claimable again;
  "about to send" → ``unknown`` (never resent by itself: the provider may have it); "sent as M" → ``sent``
  with message id M; refused → ``retrying``/``failed``. Marks that may be incomplete (Redis restarted or
  flushed since the claim, or no marks at all) → ``unknown``;
- ``queued``/``retrying`` deliveries of a campaign past its send-by become ``expired``;
- ``queued``/``retrying`` deliveries whose time has come are handed to the broker again. The atomic
  claim makes a duplicate message harmless, so re-sending a message is always safe;
- fallbacks owed (a hard bounce or permanent failure in a ``fallback = true`` campaign) are decided.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.core import clock
from dispatcher.core.campaign import Campaign
from dispatcher.core.states import Status
from dispatcher.feedback.apply import PendingLimits, apply_pending
from dispatcher.ledger.readdress import fallback_owed
from dispatcher.ledger.store import Delivery, Settle
from dispatcher.runtime import Runtime
from dispatcher.sending import marks, outcomes
from dispatcher.sending.fallback import fall_back_due

log = logging.getLogger(__name__)

#: Periodic sweeps leave alone what was handed to the broker more recently than this, unless the
#: broker's queue is empty (then everything due was lost and goes back at once).
REDISPATCH_GRACE = timedelta(minutes=15)


@dataclass
class SweepResult:
    unknown: int = 0
    expired: int = 0
    redispatched: int = 0
    #: Stale sends the marks settled otherwise: given back (never called), or recorded as the provider said.
    given_back: int = 0
    recovered: int = 0
    fallbacks: int = 0


def sweep(
    rt: Runtime, dispatch: Callable[[list[int]], None], *, everything: bool = True, queue_empty: bool = True
) -> SweepResult:
    ledger = rt.ledger
    now = clock.now()
    result = SweepResult()
    released = _stale(rt, now - timedelta(seconds=rt.settings.stale_sending_seconds), result)
    if released:
        dispatch(released)
        ledger.mark_dispatched(released, now)
        result.redispatched += len(released)
    while ids := ledger.overdue(now):
        expired = [ledger.move(i, Status.EXPIRED, actor="sweep", detail="send_by passed before sending") for i in ids]
        result.expired += sum(m is not None for m in expired)
        if not any(expired):
            break
    dispatched_before = None if everything or queue_empty else now - REDISPATCH_GRACE
    after = 0
    while True:
        ids = ledger.due(now, after_id=after, limit=5000, dispatched_before=dispatched_before)
        if not ids:
            break
        dispatch(ids)
        ledger.mark_dispatched(ids, now)
        result.redispatched += len(ids)
        after = ids[-1]
    result.fallbacks = fall_back_due(rt, dispatch)  # each one queued is handed to the broker here
    if (
        result.unknown
        or result.redispatched
        or result.expired
        or result.fallbacks
        or result.given_back
        or result.recovered
    ):
        log.info(
            "sweep: %d stale sends marked unknown, %d expired, %d re-enqueued, %d fallbacks queued "
            "(stale sends: %d never called, given back; %d recorded from their marks)",
            result.unknown,
            result.expired,
            result.redispatched,
            result.fallbacks,
            result.given_back,
            result.recovered,
        )
    return result


UNKNOWN_DETAIL = "worker stopped while sending; outcome unknown"


def _stale(rt: Runtime, before: datetime, result: SweepResult) -> list[int]:
    """Settle what dead workers left in ``sending``; returns the ids given back (to hand to the broker)."""
    settles: list[Settle] = []
    for delivery, claim_mark in rt.ledger.stale_claims(before):
        if claim_mark is None or rt.redis is None:
            settles.append(_unknown(delivery, UNKNOWN_DETAIL))
            continue
        try:
            mark = marks.verdict(rt.redis, claim_mark, delivery.id)
        except Exception as exc:  # Redis unreachable: decide nothing now, the next sweep looks again
            log.warning("sweep: send marks unreadable (%s); stale sends left for the next sweep", type(exc).__name__)
            break
        settles.append(_from_mark(delivery, mark))
    if not settles:
        return []
    moved = rt.ledger.record_many(settles, actor="sweep")
    released = []
    for s in settles:
        if s.delivery.id not in moved:
            continue
        if s.to is Status.UNKNOWN:
            result.unknown += 1
        elif s.to is Status.RETRYING:
            result.given_back += 1
            released.append(s.delivery.id)
        else:
            result.recovered += 1
        if s.message_id:  # provider events that came before this record apply now
            apply_pending(rt.ledger, s.message_id, rt.breaker, PendingLimits.of(rt.settings))
    return released


def _unknown(delivery: Delivery, detail: str) -> Settle:
    return Settle(delivery, Status.UNKNOWN, {}, [(Status.UNKNOWN, detail, None)])


def _from_mark(delivery: Delivery, mark: str) -> Settle:
    kind, *rest = mark.split("\t")
    if kind == marks.LOST:
        return _unknown(delivery, f"{UNKNOWN_DETAIL} (its send marks were lost: Redis restarted or flushed)")
    if kind == marks.REVOKED:
        return outcomes.given_back(delivery, "the worker stopped before calling the provider")[0]
    if kind == marks.NOT_TAKEN:
        settle = Settle(
            delivery,
            Status.RETRYING,
            {"not_before": None},
            [(Status.RETRYING, "worker stopped after the provider declined (retryable); recorded by the sweep", None)],
        )
        return settle
    if kind == marks.SENT and len(rest) == 2:
        provider, message_id = rest
        settle = outcomes.sent(delivery, provider, message_id, clock.now(), None)[0]
        settle.steps = [(Status.SENT, f"accepted by {provider} (recorded by the sweep from the worker's mark)", None)]
        return settle
    if kind == marks.REFUSED:
        code = (rest[0] if rest else "") or "refused"
        detail = "worker stopped after the provider refused it for good; recorded by the sweep"
        values: dict[str, object] = {"provider_code": code, "reason": detail}
        if fallback_owed(delivery):  # as the worker would have recorded it with the failure
            values["fallback_due_at"] = clock.now()
        return Settle(delivery, Status.FAILED, values, [(Status.FAILED, detail, code)])
    return _unknown(delivery, UNKNOWN_DETAIL)


def held_for_send_from(rt: Runtime, delivery_id: int, campaign: Campaign, now: datetime) -> bool:
    """The send path's pre-claim check: nothing leaves before the campaign's ``send_from``. A message that
    comes early (a resend, a duplicate, a list enqueued before it) puts the delivery back in the ledger,
    unclaimed and with no broker message; :func:`release` hands it over when ``send_from`` comes."""
    if campaign.send_from is None or now >= campaign.send_from:
        return False
    rt.ledger.hold([delivery_id], campaign.send_from)
    return True


def release(rt: Runtime, dispatch: Callable[[list[int]], None], at: datetime) -> int:
    """The ``send_from`` ``at`` has come: every due delivery of the campaigns starting then goes to the
    broker now. Held work was never on the broker, but a delivery an early message put back may carry the
    ``dispatched_at`` of whoever sent that message, which the periodic sweep's grace filter would respect
    for minutes; so this hand-over ignores it (a duplicate message is harmless: the claim is atomic)."""
    ledger = rt.ledger
    now = clock.now()
    started = ledger.starting(at - timedelta(microseconds=1), now)
    released = after = 0
    while started and (ids := ledger.due_in(started, now, after_id=after)):
        dispatch(ids)
        ledger.mark_dispatched(ids, now)
        released += len(ids)
        after = ids[-1]
    if released:
        log.info("send_from %s: %d held deliveries of %s handed to the broker", at, released, ", ".join(started))
    return released
