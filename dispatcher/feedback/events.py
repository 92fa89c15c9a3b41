"""The normalised provider event, and the parsers that turn provider JSON into it.

Provider vocabulary maps onto :class:`Kind`; anything unrecognised becomes ``Kind.UNKNOWN`` and is
recorded, never crashed on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dispatcher.core.privacy import safe_code as privacy_safe_code


class Kind(StrEnum):
    SENT = "sent"  # the provider accepted it (SES Send)
    DELIVERED = "delivered"
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    REJECTED = "rejected"  # refused before sending (SES Reject, Rendering Failure, SMS blocked/invalid)
    UNDELIVERABLE = "undeliverable"  # SMS never reached the phone (unreachable, TTL expired)
    OPTED_OUT = "opted_out"
    DELAYED = "delayed"  # informational
    ENGAGEMENT = "engagement"  # open / click: informational
    UNKNOWN = "unknown"


#: Where each source's events come from: the provider name the ledger records for a send, and its channel.
#: An event only ever concerns a delivery sent through that provider on that channel.
SOURCES: dict[str, tuple[str, str]] = {
    "ses": ("ses", "email"),
    "sms-voice-v2": ("sms-voice-v2", "sms"),
    "http-gateway": ("http", "sms"),
}

#: Column widths in the ledger (provider_events): longer values are refused, never a database error.
MAX_MESSAGE_ID = 200
MAX_EVENT_TYPE = 64
MAX_REFERENCE = 64


def safe_code(value: object) -> str:
    """A provider status code as it may be stored, or "" when it is not one (free text, too long, a number
    that could be a phone): :func:`dispatcher.core.privacy.safe_code`, as text."""
    return privacy_safe_code(value) or ""


@dataclass(frozen=True)
class ProviderEvent:
    source: str  # ses | sms-voice-v2 | http-gateway (a key of SOURCES)
    event_type: str  # the provider's own name for it
    kind: Kind
    message_id: str
    at: datetime
    #: Codes only (e.g. ``Permanent/General 5.1.1``, ``DELIVERED``), never a provider's free text.
    code: str = ""
    #: Who it concerns (full address/number): for the suppression list only; never logged.
    recipient: str | None = None
    #: Our "<delivery id>.<attempt>" when the provider echoes it back; finds sends whose answer was lost.
    reference: str | None = None

    def __repr__(self) -> str:
        return f"ProviderEvent({self.source} {self.event_type} {self.message_id} at {self.at.isoformat()})"


def _time(value: Any) -> datetime:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return datetime.now(UTC)
    if isinstance(value, str) and 0 < len(value) <= 40:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.now(UTC)


class EventParseError(ValueError):
    pass


def parse_ses(record: dict[str, Any]) -> list[ProviderEvent]:
    """SES event publishing (``eventType``) and identity notifications (``notificationType``)."""
    event_type = str(record.get("eventType") or record.get("notificationType") or "")
    mail = _object(record.get("mail"))
    message_id = _message_id(mail.get("messageId"), "SES record without a usable mail.messageId")
    at = _time(mail.get("timestamp"))
    tagged = _object(mail.get("tags")).get("delivery")
    tag = tagged[0] if isinstance(tagged, list) and tagged else None
    reference = _reference(str(tag).replace("_", ".")) if isinstance(tag, str) else None

    def one(kind: Kind, *, when: Any = None, code: str = "", recipient: Any = None) -> ProviderEvent:
        return ProviderEvent(
            "ses",
            event_type[:MAX_EVENT_TYPE],
            kind,
            message_id,
            _time(when) if when else at,
            code,
            recipient if isinstance(recipient, str) else None,
            reference,
        )

    if event_type == "Send":
        return [one(Kind.SENT)]
    if event_type == "Delivery":
        delivery = _object(record.get("delivery"))
        # smtpResponse is the receiving MTA's free text: not kept.
        return [one(Kind.DELIVERED, when=delivery.get("timestamp"))]
    if event_type == "Bounce":
        bounce = _object(record.get("bounce"))
        hard = bounce.get("bounceType") == "Permanent"
        kind = Kind.HARD_BOUNCE if hard else Kind.SOFT_BOUNCE
        code = f"{safe_code(bounce.get('bounceType'))}/{safe_code(bounce.get('bounceSubType'))}"
        recipients = _recipients(bounce.get("bouncedRecipients"))
        # The enhanced status code (5.1.1) is kept; diagnosticCode is free text that may echo the address.
        return [
            one(
                kind,
                when=bounce.get("timestamp"),
                code=f"{code} {safe_code(r.get('status'))}".strip(),
                recipient=r.get("emailAddress"),
            )
            for r in recipients
        ]
    if event_type == "Complaint":
        complaint = _object(record.get("complaint"))
        recipients = _recipients(complaint.get("complainedRecipients"))
        code = safe_code(complaint.get("complaintFeedbackType") or complaint.get("complaintSubType")) or "complaint"
        return [
            one(Kind.COMPLAINT, when=complaint.get("timestamp"), code=code, recipient=r.get("emailAddress"))
            for r in recipients
        ]
    if event_type == "Reject":
        return [one(Kind.REJECTED, code="Reject")]
    if event_type == "Rendering Failure":
        # errorMessage may quote the template, i.e. the receipt URL: not kept.
        return [one(Kind.REJECTED, code="RenderingFailure")]
    if event_type == "DeliveryDelay":
        delay = _object(record.get("deliveryDelay"))
        return [one(Kind.DELAYED, when=delay.get("timestamp"), code=safe_code(delay.get("delayType")))]
    if event_type in ("Open", "Click"):
        return [one(Kind.ENGAGEMENT)]
    return [one(Kind.UNKNOWN, code=safe_code(event_type) or "?")]


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _recipients(value: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [r for r in value if isinstance(r, dict)] if isinstance(value, list) else []
    return items if items else [{}]


def _message_id(value: Any, problem: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_MESSAGE_ID:
        raise EventParseError(problem)
    return value


def _reference(value: str | None) -> str | None:
    """Our ``<delivery id>.<attempt>``, or None when the echoed value is not one."""
    if not value or len(value) > MAX_REFERENCE:
        return None
    head, dot, tail = value.partition(".")
    return value if dot and head.isdigit() and tail.isdigit() and head.isascii() and tail.isascii() else None


#: End User Messaging SMS event types (``TEXT_*``) and what they mean for us.
SMS_KINDS = {
    "TEXT_DELIVERED": Kind.DELIVERED,
    "TEXT_SUCCESSFUL": Kind.SENT,
    "TEXT_QUEUED": Kind.SENT,
    "TEXT_PENDING": Kind.SENT,
    "TEXT_BLOCKED": Kind.REJECTED,
    "TEXT_INVALID": Kind.REJECTED,
    "TEXT_INVALID_MESSAGE": Kind.REJECTED,
    "TEXT_SPAM": Kind.REJECTED,
    "TEXT_CARRIER_BLOCKED": Kind.REJECTED,
    "TEXT_CARRIER_UNREACHABLE": Kind.UNDELIVERABLE,
    "TEXT_UNREACHABLE": Kind.UNDELIVERABLE,
    "TEXT_TTL_EXPIRED": Kind.UNDELIVERABLE,
    "TEXT_MAX_PRICE_EXCEEDED": Kind.REJECTED,
    "TEXT_UNKNOWN": Kind.UNKNOWN,
    "TEXT_OPTED_OUT": Kind.OPTED_OUT,
}


def parse_sms_voice_v2(record: dict[str, Any]) -> list[ProviderEvent]:
    event_type = str(record.get("eventType") or "")
    message_id = _message_id(record.get("messageId"), "SMS event without a usable messageId")
    kind = SMS_KINDS.get(event_type, Kind.UNKNOWN)
    reference = _object(record.get("context")).get("delivery")
    recipient = record.get("destinationPhoneNumber")
    # messageStatusDescription is free text: only the status code is kept.
    return [
        ProviderEvent(
            "sms-voice-v2",
            event_type[:MAX_EVENT_TYPE],
            kind,
            message_id,
            _time(record.get("eventTimestamp")),
            code=safe_code(record.get("messageStatus")) or safe_code(event_type),
            recipient=recipient if isinstance(recipient, str) else None,
            reference=_reference(reference) if isinstance(reference, str) else None,
        )
    ]


def parse_record(record: dict[str, Any]) -> list[ProviderEvent]:
    """Any record that can reach our queue: SES (event or notification) or End User Messaging SMS."""
    if "mail" in record and ("eventType" in record or "notificationType" in record):
        return parse_ses(record)
    if str(record.get("eventType", "")).startswith("TEXT_"):
        return parse_sms_voice_v2(record)
    raise EventParseError("not a provider event this program knows")


def unwrap(body: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Split an SQS body into (SNS envelope or None, provider record); raw delivery has no envelope."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise EventParseError(f"not JSON: {exc.msg}") from None
    except (ValueError, RecursionError):  # an integer too long to read, or nesting too deep
        raise EventParseError("not JSON: too deep or too long a number") from None
    if not isinstance(data, dict):
        raise EventParseError("not a JSON object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        try:
            inner = json.loads(data["Message"])
        except json.JSONDecodeError as exc:
            raise EventParseError(f"SNS Message is not JSON: {exc.msg}") from None
        except (ValueError, RecursionError):
            raise EventParseError("SNS Message is not JSON: too deep or too long a number") from None
        if not isinstance(inner, dict):
            raise EventParseError("SNS Message is not a JSON object")
        return data, inner
    return None, data
