"""Dispatch: N deliveries through the full send path, against Dramatiq's no-op ceiling, in the same run.

The full path is `dispatcher worker -p 2 -t 8` (Dramatiq on dispatcher.sending.actors, the periodic sweeper beside
it) sending N queued deliveries of the bench campaign: claim, render, rate-limit check (no cap applies:
no channel rate, no domain rates), send via the ``outbox`` provider (an .eml file per e-mail, a JSON line
per SMS), record ``sent``, with the PostgreSQL ledger and a private redis-server. The rate counts from the
first to the last ``sent`` in the ledger; the queue is filled before the workers start.

Baselines, same run, same Redis:
- Dramatiq's ceiling: a no-op actor (bench/noop_actor.py, same options as ours) on the dramatiq CLI with
  the same processes, threads and prefetch, N messages; measured before and after ours, rate from the first
  to the last acknowledgement (the broker's message hash, polled every 20 ms);
- the script an office would write: boto3 sending e-mails one after the other (SES v2 ``SendEmail``) to a
  local moto server (``ThreadedMotoServer`` on 127.0.0.1), for ``--boto3`` messages.

Worker RSS is sampled every half second; reported at the first send, half-way and the last send.

    .venv/bin/python bench/dispatch.py [--deliveries 100000] [--boto3 2000] [--prefetch 32] [--write]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    "DISPATCHER_BENCH_DISPATCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/dispatcher_bench_dispatch"
)
CAMPAIGN_ID = "bench-enqueue"
#: Inside the campaign's sending period and its SMS window (the clock runs on in real time from there).
CLOCK_START = "2023-04-05T10:00:00+09:00"
PROCESSES, THREADS = 2, 8
TIMEOUT = 540.0  # --timeout
NOOP_QUEUE = "bench-noop"


def reset_postgres(url: str) -> None:
    parsed = sqlalchemy.make_url(url)
    admin = sqlalchemy.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()


#: A cap far above the pace: every send takes a rate slot (one Redis script call), none ever waits.
CAP_PER_SECOND = "1000000"


def worker_env(redis_url: str, outbox: Path, prefetch: int, caps: bool = False) -> dict[str, str]:
    env = dict(
        os.environ,
        DISPATCHER_DATABASE_URL=PG_URL,
        DISPATCHER_REDIS_URL=redis_url,
        DISPATCHER_EMAIL_PROVIDER="outbox",
        DISPATCHER_SMS_PROVIDER="outbox",
        DISPATCHER_OUTBOX_DIR=str(outbox),
        DISPATCHER_DOMAIN_RATES="{}",
        DISPATCHER_CLOCK_START=CLOCK_START,
        DISPATCHER_DATA_DIR=str(WORK / "data"),
        dramatiq_queue_prefetch=str(prefetch),
    )
    if caps:
        env.update(DISPATCHER_EMAIL_RATE=CAP_PER_SECOND, DISPATCHER_SMS_RATE=CAP_PER_SECOND)
    return env


def ledger_commits(url: str) -> int:
    """Committed transactions of the ledger's database so far (``pg_stat_database.xact_commit``)."""
    parsed = sqlalchemy.make_url(url)
    engine = sqlalchemy.create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            return int(
                conn.execute(
                    text("SELECT xact_commit FROM pg_stat_database WHERE datname = :d"), {"d": parsed.database}
                ).scalar_one()
            )
    finally:
        engine.dispose()


def workers_of(root: psutil.Process) -> list[psutil.Process]:
    """The Dramatiq worker processes under ``root`` (the processes whose parent runs ``-m dramatiq``)."""
    found = []
    for proc in root.children(recursive=True):
        try:
            parent = proc.parent()
            if (
                parent is not None
                and "dramatiq" in " ".join(parent.cmdline())
                and "dramatiq" in " ".join(proc.cmdline())
            ):
                found.append(proc)
        except psutil.Error:
            continue
    return found


@dataclass
class Sample:
    at: float
    sent: int
    rss_mb: list[float] = field(default_factory=list)


