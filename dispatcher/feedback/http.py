"""Feedback over HTTP, served by the dashboard process: ``POST /feedback/sns`` and ``/feedback/sms-gateway``.

These routes cannot carry our token: the message authenticates itself (SNS signature from an allowed
topic; the gateway's HMAC header). Anything unparsable is 400, anything unverifiable 403, and neither
changes anything; a route not configured (no topic allow-list, no gateway secret) is 503; a failure of
ours is 5xx so the sender retries; the same event twice changes nothing. Refusals are logged by kind,
never by quoting what the sender sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from .. import runtime
from .apply import PendingLimits, receive
from .events import EventParseError, ProviderEvent, parse_record
from .sns import SnsVerificationError, verify

log = logging.getLogger(__name__)


def _json_object(body: bytes | str) -> dict[str, Any] | None:
    """The body as a JSON object, or None for anything else (bad UTF-8, bad JSON, nested too deeply)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def handle_sns(body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    rt = runtime.current()
    settings = rt.settings
    if not settings.sns_topic_arns:
        # A signature alone proves only that *some* AWS account sent it: without an allow-list, nothing counts.
        return 503, "DISPATCHER_SNS_TOPIC_ARNS is not set"
    message = _json_object(body)
    if message is None:
        log.warning("refused an SNS request: not a JSON object (%d bytes)", len(body))
        return 400, "not a JSON object"
    try:
        verify(message, topics=frozenset(settings.sns_topic_arns), certificate_dir=settings.sns_certificate_dir)
    except SnsVerificationError as exc:
        # The reason is one of our fixed sentences; nothing from the message is quoted.
        log.warning("refused an SNS message: %s", exc)
        return 403, "signature not verified"
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        from ..providers import aws

        aws.client("sns", settings).confirm_subscription(TopicArn=message["TopicArn"], Token=message["Token"])
        log.info("confirmed the SNS subscription to an allowed topic")
        return 200, "subscribed"
    if kind == "UnsubscribeConfirmation":
        log.warning("SNS says we were unsubscribed from an allowed topic")
        return 200, "noted"
    # Genuine and from our topic, yet not an event we know: 200, or SNS would deliver it again and again.
    record = _json_object(message["Message"]) if isinstance(message["Message"], str) else None
    try:
        if record is None:
            raise EventParseError("Message is not a JSON object")
        events = parse_record(record)
    except EventParseError as exc:
        log.warning("SNS notification not understood (%s); dropped", exc)
        return 200, "not understood; dropped"
    return _apply(rt, events)


def handle_gateway(body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    from ..providers import http_sms

    rt = runtime.current()
    secret = rt.settings.sms_gateway_secret
    if not secret:
        return 503, "DISPATCHER_SMS_GATEWAY_SECRET is not set"
    signature = headers.get("x-gateway-signature") or headers.get("X-Gateway-Signature") or ""
    if not http_sms.verify_receipt_signature(body, signature, secret):
        log.warning("refused a gateway receipt: %s signature", "bad" if signature else "no")
        return 403, "signature not verified"
    try:
        events = http_sms.receipt_events(body)
    except ValueError as exc:
        # ReceiptError texts name the field, never its value.
        return 400, f"not a receipt: {exc}"
    return _apply(rt, events)


def _apply(rt: runtime.Runtime, events: list[ProviderEvent]) -> tuple[int, str]:
    limits = PendingLimits.of(rt.settings)
    try:
        outcomes = [receive(rt.ledger, event, rt.breaker, limits).outcome for event in events]
    except Exception as exc:
        # The type only: a database error's text carries the statement's parameters.
        log.error("could not apply feedback (%s); the sender will retry", type(exc).__name__)
        return 500, "temporary failure"
    return 200, ", ".join(outcomes) or "nothing to do"
