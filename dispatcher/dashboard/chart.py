"""The campaign chart, drawn on the server as inline SVG (no script, no CDN: offices run closed networks).

Top panel: sends accepted by a provider per minute. Bottom panel: cumulative sends against the campaign
total, the projected finish (dashed) and the send-by line when it falls inside the drawn range.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from xml.sax.saxutils import escape

from dispatcher.core.clock import JST

from .labels import jst, num

WIDTH, HEIGHT = 760, 310
LEFT, RIGHT = 70, 20
BARS = (28, 120)  # top and bottom y of the per-minute panel
CUMULATIVE = (160, 268)
MINUTE = timedelta(minutes=1)


def _nice(value: int) -> int:
    """A round axis maximum at or above ``value``."""
    if value <= 5:
        return 5
    magnitude = int(10 ** (len(str(value)) - 1))
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _local(instant: datetime, fmt: str) -> str:
    return instant.astimezone(JST).strftime(fmt)


def _floor_minute(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


def progress_chart(
    *,
    per_minute: dict[datetime, int],
    since: datetime,
    now: datetime,
    sent_now: int,
    total: int,
    send_by: datetime,
    finish: datetime | None,
) -> str:
    """SVG markup; ``sent_now`` is how many have been sent in all, ``per_minute`` the sends in range."""
    span = now - since
    horizon = now
    if finish is not None and finish > now:
        horizon = min(finish, now + span / 2)
    if now < send_by <= now + span / 2:
        horizon = max(horizon, send_by)
    width = (horizon - since).total_seconds() or 1.0
    plot = WIDTH - LEFT - RIGHT

    def x(instant: datetime) -> float:
        return LEFT + plot * (instant - since).total_seconds() / width

    minutes: list[datetime] = []
    minute = _floor_minute(since)
    while minute <= now:
        minutes.append(minute)
        minute += MINUTE
    counts = [per_minute.get(m, 0) for m in minutes]
    peak = _nice(max(counts, default=0))
    bar_w = max(1.0, plot * 60 / width - 1)
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart" role="img" '
        'aria-labelledby="chart-title">',
        '<title id="chart-title">1分あたりの送信数と累計送信数</title>',
        f'<text x="{LEFT}" y="16" class="chart-heading">1分あたりの送信数（最大 {num(peak)}）</text>',
        f'<line x1="{LEFT}" y1="{BARS[1]}" x2="{WIDTH - RIGHT}" y2="{BARS[1]}" class="axis"/>',
        f'<text x="{LEFT - 6}" y="{BARS[0] + 4}" class="tick" text-anchor="end">{num(peak)}</text>',
        f'<text x="{LEFT - 6}" y="{BARS[1]}" class="tick" text-anchor="end">0</text>',
    ]
    bar_h = BARS[1] - BARS[0]
    for m, n in zip(minutes, counts, strict=True):
        if n:
            h = bar_h * n / peak
            parts.append(
                f'<rect x="{x(m):.1f}" y="{BARS[1] - h:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'class="bar"><title>{_local(m, "%H:%M")} {num(n)}件</title></rect>'
            )

    # Cumulative panel.
    top = max(total, sent_now, 1)
    cum_h = CUMULATIVE[1] - CUMULATIVE[0]

    def y(value: float) -> float:
        return CUMULATIVE[1] - cum_h * value / top

    start = max(0, sent_now - sum(counts))
    points = [f"{x(since):.1f},{y(start):.1f}"]
    running = start
    for m, n in zip(minutes, counts, strict=True):
        running += n
        points.append(f"{x(min(m + MINUTE, now)):.1f},{y(running):.1f}")
    parts += [
        f'<text x="{LEFT}" y="{CUMULATIVE[0] - 14}" class="chart-heading">累計送信数（対象 {num(total)}件）</text>',
        f'<line x1="{LEFT}" y1="{CUMULATIVE[1]}" x2="{WIDTH - RIGHT}" y2="{CUMULATIVE[1]}" class="axis"/>',
        f'<line x1="{LEFT}" y1="{y(total):.1f}" x2="{WIDTH - RIGHT}" y2="{y(total):.1f}" class="target"/>',
        f'<text x="{LEFT - 6}" y="{y(total) + 4:.1f}" class="tick" text-anchor="end">{num(total)}</text>',
        f'<text x="{LEFT - 6}" y="{CUMULATIVE[1]}" class="tick" text-anchor="end">0</text>',
        f'<polyline points="{" ".join(points)}" class="cumulative"/>',
    ]
    if finish is not None and finish > now and total > sent_now:
        end = min(finish, horizon)
        share = (end - now) / (finish - now)
        parts.append(
            f'<line x1="{x(now):.1f}" y1="{y(sent_now):.1f}" x2="{x(end):.1f}" '
            f'y2="{y(sent_now + (total - sent_now) * share):.1f}" class="projection"/>'
        )
    parts.append(f'<line x1="{x(now):.1f}" y1="{BARS[0]}" x2="{x(now):.1f}" y2="{CUMULATIVE[1]}" class="now"/>')
    if since <= send_by <= horizon:
        parts += [
            f'<line x1="{x(send_by):.1f}" y1="{BARS[0]}" x2="{x(send_by):.1f}" y2="{CUMULATIVE[1]}" class="send-by"/>',
            f'<text x="{x(send_by) - 4:.1f}" y="{CUMULATIVE[0] + 12}" class="send-by-label" text-anchor="end">'
            f"送信期限 {_local(send_by, '%m/%d %H:%M')}</text>",
        ]
    else:
        where = "以降" if send_by > horizon else "以前（期限切れ）"
        parts.append(
            f'<text x="{WIDTH - RIGHT}" y="{CUMULATIVE[0] - 14}" class="send-by-label" text-anchor="end">'
            f"送信期限 {escape(jst(send_by))}（表示範囲{where}）</text>"
        )
    for i in range(5):
        tick = since + (horizon - since) * i / 4
        parts.append(
            f'<text x="{x(tick):.1f}" y="{HEIGHT - 22}" class="tick" text-anchor="middle">'
            f"{_local(tick, '%H:%M')}</text>"
        )
    parts.append(
        f'<text x="{LEFT}" y="{HEIGHT - 4}" class="legend">実線: 累計送信　破線: 完了見込み　'
        "灰色の縦線: 現在　赤の縦線: 送信期限（時刻は JST）</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
