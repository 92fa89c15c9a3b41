"""The baseline actor for bench/dispatch.py: Dramatiq doing nothing, with our broker's settings.

Run by the dramatiq CLI (``python -m dramatiq noop_actor``) with the same processes, threads and prefetch
as `dispatcher worker`; its queue is apart from ours.
"""

from __future__ import annotations

import os

import dramatiq

from dispatcher.broker import build_broker

QUEUE = "bench-noop"

broker = build_broker(os.environ["DISPATCHER_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=5, min_backoff=1_000, max_backoff=30_000, time_limit=300_000)
def noop(delivery_id: int) -> None:
    """Same signature and options as dispatcher.sending.actors.send_delivery; does nothing."""
