"""Dashboard credentials and hostile requests (issue 11, finding 7 and the dashboard part of 10), over a real
uvicorn server (httpx) and, for start-up and the access log, the real `dispatcher dashboard` command."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from itsdangerous import BadSignature, URLSafeTimedSerializer

from dispatcher.broker import keys
from dispatcher.core import clock
from dispatcher.core.errors import ConfigError
from dispatcher.dashboard import create_app
from dispatcher.dashboard.auth import CSRF_FIELD, SESSION_COOKIE
from dispatcher.dashboard.pacing import FREE_FAILURES, FailurePacer
from dispatcher.dashboard.sessions import SESSION_MAX_AGE

from .dashboard_support import TOKEN, Seeded, seed, serving
from .services import free_port

BEARER = {"Authorization": f"Bearer {TOKEN}"}
WRONG = {"Authorization": "Bearer wrong-guess-000000000000000000000000"}
METRICS_TOKEN = "metrics-scraper-token-d41f07a9c3e28b65"
OTHER_TOKEN = "rotated-dashboard-token-93b0e6d2f18a4c57"


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str) -> Seeded:
    monkeypatch.setenv("DISPATCHER_METRICS_TOKEN", METRICS_TOKEN)
    # The test's httpx talks plain HTTP to 127.0.0.1, as a trusted local proxy would.
    monkeypatch.setenv("DISPATCHER_TRUSTED_PROXIES", "127.0.0.1")
    monkeypatch.setenv("DISPATCHER_DASHBOARD_INSECURE_COOKIES", "true")
    return seed(tmp_path, monkeypatch, n=12)


@pytest.fixture
def base_url(seeded: Seeded) -> Iterator[str]:
    with serving(create_app(seeded.rt, seeded.dispatch)) as url:
        yield url


@pytest.fixture
def app_and_url(seeded: Seeded) -> Iterator[tuple[Any, str]]:
    app = create_app(seeded.rt, seeded.dispatch)
    with serving(app) as url:
        yield app, url


def from_client(address: str, headers: dict[str, str] | None = None) -> dict[str, str]:
    """Headers of a request relayed by the trusted proxy (127.0.0.1) for ``address``."""
    return {**(headers or {}), "X-Forwarded-For": address}


def sign_in(client: httpx.Client, forwarded_for: str = "192.0.2.200") -> str:
    response = client.post("/login", data={"token": TOKEN, "next": "/"}, headers=from_client(forwarded_for))
    assert response.status_code == 303, response.status_code
    return response.cookies[SESSION_COOKIE]


def cookie_header(value: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}"}


# Start-up ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "token", ["short-token-0123456789", "CHANGE-ME", "change-me-please-0123456789abcdefghij", "a" * 40]
)
def test_dashboard_command_refuses_a_weak_token_without_echoing_it(
    dispatcher_cmd: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    # Given a short or placeholder token
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", token)
    # When the dashboard is started
    result = subprocess.run(
        [*dispatcher_cmd, "dashboard", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    # Then it exits 2 with the reason, and the token itself is not printed
    assert result.returncode == 2, result.stderr
    assert "DISPATCHER_DASHBOARD_TOKEN" in result.stderr
    assert token not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DISPATCHER_METRICS_TOKEN": "CHANGE-ME"}, "DISPATCHER_METRICS_TOKEN"),
        ({"DISPATCHER_METRICS_TOKEN": TOKEN}, "DISPATCHER_METRICS_TOKEN"),
        ({"DISPATCHER_DASHBOARD_INSECURE_COOKIES": "true"}, "DISPATCHER_DASHBOARD_INSECURE_COOKIES"),
        ({"DISPATCHER_TRUSTED_PROXIES": "*"}, "DISPATCHER_TRUSTED_PROXIES"),
        ({"DISPATCHER_TRUSTED_PROXIES": "proxy.example.jp"}, "DISPATCHER_TRUSTED_PROXIES"),
    ],
)
def test_dashboard_command_refuses_unsafe_companion_settings(
    dispatcher_cmd: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    # Given a good token, but a weak or reused metrics token, insecure cookies off loopback, or a proxy wildcard
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", TOKEN)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # When the dashboard is started to listen on every interface
    result = subprocess.run(
        [*dispatcher_cmd, "dashboard", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    # Then it refuses with exit 2 and names the setting, never the token
    assert result.returncode == 2, result.stderr
    assert named in result.stderr
    assert TOKEN not in result.stderr


def test_create_app_refuses_a_weak_token_too(seeded: Seeded) -> None:
    for weak in ("CHANGE-ME", "x" * 31, "your-token-" + "0123456789abcdefghijklmn"):
        with pytest.raises(ConfigError, match="DISPATCHER_DASHBOARD_TOKEN") as caught:
            create_app(seeded.rt, None, token=weak)
        assert weak not in str(caught.value)


# Pacing of failed token checks ----------------------------------------------------------------------
def test_a_burst_of_wrong_bearer_tokens_is_refused_while_other_clients_still_get_in(
    app_and_url: tuple[Any, str],
) -> None:
    app, base_url = app_and_url
    with httpx.Client(base_url=base_url, timeout=30) as client:
        # Given an attacker (198.51.100.7) guessing the Bearer token
        answers = [
            client.get("/api/campaigns", headers=from_client("198.51.100.7", WRONG)).status_code
            for _ in range(FREE_FAILURES + 5)
        ]
        # Then the first few guesses are answered 401, every later one 429 without being checked
        assert answers[:FREE_FAILURES] == [401] * FREE_FAILURES
        assert set(answers[FREE_FAILURES + 1 :]) == {429}
        refused = client.get("/api/campaigns", headers=from_client("198.51.100.7", WRONG))
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        # ... even the right token, from that client, is not checked while it is locked out
        assert client.get("/api/campaigns", headers=from_client("198.51.100.7", BEARER)).status_code == 429
        # While an operator elsewhere still gets in at once
        assert client.get("/api/campaigns", headers=from_client("203.0.113.5", BEARER)).status_code == 200
    # The counters agree: only the free failures (and the one that locked it) were checked
    pacer: FailurePacer = app.state.auth.pacer
    assert pacer.refused >= 5 and pacer.failed_total == FREE_FAILURES + 1


def test_lock_outs_grow_and_end_on_the_pacer_clock(app_and_url: tuple[Any, str]) -> None:
    app, base_url = app_and_url
    now = [1000.0]
    app.state.auth.pacer = FailurePacer(clock=lambda: now[0])
    with httpx.Client(base_url=base_url, timeout=30) as client:
        guess = from_client("198.51.100.8", WRONG)
        # Given a client past its free failures
        for _ in range(FREE_FAILURES + 1):
            client.get("/metrics", headers=guess)
        first = client.get("/metrics", headers=guess)
        assert first.status_code == 429
        # When its lock-out has passed and it fails again
        now[0] += int(first.headers["retry-after"])
        assert client.get("/metrics", headers=guess).status_code == 401
        second = client.get("/metrics", headers=guess)
        # Then the next lock-out is longer (exponential), and it too ends
        assert second.status_code == 429
        assert int(second.headers["retry-after"]) > int(first.headers["retry-after"])
        now[0] += int(second.headers["retry-after"])
        assert client.get("/metrics", headers=from_client("198.51.100.8", BEARER)).status_code == 200


def test_the_global_budget_stops_many_clients_but_not_operators_already_signed_in(app_and_url: tuple[Any, str]) -> None:
    app, base_url = app_and_url
    app.state.auth.pacer = FailurePacer(global_budget=20)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        # Given an operator who used the token earlier and holds a session
        assert client.get("/api/campaigns", headers=from_client("203.0.113.9", BEARER)).status_code == 200
        cookie = sign_in(client, "203.0.113.10")
        # When twenty addresses guess once each (no single one reaches its own limit)
        for n in range(20):
            assert client.get("/api/campaigns", headers=from_client(f"198.51.100.{n}", WRONG)).status_code == 401
        # Then a new address is not checked at all, whatever it presents, and the login form says so too
        fresh = client.get("/api/campaigns", headers=from_client("198.51.100.99", BEARER))
        assert fresh.status_code == 429 and "retry-after" in fresh.headers
        form = client.post("/login", data={"token": TOKEN}, headers=from_client("198.51.100.98"))
        assert form.status_code == 429 and "retry-after" in form.headers
        # While the known operator's token and any live session keep working
        assert client.get("/api/campaigns", headers=from_client("203.0.113.9", BEARER)).status_code == 200
        assert (
            client.get("/api/campaigns", headers=from_client("198.51.100.97", cookie_header(cookie))).status_code == 200
        )


def test_failed_logins_through_the_form_are_paced_per_client(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        # Given a client that submits wrong tokens in the form
        answers = [
            client.post("/login", data={"token": f"guess-{n}"}, headers=from_client("198.51.100.20"))
            for n in range(FREE_FAILURES + 2)
        ]
        # Then after the free failures the form answers 429 with Retry-After and sets no session
        assert [a.status_code for a in answers[:FREE_FAILURES]] == [401] * FREE_FAILURES
        assert answers[-1].status_code == 429 and int(answers[-1].headers["retry-after"]) >= 1
        assert SESSION_COOKIE not in answers[-1].headers.get("set-cookie", "")
        locked = client.post("/login", data={"token": TOKEN}, headers=from_client("198.51.100.20"))
        assert locked.status_code == 429
        # ... and Bearer guesses from it share the same budget
        assert client.get("/api/campaigns", headers=from_client("198.51.100.20", WRONG)).status_code == 429
        # While another client signs in normally
        assert client.post("/login", data={"token": TOKEN}, headers=from_client("198.51.100.21")).status_code == 303


def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Given no trusted proxy configured
    s = seed(tmp_path, monkeypatch, n=3)
    with serving(create_app(s.rt, None)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        # When an attacker on 127.0.0.1 claims a new X-Forwarded-For address with every guess
        answers = [
            client.get("/api/campaigns", headers=from_client(f"198.51.100.{n}", WRONG)).status_code
            for n in range(FREE_FAILURES + 3)
        ]
    # Then its guesses are still counted against its real address and refused
    assert answers[-1] == 429


# Sessions ---------------------------------------------------------------------------------------------
def test_logout_revokes_the_session_server_side(base_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        # Given a signed-in session and a copy of its cookie (as an attacker who stole it would have)
        stolen = sign_in(client)
        assert httpx.get(f"{base_url}/", headers=cookie_header(stolen)).status_code == 200
        page = client.get("/", headers=from_client("192.0.2.200"))
        csrf = re.search(rf'name="{CSRF_FIELD}" value="([^"]+)"', page.text)
        assert csrf
        # When the operator logs out
        assert client.post("/logout", data={CSRF_FIELD: csrf.group(1)}).status_code == 303
    # Then the copied cookie no longer opens anything
    assert httpx.get(f"{base_url}/", headers=cookie_header(stolen)).status_code == 401
    assert httpx.get(f"{base_url}/api/campaigns", headers=cookie_header(stolen)).status_code == 401


def test_rotating_the_token_revokes_every_session(seeded: Seeded, redis_url: str) -> None:
    with serving(create_app(seeded.rt, None)) as old_url, httpx.Client(base_url=old_url, timeout=30) as client:
        cookie = sign_in(client)
    # When the dashboard comes back with a new token (same Redis)
    with serving(create_app(seeded.rt, None, token=OTHER_TOKEN)) as new_url:
        # Then the session from the old token is refused
        assert httpx.get(f"{new_url}/", headers=cookie_header(cookie)).status_code == 401
    # ... while the same token again keeps it (sessions survive a plain restart)
    with serving(create_app(seeded.rt, None)) as same_url:
        assert httpx.get(f"{same_url}/", headers=cookie_header(cookie)).status_code == 200


def test_sessions_expire(base_url: str, redis_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        cookie = sign_in(client)
    store = redis.Redis.from_url(redis_url)
    (name,) = store.keys(keys.dashboard_session("*", "*"))
    # Given the server-side record expires with the session
    assert 0 < store.ttl(name) <= SESSION_MAX_AGE
    # When the clock is an hour before the end of the session, it still works
    clock.start_at(clock.now() + timedelta(seconds=SESSION_MAX_AGE - 3600))
    assert httpx.get(f"{base_url}/", headers=cookie_header(cookie)).status_code == 200
    # When it is past the end, it is refused
    clock.start_at(clock.now() + timedelta(seconds=2 * 3600))
    assert httpx.get(f"{base_url}/", headers=cookie_header(cookie)).status_code == 401


def test_both_the_cookie_and_the_server_record_carry_the_expiry(base_url: str, redis_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        cookie = sign_in(client)
    store = redis.Redis.from_url(redis_url)
    (name,) = store.keys(keys.dashboard_session("*", "*"))
    record = json.loads(store.get(name) or b"{}")
    # Given a fresh cookie whose server-side record says the session began 13 hours ago: refused
    store.set(name, json.dumps({**record, "started": record["started"] - SESSION_MAX_AGE - 3600}))
    assert httpx.get(f"{base_url}/", headers=cookie_header(cookie)).status_code == 401
    # Given a cookie signed 13 hours ago whose record (rewritten, as a tampered store would be) looks fresh
    cookie = sign_in(httpx.Client(base_url=base_url, timeout=30))
    clock.start_at(clock.now() + timedelta(seconds=SESSION_MAX_AGE + 3600))
    for name in store.keys(keys.dashboard_session("*", "*")):
        record = json.loads(store.get(name) or b"{}")
        store.set(name, json.dumps({**record, "started": clock.now().timestamp()}))
    # Then the cookie's own signed time refuses it
    assert httpx.get(f"{base_url}/", headers=cookie_header(cookie)).status_code == 401


def test_session_cookies_are_signed_with_a_random_key_not_derived_from_the_token(base_url: str, redis_url: str) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        cookie = sign_in(client)
    key = redis.Redis.from_url(redis_url).get(keys.dashboard_signing_key())
    assert isinstance(key, bytes) and len(key) == 64
    # The cookie verifies under the random key only: not under the token, nor a key computed from it, so a
    # stolen cookie gives nothing to test token guesses against offline.
    URLSafeTimedSerializer(key, salt="dispatcher-session-v2").loads(cookie)
    derived = hmac.new(TOKEN.encode(), b"dispatcher dashboard session v1", hashlib.sha256).hexdigest()
    for candidate in (TOKEN, derived, hashlib.sha256(TOKEN.encode()).hexdigest()):
        with pytest.raises(BadSignature):
            URLSafeTimedSerializer(candidate, salt="dispatcher-session-v2").loads(cookie)
    assert TOKEN.encode() not in key


def test_session_cookie_is_secure_by_default_whatever_the_scheme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Given the default settings and plain HTTP (as behind a TLS-terminating proxy)
    s = seed(tmp_path, monkeypatch, n=3)
    with serving(create_app(s.rt, None)) as base_url:
        response = httpx.post(f"{base_url}/login", data={"token": TOKEN})
    # Then the session cookie is still marked Secure
    assert response.status_code == 303
    assert "secure" in response.headers["set-cookie"].lower().split("; ")


def test_insecure_cookie_opt_out_drops_secure(base_url: str) -> None:
    response = httpx.post(f"{base_url}/login", data={"token": TOKEN})
    assert response.status_code == 303
    assert "secure" not in response.headers["set-cookie"].lower().split("; ")


# The read-only metrics token ------------------------------------------------------------------------------
def test_metrics_token_opens_metrics_and_nothing_else(base_url: str) -> None:
    metrics = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        assert client.get("/metrics", headers=metrics).status_code == 200
        assert client.get("/metrics", headers=BEARER).status_code == 200
        for method, path in [
            ("GET", "/"),
            ("GET", "/api/campaigns"),
            ("GET", "/api/campaigns/test-campaign"),
            ("GET", "/campaigns/test-campaign"),
            ("POST", "/campaigns/test-campaign/pause"),
        ]:
            assert client.request(method, path, headers=metrics).status_code == 401, path
        assert client.post("/login", data={"token": METRICS_TOKEN}).status_code == 401


# Hostile requests -------------------------------------------------------------------------------------------
BAD_QUERIES = [
    "after=-1",
    "after=abc",
    "after=%C2%B2",
    "after=%EF%BC%91%EF%BC%92",
    "after=" + "9" * 40,
    "before=1e9",
    "status=%3Cscript%3E",
    "status=sent&status=failed",
    "channel=fax",
    "minutes=7",
    "minutes=" + "1" * 30,
    "n=-3",
    "n=" + "9" * 50,
    "after=1&after=2",
]
ODD_IDS = ["%00", "a%0Ab", "x" * 65, "%E2%80%8B", "%ED%A0%80", "%FF%FE", "..%2F..%2Fetc"]


@pytest.mark.parametrize("ledger", ["sqlite", "postgresql"])
def test_bad_query_values_and_odd_ids_are_4xx_on_every_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, request: pytest.FixtureRequest, ledger: str
) -> None:
    url = request.getfixturevalue("postgres_url") if ledger == "postgresql" else None
    s = seed(tmp_path, monkeypatch, n=3, database_url=url)
    with serving(create_app(s.rt, None)) as base_url, httpx.Client(base_url=base_url, timeout=30) as client:
        # Given bad values for each query parameter a page reads: 400, and the value is not repeated back
        for query in BAD_QUERIES:
            for path in ("/campaigns/test-campaign", "/campaigns/test-campaign/chart"):
                response = client.get(f"{path}?{query}", headers=BEARER)
                if path.endswith("chart") and not query.startswith("minutes"):
                    assert response.status_code == 200, (path, query)  # the chart reads minutes only
                    continue
                assert response.status_code == 400, (path, query, response.status_code)
                assert "<script>" not in response.text and "9" * 30 not in response.text
        assert client.get("/login?next=/a&next=/b").status_code == 400
        # Given campaign ids no campaign can have: 404 on every route, never a database error
        for odd in ODD_IDS:
            for method, path in [
                ("GET", "/campaigns/{}"),
                ("GET", "/campaigns/{}/chart"),
                ("GET", "/api/campaigns/{}"),
                ("POST", "/campaigns/{}/pause"),
                ("POST", "/campaigns/{}/resend"),
            ]:
                response = client.request(method, path.format(odd), headers=BEARER)
                assert response.status_code == 404, (method, path, odd, response.status_code)
        # A printable unknown id is named in the answer, escaped
        page = client.get("/campaigns/%3Cscript%3Ealert(1)%3C%2Fscript%3E", headers=BEARER)
        assert page.status_code == 404 and "<script>alert" not in page.text


def test_hostile_bodies_and_long_targets_are_4xx(base_url: str) -> None:
    deep_json = b"[" * 200_000 + b"]" * 200_000
    deep_form = "a" + "[b]" * 50_000 + "=1"
    many_fields = "&".join(f"f{n}=1" for n in range(5000))
    bodies: list[tuple[bytes | str, str]] = [
        (deep_json, "application/json"),
        (deep_form, "application/x-www-form-urlencoded"),
        (many_fields, "application/x-www-form-urlencoded"),
        (b"--x\r\nContent-Disposition: form-data\r\n\r\nunterminated", "multipart/form-data; boundary=x"),
        (b"garbage", "multipart/form-data"),
        ("%ZZ=%%&token=" + "t" * 100_000, "application/x-www-form-urlencoded"),
    ]
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for body, content_type in bodies:
            for path, headers in [
                ("/login", {}),
                ("/campaigns/test-campaign/pause", BEARER),
                ("/campaigns/test-campaign/resend", BEARER),
                ("/logout", BEARER),
                ("/campaigns/test-campaign/cancel", {}),
            ]:
                response = client.post(path, content=body, headers={**headers, "Content-Type": content_type})
                assert response.status_code < 500, (path, content_type, response.status_code)
            # Pages and the API take no body: a GET carrying one is answered as usual, never 500
            assert client.request("GET", "/api/campaigns", content=body, headers=BEARER).status_code == 200
        # Over the body limit: 413
        assert client.post("/login", content=b"x" * (2 * 1024 * 1024)).status_code == 413
        # A request target of thousands of characters: 414 (or 404 for a long id), never 500
        assert client.get("/" + "a" * 8000, headers=BEARER).status_code == 414
        assert client.get("/campaigns/test-campaign?x=" + "b" * 8000, headers=BEARER).status_code == 414
        assert client.get("/campaigns/" + "c" * 3000, headers=BEARER).status_code == 404
        assert client.get("/healthz").status_code == 200


def test_dashboard_command_cuts_long_targets_in_the_access_log(
    dispatcher_cmd: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    # Given the real command, on loopback, with defaults
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    port = free_port()
    proc = subprocess.Popen(
        [*dispatcher_cmd, "dashboard", "--port", str(port)],
        cwd=tmp_path,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_healthy(base_url, proc)
        # When a client asks for a 3,000-character path (under the 414 limit) carrying a marker
        marker = "Z" * 2500
        assert httpx.get(f"{base_url}/campaigns/{marker}").status_code == 401
        login = httpx.post(f"{base_url}/login", data={"token": TOKEN})
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    # Then its access line is cut and gives the length, instead of quoting the whole path
    lines = [line for line in stderr.splitlines() if "/campaigns/ZZZ" in line]
    assert lines, stderr[-2000:]
    assert all(marker not in line and len(line) < 600 for line in lines)
    assert any("characters]" in line for line in lines)
    # ... and the real command hands out Secure cookies by default
    assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower().split("; ")


def _wait_healthy(base_url: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited: {proc.communicate()[1][-2000:]}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the dashboard did not answer /healthz")
