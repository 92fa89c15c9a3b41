"""``sms-voice-v2``: AWS End User Messaging SMS (``pinpoint-sms-voice-v2``) ``SendTextMessage``.

Transactional, from ``sms_origination_number`` (else ``sms_sender_id``), through the configuration set
``sms_configuration_set`` (its event destination carries delivery receipts to our feedback queue), with
``sms_max_price`` as the cap per message part. The time to live ends at the campaign deadline: a message
the carriers could not hand over in time is dropped rather than arriving after receipts have closed.
``Context`` carries our delivery reference and nothing else; it is copied into every delivery event.

No local AWS emulator implements this API (moto answers 500), so its tests use botocore's ``Stubber``,
which checks every request against the service model without any network traffic.
"""

from __future__ import annotations

from typing import Any

from dispatcher.core import clock
from dispatcher.core.errors import PermanentError, ProviderError, TransientError
from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel

from . import aws
from .base import Outgoing, OutgoingSms, Provider, SendResult, register

#: ``TimeToLive`` bounds (seconds) in the service model.
TTL_MIN, TTL_MAX = 5, 259_200
PERMANENT = {
    "ValidationException",
    "ConflictException",
    "ResourceNotFoundException",
    "AccessDeniedException",
}
#: Spend limits and quotas are lifted by an operator, not by the recipient: do not fail people for good.
QUOTA = {"ServiceQuotaExceededException"}


def time_to_live(outgoing: OutgoingSms) -> int:
    """Whole seconds left before the deadline, within the API's range; never reaching past it."""
    left = int((outgoing.expires_at - clock.now()).total_seconds())
    if left < TTL_MIN:
        raise PermanentError("sms-voice-v2: the campaign deadline has passed; not sent", code="DeadlinePassed")
    return min(left, TTL_MAX)


@register
class SmsVoiceV2(Provider):
    name = "sms-voice-v2"
    channel = Channel.SMS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client = aws.client("pinpoint-sms-voice-v2", settings)

    def request(self, outgoing: OutgoingSms) -> dict[str, Any]:
        settings = self.settings
        request: dict[str, Any] = {
            "DestinationPhoneNumber": outgoing.to,
            "MessageBody": outgoing.text,
            "MessageType": "TRANSACTIONAL",
            "TimeToLive": time_to_live(outgoing),
            "Context": {"delivery": outgoing.reference},
        }
        origination = settings.sms_origination_number or settings.sms_sender_id
        if origination:
            request["OriginationIdentity"] = origination
        if settings.sms_configuration_set:
            request["ConfigurationSetName"] = settings.sms_configuration_set
        if settings.sms_max_price:
            request["MaxPrice"] = settings.sms_max_price
        return request

    def _send(self, outgoing: Outgoing) -> SendResult:
        if not isinstance(outgoing, OutgoingSms):
            raise PermanentError("sms-voice-v2: not an SMS", code="WrongChannel")
        response = self.client.send_text_message(**self.request(outgoing))
        return SendResult(self.name, response["MessageId"])

    def translate(self, exc: Exception) -> ProviderError:
        translated = aws.translate(self.name, exc, PERMANENT)
        if translated.code in QUOTA:
            return TransientError(str(translated), code=translated.code)
        return translated
