"""The campaign's goal, drawn: eligible → sent → notified → redeemed, per channel and per day, against the
receipt deadline, with the share still unredeemed and where it will stand at the deadline at the recent
rate. Server-rendered SVG (no script, no CDN)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from dispatcher.core.clock import JST
from dispatcher.core.states import Channel, Status
from dispatcher.ledger import Ledger

from .labels import num

#: Went through ``sent`` (a provider accepted it).
SENT_EVER = (Status.SENT, Status.DELIVERED, Status.BOUNCED, Status.COMPLAINED)
#: Reached the person (SPEC §10; a complaint proves receipt), as the report counts them.
NOTIFIED = (Status.SENT, Status.DELIVERED, Status.COMPLAINED)
#: The recent rate is measured over this many days (fewer while the campaign is younger).
RECENT_DAYS = 7

WIDTH, HEIGHT = 760, 300
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 30, 250


@dataclass(frozen=True)
class Stage:
    channel: str
    eligible: int
    sent: int
    notified: int
    redeemed: int

    @property
    def unredeemed_share(self) -> float | None:
        return None if not self.eligible else (self.eligible - self.redeemed) / self.eligible


@dataclass(frozen=True)
class Funnel:
    deadline: datetime
    now: datetime
    stages: list[Stage]
    #: JST days with (notified that day, redeemed that day), in order.
    days: list[tuple[date, int, int]] = field(default_factory=list)
    #: Redemptions per day lately, and the redeemed count projected at the deadline (capped at eligible).
    recent_rate: float = 0.0
    projected: int = 0

    @property
    def total(self) -> Stage:
        s = self.stages
        return Stage("all", *(sum(getattr(x, k) for x in s) for k in ("eligible", "sent", "notified", "redeemed")))

    @property
    def projected_unredeemed_share(self) -> float | None:
        eligible = self.total.eligible
        return None if not eligible else (eligible - self.projected) / eligible

    def as_dict(self) -> dict[str, Any]:
        def stage(s: Stage) -> dict[str, Any]:
            share = s.unredeemed_share
            return {
                "eligible": s.eligible,
                "sent": s.sent,
                "notified": s.notified,
                "redeemed": s.redeemed,
                "unredeemed_share": None if share is None else round(share, 4),
            }

        share = self.projected_unredeemed_share
        return {
            "deadline": self.deadline.isoformat(),
            "by_channel": {s.channel: stage(s) for s in self.stages},
            "total": stage(self.total),
            "per_day": [{"day": d.isoformat(), "notified": n, "redeemed": r} for d, n, r in self.days],
            "recent_rate_per_day": round(self.recent_rate, 2),
            "projected_redeemed_at_deadline": self.projected,
            "projected_unredeemed_share": None if share is None else round(share, 4),
        }


def build(
    ledger: Ledger, campaign_id: str, counts: dict[tuple[str, str], int], deadline: datetime, now: datetime
) -> Funnel:
    """From the counters, one grouped count of redemptions by channel and two by day."""
    redeemed = ledger.redeemed_by_channel(campaign_id)
    stages = []
    for channel in (c.value for c in Channel):
        mine = {st: n for (ch, st), n in counts.items() if ch == channel}
        stages.append(
            Stage(
                channel,
                eligible=sum(mine.values()),
                sent=sum(mine.get(s.value, 0) for s in SENT_EVER),
                notified=sum(mine.get(s.value, 0) for s in NOTIFIED),
                redeemed=redeemed.get(channel, 0),
            )
        )
    per_day = ledger.per_day(campaign_id)
    names = sorted(set(per_day["notified"]) | set(per_day["redeemed"]))
    days = [(date.fromisoformat(d), per_day["notified"].get(d, 0), per_day["redeemed"].get(d, 0)) for d in names]
    funnel = Funnel(deadline, now, stages, days)
    today = now.astimezone(JST).date()
    redeemed_days = [d for d, _, r in days if r]
    if redeemed_days:
        first = min(redeemed_days)
        span = max(1, min(RECENT_DAYS, (today - first).days + 1))
        since = today - timedelta(days=span - 1)
        lately = sum(r for d, _, r in days if since <= d <= today)
        rate = lately / span
    else:
        rate = 0.0
    left_days = max(0.0, (deadline - now).total_seconds() / 86400)
    total = funnel.total
    projected = min(total.eligible, total.redeemed + math.floor(rate * left_days))
    return Funnel(deadline, now, stages, days, rate, projected)


def funnel_chart(f: Funnel) -> str:
    """Cumulative notified and redeemed per JST day up to the deadline, the projection dashed."""
    total = f.total
    today = f.now.astimezone(JST).date()
    last = f.deadline.astimezone(JST).date()
    first = min([d for d, _, _ in f.days] + [today, last])
    span = max(1, (max(last, today) - first).days + 1)
    top = max(total.eligible, 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, BOTTOM - TOP

    def x(day: date, end: bool = True) -> float:
        return LEFT + plot_w * ((day - first).days + (1 if end else 0)) / span

    def y(value: float) -> float:
        return BOTTOM - plot_h * value / top

    goal = y(total.eligible)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart funnel-chart" '
        'role="img" aria-labelledby="funnel-title">',
        '<title id="funnel-title">通知済み・受取済みの累計と受取期限</title>',
        f'<text x="{LEFT}" y="16" class="chart-heading">累計（対象 {num(total.eligible)}人）</text>',
        f'<line x1="{LEFT}" y1="{BOTTOM}" x2="{WIDTH - RIGHT}" y2="{BOTTOM}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{goal:.1f}" x2="{WIDTH - RIGHT}" y2="{goal:.1f}" class="target"/>',
        f'<text x="{LEFT - 6}" y="{goal + 4:.1f}" class="tick" text-anchor="end">{num(total.eligible)}</text>',
        f'<text x="{LEFT - 6}" y="{BOTTOM}" class="tick" text-anchor="end">0</text>',
    ]
    for name, column, css in (("通知済み", 1, "cumulative"), ("受取済み", 2, "redeemed")):
        running = 0
        points = [f"{x(first, end=False):.1f},{y(0):.1f}"]
        for day, notified, redeemed in f.days:
            if day > today:
                break
            running += notified if column == 1 else redeemed
            points.append(f"{x(day):.1f},{y(running):.1f}")
        points.append(f"{x(today):.1f},{y(running):.1f}")
        parts.append(f'<polyline points="{" ".join(points)}" class="{css}"><title>{name}</title></polyline>')
    if f.deadline > f.now:
        parts.append(
            f'<line x1="{x(today):.1f}" y1="{y(total.redeemed):.1f}" x2="{x(last):.1f}" y2="{y(f.projected):.1f}" '
            'class="projection redeemed-projection"/>'
        )
        parts.append(
            f'<text x="{x(last) - 4:.1f}" y="{y(f.projected) - 6:.1f}" class="tick" text-anchor="end">'
            f"見込み {num(f.projected)}人</text>"
        )
    parts += [
        f'<line x1="{x(today):.1f}" y1="{TOP}" x2="{x(today):.1f}" y2="{BOTTOM}" class="now"/>',
        f'<line x1="{x(last):.1f}" y1="{TOP}" x2="{x(last):.1f}" y2="{BOTTOM}" class="send-by"/>',
        f'<text x="{x(last) - 4:.1f}" y="{TOP + 12}" class="send-by-label" text-anchor="end">'
        f"受取期限 {f.deadline.astimezone(JST).strftime('%m/%d %H:%M')}</text>",
    ]
    for i in range(5):
        tick = first + timedelta(days=round((span - 1) * i / 4))
        parts.append(
            f'<text x="{x(tick):.1f}" y="{BOTTOM + 18}" class="tick" text-anchor="middle">'
            f"{tick.strftime('%m/%d')}</text>"
        )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 8}" class="legend">青: 通知済み（配達・送信済み）　緑: 受取済み　'
        "破線: 最近の受取ペースでの見込み　赤の縦線: 受取期限（JST）</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
