"""The ``http`` SMS provider against a real local HTTP server implementing the gateway contract
(docs/sms-gateway.md), its receipt signatures, and a whole campaign sent through it by the CLI."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core import clock
from dispatcher.core.errors import AmbiguousOutcome, ConfigError, PermanentError, Throttled, TransientError
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel, Status
from dispatcher.feedback.events import Kind
from dispatcher.providers import build
from dispatcher.providers.base import OutgoingSms
from dispatcher.providers.http_sms import (
    HttpGatewaySms,
    ReceiptError,
    parse_receipt,
    receipt_events,
    sign_receipt,
    verify_receipt_signature,
)

from .helpers import write_campaign, write_csv
from .services import free_port

TOKEN = "gw-token-0123456789"
TEXT = "【regionPAY補償】受取URL https://receive.example.jp/r/tok42 期限5/31"


class Gateway(ThreadingHTTPServer):
    """A domestic SMS gateway as the contract describes it, with switchable misbehaviour."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), GatewayHandler)
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/sms"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (read timeout) leaves a broken pipe behind: expected here

    def sent(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r["json"] for r in self.requests if r["answered"] == 200]


class GatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real gateway
    server: Gateway

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        mode = self.server.mode
        record = {
            "path": self.path,
            "auth": self.headers.get("Authorization"),
            "json": json.loads(body),
            "content_type": self.headers.get("Content-Type"),
            "peer": self.client_address,
            "answered": None,
        }
        with self.server.lock:
            self.server.requests.append(record)
            number = len(self.server.requests)
        if mode == "drop":
            # Read it all, then hang up without a word: the message may or may not go out.
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "slow":
            time.sleep(1.0)
        headers: dict[str, str] = {}
        if record["auth"] != f"Bearer {TOKEN}":
            status, answer, headers = 401, {"code": "unauthorized"}, {}
        elif mode in ("ok", "slow"):
            status, answer, headers = 200, {"id": f"gw-{number:04d}", "status": "accepted"}, {}
        elif mode == "no-id":
            status, answer, headers = 200, {"status": "accepted"}, {}
        elif mode == "429":
            status, answer, headers = 429, {"code": "rate_limited"}, {"Retry-After": "7"}
        elif mode == "429-date":
            when = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
            status, answer, headers = 429, {"code": "rate_limited"}, {"Retry-After": when}
        elif mode == "500":
            status, answer, headers = 500, {"error": "internal error"}, {}
        elif mode == "400-phone-code":
            # A gateway whose "numeric error code" is the number it refused
            status, answer, headers = 400, {"code": int(record["json"]["to"].lstrip("+")), "error": "E"}, {}
        elif mode == "400":
            to = record["json"]["to"]
            status, answer, headers = 400, {"code": "invalid_number", "message": f"{to} is not valid"}, {}
        else:
            raise AssertionError(mode)
        record["answered"] = status
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    server = Gateway()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def provider(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpGatewaySms]:
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "http")
    monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_TOKEN", TOKEN)
    monkeypatch.setenv("DISPATCHER_PROVIDER_READ_TIMEOUT", "0.5")
    built = build(Channel.SMS, load_settings())
    assert isinstance(built, HttpGatewaySms)
    yield built
    built.close()


def sms(reference: str = "42.1", to: str = "+819012345678") -> OutgoingSms:
    return OutgoingSms(reference, "camp", to, TEXT, 1, clock.now() + timedelta(days=1))


def test_accepted_message_returns_the_gateway_id(gateway: Gateway, provider: HttpGatewaySms) -> None:
    result = provider.send(sms())
    assert (result.provider, result.message_id) == ("http", "gw-0001")
    [request] = gateway.requests
    assert request["path"] == "/v1/sms"
    assert request["auth"] == f"Bearer {TOKEN}"
    assert request["content_type"] == "application/json"
    # The announced landline, as digits: only a domestic route can show it
    assert request["json"] == {"to": "+819012345678", "from": "0352449370", "text": TEXT, "reference": "42.1"}


def test_one_connection_carries_many_messages(gateway: Gateway, provider: HttpGatewaySms) -> None:
    ids = [provider.send(sms(f"{i}.1")).message_id for i in range(5)]
    assert ids == [f"gw-{i:04d}" for i in range(1, 6)]
    assert [r["json"]["reference"] for r in gateway.requests] == [f"{i}.1" for i in range(5)]
    assert len({r["peer"] for r in gateway.requests}) == 1