@dataclass
class Ours:
    n: int
    rate: float
    seconds: float
    samples: list[Sample]
    emails: int
    sms: int
    duplicates: int
    statuses: dict[str, int]
    profile: list | None = None
    cpu: str = ""
    cpu_ms: float = 0.0
    cpu_split: str = ""
    #: Ledger commits (pg_stat_database.xact_commit of the ledger's database) per delivery sent.
    commits_per_delivery: float = 0.0
    #: PostgreSQL CPU per delivery sent (ms), the whole server: what bounds a fleet sharing one ledger.
    pg_ms: float = 0.0


DESIGN = """A broker message carries 20 delivery ids (`DISPATCHER_SEND_BATCH`). The worker thread reads all 20
(with their campaign's state and version and their contacts' suppressions) in one query, runs the pre-claim
checks (dispatcher/sending/checks.py), opens the batch's hash of send marks in Redis (one script call, on a
connection the batch holds until it is done: dispatcher/sending/line.py) and claims every delivery that may
go in one compare-and-set statement (each delivery's own audit row and attempt number, the counters by
campaign and channel; the rows go as one JSON parameter). Then, one after the other: render, one Redis
round trip that writes the "about to send" mark of this delivery (under a rate cap: takes the rate slot and
writes the mark in one script) together with the previous send's outcome mark and rate re-stamp, the
provider call. At the end one more statement records every outcome (state, provider message id, audit
rows, counters, `provider_messages`) and the hash is deleted. Provider events that arrived before their
send was recorded are looked for once per batch, after the record. That is four ledger statements for 20
deliveries on PostgreSQL (0.2 per delivery; each runs outside an explicit transaction, so each is one
commit); before this design it was 2.1 per delivery, one claim and one record per send."""

#: The parts of a worker's time in the profile (the first marker found in a sample's stack takes it).
WORKER_PARTS = [
    ("ledger: one read for the batch (deliveries, campaign state, suppressions)", ("Ledger.for_send_many",)),
    ("ledger: claim the batch (one statement)", ("Ledger.claim_many",)),
    ("ledger: record the batch's outcomes (one statement)", ("Ledger.record_many",)),
    ("ledger: early provider events, once per batch", ("_AfterBatch.finish",)),
    ("ledger: connection checkout and liveness ping", ("Ledger.pinned",)),
    ("Redis: send marks (open, about to send + the previous outcome, close)", ("dispatcher/sending/marks.py",)),
    ("Redis: rate slots", ("dispatcher/sending/ratelimit.py",)),
    ("e-mail: MIME bytes (dispatcher/sending/mime.py)", ("build_raw (dispatcher/sending/mime.py)",)),
    ("e-mail and SMS: Jinja2 render", ("Renderer.email", "Renderer.sms")),
    ("provider `outbox`: write the .eml file / SMS line", ("Provider.send",)),
    ("circuit-breaker counter", ("Breaker.record_success",)),
    ("logging", ("Logger.info", "Logger._log", "Handler.handle", "Logger.log")),
    ("rest of our send path", ("send_deliveries (dispatcher/sending/actors.py)",)),
    ("Dramatiq: fetch, decode, middleware, ack", ("dramatiq",)),
]


