"""Several deliveries per broker message: each still claimed, sent and recorded once, errors kept apart."""

from __future__ import annotations

import dramatiq
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dispatcher import broker, runtime
from dispatcher.core import clock
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel, Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.sending import delivery
from dispatcher.sending.delivery import deliver, deliver_many
from dispatcher.sending.policy import Breaker

from .helpers import person_rows, write_campaign


def _enqueue(rt, tmp_path, n: int, campaign_id: str = "b", sms_every: int = 100) -> list[int]:
    result = enqueue_campaign(
        write_campaign(tmp_path, campaign_id),
        person_rows(n, sms_every=sms_every),
        settings=rt.settings,
        ledger=rt.ledger,
        dispatch=lambda ids: None,
    )
    assert result.rejected == 0
    return rt.ledger.in_status(campaign_id, [Status.QUEUED])


def test_a_batch_sends_each_once_and_settles_the_odd_ones(rt, tmp_path, moto) -> None:
    ids = _enqueue(rt, tmp_path, 6, sms_every=3)
    sent_before = ids[0]
    deliver(rt, sent_before)
    suppressed = rt.ledger.get(ids[1])
    rt.ledger.suppress(suppressed.contact, suppressed.channel, "complaint", "test")
    missing = max(ids) + 1000
    # A duplicate broker message for the same delivery may land in the same batch.
    batch = [sent_before, ids[1], missing, *ids[2:], ids[2]]

    result = deliver_many(rt, batch)

    assert result.error is None and result.left == []
    assert result.outcomes[sent_before].status is Status.SENT
    assert result.outcomes[ids[1]].status is Status.SUPPRESSED
    assert result.outcomes[missing].status is None
    statuses = {i: rt.ledger.get(i).status for i in ids}
    assert statuses == {i: (Status.SUPPRESSED if i == ids[1] else Status.SENT) for i in ids}
    # Exactly one message per person at the provider, the first one included.
    emails = [d for d in (rt.ledger.get(i) for i in ids) if d.channel is Channel.EMAIL and d.status is Status.SENT]
    sms = [d for d in (rt.ledger.get(i) for i in ids) if d.channel is Channel.SMS and d.status is Status.SENT]
    assert len(moto.sent_emails()) == len(emails) and len(moto.sent_sms()) == len(sms)
    assert all(len(rt.ledger.history(i)) == (2 if i == ids[1] else 3) for i in ids)


def test_an_error_on_one_delivery_does_not_stop_the_others(rt, tmp_path, moto, monkeypatch) -> None:
    ids = _enqueue(rt, tmp_path, 5)
    real = delivery._send_one

    # An error of ours after the claim, before the provider call (a message that cannot be built is a
    # `failed` delivery instead).
    def failing(rt_, claimed, *args, **kwargs):
        if claimed.id in (ids[1], ids[4]):
            raise RuntimeError("render crashed")
        return real(rt_, claimed, *args, **kwargs)

    monkeypatch.setattr(delivery, "_send_one", failing)
    result = deliver_many(rt, ids[:4])

    assert isinstance(result.error, RuntimeError)
    # The one that failed was never sent: its claim is given back (claimable again, the attempt not counted).
    assert [rt.ledger.get(i).status for i in ids[:4]] == [Status.SENT, Status.RETRYING, Status.SENT, Status.SENT]
    assert rt.ledger.get(ids[1]).attempts == 0
    assert ids[1] in rt.ledger.due(clock.now())
    assert len(moto.sent_emails()) == 3
    # A single delivery still raises, as it always did.
    with pytest.raises(RuntimeError, match="render crashed"):
        deliver(rt, ids[4])


def test_a_batch_out_of_time_hands_the_rest_on(rt, tmp_path, moto) -> None:
    ids = _enqueue(rt, tmp_path, 5)
    result = deliver_many(rt, ids, budget=0.0)
    assert result.error is None
    assert list(result.outcomes) == ids[:1] and result.left == ids[1:]
    # The rest were claimed with the batch and given back unsent: claimable, no attempt counted.
    assert [rt.ledger.get(i).status for i in ids] == [Status.SENT] + [Status.RETRYING] * 4
    assert [rt.ledger.get(i).attempts for i in ids] == [1, 0, 0, 0, 0]
    assert [t["to_status"] for t in rt.ledger.history(ids[1])] == ["queued", "sending", "retrying"]
    assert set(ids[1:]) <= set(rt.ledger.due(clock.now()))
    assert len(moto.sent_emails()) == 1
    assert rt.ledger.counts("b") == {("email", "sent"): 1, ("email", "retrying"): 4}


