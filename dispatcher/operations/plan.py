"""``dispatcher plan``: can the rest of a campaign be sent before send-by, and when will it finish?

From the deliveries still owed a send, their SMS parts, the global rates, the daily quotas and the SMS
window. Channels send in parallel; each is limited by its own rate, quota and (SMS) window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from dispatcher.core.campaign import Campaign, SmsWindow
from dispatcher.core.clock import JST
from dispatcher.core.i18n import _
from dispatcher.core.settings import Settings

DAY = timedelta(days=1)


@dataclass(frozen=True)
class ChannelPlan:
    channel: str
    remaining: int
    units: int  # messages for e-mail, parts for SMS: what the rate and quota count
    rate: float | None
    daily_quota: int | None
    finish: datetime | None  # None: nothing to send
    note: str  # in the user's language (``plan --json`` is built in English)


@dataclass(frozen=True)
class Plan:
    campaign_id: str
    now: datetime
    send_by: datetime
    channels: list[ChannelPlan]
    #: The campaign's scheduled start (None: none set).
    send_from: datetime | None = None

    @property
    def starts(self) -> datetime:
        """When sending starts: now, or the campaign's send_from while it is ahead."""
        return max(self.now, self.send_from) if self.send_from is not None else self.now

    @property
    def finish(self) -> datetime | None:
        finishes = [c.finish for c in self.channels if c.finish is not None]
        return max(finishes) if finishes else None

    @property
    def will_finish(self) -> bool:
        return self.finish is None or self.finish <= self.send_by

    def as_dict(self) -> dict[str, object]:
        return {
            "campaign": self.campaign_id,
            "now": self.now.isoformat(),
            "send_by": self.send_by.isoformat(),
            "send_from": self.send_from.isoformat() if self.send_from else None,
            "starts": self.starts.isoformat(),
            "finish": self.finish.isoformat() if self.finish else None,
            "will_finish": self.will_finish,
            "channels": [
                {
                    "channel": c.channel,
                    "remaining": c.remaining,
                    "units": c.units,
                    "rate": c.rate,
                    "daily_quota": c.daily_quota,
                    "finish": c.finish.isoformat() if c.finish else None,
                    "note": c.note,
                }
                for c in self.channels
            ],
        }


def merge_pending(*parts: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Work owed by a campaign and its reminder runs together: they share the same rates and quotas."""
    merged: dict[str, tuple[int, int]] = {}
    for part in parts:
        for channel, (count, units) in part.items():
            have = merged.get(channel, (0, 0))
            merged[channel] = (have[0] + count, have[1] + units)
    return merged


def _window_close(window: SmsWindow, instant: datetime) -> datetime:
    local = instant.astimezone(JST)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight + timedelta(minutes=window.end_minutes)


def finish_time(
    units: int, rate: float | None, quota: int | None, start: datetime, window: SmsWindow | None = None
) -> datetime:
    """When ``units`` sends end, at ``rate`` per second, ``quota`` per day, only inside ``window``."""
    if units <= 0 or (rate is None and quota is None):
        return start  # no cap: as fast as the workers go
    now, left = start, float(units)
    block_start, block_used = start, 0.0  # quota counted in 24-hour blocks from now: conservative
    for _step in range(100_000):
        if window is not None and not window.always and not window.contains(now):
            now = window.next_opening(now)
        while now >= block_start + DAY:
            block_start, block_used = block_start + DAY, 0.0
        span_end = block_start + DAY
        if window is not None and not window.always:
            span_end = min(span_end, _window_close(window, now))
        capacity = (span_end - now).total_seconds() * rate if rate else math.inf
        if quota is not None:
            capacity = min(capacity, quota - block_used)
        if left <= capacity:
            return now + timedelta(seconds=left / rate if rate else 0)
        left -= capacity
        block_used += capacity
        now = block_start + DAY if quota is not None and block_used >= quota else span_end
    return now


def make_plan(campaign: Campaign, pending: dict[str, tuple[int, int]], settings: Settings, now: datetime) -> Plan:
    """The finish estimate counts from ``max(now, send_from)``: nothing leaves before the scheduled start."""
    start = max(now, campaign.send_from) if campaign.send_from is not None else now
    channels = []
    for channel in ("email", "sms"):
        count, parts = pending.get(channel, (0, 0))
        if channel == "email":
            units, rate, quota, window = count, settings.email_rate, settings.email_daily_quota, None
        else:
            units, rate, quota, window = (
                parts or count,
                settings.sms_rate,
                settings.sms_daily_quota,
                campaign.sms_window,
            )
        if count == 0:
            channels.append(ChannelPlan(channel, 0, 0, rate, quota, None, _("nothing left to send")))
            continue
        finish = finish_time(units, rate, quota, start, window)
        notes = []
        if start > now:
            notes.append(_("held until send_from {at} JST").format(at=f"{start.astimezone(JST):%Y-%m-%d %H:%M}"))
        if rate is None:
            notes.append(_("no rate cap set: as fast as the workers go"))
        if channel == "sms" and window is not None and not window.always:
            notes.append(_("SMS only inside the {window} JST window").format(window=_fmt_window(window)))
        if quota is not None and units > quota:
            days = _("needs {days} days of the {quota}/day quota")
            notes.append(days.format(days=math.ceil(units / quota), quota=f"{quota:,}"))
        channels.append(ChannelPlan(channel, count, units, rate, quota, finish, _("; ").join(notes)))
    return Plan(campaign.id, now, campaign.send_by, channels, campaign.send_from)


def _fmt_window(window: SmsWindow) -> str:
    end = window.end_minutes
    return f"{window.start.strftime('%H:%M')}–{end // 60:02d}:{end % 60:02d}"
