"""Support for the reliability suite (tests/test_reliability.py): worker pools to kill, servers to break.

Everything here runs on 127.0.0.1, in processes this test session started, and stops by itself: every
wait has a deadline. Only processes started here are ever signalled (by their own pid or process group).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from dispatcher.core.states import PENDING, Status
from dispatcher.ledger import Ledger

from .services import free_port, missing, port_open

#: The size knob of the suite: deliveries in the crash campaign; the other scenarios scale from it.
CHAOS_SIZE = int(os.environ.get("DISPATCHER_CHAOS_SIZE", "3000"))
#: Where each scenario appends its figures as one JSON line (read now: tests run with DISPATCHER_* cleared).
CHAOS_REPORT = os.environ.get("DISPATCHER_CHAOS_REPORT")
PENDING_VALUES = {s.value for s in PENDING}


# Figures -------------------------------------------------------------------------------------------
@dataclass
class Figures:
    """What one scenario measured; printed at the end of the test and, with DISPATCHER_CHAOS_REPORT set,
    appended as one JSON line to that file (docs/reliability.md is written from it)."""

    scenario: str
    values: dict[str, object] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __setitem__(self, key: str, value: object) -> None:
        self.values[key] = value

    def emit(self) -> None:
        self.values.setdefault("seconds", round(time.monotonic() - self.started, 1))
        record = {
            "scenario": self.scenario,
            "size": CHAOS_SIZE,
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
            **self.values,
        }
        print(f"\n[chaos] {json.dumps(record, ensure_ascii=False)}")
        if CHAOS_REPORT:
            with open(CHAOS_REPORT, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")


# Commands ------------------------------------------------------------------------------------------
def run(cmd: list[str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


class WorkerPool:
    """``dispatcher worker`` in its own process group, output to a log file; stopped for sure on exit."""

    def __init__(self, cmd: list[str], log_path: Path, processes: int = 2, threads: int = 4) -> None:
        self.command = [*cmd, "worker", "--processes", str(processes), "--threads", str(threads)]
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.killed: list[int] = []

    def __enter__(self) -> WorkerPool:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        process = self.process
        if process is None:
            return
        self.process = None
        try:
            family = psutil.Process(process.pid).children(recursive=True)
        except psutil.Error:
            family = []
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the group is ours while its leader lives
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
        # Stragglers (a Dramatiq process the supervisor no longer waited for): psutil checks that each pid
        # still names the process we saw, not a newer one that reuses it.
        for child in family:
            try:
                if child.is_running():
                    child.kill()
            except psutil.Error:
                pass

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def dramatiq_workers(self) -> list[psutil.Process]:
        """The Dramatiq worker processes: children of the Dramatiq master the supervisor started."""
        assert self.process is not None
        try:
            masters = [p for p in psutil.Process(self.process.pid).children() if "dramatiq" in " ".join(p.cmdline())]
            return [w for m in masters for w in m.children() if w.is_running() and w.status() != "zombie"]
        except psutil.Error:
            return []

    def kill_one(self, processes: int, min_age: float) -> bool:
        """``kill -9`` one worker process, only when the whole pool is up and has been for ``min_age`` s.

        (Killing the sibling of a process just killed hits a pool that is already shutting down.)
        """
        workers = sorted(self.dramatiq_workers(), key=lambda p: p.create_time())
        if len(workers) != processes or time.time() - workers[-1].create_time() < min_age:
            return False
        try:
            workers[0].send_signal(signal.SIGKILL)
        except psutil.Error:
            return False
        self.killed.append(workers[0].pid)
        return True

    def kill_pool(self, processes: int, min_age: float) -> bool:
        """``kill -9`` every worker process of the pool at once (every send in flight dies), under the same
        conditions as :meth:`kill_one`."""
        workers = self.dramatiq_workers()
        if len(workers) != processes or time.time() - max(w.create_time() for w in workers) < min_age:
            return False
        for worker in workers:
            try:
                worker.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        self.killed.append(workers[0].pid)
        return True

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""


# The ledger, polled in-process ---------------------------------------------------------------------
def counts(ledger: Ledger, campaign_id: str) -> dict[str, int]:
    """``{status: n}`` for the campaign, from the deliveries themselves (not the maintained counters)."""
    by_status: Counter[str] = Counter()
    for (_, status), n in ledger.count_rows(campaign_id).items():
        by_status[status] += n
    return dict(by_status)


def pending(by_status: dict[str, int]) -> int:
    return sum(n for s, n in by_status.items() if s in PENDING_VALUES)


def settled(by_status: dict[str, int]) -> bool:
    return pending(by_status) == 0


def wait_until(
    ledger: Ledger,
    campaign_id: str,
    done: Callable[[dict[str, int]], bool],
    timeout: float,
    tick: Callable[[dict[str, int]], None] | None = None,
    every: float = 0.5,
) -> dict[str, int]:
    """Poll the campaign's counts until ``done`` says so or ``timeout`` passes; returns the last counts."""
    deadline = time.monotonic() + timeout
    now: dict[str, int] = {}
    while True:
        try:
            now = counts(ledger, campaign_id)
        except Exception:  # the ledger itself may be down in a scenario: ask again
            pass
        else:
            if done(now):
                return now
        if tick is not None:
            tick(now)
        if time.monotonic() > deadline:
            return now
        time.sleep(every)


