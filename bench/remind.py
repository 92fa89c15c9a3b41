"""Remind: a reminder run over N notified people, time and memory over the run.

Set-up (not timed): a campaign of N people in the ledger (PostgreSQL by default), every one ``sent`` (two in
three by e-mail, one in three by SMS), 30 % of them redeemed. Then, timed:

1. ``remind --dry-run`` (the count an operator sees first: every row read, every SMS rendered with its URL);
2. the run itself: the child campaign made, the eligible rows copied in pages of 5,000 through the bulk
   path (COPY on PostgreSQL), each page handed to the broker (Redis) as it is written;
3. with ``--send``: ``dispatcher worker -p 2 -t 8`` sends them through the ``outbox`` providers until the
   run is settled (the redemption is checked again before each batch).

The RSS of this process (steps 1-2) and of the worker processes (step 3) is sampled every half second: it
stays flat because nothing holds more than a page.

    .venv/bin/python bench/remind.py [--people 1000000] [--send] [--db URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import redis
import sqlalchemy
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench"
PG_URL = os.environ.get(
    "DISPATCHER_BENCH_REMIND_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/dispatcher_bench_remind"
)
#: A Redis database of its own (it is flushed before and after): other benchmarks use theirs.
REDIS_URL = os.environ.get("DISPATCHER_BENCH_REMIND_REDIS_URL", "redis://127.0.0.1:6379/12")
CAMPAIGN_ID = "bench-remind"
TEMPLATE = "compensation-reminder"
CLOCK_START = "2023-05-12T10:00:00+09:00"
PAGE = 50_000


class RssMeter:
    """Samples the RSS (MB) of some processes every half second in a thread."""

    def __init__(self, processes: callable) -> None:  # type: ignore[valid-type]
        self.processes = processes
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            for proc in self.processes():
                try:
                    total += proc.memory_info().rss / 2**20
                except psutil.Error:
                    pass
            if total:
                self.samples.append(total)
            self._stop.wait(0.5)

    def __enter__(self) -> RssMeter:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> str:
        s = self.samples or [0.0]
        third = max(1, len(s) // 3)
        return (
            f"RSS first third max {max(s[:third]):.0f} MB, last third max {max(s[-third:]):.0f} MB, "
            f"overall {min(s):.0f}-{max(s):.0f} MB ({len(s)} samples)"
        )


def reset_postgres(url: str) -> None:
    parsed = sqlalchemy.make_url(url)
    admin = sqlalchemy.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def setup(db: str, n: int) -> None:
    """N people, all sent, 30 % redeemed (straight into the ledger: this part is not what is measured)."""
    from datetime import datetime

    from dispatcher.core.campaign import load_campaign
    from dispatcher.core.clock import JST
    from dispatcher.ledger import Ledger
    from dispatcher.sending.render import load_template_sources

    ledger = Ledger(db)
    campaign = load_campaign(ROOT / "config" / "campaigns" / "regionpay-2023-app.toml")
    from dataclasses import replace

    campaign = replace(campaign, id=CAMPAIGN_ID)
    ledger.save_campaign(campaign, load_template_sources(campaign))
    for start in range(0, n, PAGE):
        rows = []
        for i in range(start, min(n, start + PAGE)):
            sms = i % 3 == 2
            phone = f"+8190{10_000_000 + i % 90_000_000:08d}" if sms else None
            email = None if sms else f"user{i}@example.jp"
            rows.append(
                {
                    "user_id": f"U{i:08d}",
                    "row_no": i + 2,
                    "channel": "sms" if sms else "email",
                    "contact": phone or email,
                    "email": email,
                    "phone": phone,
                    "flags": "",
                    "receipt_url": f"https://receive.example.jp/r/{i:08d}abcdefgh",
                    "fields": {"name": f"利用者{i}", "amount": 1000 + i % 5000},
                    "sms_parts": 2 if sms else None,
                }
            )
        ledger.add_deliveries(CAMPAIGN_ID, rows)
    with ledger.write() as conn:
        conn.execute(
            text(
                "UPDATE deliveries SET status = 'sent', first_sent_at = now(), provider = 'outbox' "
                "WHERE campaign_id = :c"
            ),
            {"c": CAMPAIGN_ID},
        )
    ledger.recount(CAMPAIGN_ID)
    at = datetime(2023, 5, 1, 12, tzinfo=JST)
    for start in range(0, n, PAGE):
        batch = [(f"U{i:08d}", at) for i in range(start, min(n, start + PAGE)) if i % 10 < 3]
        ledger.add_redemptions(CAMPAIGN_ID, batch, source="bench", actor="bench")
    ledger.dispose()


def send(env: dict[str, str], db: str, expected: int, timeout: float) -> str:
    from dispatcher.ledger import Ledger

    ledger = Ledger(db)
    child_id = f"{CAMPAIGN_ID}~{TEMPLATE}"
    log = (WORK / "remind-worker.log").open("wb")
    worker = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "dispatcher"), "worker", "-p", "2", "-t", "8"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    top = psutil.Process(worker.pid)
    started = time.monotonic()
    try:
        with RssMeter(lambda: [top, *top.children(recursive=True)]) as meter:
            while time.monotonic() - started < timeout:
                counts = ledger.counts(child_id)
                if not any(n for (_, st), n in counts.items() if st in ("queued", "sending", "retrying")):
                    break
                time.sleep(1)
        seconds = time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(90)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    by_state: dict[str, int] = {}
    for (_, st), n in ledger.counts(child_id).items():
        by_state[st] = by_state.get(st, 0) + n
    ledger.dispose()
    done = sum(by_state.values())
    return (
        f"send: {done:,} reminders settled in {seconds:.1f} s ({done / seconds:,.0f}/s) {by_state}; "
        f"worker pool {meter.summary()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=1_000_000)
    parser.add_argument("--send", action="store_true", help="also send the run through the outbox providers")
    parser.add_argument("--db", default=PG_URL)
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    if args.db.startswith("postgresql"):
        reset_postgres(args.db)
    broker_url = REDIS_URL
    redis.Redis.from_url(broker_url).flushdb()
    outbox = WORK / "remind-outbox"
    shutil.rmtree(outbox, ignore_errors=True)
    env = dict(
        os.environ,
        DISPATCHER_DATABASE_URL=args.db,
        DISPATCHER_REDIS_URL=broker_url,
        DISPATCHER_EMAIL_PROVIDER="outbox",
        DISPATCHER_SMS_PROVIDER="outbox",
        DISPATCHER_OUTBOX_DIR=str(outbox),
        DISPATCHER_DOMAIN_RATES="{}",
        DISPATCHER_CLOCK_START=CLOCK_START,
        DISPATCHER_DATA_DIR=str(WORK / "data"),
        DISPATCHER_CONFIG=str(ROOT / "tests" / "data" / "empty.toml"),
    )
    os.environ.update(env)
    t0 = time.monotonic()
    setup(args.db, args.people)
    print(f"set-up: {args.people:,} people sent, 30 % redeemed, in {time.monotonic() - t0:.0f} s", flush=True)

    from dispatcher import broker
    from dispatcher.core.settings import load_settings
    from dispatcher.operations.remind import remind
    from dispatcher.runtime import Runtime
    from dispatcher.sending.actors import dispatch_ids

    broker.install(broker_url)
    rt = Runtime(load_settings())
    me = psutil.Process()
    with RssMeter(lambda: [me]) as meter:
        t0 = time.monotonic()
        preview = remind(rt, CAMPAIGN_ID, TEMPLATE, None, dry_run=True, who="operator:bench")
        dry = time.monotonic() - t0
        t0 = time.monotonic()
        run = remind(rt, CAMPAIGN_ID, TEMPLATE, dispatch_ids, who="operator:bench")
        real = time.monotonic() - t0
    print(
        f"dry run: {preview.queued:,} would be reminded ({preview.by_channel}, {preview.sms_parts:,} SMS parts) "
        f"in {dry:.1f} s",
        flush=True,
    )
    print(
        f"remind: {run.queued:,} reminders made and handed to the broker in {real:.1f} s ({run.queued / real:,.0f}/s)",
        flush=True,
    )
    print(f"remind process: {meter.summary()}", flush=True)
    rt.close()
    if args.send:
        print(send(env, args.db, run.queued, args.timeout), flush=True)
    redis.Redis.from_url(broker_url).flushdb()
    sys.exit(0)


if __name__ == "__main__":
    main()
