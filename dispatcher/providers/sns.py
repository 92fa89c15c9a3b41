"""``sns``: Amazon SNS ``Publish`` straight to a phone number, transactional."""

from __future__ import annotations

from typing import Any

from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel

from . import aws
from .base import Outgoing, OutgoingSms, Provider, SendResult, register

PERMANENT = {"InvalidParameter", "InvalidParameterValue", "OptedOut", "AuthorizationError", "EndpointDisabled"}


@register
class SnsSms(Provider):
    name = "sns"
    channel = Channel.SMS

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client = aws.client("sns", settings)

    def _send(self, outgoing: Outgoing) -> SendResult:
        assert isinstance(outgoing, OutgoingSms)
        attributes: dict[str, Any] = {
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
        }
        if self.settings.sms_sender_id:
            attributes["AWS.SNS.SMS.SenderID"] = {"DataType": "String", "StringValue": self.settings.sms_sender_id}
        if self.settings.sms_origination_number:
            attributes["AWS.MM.SMS.OriginationNumber"] = {
                "DataType": "String",
                "StringValue": self.settings.sms_origination_number,
            }
        if self.settings.sms_max_price:
            attributes["AWS.SNS.SMS.MaxPrice"] = {"DataType": "Number", "StringValue": self.settings.sms_max_price}
        response = self.client.publish(PhoneNumber=outgoing.to, Message=outgoing.text, MessageAttributes=attributes)
        return SendResult(self.name, response["MessageId"])

    def translate(self, exc: Exception) -> Any:
        return aws.translate(self.name, exc, PERMANENT)
