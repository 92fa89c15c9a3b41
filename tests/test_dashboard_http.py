"""The dashboard over HTTP (Starlette's httpx.Client, i.e. httpx in process): authentication, CSRF, the
API contract, and that no receipt URL or full contact ever leaves in a response."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from itsdangerous import URLSafeTimedSerializer

from dispatcher.core.states import Status
from dispatcher.dashboard import create_app
from dispatcher.dashboard.auth import CSRF_FIELD, SESSION_COOKIE
from dispatcher.operations.status import campaign_status

from .dashboard_support import TOKEN, Seeded, seed, send, serving

BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Seeded:
    # Plain HTTP on loopback: httpx would not send a Secure cookie back (tests/test_dashboard_auth.py covers it).
    monkeypatch.setenv("DISPATCHER_DASHBOARD_INSECURE_COOKIES", "true")
    s = seed(tmp_path, monkeypatch, n=60)
    ids = s.rt.ledger.in_status(s.campaign_id, [Status.QUEUED])
    # Given some history: sends, an e-mail hard failure and an SMS failure whose provider texts quote the
    # full contact (as real ones do), so the pages must redact them.
    for delivery_id in ids[:10]:
        send(s.rt, delivery_id)
    send(s.rt, ids[10], Status.FAILED, reason="550 5.1.1 <user11@example.jp>: Recipient address rejected")
    send(s.rt, ids[11], Status.FAILED, reason="carrier refused +819010000012 (unreachable)")
    return s


@pytest.fixture
def base_url(seeded: Seeded) -> Iterator[str]:
    with serving(create_app(seeded.rt, seeded.dispatch)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30) as c:
        yield c


def login(client: httpx.Client) -> str:
    """Sign in through the form; returns the session's CSRF token as the pages carry it."""
    response = client.post("/login", data={"token": TOKEN, "next": "/"})
    assert response.status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    match = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page.text)
    assert match, "the pages carry the session's CSRF token"
    return match.group(1)


def state_of(seeded: Seeded) -> str:
    record = seeded.rt.ledger.campaign(seeded.campaign_id, fresh=True)
    assert record is not None
    return record.state


PROTECTED = [
    ("GET", "/"),
    ("GET", "/campaigns/test-campaign"),
    ("GET", "/campaigns/test-campaign/chart"),
    ("GET", "/api/campaigns"),
    ("GET", "/api/campaigns/test-campaign"),
    ("GET", "/metrics"),
    ("POST", "/campaigns/test-campaign/pause"),
    ("POST", "/campaigns/test-campaign/resume"),
    ("POST", "/campaigns/test-campaign/cancel"),
    ("POST", "/campaigns/test-campaign/resend"),
    ("POST", "/campaigns/test-campaign/resend-person"),
    ("POST", "/campaigns/test-campaign/people"),
    ("GET", "/campaigns/test-campaign/people/U000001"),
    ("GET", "/api/campaigns/test-campaign/people/U000001"),
    ("POST", "/logout"),
]


