"""What Dramatiq's Retries middleware writes to Redis about a failure (issue 11, point 10): the traceback it
keeps in a retried message's options must not carry a receipt URL or a contact."""

from __future__ import annotations

import time

import dramatiq
import pytest
import redis
from dramatiq import Worker

from dispatcher import broker as dispatcher_broker

URL = "https://receive.example.jp/r/Tr4cebackT0ken"
ADDRESS = "hanako.secret@ezweb.ne.jp"
PHONE = "+819012345678"


def test_a_retried_message_keeps_no_receipt_url_or_contact_in_its_traceback_in_redis(redis_url: str) -> None:
    # Given our broker on a real Redis, and an actor whose failure quotes a receipt URL, an address and a number
    broker = dispatcher_broker.build_broker(redis_url)

    @dramatiq.actor(broker=broker, queue_name="traceback-test", max_retries=3, min_backoff=60_000)
    def failing() -> None:
        raise RuntimeError(f"could not send {URL} to {ADDRESS} / {PHONE}")

    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    client = redis.Redis.from_url(redis_url)
    delayed = f"{dispatcher_broker.NAMESPACE}:{dramatiq.common.dq_name('traceback-test')}.msgs"
    try:
        # When a worker runs it once (it fails, and Retries puts it back, delayed, with the traceback)
        worker.start()
        failing.send()
        stored = _wait_for(lambda: client.hvals(delayed))
    finally:
        worker.stop()
        broker.close()

    # Then the message in Redis holds a traceback, redacted: the kind of error, no URL, address or number
    [body] = stored
    message = dramatiq.Message.decode(body)
    traceback = message.options["traceback"]
    assert "RuntimeError" in traceback
    raw = body.decode()
    for secret in ("Tr4cebackT0ken", "hanako.secret", "9012345678"):
        assert secret not in raw, raw


def test_the_bulk_enqueue_path_is_kept_with_the_traceback_middleware(redis_url: str) -> None:
    # Given our broker (its middleware hooks enqueueing, but new messages carry no traceback)
    broker = dispatcher_broker.build_broker(redis_url)
    try:
        # Then the fast bulk path still applies
        assert dispatcher_broker._fast_path(broker)
    finally:
        broker.close()


def _wait_for(read: object, timeout: float = 30.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = read()  # type: ignore[operator]
        if found:
            return list(found)
        time.sleep(0.05)
    pytest.fail("the retried message never reached Redis")
