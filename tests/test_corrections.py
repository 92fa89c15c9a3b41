"""The call centre's corrections list (`enqueue … --update-contacts`, `dispatcher.update_contacts`)."""

from __future__ import annotations

import csv

import pytest

from dispatcher.core.states import Channel, Status
from dispatcher.operations.corrections import update_contacts
from dispatcher.sending.delivery import deliver

from .contacts_support import SmtpServer, enqueue, fallback_campaign, row, sms_sent, smtp, srt
from .helpers import write_csv

__all__ = ["smtp", "srt"]


def test_a_corrections_file_resends_a_refused_person_once_and_leaves_a_sent_one_alone(
    srt, smtp: SmtpServer, tmp_path
) -> None:
    # Given a campaign where one address is refused, one person was sent, one is still waiting
    smtp.mailbox.refuse.add("gone@example.jp")
    campaign = fallback_campaign(tmp_path, "cor", fallback=False)
    people = [
        row("REF", email="gone@example.jp"),
        row("SENT", email="sent@example.jp"),
        row("WAIT", email="wait@example.jp"),
        row("SAME", email="same@example.jp"),
    ]
    ids = enqueue(srt, campaign, people)
    for user in ("REF", "SENT", "SAME"):
        deliver(srt, ids[user])
    assert srt.ledger.get(ids["REF"]).status is Status.FAILED
    # When the call centre's corrections list is applied (no receipt_url column: the ledger keeps it)
    corrections = [
        {"user_id": "REF", "email": "back@example.jp", "phone": ""},
        {"user_id": "SENT", "email": "sent2@example.jp", "phone": ""},
        {"user_id": "WAIT", "email": "", "phone": "090-7777-8888"},
        {"user_id": "SAME", "email": "same@example.jp", "phone": ""},
        {"user_id": "NOBODY", "email": "x@example.jp", "phone": ""},
        {"user_id": "REF", "email": "again@example.jp", "phone": ""},
    ]
    path = write_csv(tmp_path / "corrections.csv", corrections)
    queued: list[int] = []
    result = update_contacts(srt, campaign, path, queued.extend)
    # Then the refused person is queued again on the new address, the waiting one re-addressed (to SMS),
    # the sent one listed, the unknown id and the duplicate row rejected
    assert result.requeued == ["REF"] and result.readdressed == ["WAIT"]
    assert result.left == [("SENT", "sent")] and result.unchanged == 1
    assert [(r.row, r.reason) for r in result.rejects] == [
        (6, "user_id: not in campaign 'cor'"),
        (7, "user_id: duplicate of row 2"),
    ]
    with (tmp_path / "corrections.rejects.csv").open(encoding="utf-8-sig") as fh:
        rejects = list(csv.DictReader(fh))
    assert [(r["user_id"], r["row"]) for r in rejects] == [("NOBODY", "6"), ("REF", "7")]
    assert srt.ledger.counts("cor") == srt.ledger.count_rows("cor")
    assert srt.ledger.counts("cor")[("sms", "queued")] == 1
    for delivery_id in queued * 2:
        deliver(srt, delivery_id)
    # Exactly one message to the new address, nothing more to the refused or the sent one
    assert smtp.mailbox.to("back@example.jp") == 1
    assert smtp.mailbox.to("sent@example.jp") == 1 and smtp.mailbox.to("sent2@example.jp") == 0
    assert smtp.mailbox.refused == ["gone@example.jp"]
    assert [s["to"] for s in sms_sent(srt)] == ["+819077778888"] and smtp.mailbox.to("wait@example.jp") == 0
    wait = srt.ledger.get(ids["WAIT"])
    assert wait.channel is Channel.SMS and wait.status is Status.SENT
    # Each change is a transition by the corrections file, contacts masked
    ref = [h for h in srt.ledger.history(ids["REF"]) if h["actor"] == "corrections:corrections.csv"]
    assert [(h["from_status"], h["to_status"]) for h in ref] == [("failed", "queued")]
    assert "go***@example.jp -> ba***@example.jp" in ref[0]["detail"]
    # And the same file again changes nothing
    before = {user: srt.ledger.history(i) for user, i in ids.items()}
    again = update_contacts(srt, campaign, path, queued.extend)
    assert again.requeued == [] and again.readdressed == [] and again.unchanged == 3
    assert {user: srt.ledger.history(i) for user, i in ids.items()} == before


def test_a_bad_contact_is_a_rejected_row_and_a_missing_column_a_usage_error(srt, tmp_path) -> None:
    from dispatcher.core.errors import InputError

    campaign = fallback_campaign(tmp_path, "badc", fallback=False)
    ids = enqueue(srt, campaign, [row("A", email="a@example.jp")])
    result = update_contacts(
        srt, campaign, [{"user_id": "A", "email": "not-an-address", "phone": ""}], None, rejects_path=tmp_path / "r.csv"
    )
    assert result.rejected == 1 and result.rejects[0].reason.startswith("email:")
    assert srt.ledger.get(ids["A"]).contact == "a@example.jp"
    with pytest.raises(InputError, match="email"):
        update_contacts(srt, campaign, [{"user_id": "A", "name": "x"}], None)


def test_the_python_api_is_exported(srt, tmp_path) -> None:
    import dispatcher

    campaign = fallback_campaign(tmp_path, "api", fallback=False)
    ids = enqueue(srt, campaign, [row("A", email="a@example.jp")])
    sent: list[int] = []
    result = dispatcher.update_contacts(
        campaign, [{"user_id": "A", "email": "b@example.jp"}], settings=srt.settings, dispatch=sent.extend
    )
    assert result.readdressed == ["A"] and sent == [ids["A"]]
    assert srt.ledger.get(ids["A"]).contact == "b@example.jp"
