"""The program's notion of "now".

Rehearsals and tests can start the clock at another instant (``DISPATCHER_CLOCK_START``); it then runs at
real speed from there. Production leaves it alone.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

JST = ZoneInfo("Asia/Tokyo")

_offset = timedelta(0)


def start_at(instant: datetime | None) -> None:
    """Make ``now()`` read ``instant`` at this moment and advance in real time from there."""
    global _offset
    _offset = timedelta(0) if instant is None else instant - datetime.now(UTC)


def now() -> datetime:
    return datetime.now(UTC) + _offset


def is_shifted() -> bool:
    return _offset != timedelta(0)


def monotonic() -> float:
    return time.monotonic()
