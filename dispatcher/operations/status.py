"""Campaign counts in the shape of SPEC §9 (``status --json``)."""

from __future__ import annotations

from typing import Any

from dispatcher.core.states import Channel
from dispatcher.ledger import Ledger


def campaign_status(ledger: Ledger, campaign_id: str) -> dict[str, Any]:
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
    }
