"""The person desk on the dashboard, over a real uvicorn server: the search form (POST + CSRF), the person
page and its API; the searched contact never reaches a URL, a redirect or a log line. Then the same in a
real browser (Playwright driving Debian's Chromium)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from dispatcher.core.states import Status
from dispatcher.dashboard import create_app
from dispatcher.dashboard.auth import CSRF_FIELD
from dispatcher.operations.person import By, find_people, person_json

from .dashboard_support import TOKEN, Seeded, seed, serving
from .test_dashboard_browser import browser  # noqa: F401  (the fixture)

if TYPE_CHECKING:
    from playwright.sync_api import Browser

BEARER = {"Authorization": f"Bearer {TOKEN}"}
#: U000003 is sent SMS to 090-1000-0003; the call centre types the number as the caller reads it.
FULL_WIDTH = "０９０－１０００－０００３"
#: Every form of that number (and its URL-encoded full-width writing) that must never show up.
SECRETS = ("10000003", "1000-0003", "+819010000003", FULL_WIDTH, "%EF%BC%90", "receive.example.jp/r/")


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Seeded:
    monkeypatch.setenv("DISPATCHER_DASHBOARD_INSECURE_COOKIES", "true")
    s = seed(tmp_path, monkeypatch, n=6)
    person = s.rt.ledger.person_by_user(s.campaign_id, "U000003")
    assert person is not None
    # Given U000003's SMS was accepted by the provider
    assert s.rt.ledger.claim(person.id) is not None
    values = {"provider": "outbox", "provider_message_id": "outbox-sms-3"}
    assert s.rt.ledger.move(person.id, Status.SENT, actor="worker", values=values) is not None
    return s


@pytest.fixture
def client(seeded: Seeded) -> Iterator[httpx.Client]:
    with (
        serving(create_app(seeded.rt, seeded.dispatch), access_log=True) as url,
        httpx.Client(base_url=url, follow_redirects=False, timeout=30) as c,
    ):
        yield c


def login(client: httpx.Client, campaign_id: str) -> str:
    assert client.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
    page = client.get(f"/campaigns/{campaign_id}")
    assert page.status_code == 200 and "data-person-search" in page.text
    match = re.search(
        rf'action="/campaigns/{campaign_id}/people".*?name="{CSRF_FIELD}" value="([^"]+)"', page.text, re.S
    )
    assert match, "the search form carries the session's CSRF token"
    return match.group(1)


def assert_private(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:300])


def test_search_by_phone_leads_to_the_person_page_and_the_contact_stays_out_of_urls_and_logs(
    client: httpx.Client, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    csrf = login(client, seeded.campaign_id)
    # When the operator searches the full-width phone number with the form
    found = client.post(
        f"/campaigns/{seeded.campaign_id}/people", data={CSRF_FIELD: csrf, "by": "contact", "q": FULL_WIDTH}
    )
    # Then they are sent to the person's page, whose address holds the user id only
    assert found.status_code == 303, found.text
    location = found.headers["location"]
    assert location == f"/campaigns/{seeded.campaign_id}/people/U000003"
    page = client.get(location)
    # and the page shows the masked contact, the state, the provider id and the timeline in JST
    assert page.status_code == 200
    assert "090-****-0003" in page.text and "送信済み" in page.text and "outbox-sms-3" in page.text
    assert page.text.count('<tr class="st-') >= 3 and "JST" in page.text
    assert "data-person-actions" in page.text  # the spot for the one-person resend form
    # When searched without the CSRF token, or with a wrong one
    refused = [
        client.post(f"/campaigns/{seeded.campaign_id}/people", data={"by": "contact", "q": FULL_WIDTH}),
        client.post(
            f"/campaigns/{seeded.campaign_id}/people", data={CSRF_FIELD: csrf + "x", "by": "contact", "q": FULL_WIDTH}
        ),
    ]
    # Then it is refused
    assert [r.status_code for r in refused] == [403, 403]
    # When nobody has the number
    missing = client.post(
        f"/campaigns/{seeded.campaign_id}/people", data={CSRF_FIELD: csrf, "by": "contact", "q": "070-9999-0000"}
    )
    landline = client.post(
        f"/campaigns/{seeded.campaign_id}/people", data={CSRF_FIELD: csrf, "by": "contact", "q": "03-5244-9370"}
    )
    # Then a clear page says so, without repeating the number
    assert missing.status_code == 404 and "見つかりませんでした" in missing.text and "9999" not in missing.text
    assert landline.status_code == 400 and "5244" not in landline.text
    # and the number was in no URL, no answer and no log line (the access log included)
    access = [r for r in caplog.records if r.name == "uvicorn.access"]
    assert any("/people" in r.getMessage() for r in access), "the access log was captured"
    responses = [found, page, *refused, missing, landline]
    assert_private(
        *(str(r.url) for r in responses),
        *(r.headers.get("location", "") for r in responses),
        *(r.text for r in responses),
        *(r.getMessage() for r in caplog.records),
        caplog.text,
    )


def test_several_matches_are_listed_and_bearer_search_answers_json(client: httpx.Client, seeded: Seeded) -> None:
    # Given two people sharing an inquiry number (a household)
    rt = seeded.rt
    from sqlalchemy import update

    from dispatcher.ledger.schema import deliveries

    with rt.ledger.write() as conn:
        conn.execute(
            update(deliveries).where(deliveries.c.user_id.in_(["U000001", "U000002"])).values(inquiry_no="Q-55")
        )
    csrf = login(client, seeded.campaign_id)
    listed = client.post(
        f"/campaigns/{seeded.campaign_id}/people", data={CSRF_FIELD: csrf, "by": "inquiry", "q": "Q-55"}
    )
    assert listed.status_code == 200 and listed.text.count("data-person-link") == 2
    assert "/people/U000001" in listed.text and "/people/U000002" in listed.text
    # A Bearer call needs no CSRF token and gets the JSON
    answer = client.post(
        f"/campaigns/{seeded.campaign_id}/people", data={"by": "contact", "q": FULL_WIDTH}, headers=BEARER
    )
    assert answer.status_code == 200 and answer.json()["user_id"] == "U000003" and answer.json()["matches"] == 1
    assert_private(listed.text, answer.text)


def test_person_api_is_the_cli_json_and_unknown_people_are_404(client: httpx.Client, seeded: Seeded) -> None:
    api = client.get(f"/api/campaigns/{seeded.campaign_id}/people/U000003", headers=BEARER)
    assert api.status_code == 200
    [view] = find_people(seeded.rt.ledger, seeded.campaign_id, By.USER, "U000003")
    assert api.json() == person_json(view)
    assert api.json()["contact"] == "090-****-0003" and api.json()["history"][-1]["to"] == "sent"
    assert_private(api.text)
    # Unknown person, unknown campaign: 404, JSON for the API and a page for people
    assert client.get(f"/api/campaigns/{seeded.campaign_id}/people/NOBODY", headers=BEARER).status_code == 404
    assert client.get("/api/campaigns/no-such/people/U000003", headers=BEARER).status_code == 404
    login(client, seeded.campaign_id)
    page = client.get(f"/campaigns/{seeded.campaign_id}/people/NOBODY")
    assert page.status_code == 404 and "見つかりませんでした" in page.text


def test_person_routes_need_credentials(seeded: Seeded) -> None:
    with serving(create_app(seeded.rt, seeded.dispatch)) as url, httpx.Client(base_url=url, timeout=30) as c:
        page = c.get(f"/campaigns/{seeded.campaign_id}/people/U000003")
        api = c.get(f"/api/campaigns/{seeded.campaign_id}/people/U000003")
        search = c.post(f"/campaigns/{seeded.campaign_id}/people", data={"by": "user", "q": "U000003"})
    assert (page.status_code, api.status_code, search.status_code) == (401, 401, 401)
    assert "090-****" not in page.text + api.text + search.text


def test_operator_finds_a_caller_by_phone_in_the_browser(
    browser: Browser,  # noqa: F811  (the fixture)
    seeded: Seeded,
    tmp_path: Path,
) -> None:
    requested: list[str] = []
    with serving(create_app(seeded.rt, seeded.dispatch)) as base:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="ja-JP", timezone_id="Asia/Tokyo")
        page = context.new_page()
        page.on("request", lambda request: requested.append(request.url))
        # Given a signed-in operator on the campaign page
        page.goto(f"{base}/campaigns/{seeded.campaign_id}")
        page.fill('input[name="token"]', TOKEN)
        page.click('button[type="submit"]')
        page.wait_for_url(f"{base}/campaigns/{seeded.campaign_id}")
        # When they type the caller's number in full-width digits and search
        page.select_option('form[data-person-search] select[name="by"]', "contact")
        page.fill('form[data-person-search] input[name="q"]', FULL_WIDTH)
        page.click('button[data-action="person-search"]')
        # Then the person's page opens with the masked contact and the timeline
        page.wait_for_url(f"{base}/campaigns/{seeded.campaign_id}/people/U000003")
        assert page.locator("[data-person-contact]").inner_text() == "090-****-0003"
        assert page.locator("[data-person-status]").get_attribute("data-person-status") == "sent"
        assert page.locator("table.timeline tbody tr").count() == 3
        assert "outbox-sms-3" in page.inner_text("table.provider-ids")
        page.screenshot(path=str(tmp_path / "person.png"), full_page=True)
        html = page.content()
        context.close()
    assert_private(html, *requested)
    strays = [url for url in requested if not url.startswith(base)]
    assert not strays, f"the browser left 127.0.0.1: {strays}"


def _form_csrf(html: str, action: str) -> str:
    match = re.search(rf'action="{re.escape(action)}".*?name="{CSRF_FIELD}" value="([^"]+)"', html, re.S)
    assert match, f"a form posting to {action} with the session's CSRF token"
    return match.group(1)


def test_resend_to_one_person_from_their_page_checks_then_confirms_once(
    client: httpx.Client, seeded: Seeded, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cid = seeded.campaign_id
    action = f"/campaigns/{cid}/resend-person"
    login(client, cid)
    page = client.get(f"/campaigns/{cid}/people/U000003")
    assert "data-person-resend" in page.text
    csrf = _form_csrf(page.text, action)
    person = seeded.rt.ledger.person_by_user(cid, "U000003")
    assert person is not None and person.status is Status.SENT
    asked = {
        CSRF_FIELD: csrf,
        "user_id": "U000003",
        "phone": "０８０－２２２２－３３３３",
        "reason": "機種変更で番号が変わった",
    }
    # Without the CSRF token, without a reason, with a number that is no mobile: refused, nothing changed
    assert client.post(action, data={k: v for k, v in asked.items() if k != CSRF_FIELD}).status_code == 403
    assert client.post(action, data={**asked, "reason": " "}).status_code == 400
    assert client.post(action, data={**asked, "phone": "03-5244-9370"}).status_code == 400
    # When the operator checks the resend to the caller's new number
    check = client.post(action, data=asked)
    # Then the confirmation shows old and new masked, and holds neither the typed number nor a way around it
    assert check.status_code == 200, check.text
    assert "090-****-0003" in check.text and "080-****-3333" in check.text
    for secret in ("2222", "22223333", "２２２２"):
        assert secret not in check.text
    assert seeded.rt.ledger.get(person.id).status is Status.SENT and seeded.dispatched == []
    confirm = {
        CSRF_FIELD: _form_csrf(check.text, action),
        "confirm": re.search(r'name="confirm" value="([^"]+)"', check.text).group(1),
    }
    # When they confirm
    done = client.post(action, data=confirm)
    # Then exactly one more message is queued, to the new number, and the trail names who and why
    assert done.status_code == 303 and done.headers["location"] == f"/campaigns/{cid}/people/U000003?done=resend"
    after = seeded.rt.ledger.get(person.id)
    assert after.status is Status.QUEUED and after.contact == "+818022223333" and seeded.dispatched == [person.id]
    last = seeded.rt.ledger.history(person.id)[-1]
    assert last["actor"].startswith("dashboard:") and "機種変更" in last["detail"] and "080-****-3333" in last["detail"]
    # A second confirmation (a double click, a replayed form) does nothing
    assert client.post(action, data=confirm).status_code == 409
    assert seeded.dispatched == [person.id]
    assert_private(check.text, done.text, caplog.text)
    assert "22223333" not in caplog.text


def test_a_complained_person_gets_no_resend_form(client: httpx.Client, seeded: Seeded) -> None:
    cid = seeded.campaign_id
    person = seeded.rt.ledger.person_by_user(cid, "U000003")
    assert seeded.rt.ledger.move(person.id, Status.COMPLAINED, actor="event:test") is not None
    login(client, cid)
    page = client.get(f"/campaigns/{cid}/people/U000003")
    assert "data-person-resend" not in page.text and "苦情" in page.text
    csrf = _form_csrf(client.get(f"/campaigns/{cid}").text, f"/campaigns/{cid}/people")
    refused = client.post(
        f"/campaigns/{cid}/resend-person", data={CSRF_FIELD: csrf, "user_id": "U000003", "reason": "again"}
    )
    assert refused.status_code == 409 and seeded.dispatched == []
