"""Real services for the tests: Redis, PostgreSQL, a moto server over HTTP.

Each is found on this machine (the usual local service) or started for the run. Where a service can be
neither found nor started, tests that need it are skipped with a loud reason, except under CI=true,
where a missing service is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(service: str, why: str) -> None:
    message = f"{service} unavailable: {why}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)", pytrace=False)
    print(f"\n*** SKIPPING tests that need {message} ***\n")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class RedisService:
    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.tmp: str | None = None
        self.url: str | None = None

    def start(self) -> str:
        explicit = os.environ.get("DISPATCHER_TEST_REDIS_URL")
        if explicit:
            self.url = explicit
            return explicit
        # A private server per test session: concurrent sessions (and their workers) never share queues.
        from dispatcher.broker.embedded import redis_binary

        binary = redis_binary()
        if binary is None:
            if port_open("127.0.0.1", 6379):
                self.url = "redis://127.0.0.1:6379/9"
                return self.url
            missing("Redis", "nothing on 127.0.0.1:6379 and no redis-server binary")
        port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="dispatcher-test-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if port_open("127.0.0.1", port):
                break
            time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{port}/9"
        return self.url

    def stop(self) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(10)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)


class PostgresService:
    """The machine's PostgreSQL, or a throwaway cluster when initdb is on this machine."""

    def __init__(self) -> None:
        self.tmp: str | None = None
        self.pg_ctl: str | None = None
        self.admin_url: str | None = None
        self.database = ""

    def start(self) -> str:
        explicit = os.environ.get("DISPATCHER_TEST_POSTGRES_URL")
        if explicit:
            return explicit
        if port_open("127.0.0.1", 5432):
            host, port = "127.0.0.1", 5432
        else:
            host, port = "127.0.0.1", self._start_throwaway()
        base = f"postgresql+psycopg://postgres@{host}:{port}"
        # A database per test session: two suites on one machine (a CI run beside a developer's) never drop
        # each other's tables.
        self.database = f"dispatcher_test_{os.getpid()}"
        self.admin_url = f"{base}/postgres"
        self._create_database(self.admin_url, self.database)
        return f"{base}/{self.database}"

    def _start_throwaway(self) -> int:
        bindir = next((p for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
        if bindir is None or not (bindir / "initdb").exists():
            missing("PostgreSQL", "nothing on 127.0.0.1:5432 and no initdb to start one")
        assert bindir is not None
        self.tmp = tempfile.mkdtemp(prefix="dispatcher-test-pg-")
        port = free_port()
        user = ["-U", "postgres"]
        subprocess.run(
            [str(bindir / "initdb"), "-D", self.tmp, "-A", "trust", *user], check=True, stdout=subprocess.DEVNULL
        )
        self.pg_ctl = str(bindir / "pg_ctl")
        subprocess.run(
            [
                self.pg_ctl,
                "-D",
                self.tmp,
                "-w",
                "-o",
                f"-p {port} -k {self.tmp} -h 127.0.0.1",
                "start",
                "-l",
                f"{self.tmp}/log",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return port

    def _create_database(self, admin_url: str, name: str) -> None:
        import sqlalchemy

        try:
            engine = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                exists = conn.execute(
                    sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname=:n"), {"n": name}
                ).scalar()
                if not exists:
                    conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
            engine.dispose()
        except sqlalchemy.exc.OperationalError as exc:
            missing("PostgreSQL", str(exc).splitlines()[0])

    def stop(self) -> None:
        if self.admin_url and not self.pg_ctl:
            import sqlalchemy

            engine = sqlalchemy.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
            engine.dispose()
        if self.pg_ctl and self.tmp:
            subprocess.run([self.pg_ctl, "-D", self.tmp, "-m", "immediate", "stop"], stdout=subprocess.DEVNULL)
            shutil.rmtree(self.tmp, ignore_errors=True)


class MotoService:
    """moto in server mode on a free loopback port: boto3 talks to it over real HTTP."""

    def __init__(self) -> None:
        self.server = None
        self.url = ""

    def start(self) -> str:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request).read()

    def data(self) -> dict:
        return json.load(urllib.request.urlopen(f"{self.url}/moto-api/data.json"))

    def sent_emails(self) -> list[dict]:
        return list(self.data().get("ses", {}).get("RawMessage", []))

    def sent_sms(self) -> list[dict]:
        return list(self.data().get("sns", {}).get("SMS", []))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
