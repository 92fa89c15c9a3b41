"""Recovery from the ledger (SPEC §4): what the broker lost is found again here.

- ``sending`` left by a dead worker for longer than ``stale_sending_seconds`` becomes ``unknown``
  (never resent by itself: the provider may have it);
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
from dispatcher.runtime import Runtime
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
    fallbacks: int = 0


def sweep(
    rt: Runtime, dispatch: Callable[[list[int]], None], *, everything: bool = True, queue_empty: bool = True
) -> SweepResult:
    ledger = rt.ledger
    now = clock.now()
    result = SweepResult()
    for delivery_id in ledger.stale_sending(now - timedelta(seconds=rt.settings.stale_sending_seconds)):
        moved = ledger.move(
            delivery_id,
            Status.UNKNOWN,
            actor="sweep",
            expect=[Status.SENDING],
            detail="worker stopped while sending; outcome unknown",
        )
        result.unknown += moved is not None
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
    if result.unknown or result.redispatched or result.expired or result.fallbacks:
        log.info(
            "sweep: %d stale sends marked unknown, %d expired, %d re-enqueued, %d fallbacks queued",
            result.unknown,
            result.expired,
            result.redispatched,
            result.fallbacks,
        )
    return result


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