def run_ours(redis_url: str, n: int, prefetch: int, profile_seconds: float = 0.0, caps: bool = False) -> Ours:
    from dispatcher.ledger import Ledger

    outbox = WORK / "outbox"
    shutil.rmtree(outbox, ignore_errors=True)
    env = worker_env(redis_url, outbox, prefetch, caps)
    ledger = Ledger(PG_URL)
    time.sleep(1.0)  # PostgreSQL publishes a session's statistics when it goes idle (at most every second)
    commits_before = ledger_commits(PG_URL)
    log = (WORK / "dispatch-worker.log").open("wb")
    child = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "dispatcher"), "worker", "-p", str(PROCESSES), "-t", str(THREADS)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    top = psutil.Process(child.pid)
    meter = sampling.CpuMeter()
    meter.tree_root, meter.tree_name = child.pid, "workers"
    meter.postgres_database = sqlalchemy.make_url(PG_URL).database
    meter.__enter__()
    samples: list[Sample] = []
    profile: list = []
    profiler: threading.Thread | None = None
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            counts = ledger.counts(CAMPAIGN_ID)
            sent = sum(v for (_, st), v in counts.items() if st == "sent")
            if profile_seconds and profiler is None and sent >= n // 5 and (workers := workers_of(top)):
                profiler = threading.Thread(
                    target=lambda pid=workers[0].pid: profile.append(sampling.record(pid, profile_seconds, gil=True))
                )
                profiler.start()
            rss = []
            for proc in workers_of(top):
                try:
                    rss.append(proc.memory_info().rss / 2**20)
                except psutil.Error:
                    pass
            samples.append(Sample(time.time(), sent, rss))
            if not any(v for (_, st), v in counts.items() if st in ("queued", "sending", "retrying")):
                break
            time.sleep(0.5)
    finally:
        meter.__exit__()
        if profiler is not None:
            profiler.join()
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=90)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
    time.sleep(1.5)
    commits = ledger_commits(PG_URL) - commits_before
    with ledger.read() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), extract(epoch FROM max(first_sent_at) - min(first_sent_at)) FROM deliveries "
                "WHERE campaign_id = :c AND status = 'sent'"
            ),
            {"c": CAMPAIGN_ID},
        ).one()
        statuses = dict(
            conn.execute(
                text("SELECT status, count(*) FROM deliveries WHERE campaign_id = :c GROUP BY status"),
                {"c": CAMPAIGN_ID},
            ).all()
        )
    ledger.dispose()
    sent, seconds = int(row[0]), float(row[1] or 0.0)
    emails = sum(1 for _ in (outbox / "email").rglob("*.eml"))
    sms_file = outbox / "sms.jsonl"
    sms_lines = sms_file.read_text(encoding="utf-8").splitlines() if sms_file.exists() else []
    import json

    references = [json.loads(line)["reference"] for line in sms_lines]
    duplicates = len(references) - len(set(references))
    cpu = meter.summary(
        {
            "workers": "`dispatcher worker` (all its processes)",
            "postgres-ledger": "PostgreSQL backends of the ledger database",
            "postgres": "other PostgreSQL processes (other databases on this shared server; WAL writer)",
            "redis-server": "Redis",
        }
    )
    cpu_ms = 1000 * sum(meter.by_name[k] for k in ("workers", "postgres-ledger", "redis-server")) / max(1, sent)
    split = ", ".join(
        f"{label} {1000 * meter.by_name[k] / max(1, sent):.2f} ms"
        for k, label in (
            ("workers", "worker processes"),
            ("postgres-ledger", "PostgreSQL"),
            ("redis-server", "Redis"),
        )
    )
    return Ours(
        sent,
        (sent - 1) / seconds if seconds else 0.0,
        seconds,
        samples,
        emails,
        len(sms_lines),
        duplicates,
        statuses,
        profile[0] if profile else None,
        cpu,
        cpu_ms,
        split,
        commits / max(1, sent),
        1000 * meter.by_name["postgres-ledger"] / max(1, sent),
    )


