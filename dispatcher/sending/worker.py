"""``dispatcher worker``: Dramatiq's worker pool, supervised, plus the periodic ledger sweep.

Dramatiq stops its whole pool when one worker process dies; we start it again. Messages the dead
process held come back through Dramatiq's maintenance, and the ledger's atomic claim makes sure a
redelivered message never sends twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import redis

from dispatcher import broker as _broker
from dispatcher.core.settings import Settings

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0


def _sweeper(settings: Settings, stop: threading.Event, crashed: threading.Event) -> None:
    from dispatcher.runtime import Runtime
    from dispatcher.sending.actors import dispatch_ids
    from dispatcher.sending.sweep import sweep

    rt = Runtime(settings)
    client = redis.Redis.from_url(settings.redis_url or "")
    broker = _broker.installed() or _broker.install(settings.redis_url or "")
    every = settings.sweep_interval_seconds
    first = True
    while not stop.is_set():
        if not first:
            crashed.wait(every)
        first = False  # the first sweep runs at start: work left from before this worker is found at once
        if stop.is_set():
            break
        try:
            if crashed.is_set():
                # Sweep at once, but hand over only what the broker cannot still hold: re-enqueueing every due
                # delivery after each crash put one more copy of all remaining work into Redis per crash
                # (190,000 messages for 20,000 deliveries after 10 kills). A dead process's own prefetched
                # messages come back through Dramatiq's maintenance once its heartbeat is stale.
                crashed.clear()
                sweep(rt, dispatch_ids, everything=False, queue_empty=_broker.queue_depth(broker) == 0)
                continue
            # One periodic sweeper at a time across every host.
            if not client.set(_broker.keys.sweep_lock(), os.getpid(), nx=True, px=max(1, int(every * 900))):
                continue
            sweep(rt, dispatch_ids, everything=False, queue_empty=_broker.queue_depth(broker) == 0)
        except Exception:
            log.exception("periodic sweep failed; will try again")
    rt.close()


def run_workers(settings: Settings, *, processes: int, threads: int) -> int:
    env = dict(os.environ)
    env["DISPATCHER_REDIS_URL"] = settings.redis_url or ""
    env.setdefault("dramatiq_queue_prefetch", str(max(2, threads * 4)))
    command = [
        sys.executable,
        "-m",
        "dramatiq",
        "dispatcher.sending.actors",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--queues",
        _broker.QUEUE,
        "--worker-shutdown-timeout",
        "60000",
    ]
    stop = threading.Event()
    crashed = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sweeper = threading.Thread(target=_sweeper, args=(settings, stop, crashed), name="sweeper", daemon=True)
    sweeper.start()
    backoff = 1.0
    code = 0
    while not stop.is_set():
        started = time.monotonic()
        child = subprocess.Popen(command, env=env)
        code = child.wait()
        if stop.is_set():
            break
        if time.monotonic() - started > 60:
            backoff = 1.0
        log.error("worker pool exited with code %s; restarting in %.0fs", code, backoff)
        crashed.set()
        if stop.wait(backoff):
            break
        backoff = min(RESTART_BACKOFF_MAX, backoff * 2)
    stop.set()
    crashed.set()  # wake the sweeper so it sees stop
    return 0 if code in (0, -signal.SIGTERM) else code