def test_429_is_throttled_and_honours_retry_after(gateway: Gateway, provider: HttpGatewaySms) -> None:
    gateway.mode = "429"
    with pytest.raises(Throttled) as info:
        provider.send(sms())
    assert info.value.retry_after == 7.0
    assert info.value.code == "rate_limited"
    gateway.mode = "429-date"
    with pytest.raises(Throttled) as info:
        provider.send(sms())
    assert info.value.retry_after is not None and 100 < info.value.retry_after <= 120


def test_5xx_is_transient(gateway: Gateway, provider: HttpGatewaySms) -> None:
    gateway.mode = "500"
    with pytest.raises(TransientError) as info:
        provider.send(sms())
    assert type(info.value) is TransientError
    assert info.value.code == "HTTP 500"


def test_4xx_is_permanent_and_the_error_names_no_one(gateway: Gateway, provider: HttpGatewaySms) -> None:
    gateway.mode = "400"
    with pytest.raises(PermanentError) as info:
        provider.send(sms())
    assert info.value.code == "invalid_number"
    assert "9012345678" not in str(info.value) and "receive.example.jp" not in str(info.value)


def test_a_numeric_gateway_code_holding_the_phone_number_is_not_kept(
    gateway: Gateway, provider: HttpGatewaySms
) -> None:
    # Given a gateway that answers 400 with the recipient's number as its "code" (and a short "error" token)
    gateway.mode = "400-phone-code"

    # When the message is refused
    with pytest.raises(PermanentError) as info:
        provider.send(sms())

    # Then the number is neither the kept code nor in the message: the next short token stands instead
    assert info.value.code == "E"
    assert "9012345678" not in str(info.value) and "9012345678" not in info.value.code


