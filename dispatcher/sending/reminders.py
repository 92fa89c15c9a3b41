"""The send path's one rule for reminders: a person who has redeemed gets no reminder.

A reminder run is a campaign with a parent; its people were chosen when it was made, and some redeem
before their turn. The worker asks, once for the batch it has read (one query, and none for a batch
without reminders), which of its reminders now have a redemption, and settles them ``cancelled`` with the
reason ``redeemed`` before anything of the batch is sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from dispatcher.core.states import Status

if TYPE_CHECKING:
    from dispatcher.ledger.store import Delivery, Ledger


def cancel_redeemed_reminders(
    ledger: Ledger, found: dict[int, tuple[Delivery, str | None, datetime | None, str | None]]
) -> dict[int, Status | None]:
    """Cancel the batch's reminders whose person has redeemed; by delivery id, ``cancelled`` (or None when
    someone else settled it first)."""

    reminders = [i for i, (d, *_) in found.items() if (r := ledger.campaign(d.campaign_id)) and r.parent_id]
    outcomes: dict[int, Status | None] = {}
    for delivery_id in sorted(ledger.redeemed_among(reminders)):
        # The move starts only from queued/retrying: a reminder already sent stays sent.
        moved = ledger.move(
            delivery_id, Status.CANCELLED, actor="worker", detail="redeemed", values={"reason": "redeemed"}
        )
        outcomes[delivery_id] = Status.CANCELLED if moved is not None else None
    return outcomes
