"""Redemptions in and reminder runs out, on real ledgers (SQLite and PostgreSQL), real Redis and the
outbox providers, through the plain functions the commands and the worker call."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import dispatcher
from dispatcher.core.errors import ConfigError, DispatcherError
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel, Status
from dispatcher.operations import control
from dispatcher.operations.remind import remind
from dispatcher.runtime import Runtime
from dispatcher.sending.delivery import deliver, deliver_many

from .chaos import outbox_messages
from .feedback_helpers import send_campaign

TEMPLATE = "compensation-reminder"


@pytest.fixture
def outbox_rt(ledger_url: str, redis_url: str):
    runtime = Runtime(load_settings())
    yield runtime
    runtime.close()


def rows(n: int, sms_every: int = 3) -> list[dict[str, str]]:
    from .helpers import person_rows

    return person_rows(n, sms_every=sms_every)


def test_redemptions_are_idempotent_fill_a_missing_time_and_reject_what_they_cannot_place(outbox_rt, tmp_path) -> None:
    rt = outbox_rt
    people = send_campaign(rt, tmp_path, rows(4), "rd")
    u = [d.user_id for d in people]
    # Given a list with a person without a time, one with a time, an unknown id, a bad and a future time
    given = [
        {"user_id": u[0], "redeemed_at": ""},
        {"user_id": u[1], "redeemed_at": "2023-05-10T12:00:00"},
        {"user_id": "U999999", "redeemed_at": ""},
        {"user_id": u[2], "redeemed_at": "yesterday"},
        {"user_id": u[3], "redeemed_at": "2999-01-01T00:00:00+09:00"},
    ]
    # When a script records it through the Python API
    result = dispatcher.record_redemptions("rd", given, ledger=rt.ledger, actor="script:test")
    # Then 2 are recorded and 3 rows rejected, each naming the field at fault, with its row number
    assert (result.rows, result.recorded, result.rejected) == (5, 2, 3)
    assert [(r.row, r.reason.split(":")[0]) for r in result.rejects] == [
        (4, "user_id"),
        (5, "redeemed_at"),
        (6, "redeemed_at"),
    ]
    times = rt.ledger.redemptions_of("rd", u)
    assert times[u[1]].isoformat() == "2023-05-10T03:00:00+00:00"  # a time without an offset is JST
    assert rt.ledger.redeemed_count("rd") == 2
    # When the same rows come again: nothing changes
    again = dispatcher.record_redemptions("rd", given[:2], ledger=rt.ledger)
    assert (again.recorded, again.filled, again.already) == (0, 0, 2)
    # When a later list gives the time the first one lacked: it is filled in, once; a known time stays
    later = [
        {"user_id": u[0], "redeemed_at": "2023-05-11T09:00:00+09:00"},
        {"user_id": u[1], "redeemed_at": "2023-05-20"},
    ]
    filled = dispatcher.record_redemptions("rd", later, ledger=rt.ledger)
    assert (filled.recorded, filled.filled, filled.already) == (0, 1, 1)
    times = rt.ledger.redemptions_of("rd", u)
    assert times[u[0]].isoformat() == "2023-05-11T00:00:00+00:00"
    assert times[u[1]].isoformat() == "2023-05-10T03:00:00+00:00"
    assert dispatcher.record_redemptions("rd", later, ledger=rt.ledger).filled == 0
    # And an unknown campaign is refused
    with pytest.raises(DispatcherError, match="no campaign 'nope'"):
        dispatcher.record_redemptions("nope", given, ledger=rt.ledger)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "cp932"])
def test_the_redeemed_command_reads_excel_files_and_writes_rejects(outbox_rt, tmp_path, encoding) -> None:
    from dispatcher.cli import cli

    rt = outbox_rt
    people = send_campaign(rt, tmp_path, rows(3), "rf")
    listing = tmp_path / "site.csv"
    text = f"user_id,redeemed_at,氏名\r\n{people[0].user_id},2023-05-01 10:00,山田\r\n=U-EVIL,,攻撃\r\n"
    listing.write_bytes(text.encode(encoding))
    runner = CliRunner()
    result = runner.invoke(cli, ["redeemed", "rf", str(listing)])
    assert result.exit_code == 3, result.output
    with (tmp_path / "site.rejects.csv").open(encoding="utf-8-sig", newline="") as fh:
        rejected = list(csv.DictReader(fh))
    assert rejected == [
        {
            "user_id": "'=U-EVIL",
            "redeemed_at": "",
            "氏名": "攻撃",
            "row": "3",
            "reason": "user_id: not in this campaign",
        }
    ]
    assert rt.ledger.redeemed_count("rf") == 1
    assert runner.invoke(cli, ["redeemed", "nope", str(listing)]).exit_code == 1
    assert runner.invoke(cli, ["redeemed", "rf", str(tmp_path / "missing.csv")]).exit_code == 2
    data = json.loads(runner.invoke(cli, ["status", "rf", "--json"]).output)
    assert data["redeemed"] == 1 and data["reminders"] == {}


def test_a_reminder_run_takes_the_notified_unredeemed_unsuppressed_only(outbox_rt, tmp_path) -> None:
    rt = outbox_rt
    # Given 8 people sent their message; then one bounces, one complains, one is delivered, one's contact
    # is suppressed, one redeems; and a ninth who was never sent (still queued)
    people = send_campaign(rt, tmp_path, rows(8), "sel")
    ledger = rt.ledger
    ledger.move(people[0].id, Status.BOUNCED, actor="event:test")
    ledger.move(people[1].id, Status.COMPLAINED, actor="event:test")
    ledger.move(people[2].id, Status.DELIVERED, actor="event:test")
    ledger.suppress(people[3].contact, people[3].channel, "opt-out", "test")
    dispatcher.record_redemptions("sel", [{"user_id": people[4].user_id}], ledger=ledger)
    from dispatcher.intake.enqueue import enqueue_campaign

    from .helpers import write_campaign

    enqueue_campaign(
        write_campaign(tmp_path, "sel"), [rows(9)[8]], settings=rt.settings, ledger=ledger, dispatch=lambda ids: None
    )
    eligible = {people[i].user_id for i in (2, 5, 6, 7)}
    # When the operator looks first
    preview = remind(rt, "sel", TEMPLATE, None, dry_run=True, who="operator:test")
    # Then the delivered and the sent-without-failure ones are counted, by channel, and nothing is made
    assert preview.queued == 4 and preview.by_channel == {"email": 2, "sms": 2}
    assert preview.sms_parts == 2
    assert ledger.campaign("sel~" + TEMPLATE, fresh=True) is None
    # When it runs for real
    dispatched: list[int] = []
    run = remind(rt, "sel", TEMPLATE, dispatched.extend, who="operator:test")
    child = ledger.campaign("sel~" + TEMPLATE, fresh=True)
    assert child is not None and (child.parent_id, child.purpose) == ("sel", f"reminder:{TEMPLATE}")
    assert child.campaign.template == TEMPLATE and child.campaign.send_by == ledger.campaign("sel").campaign.send_by
    assert "まだ受け取られていません" in child.templates["email_subject.txt"]
    made = list(ledger.iter_campaign("sel~" + TEMPLATE))
    assert {d.user_id for d in made} == eligible and sorted(dispatched) == sorted(d.id for d in made)
    by_user = {d.user_id: d for d in people}
    for d in made:  # the channel and contact that reached them, their URL and fields
        parent = by_user[d.user_id]
        assert (d.channel, d.contact, d.receipt_url, d.fields) == (
            parent.channel,
            parent.contact,
            parent.receipt_url,
            parent.fields,
        )
        assert d.status is Status.QUEUED and (d.sms_parts is not None) == (d.channel is Channel.SMS)
    assert ledger.history(made[0].id)[0]["actor"] == "operator:test"
    assert run.queued == 4 and run.created
    # And a second run adds nobody; the campaign lists do not show the reminder run
    assert remind(rt, "sel", TEMPLATE, dispatched.extend).queued == 0
    assert ledger.campaign_ids() == ["sel"]
    assert "sel~" + TEMPLATE in ledger.campaign_ids(include_reminders=True)
    # And a reminder of a reminder run, or an id over 64 characters, is refused
    with pytest.raises(DispatcherError, match="itself a reminder run"):
        remind(rt, "sel~" + TEMPLATE, TEMPLATE, None)
    with pytest.raises(ConfigError, match="64 characters"):
        remind(rt, "sel", "x" * 64, None)


def test_a_redemption_that_arrives_mid_run_stops_that_reminder(outbox_rt, tmp_path) -> None:
    rt = outbox_rt
    send_campaign(rt, tmp_path, rows(6), "mid")
    remind(rt, "mid", TEMPLATE, None)
    child = "mid~" + TEMPLATE
    ids = rt.ledger.in_status(child, [Status.QUEUED])
    # When the first half is sent, then one person of the second half redeems, then the rest is sent in a batch
    deliver_many(rt, ids[:3])
    late = rt.ledger.get(ids[4])
    dispatcher.record_redemptions("mid", [{"user_id": late.user_id}], ledger=rt.ledger)
    result = deliver_many(rt, ids[3:])
    # Then that person's reminder is cancelled as redeemed and never reaches the provider; the others go
    assert result.outcomes[late.id].status is Status.CANCELLED
    after = rt.ledger.get(late.id)
    assert (after.status, after.reason) == (Status.CANCELLED, "redeemed")
    assert rt.ledger.history(late.id)[-1]["detail"] == "redeemed"
    sent = outbox_messages(Path(rt.settings.outbox_path), child)
    assert set(sent) == set(ids) - {late.id} and set(sent.values()) == {1}
    assert rt.ledger.counts(child) == {("email", "sent"): 3, ("sms", "sent"): 2, ("email", "cancelled"): 1}


def test_pause_resume_and_cancel_of_a_campaign_carry_to_its_reminder_runs(outbox_rt, tmp_path) -> None:
    from dispatcher.cli import cli

    rt = outbox_rt
    send_campaign(rt, tmp_path, rows(4), "pr")
    control.pause(rt, "pr", who="operator:test")
    # When reminders are queued while the campaign is paused
    dispatched: list[int] = []
    run = remind(rt, "pr", TEMPLATE, dispatched.extend, who="operator:test")
    child = "pr~" + TEMPLATE
    # Then the run is made paused, nothing is handed to the broker, and a worker sends nothing
    assert run.state == "paused" and dispatched == []
    ids = rt.ledger.in_status(child, [Status.QUEUED])
    assert len(ids) == 4
    for i in ids:
        deliver(rt, i)
    assert outbox_messages(Path(rt.settings.outbox_path), child) == {}
    # And plan counts the queued reminders with the campaign's own (nothing left) work
    planned = json.loads(CliRunner().invoke(cli, ["plan", "pr", "--json"]).output)
    assert sum(c["remaining"] for c in planned["channels"]) == 4
    # When the campaign is resumed, its reminders are handed to the broker and go
    control.resume(rt, "pr", dispatched.extend, who="operator:test")
    assert rt.ledger.campaign(child, fresh=True).state == "active"
    assert set(ids) <= set(dispatched)
    deliver(rt, ids[0])
    assert rt.ledger.get(ids[0]).status is Status.SENT
    # When the campaign is paused again and then cancelled, the run is too, and its unsent are cancelled
    control.pause(rt, "pr", who="operator:test")
    assert rt.ledger.campaign(child, fresh=True).state == "paused"
    result = control.cancel(rt, "pr", who="operator:test")
    assert rt.ledger.campaign(child, fresh=True).state == "cancelled" and result.affected == 3
    with pytest.raises(DispatcherError, match="cancelled"):
        remind(rt, "pr", TEMPLATE, None)


def test_an_sms_over_the_limit_is_listed_at_remind_time_and_not_queued(outbox_rt, tmp_path) -> None:
    rt = outbox_rt
    send_campaign(rt, tmp_path, rows(6), "long")
    folder = tmp_path / "mine" / "long-reminder"
    folder.mkdir(parents=True)
    for name in ("email_subject.txt", "email_body.txt"):
        (folder / name).write_text((Path(__file__).parents[1] / "templates" / TEMPLATE / name).read_text("utf-8"))
    (folder / "sms.txt").write_text("未受取のポイントがあります。" * 8 + "{{ receipt_url }}", encoding="utf-8")
    preview = remind(rt, "long", "long-reminder", None, dry_run=True, templates_dir=tmp_path / "mine")
    assert preview.too_long_count == 2 and [u for u, _ in preview.too_long] == ["U000003", "U000006"]
    assert all(length > 134 for _, length in preview.too_long)
    run = remind(rt, "long", "long-reminder", None, templates_dir=tmp_path / "mine")
    assert run.queued == 4 and run.by_channel == {"email": 4, "sms": 0}
    assert {d.channel for d in rt.ledger.iter_campaign("long~long-reminder")} == {Channel.EMAIL}


def test_the_remind_command_shows_the_cost_asks_before_queuing_and_names_an_unknown_campaign(
    outbox_rt, tmp_path, monkeypatch
) -> None:
    from dispatcher import broker
    from dispatcher.cli import cli

    rt = outbox_rt
    send_campaign(rt, tmp_path, rows(6), "cmd")
    monkeypatch.setenv("DISPATCHER_SMS_PRICE_PER_PART", "8.5")
    runner = CliRunner()
    # A dry run: per channel, SMS parts and their cost; nothing made
    dry = runner.invoke(cli, ["remind", "cmd", "--template", TEMPLATE, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would queue 6 reminders (email 4, sms 2); SMS parts 2" in " ".join(dry.output.split())
    assert "estimated SMS cost 17.00" in dry.output
    assert rt.ledger.campaign("cmd~" + TEMPLATE, fresh=True) is None
    # Without --yes and without a terminal to ask on: refused, nothing made
    broker._installed = None
    refused = runner.invoke(cli, ["remind", "cmd", "--template", TEMPLATE])
    assert refused.exit_code == 1 and "without --yes" in refused.output
    assert rt.ledger.campaign("cmd~" + TEMPLATE, fresh=True) is None
    # An unknown campaign: exit 1, as status and report; an unknown template: exit 2 (configuration)
    assert runner.invoke(cli, ["remind", "nope", "--template", TEMPLATE, "--yes"]).exit_code == 1
    missing = runner.invoke(cli, ["remind", "cmd", "--template", "no-such-template", "--yes"])
    assert missing.exit_code == 2 and "no-such-template" in missing.output
