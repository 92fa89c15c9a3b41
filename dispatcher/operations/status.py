"""Campaign counts in the shape of SPEC §9 (``status --json``)."""

from __future__ import annotations

from typing import Any

from dispatcher.core.states import Channel
from dispatcher.ledger import Ledger


def reminder_counts(ledger: Ledger, campaign_id: str) -> dict[str, dict[str, int]]:
    """``{template: {state: n}}`` of a campaign's reminder runs, from their counters."""
    found: dict[str, dict[str, int]] = {}
    for child_id, child_purpose in ledger.child_campaigns(campaign_id):
        name = (child_purpose or "").removeprefix("reminder:") or child_id
        by_state = found.setdefault(name, {})
        for (_, status), n in sorted(ledger.counts(child_id).items()):
            by_state[status] = by_state.get(status, 0) + n
    return found


def campaign_status(ledger: Ledger, campaign_id: str) -> dict[str, Any]:
    """The campaign's own deliveries (its reminder runs are counted apart, under ``reminders``)."""
    counts = ledger.counts(campaign_id)
    by_status: dict[str, int] = {}
    by_channel: dict[str, dict[str, int]] = {c.value: {} for c in Channel}
    for (channel, status), n in sorted(counts.items()):
        by_status[status] = by_status.get(status, 0) + n
        by_channel.setdefault(channel, {})[status] = n
    return {
        "campaign": campaign_id,
        "total": sum(by_status.values()),
        "by_status": by_status,
        "by_channel": by_channel,
        "redeemed": ledger.redeemed_count(campaign_id),
        "reminders": reminder_counts(ledger, campaign_id),
    }