def test_batched_messages_through_a_dramatiq_worker_reach_everyone_once(
    rt, tmp_path, moto, redis_url, monkeypatch
) -> None:
    from dispatcher.sending.actors import dispatch_ids, send_deliveries

    ids = _enqueue(rt, tmp_path, 10, sms_every=4)
    monkeypatch.setenv("DISPATCHER_SEND_BATCH", "3")
    rb = broker.install(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.delete(f"dispatcher:{broker.QUEUE}", f"dispatcher:{broker.QUEUE}.msgs")
    previous = runtime._current
    runtime.use(None)
    try:
        dispatch_ids(ids)
        dispatch_ids(ids[:2])  # the same deliveries again, as a sweep might
    finally:
        runtime.use(previous)
    queued = [dramatiq.Message.decode(b) for b in client.hvals(f"dispatcher:{broker.QUEUE}.msgs")]
    assert {m.actor_name for m in queued} == {"send_deliveries"}
    assert sorted(len(m.args[0]) for m in queued) == [1, 2, 3, 3, 3]
    assert sorted(i for m in queued for i in m.args[0]) == sorted(ids + ids[:2])

    runtime.use(rt)
    worker = dramatiq.Worker(rb, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        rb.join(send_deliveries.queue_name, timeout=60_000)
    finally:
        worker.stop()
        runtime.use(previous)
    assert {rt.ledger.get(i).status for i in ids} == {Status.SENT}
    by_channel = {c: sum(1 for i in ids if rt.ledger.get(i).channel is c) for c in Channel}
    assert len(moto.sent_emails()) == by_channel[Channel.EMAIL] and len(moto.sent_sms()) == by_channel[Channel.SMS]


def test_bulk_enqueue_of_id_lists_writes_what_dramatiq_writes(redis_url: str) -> None:
    from dispatcher.sending.actors import send_deliveries

    rb = broker.install(redis_url)
    client = redis.Redis.from_url(redis_url)
    client.delete(f"dispatcher:{broker.QUEUE}", f"dispatcher:{broker.QUEUE}.msgs")
    broker.enqueue_ids(rb, send_deliveries, [[5, 6, 7], [8]])
    send_deliveries.send([9, 10])  # Dramatiq's own path, for comparison
    ids = client.lrange(f"dispatcher:{broker.QUEUE}", 0, -1)
    messages = [dramatiq.Message.decode(b) for b in client.hmget(f"dispatcher:{broker.QUEUE}.msgs", ids)]
    assert [m.args for m in messages] == [([5, 6, 7],), ([8],), ([9, 10],)]
    own = messages[2]
    for message in messages[:2]:
        assert message.actor_name == own.actor_name and message.options.keys() == own.options.keys()
        assert set(message.asdict()) == set(own.asdict())


def _breaker(redis_url: str, **settings) -> tuple[Breaker, list[tuple[str, str]], redis.Redis]:
    paused: list[tuple[str, str]] = []
    client = redis.Redis.from_url(redis_url)
    breaker = Breaker(load_settings(**settings), client, lambda c, reason: paused.append((c, reason)) or True)
    breaker.reset("cb")
    return breaker, paused, client


def test_breaker_counts_successes_kept_in_memory_before_judging_a_failure(redis_url: str) -> None:
    breaker, paused, client = _breaker(redis_url, breaker_min_attempts=10, breaker_threshold=0.2)
    for _ in range(9):
        breaker.record_success("cb")
    key = breaker._key("cb")
    assert client.hget(key, "attempts") is None  # kept in memory so far
    breaker.record_failure("cb")
    assert int(client.hget(key, "attempts")) == 10 and int(client.hget(key, "failures")) == 1
    assert paused == []  # 10 % is under the threshold
    for _ in range(3):
        breaker.record_failure("cb")
    assert paused and "4 failures in 13 attempts" in paused[-1][1]


def test_breaker_flushes_by_count_and_never_raises_when_redis_is_gone(redis_url: str) -> None:
    breaker, _, client = _breaker(redis_url)
    for _ in range(Breaker.FLUSH_EVERY):
        breaker.record_success("cb")
    assert int(client.hget(breaker._key("cb"), "attempts")) == Breaker.FLUSH_EVERY

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    gone = Breaker(load_settings(), dead, None)
    for _ in range(Breaker.FLUSH_EVERY + 5):
        gone.record_success("cb")  # a send the provider took stays a success
    assert gone._pending["cb"] == Breaker.FLUSH_EVERY + 5
    # One failed flush, then it waits before trying again rather than trying on every send.
    assert gone._retry_at > 0
    with pytest.raises(redis.RedisError):
        gone.flush()
    assert gone._pending["cb"] == Breaker.FLUSH_EVERY + 5  # given back, counted when Redis returns