def test_health_check_needs_no_credentials(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_every_other_route_answers_401_without_credentials(
    client: httpx.Client, seeded: Seeded, method: str, path: str
) -> None:
    # Given no credentials, a wrong Bearer token, or a non-Bearer scheme carrying the right token
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": f"Basic {TOKEN}"}):
        # When the route is called
        response = client.request(method, path, headers=headers)
        # Then it is refused and nothing about the campaign is shown or changed
        assert response.status_code == 401, (method, path, headers)
        assert "利用者" not in response.text and "user1" not in response.text
    assert state_of(seeded) == "active"


def test_api_401_carries_a_bearer_challenge_and_pages_offer_the_login_form(client: httpx.Client) -> None:
    api = client.get("/api/campaigns")
    assert api.headers["www-authenticate"].startswith("Bearer")
    page = client.get("/campaigns/test-campaign")
    assert page.status_code == 401
    assert 'action="/login"' in page.text and 'value="/campaigns/test-campaign"' in page.text


def test_feedback_routes_need_no_dashboard_token(client: httpx.Client, seeded: Seeded) -> None:
    # The message authenticates itself there: never 401 (providers have no token), one exact answer each.
    def post(path: str, body: bytes) -> int:
        return client.post(path, content=body, headers={"Content-Type": "application/json"}).status_code

    unsigned = b'{"Type": "Notification", "TopicArn": "arn:aws:sns:ap-northeast-1:1:t", "Message": "{}"}'
    # Given no SNS topic allow-list and no gateway secret: neither route is available
    assert (post("/feedback/sns", unsigned), post("/feedback/sms-gateway", b'{"id": "x"}')) == (503, 503)
    # Given both configured: unsigned is 403, unparsable is 400 (SNS; the gateway checks its HMAC first)
    seeded.rt.settings = seeded.rt.settings.model_copy(
        update={"sns_topic_arns": ["arn:aws:sns:ap-northeast-1:1:t"], "sms_gateway_secret": "s" * 40}
    )
    assert post("/feedback/sns", unsigned) == 403
    assert post("/feedback/sns", b"not json") == 400
    assert post("/feedback/sms-gateway", b'{"id": "x", "status": "delivered"}') == 403
    assert post("/feedback/sms-gateway", b"not json") == 403


def test_login_form_sets_an_httponly_samesite_session_cookie(client: httpx.Client) -> None:
    wrong = client.post("/login", data={"token": "guess", "next": "/"})
    assert wrong.status_code == 401
    assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
    right = client.post("/login", data={"token": TOKEN, "next": "/campaigns/test-campaign"})
    assert right.status_code == 303
    assert right.headers["location"] == "/campaigns/test-campaign"
    cookie = right.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/campaigns/test-campaign").status_code == 200


def test_login_never_redirects_to_another_site(client: httpx.Client) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = client.post("/login", data={"token": TOKEN, "next": target})
        assert response.headers["location"] == "/"


def test_forged_or_tampered_session_cookie_is_refused(client: httpx.Client, base_url: str) -> None:
    login(client)
    genuine = client.cookies[SESSION_COOKIE]
    forged_with_guessed_key = URLSafeTimedSerializer("guessed-secret", salt="dispatcher-session").dumps(
        {"sid": "attacker", "csrf": "x"}
    )
    forged_with_token_as_key = URLSafeTimedSerializer(TOKEN, salt="dispatcher-session").dumps(
        {"sid": "attacker", "csrf": "x"}
    )
    payload, _, signature = genuine.rpartition(".")
    tampered = f"{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    for cookie in (forged_with_guessed_key, forged_with_token_as_key, tampered, "garbage", genuine + "x"):
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"}
        assert httpx.get(f"{base_url}/", headers=headers).status_code == 401, cookie
        assert httpx.get(f"{base_url}/api/campaigns", headers=headers).status_code == 401
    assert httpx.get(f"{base_url}/", headers={"Cookie": f"{SESSION_COOKIE}={genuine}"}).status_code == 200


def test_post_without_the_csrf_token_is_refused(client: httpx.Client, seeded: Seeded) -> None:
    csrf = login(client)
    for data in ({}, {CSRF_FIELD: ""}, {CSRF_FIELD: csrf[:-1] + ("x" if csrf[-1] != "x" else "y")}):
        for action in ("pause", "cancel", "resend"):
            response = client.post(f"/campaigns/test-campaign/{action}", data=data)
            assert response.status_code == 403, (action, data)
    assert client.post("/logout").status_code == 403
    assert state_of(seeded) == "active"
    assert seeded.rt.ledger.counts(seeded.campaign_id).get(("email", "cancelled")) is None


def test_pause_and_resume_from_the_page_change_the_campaign_state(client: httpx.Client, seeded: Seeded) -> None:
    csrf = login(client)
    # When an operator pauses from the page
    response = client.post("/campaigns/test-campaign/pause", data={CSRF_FIELD: csrf})
    # Then the campaign is paused, the reason names the dashboard session, and the page says so
    assert response.status_code == 303
    assert response.headers["location"] == "/campaigns/test-campaign?done=pause"
    record = seeded.rt.ledger.campaign(seeded.campaign_id, fresh=True)
    assert record is not None and record.state == "paused"
    assert record.state_reason is not None and "dashboard:" in record.state_reason
    page = client.get(response.headers["location"])
    assert "一時停止しました" in page.text and "一時停止中" in page.text
    # When it is resumed
    response = client.post("/campaigns/test-campaign/resume", data={CSRF_FIELD: csrf})
    # Then it is active again and everything still queued went back to the broker
    assert response.status_code == 303
    assert state_of(seeded) == "active"
    queued = seeded.rt.ledger.in_status(seeded.campaign_id, [Status.QUEUED])
    assert queued and set(queued) <= set(seeded.dispatched)


def test_bearer_calls_act_without_csrf_and_answer_json(client: httpx.Client, seeded: Seeded) -> None:
    response = client.post("/campaigns/test-campaign/pause", headers=BEARER)
    assert response.status_code == 200
    assert response.json() == {"campaign": "test-campaign", "state": "paused"}
    assert state_of(seeded) == "paused"
    assert client.post("/campaigns/test-campaign/resume", headers=BEARER).json()["state"] == "active"
    assert client.post("/campaigns/nope/pause", headers=BEARER).status_code == 404


def test_cancel_cancels_unsent_deliveries_and_records_who(client: httpx.Client, seeded: Seeded) -> None:
    csrf = login(client)
    assert client.post("/campaigns/test-campaign/cancel", data={CSRF_FIELD: csrf}).status_code == 303
    assert state_of(seeded) == "cancelled"
    cancelled = seeded.rt.ledger.in_status(seeded.campaign_id, [Status.CANCELLED])
    assert len(cancelled) == 60 - 12
    assert seeded.rt.ledger.history(cancelled[0])[-1]["actor"].startswith("dashboard:")
    # A cancelled campaign cannot be resumed: refused with a reason, not a crash
    refused = client.post("/campaigns/test-campaign/resume", data={CSRF_FIELD: csrf})
    assert refused.status_code == 409 and "cancelled" in refused.text


def test_resend_shows_the_dry_run_before_confirming(client: httpx.Client, seeded: Seeded) -> None:
    csrf = login(client)
    failed = seeded.rt.ledger.in_status(seeded.campaign_id, [Status.FAILED])
    assert len(failed) == 2
    # When the operator asks to resend failures
    preview = client.post("/campaigns/test-campaign/resend", data={CSRF_FIELD: csrf, "status": "failed"})
    # Then the dry run is shown and nothing has moved yet
    assert preview.status_code == 200
    assert "2件を再送する" in preview.text and 'name="confirm" value="1"' in preview.text
    assert seeded.rt.ledger.in_status(seeded.campaign_id, [Status.FAILED]) == failed
    assert not set(failed) & set(seeded.dispatched)
    # When they confirm
    done = client.post(
        "/campaigns/test-campaign/resend",
        data={CSRF_FIELD: csrf, "status": "failed", "confirm": "1", "channel": "", "via": ""},
    )
    # Then both are queued again, handed to the broker, and the log says who did it
    assert done.status_code == 303 and done.headers["location"].endswith("done=resend&n=2")
    assert seeded.rt.ledger.in_status(seeded.campaign_id, [Status.FAILED]) == []
    assert set(failed) <= set(seeded.dispatched)
    assert seeded.rt.ledger.history(failed[0])[-1]["actor"].startswith("dashboard:")


def test_api_campaign_is_a_superset_of_status_json(
    client: httpx.Client, seeded: Seeded, tmp_path: Path, dispatcher_cmd: list[str]
) -> None:
    api = client.get("/api/campaigns/test-campaign", headers=BEARER)
    assert api.status_code == 200
    data = api.json()
    expected = campaign_status(seeded.rt.ledger, seeded.campaign_id)
    assert {k: data[k] for k in expected} == expected
    # ... and equal to what the command prints, SPEC §9
    cli = subprocess.run(
        [*dispatcher_cmd, "status", "test-campaign", "--json"], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    printed = json.loads(cli.stdout)
    assert {k: data[k] for k in printed} == printed
    assert data["total"] == 60 and data["by_status"]["sent"] == 10 and data["by_status"]["failed"] == 2
    assert data["name"] == "テスト補償キャンペーン" and data["state"] == "active"
    assert data["send_by"].startswith("2099-05-28T20:00:00")
    assert data["plan"]["will_finish"] is True
    assert data["imports"]["rejected"] == 2 and data["imports"]["accepted"] == 60
    assert {r["count"] for r in data["failure_reasons"]} == {1}
    listing = client.get("/api/campaigns", headers=BEARER).json()
    assert [c["campaign"] for c in listing["campaigns"]] == ["test-campaign"]
    assert client.get("/api/campaigns/nope", headers=BEARER).status_code == 404


def test_metrics_come_from_the_ledger_and_the_broker(client: httpx.Client) -> None:
    response = client.get("/metrics", headers=BEARER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'dispatcher_deliveries{campaign="test-campaign",channel="email",state="sent"}' in text
    assert re.search(r'dispatcher_provider_errors_recent\{campaign="test-campaign",class="permanent"\} 2\.0', text)
    assert re.search(r'dispatcher_send_rate\{campaign="test-campaign"\} 0\.0333', text)  # 10 sends / 300 s
    assert 'dispatcher_campaign_state{campaign="test-campaign",state="active"} 1.0' in text
    assert "dispatcher_queue_depth" in text and "dispatcher_broker_up 1.0" in text


def test_deliveries_table_is_paginated_by_id_and_filterable(client: httpx.Client, seeded: Seeded) -> None:
    login(client)
    first = client.get("/campaigns/test-campaign")
    ids = [int(i) for i in re.findall(r'<td class="num">(\d+)</td><td>U\d{6}</td>', first.text)]
    assert len(ids) == 50 and ids == sorted(ids)
    after = re.search(r'after=(\d+)#deliveries">次へ', first.text)
    assert after and int(after.group(1)) == ids[-1]
    second = client.get(f"/campaigns/test-campaign?after={after.group(1)}")
    rest = [int(i) for i in re.findall(r'<td class="num">(\d+)</td><td>U\d{6}</td>', second.text)]
    assert len(rest) == 10 and min(rest) > max(ids) and "次へ" not in second.text
    failed = client.get("/campaigns/test-campaign?status=failed&channel=sms")
    rows = re.findall(r'<tr class="st-(\w+)"><td class="num">\d+</td>', failed.text)
    assert rows == ["failed"]


def test_no_receipt_url_or_full_contact_in_any_response(client: httpx.Client, seeded: Seeded) -> None:
    csrf = login(client)
    secrets = set()
    for row in seeded.rows:
        secrets.add(row["receipt_url"])
        secrets.add(row["receipt_url"].rsplit("/", 1)[1])  # the token part on its own
        if row["email"]:
            secrets.add(row["email"])
        if row["phone"]:
            digits = row["phone"]
            secrets |= {digits, "+81" + digits[1:], f"{digits[:3]}-{digits[3:7]}-{digits[7:]}", digits[1:]}
    paths = [
        "/",
        "/campaigns/test-campaign",
        "/campaigns/test-campaign/chart",
        "/api/campaigns",
        "/api/campaigns/test-campaign",
        "/metrics",
        "/campaigns/test-campaign?after=1",
    ]
    paths += [f"/campaigns/test-campaign?status={s.value}" for s in Status]
    paths += [f"/campaigns/test-campaign?channel={c}" for c in ("email", "sms")]
    bodies = [client.get(p).text for p in paths]
    bodies.append(client.get("/api/campaigns/test-campaign", headers=BEARER).text)
    bodies.append(client.post("/campaigns/test-campaign/resend", data={CSRF_FIELD: csrf, "status": "failed"}).text)
    everything = "\n".join(bodies)
    leaked = sorted(s for s in secrets if s in everything)
    assert not leaked, leaked
    assert "receive.example.jp" not in everything
    # The masked forms are what operators see instead
    assert "us***@example.jp" in everything and "090-****-0003" in everything
    assert "***@example.jp" in everything  # the redacted provider reason


def test_pages_show_japanese_labels_jst_times_and_separators(client: httpx.Client, seeded: Seeded) -> None:
    login(client)
    listing = client.get("/")
    assert "キャンペーン一覧" in listing.text and "テスト補償キャンペーン" in listing.text
    assert "2099-05-28 20:00 JST" in listing.text  # send_by shown in JST
    page = client.get("/campaigns/test-campaign")
    for label in ("送信済み", "失敗", "送信待ち", "状態 × チャネル", "失敗の理由", "取込と除外", "配信一覧", "<svg"):
        assert label in page.text, label
    assert re.search(r'data-count="queued">48<', page.text)


def test_security_headers_on_every_answer(client: httpx.Client) -> None:
    for path in ("/healthz", "/login", "/static/dashboard.css"):
        response = client.get(path)
        assert response.status_code == 200
        assert "default-src 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
    assert client.get("/login").headers["cache-control"] == "no-store"


def test_logout_ends_the_session(client: httpx.Client) -> None:
    csrf = login(client)
    response = client.post("/logout", data={CSRF_FIELD: csrf})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert client.get("/").status_code == 401


def test_dashboard_command_refuses_to_start_without_a_token(dispatcher_cmd: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [*dispatcher_cmd, "dashboard", "--port", "1"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 2
    assert "DISPATCHER_DASHBOARD_TOKEN" in result.stderr


def test_display_formats_thousands_and_jst() -> None:
    from datetime import UTC, datetime

    from dispatcher.dashboard.labels import jst, num, percent

    assert num(1_234_567) == "1,234,567" and num(0) == "0" and num(None) == "—"
    assert jst(datetime(2023, 5, 28, 11, 0, tzinfo=UTC)) == "2023-05-28 20:00 JST"
    assert jst("2023-05-31T14:59:59+00:00") == "2023-05-31 23:59 JST"
    assert percent(1, 3) == "33.3%" and percent(0, 0) == "—"


def test_chart_series_remembers_closed_minutes_and_stays_exact(seeded: Seeded) -> None:
    from datetime import timedelta

    from dispatcher.core import clock
    from dispatcher.dashboard.queries import sends_per_minute
    from dispatcher.dashboard.series import SendsPerMinute

    ledger, campaign = seeded.rt.ledger, seeded.campaign_id
    queued = ledger.in_status(campaign, [Status.QUEUED])
    start = clock.now().replace(second=0, microsecond=0) + timedelta(minutes=1)
    # Given sends spread over ten minutes
    for k, delivery_id in enumerate(queued[:20]):
        at = start + timedelta(seconds=30 * k)
        assert ledger.claim(delivery_id, now=at) is not None
        assert ledger.move(delivery_id, Status.SENT, actor="worker", now=at) is not None
    series = SendsPerMinute()
    since = start  # after the fixture's own sends
    # When the chart asks at successive moments while more sends arrive in the newest minutes
    for step, delivery_id in zip(range(1, 6), queued[20:25], strict=True):
        now = start + timedelta(minutes=10 + step)
        at = now - timedelta(seconds=20)
        assert ledger.claim(delivery_id, now=at) is not None
        assert ledger.move(delivery_id, Status.SENT, actor="worker", now=at) is not None
        # Then it always equals a direct count over the whole range
        assert series.between(ledger, campaign, since, now) == sends_per_minute(
            ledger, campaign, since, now + timedelta(seconds=1)
        )
    counts = series.between(ledger, campaign, since, start + timedelta(minutes=16))
    assert sum(counts.values()) == 25 and max(counts.values()) == 2