def run_noop(redis_url: str, n: int, prefetch: int) -> tuple[float, float]:
    """Dramatiq's ceiling: the same pool running an actor that does nothing, over a pre-filled queue."""
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ["DISPATCHER_REDIS_URL"] = redis_url
    import noop_actor

    from dispatcher.broker import NAMESPACE, enqueue_ids

    client = redis.Redis.from_url(redis_url)
    key = f"{NAMESPACE}:{NOOP_QUEUE}.msgs"
    client.delete(key, f"{NAMESPACE}:{NOOP_QUEUE}")
    for start in range(0, n, 10_000):
        enqueue_ids(noop_actor.broker, noop_actor.noop, list(range(start + 1, min(n, start + 10_000) + 1)))
    env = worker_env(redis_url, WORK / "outbox-noop", prefetch)
    log = (WORK / "dispatch-noop.log").open("wb")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "noop_actor",
            "--path",
            str(Path(__file__).parent),
            "--processes",
            str(PROCESSES),
            "--threads",
            str(THREADS),
            "--queues",
            NOOP_QUEUE,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    first = last = None
    deadline = time.monotonic() + TIMEOUT
    meter = sampling.CpuMeter()
    meter.tree_root, meter.tree_name = child.pid, "workers"
    meter.__enter__()
    try:
        while time.monotonic() < deadline:
            left = int(client.hlen(key))
            now = time.time()
            if first is None and left < n:
                first = now
            if left == 0:
                last = now
                break
            time.sleep(0.02)
    finally:
        meter.__exit__()
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()
    cpu_ms = 1000 * (meter.by_name["workers"] + meter.by_name["redis-server"]) / n
    if first is None or last is None or last <= first:
        return 0.0, cpu_ms
    return (n - 1) / (last - first), cpu_ms


