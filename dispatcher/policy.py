"""Sending policy seams: global rate limits and the circuit breaker (filled in by the policy work)."""

from __future__ import annotations

from .states import Channel


class Limits:
    """Waits until a send may leave under every applicable rate limit."""

    def acquire(self, channel: Channel, contact: str, cost: int = 1) -> None:
        return None


class Breaker:
    """Pauses a campaign whose failure rate passes the threshold."""

    def record_failure(self, campaign_id: str) -> None:
        return None

    def record_success(self, campaign_id: str) -> None:
        return None
