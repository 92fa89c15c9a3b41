"""Sends per minute for the chart, with closed minutes remembered between requests.

The transition log is append-only, so once a minute is well past (:data:`SETTLE`, longer than any
transaction that could still commit a row stamped inside it) its count never changes. Each request then
reads only the last few minutes from the ledger, plus whatever part of the range it has not seen yet.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..ledger import Ledger
from . import queries

SETTLE = timedelta(minutes=2)
#: Minutes older than this are forgotten (the longest chart range is a day).
KEEP = timedelta(days=1, minutes=10)


def floor_minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


@dataclass
class _Known:
    """Every minute in [start, end) is counted in ``counts`` (minutes without sends are absent)."""

    start: datetime
    end: datetime
    counts: dict[datetime, int] = field(default_factory=dict)


class SendsPerMinute:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, _Known] = {}

    def between(self, ledger: Ledger, campaign_id: str, since: datetime, now: datetime) -> dict[datetime, int]:
        """``{minute: sends}`` for the minutes from ``since`` (rounded down) to ``now``."""
        start, settled = floor_minute(since), floor_minute(now - SETTLE)
        if settled > start:
            self._learn(ledger, campaign_id, start, settled, now)
        with self._lock:
            known = self._known.get(campaign_id)
            result = {m: n for m, n in known.counts.items() if start <= m < settled} if known else {}
        result.update(queries.sends_per_minute(ledger, campaign_id, max(start, settled), now))
        return result

    def _learn(self, ledger: Ledger, campaign_id: str, start: datetime, settled: datetime, now: datetime) -> None:
        with self._lock:
            known = self._known.get(campaign_id)
            gaps: list[tuple[datetime, datetime]]
            if known is None or known.end < start or settled < known.start:
                known, gaps = _Known(start, start), [(start, settled)]
            else:
                gaps = [(start, known.start)] if start < known.start else []
                if known.end < settled:
                    gaps.append((known.end, settled))
        fetched = {}
        for lo, hi in gaps:
            fetched.update(queries.sends_per_minute(ledger, campaign_id, lo, hi))
        horizon = floor_minute(now - KEEP)
        with self._lock:
            known.counts.update(fetched)
            known.start = max(min(known.start, start), horizon)
            known.end = max(known.end, settled)
            known.counts = {m: n for m, n in known.counts.items() if m >= known.start}
            self._known[campaign_id] = known
