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


@dataclass(frozen=True)
class ProviderEvent:
    source: str  # ses | sms-voice-v2 | http-gateway
    event_type: str  # the provider's own name for it
    kind: Kind
    message_id: str
    at: datetime
    code: str = ""
    detail: str = ""
    #: Who it concerns (full address/number): for the suppression list only; never logged.
    recipient: str | None = None
    #: Our "<delivery id>.<attempt>" when the provider echoes it back; finds sends whose answer was lost.
    reference: str | None = None

    def __repr__(self) -> str:
        return f"ProviderEvent({self.source} {self.event_type} {self.message_id} at {self.at.isoformat()})"


def _time(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str) and value:
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
    mail = record.get("mail") or {}
    message_id = str(mail.get("messageId") or "")
    if not message_id:
        raise EventParseError("SES record without mail.messageId")
    at = _time(mail.get("timestamp"))
    tags = mail.get("tags") or {}
    tag = (tags.get("delivery") or [None])[0] if isinstance(tags, dict) else None
    reference = str(tag).replace("_", ".") if tag else None

    def one(kind: Kind, *, when: Any = None, code: str = "", detail: str = "",
            recipient: str | None = None) -> ProviderEvent:
        return ProviderEvent("ses", event_type, kind, message_id, _time(when) if when else at, code, detail,
                             recipient, reference)

    if event_type == "Send":
        return [one(Kind.SENT)]
    if event_type == "Delivery":
        delivery = record.get("delivery") or {}
        return [one(Kind.DELIVERED, when=delivery.get("timestamp"), detail=str(delivery.get("smtpResponse", ""))[:200])]
    if event_type == "Bounce":
        bounce = record.get("bounce") or {}
        hard = bounce.get("bounceType") == "Permanent"
        kind = Kind.HARD_BOUNCE if hard else Kind.SOFT_BOUNCE
        code = f"{bounce.get('bounceType', '')}/{bounce.get('bounceSubType', '')}"
        recipients = bounce.get("bouncedRecipients") or [{}]
        return [one(kind, when=bounce.get("timestamp"), code=code,
                    detail=str(r.get("diagnosticCode") or r.get("status") or "")[:200],
                    recipient=r.get("emailAddress")) for r in recipients]
    if event_type == "Complaint":
        complaint = record.get("complaint") or {}
        recipients = complaint.get("complainedRecipients") or [{}]
        code = str(complaint.get("complaintFeedbackType") or complaint.get("complaintSubType") or "complaint")
        return [one(Kind.COMPLAINT, when=complaint.get("timestamp"), code=code, recipient=r.get("emailAddress"))
                for r in recipients]
    if event_type == "Reject":
        return [one(Kind.REJECTED, code="Reject", detail=str((record.get("reject") or {}).get("reason", "")))]
    if event_type == "Rendering Failure":
        failure = record.get("failure") or {}
        return [one(Kind.REJECTED, code="RenderingFailure", detail=str(failure.get("errorMessage", ""))[:200])]
    if event_type == "DeliveryDelay":
        delay = record.get("deliveryDelay") or {}
        return [one(Kind.DELAYED, when=delay.get("timestamp"), code=str(delay.get("delayType", "")))]
    if event_type in ("Open", "Click"):
        return [one(Kind.ENGAGEMENT)]
    return [one(Kind.UNKNOWN, code=event_type or "?")]


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
    message_id = str(record.get("messageId") or "")
    if not message_id:
        raise EventParseError("SMS event without messageId")
    kind = SMS_KINDS.get(event_type, Kind.UNKNOWN)
    context = record.get("context") or {}
    reference = context.get("delivery") if isinstance(context, dict) else None
    return [ProviderEvent("sms-voice-v2", event_type, kind, message_id, _time(record.get("eventTimestamp")),
                          code=str(record.get("messageStatus") or event_type),
                          detail=str(record.get("messageStatusDescription") or "")[:200],
                          recipient=record.get("destinationPhoneNumber"),
                          reference=str(reference) if reference else None)]


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
    if not isinstance(data, dict):
        raise EventParseError("not a JSON object")
    if data.get("Type") == "Notification" and isinstance(data.get("Message"), str):
        try:
            inner = json.loads(data["Message"])
        except json.JSONDecodeError as exc:
            raise EventParseError(f"SNS Message is not JSON: {exc.msg}") from None
        if not isinstance(inner, dict):
            raise EventParseError("SNS Message is not a JSON object")
        return data, inner
    return None, data
