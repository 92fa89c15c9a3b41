"""Feedback authenticity (SPEC §9, §12) over real HTTP: the dashboard served by uvicorn, a real ledger
(SQLite and PostgreSQL), SNS messages signed by a key of our own whose certificate sits in
DISPATCHER_SNS_CERTIFICATE_DIR, gateway receipts signed with the configured secret. Each test is an attack
(or a genuine event next to one) and checks that nothing moves and nothing is suppressed that should not."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel, Status
from dispatcher.dashboard import create_app
from dispatcher.ledger.store import Delivery
from dispatcher.providers.http_sms import sign_receipt
from dispatcher.runtime import Runtime

from .dashboard_support import TOKEN, serving
from .feedback_helpers import event_json
from .helpers import person_rows, write_campaign
from .sns_signing import ALLOWED_TOPIC, FOREIGN_TOPIC, Signer, make_signer

SECRET = "gateway-receipt-secret-0123456789abcdef"
CAMPAIGN = "trust"


@dataclass
class Trust:
    rt: Runtime
    http: httpx.Client
    signer: Signer
    email: list[Delivery]
    sms: list[Delivery]

    def status(self, d: Delivery) -> Status:
        got = self.rt.ledger.get(d.id)
        assert got is not None
        return got.status

    def sns(self, message: dict[str, Any] | bytes) -> httpx.Response:
        body = message if isinstance(message, bytes) else json.dumps(message).encode()
        return self.http.post("/feedback/sns", content=body, headers={"Content-Type": "text/plain"})

    def receipt(self, items: Any, signature: str | None = "good") -> httpx.Response:
        body = items if isinstance(items, bytes) else json.dumps(items).encode()
        headers = {"Content-Type": "application/json"}
        if signature == "good":
            headers["X-Gateway-Signature"] = sign_receipt(body, SECRET)
        elif signature is not None:
            headers["X-Gateway-Signature"] = signature
        return self.http.post("/feedback/sms-gateway", content=body, headers=headers)

    def nothing_suppressed(self) -> bool:
        return self.rt.ledger.suppression_list() == []


def mark_sent(
    rt: Runtime, delivery_id: int, provider: str, message_id: str | None, to: Status = Status.SENT
) -> Delivery:
    """The ledger as a worker leaves it after a send through ``provider`` (``UNKNOWN``: answer lost)."""
    assert rt.ledger.claim(delivery_id) is not None
    values: dict[str, Any] = {"provider": provider}
    if message_id is not None:
        values["provider_message_id"] = message_id
    moved = rt.ledger.move(delivery_id, to, actor="worker", values=values)
    assert moved is not None
    return moved


@pytest.fixture
def trust(ledger_url: str, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Trust]:
    from dispatcher.cli.common import install_runtime
    from dispatcher.intake.enqueue import enqueue_campaign

    signer = make_signer(tmp_path / "certs")
    for key, value in {
        "DISPATCHER_SNS_TOPIC_ARNS": ALLOWED_TOPIC,
        "DISPATCHER_SNS_CERTIFICATE_DIR": str(tmp_path / "certs"),
        "DISPATCHER_SMS_GATEWAY_SECRET": SECRET,
        "DISPATCHER_DASHBOARD_TOKEN": TOKEN,
    }.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    rt = install_runtime(settings)
    # Given four people by e-mail and four by SMS, enqueued
    enqueue_campaign(
        write_campaign(tmp_path, CAMPAIGN),
        person_rows(8, sms_every=2),
        settings=settings,
        ledger=rt.ledger,
        dispatch=lambda ids: None,
    )
    everyone = [rt.ledger.get(i) for i in rt.ledger.in_status(CAMPAIGN, [Status.QUEUED])]
    email = [d for d in everyone if d is not None and d.channel is Channel.EMAIL]
    sms = [d for d in everyone if d is not None and d.channel is Channel.SMS]
    with serving(create_app(rt, lambda ids: None)) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Trust(rt, http, signer, email, sms)
    rt.close()


def ses(name: str, d: Delivery, message_id: str, **kw: Any) -> str:
    return event_json(name, d, message_id=message_id, **kw)


# --- SNS: allow-list, freshness, certificate, signature version ---------------------------------------


def test_sns_route_answers_503_without_a_topic_allow_list(trust: Trust, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an e-mail sent through SES, and a dashboard whose settings name no SNS topic
    d = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    trust.rt.settings = trust.rt.settings.model_copy(update={"sns_topic_arns": []})
    # When a correctly signed bounce for it arrives
    response = trust.sns(trust.signer.notification(ses("ses_bounce_permanent", d, "ses-1")))
    # Then the route is not available at all, and nothing moved or was suppressed
    assert response.status_code == 503
    assert trust.status(d) is Status.SENT and trust.nothing_suppressed()


def test_a_foreign_topic_moves_nothing_and_is_refused_before_any_certificate(
    trust: Trust, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an e-mail sent through SES
    d = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    # When another AWS account's topic sends a complaint for it, validly signed
    forged = trust.signer.notification(ses("ses_complaint", d, "ses-1"), topic=FOREIGN_TOPIC)
    # Then it is refused, nothing moves, nothing is suppressed
    assert trust.sns(forged).status_code == 403
    assert trust.status(d) is Status.SENT and trust.nothing_suppressed()
    # And when its certificate cannot even be found, the refusal is still for the topic: it was checked
    # before any certificate was looked for (a foreign sender makes us fetch nothing)
    caplog.set_level(logging.WARNING, logger="dispatcher.feedback.http")
    elsewhere = trust.signer.notification(
        ses("ses_complaint", d, "ses-1"),
        topic=FOREIGN_TOPIC,
        cert_url="https://sns.ap-northeast-1.amazonaws.com/Other-1.pem",
    )
    assert trust.sns(elsewhere).status_code == 403
    assert "topic not allowed" in caplog.text and "certificate" not in caplog.text
    # And the same message from the allowed topic applies
    assert trust.sns(trust.signer.notification(ses("ses_complaint", d, "ses-1"))).status_code == 200
    assert trust.status(d) is Status.COMPLAINED and trust.rt.ledger.is_suppressed(d.contact) == "complaint"


@pytest.mark.parametrize(
    ("age", "accepted"),
    [
        (timedelta(minutes=30), True),
        (timedelta(hours=2), False),
        (timedelta(days=3), False),
        (-timedelta(minutes=20), False),
    ],
)
def test_sns_replay_window(trust: Trust, age: timedelta, accepted: bool) -> None:
    # Given an e-mail sent through SES
    d = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    # When a genuine, signed bounce arrives whose Timestamp is ``age`` old (negative: in the future)
    at = datetime.now(UTC) - age
    message = trust.signer.notification(ses("ses_bounce_permanent", d, "ses-1", at=at), at=at)
    response = trust.sns(message)
    # Then only a fresh one is applied; an old (replayed) or future-dated one is refused and moves nothing
    assert response.status_code == (200 if accepted else 403)
    assert trust.status(d) is (Status.BOUNCED if accepted else Status.SENT)
    assert trust.nothing_suppressed() is not accepted


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://evil.example.com/{name}",
        "http://sns.ap-northeast-1.amazonaws.com/{name}",
        "https://sns.ap-northeast-1.amazonaws.com.evil.example.com/{name}",
        "https://sns.ap-northeast-1.amazonaws.com:8443/{name}",
        "https://sns.ap-northeast-1.amazonaws.com/{name}.txt",
    ],
)
def test_certificate_url_must_be_an_https_sns_host(trust: Trust, cert_url: str) -> None:
    # Given an e-mail sent through SES, and our signing certificate in the certificate folder
    d = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    # When a message signed with that key names its certificate at another place (the file of that name
    # is in the folder, so only the URL check stands between it and acceptance)
    url = cert_url.format(name=trust.signer.cert_name)
    if url.endswith(".txt"):
        (Path(str(trust.rt.settings.sns_certificate_dir)) / f"{trust.signer.cert_name}.txt").write_bytes(
            (Path(str(trust.rt.settings.sns_certificate_dir)) / trust.signer.cert_name).read_bytes()
        )
    response = trust.sns(trust.signer.notification(ses("ses_bounce_permanent", d, "ses-1"), cert_url=url))
    # Then it is refused and nothing moves
    assert response.status_code == 403
    assert trust.status(d) is Status.SENT and trust.nothing_suppressed()


@pytest.mark.parametrize(
    ("version", "digest", "accepted"),
    [("1", "sha1", True), ("2", "sha256", True), ("1", "sha256", False), ("2", "sha1", False)],
)
def test_signature_version_1_is_sha1_and_2_is_sha256(trust: Trust, version: str, digest: str, accepted: bool) -> None:
    # Given an e-mail sent through SES
    d = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    # When a delivery event arrives labelled with one SignatureVersion and signed with a digest
    message = trust.signer.notification(ses("ses_delivery", d, "ses-1"), version=version, digest=digest)
    # Then it counts only when the digest is the one its version names
    assert trust.sns(message).status_code == (200 if accepted else 403)
    assert trust.status(d) is (Status.DELIVERED if accepted else Status.SENT)


# --- every event concerns only a send through its own provider and channel ------------------------------


@pytest.mark.parametrize("state", [Status.SENT, Status.UNKNOWN])
def test_a_signed_ses_complaint_for_an_sms_delivery_moves_nothing(trust: Trust, state: Status) -> None:
    # Given an SMS sent through End User Messaging (or whose answer was lost: no message id recorded)
    sms = mark_sent(trust.rt, trust.sms[0].id, "sms-voice-v2", "shared-id" if state is Status.SENT else None, to=state)
    # When a signed SES complaint from our own topic names its message id and its reference
    record = json.loads(ses("ses_complaint", sms, "shared-id"))
    record["complaint"]["complainedRecipients"] = [{"emailAddress": "someone@example.jp"}]
    response = trust.sns(trust.signer.notification(json.dumps(record)))
    # Then it is accepted as a message but moves nothing and suppresses nothing (neither phone nor address)
    assert response.status_code == 200
    assert trust.status(sms) is state
    assert trust.nothing_suppressed()


@pytest.mark.parametrize("state", [Status.SENT, Status.UNKNOWN])
def test_a_gateway_receipt_for_an_email_delivery_moves_nothing(trust: Trust, state: Status) -> None:
    # Given an e-mail sent through SES with message id "gw-7" (or whose answer was lost)
    email = mark_sent(trust.rt, trust.email[0].id, "ses", "gw-7" if state is Status.SENT else None, to=state)
    # When the gateway signs a failure receipt naming that id and the e-mail's reference
    response = trust.receipt({"id": "gw-7", "status": "failed", "reference": f"{email.id}.{email.attempts}"})
    # Then nothing moves
    assert response.status_code == 200
    assert trust.status(email) is state and trust.nothing_suppressed()


def test_an_end_user_messaging_opt_out_naming_a_gateway_id_moves_nothing(trust: Trust) -> None:
    # Given an SMS sent through the domestic gateway as "gw-9", and another through End User Messaging
    gateway = mark_sent(trust.rt, trust.sms[0].id, "http", "gw-9")
    # When a signed End User Messaging opt-out names the gateway's id and reference
    record = json.loads(event_json("sms_text_blocked", gateway, message_id="gw-9"))
    record["eventType"] = "TEXT_OPTED_OUT"
    assert trust.sns(trust.signer.notification(json.dumps(record))).status_code == 200
    # Then the gateway's delivery is untouched and its phone not suppressed
    assert trust.status(gateway) is Status.SENT and trust.nothing_suppressed()


def test_sms_opt_out_suppresses_the_phone(trust: Trust) -> None:
    # Given an SMS sent through End User Messaging
    d = mark_sent(trust.rt, trust.sms[0].id, "sms-voice-v2", "eum-1")
    # When End User Messaging reports that the phone opted out
    record = json.loads(event_json("sms_text_blocked", d, message_id="eum-1"))
    record["eventType"] = "TEXT_OPTED_OUT"
    record["messageStatus"] = "OPTED_OUT"
    assert trust.sns(trust.signer.notification(json.dumps(record))).status_code == 200
    # Then the delivery failed and the phone, on the SMS channel, is on the suppression list
    assert trust.status(d) is Status.FAILED
    [entry] = trust.rt.ledger.suppression_list()
    assert (entry["contact"], entry["channel"], entry["reason"]) == (d.contact, "sms", "opted out")


def test_an_event_about_an_earlier_attempt_does_not_move_the_current_one(trust: Trust) -> None:
    ledger = trust.rt.ledger
    # Given an e-mail whose first attempt (ses-1) soft-bounced, resent: its second attempt's answer was lost
    first = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    assert ledger.move(first.id, Status.BOUNCED, actor="test") is not None
    assert ledger.move(first.id, Status.QUEUED, actor="operator:test") is not None
    second = mark_sent(trust.rt, first.id, "ses", None, to=Status.UNKNOWN)
    assert second.attempts == 2
    # When late events about the first attempt arrive: by its message id, and by its reference
    assert trust.sns(trust.signer.notification(ses("ses_delivery", first, "ses-1"))).status_code == 200
    assert trust.sns(trust.signer.notification(ses("ses_bounce_permanent", first, "ses-1"))).status_code == 200
    assert trust.sns(trust.signer.notification(ses("ses_complaint", first, "ses-other"))).status_code == 200
    # Then the second attempt is still unknown (only its own outcome settles it) and nothing is suppressed
    assert trust.status(second) is Status.UNKNOWN and trust.nothing_suppressed()
    # And an event about the second attempt (its reference) does settle it
    assert trust.sns(trust.signer.notification(ses("ses_delivery", second, "ses-2"))).status_code == 200
    settled = ledger.get(second.id)
    assert settled is not None and settled.status is Status.DELIVERED and settled.provider_message_id == "ses-2"


# --- the gateway's HMAC through the route ------------------------------------------------------------


def test_gateway_hmac_through_the_route(trust: Trust) -> None:
    # Given SMS sent through the gateway
    a = mark_sent(trust.rt, trust.sms[0].id, "http", "gw-1")
    b = mark_sent(trust.rt, trust.sms[1].id, "http", "gw-2")
    # When receipts arrive with a wrong signature, with none, and with the right one
    bad = trust.receipt({"id": "gw-1", "status": "failed"}, signature="sha256=" + "0" * 64)
    missing = trust.receipt({"id": "gw-1", "status": "failed"}, signature=None)
    other_secret = trust.receipt(
        b'{"id": "gw-1", "status": "failed"}',
        signature=sign_receipt(b'{"id": "gw-1", "status": "failed"}', "another-secret-0123456789abcdefghij"),
    )
    good = trust.receipt([{"id": "gw-1", "status": "delivered"}, {"id": "gw-2", "status": "expired"}])
    # Then only the signed one is applied
    assert (bad.status_code, missing.status_code, other_secret.status_code) == (403, 403, 403)
    assert good.status_code == 200, good.text
    assert (trust.status(a), trust.status(b)) == (Status.DELIVERED, Status.FAILED)


def test_a_long_gateway_status_is_a_400_not_a_database_error(trust: Trust) -> None:
    # Given an SMS sent through the gateway
    d = mark_sent(trust.rt, trust.sms[0].id, "http", "gw-1")
    # When a signed receipt carries fields longer than the ledger's columns
    for item in (
        {"id": "gw-1", "status": "x" * 500},
        {"id": "g" * 500, "status": "delivered"},
        {"id": "gw-1", "status": "delivered", "reference": "1" * 500},
    ):
        response = trust.receipt(item)
        # Then it is the gateway's mistake (400, not a 5xx it would retry for ever), and nothing moved
        assert response.status_code == 400, (len(json.dumps(item)), response.status_code)
    # And a long code is simply not kept
    assert trust.receipt({"id": "gw-1", "status": "delivered", "code": "c" * 500}).status_code == 200
    assert trust.status(d) is Status.DELIVERED


# --- hostile bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/feedback/sns", "/feedback/sms-gateway"])
def test_feedback_body_limit(trust: Trust, path: str) -> None:
    from dispatcher.dashboard.feedback_routes import MAX_BODY

    too_big = b"[" * (MAX_BODY + 1)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(too_big), 64 * 1024):
            yield too_big[start : start + 64 * 1024]

    # When a body over the limit arrives with its length declared, or chunked with no length at all
    declared = trust.http.post(path, content=too_big)
    chunked = trust.http.post(path, content=chunks())
    # Then both are refused unread; a body at the limit reaches the handler (which refuses it for itself)
    assert (declared.status_code, chunked.status_code) == (413, 413)
    at_limit = trust.http.post(path, content=b" " * MAX_BODY)
    assert at_limit.status_code in ((400,) if path.endswith("sns") else (403,))


def test_deep_or_unparsable_json_is_a_400(trust: Trust) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    # When the SNS route gets deep JSON, bad UTF-8, a huge number, or a JSON list
    for body in (deep, b'{"Type": "\xff"}', b"1" * 5000, b"[]"):
        assert trust.sns(body).status_code == 400
    # And the gateway gets the same, correctly signed
    for body in (deep, b"\xff\xfe", b"1" * 5000):
        assert trust.receipt(body).status_code == 400


def test_refusals_never_quote_what_was_sent(trust: Trust, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    marker = "ATTACKER" * 2000
    # When messages carry a long attacker-chosen type, topic, timestamp and certificate URL
    for field in ("Type", "TopicArn", "Timestamp", "SigningCertURL"):
        message = trust.signer.notification("{}")
        message[field] = marker
        if field != "TopicArn":
            message["TopicArn"] = ALLOWED_TOPIC
        assert trust.sns(message).status_code == 403
    # Then no log line quotes any of it
    assert "ATTACKER" not in caplog.text


# --- early events, bounded and expiring ------------------------------------------------------------


def test_early_events_are_applied_after_a_batch_send_records_the_message_id(
    trust: Trust, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from dispatcher.sending.delivery import deliver_many

    from .test_provider_http_sms import TOKEN as GATEWAY_TOKEN
    from .test_provider_http_sms import Gateway

    gateway = Gateway()
    thread = threading.Thread(target=gateway.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        trust.rt.settings = trust.rt.settings.model_copy(
            update={"sms_provider": "http", "sms_gateway_url": gateway.url, "sms_gateway_token": GATEWAY_TOKEN}
        )
        ids = [d.id for d in trust.sms[:3]]
        # Given receipts that arrive before the batch that sends them has recorded anything (the gateway
        # numbers its messages gw-0001, gw-0002, ...)
        early = trust.receipt([{"id": f"gw-{n:04d}", "status": "delivered"} for n in (1, 2, 3)])
        assert early.text == "pending, pending, pending"
        assert all(trust.status(d) is Status.QUEUED for d in trust.sms[:3])
        # When one batch sends the three
        result = deliver_many(trust.rt, ids)
        assert result.error is None
        # Then the waiting receipts were applied at the batch's end
        assert [trust.status(d) for d in trust.sms[:3]] == [Status.DELIVERED] * 3
    finally:
        gateway.shutdown()
        gateway.server_close()
        thread.join(5)


def test_waiting_events_are_bounded_oldest_dropped(trust: Trust) -> None:
    from dispatcher.feedback.apply import PendingLimits, apply_pending, receive
    from dispatcher.feedback.events import Kind, ProviderEvent

    ledger = trust.rt.ledger
    limits = PendingLimits(max_count=3, max_age=timedelta(days=1))
    # Given five early events (sends not recorded yet), kept under a bound of three
    for n in range(5):
        event = ProviderEvent("http-gateway", "delivered", Kind.DELIVERED, f"gw-{n}", datetime.now(UTC))
        assert receive(ledger, event, pending=limits).outcome == "pending"
    # Then only the three newest wait
    assert sorted(row["message_id"] for row in ledger.pending_events()) == ["gw-2", "gw-3", "gw-4"]
    # And when the sends of the oldest and of a kept one are recorded, only the kept one is applied
    old = mark_sent(trust.rt, trust.sms[0].id, "http", "gw-0")
    kept = mark_sent(trust.rt, trust.sms[1].id, "http", "gw-3")
    assert apply_pending(ledger, pending=limits) == 1
    assert (trust.status(old), trust.status(kept)) == (Status.SENT, Status.DELIVERED)


def test_expired_waiting_events_are_never_applied(trust: Trust) -> None:
    from dispatcher.core import clock
    from dispatcher.feedback.apply import PendingLimits, apply_pending, receive
    from dispatcher.feedback.events import Kind, ProviderEvent

    ledger = trust.rt.ledger
    limits = PendingLimits(max_count=100, max_age=timedelta(hours=1))
    # Given an early event received two hours ago
    clock.start_at(datetime.now(UTC) - timedelta(hours=2))
    stale = ProviderEvent("http-gateway", "failed", Kind.UNDELIVERABLE, "gw-old", datetime.now(UTC))
    assert receive(ledger, stale, pending=limits).outcome == "pending"
    clock.start_at(None)
    # When its send is recorded now (and another early event is kept, which prunes)
    d = mark_sent(trust.rt, trust.sms[0].id, "http", "gw-old")
    assert apply_pending(ledger, pending=limits) == 0
    fresh = ProviderEvent("http-gateway", "delivered", Kind.DELIVERED, "gw-new", datetime.now(UTC))
    assert receive(ledger, fresh, pending=limits).outcome == "pending"
    # Then the expired event was never applied, and it no longer waits
    assert trust.status(d) is Status.SENT
    assert [row["message_id"] for row in ledger.pending_events()] == ["gw-new"]


# --- no provider free text in the ledger --------------------------------------------------------------


def test_only_codes_are_kept_never_provider_free_text(trust: Trust) -> None:
    from sqlalchemy import select

    from dispatcher.ledger.schema import provider_events, transitions

    # Given an e-mail sent through SES
    d = mark_sent(trust.rt, trust.email[0].id, "ses", "ses-1")
    url = f"{d.receipt_url.removeprefix('https://')}"
    # When its hard bounce's diagnostic text echoes the receipt URL (without scheme) and the address
    record = json.loads(ses("ses_bounce_permanent", d, "ses-1"))
    record["bounce"]["bouncedRecipients"][0]["diagnosticCode"] = f"smtp; 550 5.1.1 <{d.contact}> {url} mailbox-gone"
    assert trust.sns(trust.signer.notification(json.dumps(record))).status_code == 200
    # Then the delivery bounced with the codes kept ...
    got = trust.rt.ledger.get(d.id)
    assert got is not None and got.status is Status.BOUNCED and "5.1.1" in (got.reason or "")
    # ... and the free text is nowhere in the ledger's text columns
    with trust.rt.ledger.read() as conn:
        kept = [str(v) for row in conn.execute(select(provider_events)) for v in row]
        kept += [str(v) for row in conn.execute(select(transitions)) for v in row]
    kept += [got.reason or "", got.provider_code or ""]
    assert not any(url in text or d.contact in text or "mailbox-gone" in text for text in kept)
