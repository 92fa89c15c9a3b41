#!/opt/dispatcher/bin/python
"""Health checks for containers (installed as ``dispatcher-healthcheck`` in the image).

    dispatcher-healthcheck worker      the Dramatiq pool is running and Redis answers
    dispatcher-healthcheck ledger      the ledger database answers
    dispatcher-healthcheck http URL    URL answers 200 (the dashboard's health route)

Exit 0 healthy, 1 not (with one line on stderr saying why). Reads the same DISPATCHER_* variables as the
program. Never prints a URL's credentials or a setting's value.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def pool_running(proc: Path = Path("/proc")) -> bool:
    """A ``python -m dramatiq dispatcher.sending.actors`` process exists (the supervisor restarts it if it dies)."""
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"dramatiq" in args and b"dispatcher.sending.actors" in args:
            return True
    return False


def redis_answers() -> bool:
    import redis

    url = os.environ.get("DISPATCHER_REDIS_URL")
    if not url:
        return False
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3).ping())
    except redis.RedisError:
        return False


def ledger_answers() -> bool:
    import sqlalchemy

    from dispatcher.core.settings import load_settings

    try:
        engine = sqlalchemy.create_engine(load_settings().ledger_url)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:  # any failure is "unhealthy"; the reason is in the program's own logs
        return False


def http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def main(argv: list[str]) -> int:
    checks = {
        "worker": [("worker pool not running", pool_running), ("Redis does not answer", redis_answers)],
        "ledger": [("ledger database does not answer", ledger_answers)],
    }
    if len(argv) == 2 and argv[0] == "http":
        checks["http"] = [("health route does not answer 200", lambda: http_answers(argv[1]))]
    elif len(argv) != 1 or argv[0] not in checks:
        print("usage: dispatcher-healthcheck worker | ledger | http URL", file=sys.stderr)
        return 2
    for reason, check in checks[argv[0]]:
        if not check():
            print(f"unhealthy: {reason}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
