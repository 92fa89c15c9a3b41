"""Automatic fallback (campaign key ``fallback = true``): a refused or hard-bounced message whose row has the
other contact goes once on the other channel, through the normal send path; never twice, never to a
suppressed contact, never an SMS longer than the campaign allows, never after send-by."""

from __future__ import annotations

import csv
import json
from datetime import timedelta

from dispatcher.core import clock
from dispatcher.core.states import Channel, Status
from dispatcher.feedback.apply import receive
from dispatcher.feedback.events import parse_record
from dispatcher.operations.report import write_report
from dispatcher.sending.delivery import deliver
from dispatcher.sending.fallback import fall_back
from dispatcher.sending.sweep import sweep

from .contacts_support import SmtpServer, enqueue, fallback_campaign, row, sms_sent, smtp, srt
from .feedback_helpers import event_json

__all__ = ["smtp", "srt"]


def test_a_refused_email_with_a_phone_falls_back_to_exactly_one_sms(srt, smtp: SmtpServer, tmp_path) -> None:
    # Given a fallback campaign and an address the mail server refuses (550 5.1.1), with a phone on the row
    smtp.mailbox.refuse.add("gone@example.jp")
    people = [row("R", email="gone@example.jp", phone="090-1111-2222"), row("OK", email="ok@example.jp")]
    ids = enqueue(srt, fallback_campaign(tmp_path, "fb"), people)
    for delivery_id in ids.values():
        deliver(srt, delivery_id)
    failed = srt.ledger.get(ids["R"])
    assert failed.status is Status.FAILED and failed.fallback_due_at is not None
    # When the fallback runs (twice, as a duplicate actor message would) and the SMS is delivered twice over
    queued: list[int] = []
    assert fall_back(srt, ids["R"], queued.extend) == "queued"
    assert fall_back(srt, ids["R"], queued.extend) == "not owed"
    for delivery_id in queued * 2:
        deliver(srt, delivery_id)
    sweep(srt, lambda ids: None)
    # Then exactly one SMS went to the phone, and the e-mail was tried once
    assert [s["to"] for s in sms_sent(srt)] == ["+819011112222"]
    assert smtp.mailbox.refused == ["gone@example.jp"] and smtp.mailbox.to("ok@example.jp") == 1
    now = srt.ledger.get(ids["R"])
    assert now.channel is Channel.SMS and now.status is Status.SENT and now.fallback_at is not None
    # The status counts it under its current channel, moved in the same transaction
    assert srt.ledger.counts("fb") == {("sms", "sent"): 1, ("email", "sent"): 1}
    assert srt.ledger.counts("fb") == srt.ledger.count_rows("fb")
    history = srt.ledger.history(now.id)
    assert [(h["from_status"], h["to_status"], h["actor"]) for h in history if h["actor"] == "fallback"] == [
        ("failed", "queued", "fallback")
    ]
    # And the report shows both channels with their evidence
    report = tmp_path / "report.csv"
    write_report(srt.ledger, "fb", report)
    with report.open(encoding="utf-8-sig") as fh:
        out = {r["user_id"]: r for r in csv.DictReader(fh)}
    assert out["R"]["channel"] == "sms" and out["R"]["status"] == "sent" and out["R"]["notified"] == "yes"
    assert out["R"]["first_channel"] == "email" and out["R"]["first_status"] == "failed"
    assert out["R"]["fallback_at"] and out["OK"]["first_channel"] == ""


def test_without_the_key_nothing_falls_back(srt, smtp: SmtpServer, tmp_path) -> None:
    smtp.mailbox.refuse.add("gone@example.jp")
    ids = enqueue(
        srt,
        fallback_campaign(tmp_path, "nofb", fallback=False),
        [row("R", email="gone@example.jp", phone="09011112222")],
    )
    deliver(srt, ids["R"])
    assert fall_back(srt, ids["R"], None) == "not owed"
    sweep(srt, lambda ids: None)
    assert sms_sent(srt) == []
    d = srt.ledger.get(ids["R"])
    assert d.status is Status.FAILED and d.fallback_due_at is None
    assert all(h["actor"] != "fallback" for h in srt.ledger.history(d.id))


