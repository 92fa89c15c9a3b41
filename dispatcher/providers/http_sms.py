"""``http``: a domestic Japanese SMS gateway with a JSON HTTP API (contract: ``docs/sms-gateway.md``).

Only a domestic route with carrier connections can show the announced landline ``03-5244-9370`` as the
sender; AWS routes to Japan show a sender ID or a foreign number.

Sending: ``POST DISPATCHER_SMS_GATEWAY_URL`` with ``Authorization: Bearer DISPATCHER_SMS_GATEWAY_TOKEN``
and ``{"to", "from", "text", "reference"}``. The client never retries by itself (a retried POST whose
first answer was lost is a second SMS). What the answer means:

- 2xx with ``{"id": ...}``: accepted; the id is the provider message id receipts will quote;
- 429: throttled, ``Retry-After`` honoured; 5xx: transient; any other status: permanent;
- no connection made: transient; the request left but no answer came back: ambiguous.

Receipts: the gateway POSTs them to the dashboard (``/feedback/sms-gateway``), signed with HMAC-SHA256
of the raw body. :func:`verify_receipt_signature` checks the header; :func:`parse_receipt` reads the body
into delivery states, :func:`receipt_events` into the feedback pipeline's events.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from dispatcher.core import clock
from dispatcher.core.errors import (
    AmbiguousOutcome,
    ConfigError,
    DispatcherError,
    PermanentError,
    ProviderError,
    Throttled,
    TransientError,
)
from dispatcher.core.privacy import safe_code
from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel, Status

from ..feedback.events import MAX_EVENT_TYPE, MAX_MESSAGE_ID, MAX_REFERENCE, Kind, ProviderEvent
from .base import Outgoing, OutgoingSms, Provider, SendResult, register

SIGNATURE_HEADER = "X-Gateway-Signature"
#: The gateway's receipt statuses in our event vocabulary; anything else is recorded as UNKNOWN.
RECEIPT_KINDS: dict[str, Kind] = {
    "delivered": Kind.DELIVERED,
    "failed": Kind.UNDELIVERABLE,
    "expired": Kind.UNDELIVERABLE,
    "rejected": Kind.REJECTED,
    # Optional intermediate status: handed to the carrier. Proves a send whose answer we lost.
    "sent": Kind.SENT,
}
#: ... and the delivery state each one leads to.
RECEIPT_STATUSES: dict[Kind, Status] = {
    Kind.DELIVERED: Status.DELIVERED,
    Kind.UNDELIVERABLE: Status.FAILED,
    Kind.REJECTED: Status.FAILED,
    Kind.SENT: Status.SENT,
}
#: A longer ``Retry-After`` is taken as this: the retry policy, not the gateway, decides long waits.
MAX_RETRY_AFTER = 3600.0
#: A receipt's ``status`` becomes the event type (a ledger column of this width).
MAX_RECEIPT_STATUS = MAX_EVENT_TYPE
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def sender_digits(sender: str) -> str:
    """``03-5244-9370`` -> ``0352449370``: the gateway wants the domestic number as digits only."""
    return "".join(ch for ch in sender if ch in "0123456789")


@register
class HttpGatewaySms(Provider):
    name = "http"
    channel = Channel.SMS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.url = _gateway_url(settings.sms_gateway_url)
        if not settings.sms_gateway_token:
            raise ConfigError("DISPATCHER_SMS_GATEWAY_TOKEN is not set (the gateway's bearer token)")
        self.sender = sender_digits(settings.sms_sender)
        if not self.sender:
            raise ConfigError("DISPATCHER_SMS_SENDER: no digits in the sender number")
        self.client = httpx.Client(
            timeout=httpx.Timeout(
                connect=settings.provider_connect_timeout,
                read=settings.provider_read_timeout,
                write=settings.provider_read_timeout,
                pool=settings.provider_connect_timeout,
            ),
            transport=httpx.HTTPTransport(retries=0),
            follow_redirects=False,
            headers={"Authorization": f"Bearer {settings.sms_gateway_token}"},
        )

    def _send(self, outgoing: Outgoing) -> SendResult:
        if not isinstance(outgoing, OutgoingSms):
            raise PermanentError("http: not an SMS", code="WrongChannel")
        payload = {"to": outgoing.to, "from": self.sender, "text": outgoing.text, "reference": outgoing.reference}
        response = self.client.post(self.url, json=payload)
        status = response.status_code
        if 200 <= status < 300:
            return SendResult(self.name, _accepted_id(response))
        code = _error_code(response)
        if status == 429:
            raise Throttled(
                f"http: gateway throttled (HTTP 429, {code})",
                code=code,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            raise TransientError(f"http: gateway error (HTTP {status}, {code})", code=code)
        raise PermanentError(f"http: gateway refused the message (HTTP {status}, {code})", code=code)

    def translate(self, exc: Exception) -> ProviderError:
        # Nothing reached the gateway: safe to try again.
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
            return TransientError(
                f"http: could not connect to the gateway ({type(exc).__name__})", code=type(exc).__name__
            )
        # The request (or part of it) left: the gateway may have taken the message.
        if isinstance(exc, httpx.TransportError):
            return AmbiguousOutcome(f"http: answer lost ({type(exc).__name__})", code=type(exc).__name__)
        return AmbiguousOutcome(f"http: {type(exc).__name__}", code=type(exc).__name__)

    def close(self) -> None:
        self.client.close()


def _gateway_url(url: str | None) -> str:
    if not url:
        raise ConfigError("DISPATCHER_SMS_GATEWAY_URL is not set (the gateway's send endpoint)")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError("DISPATCHER_SMS_GATEWAY_URL: must be an https:// URL with a host")
    # The bearer token must not cross a network in clear text; plain http only to this machine.
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ConfigError("DISPATCHER_SMS_GATEWAY_URL: use https:// (http:// is allowed for localhost only)")
    return url


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _accepted_id(response: httpx.Response) -> str:
    try:
        message_id = response.json().get("id")
    except (ValueError, AttributeError):
        message_id = None
    if not isinstance(message_id, str | int) or isinstance(message_id, bool) or str(message_id) == "":
        # 2xx without the id the contract promises: something answered, but maybe not the gateway.
        raise AmbiguousOutcome(f"http: HTTP {response.status_code} without a message id", code="NoMessageId")
    return str(message_id)


def _error_code(response: httpx.Response) -> str:
    """The gateway's own error code when it gives a short token with few digits (a phone number posing as
    a numeric code is refused), else the HTTP status (never free text)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("code", "error"):
            code = safe_code(body.get(key))
            if code is not None:
                return code
    return f"HTTP {response.status_code}"


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds or as an HTTP date (RFC 9110), bounded."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - clock.now()).total_seconds()
        except (TypeError, ValueError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


# Receipts -----------------------------------------------------------------------------------------


class ReceiptError(DispatcherError, ValueError):
    """A receipt body that cannot be read (the route answers 400)."""


@dataclass(frozen=True)
class Receipt:
    #: The gateway's message id, as it answered our send (``deliveries.provider_message_id``).
    message_id: str
    #: Our ``<delivery id>.<attempt>`` as we sent it, when the gateway echoes it.
    reference: str | None
    kind: Kind
    #: ``delivered``, ``failed`` (also for expired and rejected), ``sent``; None for a status not known.
    status: Status | None
    gateway_status: str
    code: str | None
    at: datetime | None

    @property
    def delivery_id(self) -> int | None:
        """The delivery the reference names, or None when absent or not ours."""
        if not self.reference:
            return None
        head = self.reference.partition(".")[0]
        return int(head) if head.isdigit() else None


def sign_receipt(body: bytes, secret: str) -> str:
    """The header value a gateway sends with ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_receipt_signature(body: bytes, header_value: str | None, secret: str | None) -> bool:
    """True when ``header_value`` is ``sha256=<hex HMAC-SHA256 of body with secret>``.

    Compares in constant time. No secret configured means nothing can be verified: always False.
    """
    if not secret or not header_value:
        return False
    scheme, sep, digest = header_value.strip().partition("=")
    if not sep or scheme.strip().lower() != "sha256" or not digest.isascii():
        return False
    expected = sign_receipt(body, secret).partition("=")[2]
    return hmac.compare_digest(expected.encode("ascii"), digest.strip().lower().encode("ascii"))


def parse_receipt(body: bytes | str) -> list[Receipt]:
    """Read a receipt body: one JSON object or a list of them.

    Each needs ``id`` and ``status``; ``reference``, ``code`` and ``at`` (ISO 8601; without an offset it
    is read as JST, the gateway's local time) are optional. Unknown statuses come back as
    ``Kind.UNKNOWN`` with ``status=None``: recorded, never moving a delivery. Extra fields are ignored.

    Raises:
        ReceiptError: not JSON, or an item without the required fields.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        raise ReceiptError("receipt: body is not JSON") from None
    items = data if isinstance(data, list) else [data]
    return [_receipt(item, index) for index, item in enumerate(items)]


def receipt_events(body: bytes | str) -> list[ProviderEvent]:
    """A verified receipt body as normalised provider events (what ``/feedback/sms-gateway`` applies)."""
    return [
        ProviderEvent(
            "http-gateway",
            r.gateway_status,
            r.kind,
            r.message_id,
            r.at or clock.now(),
            code=r.code or safe_code(r.gateway_status) or "",
            reference=r.reference,
        )
        for r in parse_receipt(body)
    ]


def _receipt(item: Any, index: int) -> Receipt:
    where = f"receipt[{index}]"
    if not isinstance(item, dict):
        raise ReceiptError(f"{where}: not an object")
    message_id = item.get("id")
    if isinstance(message_id, int) and not isinstance(message_id, bool):
        message_id = str(message_id)
    if not isinstance(message_id, str) or not message_id:
        raise ReceiptError(f"{where}: 'id' missing")
    gateway_status = item.get("status")
    if not isinstance(gateway_status, str) or not gateway_status:
        raise ReceiptError(f"{where}: 'status' missing")
    reference = item.get("reference")
    reference = reference if isinstance(reference, str) and reference else None
    # Bounded as the ledger's columns are: an overlong field is the gateway's mistake (400), never a
    # database error (500) that it would retry for ever.
    if len(message_id) > MAX_MESSAGE_ID or len(gateway_status) > MAX_RECEIPT_STATUS:
        raise ReceiptError(f"{where}: 'id' or 'status' too long")
    if reference is not None and len(reference) > MAX_REFERENCE:
        raise ReceiptError(f"{where}: 'reference' too long")
    kind = RECEIPT_KINDS.get(gateway_status.strip().lower(), Kind.UNKNOWN)
    return Receipt(
        message_id=message_id,
        reference=reference,
        kind=kind,
        status=RECEIPT_STATUSES.get(kind),
        gateway_status=gateway_status,
        # Only a code-shaped value is kept (a free-text or number-holding "code" could name the recipient).
        code=safe_code(item.get("code")) or None,
        at=_instant(item.get("at"), where),
    )


def _instant(value: Any, where: str) -> datetime | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ReceiptError(f"{where}: 'at' is not an ISO 8601 string")
    try:
        instant = datetime.fromisoformat(value)
    except ValueError:
        raise ReceiptError(f"{where}: 'at' is not an ISO 8601 time") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=clock.JST)
