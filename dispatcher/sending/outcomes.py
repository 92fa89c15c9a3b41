"""What a claimed delivery's attempt comes to, as a :class:`~dispatcher.ledger.store.Settle` for its batch's
one record: sent, failed, unknown, a retry, or the claim given back (the provider was never called)."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from dispatcher.core import clock
from dispatcher.core.errors import ConfigError, DispatcherError, ProviderError, Throttled
from dispatcher.core.privacy import redact, safe_code, scrub
from dispatcher.core.states import Status
from dispatcher.ledger.store import Delivery, Settle
from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: Status | None
    #: When the delivery should be looked at again (a retry or a held SMS), else None.
    again_at: datetime | None = None


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter: uniform in [base/2, min(cap, base * 2^(attempt-1))]."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return random.uniform(min(base / 2, ceiling), ceiling)


def given_back(delivery: Delivery, why: str, again: datetime | None = None) -> tuple[Settle, Outcome]:
    """The claim is undone: nothing reached a provider, so the attempt is not counted and the delivery is
    claimable again (at ``again`` when given)."""
    settle = Settle(
        delivery,
        Status.RETRYING,
        values={"attempts": delivery.attempts - 1, "not_before": again},
        steps=[(Status.RETRYING, f"claim given back, not sent: {why}", None)],
    )
    return settle, Outcome(Status.RETRYING, again_at=again)


def sent(
    delivery: Delivery, provider: str, message_id: str, at: datetime, sms_parts: int | None
) -> tuple[Settle, Outcome]:
    values: dict[str, object] = {
        "provider": provider,
        "provider_message_id": message_id,
        "reason": None,
        "last_event_at": at,
        "first_sent_at": delivery.first_sent_at or at,
    }
    if sms_parts is not None:
        values["sms_parts"] = sms_parts
    steps: list[tuple[Status, str | None, str | None]] = [(Status.SENT, f"accepted by {provider}", None)]
    return Settle(delivery, Status.SENT, values, steps, message_id=message_id, at=at), Outcome(Status.SENT)


def not_built(delivery: Delivery, exc: Exception) -> tuple[Settle, Outcome]:
    """The message could not be made (template, sandbox, header check...): nothing reached a provider, so
    the delivery fails for good rather than be tried again with the same result."""
    reason = unsent_reason(delivery, exc)
    code = "render" if isinstance(exc, ConfigError) else exc.code if isinstance(exc, ProviderError) else "build"
    log.warning("delivery %s: not sent, the message could not be built: %s", delivery.id, reason)
    code = code or "build"
    values = {"reason": reason, "provider_code": code}
    return Settle(delivery, Status.FAILED, values, [(Status.FAILED, reason, code)]), Outcome(Status.FAILED)


def unsent_reason(delivery: Delivery, exc: Exception) -> str:
    """Our own errors say what is wrong without values; anything else gives its kind only. Either way the
    text is withheld if it holds this delivery's URL (with or without scheme, percent-encoded) or contact."""
    kind = type(exc).__name__
    text = redact(str(exc)) if isinstance(exc, DispatcherError) else f"the message could not be built ({kind})"
    url = delivery.receipt_url or ""
    own = [
        url,
        url.partition("://")[2],
        quote(url, safe=""),
        delivery.contact or "",
        (delivery.contact or "").partition("@")[0],
    ]
    folded = text.casefold()
    if any(len(value) >= 3 and value.casefold() in folded for value in own):
        return f"the message could not be built ({kind}; details withheld: they quoted the recipient's data)"
    return text[:500]


def kept(exc: BaseException, delivery: Delivery) -> tuple[str, str]:
    """What may be kept of a provider error (ledger ``reason``, transition ``detail``, logs): its text
    without this delivery's receipt URL and contact in any writing, redacted and bounded, and its code
    when it is a short token."""
    secrets = (delivery.receipt_url, delivery.contact)
    code = exc.code if isinstance(exc, ProviderError) else type(exc).__name__
    return scrub(str(exc), secrets), safe_code(code, secrets) or ""


def count_failure(rt: Runtime, campaign_id: str) -> None:
    """Feed the breaker after a verdict. A Redis error here must not undo the verdict: the caller would take
    it for an error before the provider call and hand the send back."""
    try:
        rt.breaker.record_failure(campaign_id)
    except Exception as exc:
        log.warning("circuit breaker: failure not counted: %s", type(exc).__name__)


def settle(delivery: Delivery, provider: str, exc: BaseException, to: Status, what: str) -> tuple[Settle, Outcome]:
    """A send that ended for good (``failed``) or without an answer (``unknown``), with only what may be
    kept of the provider's reply."""
    reason, code = kept(exc, delivery)
    log.warning("%s: %s", what, reason)
    values = {"provider": provider, "reason": reason, "provider_code": code}
    return Settle(delivery, to, values, [(to, reason, code)]), Outcome(to)


def retry_later(
    rt: Runtime, delivery: Delivery, exc: ProviderError, provider: str, send_by: datetime
) -> tuple[Settle, Outcome]:
    settings = rt.settings
    # Attempts since the last resend: after a resend the backoff starts again from the base, as the bound does.
    since_resend = delivery.attempts - delivery.attempts_base
    delay = exc.retry_after or backoff(since_resend, settings.retry_base_seconds, settings.retry_max_seconds)
    again = clock.now() + timedelta(seconds=delay)
    reason, code = kept(exc, delivery)
    common: dict[str, object] = {"provider": provider, "reason": reason, "provider_code": code}
    if since_resend >= settings.max_attempts:
        gave_up = f"gave up after {delivery.attempts} attempts: {reason}"  # the reason says retries ran out
        count_failure(rt, delivery.campaign_id)
        values = {**common, "reason": gave_up}
        return Settle(delivery, Status.FAILED, values, [(Status.FAILED, gave_up, code)]), Outcome(Status.FAILED)
    values = {**common, "not_before": again}
    if again >= send_by:
        steps: list[tuple[Status, str | None, str | None]] = [
            (Status.RETRYING, reason, code),
            (Status.EXPIRED, "next retry would be after send_by", None),
        ]
        return Settle(delivery, Status.EXPIRED, values, steps), Outcome(Status.EXPIRED)
    level = logging.INFO if isinstance(exc, Throttled) else logging.WARNING
    log.log(level, "delivery %s: %s; retry %d in %.1fs", delivery.id, reason, delivery.attempts + 1, delay)
    return Settle(delivery, Status.RETRYING, values, [(Status.RETRYING, reason, code)]), Outcome(
        Status.RETRYING, again_at=again
    )
