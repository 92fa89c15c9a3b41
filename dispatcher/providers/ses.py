"""``ses``: Amazon SES v2 ``SendEmail`` with the raw MIME message and a configuration set for events."""

from __future__ import annotations

from typing import Any

from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel

from . import aws
from .base import Outgoing, OutgoingEmail, Provider, SendResult, register

PERMANENT = {
    "MessageRejected",
    "MailFromDomainNotVerifiedException",
    "BadRequestException",
    "NotFoundException",
    "AccountSuspendedException",
    "SendingPausedException",
    "InvalidParameterValue",
}


@register
class SesEmail(Provider):
    name = "ses"
    channel = Channel.EMAIL

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.client = aws.client("sesv2", settings)

    def _send(self, outgoing: Outgoing) -> SendResult:
        assert isinstance(outgoing, OutgoingEmail)
        request: dict[str, Any] = {
            "FromEmailAddress": self.settings.email_sender,
            "Destination": {"ToAddresses": [outgoing.to]},
            "Content": {"Raw": {"Data": outgoing.raw}},
            # Tags travel into every SES event: identifiers only, never personal data.
            "EmailTags": [
                {"Name": "delivery", "Value": outgoing.reference.replace(".", "_")},
                {"Name": "campaign", "Value": _tag(outgoing.campaign_id)},
            ],
        }
        if self.settings.ses_configuration_set:
            request["ConfigurationSetName"] = self.settings.ses_configuration_set
        response = self.client.send_email(**request)
        return SendResult(self.name, response["MessageId"])

    def translate(self, exc: Exception) -> Any:
        return aws.translate(self.name, exc, PERMANENT)


def _tag(value: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in value)[:256]
