"""Provider feedback: SES and SMS events through SQS (moto), duplicates, order, suppression, SNS signatures."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from datetime import UTC, datetime

import boto3
import pytest

from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.feedback.apply import receive
from dispatcher.feedback.events import Kind, parse_record

from .feedback_helpers import event_json, send_campaign, sns_envelope
from .helpers import person_rows


@pytest.mark.parametrize(
    "name,kind",
    [
        ("ses_send", Kind.SENT),
        ("ses_delivery", Kind.DELIVERED),
        ("ses_bounce_permanent", Kind.HARD_BOUNCE),
        ("ses_bounce_transient", Kind.SOFT_BOUNCE),
        ("ses_complaint", Kind.COMPLAINT),
        ("ses_reject", Kind.REJECTED),
        ("ses_delivery_delay", Kind.DELAYED),
        ("ses_rendering_failure", Kind.REJECTED),
        ("ses_notification_bounce", Kind.HARD_BOUNCE),
        ("sms_text_delivered", Kind.DELIVERED),
        ("sms_text_blocked", Kind.REJECTED),
        ("sms_text_carrier_unreachable", Kind.UNDELIVERABLE),
        ("sms_text_ttl_expired", Kind.UNDELIVERABLE),
        ("sms_text_something_new", Kind.UNKNOWN),
    ],
)
def test_every_fixture_maps_to_a_kind(name, kind) -> None:
    from dispatcher.core.states import Channel
    from dispatcher.ledger.store import Delivery

    d = Delivery(
        7,
        "c",
        "u",
        2,
        Channel.EMAIL,
        "a@example.jp",
        "a@example.jp",
        None,
        "",
        "https://x/y",
        {},
        Status.SENT,
        1,
        0,
        None,
        "ses",
        "m-1",
        None,
        None,
        None,
        None,
        None,
    )
    [event] = parse_record(json.loads(event_json(name, d)))
    assert event.kind is kind
    assert event.message_id == "m-1"
    # identity notifications carry no tags; everything else echoes our reference
    assert event.reference == (None if name == "ses_notification_bounce" else "7.1")


def test_events_with_duplicates_and_out_of_order_settle_right(rt, tmp_path) -> None:
    # Given four people who got an e-mail through SES
    d1, d2, d3, d4 = send_campaign(rt, tmp_path, person_rows(4, sms_every=100))
    assert {d.status for d in (d1, d2, d3, d4)} == {Status.SENT}
    ledger = rt.ledger
    # When events arrive duplicated and out of order
    for name, d in [
        ("ses_delivery", d1),
        ("ses_send", d1),
        ("ses_delivery", d1),  # Send after Delivery
        ("ses_bounce_permanent", d2),
        ("ses_delivery", d2),  # stale Delivery
        ("ses_delivery", d3),
        ("ses_complaint", d3),  # complaint after delivery
        ("ses_delivery_delay", d4),
        ("ses_bounce_transient", d4),
    ]:
        receive(ledger, parse_record(json.loads(event_json(name, d)))[0], rt.breaker)
    # Then the final states are right, and duplicates changed nothing
    state = {d.user_id: ledger.get(d.id) for d in (d1, d2, d3, d4)}
    assert state[d1.user_id].status is Status.DELIVERED
    assert state[d2.user_id].status is Status.BOUNCED
    assert state[d3.user_id].status is Status.COMPLAINED
    assert state[d4.user_id].status is Status.BOUNCED
    assert [h["to_status"] for h in ledger.history(d1.id)].count("delivered") == 1
    # And the hard bounce and the complaint are on the suppression list, the soft bounce is not
    assert ledger.is_suppressed(d2.contact) == "hard bounce"
    assert ledger.is_suppressed(d3.contact) == "complaint"
    assert ledger.is_suppressed(d4.contact) is None
    # And the reason keeps the codes (the enhanced status 5.1.1), never the MTA's free text
    assert "5.1.1" in state[d2.user_id].reason and "user unknown" not in state[d2.user_id].reason


def test_an_event_before_its_send_is_kept_and_applied_later(rt, tmp_path) -> None:
    from dispatcher.feedback.apply import apply_pending

    [d] = send_campaign(rt, tmp_path, person_rows(1, sms_every=100))
    # An event for a message the ledger does not know yet (its send is still being recorded)
    early = parse_record(json.loads(event_json("ses_delivery", d, message_id="not-yet-known")))[0]
    assert receive(rt.ledger, early).outcome == "pending"
    assert rt.ledger.get(d.id).status is Status.SENT
    # When the send of that message is recorded, the waiting event applies
    rt.ledger.note_message_id(d.id, "ses", "not-yet-known")
    rt.ledger.move(d.id, Status.SENT, actor="test", values={"provider_message_id": "not-yet-known"})
    with rt.ledger.write() as conn:
        from sqlalchemy import update

        from dispatcher.ledger.schema import deliveries

        conn.execute(update(deliveries).where(deliveries.c.id == d.id).values(provider_message_id="not-yet-known"))
    assert apply_pending(rt.ledger) == 1
    assert rt.ledger.get(d.id).status is Status.DELIVERED


def test_an_event_proves_a_send_whose_answer_was_lost(rt, tmp_path) -> None:
    [d] = send_campaign(rt, tmp_path, person_rows(1, sms_every=100))
    # Given a delivery whose provider answer was lost: unknown, no message id
    with rt.ledger.write() as conn:
        from sqlalchemy import update

        from dispatcher.ledger.schema import deliveries, provider_messages

        conn.execute(
            update(deliveries).where(deliveries.c.id == d.id).values(status="unknown", provider_message_id=None)
        )
        conn.execute(provider_messages.delete())
    lost = rt.ledger.get(d.id)
    # When SES reports the delivery, tagged with our reference
    event = parse_record(json.loads(event_json("ses_delivery", lost, message_id="ses-real-id")))[0]
    assert receive(rt.ledger, event).outcome == "moved:delivered"
    settled = rt.ledger.get(d.id)
    assert settled.status is Status.DELIVERED and settled.provider_message_id == "ses-real-id"


def test_events_command_drains_sqs(rt, tmp_path, dispatcher_cmd, monkeypatch) -> None:
    # Given SES events wrapped in SNS notifications on an SQS queue, one of them garbage
    people = send_campaign(rt, tmp_path, person_rows(3, sms_every=100))
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="ses-events")["QueueUrl"]
    delivered = sns_envelope(event_json("ses_delivery", people[0]))
    bodies = [
        delivered,
        delivered,  # SNS delivers at least once: the same notification twice
        event_json("ses_bounce_permanent", people[1]),  # raw message delivery
        sns_envelope(event_json("ses_complaint", people[2])),
        "this is not json",
    ]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    monkeypatch.setenv("DISPATCHER_FEEDBACK_QUEUE_URL", url)
    # When the consumer drains it
    result = subprocess.run(
        [*dispatcher_cmd, "events", "--once"], capture_output=True, text=True, env=os.environ.copy(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    # Then every message was applied or recorded, then deleted
    assert [rt.ledger.get(d.id).status for d in people] == [Status.DELIVERED, Status.BOUNCED, Status.COMPLAINED]
    assert "duplicates 1" in result.stdout and "not understood 1" in result.stdout
    left = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )
    assert all(v == "0" for v in left["Attributes"].values())
    for d in people:
        assert d.contact not in result.stdout + result.stderr


def test_suppression_stops_a_second_campaign(rt, tmp_path, moto) -> None:
    # Given a hard bounce and a complaint in a first campaign
    first = send_campaign(rt, tmp_path, person_rows(3, sms_every=100), "first")
    receive(rt.ledger, parse_record(json.loads(event_json("ses_bounce_permanent", first[0])))[0])
    receive(rt.ledger, parse_record(json.loads(event_json("ses_complaint", first[1])))[0])
    sent_before = len(moto.sent_emails())
    # When a second campaign lists the same people
    second = send_campaign(rt, tmp_path, person_rows(3, sms_every=100), "second")
    # Then the bounced and complaining addresses are suppressed, the third person is sent to
    assert [d.status for d in second] == [Status.SUPPRESSED, Status.SUPPRESSED, Status.SENT]
    assert len(moto.sent_emails()) == sent_before + 1


def _signed(message: dict, key, cert_name: str) -> dict:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from dispatcher.feedback.sns import string_to_sign

    message = {
        **message,
        "SignatureVersion": "2",
        "SigningCertURL": f"https://sns.ap-northeast-1.amazonaws.com/{cert_name}",
    }
    signature = key.sign(string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
    return {**message, "Signature": base64.b64encode(signature).decode()}


@pytest.fixture
def sns_cert(tmp_path, monkeypatch):
    from .sns_signing import make_signer

    folder = tmp_path / "certs"
    made = make_signer(folder)
    key, cert_name = made.key, made.cert_name
    monkeypatch.setenv("DISPATCHER_SNS_CERTIFICATE_DIR", str(folder))
    return key, cert_name


def test_signed_sns_notification_is_applied_and_a_forged_one_refused(rt, tmp_path, sns_cert, monkeypatch) -> None:
    from dispatcher import runtime
    from dispatcher.feedback.http import handle_sns

    key, cert_name = sns_cert
    monkeypatch.setenv("DISPATCHER_SNS_TOPIC_ARNS", "arn:aws:sns:ap-northeast-1:1:ses")
    runtime.use(type(rt)(load_settings()))
    [d] = send_campaign(runtime.current(), tmp_path, person_rows(1, sms_every=100))
    message = {
        "Type": "Notification",
        "MessageId": "m-1",
        "TopicArn": "arn:aws:sns:ap-northeast-1:1:ses",
        "Message": event_json("ses_bounce_permanent", d),
        "Timestamp": datetime.now(UTC).isoformat(),
    }
    # A forged message (signed by someone else's key / tampered) changes nothing
    tampered = _signed(message, key, cert_name)
    tampered["Message"] = event_json("ses_complaint", d)
    assert handle_sns(json.dumps(tampered).encode(), {})[0] == 403
    unsigned = {
        **message,
        "SignatureVersion": "2",
        "Signature": "",
        "SigningCertURL": f"https://sns.ap-northeast-1.amazonaws.com/{cert_name}",
    }
    assert handle_sns(json.dumps(unsigned).encode(), {})[0] == 403
    evil_cert = _signed(message, key, cert_name)
    evil_cert["SigningCertURL"] = "https://evil.example.com/cert.pem"
    assert handle_sns(json.dumps(evil_cert).encode(), {})[0] == 403
    assert handle_sns(b"not json", {})[0] == 400
    assert runtime.current().ledger.get(d.id).status is Status.SENT
    # The genuine one is applied, once
    genuine = json.dumps(_signed(message, key, cert_name)).encode()
    assert handle_sns(genuine, {}) == (200, "moved:bounced")
    assert handle_sns(genuine, {}) == (200, "duplicate")
    assert runtime.current().ledger.get(d.id).status is Status.BOUNCED
    runtime.current().close()
