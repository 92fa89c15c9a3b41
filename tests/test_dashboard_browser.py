"""The dashboard in a real browser (Playwright driving Debian's Chromium) over a real uvicorn server, while
a real Dramatiq worker sends a campaign: log in, watch the counts move, pause, resume, take screenshots.

Chromium comes from ``apt-get install chromium`` (scripts/test installs it as root); without it these
tests skip loudly, and fail under CI=true.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dramatiq
import pytest

from dispatcher import broker
from dispatcher.core.states import Status
from dispatcher.dashboard import create_app

from .dashboard_support import TOKEN, Seeded, seed, send, serving
from .services import missing

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
#: The tracked screenshots are rewritten only when asked (DISPATCHER_TEST_SCREENSHOTS=1); otherwise tmp_path.
TRACKED_SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
#: Read at import: the tests' clean environment drops every DISPATCHER_* variable before each test.
WRITE_SCREENSHOTS = os.environ.get("DISPATCHER_TEST_SCREENSHOTS") == "1"
#: No background traffic: the browser talks to 127.0.0.1 and nothing else.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: A function (not an expression string): the page's CSP forbids eval, which Playwright uses for strings.
SENT_ABOVE = "(n) => parseInt(document.querySelector('td[data-count=\"sent\"]').textContent.replace(/,/g, '')) > n"
RATE = 3  # messages per second per channel: slow enough to watch, fast enough for a test


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        missing("Chromium", f"{CHROMIUM} not found (apt-get install chromium; scripts/test does it as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright", "the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def running_campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Iterator[Seeded]:
    """A campaign of 150 people being sent by an in-process Dramatiq worker at RATE per channel."""
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", str(RATE))
    monkeypatch.setenv("DISPATCHER_SMS_RATE", str(RATE))
    monkeypatch.setenv("DISPATCHER_DOMAIN_RATES", "{}")
    # Plain HTTP on loopback, the one case the opt-out exists for.
    monkeypatch.setenv("DISPATCHER_DASHBOARD_INSECURE_COOKIES", "true")
    seeded = seed(tmp_path, monkeypatch, n=150)
    from dispatcher import runtime
    from dispatcher.sending.actors import dispatch_ids

    runtime.use(seeded.rt)
    queued = seeded.rt.ledger.in_status(seeded.campaign_id, [Status.QUEUED])
    # Two failures already on record, so the failure table has something to show.
    send(seeded.rt, queued[0], Status.FAILED, reason="550 5.1.1 <user1@example.jp>: Recipient address rejected")
    send(seeded.rt, queued[1], Status.FAILED, reason="554 5.7.1 message refused by the carrier")
    worker = dramatiq.Worker(broker.installed(), worker_threads=4, worker_timeout=100)
    worker.start()
    try:
        dispatch_ids(queued[2:])
        yield seeded
    finally:
        worker.stop(timeout=10_000)


def count(page: Page, state: str) -> int:
    text = page.locator(f'td[data-count="{state}"]').inner_text()
    return int(text.replace(",", ""))


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    folder = TRACKED_SCREENSHOTS if WRITE_SCREENSHOTS else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_operator_watches_pauses_and_resumes_a_running_campaign(
    browser: Browser, running_campaign: Seeded, screenshots: Path
) -> None:
    from dispatcher.sending.actors import dispatch_ids

    seeded = running_campaign
    requested: list[str] = []
    with serving(create_app(seeded.rt, dispatch_ids)) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP", timezone_id="Asia/Tokyo")
        page = context.new_page()
        page.on("request", lambda request: requested.append(request.url))

        # Given an operator who signs in through the form
        page.goto(f"{base}/")
        assert page.locator("h1").inner_text() == "ログイン"
        page.fill('input[name="token"]', TOKEN)
        page.click('button[type="submit"]')
        page.wait_for_url(f"{base}/")
        assert "テスト補償キャンペーン" in page.inner_text("table.campaigns")
        # The list refreshes itself while the campaign runs
        page.wait_for_function("() => document.querySelector('[data-updated]').textContent.includes('JST')")
        page.screenshot(path=str(screenshots / "campaigns.png"), full_page=True)

        # When they open the running campaign
        page.click("text=テスト補償キャンペーン")
        page.wait_for_url(f"{base}/campaigns/{seeded.campaign_id}")
        assert page.locator("[data-state-label]").inner_text() == "配信中"
        # Then the counts change by themselves as the worker sends
        before = count(page, "sent")
        page.wait_for_function(SENT_ABOVE, arg=before + 3, timeout=30_000)
        assert count(page, "queued") < 148

        # When they pause it
        page.click('button[data-action="pause"]')
        page.wait_for_url(re.compile(r".*done=pause$"))
        assert page.locator("[data-state-label]").inner_text() == "一時停止中"
        assert "一時停止しました" in page.inner_text(".notice")
        # Then sending stops (a delivery already claimed by a worker thread may still finish)
        paused_at = _sent_once_quiet(seeded)
        time.sleep(4)
        assert _sent(seeded) == paused_at
        page.reload()
        assert count(page, "sent") == paused_at
        assert page.locator('button[data-action="resume"]').is_visible()
        assert not page.locator('button[data-action="pause"]').is_visible()

        # When they resume it
        page.click('button[data-action="resume"]')
        page.wait_for_url(re.compile(r".*done=resume$"))
        assert page.locator("[data-state-label]").inner_text() == "配信中"
        # Then sending goes on, and the page follows without a reload
        page.wait_for_function(SENT_ABOVE, arg=paused_at + 3, timeout=30_000)
        assert _sent(seeded) > paused_at
        # The chart is drawn on the server (no CDN) and contacts are masked in the table
        assert page.locator("svg.chart rect.bar").count() >= 1
        contacts = page.locator("td.contact").all_inner_texts()
        assert contacts and all("***" in c for c in contacts)
        page.click("text=15分")  # the chart's shortest range shows this short run best
        page.wait_for_url(re.compile(r".*minutes=15$"))
        page.set_viewport_size({"width": 1280, "height": 1700})
        page.screenshot(path=str(screenshots / "campaign.png"))
        context.close()
    strays = [url for url in requested if not url.startswith(base)]
    assert not strays, f"the browser left 127.0.0.1: {strays}"


def _sent(seeded: Seeded) -> int:
    counts = seeded.rt.ledger.counts(seeded.campaign_id)
    return sum(n for (_, st), n in counts.items() if st == Status.SENT.value)


def _sent_once_quiet(seeded: Seeded, quiet: float = 2.0, limit: float = 30.0) -> int:
    """The sent count once it has not moved for ``quiet`` seconds (in-flight sends finished)."""
    deadline = time.monotonic() + limit
    last = _sent(seeded)
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = _sent(seeded)
        if now == last:
            return now
        last = now
    raise AssertionError("sending did not stop after the pause")