def run_boto3(count: int, csv_path: Path) -> float:
    """The script an office would write: read the list, send each e-mail with boto3, one after the other."""
    import csv

    import boto3
    from moto.server import ThreadedMotoServer

    from dispatcher.broker.embedded import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        ses = boto3.client(
            "sesv2",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="ap-northeast-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        sender = "regionpay_compensation_ml@giftpad.jp"
        ses.create_email_identity(EmailIdentity=sender)
        rows = []
        with csv_path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row["email"]:
                    rows.append(row)
                if len(rows) == count:
                    break
        started = time.perf_counter()
        for row in rows:
            body = (
                f"{row['name']} 様\n\n地域クーポン regionPAY のシステム障害の補償として、ポイントをお受け取り"
                f"いただけます。\n受取URL: {row['receipt_url']}\n受取期限: 2023年5月31日(水)\n\n"
                "regionPAY 補償コールセンター 0120-479-249（平日 10:00～18:00）\n"
            )
            ses.send_email(
                FromEmailAddress=sender,
                Destination={"ToAddresses": [row["email"]]},
                Content={
                    "Simple": {
                        "Subject": {"Data": "【regionPAY】補償ポイント受取のご案内", "Charset": "UTF-8"},
                        "Body": {"Text": {"Data": body, "Charset": "UTF-8"}},
                    }
                },
            )
        return len(rows) / (time.perf_counter() - started)
    finally:
        server.stop()


def nearest(samples: list[Sample], sent: float) -> Sample:
    return min(samples, key=lambda s: abs(s.sent - sent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--boto3", type=int, default=2_000, help="e-mails for the sequential boto3 baseline")
    parser.add_argument(
        "--prefetch",
        type=int,
        default=THREADS * 4,
        help="dramatiq_queue_prefetch for both pools (default: what `dispatcher worker` sets)",
    )
    parser.add_argument(
        "--profile", type=float, default=15.0, help="seconds of py-spy samples of one worker during the run (0: none)"
    )
    parser.add_argument(
        "--also-prefetch", type=int, action="append", default=[], help="run both paths again at this prefetch"
    )
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    parser.add_argument("--timeout", type=float, default=540.0, help="seconds each pool may run")
    parser.add_argument(
        "--noop-messages", type=int, default=200_000, help="messages for each no-op baseline run (at most --deliveries)"
    )
    args = parser.parse_args()
    global TIMEOUT
    TIMEOUT = args.timeout
    noop_n = min(args.deliveries, args.noop_messages)
    sys.path.insert(0, str(ROOT))
    from dispatcher.broker.embedded import EmbeddedRedis

    n = args.deliveries
    WORK.mkdir(parents=True, exist_ok=True)
    csv_path = cached(WORK, n, bad_share=0.0)
    server = EmbeddedRedis(WORK / "redis-dispatch", persistent=False)
    redis_url = server.start()
    client = redis.Redis.from_url(redis_url)
    prefetches = list(dict.fromkeys([args.prefetch, *args.also_prefetch]))
    runs: list[Run] = []
    try:
        for prefetch in prefetches:
            client.flushall()
            noop_before, noop_cpu_before = run_noop(redis_url, noop_n, prefetch)
            print(f"no-op Dramatiq, prefetch {prefetch}: {noop_before:,.0f} msg/s", flush=True)
            variants = []
            for caps in (False, True):
                client.flushall()
                result = enqueue_for_run(redis_url, csv_path)
                profile = args.profile if (prefetch == args.prefetch and not caps) else 0.0
                ours = run_ours(redis_url, result.new, prefetch, profile, caps)
                print(
                    f"ours (prefetch {prefetch}, caps {caps}): {ours.n:,} sent at {ours.rate:,.0f}/s over "
                    f"{ours.seconds:.1f}s, {ours.cpu_ms:.2f} ms CPU each, {ours.commits_per_delivery:.3f} ledger "
                    f"commits each; statuses {ours.statuses}; outbox {ours.emails:,} e-mails + {ours.sms:,} SMS, "
                    f"duplicate SMS references {ours.duplicates}",
                    flush=True,
                )
                variants.append((caps, ours, result))
            client.flushall()
            noop_after, noop_cpu_after = run_noop(redis_url, noop_n, prefetch)
            print(f"no-op Dramatiq again, prefetch {prefetch}: {noop_after:,.0f} msg/s", flush=True)
            for caps, ours, result in variants:
                runs.append(
                    Run(prefetch, caps, ours, result, noop_before, noop_after, (noop_cpu_before + noop_cpu_after) / 2)
                )
    finally:
        server.stop()
    boto_rate = run_boto3(args.boto3, csv_path) if args.boto3 else 0.0
    body = report(args, n, runs, boto_rate, noop_n)
    print(body)
    if args.write:
        write_section("dispatch", body)


@dataclass
class Run:
    prefetch: int
    caps: bool
    ours: Ours
    result: object
    noop_before: float
    noop_after: float
    noop_cpu_ms: float

    @property
    def ceiling(self) -> float:
        return (self.noop_before + self.noop_after) / 2

    @property
    def share(self) -> float:
        return self.ours.rate / self.ceiling if self.ceiling else 0.0


def enqueue_for_run(redis_url: str, csv_path: Path) -> object:
    """A fresh ledger with the bench campaign queued (the broker's queue filled before the workers start)."""
    reset_postgres(PG_URL)
    from enqueue import campaign_file

    from dispatcher import broker
    from dispatcher.core import clock
    from dispatcher.core.settings import load_settings
    from dispatcher.intake.enqueue import enqueue_campaign

    settings = load_settings(database_url=PG_URL, redis_url=redis_url, clock_start=CLOCK_START)
    clock.start_at(settings.clock_start)
    broker.install(redis_url)
    started = time.perf_counter()
    result = enqueue_campaign(campaign_file(), csv_path, settings=settings, rejects_path=WORK / "dispatch-rejects.csv")
    print(
        f"enqueued {result.new:,} deliveries ({result.by_channel}) in {time.perf_counter() - started:.1f}s", flush=True
    )
    return result


def report(args: argparse.Namespace, n: int, runs: list[Run], boto_rate: float, noop_n: int) -> str:
    lines = [
        "| path | prefetch | deliveries/s | no-op ceiling, same prefetch (before / after) | share of the ceiling "
        "(target) | ledger commits per delivery (target ≤ 0.5) | CPU per delivery (no-op: per message) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        target = 0.4 if r.caps else 0.5
        mark = "✅" if r.share >= target else "❌"
        commits = "✅" if r.ours.commits_per_delivery <= 0.5 else "❌"
        path = "every send takes a rate slot (caps far above the pace)" if r.caps else "no caps"
        lines.append(
            f"| {path} | {r.prefetch} | {r.ours.rate:,.0f} ({r.ours.n:,} in {r.ours.seconds:.1f} s) | "
            f"{r.ceiling:,.0f}/s ({r.noop_before:,.0f} / {r.noop_after:,.0f}) | "
            f"{r.share:.0%} (≥ {target:.0%}) {mark} | "
            f"{r.ours.commits_per_delivery:.3f} {commits} | {r.ours.cpu_ms:.2f} ms ({r.noop_cpu_ms:.2f} ms) |"
        )
    first = runs[0]
    res: Any = first.result
    also = " ".join(f"--also-prefetch {p}" for p in args.also_prefetch)
    body = (
        f"## Dispatch ({n:,} deliveries)\n\n"
        f"{machine()}; command: `.venv/bin/python bench/dispatch.py --deliveries {n} --boto3 {args.boto3} "
        f"--noop-messages {args.noop_messages} --prefetch {args.prefetch} {also} --timeout {TIMEOUT:.0f} --write`.\n"
        f"1-minute load average at the end: {os.getloadavg()[0]:.1f}. "
        f"{res.new:,} deliveries ({res.by_channel['email']:,} e-mail, {res.by_channel['sms']:,} SMS) queued before "
        f"`dispatcher worker -p {PROCESSES} -t {THREADS}` starts, for each path; rate from the first to the last "
        "`sent` in the ledger. The no-op ceiling is Dramatiq's own pool running an actor that does nothing, with "
        f"the same processes, threads and prefetch, {noop_n:,} messages, before and after the two paths at that "
        "prefetch. Ledger commits: `pg_stat_database.xact_commit` of the ledger's database from the workers' start "
        "to their stop (everything: the batches, the sweeper, this script's polling of the counters twice a second), "
        "divided by the deliveries sent. The caps path sets `DISPATCHER_EMAIL_RATE` and `DISPATCHER_SMS_RATE` to "
        f"{CAP_PER_SECOND}/s, so every send takes (and re-stamps) a slot in Redis and none waits.\n\n"
        + "\n".join(lines)
    )
    best = min((r for r in runs if r.ours.pg_ms > 0), key=lambda r: r.ours.pg_ms, default=None)
    worst = max((r for r in runs if r.ours.pg_ms > 0), key=lambda r: r.ours.pg_ms, default=None)
    if best is not None and worst is not None:
        body += (
            "\n\n**Fleet ceiling.** Every worker host records into the one ledger, so PostgreSQL's CPU per delivery "
            f"bounds the fleet: {best.ours.pg_ms:.3f}–{worst.ours.pg_ms:.3f} ms per delivery in these runs (the "
            "backends serving the ledger database, this script's polling included; not the WAL writer, shared "
            "with the other databases on this server), so one PostgreSQL core records about "
            f"{1000 / worst.ours.pg_ms:,.0f}–{1000 / best.ours.pg_ms:,.0f} deliveries/s."
        )
    for r in runs:
        o = r.ours
        body += (
            f"\n\n- {'caps' if r.caps else 'no caps'}, prefetch {r.prefetch}: outbox {o.emails:,} .eml files + "
            f"{o.sms:,} SMS lines, {o.duplicates} duplicate SMS references; ledger statuses {o.statuses}. {o.cpu}"
        )
    if boto_rate:
        body += (
            f"\n\nThe script an office would write (boto3 SES v2 `send_email` in a loop to moto on 127.0.0.1): "
            f"{boto_rate:,.0f} e-mails/s ({args.boto3:,} sent); moto, not boto3, sets that pace."
        )
    body += "\n\n" + DESIGN
    profiled = next((r.ours.profile for r in runs if r.ours.profile), None)
    if profiled:
        body += (
            f"\n\nWhere a worker's time goes (py-spy, {args.profile:g} s of one worker process from a fifth of "
            f"the run on, no caps, prefetch {args.prefetch}; in each sample the thread holding the GIL):\n\n"
            + sampling.table(sampling.share(profiled, WORKER_PARTS))
        )
    return body


if __name__ == "__main__":
    main()