def test_a_wrong_token_is_refused_permanently(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    provider = HttpGatewaySms(load_settings(sms_gateway_url=gateway.url, sms_gateway_token="wrong"))
    with pytest.raises(PermanentError) as info:
        provider.send(sms())
    provider.close()
    assert info.value.code == "unauthorized"
    assert "wrong" not in str(info.value)


def test_hang_up_after_the_request_is_ambiguous_and_not_retried(gateway: Gateway, provider: HttpGatewaySms) -> None:
    gateway.mode = "drop"
    with pytest.raises(AmbiguousOutcome):
        provider.send(sms())
    # The gateway got the request exactly once: the client did not try again on its own
    assert len(gateway.requests) == 1


def test_no_answer_within_the_read_timeout_is_ambiguous(gateway: Gateway, provider: HttpGatewaySms) -> None:
    gateway.mode = "slow"
    with pytest.raises(AmbiguousOutcome):
        provider.send(sms())
    assert len(gateway.requests) == 1


def test_2xx_without_an_id_is_ambiguous(gateway: Gateway, provider: HttpGatewaySms) -> None:
    gateway.mode = "no-id"
    with pytest.raises(AmbiguousOutcome):
        provider.send(sms())


def test_nothing_listening_is_transient() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/sms"
    provider = HttpGatewaySms(load_settings(sms_gateway_url=url, sms_gateway_token=TOKEN))
    with pytest.raises(TransientError) as info:
        provider.send(sms())
    provider.close()
    assert type(info.value) is TransientError
    assert info.value.code == "ConnectError"


@pytest.mark.parametrize(
    ("url", "token", "names"),
    [
        (None, TOKEN, "DISPATCHER_SMS_GATEWAY_URL"),
        ("ftp://gw.example.jp/send", TOKEN, "DISPATCHER_SMS_GATEWAY_URL"),
        ("http://gw.example.jp/send", TOKEN, "DISPATCHER_SMS_GATEWAY_URL"),  # a bearer token in clear text
        ("https://gw.example.jp/send", None, "DISPATCHER_SMS_GATEWAY_TOKEN"),
    ],
)
def test_settings_are_checked_at_start(url: str | None, token: str | None, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        HttpGatewaySms(load_settings(sms_gateway_url=url, sms_gateway_token=token))
    assert names in str(info.value)


# Receipts ---------------------------------------------------------------------------------------

SECRET = "receipt-secret-abc"


def gateway_signs(body: bytes, secret: str = SECRET) -> str:
    """What the gateway computes, written out independently of our code."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_good_signature_is_accepted() -> None:
    body = json.dumps({"id": "gw-0001", "reference": "42.1", "status": "delivered"}).encode()
    header = gateway_signs(body)
    assert verify_receipt_signature(body, header, SECRET)
    assert verify_receipt_signature(body, header.upper().replace("SHA256=", "sha256="), SECRET)
    assert sign_receipt(body, SECRET) == header


@pytest.mark.parametrize(
    "forge",
    [
        lambda body, header: (body.replace(b"failed", b"delivered"), header),  # body changed after signing
        lambda body, header: (body, gateway_signs(body, "guessed-secret")),  # signed with another secret
        lambda body, header: (body, header.removeprefix("sha256=")),  # no scheme
        lambda body, header: (body, "sha1=" + header.removeprefix("sha256=")),  # wrong scheme
        lambda body, header: (body, header[:-2]),  # truncated
        lambda body, header: (body, ""),
        lambda body, header: (body, None),
        lambda body, header: (body, "sha256=ｆｆ"),  # non-ASCII
    ],
)
def test_a_forged_signature_is_refused(forge: Any) -> None:
    body = json.dumps({"id": "gw-0001", "status": "failed"}).encode()
    forged_body, forged_header = forge(body, gateway_signs(body))
    assert not verify_receipt_signature(forged_body, forged_header, SECRET)


def test_no_secret_configured_verifies_nothing() -> None:
    body = b'{"id": "gw-1", "status": "delivered"}'
    assert not verify_receipt_signature(body, gateway_signs(body, ""), "")
    assert not verify_receipt_signature(body, gateway_signs(body), None)


def test_receipts_map_onto_delivery_states() -> None:
    body = json.dumps(
        [
            {
                "id": "gw-1",
                "reference": "42.1",
                "status": "delivered",
                "code": "000",
                "at": "2023-04-05T10:00:03+09:00",
            },
            {"id": "gw-2", "reference": "43.2", "status": "failed", "code": "E31", "at": "2023-04-05T01:00:04Z"},
            {"id": "gw-3", "reference": "44.1", "status": "expired", "at": "2023-04-05T10:00:05"},
            {"id": 4, "reference": "45.1", "status": "REJECTED"},
            {"id": "gw-5", "status": "buffered", "to": "+819012345678"},
            {"id": "gw-6", "reference": "46.1", "status": "sent"},
        ]
    ).encode()
    receipts = parse_receipt(body)
    assert [r.status for r in receipts] == [
        Status.DELIVERED,
        Status.FAILED,
        Status.FAILED,
        Status.FAILED,
        None,
        Status.SENT,
    ]
    assert [r.kind for r in receipts] == [
        Kind.DELIVERED,
        Kind.UNDELIVERABLE,
        Kind.UNDELIVERABLE,
        Kind.REJECTED,
        Kind.UNKNOWN,
        Kind.SENT,
    ]
    assert [r.delivery_id for r in receipts] == [42, 43, 44, 45, None, 46]
    assert [r.message_id for r in receipts] == ["gw-1", "gw-2", "gw-3", "4", "gw-5", "gw-6"]
    assert receipts[0].at is not None and receipts[1].at is not None
    assert receipts[0].at == receipts[1].at - timedelta(seconds=1)
    assert receipts[2].at is not None and receipts[2].at.utcoffset() == timedelta(hours=9)  # local time: JST
    assert receipts[4].gateway_status == "buffered"
    assert parse_receipt(b'{"id": "x", "status": "delivered"}')[0].code is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"status": "delivered"}',
        b'{"id": "x"}',
        b"[1]",
        b'{"id": "x", "status": "delivered", "at": "yesterday"}',
        b"\xff\xfe",
    ],
)
def test_unreadable_receipts_are_refused(body: bytes) -> None:
    with pytest.raises(ReceiptError):
        parse_receipt(body)
    with pytest.raises(ValueError):  # what the feedback route catches to answer 400
        receipt_events(body)


def test_receipts_become_provider_events_for_the_feedback_pipeline() -> None:
    body = json.dumps(
        [
            {
                "id": "gw-1",
                "reference": "42.1",
                "status": "delivered",
                "code": "000",
                "at": "2023-04-05T10:00:03+09:00",
            },
            {"id": "gw-2", "status": "expired"},
        ]
    ).encode()
    delivered, expired = receipt_events(body)
    assert (delivered.source, delivered.kind, delivered.message_id, delivered.reference, delivered.code) == (
        "http-gateway",
        Kind.DELIVERED,
        "gw-1",
        "42.1",
        "000",
    )
    assert delivered.at == datetime(2023, 4, 5, 1, 0, 3, tzinfo=UTC)
    assert (expired.kind, expired.event_type, expired.reference, expired.recipient) == (
        Kind.UNDELIVERABLE,
        "expired",
        None,
        None,
    )
    assert abs((expired.at - clock.now()).total_seconds()) < 5  # no time given: when we heard of it


# A campaign through the CLI ---------------------------------------------------------------------

PEOPLE = [
    {
        "user_id": "S001",
        "name": "佐藤 太郎",
        "email": "",
        "phone": "090-1111-2222",
        "receipt_url": "https://receive.example.jp/r/s001",
    },
    {
        "user_id": "S002",
        "name": "高橋 健",
        "email": "",
        "phone": "０８０－３３３３－４４４４",
        "receipt_url": "https://receive.example.jp/r/s002",
    },
    {
        "user_id": "S003",
        "name": "田中 美咲",
        "email": "",
        "phone": "+81 70 5555 6666",
        "receipt_url": "https://receive.example.jp/r/s003",
    },
    {
        "user_id": "E001",
        "name": "鈴木 花子",
        "email": "hanako@ezweb.ne.jp",
        "phone": "",
        "receipt_url": "https://receive.example.jp/r/e001",
    },
]
NUMBERS = {"S001": "+819011112222", "S002": "+818033334444", "S003": "+817055556666"}


def cli(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, env=os.environ.copy())


@pytest.fixture
def private_redis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Redis server of this test's own: no other test run's workers can take (or flush) its messages."""
    from dispatcher.broker.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path / "redis", persistent=False)
    url = server.start()
    monkeypatch.setenv("DISPATCHER_REDIS_URL", url)
    yield url
    server.stop()


@pytest.mark.slow
def test_a_campaign_sends_each_sms_once_through_the_gateway(
    tmp_path: Path,
    gateway: Gateway,
    private_redis: str,
    dispatcher_cmd: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a campaign with three SMS people and one e-mail person, and the http route to our gateway
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "http")
    monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_URL", gateway.url)
    monkeypatch.setenv("DISPATCHER_SMS_GATEWAY_TOKEN", TOKEN)
    campaign = write_campaign(tmp_path, "gw-e2e")
    recipients = write_csv(tmp_path / "list.csv", [{**p, "amount": "1200", "category": "A"} for p in PEOPLE])

    # When the operator enqueues it, the broker gets every message twice (a sweep), and a worker runs
    enqueued = cli(dispatcher_cmd, "enqueue", str(campaign), str(recipients))
    assert enqueued.returncode == 0, enqueued.stdout + enqueued.stderr
    swept = cli(dispatcher_cmd, "sweep")
    assert "re-enqueued 4" in swept.stdout, swept.stdout + swept.stderr
    with (tmp_path / "worker.log").open("w") as log:
        worker = subprocess.Popen(
            [*dispatcher_cmd, "worker", "--processes", "1", "--threads", "4"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                status = json.loads(cli(dispatcher_cmd, "status", "gw-e2e", "--json").stdout)
                pending = sum(n for s, n in status["by_status"].items() if s in ("queued", "sending", "retrying"))
                if pending == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
        finally:
            worker.terminate()
            worker.wait(30)

    # Then each SMS person got exactly one message, from the announced number, with their own URL
    assert status["by_channel"] == {"email": {"sent": 1}, "sms": {"sent": 3}}, status
    sent = gateway.sent()
    assert sorted(m["to"] for m in sent) == sorted(NUMBERS.values())
    assert {m["from"] for m in sent} == {"0352449370"}
    assert all(r["auth"] == f"Bearer {TOKEN}" for r in gateway.requests)
    by_number = {m["to"]: m for m in sent}
    for user_id, number in NUMBERS.items():
        text = by_number[number]["text"]
        assert text.count("https://receive.example.jp/r/") == 1
        assert f"https://receive.example.jp/r/{user_id.lower()}" in text

    # And the ledger keeps the gateway's id for each, the id its receipts will quote
    from dispatcher.ledger import Ledger

    ledger = Ledger(load_settings().ledger_url)
    recorded = {d.contact: (d.provider, d.provider_message_id, d.id) for d in ledger.iter_campaign("gw-e2e")}
    ledger.dispose()
    for message in sent:
        provider, message_id, delivery_id = recorded[message["to"]]
        assert provider == "http" and message_id is not None and message_id.startswith("gw-")
        assert message["reference"] == f"{delivery_id}.1"
