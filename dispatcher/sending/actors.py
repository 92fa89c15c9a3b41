"""Dramatiq actors: thin shells over :mod:`dispatcher.sending.delivery`.

Importing this module binds the actors to the installed broker (or one built from settings). The worker
command sets ``DISPATCHER_REDIS_URL`` before Dramatiq imports it in each worker process.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from dispatcher import broker as _broker
from dispatcher import runtime
from dispatcher.core import clock
from dispatcher.core.errors import ConfigError
from dispatcher.core.privacy import RedactingFilter
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.sending import fallback as _fallback
from dispatcher.sending.delivery import Outcome, deliver, deliver_many

#: Delays longer than this are not parked in the broker (workers would hold them in memory);
#: the periodic sweep finds such deliveries in the ledger when they are due.
MAX_BROKER_DELAY = timedelta(minutes=5)


def _ensure_broker() -> RedisBroker:
    installed = _broker.installed()
    if installed is not None:
        return installed
    url = load_settings().redis_url
    if not url:
        raise ConfigError("DISPATCHER_REDIS_URL is not set (the dispatcher command starts a private Redis)")
    return _broker.install(url)


def _redact_logs() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


_ensure_broker()
_redact_logs()


#: A batch stops starting new sends after this long and hands the rest on (well inside the time limit).
BATCH_BUDGET_SECONDS = 120.0


@dramatiq.actor(queue_name=_broker.QUEUE, max_retries=5, min_backoff=1_000, max_backoff=30_000, time_limit=300_000)
def send_delivery(delivery_id: int) -> None:
    outcome = deliver(runtime.current(), delivery_id)
    if outcome.again_at is not None:
        schedule(delivery_id, outcome.again_at)
    _after_failures({delivery_id: outcome})


@dramatiq.actor(queue_name=_broker.QUEUE, max_retries=5, min_backoff=1_000, max_backoff=30_000, time_limit=300_000)
def send_deliveries(delivery_ids: list[int]) -> None:
    """Several deliveries in one message (see :func:`dispatcher.sending.delivery.deliver_many`).

    An error on one of them is raised after the others were tried, so Dramatiq retries the message: the
    ones already settled are skipped then (they are no longer claimable)."""
    result = deliver_many(runtime.current(), delivery_ids, budget=BATCH_BUDGET_SECONDS)
    for delivery_id, outcome in result.outcomes.items():
        if outcome.again_at is not None:
            schedule(delivery_id, outcome.again_at)
    if result.left:
        dispatch_ids(result.left)
    _after_failures(result.outcomes)
    if result.error is not None:
        raise result.error


@dramatiq.actor(queue_name=_broker.QUEUE, max_retries=5, min_backoff=1_000, max_backoff=30_000, time_limit=60_000)
def fallback(delivery_id: int) -> None:
    """Queue a failed delivery once on the other channel, where its campaign says so (see sending.fallback)."""
    _fallback.fall_back(runtime.current(), delivery_id, dispatch_ids)


def _after_failures(outcomes: dict[int, Outcome]) -> None:
    """A delivery that failed may be owed a fallback: the actor decides (the ledger says whether it is owed)."""
    for delivery_id, outcome in outcomes.items():
        if outcome.status is Status.FAILED:
            fallback.send(delivery_id)


def schedule(delivery_id: int, at: object) -> None:
    from datetime import datetime

    assert isinstance(at, datetime)
    delay = at - clock.now()
    if delay > MAX_BROKER_DELAY:
        return  # the sweep re-enqueues it when due
    ms = max(0, int(delay.total_seconds() * 1000))
    send_delivery.send_with_options(args=(delivery_id,), delay=ms or None)


def dispatch_ids(ids: list[int]) -> None:
    """Hand deliveries to the broker in bulk, ``send_batch`` of them per message (one message for one)."""
    if not ids:
        return
    broker = _ensure_broker()
    size = runtime.batch_size()
    if size <= 1:
        _broker.enqueue_ids(broker, send_delivery, ids)
        return
    _broker.enqueue_ids(broker, send_deliveries, [list(ids[i : i + size]) for i in range(0, len(ids), size)])
