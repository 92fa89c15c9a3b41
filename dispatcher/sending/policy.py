"""Sending policy around one send: global rate limits and the campaign circuit breaker (SPEC §8)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Any

import redis

from dispatcher.broker import keys
from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel
from dispatcher.sending.ratelimit import Limit, Quota, RateLimiter, Runner

log = logging.getLogger(__name__)


class Limits:
    """Which limits apply to a send, and waiting for a slot in all of them."""

    def __init__(self, settings: Settings, client: redis.Redis | None) -> None:
        self.settings = settings
        self.limiter = RateLimiter(client, margin=settings.rate_window_margin) if client is not None else None

    def limits_for(self, channel: Channel, contact: str) -> tuple[list[Limit], Quota | None]:
        s = self.settings
        limits: list[Limit] = []
        rate = s.email_rate if channel is Channel.EMAIL else s.sms_rate
        if rate:
            limits.append(Limit(channel.value, rate))
        if channel is Channel.EMAIL:
            domain = contact.rpartition("@")[2].lower()
            domain_rate = s.domain_rates.get(domain)
            if domain_rate:
                limits.append(Limit(f"domain:{domain}", domain_rate))
        per_day = s.email_daily_quota if channel is Channel.EMAIL else s.sms_daily_quota
        return limits, (Quota(channel.value, per_day) if per_day else None)

    def acquire(
        self, channel: Channel, contact: str, cost: int = 1, token: str | None = None, run: Runner | None = None
    ) -> float:
        """Wait for a slot; returns 0 when the send may leave now, else how long it must still wait.
        ``run``: how the limiter's script is run (a batch takes the slot and its send mark in one)."""
        limits, quota = self.limits_for(channel, contact)
        if self.limiter is None or (not limits and quota is None):
            return 0.0
        wait = self.settings.rate_max_wait_seconds
        return self.limiter.acquire(limits, quota, cost, max_wait=wait, token=token, run=run)

    def applies(self, channel: Channel, contact: str) -> bool:
        """Whether a send to this contact may have to wait for a slot (a rate limit or a daily quota)."""
        limits, quota = self.limits_for(channel, contact)
        return self.limiter is not None and bool(limits or quota)

    def sent(self, channel: Channel, contact: str, token: str, cost: int = 1, pipe: Any = None) -> None:
        """The provider call for slot ``token`` is over: count the send from now (it may have arrived now).
        With ``pipe`` (a Redis pipeline, or a batch's line) the re-stamp is only queued on it."""
        limits, _ = self.limits_for(channel, contact)
        if self.limiter is None or not limits:
            return
        try:
            self.limiter.sent(limits, token, cost, client=pipe)
        except redis.RedisError as exc:  # never lose the outcome of a send over this
            log.warning("rate limit: could not record the end of a send: %s", exc)


class Breaker:
    """Pauses a campaign whose share of permanent failures, bounces and complaints passes a threshold.

    Counters live in Redis (shared by every worker); the ledger keeps the truth and the pause reason.
    Successes are counted in memory and added to Redis now and then (every ``FLUSH_EVERY`` sends or
    ``FLUSH_SECONDS``, and before any failure is counted): a Redis call per send cost more than the rest of
    the breaker. A worker killed outright loses at most that many successes, which makes the breaker
    slightly more eager, never blind.
    """

    FLUSH_EVERY = 50
    FLUSH_SECONDS = 1.0
    RETRY_SECONDS = 5.0

    def __init__(self, settings: Settings, client: redis.Redis | None, pause: object) -> None:
        self.settings = settings
        self.client = client
        self._pause = pause
        self._lock = threading.Lock()
        self._pending: Counter[str] = Counter()
        self._flushed_at = time.monotonic()
        self._retry_at = 0.0

    def _key(self, campaign_id: str) -> str:
        return f"{keys.prefix}:breaker:{campaign_id}"

    def record_success(self, campaign_id: str) -> None:
        """Count a send the provider took. Never raises: a Redis outage must not turn a send into a failure."""
        if self.client is None:
            return
        with self._lock:
            self._pending[campaign_id] += 1
            now = time.monotonic()
            due = now >= self._retry_at and (
                self._pending.total() >= self.FLUSH_EVERY or now - self._flushed_at >= self.FLUSH_SECONDS
            )
        if due:
            try:
                self.flush()
            except redis.RedisError as exc:
                with self._lock:
                    self._retry_at = time.monotonic() + self.RETRY_SECONDS  # not on every send while it is down
                log.warning("circuit breaker: could not count successes (kept for later): %s", exc)

    def _take(self) -> Counter[str]:
        with self._lock:
            pending, self._pending = self._pending, Counter()
            self._flushed_at = time.monotonic()
        return pending

    def _give_back(self, pending: Counter[str]) -> None:
        with self._lock:
            self._pending.update(pending)

    def flush(self) -> None:
        """Add the successes counted here to the shared counters."""
        if self.client is None:
            return
        pending = self._take()
        if not pending:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for campaign_id, n in pending.items():
                    pipe.hincrby(self._key(campaign_id), "attempts", n)
                pipe.execute()
        except redis.RedisError:
            self._give_back(pending)
            raise

    def record_failure(self, campaign_id: str, *, counted_attempt: bool = True) -> None:
        """A permanent failure (or, from provider events, a bounce or complaint)."""
        if self.client is None:
            return
        pending = self._take()
        try:
            with self.client.pipeline() as pipe:
                for other, n in pending.items():
                    pipe.hincrby(self._key(other), "attempts", n)
                if counted_attempt:
                    pipe.hincrby(self._key(campaign_id), "attempts", 1)
                pipe.hincrby(self._key(campaign_id), "failures", 1)
                pipe.hgetall(self._key(campaign_id))
                counters = pipe.execute()[-1]
        except redis.RedisError:
            self._give_back(pending)
            raise
        attempts = int(counters.get(b"attempts", 0))
        failures = int(counters.get(b"failures", 0))
        if attempts >= self.settings.breaker_min_attempts and failures / attempts > self.settings.breaker_threshold:
            reason = (
                f"circuit breaker: {failures:,} failures in {attempts:,} attempts "
                f"({failures / attempts:.1%}) passed the {self.settings.breaker_threshold:.0%} threshold"
            )
            if self._pause(campaign_id, reason):  # type: ignore[operator]
                log.error("campaign %s paused: %s", campaign_id, reason)

    def reset(self, campaign_id: str) -> None:
        with self._lock:
            self._pending.pop(campaign_id, None)
        if self.client is not None:
            self.client.delete(self._key(campaign_id))
