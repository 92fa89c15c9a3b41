"""Sending policy around one send: global rate limits and the campaign circuit breaker (SPEC §8)."""

from __future__ import annotations

import logging

import redis

from .broker import keys
from .ratelimit import Limit, Quota, RateLimiter
from .settings import Settings
from .states import Channel

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

    def acquire(self, channel: Channel, contact: str, cost: int = 1, token: str | None = None) -> float:
        """Wait for a slot; returns 0 when the send may leave now, else how long it must still wait."""
        limits, quota = self.limits_for(channel, contact)
        if self.limiter is None or (not limits and quota is None):
            return 0.0
        return self.limiter.acquire(limits, quota, cost, max_wait=self.settings.rate_max_wait_seconds,
                                    token=token)

    def sent(self, channel: Channel, contact: str, token: str, cost: int = 1) -> None:
        """The provider call for slot ``token`` is over: count the send from now (it may have arrived now)."""
        limits, _ = self.limits_for(channel, contact)
        if self.limiter is None or not limits:
            return
        try:
            self.limiter.sent(limits, token, cost)
        except redis.RedisError as exc:  # never lose the outcome of a send over this
            log.warning("rate limit: could not record the end of a send: %s", exc)


class Breaker:
    """Pauses a campaign whose share of permanent failures, bounces and complaints passes a threshold.

    Counters live in Redis (cheap on the hot path); the ledger keeps the truth and the pause reason.
    """

    def __init__(self, settings: Settings, client: redis.Redis | None, pause: object) -> None:
        self.settings = settings
        self.client = client
        self._pause = pause

    def _key(self, campaign_id: str) -> str:
        return f"{keys.prefix}:breaker:{campaign_id}"

    def record_success(self, campaign_id: str) -> None:
        if self.client is not None:
            self.client.hincrby(self._key(campaign_id), "attempts", 1)

    def record_failure(self, campaign_id: str, *, counted_attempt: bool = True) -> None:
        """A permanent failure (or, from provider events, a bounce or complaint)."""
        if self.client is None:
            return
        with self.client.pipeline() as pipe:
            if counted_attempt:
                pipe.hincrby(self._key(campaign_id), "attempts", 1)
            pipe.hincrby(self._key(campaign_id), "failures", 1)
            pipe.hgetall(self._key(campaign_id))
            counters = pipe.execute()[-1]
        attempts = int(counters.get(b"attempts", 0))
        failures = int(counters.get(b"failures", 0))
        if attempts >= self.settings.breaker_min_attempts and failures / attempts > self.settings.breaker_threshold:
            reason = (f"circuit breaker: {failures:,} failures in {attempts:,} attempts "
                      f"({failures / attempts:.1%}) passed the {self.settings.breaker_threshold:.0%} threshold")
            if self._pause(campaign_id, reason):  # type: ignore[operator]
                log.error("campaign %s paused: %s", campaign_id, reason)

    def reset(self, campaign_id: str) -> None:
        if self.client is not None:
            self.client.delete(self._key(campaign_id))
