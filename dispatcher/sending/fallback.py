"""Automatic fallback (campaign key ``fallback = true``): a delivery that hard-bounced or failed for good, whose
row has the other contact, is queued once on the other channel (actor ``fallback``) and then goes through
the normal send path (its window, rate limits, send-by, suppression at send time).

The failure itself marks the fallback as owed (``fallback_due_at``, in the same transaction as the move), so
the ``fallback`` actor acts at once after a worker's permanent failure, and the sweep finds what is owed
after a provider event or a lost message. Deciding is idempotent: ``fallback_at`` says it happened, and a
fallback that may not happen is closed with its reason (the delivery stays failed/bounced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dispatcher.core import clock, sms
from dispatcher.core.states import Channel
from dispatcher.ledger.readdress import FALLBACK_FROM, Address
from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)

ACTOR = "fallback"


def fall_back(rt: Runtime, delivery_id: int, dispatch: Callable[[list[int]], None] | None) -> str:
    """Decide the fallback owed to one delivery; what happened (``queued``, ``no fallback: …``, ``not owed``)."""
    ledger = rt.ledger
    delivery = ledger.get(delivery_id)
    if (
        delivery is None
        or delivery.fallback_due_at is None
        or delivery.fallback_at is not None
        or delivery.status not in FALLBACK_FROM
    ):
        return "not owed"
    record = ledger.campaign(delivery.campaign_id, fresh=True)
    if record is None or not record.campaign.fallback:
        ledger.close_fallback(delivery, actor=ACTOR, why=None)
        return "not owed"
    campaign = record.campaign
    other = Channel.SMS if delivery.channel is Channel.EMAIL else Channel.EMAIL
    contact = delivery.phone if other is Channel.SMS else delivery.email
    why: str | None = None
    parts: int | None = None
    now = clock.now()
    if record.state == "cancelled":
        why = "the campaign is cancelled"
    elif now >= campaign.send_by:
        why = "send_by has passed"
    elif not contact:
        why = f"no {other.value} contact on the row"
    elif ledger.is_suppressed(contact):
        why = f"the {other.value} contact is on the suppression list"
    elif other is Channel.SMS:
        units, parts = sms.measure(rt.renderer(record).sms(delivery.fields, delivery.receipt_url))
        if units > campaign.sms_max_chars:
            why = f"the SMS would be {units} characters, the campaign allows {campaign.sms_max_chars}"
    if why is not None or not contact:
        ledger.close_fallback(delivery, actor=ACTOR, why=why)
        log.info("delivery %s: no fallback: %s", delivery.id, why)
        return f"no fallback: {why}"
    moved = ledger.readdress(
        delivery,
        Address(other, contact),
        actor=ACTOR,
        why=f"fallback to {other.value} after {delivery.status.value}",
        operator=False,
        sms_parts=parts,
        values={"fallback_at": now},
        now=now,
    )
    if moved is None:
        return "not owed"  # it changed meanwhile (an operator, another fallback run)
    if dispatch is not None:
        dispatch([delivery.id])
        ledger.mark_dispatched([delivery.id], clock.now())
    log.info("delivery %s: falls back to %s", delivery.id, other.value)
    return "queued"


def fall_back_due(rt: Runtime, dispatch: Callable[[list[int]], None] | None) -> int:
    """Every fallback owed and not decided yet (the sweep's part); how many were queued."""
    queued = 0
    seen: set[int] = set()
    while ids := [i for i in rt.ledger.fallback_due() if i not in seen]:
        seen.update(ids)
        queued += sum(fall_back(rt, i, dispatch) == "queued" for i in ids)
    return queued
