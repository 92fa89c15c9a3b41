"""Feedback over HTTP, served by the dashboard process: ``POST /feedback/sns`` and ``/feedback/sms-gateway``.

These routes cannot carry our token: the message authenticates itself (SNS signature; the gateway's HMAC
header). Anything unverifiable gets 400/403 and changes nothing; a failure of ours gets 5xx so the sender
retries; the same event twice changes nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from .. import runtime
from .apply import receive
from .events import EventParseError, ProviderEvent, parse_record
from .sns import SnsVerificationError, verify

log = logging.getLogger(__name__)


def handle_sns(body: bytes, headers: Mapping[str, str]) -> tuple[int, str]:
    try:
        message = json.loads(body)
        if not isinstance(message, dict):
            raise ValueError
    except ValueError:
        return 400, "not a JSON object"
    rt = runtime.current()
    settings = rt.settings
    try:
        verify(message, certificate_dir=settings.sns_certificate_dir,
               topics=frozenset(settings.sns_topic_arns) if settings.sns_topic_arns else None)
    except SnsVerificationError as exc:
        log.warning("refused an SNS message: %s", exc)
        return 403, "signature not verified"
    kind = message["Type"]
    if kind == "SubscriptionConfirmation":
        from ..providers import aws

        aws.client("sns", settings).confirm_subscription(TopicArn=message["TopicArn"], Token=message["Token"])
        log.info("confirmed the SNS subscription to %s", message["TopicArn"])
        return 200, "subscribed"
    if kind == "UnsubscribeConfirmation":
        log.warning("SNS says we were unsubscribed from %s", message.get("TopicArn"))
        return 200, "noted"
    try:
        record = json.loads(message["Message"])
        events = parse_record(record) if isinstance(record, dict) else []
    except (ValueError, EventParseError) as exc:
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
        return 403, "signature not verified"
    try:
        events = http_sms.receipt_events(body)
    except ValueError as exc:
        return 400, f"not a receipt: {exc}"
    return _apply(rt, events)


def _apply(rt: runtime.Runtime, events: list[ProviderEvent]) -> tuple[int, str]:
    try:
        outcomes = [receive(rt.ledger, event, rt.breaker).outcome for event in events]
    except Exception:
        log.exception("could not apply feedback; the sender will retry")
        return 500, "temporary failure"
    return 200, ", ".join(outcomes) or "nothing to do"