def deliveries(ledger: Ledger, campaign_id: str) -> dict[int, tuple[str, int]]:
    """``{delivery id: (status, attempts)}``."""
    return {d.id: (d.status.value, d.attempts) for d in ledger.iter_campaign(campaign_id)}


# The outbox: what "the provider" got ---------------------------------------------------------------
def outbox_messages(outbox: Path, campaign_id: str) -> Counter[int]:
    """Messages written per delivery id: e-mails (``<id>.<attempt>.eml``) and SMS (``sms.jsonl`` lines)."""
    from dispatcher.providers.outbox import _safe

    found: Counter[int] = Counter()
    folder = outbox / "email" / _safe(campaign_id)  # the outbox's folder name (a reminder run's "~" is "_")
    if folder.is_dir():
        found.update(int(p.name.split(".")[0]) for p in folder.glob("*.eml"))
    lines = outbox / "sms.jsonl"
    if lines.exists():
        for line in lines.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["campaign"] == campaign_id:
                found[int(record["reference"].split(".")[0])] += 1
    return found


def check_outbox_against_ledger(ledger: Ledger, campaign_id: str, outbox: Path) -> dict[str, int]:
    """Nobody got two messages; every ``sent`` has its one message; an ``unknown`` has at most one.

    Returns how many ``unknown`` deliveries did and did not reach the outbox.
    """
    states = deliveries(ledger, campaign_id)
    messages = outbox_messages(outbox, campaign_id)
    twice = {i: n for i, n in messages.items() if n > 1}
    assert not twice, f"{len(twice)} deliveries got more than one message, e.g. {list(twice.items())[:5]}"
    assert set(messages) <= set(states), "a message for a delivery the ledger does not know"
    sent_without = [i for i, (status, _) in states.items() if status == Status.SENT and messages[i] != 1]
    assert not sent_without, f"{len(sent_without)} deliveries are 'sent' with no message, e.g. {sent_without[:5]}"
    not_sent_with = [
        i for i, (status, _) in states.items() if status not in (Status.SENT, Status.UNKNOWN) and messages[i]
    ]
    assert not not_sent_with, f"messages for deliveries neither sent nor unknown: {not_sent_with[:5]}"
    unknown = [i for i, (status, _) in states.items() if status == Status.UNKNOWN]
    reached = sum(1 for i in unknown if messages[i])
    return {"unknown_sent": reached, "unknown_not_sent": len(unknown) - reached}


def broker_backlog(redis_url: str) -> int:
    """Messages the broker still holds for the deliveries queue (waiting, delayed or unacknowledged)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.hlen("dispatcher:deliveries.msgs")) + int(client.hlen("dispatcher:deliveries.DQ.msgs"))
    finally:
        client.close()


# Leaks ---------------------------------------------------------------------------------------------
RECEIPT_URL = re.compile(r"receive\.example\.jp/r/")
FULL_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@example\.jp")
FULL_PHONE = re.compile(r"\+81\d{9,10}(?!\d)|(?<!\d)0[789]0-?\d{4}-?\d{4}(?!\d)")


def assert_no_leaks(texts: Iterable[tuple[str, str]]) -> int:
    """No receipt URL and no full contact in any captured line. Returns the number of lines read."""
    lines = 0
    for source, text in texts:
        for number, line in enumerate(text.splitlines(), start=1):
            lines += 1
            for pattern in (RECEIPT_URL, FULL_EMAIL, FULL_PHONE):
                found = pattern.search(line)
                assert found is None, f"{source}:{number} leaks {pattern.pattern!r}: {line[:300]}"
    return lines


# Servers this test breaks on purpose ---------------------------------------------------------------
class PrivateRedis:
    """A redis-server of the test's own, without persistence, that can be killed and started again."""

    def __init__(self) -> None:
        from dispatcher.broker.embedded import redis_binary

        binary = redis_binary()
        if binary is None:
            missing("Redis", "no redis-server binary to start a private server")
        assert binary is not None
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dispatcher-chaos-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            assert self.process.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        return self.url

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own (initdb + pg_ctl), never the machine's shared service.

    initdb refuses to run as root: as root, the cluster belongs to the ``postgres`` OS user and the
    commands run through ``runuser``.
    """

    def __init__(self) -> None:
        bindir = next(
            (p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if (p / "initdb").exists()),
            None,
        )
        if bindir is None:
            missing("PostgreSQL", "no initdb on this machine to start a throwaway cluster")
        assert bindir is not None
        self.bindir = bindir
        self.tmp = Path(tempfile.mkdtemp(prefix="dispatcher-chaos-pg-"))
        self.data = self.tmp / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                missing("PostgreSQL", "running as root without runuser to start initdb as 'postgres'")
            import pwd

            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                missing("PostgreSQL", "running as root and there is no 'postgres' user for initdb")
            os.chown(self.tmp, owner.pw_uid, owner.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, tool: str, *args: str, timeout: float = 120) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            timeout=timeout,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start(self) -> str:
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.tmp / "log"),
            "-o",
            f"-p {self.port} -k {self.tmp} -h 127.0.0.1 -c fsync=off -c max_connections=200",
            "start",
        )
        return self.url

    def restart(self) -> float:
        """``pg_ctl restart -m fast``: every connection is cut. Returns how long it took."""
        started = time.monotonic()
        self._pg("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "-l", str(self.tmp / "log"), "restart")
        return time.monotonic() - started

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", timeout=60)
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
