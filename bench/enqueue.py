"""Enqueue: a generated list of N recipients through `dispatcher enqueue`, end to end, vs its baselines.

`dispatcher enqueue` runs as a child process (CSV → validation → ledger → broker), once into PostgreSQL +
Redis and once into SQLite + Redis, timed from spawn to exit (interpreter start-up included), with the
child's peak RSS (``os.wait4``). Baselines measured in the same run, on the same file and Redis:
- the floor: the csv module alone reading the file (no validation, no writes);
- Dramatiq's ``actor.send`` in a loop (one round trip per message), for ``--send-sample`` messages,
  extrapolated to the number of messages our run enqueued.

Redis is a private ``redis-server`` started for the run (no persistence); PostgreSQL is the database
``dispatcher_bench_throughput`` (dropped and created again for each run), SQLite a file under var/bench/.

    .venv/bin/python bench/enqueue.py [--rows 1000000] [--targets postgresql sqlite] [--rerun] [--write]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import redis
import sampling
import sqlalchemy
from common import machine, write_section
from population import cached
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "var" / "bench"
PG_URL = os.environ.get(
    "DISPATCHER_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/dispatcher_bench_throughput"
)
CAMPAIGN_ID = "bench-enqueue"
TARGET_RATE, TARGET_SQLITE_S, TARGET_RSS_MB = 33_000, 60.0, 300.0
TIMEOUT = 540.0


def campaign_file() -> Path:
    path = WORK / "config" / "campaigns" / "bench-enqueue.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""id = "{CAMPAIGN_ID}"
name = "地域クーポン補償（ベンチマーク）"
template = "compensation"
prefer = "email"
deadline = 2023-05-31T23:59:59+09:00
send_by = 2023-05-28T20:00:00+09:00
receipt_hosts = ["receive.example.jp"]
sms_max_chars = 134
sms_window = ["09:00", "20:00"]

[text]
organizer = "しまね旅キャンペーン事務局"
call_centre_name = "全国旅行支援地域クーポン regionPAY 補償コールセンター"
call_centre_phone = "0120-479-249"
call_centre_hours = "平日 10:00～18:00"
""",
        encoding="utf-8",
    )
    return path


def reset_postgres(url: str) -> None:
    parsed = sqlalchemy.make_url(url)
    admin = sqlalchemy.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


def sqlite_url() -> str:
    db = WORK / "enqueue.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    return f"sqlite:///{db}"


@dataclass
class Run:
    label: str
    seconds: float
    rss_mb: float
    exit_code: int
    rows_in_ledger: int
    messages: int
    transitions: int
    cpu: str = ""


def count_ledger(url: str) -> tuple[int, int]:
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT count(*) FROM deliveries WHERE campaign_id = :c"), {"c": CAMPAIGN_ID}).scalar()
        t = conn.execute(text("SELECT count(*) FROM transitions WHERE campaign_id = :c"), {"c": CAMPAIGN_ID}).scalar()
    engine.dispose()
    return int(n or 0), int(t or 0)


def queue_length(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).llen("dispatcher:deliveries"))


def run_enqueue(label: str, db_url: str, redis_url: str, csv_path: Path, campaign: Path) -> Run:
    """`dispatcher enqueue` as a child process: wall time from spawn to exit, and its peak RSS."""
    env = dict(
        os.environ,
        DISPATCHER_DATABASE_URL=db_url,
        DISPATCHER_REDIS_URL=redis_url,
        DISPATCHER_DATA_DIR=str(WORK / "data"),
        DISPATCHER_LOG_LEVEL="WARNING",
    )
    rejects = WORK / f"rejects-{label}.csv"
    command = [
        str(ROOT / ".venv" / "bin" / "dispatcher"),
        "enqueue",
        str(campaign),
        str(csv_path),
        "--rejects",
        str(rejects),
    ]
    log = (WORK / f"enqueue-{label}.log").open("wb")
    meter = sampling.CpuMeter()
    meter.tree_name = "dispatcher"
    peak_tree = 0.0
    with meter:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        meter.tree_root = child.pid  # its writer process counts as `dispatcher enqueue` too
        top = psutil.Process(child.pid)
        deadline = time.monotonic() + TIMEOUT
        polls = 0
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            polls += 1
            if polls % 10 == 0:  # the whole tree's RSS (the command and its writer process), every ~0.1 s
                try:
                    peak_tree = max(peak_tree, sum(p.memory_info().rss for p in [top, *top.children(True)]) / 2**20)
                except psutil.Error:
                    pass
            time.sleep(0.01)
        seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    n, t = count_ledger(db_url)
    cpu = meter.summary({"dispatcher": "`dispatcher enqueue`", "postgres": "PostgreSQL", "redis-server": "Redis"})
    # Peak RSS: the larger of the tree's sampled sum and the largest single process (exact, from wait4).
    return Run(
        label, seconds, max(peak_tree, usage.ru_maxrss / 1024), child.returncode, n, queue_length(redis_url), t, cpu
    )


