"""Scheduled start (SPEC §9, second wave): campaign key ``send_from``. Nothing leaves before it, held work
waits in the ledger (not on the broker), ``plan`` counts from it, and everything goes out once after it.

Real Redis, real worker processes, SQLite and PostgreSQL ledgers; SES on moto behind the counting proxy for
the send-path unit tests, the outbox for the worker pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from dispatcher import broker
from dispatcher.core import clock
from dispatcher.core.campaign import campaign_to_dict, load_campaign, parse_campaign
from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.ledger import Ledger
from dispatcher.operations.plan import make_plan
from dispatcher.sending.delivery import deliver
from dispatcher.sending.sweep import sweep

from . import policy_support
from .faultproxy import FaultProxy
from .helpers import ROOT, person_rows, write_campaign, write_csv
from .policy_support import EMAIL_ONLY, MakeRuntime, contact, jst

proxy = policy_support.proxy
make_runtime = policy_support.make_runtime

TZ9 = timezone(timedelta(hours=9))
WEB = ROOT / "config" / "campaigns" / "regionpay-2023-web.toml"
APP = ROOT / "config" / "campaigns" / "regionpay-2023-app.toml"


def campaign_file(tmp_path: Path, campaign_id: str, send_from: str | None, **kw: str) -> Path:
    """A campaign file as ``write_campaign`` makes it, with ``send_from`` (top-level, before ``[text]``)."""
    path = write_campaign(tmp_path, campaign_id, **kw)
    text = path.read_text(encoding="utf-8")
    if send_from is not None:
        text = text.replace("[text]", f"send_from = {send_from}\n\n[text]", 1)
    path.write_text(text, encoding="utf-8")
    return path


def definition(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "c1",
        "name": "テスト",
        "template": "compensation",
        "deadline": datetime(2023, 5, 31, 23, 59, 59, tzinfo=TZ9),
        "send_by": datetime(2023, 5, 28, 20, 0, tzinfo=TZ9),
        "receipt_hosts": ["receive.example.jp"],
    }
    data.update(changes)
    return data


# the campaign file ------------------------------------------------------------------------------
def test_send_from_is_optional_and_kept_through_the_ledger_definition() -> None:
    assert parse_campaign(definition()).send_from is None
    start = datetime(2023, 5, 8, 9, 0, tzinfo=TZ9)
    campaign = parse_campaign(definition(send_from=start))
    assert campaign.send_from == start
    assert parse_campaign(campaign_to_dict(campaign)).send_from == start


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            datetime(2023, 5, 28, 20, 0, tzinfo=TZ9),
            r"'send_from' \(2023-05-28 20:00:00\+09:00\) must be before 'send_by'",
        ),
        (datetime(2023, 5, 29, 9, 0, tzinfo=TZ9), "'send_from' .* must be before 'send_by'"),
        (datetime(2023, 6, 1, 9, 0, tzinfo=TZ9), "'send_from' .* must be before 'deadline'"),
        (datetime(2023, 5, 8, 9, 0), "'send_from' needs a UTC offset"),
        ("2023-05-08T09:00:00+09:00", "'send_from' must be a TOML date-time"),
    ],
)
def test_a_bad_send_from_is_refused_with_the_key_named(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_campaign(definition(send_from=value), where="web.toml")
    assert str(caught.value).startswith("web.toml: ")


def test_a_bad_send_from_in_a_file_makes_enqueue_exit_2(tmp_path: Path, dispatcher_cmd: list[str]) -> None:
    path = campaign_file(tmp_path, "late", "2099-06-01T09:00:00+09:00")
    recipients = write_csv(tmp_path / "list.csv", person_rows(2))
    result = subprocess.run(
        [*dispatcher_cmd, "enqueue", str(path), str(recipients)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "send_from" in result.stderr and "deadline" in result.stderr


def test_the_shipped_campaigns_start_when_the_notice_says() -> None:
    web, app = load_campaign(WEB), load_campaign(APP)
    assert (web.id, web.name) == ("regionpay-2023-web", "地域クーポン補償（Web申請者）")
    # Web applicants: applications until 2023-04-30, URLs "from early May"; app users "from early April"
    assert web.send_from == datetime(2023, 5, 8, 9, 0, tzinfo=TZ9)
    assert app.send_from == datetime(2023, 4, 3, 9, 0, tzinfo=TZ9)
    for campaign in (web, app):
        assert campaign.deadline == datetime(2023, 5, 31, 23, 59, 59, tzinfo=TZ9)
        assert campaign.send_by == datetime(2023, 5, 28, 20, 0, tzinfo=TZ9)
        assert campaign.text["call_centre_phone"] == "0120-479-249"
    assert web.template == app.template == "compensation"


def test_check_passes_for_the_shipped_web_campaign_on_a_sample_list(tmp_path: Path, dispatcher_cmd: list[str]) -> None:
    # Given the first day's list of web applicants, checked on 2023-05-02 (before send_from)
    recipients = write_csv(tmp_path / "web-2023-05-02.csv", person_rows(30))
    env = {**os.environ, "DISPATCHER_CLOCK_START": "2023-05-02T10:00:00+09:00"}
    result = subprocess.run(
        [*dispatcher_cmd, "check", str(WEB), str(recipients), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    # Then every finding passes (the outbox providers only warn) and send_from is one of them
    assert result.returncode == 0, result.stdout + result.stderr
    findings = {f["check"]: f for f in json.loads(result.stdout)}
    assert {f["result"] for f in findings.values()} <= {"pass", "warn"}
    assert findings["recipients"]["result"] == "pass"
    assert findings["send_from"]["result"] == "pass"
    assert "2023-05-08 09:00 JST" in findings["send_from"]["reason"]
    # And the projected finish counts from send_from, not from the clock
    assert "2023-05-08 09:00 JST" in findings["deadline"]["reason"]


# plan -------------------------------------------------------------------------------------------
def test_plan_counts_the_finish_from_send_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "1")
    settings = load_settings()
    campaign = parse_campaign(definition(send_from=datetime(2023, 5, 8, 9, 0, tzinfo=TZ9)))
    pending = {"email": (3600, 0)}
    # Before send_from: an hour of work at 1/s ends an hour after send_from
    before = make_plan(campaign, pending, settings, jst(2023, 5, 2, 10, 0))
    assert before.finish == jst(2023, 5, 8, 10, 0)
    assert before.starts == jst(2023, 5, 8, 9, 0)
    assert before.as_dict()["send_from"] == "2023-05-08T09:00:00+09:00"
    assert before.as_dict()["starts"] == "2023-05-08T09:00:00+09:00"
    assert "held until send_from 2023-05-08 09:00 JST" in before.channels[0].note
    # After send_from: from now
    after = make_plan(campaign, pending, settings, jst(2023, 5, 9, 12, 0))
    assert after.finish == jst(2023, 5, 9, 13, 0)
    assert after.starts == jst(2023, 5, 9, 12, 0)


# held work waits in the ledger -------------------------------------------------------------------
def _enqueue(rt: Any, path: Path, rows: list[dict[str, str]], dispatched: list[int]) -> list[int]:
    result = enqueue_campaign(path, rows, settings=rt.settings, ledger=rt.ledger, dispatch=dispatched.extend)
    assert (result.accepted, result.rejected) == (len(rows), 0)
    return sorted(d.id for d in rt.ledger.iter_campaign(load_campaign(path).id))


def test_before_send_from_nothing_is_dispatched_claimed_or_sent(
    tmp_path: Path, make_runtime: MakeRuntime, proxy: FaultProxy, moto: Any
) -> None:
    # Given a campaign starting 2023-05-08 09:00 and a list enqueued on 2023-05-02
    rt = make_runtime()
    clock.start_at(jst(2023, 5, 2, 10, 0))
    path = campaign_file(tmp_path, "web", "2023-05-08T09:00:00+09:00", send_by="2023-05-28T20:00:00+09:00")
    rows = person_rows(4, sms_every=EMAIL_ONLY)
    dispatched: list[int] = []
    ids = _enqueue(rt, path, rows, dispatched)

    # Then nothing went to the broker: the deliveries wait in the ledger, queued until send_from
    assert dispatched == []
    for delivery_id in ids:
        held = rt.ledger.get(delivery_id)
        assert (held.status, held.attempts, held.not_before) == (Status.QUEUED, 0, jst(2023, 5, 8, 9, 0))
    # And a sweep a day later hands nothing over
    clock.start_at(jst(2023, 5, 3, 10, 0))
    swept: list[int] = []
    sweep(rt, swept.extend)
    assert swept == []

    # When a broker message comes early anyway (a duplicate, or one whose not_before a resend cleared)
    rt.ledger.retime_held("web", jst(2023, 5, 8, 9, 0), None)
    outcome = deliver(rt, ids[0])
    # Then the worker does not claim it and sends nothing: it goes back to wait in the ledger, no retry message
    assert (outcome.status, outcome.again_at) == (Status.QUEUED, None)
    back = rt.ledger.get(ids[0])
    assert (back.status, back.attempts, back.not_before) == (Status.QUEUED, 0, jst(2023, 5, 8, 9, 0))
    assert [h["to_status"] for h in rt.ledger.history(ids[0])] == ["queued"]
    assert proxy.attempt_counts() == Counter()
    assert moto.sent_emails() == []

    # When send_from comes, the sweep hands every held delivery over, and each is sent once
    clock.start_at(jst(2023, 5, 8, 9, 0, 1))
    sweep(rt, swept.extend, everything=False, queue_empty=False)
    assert sorted(swept) == ids
    for delivery_id in ids:
        assert deliver(rt, delivery_id).status is Status.SENT
        assert deliver(rt, delivery_id).status is Status.SENT  # a duplicate message changes nothing
    assert proxy.attempt_counts() == Counter({contact(r): 1 for r in rows})


def test_moving_send_from_and_enqueueing_again_moves_the_held_work(
    tmp_path: Path, make_runtime: MakeRuntime, proxy: FaultProxy
) -> None:
    # Given a list held for 2023-05-08 09:00
    rt = make_runtime()
    clock.start_at(jst(2023, 5, 2, 10, 0))
    path = campaign_file(tmp_path, "web", "2023-05-08T09:00:00+09:00")
    day1 = person_rows(3, sms_every=EMAIL_ONLY)
    dispatched: list[int] = []
    first = _enqueue(rt, path, day1, dispatched)

    # When the operator moves send_from later and enqueues the next day's list
    path = campaign_file(tmp_path, "web", "2023-05-10T09:00:00+09:00")
    day2 = person_rows(2, start=4, sms_every=EMAIL_ONLY)
    both = _enqueue(rt, path, day1 + day2, dispatched)
    # Then the old and the new people all wait for the new send_from, and nothing went to the broker
    assert dispatched == [] and set(first) < set(both) and len(both) == 5
    assert {rt.ledger.get(i).not_before for i in both} == {jst(2023, 5, 10, 9, 0)}
    # And a message that comes at the old time is held again, unsent
    clock.start_at(jst(2023, 5, 8, 9, 0, 5))
    assert deliver(rt, both[0]).status is Status.QUEUED
    assert proxy.attempt_counts() == Counter()

    # When the operator moves send_from earlier, to a time already passed, and enqueues again
    path = campaign_file(tmp_path, "web", "2023-05-08T09:00:00+09:00")
    _enqueue(rt, path, day2, dispatched)
    # Then everything is due at once and the next sweep hands it over
    swept: list[int] = []
    sweep(rt, swept.extend, everything=False, queue_empty=False)
    assert sorted(swept) == both


# the real worker pool -----------------------------------------------------------------------------
def _status(cmd: list[str], campaign: str) -> dict[str, Any]:
    done = subprocess.run([*cmd, "status", campaign, "--json"], capture_output=True, text=True, timeout=60)
    return dict(json.loads(done.stdout))


def _sent_files(tmp_path: Path, campaign: str) -> tuple[list[str], list[str]]:
    """References (``delivery.attempt``) of what the outbox holds: e-mail files and SMS lines."""
    outbox = tmp_path / "var" / "outbox"
    emails = [p.name.removesuffix(".eml") for p in (outbox / "email" / campaign).glob("*.eml")]
    sms_file = outbox / "sms.jsonl"
    lines = sms_file.read_text(encoding="utf-8").splitlines() if sms_file.exists() else []
    return emails, [json.loads(line)["reference"] for line in lines]


@pytest.mark.slow
def test_a_worker_pool_sends_nothing_before_send_from_and_everything_once_after(
    tmp_path: Path, redis_url: str, ledger_url: str, dispatcher_cmd: list[str]
) -> None:
    # Given a running worker pool with the default sweep interval (30 s: longer than the wait below, so the
    # sweeper must wake for send_from by itself)
    env = os.environ.copy()
    log_path = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [*dispatcher_cmd, "worker", "-p", "1", "-t", "4"],
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        booted = time.monotonic() + 90
        while "ready for action" not in log_path.read_text() and time.monotonic() < booted:
            time.sleep(0.2)
        # And a campaign whose send_from is a few seconds ahead, with a list of 24 (e-mail and SMS) enqueued now
        start = (clock.now() + timedelta(seconds=20)).replace(microsecond=0)
        path = campaign_file(tmp_path, "soon", start.isoformat())
        recipients = write_csv(tmp_path / "day1.csv", person_rows(24))
        enqueued = subprocess.run(
            [*dispatcher_cmd, "enqueue", str(path), str(recipients)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert enqueued.returncode == 0, enqueued.stderr
        # Then nothing is on the broker: the work waits in the ledger, and plan counts from send_from
        assert broker.queue_depth(broker.install(redis_url)) == 0
        plan = json.loads(
            subprocess.run(
                [*dispatcher_cmd, "plan", "soon", "--json"], capture_output=True, text=True, env=env, timeout=60
            ).stdout
        )
        assert plan["send_from"] == start.isoformat() and plan["starts"] == start.isoformat()

        # When broker messages for all of them arrive early anyway (as a duplicate or a resend would)
        ledger = Ledger(ledger_url)
        ids = [d.id for d in ledger.iter_campaign("soon")]
        from dispatcher.sending.actors import dispatch_ids

        dispatch_ids(ids)
        # Then the early messages are taken and put back in the ledger, unclaimed
        depth = broker.queue_depth(broker.install(redis_url))
        while depth and clock.now() < start - timedelta(seconds=2):
            time.sleep(0.2)
            depth = broker.queue_depth(broker.install(redis_url))
        assert depth == 0 and clock.now() < start, "the early messages were not consumed before send_from"
        assert {h["to_status"] for i in ids for h in ledger.history(i)} == {"queued"}
        # And until send_from nothing is sent: the outbox stays empty and the ledger says queued
        looks = 0
        while clock.now() < start:
            seen = (_sent_files(tmp_path, "soon"), _status(dispatcher_cmd, "soon")["by_status"])
            if clock.now() < start:  # only what was seen entirely before send_from counts
                assert seen == (([], []), {"queued": 24})
                looks += 1
            time.sleep(0.3)
        assert looks >= 1

        # When send_from comes, every delivery is sent within seconds, not at the next periodic sweep
        status: dict[str, Any] = {}
        while clock.now() < start + timedelta(seconds=15):
            status = _status(dispatcher_cmd, "soon")
            if status["by_status"] == {"sent": 24}:
                break
            time.sleep(0.5)
        settled_at = clock.now()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    assert status["by_status"] == {"sent": 24}, (tmp_path / "worker.log").read_text()[-3000:]
    assert settled_at < start + timedelta(seconds=15)
    # And each person got exactly one message, none before send_from
    emails, sms = _sent_files(tmp_path, "soon")
    assert len(emails) + len(sms) == 24
    assert len({r.split(".")[0] for r in emails + sms}) == 24
    for delivery in ledger.iter_campaign("soon"):
        assert delivery.first_sent_at is not None and delivery.first_sent_at >= start
        assert delivery.attempts == 1
    ledger.dispose()


def test_the_dashboard_shows_send_from_and_each_days_list(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from dispatcher.cli.common import install_runtime
    from dispatcher.dashboard import create_app

    from .dashboard_support import TOKEN, serving

    # Given the web campaign with two days' lists enqueued before its send_from (the second overlapping)
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("DISPATCHER_CLOCK_START", "2023-05-02T10:00:00+09:00")
    rt = install_runtime(load_settings())
    day1 = write_csv(tmp_path / "web-2023-05-01.csv", person_rows(5))
    day2 = write_csv(tmp_path / "web-2023-05-02.csv", person_rows(5, start=4))
    dispatched: list[int] = []
    for day in (day1, day2):
        enqueue_campaign(WEB, day, settings=rt.settings, ledger=rt.ledger, dispatch=dispatched.extend)
    assert dispatched == []
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with serving(create_app(rt, dispatched.extend)) as url, httpx.Client(base_url=url, timeout=30) as client:
        data = client.get("/api/campaigns/regionpay-2023-web", headers=bearer).json()
        page = client.get("/campaigns/regionpay-2023-web", headers=bearer).text
    # Then the API says when it starts, that it is held, and the plan counts from it
    assert data["send_from"] == "2023-05-08T09:00:00+09:00"
    assert data["held_until_send_from"] is True
    assert data["plan"]["starts"] == "2023-05-08T09:00:00+09:00"
    assert data["by_status"] == {"queued": 8}
    # And each day's file is listed with the people it added (the overlap is not added twice)
    assert [(i["source"], i["rows"], i["new"]) for i in data["imports"]["recent"]] == [
        ("web-2023-05-01.csv", 5, 5),
        ("web-2023-05-02.csv", 5, 3),
    ]
    # And the page shows the scheduled start
    assert "送信開始" in page and "2023-05-08 09:00" in page
    assert "web-2023-05-02.csv" in page
    rt.close()


def test_a_large_list_written_by_its_own_process_is_held_too(
    tmp_path: Path, redis_url: str, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.intake import enqueue
    from dispatcher.intake.writer_process import ProcessWriter

    used: list[str] = []

    class Recorded(ProcessWriter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            used.append("process")
            super().__init__(*args, **kwargs)

    # Given every file counts as large (the writes go to a process of their own), in batches of 40
    monkeypatch.setattr(enqueue, "PROCESS_WRITER_MIN_BYTES", 0)
    monkeypatch.setattr(enqueue, "ProcessWriter", Recorded)
    monkeypatch.setattr(enqueue, "BATCH", 40)
    path = campaign_file(tmp_path, "big", "2099-05-01T09:00:00+09:00")
    recipients = write_csv(tmp_path / "list.csv", person_rows(100))
    # When the list is enqueued before send_from
    result = enqueue_campaign(path, recipients, settings=load_settings())
    # Then nothing is on the broker and every delivery waits in the ledger for send_from
    assert used == ["process"] and result.new == 100
    assert broker.queue_depth(broker.install(redis_url)) == 0
    ledger = Ledger(ledger_url)
    try:
        held = {d.not_before for d in ledger.iter_campaign("big")}
        assert held == {datetime(2099, 5, 1, 9, 0, tzinfo=TZ9)}
    finally:
        ledger.dispose()


def test_at_send_from_the_release_hands_over_held_work_even_if_marked_dispatched(
    tmp_path: Path, make_runtime: MakeRuntime, proxy: FaultProxy
) -> None:
    from dispatcher.sending.sweep import release

    # Given two campaigns held for different times, and one delivery whose early message was put back
    # after its sender (say an operator's resend) had stamped it dispatched
    rt = make_runtime()
    clock.start_at(jst(2023, 5, 2, 10, 0))
    web = _enqueue(rt, campaign_file(tmp_path, "web", "2023-05-08T09:00:00+09:00"), person_rows(3), [])
    later = _enqueue(rt, campaign_file(tmp_path, "later", "2023-05-09T09:00:00+09:00"), person_rows(2), [])
    assert rt.ledger.next_send_from(clock.now()) == jst(2023, 5, 8, 9, 0)
    clock.start_at(jst(2023, 5, 8, 8, 55))
    rt.ledger.mark_dispatched([web[0]], clock.now())

    # When the first send_from comes
    clock.start_at(jst(2023, 5, 8, 9, 0, 0, 200_000))
    periodic: list[int] = []
    sweep(rt, periodic.extend, everything=False, queue_empty=False)
    released: list[int] = []
    assert release(rt, released.extend, jst(2023, 5, 8, 9, 0)) == 3
    # Then the release hands over all of that campaign, the stamped one too (the periodic sweep would
    # have left it for its grace period), and nothing of the later campaign
    assert web[0] not in periodic
    assert sorted(released) == web
    assert not set(released) & set(later)
    assert rt.ledger.next_send_from(clock.now()) == jst(2023, 5, 9, 9, 0)


def test_a_one_person_resend_before_send_from_waits_for_it_too(
    tmp_path: Path, make_runtime: MakeRuntime, proxy: FaultProxy
) -> None:
    from dispatcher.operations.person_resend import resend_person
    from dispatcher.sending.sweep import release

    # Given a held campaign, and an operator who resends one person to a corrected address before send_from
    rt = make_runtime()
    clock.start_at(jst(2023, 5, 2, 10, 0))
    rows = person_rows(2, sms_every=EMAIL_ONLY)
    ids = _enqueue(rt, campaign_file(tmp_path, "web", "2023-05-08T09:00:00+09:00"), rows, [])
    clock.start_at(jst(2023, 5, 8, 8, 58))
    dispatched: list[int] = []
    resend_person(
        rt, "web", rows[0]["user_id"], dispatched.extend, reason="address changed", email="new@example.jp", who="t"
    )
    assert dispatched == [ids[0]]
    # When the worker gets that message before send_from
    assert deliver(rt, ids[0]).status is Status.QUEUED
    # Then nothing is sent: the delivery waits in the ledger for send_from, on the new address
    held = rt.ledger.get(ids[0])
    assert (held.status, held.contact, held.not_before) == (Status.QUEUED, "new@example.jp", jst(2023, 5, 8, 9, 0))
    assert proxy.attempt_counts() == Counter()
    # And at send_from it is released with the others and sent once, to the new address only
    clock.start_at(jst(2023, 5, 8, 9, 0, 1))
    released: list[int] = []
    release(rt, released.extend, jst(2023, 5, 8, 9, 0))
    assert sorted(released) == ids
    for delivery_id in ids:
        assert deliver(rt, delivery_id).status is Status.SENT
    assert proxy.attempt_counts() == Counter({"new@example.jp": 1, contact(rows[1]): 1})
