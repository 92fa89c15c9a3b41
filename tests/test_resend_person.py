"""One-person resend (`resend CAMPAIGN --user ID`): to a corrected contact, exactly once, audited; the one
ledger operation behind it (re-address and requeue) on SQLite and PostgreSQL, through a real SMTP server."""

from __future__ import annotations

import json

import pytest

from dispatcher.core.errors import InputError
from dispatcher.core.states import Channel, Status
from dispatcher.feedback.apply import receive
from dispatcher.feedback.events import parse_record
from dispatcher.operations.person_resend import Refused, plan_person_resend, resend_person
from dispatcher.sending.delivery import _AfterBatch, _deliver, deliver
from dispatcher.sending.sweep import sweep

from .contacts_support import SmtpServer, enqueue, fallback_campaign, row, sms_sent, smtp, srt
from .feedback_helpers import event_json

__all__ = ["smtp", "srt"]


def test_a_resend_to_a_new_address_sends_exactly_one_message_there_and_nothing_more_to_the_old(
    srt, smtp: SmtpServer, tmp_path
) -> None:
    # Given a person whose message was sent (the call centre hears "it never arrived")
    ids = enqueue(srt, fallback_campaign(tmp_path, "rp", fallback=False), [row("U1", email="old@example.jp")])
    deliver(srt, ids["U1"])
    assert smtp.mailbox.to("old@example.jp") == 1
    # When the operator resends to the corrected address
    dispatched: list[int] = []
    done = resend_person(
        srt,
        "rp",
        "U1",
        dispatched.extend,
        reason="never arrived; typo in address",
        email="new.addr@example.jp",
        who="operator:tanaka",
    )
    assert done.done and dispatched == [ids["U1"]]
    for delivery_id in dispatched * 2:  # a duplicate broker message changes nothing
        deliver(srt, delivery_id)
    # Then exactly one message went to the new address and nothing more to the old one
    assert smtp.mailbox.to("new.addr@example.jp") == 1
    assert smtp.mailbox.to("old@example.jp") == 1
    d = srt.ledger.get(ids["U1"])
    assert d.status is Status.SENT and d.contact == "new.addr@example.jp" and d.email == "new.addr@example.jp"
    assert srt.ledger.counts("rp") == {("email", "sent"): 1}
    # And the history names the operator and the reason, with the contacts masked
    move = [h for h in srt.ledger.history(d.id) if h["actor"] == "operator:tanaka"]
    assert [(h["from_status"], h["to_status"]) for h in move] == [("sent", "queued")]
    assert "never arrived; typo in address" in move[0]["detail"]
    assert "ol***@example.jp -> ne***@example.jp" in move[0]["detail"]
    assert "old@" not in move[0]["detail"] and "new.addr" not in move[0]["detail"]


def test_a_phone_for_an_email_person_switches_to_sms_and_moves_the_count(srt, tmp_path) -> None:
    ids = enqueue(srt, fallback_campaign(tmp_path, "sw", fallback=False), [row("U1", email="a@example.jp")])
    deliver(srt, ids["U1"])
    resend_person(srt, "sw", "U1", None, reason="email blocked", phone="０９０－１２３４－５６７８", who="operator:x")
    # The count moved to the SMS channel in the same transaction as the move
    assert srt.ledger.counts("sw") == {("sms", "queued"): 1}
    assert srt.ledger.counts("sw") == srt.ledger.count_rows("sw")
    sweep(srt, lambda ids: None)  # nothing lost: the sweep finds it (no broker message was put)
    deliver(srt, ids["U1"])
    assert [s["to"] for s in sms_sent(srt)] == ["+819012345678"]
    d = srt.ledger.get(ids["U1"])
    assert d.channel is Channel.SMS and d.status is Status.SENT and d.first_channel == "email"


