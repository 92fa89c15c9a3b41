"""Operators: pause/resume/cancel, resend (also via SMS), report, and recovery from a lost broker."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time

import pytest
import redis

from dispatcher.core.states import Channel, Status
from dispatcher.feedback.apply import receive
from dispatcher.feedback.events import parse_record
from dispatcher.operations import control as operations
from dispatcher.operations.report import write_report
from dispatcher.sending.delivery import deliver

from .feedback_helpers import event_json, send_campaign
from .helpers import person_rows, write_campaign, write_csv


def test_paused_campaign_sends_nothing_until_resumed(rt, tmp_path, moto) -> None:
    from dispatcher.intake.enqueue import enqueue_campaign

    campaign = write_campaign(tmp_path, "p")
    enqueue_campaign(
        campaign, person_rows(5, sms_every=100), settings=rt.settings, ledger=rt.ledger, dispatch=lambda ids: None
    )
    ids = rt.ledger.in_status("p", [Status.QUEUED])
    operations.pause(rt, "p", who="test")
    for d in ids:
        deliver(rt, d)
    assert moto.sent_emails() == []
    assert rt.ledger.counts("p") == {("email", "queued"): 5}
    dispatched: list[int] = []
    result = operations.resume(rt, "p", dispatched.extend, who="test")
    assert result.affected == 5 and sorted(dispatched) == sorted(ids)
    for d in dispatched:
        deliver(rt, d)
    assert rt.ledger.counts("p") == {("email", "sent"): 5}
    assert len(moto.sent_emails()) == 5


def test_cancel_marks_the_unsent_cancelled(rt, tmp_path) -> None:
    from dispatcher.intake.enqueue import enqueue_campaign

    enqueue_campaign(
        write_campaign(tmp_path, "c"),
        person_rows(4, sms_every=100),
        settings=rt.settings,
        ledger=rt.ledger,
        dispatch=lambda ids: None,
    )
    first = rt.ledger.in_status("c", [Status.QUEUED])[0]
    deliver(rt, first)
    result = operations.cancel(rt, "c", who="test")
    assert result.affected == 3
    assert rt.ledger.counts("c") == {("email", "sent"): 1, ("email", "cancelled"): 3}


def test_resend_bounced_via_sms_reaches_the_person_once(rt, tmp_path, moto) -> None:
    # Given people with both contacts, reached by e-mail; one hard-bounces, one is delivered
    rows = person_rows(3, sms_every=100)
    for i, row in enumerate(rows):
        row["phone"] = f"0901234{i:04d}"
    bounced, delivered, plain = send_campaign(rt, tmp_path, rows, "r")
    receive(rt.ledger, parse_record(json.loads(event_json("ses_bounce_permanent", bounced)))[0])
    receive(rt.ledger, parse_record(json.loads(event_json("ses_delivery", delivered)))[0])
    # When the operator resends bounced deliveries via SMS (dry run first)
    preview = operations.resend(
        rt, "r", None, statuses=[Status.BOUNCED, Status.DELIVERED], via=Channel.SMS, dry_run=True
    )
    assert preview.requeued == [bounced.id] and preview.by_channel == {"sms": 1}
    assert rt.ledger.get(bounced.id).status is Status.BOUNCED  # a dry run changes nothing
    dispatched: list[int] = []
    done = operations.resend(rt, "r", dispatched.extend, statuses=[Status.BOUNCED, Status.DELIVERED], via=Channel.SMS)
    for d in dispatched:
        deliver(rt, d)
        deliver(rt, d)  # a duplicate broker message changes nothing
    # Then exactly one SMS went to the bounced person's phone, nothing to the delivered one
    assert done.requeued == [bounced.id]
    sms = moto.sent_sms()
    assert [s["phone_number"] for s in sms] == ["+819012340000"]
    now = rt.ledger.get(bounced.id)
    assert now.status is Status.SENT and now.channel is Channel.SMS
    # And the report tells both attempts apart: the person is notified by SMS
    report = tmp_path / "report.csv"
    write_report(rt.ledger, "r", report)
    with report.open(encoding="utf-8-sig") as fh:
        rows_out = {r["user_id"]: r for r in csv.DictReader(fh)}
    assert rows_out[bounced.user_id]["channel"] == "sms"
    assert rows_out[bounced.user_id]["contact"] == "090-****-0000"
    assert rows_out[delivered.user_id]["notified"] == "yes"
    assert rows_out[plain.user_id]["status"] == "sent"
    # The bounced address stays suppressed: resending it by e-mail is refused
    again = operations.resend(
        rt, "r", None, statuses=[Status.SENT], channel=Channel.EMAIL, via=Channel.EMAIL, dry_run=True
    )
    assert bounced.id not in again.requeued


def test_report_accounts_for_every_input_row(tmp_path, redis_url, dispatcher_cmd, monkeypatch) -> None:
    # Given a list with good and bad rows, enqueued and sent through the outbox
    rows = person_rows(12)
    rows[3]["receipt_url"] = "http://receive.example.jp/r/x"
    rows[7]["email"] = "broken"
    recipients = write_csv(tmp_path / "list.csv", rows)
    campaign = write_campaign(tmp_path, "rep")
    env = os.environ.copy()
    run = [*dispatcher_cmd]
    assert (
        subprocess.run(
            [*run, "enqueue", str(campaign), str(recipients)], env=env, capture_output=True, timeout=60
        ).returncode
        == 3
    )
    worker = subprocess.Popen(
        [*run, "worker", "-p", "1", "-t", "4"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(120):
            status = json.loads(
                subprocess.run(
                    [*run, "status", "rep", "--json"], env=env, capture_output=True, text=True, timeout=60
                ).stdout
            )
            if status["by_status"].get("sent") == 10:
                break
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(30)
    out = tmp_path / "report.csv"
    result = subprocess.run(
        [*run, "report", "rep", "--out", str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    with out.open(encoding="utf-8-sig") as fh:
        reported = list(csv.DictReader(fh))
    with (tmp_path / "list.rejects.csv").open(encoding="utf-8-sig") as fh:
        rejected = list(csv.DictReader(fh))
    # Then every person of the input is either in the report or in the rejects file, once
    ids = sorted([r["user_id"] for r in reported] + [r["user_id"] for r in rejected])
    assert ids == sorted(r["user_id"] for r in rows)
    assert {r["notified"] for r in reported} == {"yes"}
    text = out.read_text(encoding="utf-8-sig")
    assert "receive.example.jp/r/" not in text and "@example.jp" not in text.replace("***@example.jp", "")
    assert "rejected at import 2" in result.stdout


@pytest.mark.slow
def test_flushing_redis_mid_campaign_loses_no_one(tmp_path, redis_url, dispatcher_cmd, monkeypatch) -> None:
    # Given 150 e-mails sent at 30/s by a worker
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "30")
    recipients = write_csv(tmp_path / "list.csv", person_rows(150, sms_every=1000))
    campaign = write_campaign(tmp_path, "flush")
    env = os.environ.copy()
    assert (
        subprocess.run(
            [*dispatcher_cmd, "enqueue", str(campaign), str(recipients)], env=env, capture_output=True, timeout=60
        ).returncode
        == 0
    )
    worker = subprocess.Popen(
        [*dispatcher_cmd, "worker", "-p", "1", "-t", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        time.sleep(2.5)
        # When Redis loses everything mid-campaign
        redis.Redis.from_url(redis_url).flushdb()
        time.sleep(1)
        # Then a sweep finds the lost work in the ledger
        swept = subprocess.run([*dispatcher_cmd, "sweep"], env=env, capture_output=True, text=True, timeout=60)
        assert "re-enqueued" in swept.stdout
        status = {}
        for _ in range(120):
            status = json.loads(
                subprocess.run(
                    [*dispatcher_cmd, "status", "flush", "--json"], env=env, capture_output=True, text=True, timeout=60
                ).stdout
            )
            if status["by_status"].get("sent") == 150:
                break
            time.sleep(0.5)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    assert status["by_status"] == {"sent": 150}
    # And nobody got two messages
    outbox = list((tmp_path / "var" / "outbox" / "email" / "flush").glob("*.eml"))
    assert len(outbox) == 150
    assert len({p.name.split(".")[0] for p in outbox}) == 150


@pytest.mark.slow
def test_worker_pool_survives_a_killed_process_and_never_double_sends(
    tmp_path, redis_url, dispatcher_cmd, monkeypatch
) -> None:
    import psutil

    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "40")
    monkeypatch.setenv("DISPATCHER_STALE_SENDING_SECONDS", "10")
    monkeypatch.setenv("DISPATCHER_SWEEP_INTERVAL_SECONDS", "2")
    recipients = write_csv(tmp_path / "list.csv", person_rows(200, sms_every=1000))
    campaign = write_campaign(tmp_path, "kill")
    env = os.environ.copy()
    subprocess.run(
        [*dispatcher_cmd, "enqueue", str(campaign), str(recipients)], env=env, capture_output=True, timeout=60
    )
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [*dispatcher_cmd, "worker", "-p", "2", "-t", "4"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(3)
        # When one Dramatiq worker process is killed with -9
        children = [
            p for p in psutil.Process(worker.pid).children(recursive=True) if "dramatiq" in " ".join(p.cmdline())
        ]
        victims = [p for p in children if p.parent() and p.parent().pid != worker.pid]
        assert victims, "no worker process found"
        victims[0].kill()
        status = {}
        for _ in range(240):
            status = json.loads(
                subprocess.run(
                    [*dispatcher_cmd, "status", "kill", "--json"], env=env, capture_output=True, text=True, timeout=60
                ).stdout
            )
            pending = sum(n for s, n in status["by_status"].items() if s in ("queued", "retrying", "sending"))
            if pending == 0:
                break
            time.sleep(0.5)
        # Then the supervisor restarted the pool and everyone is settled
        for _ in range(60):
            if "restarting" in (tmp_path / "worker.log").read_text():
                break
            time.sleep(0.5)
        assert worker.poll() is None, "dispatcher worker itself must keep running"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    assert set(status["by_status"]) <= {"sent", "unknown"}
    assert status["by_status"].get("unknown", 0) <= 4  # at most the killed process's in-flight sends
    outbox = list((tmp_path / "var" / "outbox" / "email" / "kill").glob("*.eml"))
    assert len({p.name.split(".")[0] for p in outbox}) == len(outbox)  # one file per delivery: no double send
    assert "restarting" in (tmp_path / "worker.log").read_text()
