"""Redemptions and reminders through the installed command with a real worker pool (SPEC §9, second wave).

Real Redis, `dispatcher worker` processes, the outbox providers, SQLite and PostgreSQL ledgers: the
acceptance scenario of the reminders issue, and a kill -9 of the pool in the middle of a reminder run.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from dispatcher.ledger import Ledger

from .chaos import WorkerPool, check_outbox_against_ledger, counts, outbox_messages, run, settled, wait_until
from .helpers import person_rows, write_campaign, write_csv

pytestmark = pytest.mark.slow

TEMPLATE = "compensation-reminder"


def status(cmd: list[str], campaign_id: str) -> dict:
    result = run(cmd, "status", campaign_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def reminders_by_user(ledger: Ledger, reminder_id: str, outbox: Path) -> dict[str, int]:
    """Reminder messages the outbox got, per user id."""
    messages = outbox_messages(outbox, reminder_id)
    users = {d.id: d.user_id for d in ledger.iter_campaign(reminder_id)}
    found: dict[str, int] = {}
    for delivery_id, n in messages.items():
        found[users[delivery_id]] = found.get(users[delivery_id], 0) + n
    return found


@pytest.mark.parametrize("ledger_url", ["sqlite", "postgresql"], indirect=True)
def test_acceptance_one_reminder_for_each_unredeemed_none_for_the_redeemed(
    tmp_path, redis_url, ledger_url, dispatcher_cmd, monkeypatch
) -> None:
    monkeypatch.setenv("DISPATCHER_SWEEP_INTERVAL_SECONDS", "1")
    cmd = dispatcher_cmd
    outbox = tmp_path / "var" / "outbox"
    # Given a campaign of 12 (4 by SMS, 8 by e-mail), sent by a real worker pool
    campaign = write_campaign(tmp_path, "acc")
    rows = person_rows(12)
    assert run(cmd, "enqueue", str(campaign), str(write_csv(tmp_path / "list.csv", rows))).returncode == 0
    ledger = Ledger(ledger_url)
    with WorkerPool(cmd, tmp_path / "worker.log", 1, 4) as pool:
        sent = wait_until(ledger, "acc", lambda c: c.get("sent") == 12, 120)
        assert sent == {"sent": 12}, pool.log()[-3000:]

        # When the receipt site's list names 5 of them (times with and without offsets, one without a time)
        # and 2 unknown ids
        redeemed = [r["user_id"] for r in rows[:5]]
        lines = [
            {"user_id": redeemed[0], "redeemed_at": "2023-05-01T10:00:00+09:00"},
            {"user_id": redeemed[1], "redeemed_at": "2023-05-02 11:30"},
            {"user_id": "NOBODY1", "redeemed_at": ""},
            {"user_id": redeemed[2], "redeemed_at": ""},
            {"user_id": redeemed[3], "redeemed_at": "2023-05-03T01:00:00Z"},
            {"user_id": "NOBODY2", "redeemed_at": "2023-05-03T01:00:00Z"},
            {"user_id": redeemed[4], "redeemed_at": "2023-05-04"},
        ]
        listing = write_csv(tmp_path / "redeemed.csv", lines, encoding="cp932")
        rejects = tmp_path / "redeemed.rejects.csv"
        first = run(cmd, "redeemed", "acc", str(listing), "--rejects", str(rejects))
        # Then exit 3 and the 2 unknown ids in the rejects file, with their row and a reason
        assert first.returncode == 3, first.stdout + first.stderr
        with rejects.open(encoding="utf-8-sig", newline="") as fh:
            rejected = list(csv.DictReader(fh))
        assert [(r["user_id"], r["row"]) for r in rejected] == [("NOBODY1", "4"), ("NOBODY2", "7")]
        assert all(r["reason"].startswith("user_id:") for r in rejected)
        assert status(cmd, "acc")["redeemed"] == 5
        # And the same file again changes nothing
        again = run(cmd, "redeemed", "acc", str(listing), "--rejects", str(rejects))
        assert again.returncode == 3
        assert status(cmd, "acc")["redeemed"] == 5
        assert ledger.redemptions_of("acc", redeemed[:1])[redeemed[0]].isoformat() == "2023-05-01T01:00:00+00:00"

        # When the operator looks first (dry run): 7 would be reminded and nothing is sent
        dry = run(cmd, "remind", "acc", "--template", TEMPLATE, "--dry-run")
        assert dry.returncode == 0, dry.stdout + dry.stderr
        assert "would queue 7 reminders (email 4, sms 3)" in " ".join(dry.stdout.split()), dry.stdout
        assert ledger.campaign("acc~" + TEMPLATE, fresh=True) is None
        assert status(cmd, "acc")["reminders"] == {}

        # When the campaign is paused, the reminders queued, one more person redeems, and it is resumed
        assert run(cmd, "pause", "acc").returncode == 0
        queued = run(cmd, "remind", "acc", "--template", TEMPLATE, "--yes")
        assert queued.returncode == 0, queued.stdout + queued.stderr
        assert "queued 7 reminders" in " ".join(queued.stdout.split()), queued.stdout
        child = "acc~" + TEMPLATE
        time.sleep(2)  # a paused run sends nothing, whatever the sweeps do
        assert counts(ledger, child) == {"queued": 7}
        late = rows[5]["user_id"]
        write_csv(tmp_path / "late.csv", [{"user_id": late}])
        assert run(cmd, "redeemed", "acc", str(tmp_path / "late.csv")).returncode == 0
        assert run(cmd, "resume", "acc").returncode == 0
        final = wait_until(ledger, child, settled, 120)
    # Then exactly one reminder for each of the 6 unredeemed, none for the 6 who redeemed
    assert final == {"sent": 6, "cancelled": 1}, final
    got = reminders_by_user(ledger, child, outbox)
    unredeemed = {r["user_id"] for r in rows[6:]}
    assert got == dict.fromkeys(unredeemed, 1), got
    late_delivery = next(d for d in ledger.iter_campaign(child) if d.user_id == late)
    assert (late_delivery.status.value, late_delivery.reason) == ("cancelled", "redeemed")
    check_outbox_against_ledger(ledger, child, outbox)
    # And a second `remind` queues and sends nothing
    second = run(cmd, "remind", "acc", "--template", TEMPLATE, "--yes")
    assert second.returncode == 0 and "queue 0 reminders" in " ".join(second.stdout.split()), second.stdout
    assert counts(ledger, child) == {"sent": 6, "cancelled": 1}
    # And status shows the reminders and redeemed = 6; the parent's own counts are untouched
    shown = status(cmd, "acc")
    assert shown["redeemed"] == 6
    assert shown["reminders"] == {TEMPLATE: {"cancelled": 1, "sent": 6}}
    assert shown["total"] == 12 and shown["by_status"] == {"sent": 12}
    table = " ".join(run(cmd, "status", "acc").stdout.split())
    assert "redeemed on the receipt site: 6 (50.0%)" in table and f"reminders ({TEMPLATE}):" in table
    # And the reminder is the reminder template, in Japanese, with the person's URL
    from email import message_from_bytes, policy

    from dispatcher.providers.outbox import _safe

    eml = message_from_bytes(next((outbox / "email" / _safe(child)).glob("*.eml")).read_bytes(), policy=policy.default)
    assert "まだ受け取られていません" in str(eml["Subject"])
    body = eml.get_body(("plain",)).get_content()
    assert "receive.example.jp/r/tok" in body and "0120-479-249" in body and "2023年" not in str(eml["Subject"])
    # And the report has the redemption and the reminder's state per person
    report = tmp_path / "report.csv"
    assert run(cmd, "report", "acc", "--out", str(report)).returncode == 0
    with report.open(encoding="utf-8-sig", newline="") as fh:
        by_user = {r["user_id"]: r for r in csv.DictReader(fh)}
    assert by_user[redeemed[0]]["redeemed_at"] == "2023-05-01T10:00:00+09:00"
    assert by_user[redeemed[0]][f"reminder_{TEMPLATE}_status"] == ""
    assert by_user[late][f"reminder_{TEMPLATE}_status"] == "cancelled"
    assert by_user[rows[11]["user_id"]][f"reminder_{TEMPLATE}_status"] == "sent"
    ledger.dispose()


def test_killing_the_pool_mid_reminder_run_reminds_nobody_twice(
    tmp_path, redis_url, dispatcher_cmd, monkeypatch
) -> None:

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
    monkeypatch.setenv("DISPATCHER_STALE_SENDING_SECONDS", "8")
    monkeypatch.setenv("DISPATCHER_SWEEP_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("DISPATCHER_RATE_MAX_WAIT_SECONDS", "2")
    cmd = dispatcher_cmd
    outbox = tmp_path / "var" / "outbox"
    n = 300
    # Given a campaign of 300 people all reached, paced so that the reminders take about 15 s
    campaign = write_campaign(tmp_path, "k")
    assert run(cmd, "enqueue", str(campaign), str(write_csv(tmp_path / "k.csv", person_rows(n)))).returncode == 0
    ledger = Ledger(url)
    with WorkerPool(cmd, tmp_path / "first.log", 2, 4) as pool:
        assert wait_until(ledger, "k", lambda c: c.get("sent") == n, 180) == {"sent": n}, pool.log()[-2000:]
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "15")
    monkeypatch.setenv("DISPATCHER_SMS_RATE", "15")
    assert run(cmd, "remind", "k", "--template", TEMPLATE, "--yes").returncode == 0
    child = "k~" + TEMPLATE
    # When the pool sending the reminders is killed with -9 twice mid-run
    with WorkerPool(cmd, tmp_path / "worker.log", 2, 4) as pool:
        kills = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            now = counts(ledger, child)
            if settled(now):
                break
            done = now.get("sent", 0)
            if kills < 2 and done > (kills + 1) * n // 4 and pool.kill_one(2, min_age=4):
                kills += 1
            time.sleep(0.25)
        time.sleep(2)
        final = counts(ledger, child)
    # Then the run settles, every reminder sent or (killed around the call) unknown, nobody twice
    assert kills == 2, pool.log()[-3000:]
    assert settled(final) and set(final) <= {"sent", "unknown"} and sum(final.values()) == n, final
    check_outbox_against_ledger(ledger, child, outbox)
    assert final.get("unknown", 0) <= 4 * kills
    # And running remind again adds nobody (the unknown ones are not reminded a second time)
    assert "queue 0 reminders" in " ".join(run(cmd, "remind", "k", "--template", TEMPLATE, "--yes").stdout.split())
    ledger.dispose()