def test_invalid_or_too_long_is_a_usage_error_and_changes_nothing(srt, tmp_path) -> None:
    ids = enqueue(
        srt, fallback_campaign(tmp_path, "bad", fallback=False, sms_max=20), [row("U1", email="a@example.jp")]
    )
    deliver(srt, ids["U1"])
    with pytest.raises(InputError, match="email"):
        resend_person(srt, "bad", "U1", None, reason="x", email="invalid", who="operator:x")
    with pytest.raises(InputError, match="phone"):
        resend_person(srt, "bad", "U1", None, reason="x", phone="03-5244-9370", who="operator:x")
    # An SMS longer than the campaign allows is refused now, not at send time
    with pytest.raises(InputError, match="the campaign allows 20"):
        resend_person(srt, "bad", "U1", None, reason="x", phone="090-1234-5678", who="operator:x")
    with pytest.raises(InputError, match="reason"):
        resend_person(srt, "bad", "U1", None, reason="  ", who="operator:x")
    assert srt.ledger.get(ids["U1"]).status is Status.SENT
    assert srt.ledger.counts("bad") == {("email", "sent"): 1}


def test_refusals_complained_in_flight_suppressed_unknown_user(srt, tmp_path) -> None:
    people = [row("C", email="c@example.jp"), row("S", email="s@example.jp"), row("F", email="f@example.jp")]
    ids = enqueue(srt, fallback_campaign(tmp_path, "ref", fallback=False), people)
    for user in ("C", "S"):
        deliver(srt, ids[user])
    srt.ledger.move(ids["C"], Status.COMPLAINED, actor="test")
    srt.ledger.claim(ids["F"])  # a worker has it: in flight
    with pytest.raises(Refused, match="complained"):
        resend_person(srt, "ref", "C", None, reason="x", email="c2@example.jp", who="operator:x")
    with pytest.raises(Refused, match="sending"):
        resend_person(srt, "ref", "F", None, reason="x", who="operator:x")
    with pytest.raises(Refused, match="no person"):
        plan_person_resend(srt, "ref", "NOBODY")
    # A suppressed contact: only with a new contact, and never to a suppressed new one
    srt.ledger.suppress("s@example.jp", Channel.EMAIL, "hard bounce", "test")
    with pytest.raises(Refused, match="suppressed"):
        resend_person(srt, "ref", "S", None, reason="x", who="operator:x")
    srt.ledger.suppress("bad@example.jp", Channel.EMAIL, "complaint", "test")
    with pytest.raises(Refused, match="suppression list"):
        resend_person(srt, "ref", "S", None, reason="x", email="bad@example.jp", who="operator:x")
    resend_person(srt, "ref", "S", None, reason="moved house", email="s2@example.jp", who="operator:x")
    assert srt.ledger.get(ids["S"]).status is Status.QUEUED
    assert srt.ledger.counts("ref") == srt.ledger.count_rows("ref")


def test_a_queued_person_is_re_addressed_and_a_worker_holding_the_old_copy_sends_to_the_new_contact(
    srt, smtp: SmtpServer, tmp_path
) -> None:
    ids = enqueue(srt, fallback_campaign(tmp_path, "q", fallback=False), [row("U1", email="old@example.jp")])
    # Given a worker that read the delivery for sending (same channel, before its claim)
    found = srt.ledger.for_send_many([ids["U1"]])
    # When the call centre's correction lands before the claim
    resend_person(srt, "q", "U1", None, reason="correction", email="new@example.jp", who="operator:x")
    _deliver(srt, ids["U1"], found[ids["U1"]], _AfterBatch())
    deliver(srt, ids["U1"])
    # Then the one message went to the new contact only
    assert smtp.mailbox.to("new@example.jp") == 1 and smtp.mailbox.to("old@example.jp") == 0
    assert srt.ledger.counts("q") == {("email", "sent"): 1}


