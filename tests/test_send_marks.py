"""Batched claim and record, and the send marks that make a crash between them recoverable.

In-process, on SQLite and PostgreSQL, SES and SNS on moto, real Redis. A worker "killed" mid-batch is
simulated by an exception that nothing in the send path catches (``BaseException``), raised by the
provider at the n-th call: like ``kill -9``, it leaves the claimed rows in ``sending`` and the batch's marks
in Redis, with nothing recorded.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
import redis
from sqlalchemy import event

from dispatcher.broker import keys
from dispatcher.core import clock
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.sending import marks
from dispatcher.sending.delivery import deliver, deliver_many
from dispatcher.sending.sweep import sweep

from .feedback_helpers import ses_runtime
from .helpers import person_rows, write_campaign
from .test_policy import contact, moto_counts


class Killed(BaseException):
    """The worker process died here."""


@pytest.fixture
def mrt(ledger_url, redis_url, moto, monkeypatch):
    monkeypatch.setenv("DISPATCHER_STALE_SENDING_SECONDS", "5")
    rt = ses_runtime(monkeypatch)
    yield rt
    rt.close()


def _enqueue(rt, tmp_path, n: int, campaign_id: str = "m", sms_every: int = 4) -> tuple[list[int], list[dict]]:
    rows = person_rows(n, sms_every=sms_every)
    result = enqueue_campaign(
        write_campaign(tmp_path, campaign_id), rows, settings=rt.settings, ledger=rt.ledger, dispatch=lambda ids: None
    )
    assert result.rejected == 0
    return rt.ledger.in_status(campaign_id, [Status.QUEUED]), rows


def _kill_at(rt, monkeypatch, call: int) -> list[str]:
    """Make the ``call``-th provider call (1-based, both channels) die before reaching the provider."""
    calls: list[str] = []
    for channel in ("email", "sms"):
        from dispatcher.core.states import Channel

        provider = rt.provider(Channel(channel))
        real = provider.send

        def send(outgoing, real=real):
            calls.append(outgoing.reference)
            if len(calls) == call:
                raise Killed()
            return real(outgoing)

        monkeypatch.setattr(provider, "send", send)
    return calls


def _after_stale(rt) -> None:
    clock.start_at(clock.now() + timedelta(seconds=rt.settings.stale_sending_seconds + 1))


def _marks_keys(client: redis.Redis) -> list[bytes]:
    return [k for k in client.keys(f"{keys.prefix}:marks:*") if not k.endswith(b":epoch")]


def test_a_batch_is_claimed_and_recorded_in_one_statement_each(mrt, tmp_path, moto, redis_url) -> None:
    ids, rows = _enqueue(mrt, tmp_path, 12)
    statements: list[str] = []
    engine = mrt.ledger._writer

    def count(conn, cursor, statement, *args):
        statements.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", count)
    try:
        result = deliver_many(mrt, ids)
    finally:
        event.remove(engine, "before_cursor_execute", count)

    assert result.error is None
    assert {mrt.ledger.get(i).status for i in ids} == {Status.SENT}
    # PostgreSQL: one read, one claim, one record, one look for early events, the reminders' redemption
    # check, and (first batch of a process) the campaign's definition. SQLite: one transaction each.
    if mrt.ledger.dialect == "postgresql":
        assert statements.count("WITH") == 2 and len(statements) <= 6, statements
    # Every delivery still has its own audit rows, attempt number and provider message id
    for i in ids:
        d = mrt.ledger.get(i)
        history = mrt.ledger.history(i)
        assert [(t["from_status"], t["to_status"], t["attempt"]) for t in history] == [
            (None, "queued", 0),
            ("queued", "sending", 1),
            ("sending", "sent", 1),
        ]
        assert d.attempts == 1 and d.provider_message_id and d.first_sent_at is not None
        assert mrt.ledger.delivery_for_message(d.provider_message_id, provider=d.provider, channel=d.channel) == (i, 1)
    assert mrt.ledger.counts("m") == mrt.ledger.count_rows("m")
    assert moto_counts(moto) == Counter(contact(r) for r in rows)
    # And the batch's marks are gone once it is recorded
    assert _marks_keys(redis.Redis.from_url(redis_url)) == []


def test_a_worker_killed_mid_batch_leaves_marks_that_say_what_happened(
    mrt, tmp_path, moto, redis_url, monkeypatch
) -> None:
    # Given a batch of 8 whose worker dies at its 4th provider call, right after marking it
    ids, rows = _enqueue(mrt, tmp_path, 8)
    calls = _kill_at(mrt, monkeypatch, 4)
    with pytest.raises(Killed):
        deliver_many(mrt, ids)
    assert {mrt.ledger.get(i).status for i in ids} == {Status.SENDING}
    assert len(moto.sent_emails()) + len(moto.sent_sms()) == 3
    # When the sweep runs once the claims are stale
    _after_stale(mrt)
    redispatched: list[int] = []
    result = sweep(mrt, redispatched.extend)
    by_ref = {int(ref.split(".")[0]): n for n, ref in enumerate(calls, 1)}
    # Then the three the provider took are `sent` with the message id it gave
    sent = [i for i in ids if by_ref.get(i, 99) < 4]
    for i in sent:
        d = mrt.ledger.get(i)
        assert d.status is Status.SENT and d.provider_message_id, d
        history = mrt.ledger.history(i)
        assert history[-1]["actor"] == "sweep" and "mark" in history[-1]["detail"]
    accepted = {m["id"] for m in moto.sent_emails()} | {m["message_id"] for m in moto.sent_sms()}
    assert {mrt.ledger.get(i).provider_message_id for i in sent} <= accepted
    # And the one marked "about to send" is `unknown` (nobody can know), never resent
    dead = next(i for i in ids if by_ref.get(i) == 4)
    assert mrt.ledger.get(dead).status is Status.UNKNOWN
    # And the four never called are claimable again, their attempt not counted, and handed to the broker
    never = [i for i in ids if i not in by_ref]
    assert len(never) == 4
    assert {mrt.ledger.get(i).status for i in never} == {Status.RETRYING}
    assert {mrt.ledger.get(i).attempts for i in never} == {0}
    assert set(never) <= set(redispatched)
    assert (result.unknown, result.given_back, result.recovered) == (1, 4, 3)
    # And once sent again, everybody but the unknown one has exactly one message
    monkeypatch.undo()
    for i in ids:
        deliver(mrt, i)
    assert {mrt.ledger.get(i).status for i in ids if i != dead} == {Status.SENT}
    assert mrt.ledger.get(dead).status is Status.UNKNOWN
    expected = Counter(contact(r) for r in rows)
    dead_contact = mrt.ledger.get(dead).contact
    del expected[dead_contact]
    assert moto_counts(moto) == expected
    assert mrt.ledger.counts("m") == mrt.ledger.count_rows("m")


@pytest.mark.parametrize("loss", ["flushdb", "restart", "expired"])
def test_lost_marks_make_every_stale_send_unknown_never_resent(
    mrt, tmp_path, moto, redis_url, monkeypatch, loss
) -> None:
    # Given a batch whose worker died at its 3rd call (2 sent, 1 marked, the rest never called)
    ids, _rows = _enqueue(mrt, tmp_path, 6)
    _kill_at(mrt, monkeypatch, 3)
    with pytest.raises(Killed):
        deliver_many(mrt, ids)
    client = redis.Redis.from_url(redis_url)
    # When its marks may be incomplete: Redis flushed, Redis restarted (a new epoch), or the hash expired
    if loss == "flushdb":
        client.flushdb()
    elif loss == "restart":
        client.set(f"{keys.prefix}:marks:epoch", "a-new-life")  # what a restart looks like to the epoch
    else:
        client.delete(*_marks_keys(client))
    _after_stale(mrt)
    redispatched: list[int] = []
    result = sweep(mrt, redispatched.extend)
    # Then the sweep assumes the worst for the whole batch: `unknown`, none handed back, none resent
    assert {mrt.ledger.get(i).status for i in ids} == {Status.UNKNOWN}
    assert result.unknown == len(ids) and not set(ids) & set(redispatched)
    assert "marks were lost" in mrt.ledger.history(ids[-1])[-1]["detail"]
    monkeypatch.undo()
    for i in ids:
        deliver(mrt, i)
    assert len(moto.sent_emails()) + len(moto.sent_sms()) == 2


def test_the_sweep_and_a_live_worker_never_both_own_a_delivery(mrt, tmp_path, redis_url) -> None:
    ids, _rows = _enqueue(mrt, tmp_path, 2)
    client = redis.Redis.from_url(redis_url)
    batch = marks.open_batch(client, 600)
    claimed = mrt.ledger.claim_many([mrt.ledger.get(i) for i in ids], mark=batch.claim_mark, now=clock.now())
    assert [d.id for d in claimed] == ids
    # The worker marks the first; the sweep, looking at both, revokes only the unmarked second
    assert batch.about(ids[0]) is True
    assert marks.verdict(client, batch.claim_mark, ids[0]) == marks.ABOUT
    assert marks.verdict(client, batch.claim_mark, ids[1]) == marks.REVOKED
    # And the worker, coming to the second, must not send it
    assert batch.about(ids[1]) is False
    batch.outcome(ids[0], marks.SENT, "ses", "m-1")
    batch.flush()
    assert marks.verdict(client, batch.claim_mark, ids[0]) == "s\tses\tm-1"
    # A claim mark of another Redis life reads as lost
    epoch, _, token = batch.claim_mark.rpartition("/")
    assert marks.verdict(client, f"other:{epoch}/{token}", ids[0]) == marks.LOST
    client.delete(marks.batch_key(batch.token))
    with pytest.raises(marks.MarksLost):
        batch.about(ids[0])


def test_under_a_rate_cap_the_slot_and_the_mark_are_taken_in_one_step(mrt, tmp_path, redis_url) -> None:
    from dispatcher.sending.ratelimit import Limit, RateLimiter

    # Given a claimed batch of three, and the sweep revoking the second before the worker reaches it
    ids, _rows = _enqueue(mrt, tmp_path, 3)
    client = redis.Redis.from_url(redis_url)
    batch = marks.open_batch(client, 600)
    mrt.ledger.claim_many([mrt.ledger.get(i) for i in ids], mark=batch.claim_mark, now=clock.now())
    assert marks.verdict(client, batch.claim_mark, ids[1]) == marks.REVOKED
    limiter, roomy, full = RateLimiter(client), [Limit("t-roomy", 1000)], [Limit("t-full", 1)]
    # When the first takes its slot: it is marked "about to send" by the same script
    batch.outcome(ids[0] - 1, marks.SENT, "ses", "m-0")  # a queued write goes with it
    assert limiter.try_acquire(roomy, run=batch.with_slot(ids[0])) == 0
    assert marks.verdict(client, batch.claim_mark, ids[0]) == marks.ABOUT and batch.marked == {ids[0]}
    assert client.hget(marks.batch_key(batch.token), str(ids[0] - 1)) == b"s\tses\tm-0"
    # Then the revoked one takes no slot and is refused
    with pytest.raises(marks.Revoked):
        limiter.try_acquire(roomy, run=batch.with_slot(ids[1]))
    assert client.zcard(keys.rate("t-roomy")) == 1
    # And one that must wait for a slot is not marked (the sweep may still give it back)
    assert limiter.try_acquire(full) == 0
    assert limiter.try_acquire(full, run=batch.with_slot(ids[2])) > 0
    assert marks.verdict(client, batch.claim_mark, ids[2]) == marks.REVOKED and ids[2] not in batch.marked
    # And with the hash gone nothing more is marked, nor a slot taken
    client.delete(marks.batch_key(batch.token))
    with pytest.raises(marks.MarksLost):
        limiter.try_acquire(roomy, run=batch.with_slot(ids[0]))
    assert client.zcard(keys.rate("t-roomy")) == 1
    batch.close()


def test_without_its_marks_hash_a_batch_sends_nothing_more(mrt, tmp_path, moto, redis_url, monkeypatch) -> None:
    # Given a batch whose hash disappears (Redis flushed) after its first send
    ids, _rows = _enqueue(mrt, tmp_path, 4, sms_every=10**9)
    client = redis.Redis.from_url(redis_url)
    from dispatcher.core.states import Channel

    provider = mrt.provider(Channel.EMAIL)
    real = provider.send

    def send(outgoing):
        result = real(outgoing)
        client.delete(*_marks_keys(client))
        return result

    monkeypatch.setattr(provider, "send", send)
    result = deliver_many(mrt, ids)
    # Then the rest were not sent but given back (claimable again), and the first is recorded as sent
    assert isinstance(result.error, marks.MarksLost)
    statuses = [mrt.ledger.get(i).status for i in ids]
    assert statuses[0] is Status.SENT and set(statuses[1:]) == {Status.RETRYING}, statuses
    assert len(moto.sent_emails()) + len(moto.sent_sms()) == 1


def test_a_late_batch_cannot_record_over_the_claim_that_replaced_it(mrt, tmp_path) -> None:
    from dispatcher.sending import outcomes

    ids, _rows = _enqueue(mrt, tmp_path, 2, sms_every=100)
    first = mrt.ledger.claim_many([mrt.ledger.get(i) for i in ids], mark="epoch/slow", now=clock.now())
    # Given the sweep gave the slow batch's deliveries back and another worker claimed them again: the rows
    # look as they did (sending, same attempt count), but under the other batch's mark
    back = mrt.ledger.record_many([outcomes.given_back(d, "the sweep gave it back")[0] for d in first], actor="sweep")
    assert back == set(ids)
    again = mrt.ledger.claim_many([mrt.ledger.get(i) for i in ids], mark="epoch/live", now=clock.now())
    assert [d.attempts for d in again] == [d.attempts for d in first]
    # When the slow batch records what it thinks it still holds
    late = mrt.ledger.record_many([outcomes.given_back(d, "ran out of time")[0] for d in first], mark="epoch/slow")
    # Then nothing moves: the live claim stays the live worker's
    assert late == set()
    assert {mrt.ledger.get(i).status for i in ids} == {Status.SENDING}
    mine = mrt.ledger.record_many([outcomes.given_back(d, "done")[0] for d in again], mark="epoch/live")
    assert mine == set(ids)


def test_a_breaker_that_cannot_reach_redis_does_not_undo_a_refusal(mrt, tmp_path) -> None:
    from dispatcher.sending import outcomes

    mrt.breaker.client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(redis.RedisError):
        mrt.breaker.record_failure("m")  # as it is: it raises
    outcomes.count_failure(mrt, "m")  # the send path's call does not


def test_a_batch_record_stores_each_outcome_as_given(mrt, tmp_path) -> None:
    from datetime import UTC, datetime

    from dispatcher.ledger.store import Settle

    # Given three claimed deliveries and outcomes that set every column a record sets, with awkward text
    ids, _rows = _enqueue(mrt, tmp_path, 3)
    claimed = mrt.ledger.claim_many([mrt.ledger.get(i) for i in ids], mark="e/t", now=clock.now())
    at = datetime(2023, 4, 5, 1, 2, 3, 456789, tzinfo=UTC)
    later = datetime(2023, 4, 6, 10, 0, tzinfo=UTC)
    odd = 'a "quoted", {braced} \\ back\\slash, 日本語 ✓, NULL'
    settles = [
        Settle(
            claimed[0],
            Status.SENT,
            {"provider": "ses", "provider_message_id": "m-1", "first_sent_at": at}
            | {"last_event_at": at, "sms_parts": 2},
            [(Status.SENT, odd, None)],
            message_id="m-1",
            at=at,
        ),
        Settle(
            claimed[1],
            Status.RETRYING,
            {"not_before": later, "reason": odd, "provider_code": "Throttling"},
            [(Status.RETRYING, "throttled", "Throttling")],
            at=at,
        ),
        Settle(
            claimed[2],
            Status.FAILED,
            {"reason": "refused", "fallback_due_at": later, "provider": "ses"},
            [(Status.FAILED, None, "MessageRejected")],
            at=at,
        ),
    ]
    # When they are recorded as one batch under its claim mark
    assert mrt.ledger.record_many(settles, mark="e/t") == set(ids)
    # Then each row holds exactly its own values, and each trail its own step
    sent, retrying, failed = (mrt.ledger.get(i) for i in ids)
    assert (sent.status, sent.provider_message_id, sent.first_sent_at, sent.sms_parts) == (Status.SENT, "m-1", at, 2)
    assert (retrying.status, retrying.not_before, retrying.reason) == (Status.RETRYING, later, odd)
    assert retrying.provider_code == "Throttling" and retrying.attempts == 1
    assert (failed.status, failed.fallback_due_at, failed.reason) == (Status.FAILED, later, "refused")
    assert mrt.ledger.delivery_for_message("m-1", provider="ses", channel=sent.channel.value) == (ids[0], 1)
    trails = [mrt.ledger.history(i)[-1] for i in ids]
    assert [(t["from_status"], t["to_status"], t["detail"], t["provider_code"]) for t in trails] == [
        ("sending", "sent", odd, None),
        ("sending", "retrying", "throttled", "Throttling"),
        ("sending", "failed", None, "MessageRejected"),
    ]
    assert {t["at"].replace(tzinfo=UTC) if t["at"].tzinfo is None else t["at"] for t in trails} == {at}


def test_a_batch_gives_its_redis_connection_back_when_the_ledger_fails(mrt, tmp_path, monkeypatch) -> None:
    # Given a ledger whose claim fails (a statement timeout, a deadlock)
    ids, _rows = _enqueue(mrt, tmp_path, 2)

    def failing(*args, **kwargs):
        raise RuntimeError("claim failed")

    monkeypatch.setattr(mrt.ledger, "claim_many", failing)
    deliver_many(mrt, ids)  # the first batch opens the connections the pool keeps
    before = len(mrt.redis.client_list())
    # When five batches fail the same way
    for _ in range(5):
        assert isinstance(deliver_many(mrt, ids).error, RuntimeError)
    # Then no batch kept its connection: the pool gave the same one to each
    assert len(mrt.redis.client_list()) == before


def test_writes_queued_on_a_batch_line_survive_a_broken_connection(redis_url) -> None:
    from dispatcher.sending.line import Line

    # Given a line with a mark queued, whose connection the server drops
    client = redis.Redis.from_url(redis_url)
    line = Line(client)
    try:
        own_id = line.call("CLIENT", "ID")
        line.hset("t-line", {"7": "s\tses\tm-7"})
        client.client_kill_filter(_id=own_id)
        # When the next round trip fails on the dropped connection
        with pytest.raises(redis.exceptions.ConnectionError):
            line.call("PING")
        # Then the queued mark goes with the round trip after it, on a new connection
        assert line.call("HGET", "t-line", "7") == b"s\tses\tm-7"
    finally:
        client.delete("t-line")
        line.close()