DESIGN = """How `enqueue` spends its work (per campaign once, per row as little as the checks allow):

- per campaign: the definition, the templates and their test render; the SMS template is cut once around
  the receipt URL when it uses nothing else per recipient, so each SMS text is a string join (the length
  check still sees the real text); the Redis message template, checked against Dramatiq's own encoding;
- per row: the checks the specification asks for; the usual writings of a mobile number skip
  `phonenumbers.parse` (its type and validity still come from phonenumbers' metadata); plain
  `https://host/...` URLs skip `urlsplit`; both shortcuts are tested against the general path
  (tests/test_fast_paths.py);
- per batch of 5,000 accepted rows, in a writer process of its own for files of 4 MB and more (a writer
  thread for smaller ones), which overlaps the reading and checking of the next rows on the other core:
  PostgreSQL gets them by `COPY` into a session table and one `INSERT … SELECT … ON CONFLICT DO NOTHING`
  that also writes each new delivery's `queued` audit row; SQLite by the driver's `executemany`; the new
  ids go to Redis as one `HSET` of message bodies and one `RPUSH` (the keys Dramatiq's own enqueue writes).
  Every delivery still gets its audit row; the `imports` table records the list as before."""

#: The parts of `dispatcher enqueue`'s time in the profile (the first marker found in a stack takes it).
ENQUEUE_PARTS = [
    ("start-up (imports, settings, campaign, templates)", ("_find_and_load", "load_campaign", "Renderer.__init__")),
    ("ledger: batches to PostgreSQL (COPY, then one INSERT … SELECT)", ("Ledger.add_deliveries",)),
    ("writer process: batches in and out of the pipe (pickle)", ("ProcessWriter", "_serve", "Queue.get", "_feed")),
    ("broker: one message per new delivery, in bulk to Redis", ("dispatch_ids", "enqueue_ids")),
    ("phone numbers (phonenumbers: type from its metadata)", ("check_phone",)),
    ("e-mail address syntax", ("check_email",)),
    ("receipt URL", ("check_receipt_url",)),
    ("the rest of the row's checks (user id, amount, category, undecodable bytes)", ("validate_row",)),
    ("SMS text and its length", ("Renderer.sms", "sms.py")),
    ("CSV: read, decode, split (csv module)", ("RecipientFile.records",)),
    ("rejects file", ("SafeCsvWriter",)),
    ("per-row bookkeeping in the loop", ("enqueue_campaign", "_Checker.check", "_ledger_row")),
]


def profile_enqueue(db_url: str, redis_url: str, csv_path: Path, campaign: Path) -> list[tuple[str, float]] | None:
    """One more `dispatcher enqueue`, under py-spy: the share of its samples per part."""
    env = dict(
        os.environ,
        DISPATCHER_DATABASE_URL=db_url,
        DISPATCHER_REDIS_URL=redis_url,
        DISPATCHER_DATA_DIR=str(WORK / "data"),
        DISPATCHER_LOG_LEVEL="WARNING",
    )
    raw = WORK / "enqueue-profile.txt"
    command = [
        str(ROOT / ".venv" / "bin" / "dispatcher"),
        "enqueue",
        str(campaign),
        str(csv_path),
        "--rejects",
        str(WORK / "rejects-profile.csv"),
    ]
    subprocess.run(sampling.record_command(command, raw), cwd=ROOT, env=env, capture_output=True, timeout=TIMEOUT)
    if not raw.exists():
        return None
    return sampling.share(sampling.parse(raw.read_text()), ENQUEUE_PARTS)


def csv_floor(path: Path) -> tuple[int, float]:
    started = time.perf_counter()
    with path.open(encoding="utf-8", newline="") as f:
        rows = sum(1 for _ in csv.reader(f)) - 1
    return rows, time.perf_counter() - started


