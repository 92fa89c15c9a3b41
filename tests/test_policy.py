"""The sending policy of issue 3 (SPEC §8), against real Redis and a moto server over HTTP.

Worker processes talk to moto through :class:`tests.faultproxy.FaultProxy`, which counts every send call
that reaches the provider and injects throttling, server errors, permanent rejects and lost answers. The
SMS window and send-by are shown in-process with ``deliver()`` and a controllable clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import pytest
import redis

from dispatcher.core import clock
from dispatcher.core.clock import JST
from dispatcher.core.settings import load_settings
from dispatcher.core.states import PENDING, Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.ledger import Ledger
from dispatcher.runtime import Runtime
from dispatcher.sending.delivery import deliver
from dispatcher.sending.ratelimit import Limit, RateLimiter

from .faultproxy import FaultProxy
from .helpers import person_rows, write_campaign, write_csv

EMAIL_ONLY = 10**9  # person_rows(sms_every=EMAIL_ONLY): nobody gets an SMS


# Fixtures and helpers ----------------------------------------------------------------------------
@pytest.fixture
def proxy(moto) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url, seed=20230224) as p:
        yield p


@pytest.fixture
def aws(moto, proxy: FaultProxy, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """SES and SNS on moto behind the proxy, a SQLite ledger; returns the ledger URL."""
    boto3.client("sesv2", endpoint_url=moto.url).create_email_identity(EmailIdentity="giftpad.jp")
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    for key, value in {
        "AWS_ENDPOINT_URL": proxy.url,
        "DISPATCHER_DATABASE_URL": url,
        "DISPATCHER_EMAIL_PROVIDER": "ses",
        "DISPATCHER_SMS_PROVIDER": "sns",
    }.items():
        monkeypatch.setenv(key, value)
    return url


def run(cmd: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=os.environ.copy())


def enqueue_rows(cmd: list[str], tmp_path: Path, campaign_id: str, rows: list[dict[str, str]]) -> Path:
    campaign = write_campaign(tmp_path, campaign_id)
    result = run(cmd, "enqueue", str(campaign), str(write_csv(tmp_path / f"{campaign_id}.csv", rows)))
    assert result.returncode == 0, result.stdout + result.stderr
    return campaign


@contextmanager
def worker(cmd: list[str], log_path: Path, processes: int = 2, threads: int = 8) -> Iterator[subprocess.Popen]:
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [*cmd, "worker", "--processes", str(processes), "--threads", str(threads)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def wait_settled(ledger_url: str, campaign_id: str, timeout: float) -> dict[tuple[str, str], int]:
    """Poll the ledger until nothing in the campaign is queued, sending or retrying."""
    ledger = Ledger(ledger_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            counts = ledger.counts(campaign_id)
            pending = sum(n for (_, status), n in counts.items() if Status(status) in PENDING)
            if pending == 0 or time.monotonic() > deadline:
                return counts
            time.sleep(0.2)
    finally:
        ledger.dispose()


def status_json(cmd: list[str], campaign_id: str) -> dict:
    result = run(cmd, "status", campaign_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def deliveries_by_contact(ledger_url: str, campaign_id: str) -> dict:
    ledger = Ledger(ledger_url)
    try:
        return {d.contact: d for d in ledger.iter_campaign(campaign_id)}
    finally:
        ledger.dispose()


def contact(row: dict[str, str]) -> str:
    """The contact as the ledger and the provider see it (E.164 for the phones person_rows makes)."""
    return row["email"] or "+81" + row["phone"][1:]


def moto_counts(moto) -> Counter[str]:
    """Messages stored by moto per recipient (SES lists each address twice: To header and envelope)."""
    counts: Counter[str] = Counter()
    for message in moto.sent_emails():
        counts.update(set(message["destinations"]))
    counts.update(sms["phone_number"] for sms in moto.sent_sms())
    return counts


# Rate cap ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_rate_cap_holds_in_every_sliding_second_across_processes_and_threads(
    tmp_path, aws, proxy, moto, dispatcher_cmd, monkeypatch
) -> None:
    # Given a global cap of 20 emails/s and 160 emails queued
    cap, n = 20, 160
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", str(cap))
    rows = person_rows(n, sms_every=EMAIL_ONLY)
    enqueue_rows(dispatcher_cmd, tmp_path, "cap", rows)

    # When 2 worker processes × 8 threads send them through the provider
    with worker(dispatcher_cmd, tmp_path / "worker.log", processes=2, threads=8):
        counts = wait_settled(aws, "cap", timeout=60)

    # Then everyone was sent exactly once
    assert counts == {("email", "sent"): n}, (tmp_path / "worker.log").read_text()[-3000:]
    assert proxy.accepted_counts("ses") == Counter({contact(r): 1 for r in rows})
    assert moto_counts(moto) == Counter({contact(r): 1 for r in rows})
    # And no sliding second at the provider held more than the cap. How close to the cap a run gets is a
    # speed figure (bench/ratelimit.py reports it); here only a loose floor shows the limiter does not
    # starve the workers, loose enough for a loaded 2-core machine.
    peak = proxy.max_in_window(1.0, "ses")
    rate = proxy.achieved_rate(1.0, "ses")
    times = proxy.accepted_times("ses")
    print(
        f"\nrate cap {cap}/s, {n} emails, 2×8 workers: max sends in a sliding second {peak}, "
        f"achieved {rate:.2f}/s ({rate / cap:.1%} of the cap) over {times[-1] - times[0]:.2f}s"
    )
    assert peak <= cap
    assert rate >= 0.4 * cap


def test_a_send_counts_against_the_cap_from_its_slot_until_a_window_after_its_call_ended(redis_url) -> None:
    # The provider receives the request somewhere between slot and answer; the slot must cover both ends.
    limiter = RateLimiter(redis.Redis.from_url(redis_url), margin=0)
    limit = [Limit("restamp", 2)]  # 2 per second (and, against bursts, 1 per tenth of a second)
    assert limiter.try_acquire(limit, token="first") == 0
    time.sleep(0.15)
    assert limiter.try_acquire(limit, token="second") == 0
    before = limiter.try_acquire(limit)  # full: the first slot frees a second after it was taken
    assert 0 < before < 0.9
    # When the first send's provider call ends only now
    limiter.sent(limit, "first")
    # Then it counts from now: the next slot is a whole window away from the later of the two
    after = limiter.try_acquire(limit)
    assert after > before + 0.1


# Retries -----------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("throttle", "server_errors"), [(0.3, 0.0), (0.3, 0.2)], ids=["throttle", "throttle+5xx"])
def test_a_throttling_and_failing_provider_still_gets_everyone_exactly_once(
    tmp_path, aws, proxy, moto, dispatcher_cmd, monkeypatch, throttle, server_errors
) -> None:
    # Given a provider that throttles 30 % of send calls (and, in one run, fails with 5xx on top)
    monkeypatch.setenv("DISPATCHER_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("DISPATCHER_RETRY_MAX_SECONDS", "1")
    monkeypatch.setenv("DISPATCHER_MAX_ATTEMPTS", "20")  # 0.44^20: no one runs out of attempts by chance
    proxy.throttle_rate = throttle
    proxy.server_error_rate = server_errors
    rows = person_rows(45)  # 30 emails, 15 SMS
    enqueue_rows(dispatcher_cmd, tmp_path, "flaky", rows)

    # When the workers send the campaign
    log_path = tmp_path / "worker.log"
    with worker(dispatcher_cmd, log_path, processes=2, threads=4):
        counts = wait_settled(aws, "flaky", timeout=60)
        time.sleep(1.0)  # a late duplicate would show up here

    # Then everyone ended `sent`, and the provider accepted exactly one message per person
    assert counts == {("email", "sent"): 30, ("sms", "sent"): 15}, log_path.read_text()[-3000:]
    expected = Counter({contact(r): 1 for r in rows})
    assert proxy.accepted_counts() == expected
    assert moto_counts(moto) == expected
    # And faults really happened and were retried
    outcomes = Counter(s.outcome for s in proxy.sends())
    calls = sum(outcomes.values())
    assert 0.15 < outcomes["throttled"] / calls < 0.45, outcomes
    if server_errors:
        assert outcomes["server-error"] > 0, outcomes
    by_contact = deliveries_by_contact(aws, "flaky")
    assert sum(d.attempts for d in by_contact.values()) == calls
    assert max(d.attempts for d in by_contact.values()) > 1
    # And throttling is retried quietly: never logged as a warning or an error
    throttle_lines = [
        line for line in log_path.read_text().splitlines() if "TooManyRequestsException" in line or "Throttling" in line
    ]
    assert throttle_lines
    assert not [line for line in throttle_lines if "WARNING" in line or "ERROR" in line]


# Permanent rejects -------------------------------------------------------------------------------
@pytest.mark.slow
def test_permanently_rejected_recipients_are_attempted_once_and_fail_with_the_provider_code(
    tmp_path, aws, proxy, moto, dispatcher_cmd
) -> None:
    rows = person_rows(30)  # 20 emails, 10 SMS
    rejected = {contact(rows[0]), contact(rows[1]), contact(rows[2])}  # two emails and one phone
    assert {r["phone"] for r in rows[:3]} == {"", rows[2]["phone"]}
    proxy.reject = rejected
    enqueue_rows(dispatcher_cmd, tmp_path, "reject", rows)

    with worker(dispatcher_cmd, tmp_path / "worker.log", processes=2, threads=4):
        counts = wait_settled(aws, "reject", timeout=60)
        # Even a sweep (every due delivery back on the broker) brings none of them back
        assert "re-enqueued 0" in run(dispatcher_cmd, "sweep").stdout
        time.sleep(1.5)

    assert counts == {("email", "sent"): 18, ("email", "failed"): 2, ("sms", "sent"): 9, ("sms", "failed"): 1}
    assert status_json(dispatcher_cmd, "reject") == {
        "campaign": "reject",
        "total": 30,
        "by_status": {"failed": 3, "sent": 27},
        "by_channel": {"email": {"failed": 2, "sent": 18}, "sms": {"failed": 1, "sent": 9}},
        "redeemed": 0,
        "reminders": {},
    }
    attempts = proxy.attempt_counts()
    assert {c: attempts[c] for c in rejected} == dict.fromkeys(rejected, 1)
    assert all(attempts[contact(r)] == 1 for r in rows)
    by_contact = deliveries_by_contact(aws, "reject")
    codes = {c: (d.status, d.attempts, d.provider_code) for c, d in by_contact.items() if c in rejected}
    assert codes == {
        contact(rows[0]): (Status.FAILED, 1, "MessageRejected"),
        contact(rows[1]): (Status.FAILED, 1, "MessageRejected"),
        contact(rows[2]): (Status.FAILED, 1, "InvalidParameter"),
    }
    assert not set(moto_counts(moto)) & rejected
    # And the audit trail records the refusal with the provider's code
    ledger = Ledger(aws)
    try:
        trail = ledger.history(by_contact[contact(rows[2])].id)
    finally:
        ledger.dispose()
    assert [(t["to_status"], t["provider_code"]) for t in trail][-1] == ("failed", "InvalidParameter")


# Lost answers ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_answer_lost_after_the_provider_accepted_is_unknown_and_never_resent(
    tmp_path, aws, proxy, moto, dispatcher_cmd
) -> None:
    rows = person_rows(12)  # 8 emails, 4 SMS
    lost = {contact(rows[0]), contact(rows[2])}  # one email, one phone
    proxy.drop_after_forward = lost
    enqueue_rows(dispatcher_cmd, tmp_path, "lost", rows)

    with worker(dispatcher_cmd, tmp_path / "worker.log", processes=2, threads=4):
        counts = wait_settled(aws, "lost", timeout=60)
        # Leave the workers running, and put every due delivery back on the broker
        swept = run(dispatcher_cmd, "sweep")
        assert "re-enqueued 0" in swept.stdout, swept.stdout + swept.stderr
        time.sleep(3)
        after = wait_settled(aws, "lost", timeout=1)

    assert counts == after == {("email", "sent"): 7, ("email", "unknown"): 1, ("sms", "sent"): 3, ("sms", "unknown"): 1}
    assert status_json(dispatcher_cmd, "lost")["by_status"] == {"sent": 10, "unknown": 2}
    # The provider has each lost-answer message exactly once: the client did not retry it either
    assert moto_counts(moto) == Counter({contact(r): 1 for r in rows})
    assert proxy.attempt_counts() == Counter({contact(r): 1 for r in rows})
    assert Counter(s.outcome for s in proxy.sends()) == {"accepted": 10, "dropped": 2}
    by_contact = deliveries_by_contact(aws, "lost")
    for c in lost:
        delivery = by_contact[c]
        assert (delivery.status, delivery.attempts, delivery.provider_message_id) == (Status.UNKNOWN, 1, None)
        assert delivery.provider_code == "ConnectionClosedError"


# SMS window and send-by, with a controllable clock -----------------------------------------------
def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=JST)


@pytest.fixture
def in_process(aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("DISPATCHER_SMS_WINDOW_SPREAD", "[0, 1]")
    rt = Runtime(load_settings())
    yield rt
    rt.close()


def enqueue_in_process(
    rt: Runtime, tmp_path: Path, campaign_id: str, rows: list[dict[str, str]], **campaign: str
) -> dict[str, int]:
    """Enqueue without a broker; returns the delivery id per contact."""
    path = write_campaign(
        tmp_path, campaign_id, deadline="2023-05-31T23:59:59+09:00", window='["09:00", "20:00"]', **campaign
    )
    ids: list[int] = []
    result = enqueue_campaign(path, rows, settings=rt.settings, ledger=rt.ledger, dispatch=ids.extend)
    assert (result.accepted, result.rejected) == (len(rows), 0)
    return {rt.ledger.get(i).contact: i for i in ids}


def test_sms_outside_the_window_is_held_then_sent_when_it_opens(tmp_path, in_process, proxy, moto) -> None:
    rt = in_process
    rows = person_rows(2, start=2)  # one email, one SMS
    email_to, phone = contact(rows[0]), contact(rows[1])
    # Given a campaign whose SMS may leave 09:00–20:00 JST, and the clock at 21:00 JST
    clock.start_at(jst(2023, 4, 5, 21, 0))
    ids = enqueue_in_process(rt, tmp_path, "window", rows, send_by="2023-05-28T20:00:00+09:00")

    # When the worker picks up the SMS
    outcome = deliver(rt, ids[phone])
    # Then it is held, not failed or dropped: still queued, due at the next opening (plus the spread)
    held = rt.ledger.get(ids[phone])
    assert held.status is Status.QUEUED and outcome.status is Status.QUEUED
    opening = jst(2023, 4, 6, 9, 0)
    assert opening <= held.not_before <= opening + timedelta(seconds=1)
    assert outcome.again_at == held.not_before
    assert held.attempts == 0 and [t["to_status"] for t in rt.ledger.history(held.id)] == ["queued"]
    assert proxy.sends() == [] and moto.sent_sms() == []
    # And the email in the same campaign goes at once
    assert deliver(rt, ids[email_to]).status is Status.SENT
    assert [m["destinations"][0] for m in moto.sent_emails()] == [email_to]

    # When the broker hands the SMS over again just before the window opens, it is still held
    clock.start_at(jst(2023, 4, 6, 8, 59, 50))
    assert deliver(rt, ids[phone]).status is Status.QUEUED
    assert ids[phone] not in rt.ledger.due(clock.now())
    assert moto.sent_sms() == []

    # When the window has opened, the sweep finds it due and the worker sends it
    clock.start_at(jst(2023, 4, 6, 9, 0, 2))
    assert ids[phone] in rt.ledger.due(clock.now())
    assert deliver(rt, ids[phone]).status is Status.SENT
    [sms] = moto.sent_sms()
    assert sms["phone_number"] == phone and "https://receive.example.jp/r/tok000003x" in sms["message"]
    assert proxy.accepted_counts() == Counter({email_to: 1, phone: 1})


def test_nothing_is_sent_after_send_by_and_the_rest_expires(tmp_path, in_process, proxy, moto) -> None:
    rt = in_process
    rows = person_rows(5)  # users 1, 2, 4, 5 by email; user 3 by SMS
    c = [contact(r) for r in rows]
    clock.start_at(jst(2023, 5, 28, 18, 0))
    ids = enqueue_in_process(rt, tmp_path, "sendby", rows, send_by="2023-05-28T20:00:00+09:00")

    # Before send_by, an email and an SMS leave
    clock.start_at(jst(2023, 5, 28, 19, 0))
    assert deliver(rt, ids[c[0]]).status is Status.SENT
    assert deliver(rt, ids[c[2]]).status is Status.SENT

    # Two seconds before send_by the provider fails: the retry would come after send_by, so it expires
    clock.start_at(jst(2023, 5, 28, 19, 59, 58))
    proxy.server_error_rate = 1.0
    assert deliver(rt, ids[c[1]]).status is Status.EXPIRED
    proxy.server_error_rate = 0.0
    trail = [(t["to_status"], t["provider_code"]) for t in rt.ledger.history(ids[c[1]])]
    assert trail[-2][0] == "retrying" and trail[-2][1] in ("InternalFailure", "ServiceUnavailable")
    assert trail[-1] == ("expired", None)

    # At send_by, whatever is still unsent expires without a call to the provider
    clock.start_at(jst(2023, 5, 28, 20, 0, 0))
    for who in (c[3], c[4]):
        assert deliver(rt, ids[who]).status is Status.EXPIRED
        assert rt.ledger.get(ids[who]).attempts == 0
    # And nothing is due any more, however often the broker or the sweep hands them over
    assert rt.ledger.due(clock.now()) == []
    for who in c:
        deliver(rt, ids[who])

    assert rt.ledger.counts("sendby") == {("email", "sent"): 1, ("sms", "sent"): 1, ("email", "expired"): 3}
    assert proxy.accepted_counts() == Counter({c[0]: 1, c[2]: 1})
    assert proxy.attempt_counts() == Counter({c[0]: 1, c[2]: 1, c[1]: 1})
    assert moto_counts(moto) == Counter({c[0]: 1, c[2]: 1})


def test_an_sms_whose_window_opens_only_after_send_by_expires(tmp_path, in_process, proxy, moto) -> None:
    rt = in_process
    rows = person_rows(1, start=3)  # one SMS
    clock.start_at(jst(2023, 5, 27, 21, 0))
    ids = enqueue_in_process(rt, tmp_path, "late", rows, send_by="2023-05-28T08:00:00+09:00")
    assert deliver(rt, ids[contact(rows[0])]).status is Status.EXPIRED
    assert proxy.sends() == [] and moto.sent_sms() == []


def test_circuit_breaker_pauses_a_campaign_with_too_many_permanent_failures(aws, proxy, tmp_path) -> None:
    # Given 120 people of whom 10 % are refused for good by the provider, a 5 % threshold after 100 attempts
    from dispatcher.core.settings import load_settings
    from dispatcher.intake.enqueue import enqueue_campaign
    from dispatcher.operations import control as operations
    from dispatcher.runtime import Runtime
    from dispatcher.sending.delivery import deliver

    rows = person_rows(120, sms_every=EMAIL_ONLY)
    proxy.reject = {r["email"] for i, r in enumerate(rows) if i % 10 == 5}
    rt = Runtime(load_settings())
    try:
        enqueue_campaign(
            write_campaign(tmp_path, "brk"), rows, settings=rt.settings, ledger=rt.ledger, dispatch=lambda ids: None
        )
        # When the workers go through the list
        for delivery_id in rt.ledger.in_status("brk", [Status.QUEUED]):
            deliver(rt, delivery_id)
        # Then the campaign paused itself once past the threshold, said why, and sent nothing more
        record = rt.ledger.campaign("brk", fresh=True)
        assert record.state == "paused"
        assert "circuit breaker" in record.state_reason and "5%" in record.state_reason
        counts = rt.ledger.counts("brk")
        attempted = counts.get(("email", "sent"), 0) + counts.get(("email", "failed"), 0)
        assert 100 <= attempted < 120
        assert counts[("email", "queued")] == 120 - attempted
        # And after the operator resumes it, the rest is sent (the counters start afresh)
        queued: list[int] = []
        operations.resume(rt, "brk", queued.extend, who="test")
        for delivery_id in queued:
            deliver(rt, delivery_id)
        final = rt.ledger.counts("brk")
        assert final[("email", "failed")] == 12
        assert final[("email", "sent")] == 108
    finally:
        rt.close()


def test_a_send_waiting_for_its_rate_slot_has_not_claimed_its_delivery(tmp_path, aws, proxy, moto, monkeypatch) -> None:
    import threading

    # Given a cap of one e-mail a second, and one e-mail just sent
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "1")
    rt = Runtime(load_settings())
    try:
        clock.start_at(jst(2023, 4, 5, 10, 0))
        ids = list(
            enqueue_in_process(
                rt, tmp_path, "slot", person_rows(2, sms_every=100), send_by="2023-05-28T20:00:00+09:00"
            ).values()
        )
        assert deliver(rt, ids[0]).status is Status.SENT

        # When the next one waits for its slot
        outcomes: list = []
        waiting = threading.Thread(target=lambda: outcomes.append(deliver(rt, ids[1])))
        started = time.monotonic()
        waiting.start()
        seen: list[tuple[float, Status]] = []
        while waiting.is_alive():
            seen.append((time.monotonic() - started, rt.ledger.get(ids[1]).status))
            time.sleep(0.02)
        waiting.join()

        # Then it stayed claimable while it waited (a worker killed then leaves no `sending` behind), and went
        assert outcomes[0].status is Status.SENT and len(moto.sent_emails()) == 2
        assert seen[-1][0] > 0.5, seen  # it did wait
        queued_late = [at for at, status in seen if status is Status.QUEUED and at > 0.5]
        assert queued_late, seen
    finally:
        rt.close()
