"""The redemption funnel on the campaign page, in Chromium over a real server (see test_dashboard_browser)."""

from __future__ import annotations

import json
import os
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import update

import dispatcher
from dispatcher.core.clock import JST
from dispatcher.core.states import Status
from dispatcher.dashboard import create_app
from dispatcher.ledger.schema import deliveries
from dispatcher.operations.remind import remind
from dispatcher.sending.delivery import deliver

from .dashboard_support import TOKEN, seed, send, serving
from .test_dashboard_browser import browser  # noqa: F401  (the Chromium fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: The tracked picture for the docs is rewritten only when asked, as the other screenshots are.
TRACKED = Path(__file__).resolve().parent.parent / "docs" / "img"
WRITE_SCREENSHOTS = os.environ.get("DISPATCHER_TEST_SCREENSHOTS") == "1"


def test_the_campaign_page_draws_the_funnel_against_the_deadline(
    browser: Browser,  # noqa: F811
    tmp_path,
    monkeypatch,
    redis_url,
) -> None:
    # Given a rehearsal on 2023-05-12: 60 people notified from 4/3 to 4/12, 36 of them redeemed since,
    # and a reminder run sent to part of the others
    monkeypatch.setenv("DISPATCHER_CLOCK_START", "2023-05-12T10:00:00+09:00")
    monkeypatch.setenv("DISPATCHER_DASHBOARD_INSECURE_COOKIES", "true")
    seeded = seed(
        tmp_path, monkeypatch, n=60, deadline="2023-05-31T23:59:59+09:00", send_by="2023-05-28T20:00:00+09:00"
    )
    rt, ledger = seeded.rt, seeded.rt.ledger
    ids = ledger.in_status(seeded.campaign_id, [Status.QUEUED])
    for n, delivery_id in enumerate(ids):
        send(rt, delivery_id)
        if n % 2:
            ledger.move(delivery_id, Status.DELIVERED, actor="event:test")
    with ledger.write() as conn:
        for n, delivery_id in enumerate(ids):
            sent_at = datetime(2023, 4, 3, 10, tzinfo=JST) + timedelta(days=n % 10, minutes=n)
            conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(first_sent_at=sent_at))
    people = [d.user_id for d in ledger.iter_campaign(seeded.campaign_id)]
    start = datetime(2023, 4, 5, 12, tzinfo=JST)
    redeemed = [
        {"user_id": uid, "redeemed_at": (start + timedelta(days=n, hours=n % 5)).isoformat()}
        for n, uid in enumerate(people[:36])
    ]
    assert dispatcher.record_redemptions(seeded.campaign_id, redeemed, ledger=ledger).recorded == 36
    run = remind(rt, seeded.campaign_id, "compensation-reminder", None, who="operator:test")
    assert run.queued == 24
    for delivery_id in ledger.in_status(run.reminder_id, [Status.QUEUED])[:10]:
        deliver(rt, delivery_id)

    with serving(create_app(rt, seeded.dispatch)) as base:
        # The reminder run is not a campaign of the list (API and index page)
        request = urllib.request.Request(f"{base}/api/campaigns", headers={"Authorization": f"Bearer {TOKEN}"})
        listed = json.loads(urllib.request.urlopen(request, timeout=10).read())
        listed = listed if isinstance(listed, list) else listed.get("campaigns", listed)
        assert [c["campaign"] for c in listed] == [seeded.campaign_id]
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP", timezone_id="Asia/Tokyo")
        page = context.new_page()
        page.goto(f"{base}/login")
        page.fill('input[name="token"]', TOKEN)
        page.click('button[type="submit"]')
        page.wait_for_url(f"{base}/")
        assert "リマインダー" not in page.inner_text("table.campaigns")
        page.goto(f"{base}/campaigns/{seeded.campaign_id}")
        funnel = page.locator("section[data-funnel]")
        # Then the funnel shows the share still unredeemed, per channel, and the projection at the deadline
        assert funnel.locator("[data-unredeemed]").inner_text() == "40.0%"
        text = funnel.inner_text()
        assert "受取期限 2023-05-31 23:59 JST まで" in text
        by_channel = {
            ch: int(funnel.locator(f'td[data-redeemed="{ch}"]').inner_text().replace(",", ""))
            for ch in ("email", "sms")
        }
        assert sum(by_channel.values()) == 36 and by_channel["sms"] == sum(
            1 for u in people[:36] if int(u[1:]) % 3 == 0
        )
        projected = funnel.locator("[data-projected-unredeemed]").inner_text()
        assert projected.endswith("%") and float(projected[:-1]) < 40.0  # the recent pace keeps redeeming
        svg = funnel.locator("svg.funnel-chart")
        assert svg.locator("polyline.redeemed").count() == 1 and svg.locator("line.redeemed-projection").count() == 1
        assert "受取期限 05/31 23:59" in svg.inner_html()
        # And the reminders' states
        assert "compensation-reminder" in text
        folder = TRACKED if WRITE_SCREENSHOTS else tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        funnel.screenshot(path=str(folder / "funnel.png"))
        context.close()