def test_no_fallback_to_a_suppressed_phone_or_an_sms_too_long(srt, smtp: SmtpServer, tmp_path) -> None:
    smtp.mailbox.refuse.update({"a@example.jp", "b@example.jp"})
    srt.ledger.suppress("+819011112222", Channel.SMS, "opted out", "test")
    people = [row("A", email="a@example.jp", phone="09011112222")]
    ids = enqueue(srt, fallback_campaign(tmp_path, "sup"), people)
    ids.update(
        enqueue(
            srt, fallback_campaign(tmp_path, "long", sms_max=20), [row("B", email="b@example.jp", phone="09033334444")]
        )
    )
    for delivery_id in ids.values():
        deliver(srt, delivery_id)
    sweep(srt, lambda ids: None)  # the sweep decides what is owed
    assert sms_sent(srt) == []
    a, b = srt.ledger.get(ids["A"]), srt.ledger.get(ids["B"])
    assert a.status is Status.FAILED and "no fallback: the sms contact is on the suppression list" in a.reason
    assert b.status is Status.FAILED and "the SMS would be" in b.reason and "allows 20" in b.reason
    notes = [h for h in srt.ledger.history(a.id) if h["actor"] == "fallback"]
    assert [(h["from_status"], h["to_status"]) for h in notes] == [("failed", "failed")]
    assert fall_back(srt, ids["A"], None) == "not owed"  # decided once


def test_no_fallback_after_send_by(srt, smtp: SmtpServer, tmp_path) -> None:
    smtp.mailbox.refuse.add("a@example.jp")
    ids = enqueue(srt, fallback_campaign(tmp_path, "late"), [row("A", email="a@example.jp", phone="09011112222")])
    deliver(srt, ids["A"])
    record = srt.ledger.campaign("late")
    clock.start_at(record.campaign.send_by + timedelta(minutes=1))
    try:
        assert fall_back(srt, ids["A"], None) == "no fallback: send_by has passed"
    finally:
        clock.start_at(None)
    assert srt.ledger.get(ids["A"]).status is Status.FAILED


def test_a_hard_bounce_falls_back_once_and_the_sms_failing_too_does_not_bounce_back(rt, tmp_path, moto) -> None:
    # Given a fallback campaign sent through SES, whose message hard-bounces (an SES Permanent bounce)
    ids = enqueue(rt, fallback_campaign(tmp_path, "hb"), [row("H", email="h@example.jp", phone="090-5555-6666")])
    deliver(rt, ids["H"])
    sent = rt.ledger.get(ids["H"])
    receive(rt.ledger, parse_record(json.loads(event_json("ses_bounce_permanent", sent)))[0])
    assert rt.ledger.get(ids["H"]).fallback_due_at is not None
    # When the sweep runs (the event path leaves the fallback to it) and the SMS goes through SNS on moto
    queued: list[int] = []
    result = sweep(rt, queued.extend)
    assert result.fallbacks == 1 and queued == [ids["H"]]
    deliver(rt, ids["H"])
    assert [s["phone_number"] for s in moto.sent_sms()] == ["+819055556666"]
    d = rt.ledger.get(ids["H"])
    assert d.channel is Channel.SMS and d.first_status == "bounced" and d.first_provider_message_id
    # And a permanent failure of the SMS does not fall back again
    rt.ledger.move(d.id, Status.FAILED, actor="test", values={"fallback_due_at": clock.now()})
    assert fall_back(rt, d.id, queued.extend) == "not owed"
    assert len(moto.sent_sms()) == 1


def test_an_sms_that_fails_for_good_falls_back_to_one_email(srt, smtp: SmtpServer, tmp_path) -> None:
    # Given an SMS-first fallback campaign whose SMS went through End User Messaging
    campaign = fallback_campaign(tmp_path, "smsfirst", prefer="sms")
    ids = enqueue(srt, campaign, [row("P", email="p@example.jp", phone="090-2222-3333")])
    srt.ledger.claim(ids["P"])
    srt.ledger.move(
        ids["P"], Status.SENT, actor="worker", values={"provider": "sms-voice-v2", "provider_message_id": "sms-mid-1"}
    )
    sent = srt.ledger.get(ids["P"])
    assert sent.channel is Channel.SMS
    # When the carrier reports it unreachable (a permanent SMS failure)
    applied = receive(srt.ledger, parse_record(json.loads(event_json("sms_text_carrier_unreachable", sent)))[0])
    assert applied.outcome == "moved:failed"
    # Then the sweep queues it once by e-mail, and exactly one e-mail goes
    queued: list[int] = []
    assert sweep(srt, queued.extend).fallbacks == 1
    for delivery_id in queued * 2:
        deliver(srt, delivery_id)
    assert sweep(srt, queued.extend).fallbacks == 0
    assert smtp.mailbox.to("p@example.jp") == 1
    now = srt.ledger.get(ids["P"])
    assert now.channel is Channel.EMAIL and now.status is Status.SENT and now.first_status == "failed"
    assert srt.ledger.counts("smsfirst") == {("email", "sent"): 1}
