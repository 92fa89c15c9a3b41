"""Sending-policy behaviours the review found untested (issue 11): giving up after ``max_attempts``, the
sweep expiring overdue work, per-domain rate limits and the daily quota.

Real components only: SES/SNS on the moto server behind the counting fault proxy, the ledger on SQLite
and PostgreSQL, limits and quotas in the real Redis. Each test was checked to fail with its behaviour
removed (see the report of issue 11).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest
import redis

from dispatcher.broker import keys
from dispatcher.core import clock
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel, Status
from dispatcher.sending.delivery import deliver
from dispatcher.sending.policy import Limits
from dispatcher.sending.sweep import sweep

from . import policy_support
from .faultproxy import FaultProxy, max_in_window
from .helpers import person_rows
from .policy_support import EMAIL_ONLY, MakeRuntime, contact, deliver_until_settled, enqueue_in_process, jst, statuses

# The fixtures these tests share with test_operations_guards.py
proxy = policy_support.proxy
make_runtime = policy_support.make_runtime


# Giving up after max_attempts ----------------------------------------------------------------------
def test_a_provider_that_keeps_failing_is_given_up_after_exactly_max_attempts(
    tmp_path, make_runtime: MakeRuntime, proxy: FaultProxy, moto
) -> None:
    # Given at most 3 attempts per delivery, and a provider that answers every send with a 5xx
    rt = make_runtime(MAX_ATTEMPTS="3", RETRY_BASE_SECONDS="2", RETRY_MAX_SECONDS="60")
    clock.start_at(jst(2023, 4, 5, 10, 0))
    [row] = person_rows(1, sms_every=EMAIL_ONLY)
    delivery_id = enqueue_in_process(
        rt, tmp_path, "giveup", [row], send_by="2023-05-28T20:00:00+09:00", deadline="2023-05-31T23:59:59+09:00"
    )[contact(row)]
    proxy.server_error_rate = 1.0

    # When the worker is handed the delivery every time it is due
    outcomes = deliver_until_settled(rt, delivery_id)

    # Then it was retried twice and failed on the third attempt: exactly max_attempts calls reached the provider
    assert statuses(outcomes) == [Status.RETRYING, Status.RETRYING, Status.FAILED]
    assert proxy.attempt_counts() == Counter({contact(row): 3})
    failed = rt.ledger.get(delivery_id)
    assert (failed.status, failed.attempts) == (Status.FAILED, 3)
    assert failed.provider_code in ("InternalFailure", "ServiceUnavailable")
    # And the ledger says the retries were exhausted, in the trail and in the reason the report shows
    last = rt.ledger.history(delivery_id)[-1]
    assert (last["to_status"], last["attempt"]) == ("failed", 3)
    assert "gave up after 3 attempts" in last["detail"]
    assert "gave up after 3 attempts" in (failed.reason or "")

    # When the broker hands it over again and sweeps run, now and days later (still before send_by)
    assert deliver(rt, delivery_id).status is Status.FAILED
    for later in (timedelta(0), timedelta(days=3)):
        clock.start_at(jst(2023, 4, 5, 10, 5) + later)
        dispatched: list[int] = []
        sweep(rt, dispatched.extend)
        assert delivery_id not in dispatched
    # Then it is never attempted again, and nothing reached the customer
    assert proxy.attempt_counts() == Counter({contact(row): 3})
    assert moto.sent_emails() == []
    assert rt.ledger.get(delivery_id).status is Status.FAILED


def test_retries_stop_at_send_by_even_with_attempts_left(
    tmp_path, make_runtime: MakeRuntime, proxy: FaultProxy, moto
) -> None:
    # Given plenty of attempts, retries 4-8 s apart, and a send_by 30 s away
    rt = make_runtime(MAX_ATTEMPTS="50", RETRY_BASE_SECONDS="8", RETRY_MAX_SECONDS="8")
    start = jst(2023, 5, 28, 19, 59, 30)
    send_by = jst(2023, 5, 28, 20, 0, 0)
    clock.start_at(start)
    [row] = person_rows(1, sms_every=EMAIL_ONLY)
    delivery_id = enqueue_in_process(
        rt, tmp_path, "late", [row], send_by=send_by.isoformat(), deadline="2023-05-31T23:59:59+09:00"
    )[contact(row)]
    proxy.server_error_rate = 1.0

    # When the worker is handed the delivery every time it is due, noting the clock at each provider call
    calls_at = []
    outcomes = []
    while True:
        before = len(proxy.sends())
        now = clock.now()
        outcome = deliver(rt, delivery_id)
        outcomes.append(outcome)
        if len(proxy.sends()) > before:
            calls_at.append(now)
        if outcome.again_at is None:
            break
        clock.start_at(outcome.again_at + timedelta(milliseconds=1))

    # Then every attempt was before send_by, every retry was scheduled before it, and the attempt whose retry
    # would have come after send_by expired the delivery at once (not a retry the worker must refuse later)
    assert calls_at and all(at < send_by for at in calls_at)
    assert all(o.again_at < send_by for o in outcomes if o.again_at is not None)
    assert outcomes[-1].status is Status.EXPIRED and len(calls_at) == len(outcomes)
    assert 3 <= len(calls_at) <= 9  # 30 s of retries 4-8 s apart
    trail = rt.ledger.history(delivery_id)
    assert [t["to_status"] for t in trail[-2:]] == ["retrying", "expired"]
    assert trail[-1]["detail"] == "next retry would be after send_by"
    assert rt.ledger.get(delivery_id).attempts == len(calls_at) == len(proxy.sends())
    assert moto.sent_emails() == []


# The sweep expiring overdue work -------------------------------------------------------------------
def test_the_sweep_expires_overdue_work_and_re_enqueues_what_is_still_in_time(
    tmp_path, make_runtime: MakeRuntime, proxy: FaultProxy, moto
) -> None:
    rt = make_runtime(RETRY_BASE_SECONDS="60", RETRY_MAX_SECONDS="60")
    clock.start_at(jst(2023, 5, 28, 18, 0))
    late_rows = person_rows(3, sms_every=EMAIL_ONLY)
    timely_rows = person_rows(3, start=10, sms_every=EMAIL_ONLY)
    # Given a campaign whose send_by is 20:00 and one still running for days, each with one delivery
    # `retrying` (a transient error) and the others `queued`
    late = enqueue_in_process(
        rt, tmp_path, "late", late_rows, send_by="2023-05-28T20:00:00+09:00", deadline="2023-05-31T23:59:59+09:00"
    )
    timely = enqueue_in_process(
        rt, tmp_path, "timely", timely_rows, send_by="2023-06-28T20:00:00+09:00", deadline="2023-06-30T23:59:59+09:00"
    )
    proxy.server_error_rate = 1.0
    assert deliver(rt, late[contact(late_rows[0])]).status is Status.RETRYING
    assert deliver(rt, timely[contact(timely_rows[0])]).status is Status.RETRYING
    proxy.server_error_rate = 0.0
    attempts_before = len(proxy.sends())
    assert rt.ledger.counts("late") == {("email", "queued"): 2, ("email", "retrying"): 1}

    # When the sweep runs after the first campaign's send_by (and after the retry's not-before)
    clock.start_at(jst(2023, 5, 28, 20, 0, 1))
    dispatched: list[int] = []
    result = sweep(rt, dispatched.extend)

    # Then everything unsent of the late campaign is expired, by the sweep, saying why
    assert result.expired == 3
    assert rt.ledger.counts("late") == {("email", "expired"): 3}
    for delivery_id in late.values():
        last = rt.ledger.history(delivery_id)[-1]
        assert (last["to_status"], last["actor"], last["detail"]) == (
            "expired",
            "sweep",
            "send_by passed before sending",
        )
    # And only the campaign still in time goes back to the broker, queued and retrying alike
    assert sorted(dispatched) == sorted(timely.values())
    assert result.redispatched == 3
    # And the expired ones are never sent, even when a stale broker message reaches a worker
    for delivery_id in late.values():
        assert deliver(rt, delivery_id).status is Status.EXPIRED
    for delivery_id in dispatched:
        assert deliver(rt, delivery_id).status is Status.SENT
    assert len(proxy.sends()) == attempts_before + 3
    assert proxy.accepted_counts() == Counter({contact(r): 1 for r in timely_rows})
    assert rt.ledger.counts("timely") == {("email", "sent"): 3}


# Per-domain rate limits ----------------------------------------------------------------------------
def _granted_at(client: redis.Redis, scope: str, token: str) -> float | None:
    """The Redis server time (seconds) at which the limiter granted slot ``token`` in ``scope``, if it did."""
    score = client.zscore(keys.rate(scope), f"{token}:1")
    return None if score is None else score / 1_000_000


def test_a_carrier_domain_cap_holds_in_every_sliding_second_and_holds_back_no_other_domain(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a cap of 15 e-mails a second to docomo.ne.jp and of 60 to ezweb.ne.jp (no channel-wide cap); 15
    # is no multiple of the limiter's tenth-of-a-second slices, so the sliding second itself must hold it
    cap, other_cap = 15, 60
    monkeypatch.setenv("DISPATCHER_DOMAIN_RATES", f'{{"docomo.ne.jp": {cap}, "ezweb.ne.jp": {other_cap}}}')
    monkeypatch.setenv("DISPATCHER_RATE_MAX_WAIT_SECONDS", "60")
    client = redis.Redis.from_url(redis_url)
    limits = Limits(load_settings(), client)
    granted: dict[str, list[tuple[float, float | None]]] = {"docomo.ne.jp": [], "ezweb.ne.jp": []}
    lock = threading.Lock()

    def send_some(domain: str, n: int) -> None:
        for i in range(n):
            token = uuid.uuid4().hex
            # (the domain is matched whatever its case)
            address = f"u{i}@{domain.upper() if i % 2 else domain}"
            wait = limits.acquire(Channel.EMAIL, address, token=token)
            at = _granted_at(client, f"domain:{domain}", token)
            with lock:
                granted[domain].append((wait, at))

    # When 4 threads take slots for 30 docomo sends while 3 threads take slots for 60 ezweb sends, each
    # waiting for its slot as a worker does
    threads = [threading.Thread(target=send_some, args=("docomo.ne.jp", n)) for n in (8, 8, 7, 7)]
    threads += [threading.Thread(target=send_some, args=("ezweb.ne.jp", 20)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then every slot was granted, each in its own domain's scope of the limiter
    assert {domain: [wait for wait, _ in slots] for domain, slots in granted.items()} == {
        "docomo.ne.jp": [0.0] * 30,
        "ezweb.ne.jp": [0.0] * 60,
    }
    assert [at for slots in granted.values() for _, at in slots if at is None] == []
    # And no sliding second of the limiter's own (Redis) clock holds more docomo slots than its cap
    docomo = sorted(at for _, at in granted["docomo.ne.jp"] if at is not None)
    ezweb = sorted(at for _, at in granted["ezweb.ne.jp"] if at is not None)
    assert max_in_window(docomo, 1.0) <= cap
    # (nor any tenth of a second more than its share: carriers throttle bursts)
    assert max_in_window(docomo, 0.1) <= math.ceil(cap / 10)
    # And ezweb was not held to docomo's cap meanwhile: some second of it held more than docomo's cap (its
    # own cap still held)
    assert cap < max_in_window(ezweb, 1.0) <= other_cap


# The daily quota -----------------------------------------------------------------------------------
def test_the_daily_quota_defers_further_sends_and_the_sms_quota_is_separate(
    tmp_path, make_runtime: MakeRuntime, proxy: FaultProxy, moto, redis_url: str
) -> None:
    # Given 6 e-mails and 3 SMS queued, a daily quota of 4 e-mails and of 2 SMS (in message parts)
    rows = person_rows(9, sms_every=3)
    probe = make_runtime()
    parts = _sms_parts(probe, tmp_path, rows)
    rt = make_runtime(EMAIL_DAILY_QUOTA="4", SMS_DAILY_QUOTA=str(2 * parts))
    ids = enqueue_in_process(rt, tmp_path, "quota", rows)
    emails = [ids[contact(r)] for r in rows if r["email"]]
    phones = [ids[contact(r)] for r in rows if r["phone"]]
    assert (len(emails), len(phones)) == (6, 3)

    # When the worker is handed every e-mail, then every SMS
    email_outcomes = [deliver(rt, d) for d in emails]
    sms_outcomes = [deliver(rt, d) for d in phones]

    # Then the first 4 e-mails went, and the other 2 wait: handed back to the ledger with a not-before,
    # neither failed nor sent nor even attempted
    assert statuses(email_outcomes) == [Status.SENT] * 4 + [Status.QUEUED] * 2
    # And the SMS have a quota of their own, which the e-mails did not use up: 2 went, the third waits
    assert statuses(sms_outcomes) == [Status.SENT] * 2 + [Status.QUEUED]
    now = clock.now()
    for delivery_id, outcome in [*zip(emails[4:], email_outcomes[4:], strict=True), (phones[2], sms_outcomes[2])]:
        waiting = rt.ledger.get(delivery_id)
        assert (waiting.status, waiting.attempts) == (Status.QUEUED, 0)
        assert waiting.not_before is not None and waiting.not_before > now
        assert outcome.again_at == waiting.not_before
        assert waiting.not_before <= now + timedelta(hours=1, seconds=5)  # the next hourly bucket
        assert [t["to_status"] for t in rt.ledger.history(delivery_id)] == ["queued"]
        # (the sweep does not hand it over before then, and a stray broker message does not send it)
        assert delivery_id not in rt.ledger.due(now)
        assert deliver(rt, delivery_id).status is Status.QUEUED
    assert proxy.accepted_counts() == Counter({rt.ledger.get(d).contact: 1 for d in [*emails[:4], *phones[:2]]})
    assert len(proxy.sends()) == 6
    assert rt.ledger.counts("quota") == {
        ("email", "sent"): 4,
        ("email", "queued"): 2,
        ("sms", "sent"): 2,
        ("sms", "queued"): 1,
    }


def _sms_parts(rt, tmp_path, rows) -> int:
    """How many parts each SMS of the test campaign has (the quota counts parts), from a throwaway enqueue."""
    ids = enqueue_in_process(rt, tmp_path, "parts", rows)
    parts = {rt.ledger.get(ids[contact(r)]).sms_parts for r in rows if r["phone"]}
    assert len(parts) == 1
    return parts.pop() or 1


def test_the_daily_quota_counts_the_rolling_24_hours(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a quota of 5 e-mails a day, all used 23 hours ago (an hourly bucket of the rolling day)
    monkeypatch.setenv("DISPATCHER_EMAIL_DAILY_QUOTA", "5")
    client = redis.Redis.from_url(redis_url)
    limits = Limits(load_settings(), client)
    hour = int(time.time() // 3600)
    client.set(keys.quota(f"email:{hour - 23}"), 5)
    # When one more e-mail asks for a slot, it must wait (a whole hour at most), and so does the next
    assert 0 < limits.limiter.try_acquire(*limits.limits_for(Channel.EMAIL, "a@example.jp")) <= 3601
    assert 0 < limits.limiter.try_acquire(*limits.limits_for(Channel.EMAIL, "b@example.jp")) <= 3601
    # When those sends are older than 24 hours instead, they no longer count: the 5 go
    client.delete(keys.quota(f"email:{hour - 23}"))
    client.set(keys.quota(f"email:{hour - 24}"), 5)
    granted = [limits.limiter.try_acquire(*limits.limits_for(Channel.EMAIL, f"u{i}@example.jp")) for i in range(6)]
    # Then exactly the quota is granted in this hour, and the sixth waits
    assert granted[:5] == [0.0] * 5 and granted[5] > 0
    assert int(client.get(keys.quota(f"email:{hour}"))) == 5
