"""The checks a delivery passes before it is claimed: the one place that decides "not now" or "never".

Each check looks at the delivery as read for its batch (with its campaign and suppression) and either
settles it here (cancelled, expired, suppressed), holds it (paused, not yet due, SMS window closed), or
lets it through to the batch claim. Add a check as one more step in :func:`before_claim`; it runs before
any claim, so it may move the delivery out of ``queued``/``retrying`` with ``ledger.move``.

The rate slot is not taken here: a batch claims first and waits for each send's slot right before its
provider call (see :mod:`dispatcher.sending.delivery`), so slots count from the moment they are used.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from dispatcher.core.states import Channel, Status
from dispatcher.ledger.store import CampaignRecord, Delivery
from dispatcher.runtime import Runtime
from dispatcher.sending.outcomes import Outcome
from dispatcher.sending.sweep import held_for_send_from


def before_claim(
    rt: Runtime, delivery: Delivery, record: CampaignRecord, suppressed: str | None, now: datetime
) -> Outcome | None:
    """None when the delivery may be claimed and sent now; else what became of it."""
    ledger = rt.ledger
    campaign = record.campaign
    if record.state == "paused":
        return Outcome(delivery.status)  # resume re-enqueues everything due
    if record.state == "cancelled":
        ledger.move(delivery.id, Status.CANCELLED, actor="worker", detail="campaign cancelled")
        return Outcome(Status.CANCELLED)
    if now >= campaign.send_by:
        ledger.move(delivery.id, Status.EXPIRED, actor="worker", detail="send_by passed before sending")
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
            ledger.move(delivery.id, Status.EXPIRED, actor="worker", detail="no SMS window left before send_by")
            return Outcome(Status.EXPIRED)
        ledger.defer(delivery.id, opening)
        return Outcome(delivery.status, again_at=opening)
    if suppressed is not None:
        ledger.move(delivery.id, Status.SUPPRESSED, actor="worker", detail=f"suppression list: {suppressed}")
        return Outcome(Status.SUPPRESSED)
    return None
