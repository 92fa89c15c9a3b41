"""Reliability suite (issue 7): crashes, a lost broker, a faulty provider, a restarted ledger.

Every scenario runs the real thing: ``dispatcher enqueue`` and ``dispatcher worker`` as an operator runs
them, a real Redis, SQLite or a PostgreSQL cluster of the test's own, the outbox or moto (through
tests/faultproxy.py). What a recipient got is counted where it lands (outbox files per delivery, moto's
store per recipient), never taken from the ledger's word for it. After each scenario every captured log
line and command output is searched for receipt URLs and full contacts.

Size: ``DISPATCHER_CHAOS_SIZE`` (default 3,000: the crash campaign; the other scenarios scale from it).
``DISPATCHER_CHAOS_SIZE=20000`` produces the figures in docs/reliability.md; with
``DISPATCHER_CHAOS_REPORT=FILE`` each scenario appends its figures to FILE as a JSON line.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from dispatcher.core import clock
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.ledger import Ledger
from dispatcher.runtime import Runtime
from dispatcher.sending.delivery import deliver

from .chaos import (
    CHAOS_SIZE,
    Figures,
    PrivateRedis,
    ThrowawayPostgres,
    WorkerPool,
    assert_no_leaks,
    broker_backlog,
    check_outbox_against_ledger,
    counts,
    deliveries,
    pending,
    run,
    settled,
    wait_until,
)
from .faultproxy import FaultProxy
from .helpers import person_rows, write_campaign, write_csv
from .services import free_port
from .test_policy import contact, moto_counts

PROCESSES, THREADS = 2, 4
#: Kills in the crash scenario: 3 at the CI size, 10 at 20,000 (the supervisor's restart backoff doubles
#: up to 30 s on a pool that dies within a minute of starting, so more kills mostly add waiting).
KILLS = int(os.environ.get("DISPATCHER_CHAOS_KILLS", min(10, max(3, CHAOS_SIZE // 2000))))
#: A worker process is killed once the whole pool has been up this long (seconds; it spends 2-3 s of it
#: starting), and only if it has sent something since the last kill.
KILL_AFTER = 5.0


def budget(n: int, per_second: float, floor: float = 120.0) -> float:
    """A generous deadline for ``n`` deliveries on a shared 2-core machine."""
    return floor + n / per_second


# Set-up shared by the scenarios --------------------------------------------------------------------
def enqueue(cmd: list[str], tmp_path: Path, campaign_id: str, rows: list[dict[str, str]], outputs: list) -> None:
    campaign = write_campaign(tmp_path, campaign_id)
    result = run(cmd, "enqueue", str(campaign), str(write_csv(tmp_path / f"{campaign_id}.csv", rows)))
    outputs.append((f"enqueue {campaign_id}", result.stdout + result.stderr))
    assert result.returncode == 0, result.stdout + result.stderr


def pace(monkeypatch: pytest.MonkeyPatch, n: int, seconds: float) -> None:
    """Cap the sending rate so the campaign lasts at least ``seconds`` (faults must land mid-campaign).

    ``person_rows`` makes two e-mails per SMS, and its SMS are two parts long (the SMS rate counts parts).
    """
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", f"{max(1.0, n * 2 / 3 / seconds):.1f}")
    monkeypatch.setenv("DISPATCHER_SMS_RATE", f"{max(2.0, n * 2 / 3 / seconds):.1f}")


@pytest.fixture
def recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead sends turn `unknown` after 8 s; every worker host sweeps every second.

    A live send must never look dead: a wait for a rate slot longer than 2 s hands the delivery back
    to the ledger (``retrying``) instead of holding it in ``sending``.
    """
    monkeypatch.setenv("DISPATCHER_STALE_SENDING_SECONDS", "8")
    monkeypatch.setenv("DISPATCHER_SWEEP_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("DISPATCHER_RATE_MAX_WAIT_SECONDS", "2")


@pytest.fixture
def sqlite_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
    return url


def sweep_figures(log: str) -> dict[str, int]:
    swept = [int(n) for n in re.findall(r"sweep: \d+ stale sends marked unknown, \d+ expired, (\d+) re-enqueued", log)]
    marked = [int(n) for n in re.findall(r"sweep: (\d+) stale sends marked unknown", log)]
    marks = [(int(a), int(b)) for a, b in re.findall(r"(\d+) never called, given back; (\d+) recorded", log)]
    return {
        "sweeps_that_found_work": len(swept),
        "re_enqueued_by_sweeps": sum(swept),
        "marked_unknown_by_sweeps": sum(marked),
        "given_back_by_sweeps": sum(a for a, _ in marks),
        "recorded_from_marks_by_sweeps": sum(b for _, b in marks),
    }


# A fault before the provider call ---------------------------------------------------
def test_a_send_that_cannot_reach_the_rate_limiter_is_handed_back_not_stranded(
    tmp_path, redis_url, sqlite_ledger, monkeypatch
) -> None:
    # Given an e-mail under a global rate limit, and Redis (where the limit lives) gone
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "10")
    monkeypatch.setenv("DISPATCHER_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    down = Runtime(load_settings())
    ids: list[int] = []
    enqueue_campaign(
        write_campaign(tmp_path, "norate"),
        person_rows(1, sms_every=10**9),
        settings=down.settings,
        ledger=down.ledger,
        dispatch=ids.extend,
    )
    # When a worker asks for its rate slot (which comes before the claim)
    with pytest.raises(redis.ConnectionError):
        deliver(down, ids[0])
    # Then it was never claimed: due work in the ledger, not left in `sending` for the sweep to call `unknown`
    delivery = down.ledger.get(ids[0])
    assert (delivery.status, delivery.attempts) == (Status.QUEUED, 0)
    assert [t["to_status"] for t in down.ledger.history(ids[0])] == ["queued"]
    assert ids[0] in down.ledger.due(clock.now())
    down.close()
    # And once Redis answers again it is sent, once
    monkeypatch.setenv("DISPATCHER_REDIS_URL", redis_url)
    up = Runtime(load_settings())
    try:
        assert deliver(up, ids[0]).status is Status.SENT
        assert deliver(up, ids[0]).status is Status.SENT
    finally:
        up.close()
    assert len(list((tmp_path / "var" / "outbox" / "email" / "norate").glob("*.eml"))) == 1


# Crash ---------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(budget(CHAOS_SIZE, 15, floor=400))
def test_killing_worker_processes_never_double_sends_and_loses_no_one(
    tmp_path, redis_url, sqlite_ledger, recovery, dispatcher_cmd, monkeypatch
) -> None:
    # Given a campaign of CHAOS_SIZE people (two e-mails per SMS), paced to last long enough for every kill
    # (each needs the pool up KILL_AFTER seconds, and a few to start) and at least 30 s
    n = CHAOS_SIZE
    figures = Figures("crash")
    outputs: list[tuple[str, str]] = []
    pace(monkeypatch, n, max(30.0, KILLS * (KILL_AFTER + 3) + 10))
    enqueue(dispatcher_cmd, tmp_path, "crash", person_rows(n), outputs)
    ledger = Ledger(sqlite_ledger)

    # When `dispatcher worker -p 2 -t 4` sends it while one Dramatiq process is killed with -9 every few
    # seconds of its life, KILLS times, and the supervisor restarts the pool each time
    started = time.monotonic()
    pool = WorkerPool(dispatcher_cmd, tmp_path / "worker.log", PROCESSES, THREADS)
    last_kill_done = 0
    with pool:
        deadline = started + budget(n, 15, floor=300)
        by_status = counts(ledger, "crash")
        while time.monotonic() < deadline:
            by_status = counts(ledger, "crash")
            if settled(by_status):
                break
            assert pool.alive, "dispatcher worker itself must keep running\n" + pool.log()[-3000:]
            done = by_status.get("sent", 0) + by_status.get("unknown", 0)
            # (never in the last tenth: each kill must leave work for the restarted pool)
            if (
                len(pool.killed) < KILLS
                and last_kill_done < done < 0.9 * n
                and pool.kill_one(PROCESSES, min_age=KILL_AFTER)
            ):
                last_kill_done = done
                figures.values.setdefault("kill_at_sent", []).append(done)  # type: ignore[union-attr]
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        backlog = broker_backlog(redis_url)  # duplicates left by the sweeps after each crash
        time.sleep(2)  # a late duplicate would show up here
        after = counts(ledger, "crash")
    log = pool.log()

    # Then every delivery is settled: sent, or unknown when its process died around the provider call
    assert settled(by_status), f"still pending after {elapsed:.0f}s: {by_status}\n{log[-3000:]}"
    assert after == by_status
    assert set(by_status) <= {"sent", "unknown"}, by_status
    assert sum(by_status.values()) == n
    # And the pool was killed and restarted
    assert len(pool.killed) == KILLS, f"only {len(pool.killed)} of {KILLS} kills happened"
    restarts = re.findall(r"worker pool exited with code (-?\d+); restarting in (\d+)s", log)
    assert len(restarts) == KILLS, restarts
    # And nobody got two messages; each `sent` got exactly one
    unknown = check_outbox_against_ledger(ledger, "crash", tmp_path / "var" / "outbox")
    # And `unknown` is bounded by the sends in flight in the killed processes
    assert by_status.get("unknown", 0) <= THREADS * len(pool.killed), (by_status, len(pool.killed))
    # And recovery did not flood the broker with copies of the remaining work (one per crash, before)
    assert backlog <= max(100, n // 20), f"{backlog} broker messages left for {n} settled deliveries"
    ledger.dispose()
    lines = assert_no_leaks([("worker log", log), *outputs])

    figures.values.update(
        {
            "deliveries": n,
            "processes": PROCESSES,
            "threads": THREADS,
            "kills": len(pool.killed),
            "restarts": len(restarts),
            "restart_backoff_s": sum(int(s) for _, s in restarts),
            "final": by_status,
            "unknown_bound": THREADS * len(pool.killed),
            **unknown,
            "duplicates": 0,
            "send_seconds": round(elapsed, 1),
            "rate_per_s": round(n / elapsed, 1),
            **sweep_figures(log),
            "broker_messages_left_when_settled": backlog,
            "log_lines_checked": lines,
        }
    )
    figures.emit()


#: The whole-pool crash through moto: `dispatcher worker -p 2 -t 8` (16 sends in flight at most), six kills.
POOL_PROCESSES, POOL_THREADS, POOL_KILLS = 2, 8, int(os.environ.get("DISPATCHER_CHAOS_POOL_KILLS", "6"))


@pytest.mark.slow
@pytest.mark.timeout(budget(CHAOS_SIZE, 10, floor=500))
def test_killing_the_whole_pool_while_sending_through_aws_never_double_sends(
    tmp_path, moto, redis_url, sqlite_ledger, recovery, dispatcher_cmd, monkeypatch
) -> None:
    # Given a campaign of CHAOS_SIZE people sent by SES and SNS (moto), paced to outlast six kills
    n = CHAOS_SIZE
    figures = Figures("crash-pool-aws")
    outputs: list[tuple[str, str]] = []
    boto3.client("sesv2", endpoint_url=moto.url).create_email_identity(EmailIdentity="giftpad.jp")
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    pace(monkeypatch, n, max(30.0, POOL_KILLS * (KILL_AFTER + 3) + 10))
    rows = person_rows(n)
    enqueue(dispatcher_cmd, tmp_path, "pool", rows, outputs)
    ledger = Ledger(sqlite_ledger)

    # When every worker process of `dispatcher worker -p 2 -t 8` is killed with -9 at once, six times
    started = time.monotonic()
    pool = WorkerPool(dispatcher_cmd, tmp_path / "worker.log", POOL_PROCESSES, POOL_THREADS)
    last_kill_done = 0
    with pool:
        deadline = started + budget(n, 10, floor=400)
        by_status = counts(ledger, "pool")
        while time.monotonic() < deadline:
            by_status = counts(ledger, "pool")
            if settled(by_status):
                break
            assert pool.alive, "dispatcher worker itself must keep running\n" + pool.log()[-3000:]
            done = by_status.get("sent", 0) + by_status.get("unknown", 0)
            if (
                len(pool.killed) < POOL_KILLS
                and last_kill_done < done < 0.9 * n
                and pool.kill_pool(POOL_PROCESSES, min_age=KILL_AFTER)
            ):
                last_kill_done = done
                figures.values.setdefault("kill_at_done", []).append(done)  # type: ignore[union-attr]
            time.sleep(0.25)
        elapsed = time.monotonic() - started
        time.sleep(2)
        after = counts(ledger, "pool")
    log = pool.log()

    # Then everybody is `sent` or `unknown`
    assert settled(by_status), f"still pending after {elapsed:.0f}s: {by_status}\n{log[-3000:]}"
    assert after == by_status and set(by_status) <= {"sent", "unknown"} and sum(by_status.values()) == n, by_status
    assert len(pool.killed) == POOL_KILLS, f"only {len(pool.killed)} of {POOL_KILLS} kills happened"
    # And nobody got two messages at the provider; every `sent` got exactly one
    at_moto = moto_counts(moto)
    assert max(at_moto.values()) == 1, [c[:3] for c, k in at_moto.items() if k > 1]
    by_contact = {d.contact: d for d in ledger.iter_campaign("pool")}
    assert all(at_moto[c] == 1 for c, d in by_contact.items() if d.status == "sent")
    # And at most the sends in flight when the pool died are `unknown` (16 per kill)
    unknown = [c for c, d in by_contact.items() if d.status == "unknown"]
    assert len(unknown) <= POOL_PROCESSES * POOL_THREADS * len(pool.killed), (len(unknown), len(pool.killed))
    ledger.dispose()
    lines = assert_no_leaks([("worker log", log), *outputs])
    figures.values.update(
        {
            "deliveries": n,
            "processes": POOL_PROCESSES,
            "threads": POOL_THREADS,
            "kills": len(pool.killed),
            "final": by_status,
            "unknown_bound": POOL_PROCESSES * POOL_THREADS * len(pool.killed),
            "unknown_with_message_at_moto": sum(1 for c in unknown if at_moto[c]),
            "unknown_without": sum(1 for c in unknown if not at_moto[c]),
            "duplicates": 0,
            "send_seconds": round(elapsed, 1),
            **sweep_figures(log),
            "log_lines_checked": lines,
        }
    )
    figures.emit()


# Broker loss ---------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("fault", ["restart", "flushall"])
@pytest.mark.timeout(budget(max(300, CHAOS_SIZE // 3), 15, floor=300))
def test_losing_the_broker_mid_campaign_reaches_everyone_exactly_once(
    tmp_path, sqlite_ledger, recovery, dispatcher_cmd, monkeypatch, fault
) -> None:
    # Given a Redis of this test's own, without persistence, and a campaign paced to last about 20 s
    n = max(300, CHAOS_SIZE // 3)
    figures = Figures(f"broker-{fault}")
    outputs: list[tuple[str, str]] = []
    server = PrivateRedis()
    try:
        monkeypatch.setenv("DISPATCHER_REDIS_URL", server.start())
        pace(monkeypatch, n, 20)
        enqueue(dispatcher_cmd, tmp_path, "broker", person_rows(n), outputs)
        ledger = Ledger(sqlite_ledger)
        pool = WorkerPool(dispatcher_cmd, tmp_path / "worker.log", PROCESSES, THREADS)
        with pool:
            # When, a quarter of the way in, Redis loses everything
            reached = wait_until(ledger, "broker", lambda c: c.get("sent", 0) >= n // 4, timeout=budget(n, 15))
            assert reached.get("sent", 0) >= n // 4, f"{reached}\n{pool.log()[-3000:]}"
            fault_at = time.monotonic()
            before = counts(ledger, "broker")
            client = redis.Redis.from_url(server.url)
            queued_then = client.hlen("dispatcher:deliveries.msgs")
            if fault == "restart":
                server.kill()  # kill -9: no shutdown, no save; the data is gone
                time.sleep(2)
                server.start()
            else:
                client.flushall()
            client.close()
            # Then the workers' own periodic sweeps find the lost work in the ledger
            final = wait_until(ledger, "broker", settled, timeout=budget(n, 15))
            recovered = time.monotonic() - fault_at
            time.sleep(2)
            after = counts(ledger, "broker")
        log = pool.log()
        assert final == after == {"sent": n}, f"{final} / {after}\n{log[-4000:]}"
        # And everyone was reached exactly once
        check_outbox_against_ledger(ledger, "broker", tmp_path / "var" / "outbox")
        ledger.dispose()
    finally:
        server.stop()
    swept = sweep_figures(log)
    assert swept["re_enqueued_by_sweeps"] > 0, "the recovery must have come from a sweep"
    lines = assert_no_leaks([("worker log", log), *outputs])
    figures.values.update(
        {
            "deliveries": n,
            "sent_before_fault": before.get("sent", 0),
            "broker_messages_lost": queued_then,
            "final": final,
            "duplicates": 0,
            "recovered_in_s": round(recovered, 1),
            **swept,
            "log_lines_checked": lines,
        }
    )
    figures.emit()


# Provider faults -----------------------------------------------------------------------------------
@pytest.fixture
def proxy(moto) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url, seed=20230531) as p:
        yield p


@pytest.mark.slow
@pytest.mark.timeout(budget(max(150, CHAOS_SIZE // 10), 5, floor=300))
def test_a_throttling_failing_and_lossy_provider_reaches_everyone_once(
    tmp_path, moto, proxy, redis_url, sqlite_ledger, dispatcher_cmd, monkeypatch
) -> None:
    # Given SES and SNS (moto) behind a proxy that throttles 30 % of send calls, fails 15 % with 5xx,
    # drops the answer for 2 % of recipients after the provider accepted, and refuses 2 % for good
    n = max(150, CHAOS_SIZE // 10)
    figures = Figures("provider-faults")
    outputs: list[tuple[str, str]] = []
    boto3.client("sesv2", endpoint_url=moto.url).create_email_identity(EmailIdentity="giftpad.jp")
    for key, value in {
        "AWS_ENDPOINT_URL": proxy.url,
        "DISPATCHER_EMAIL_PROVIDER": "ses",
        "DISPATCHER_SMS_PROVIDER": "sns",
        "DISPATCHER_RETRY_BASE_SECONDS": "0.2",
        "DISPATCHER_RETRY_MAX_SECONDS": "1",
        "DISPATCHER_MAX_ATTEMPTS": "25",
    }.items():
        monkeypatch.setenv(key, value)
    rows = person_rows(n)
    rejected = {contact(r) for i, r in enumerate(rows) if i % 50 == 7}
    dropped = {contact(r) for i, r in enumerate(rows) if i % 50 == 32}
    proxy.reject, proxy.drop_after_forward = rejected, dropped
    proxy.throttle_rate, proxy.server_error_rate = 0.3, 0.15
    enqueue(dispatcher_cmd, tmp_path, "faults", rows, outputs)
    ledger = Ledger(sqlite_ledger)

    # When the workers send the campaign
    started = time.monotonic()
    pool = WorkerPool(dispatcher_cmd, tmp_path / "worker.log", PROCESSES, THREADS)
    with pool:
        final = wait_until(ledger, "faults", settled, timeout=budget(n, 5))
        elapsed = time.monotonic() - started
        # A sweep (every due delivery back on the broker) brings none of the settled ones back
        swept = run(dispatcher_cmd, "sweep")
        outputs.append(("sweep", swept.stdout + swept.stderr))
        assert "re-enqueued 0" in swept.stdout, swept.stdout + swept.stderr
        time.sleep(2)
        after = counts(ledger, "faults")
    log = pool.log()

    # Then the ones refused are failed, the ones whose answer was lost are unknown, the rest sent
    assert final == after, (final, after)
    expected = {"sent": n - len(rejected) - len(dropped), "failed": len(rejected), "unknown": len(dropped)}
    assert final == expected, f"{final}\n{log[-4000:]}"
    by_contact = {d.contact: d for d in ledger.iter_campaign("faults")}
    assert {c for c, d in by_contact.items() if d.status == "failed"} == rejected
    assert {c for c, d in by_contact.items() if d.status == "unknown"} == dropped
    # And the provider has exactly one message for everyone but the refused, who were tried exactly once
    everyone = Counter(contact(r) for r in rows)
    assert moto_counts(moto) == everyone - Counter(rejected)
    assert proxy.accepted_counts() == everyone - Counter(rejected)
    attempts = proxy.attempt_counts()
    assert {c: attempts[c] for c in rejected} == dict.fromkeys(rejected, 1)
    # And an ambiguous answer was never followed by another try
    for who in dropped:
        outcomes = [s.outcome for s in proxy.sends() if s.recipient == who]
        assert outcomes[-1] == "dropped" and outcomes.count("dropped") == 1, (who[:3], outcomes)
    # And every call the provider saw is an attempt in the ledger, and faults really happened
    assert all(by_contact[c].attempts == attempts[c] for c in everyone), "ledger attempts != provider calls"
    outcomes = Counter(s.outcome for s in proxy.sends())
    calls = sum(outcomes.values())
    assert 0.2 < outcomes["throttled"] / calls < 0.4, outcomes
    assert outcomes["server-error"] > 0, outcomes
    ledger.dispose()
    lines = assert_no_leaks([("worker log", log), *outputs])
    figures.values.update(
        {
            "deliveries": n,
            "provider_calls": calls,
            "outcomes": dict(outcomes),
            "final": final,
            "max_attempts_one_delivery": max(attempts.values()),
            "duplicates_at_provider": 0,
            "send_seconds": round(elapsed, 1),
            "log_lines_checked": lines,
        }
    )
    figures.emit()


# Ledger loses its connection -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(budget(max(300, CHAOS_SIZE // 3), 15, floor=300))
def test_restarting_postgresql_mid_campaign_neither_loses_nor_duplicates(
    tmp_path, redis_url, recovery, dispatcher_cmd, monkeypatch
) -> None:
    # Given a PostgreSQL cluster of this test's own, and a campaign paced to last about 20 s
    n = max(300, CHAOS_SIZE // 3)
    figures = Figures("postgres-restart")
    outputs: list[tuple[str, str]] = []
    cluster = ThrowawayPostgres()
    try:
        url = cluster.start()
        monkeypatch.setenv("DISPATCHER_DATABASE_URL", url)
        pace(monkeypatch, n, 20)
        enqueue(dispatcher_cmd, tmp_path, "pg", person_rows(n), outputs)
        ledger = Ledger(url)
        pool = WorkerPool(dispatcher_cmd, tmp_path / "worker.log", PROCESSES, THREADS)
        with pool:
            # When, a third of the way in, PostgreSQL restarts (every connection cut)
            reached = wait_until(ledger, "pg", lambda c: c.get("sent", 0) >= n // 3, timeout=budget(n, 15))
            assert reached.get("sent", 0) >= n // 3, f"{reached}\n{pool.log()[-3000:]}"
            before = counts(ledger, "pg")
            fault_at = time.monotonic()
            outage = cluster.restart()
            # Then the workers carry on by themselves
            final = wait_until(ledger, "pg", settled, timeout=budget(n, 15))
            recovered = time.monotonic() - fault_at
            time.sleep(2)
            after = counts(ledger, "pg")
            assert pool.alive
        log = pool.log()
        assert settled(final) and final == after, f"{final} / {after}\n{log[-4000:]}"
        assert set(final) <= {"sent", "unknown"} and sum(final.values()) == n, final
        # And nobody got two messages; each `sent` has exactly one
        unknown = check_outbox_against_ledger(ledger, "pg", tmp_path / "var" / "outbox")
        # And at most the sends in flight when the connections were cut ended `unknown`
        assert final.get("unknown", 0) <= PROCESSES * THREADS, final
        states = deliveries(ledger, "pg")
        ledger.dispose()
    finally:
        cluster.stop()
    assert pending(final) == 0 and len(states) == n
    lines = assert_no_leaks([("worker log", log), *outputs])
    errors = len(re.findall(r"OperationalError", log))
    figures.values.update(
        {
            "deliveries": n,
            "sent_before_restart": before.get("sent", 0),
            "restart_took_s": round(outage, 1),
            "final": final,
            **unknown,
            "duplicates": 0,
            "recovered_in_s": round(recovered, 1),
            "operational_errors_logged": errors,
            **sweep_figures(log),
            "log_lines_checked": lines,
        }
    )
    figures.emit()
