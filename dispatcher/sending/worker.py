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
from datetime import datetime
from typing import TYPE_CHECKING

import redis

from dispatcher import broker as _broker
from dispatcher.core import clock
from dispatcher.core.settings import Settings

if TYPE_CHECKING:
    from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX = 30.0


def _sweeper(settings: Settings, stop: threading.Event, crashed: threading.Event) -> None:
    from dispatcher.runtime import Runtime
    from dispatcher.sending.actors import dispatch_ids
    from dispatcher.sending.sweep import release, sweep

    rt = Runtime(settings)
    client = redis.Redis.from_url(settings.redis_url or "")
    broker = _broker.installed() or _broker.install(settings.redis_url or "")
    every = settings.sweep_interval_seconds
    first = True
    while not stop.is_set():
        start = None if first else _wait(rt, every, crashed)
        first = False  # the first sweep runs at start: work left from before this worker is found at once
        if stop.is_set():
            break
        try:
            if start is not None and not crashed.is_set():
                # A campaign's send_from has come: its held work goes to the broker now, not at the next
                # periodic sweep. One sweeper across every host does it (the key names this send_from).
                if client.set(_broker.keys.send_from_sweep(start.isoformat()), os.getpid(), nx=True, px=600_000):
                    release(rt, dispatch_ids, start)
                continue
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


#: Wake this long after a send_from, so that the held work is due by the ledger's clock when it is read.
SEND_FROM_MARGIN = 0.2
#: While waiting for the next periodic sweep, look this often for a send_from coming sooner (a campaign
#: enqueued meanwhile): one small read of the campaigns table.
SEND_FROM_LOOK = 5.0


def _wait(rt: Runtime, every: float, crashed: threading.Event) -> datetime | None:
    """Wait for the next sweep: ``every`` seconds, or less when a campaign's ``send_from`` comes first.
    Returns that ``send_from`` when it is what ended the wait, else None."""
    until = time.monotonic() + every
    while (left := until - time.monotonic()) > 0:
        start = _next_start(rt, left)
        step = min(left, SEND_FROM_LOOK)
        if start is not None:
            step = min(step, max(0.0, (start - clock.now()).total_seconds()) + SEND_FROM_MARGIN)
        if crashed.wait(step):
            return None
        if start is not None and clock.now() >= start:
            return start
    return None


def _next_start(rt: Runtime, horizon: float) -> datetime | None:
    """The earliest campaign ``send_from`` within ``horizon`` seconds, if any."""
    try:
        start = rt.ledger.next_send_from(clock.now())
    except Exception as exc:  # the ledger may be restarting: the periodic sweep still runs
        log.warning("could not read the campaigns' send_from (%s); sweeping at the usual interval", type(exc).__name__)
        return None
    if start is None or (start - clock.now()).total_seconds() > horizon:
        return None
    return start


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