def dramatiq_send_rate(redis_url: str, messages: int) -> float:
    """Dramatiq's own way: ``actor.send`` in a loop, one Redis round trip each."""
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url, namespace="bench-send")
    dramatiq.set_broker(broker)

    @dramatiq.actor(queue_name="bench-send", broker=broker)
    def send_delivery(delivery_id: int) -> None: ...

    started = time.perf_counter()
    for i in range(messages):
        send_delivery.send(i + 1)
    rate = messages / (time.perf_counter() - started)
    broker.flush_all()
    broker.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--targets", nargs="*", default=["postgresql", "sqlite"], choices=["postgresql", "sqlite"])
    parser.add_argument(
        "--send-sample",
        type=int,
        default=50_000,
        help="messages for the actor.send baseline (extrapolated to the full run)",
    )
    parser.add_argument("--rerun", action="store_true", help="also enqueue the same file again (all present)")
    parser.add_argument(
        "--profile-rows",
        type=int,
        default=200_000,
        help="rows for an extra run into PostgreSQL under py-spy, for the profile (0: none)",
    )
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from dispatcher.broker.embedded import EmbeddedRedis

    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    csv_path = cached(WORK, args.rows)
    print(
        f"recipients: {csv_path} ({csv_path.stat().st_size / 1e6:.0f} MB; ready in {time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    campaign = campaign_file()
    server = EmbeddedRedis(WORK / "redis-enqueue", persistent=False)
    redis_url = server.start()
    client = redis.Redis.from_url(redis_url)
    runs: list[Run] = []
    try:
        rows, floor_s = csv_floor(csv_path)
        print(f"floor: csv module reads {rows:,} rows in {floor_s:.2f}s = {rows / floor_s:,.0f} rows/s", flush=True)
        client.flushall()
        send_rate = dramatiq_send_rate(redis_url, min(args.send_sample, rows))
        print(
            f"baseline: Dramatiq actor.send loop {send_rate:,.0f} messages/s ({min(args.send_sample, rows):,} sent)",
            flush=True,
        )
        for target in args.targets:
            client.flushall()
            if target == "postgresql":
                reset_postgres(PG_URL)
                url = PG_URL
            else:
                url = sqlite_url()
            run = run_enqueue(target, url, redis_url, csv_path, campaign)
            runs.append(run)
            print(
                f"{target} + Redis: {rows:,} rows in {run.seconds:.1f}s = {rows / run.seconds:,.0f} rows/s, "
                f"peak RSS {run.rss_mb:.0f} MB, exit {run.exit_code}; ledger {run.rows_in_ledger:,}, "
                f"transitions {run.transitions:,}, broker {run.messages:,}",
                flush=True,
            )
            if args.rerun:
                client.flushall()
                again = run_enqueue(f"{target}-again", url, redis_url, csv_path, campaign)
                runs.append(again)
                print(
                    f"{target} again (all already present): {again.seconds:.1f}s = "
                    f"{rows / again.seconds:,.0f} rows/s, peak RSS {again.rss_mb:.0f} MB, broker {again.messages:,}",
                    flush=True,
                )
        profile = None
        if args.profile_rows and sampling.py_spy():
            client.flushall()
            reset_postgres(PG_URL)
            profile = profile_enqueue(PG_URL, redis_url, cached(WORK, args.profile_rows), campaign)
    finally:
        server.stop()
        shutil.rmtree(WORK / "data", ignore_errors=True)

    lines = [
        "| figure | target | result | baseline (same run) | ratio |",
        "|---|---|---|---|---|",
        f"| floor: csv module only, no validation or writes | — | {rows / floor_s:,.0f} rows/s ({floor_s:.1f} s) "
        "| — | — |",
    ]
    for run in runs:
        rate = rows / run.seconds
        # The baseline hands the same deliveries to the broker the way a script would: one actor.send each
        # (we put several deliveries in one message; comparing message counts would flatter the baseline).
        new = run.rows_in_ledger
        send_s = new / send_rate if new else 0.0
        if run.label == "postgresql":
            verdict = "met" if rate >= TARGET_RATE else "**not yet met**"
            target = f"≥ {TARGET_RATE:,} rows/s ({rows / TARGET_RATE:.0f} s) — {verdict}"
        elif run.label == "sqlite":
            verdict = "met" if run.seconds <= TARGET_SQLITE_S * rows / 1_000_000 else "**not yet met**"
            target = f"≤ {TARGET_SQLITE_S * rows / 1_000_000:.0f} s — {verdict}"
        else:
            target = "—"
        base = (
            f"actor.send loop, one message for each of the same {new:,} deliveries, alone: {send_s:.1f} s "
            "(extrapolated)"
            if new
            else "—"
        )
        ratio = f"{send_s / run.seconds:.1f}× faster than actor.send alone" if new else "—"
        lines.append(
            f"| {run.label} + Redis: CSV → validation → ledger → broker | {target} | "
            f"{run.seconds:.1f} s = {rate:,.0f} rows/s; {run.rows_in_ledger:,} deliveries, "
            f"{run.messages:,} messages; {rows / floor_s / rate:.1f}× the csv floor's time | {base} | "
            f"{ratio} |"
        )
    for run in runs:
        verdict = "met" if run.rss_mb <= TARGET_RSS_MB else "**not yet met**"
        lines.append(
            f"| peak RSS of `dispatcher enqueue`, {run.label} | ≤ {TARGET_RSS_MB:.0f} MB — {verdict} | "
            f"{run.rss_mb:.0f} MB | — | — |"
        )
    notes = "\n".join(f"- {run.label}: {run.cpu}." for run in runs)
    missed = [
        run
        for run in runs
        if (run.label == "postgresql" and rows / run.seconds < TARGET_RATE)
        or (run.label == "sqlite" and run.seconds > TARGET_SQLITE_S * rows / 1_000_000)
    ]
    if missed:
        notes += (
            "\n\n**Not yet met** where marked. The CPU lines above are the reason: one list costs more "
            "CPU seconds (our two processes, PostgreSQL, Redis) than two cores give in the target time, "
            "before anything else on this shared machine takes its share. Our processes spend most of it "
            "in Python per row (profile below): reading and splitting the CSV, the checks, preparing the "
            "rows for the database and the messages for Redis; PostgreSQL maintains five indexes on "
            "`deliveries` and three on `transitions` for every new delivery. Since 2026-11-26 the writes "
            "run in a process of their own for large files, so checking and writing use both cores; what "
            "would close the rest of the gap is less work per row: fewer objects per row between the CSV "
            "reader and the COPY, and no `queued` audit row per delivery at import (its `created_at` and "
            "the `imports` row are the same evidence, but `Ledger.history` and the tests read that row, "
            "so it stays). Before the changes in this work the same command measured 1,893 rows/s into "
            "PostgreSQL and 3,601 rows/s into SQLite (100,000 rows, 2026-11-25); with the writer thread "
            "14,655 and 13,781 rows/s (1,000,000 rows, 2026-11-26)."
        )
    lines.append("")
    lines.append("Where the CPU went during each run (all processes; the machine is shared):\n\n" + notes)
    if profile:
        lines.append(
            f"\nWhere `dispatcher enqueue`'s own time goes (py-spy, an extra run of {args.profile_rows:,} "
            "rows into PostgreSQL; the command and its writer process; PostgreSQL's and Redis's work "
            "is not in these samples):\n\n" + sampling.table(profile)
        )
    elif args.profile_rows:
        lines.append("\n(No profile: py-spy is not installed; `.venv/bin/pip install py-spy`.)")
    body = (
        f"## Enqueue ({rows:,} recipients)\n\n"
        f"{machine()}; command: `.venv/bin/python bench/enqueue.py --rows {rows} "
        f"{'--rerun ' if args.rerun else ''}--write`.\n"
        f"The list: 60 % e-mail (carrier domains, legacy docomo/au addresses), 40 % phones in mixed writings "
        f"(full-width digits, +81, no separators), 1 % bad rows of 14 kinds (bench/population.py). "
        f"`dispatcher enqueue` runs as a child process into a private redis-server; times are wall clock from "
        f"spawn to exit. The actor.send baseline sent {min(args.send_sample, rows):,} messages "
        f"({send_rate:,.0f}/s) and is extrapolated to one message per delivery in the ledger.\n\n"
        + "\n".join(lines)
        + "\n\n"
        + DESIGN
    )
    print(body)
    if args.write:
        write_section("enqueue", body)


if __name__ == "__main__":
    main()