def test_killed_between_the_ledger_and_the_broker_still_sends_once(srt, smtp: SmtpServer, tmp_path) -> None:
    ids = enqueue(srt, fallback_campaign(tmp_path, "k", fallback=False), [row("U1", email="a@example.jp")])
    deliver(srt, ids["U1"])

    def killed(_ids: list[int]) -> None:
        raise SystemExit("killed before the broker message")

    with pytest.raises(SystemExit):
        resend_person(srt, "k", "U1", killed, reason="never arrived", who="operator:x")
    assert srt.ledger.get(ids["U1"]).status is Status.QUEUED  # the ledger transaction was whole
    recovered: list[int] = []
    sweep(srt, recovered.extend, everything=False, queue_empty=False)
    assert recovered == [ids["U1"]]
    for delivery_id in recovered * 2:
        deliver(srt, delivery_id)
    assert smtp.mailbox.to("a@example.jp") == 2  # the first send and exactly one more


def test_automatic_processing_cannot_resend_a_sent_delivery(srt, tmp_path) -> None:
    ids = enqueue(srt, fallback_campaign(tmp_path, "auto", fallback=False), [row("U1", email="a@example.jp")])
    deliver(srt, ids["U1"])
    assert srt.ledger.move(ids["U1"], Status.QUEUED, actor="worker") is None
    assert srt.ledger.get(ids["U1"]).status is Status.SENT
    assert srt.ledger.move(ids["U1"], Status.QUEUED, actor="operator:x", operator=True) is not None


def test_a_late_event_for_the_old_attempt_does_not_move_the_new_one(rt, tmp_path, moto) -> None:
    # Given a person sent through SES whose resend to a new address has been sent
    ids = enqueue(rt, fallback_campaign(tmp_path, "late", fallback=False), [row("U1", email="old@example.jp")])
    deliver(rt, ids["U1"])
    old = rt.ledger.get(ids["U1"])
    resend_person(rt, "late", "U1", None, reason="never arrived", email="new@example.jp", who="operator:x")
    # While it waits, the old attempt's delivery report does not settle it
    outcome = receive(rt.ledger, parse_record(json.loads(event_json("ses_delivery", old)))[0])
    assert outcome.outcome.startswith(("recorded", "ignored")), outcome
    assert rt.ledger.get(ids["U1"]).status is Status.QUEUED
    deliver(rt, ids["U1"])
    # When the old address's hard bounce arrives late
    outcome = receive(rt.ledger, parse_record(json.loads(event_json("ses_bounce_permanent", old)))[0])
    # Then it is recorded against the earlier attempt and the new attempt stays sent
    assert outcome.outcome == "recorded: concerns an earlier attempt"
    now = rt.ledger.get(ids["U1"])
    assert now.status is Status.SENT and now.contact == "new@example.jp"
    assert rt.ledger.is_suppressed("new@example.jp") is None


def test_re_addressing_a_waiting_person_again_and_again_keeps_the_counts(srt, tmp_path) -> None:
    # A queued → queued move touches the same (channel, state) counter twice; with 16 shards, 40 moves would
    # pick one shard for both more than nine times in ten if the shards were drawn independently.
    ids = enqueue(srt, fallback_campaign(tmp_path, "again", fallback=False), [row("U1", email="a0@example.jp")])
    for i in range(1, 41):
        resend_person(srt, "again", "U1", None, reason="correction", email=f"a{i}@example.jp", who="operator:x")
    assert srt.ledger.counts("again") == {("email", "queued"): 1} == srt.ledger.count_rows("again")
    assert srt.ledger.get(ids["U1"]).contact == "a40@example.jp"


def test_a_contact_typed_into_the_reason_is_masked_in_the_trail(srt, tmp_path) -> None:
    ids = enqueue(srt, fallback_campaign(tmp_path, "why", fallback=False), [row("U1", email="a@example.jp")])
    deliver(srt, ids["U1"])
    resend_person(srt, "why", "U1", None, reason="new address is hanako.new@docomo.ne.jp, 090-8765-4321", who="op")
    detail = srt.ledger.history(ids["U1"])[-1]["detail"]
    assert "hanako.new@docomo.ne.jp" not in detail and "8765-4321" not in detail and "new address is" in detail
