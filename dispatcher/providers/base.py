"""The provider interface: one ``send`` per message, results and errors in our own vocabulary.

The base class owns the sequence (build the request, call, translate errors); a provider fills in
``_send`` and ``translate``. Errors are translated in exactly one place: :meth:`Provider.send`.
"""

from __future__ import annotations

import email
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from functools import cached_property
from typing import ClassVar

from dispatcher.core.errors import ProviderError, TransientError
from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel


@dataclass(frozen=True)
class OutgoingEmail:
    #: ``<delivery id>.<attempt>``: the only identifier that travels in provider metadata.
    reference: str
    campaign_id: str
    to: str
    #: The MIME message: its bytes (:func:`dispatcher.sending.mime.build_raw`) or a message object.
    content: EmailMessage | bytes

    @cached_property
    def raw(self) -> bytes:
        """The bytes that go on the wire (what providers send)."""
        content = self.content
        return content if isinstance(content, bytes) else content.as_bytes()

    @cached_property
    def message(self) -> EmailMessage:
        """The message object (parsed from the bytes when it holds bytes: costly, not for the send path)."""
        content = self.content
        if isinstance(content, EmailMessage):
            return content
        return email.message_from_bytes(content, policy=SMTP)


@dataclass(frozen=True)
class OutgoingSms:
    reference: str
    campaign_id: str
    to: str
    text: str
    parts: int
    #: The message must not live past this instant (the campaign deadline).
    expires_at: datetime


Outgoing = OutgoingEmail | OutgoingSms


@dataclass(frozen=True)
class SendResult:
    provider: str
    message_id: str


class Provider(ABC):
    name: ClassVar[str]
    channel: ClassVar[Channel]

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, outgoing: Outgoing) -> SendResult:
        try:
            return self._send(outgoing)
        except ProviderError:
            raise
        except Exception as exc:  # every provider failure leaves here in our vocabulary
            raise self.translate(exc) from None

    @abstractmethod
    def _send(self, outgoing: Outgoing) -> SendResult: ...

    def translate(self, exc: Exception) -> ProviderError:
        """Map a provider exception onto throttled / transient / permanent / ambiguous."""
        return TransientError(f"{self.name}: {type(exc).__name__}", code=type(exc).__name__)

    def close(self) -> None:
        """Release connections (called when a worker stops)."""


_REGISTRY: dict[tuple[Channel, str], type[Provider]] = {}


def register(cls: type[Provider]) -> type[Provider]:
    _REGISTRY[(cls.channel, cls.name)] = cls
    return cls


def provider_class(channel: Channel, name: str) -> type[Provider]:
    try:
        return _REGISTRY[(channel, name)]
    except KeyError:
        known = sorted(n for (c, n) in _REGISTRY if c is channel)
        setting = "DISPATCHER_EMAIL_PROVIDER" if channel is Channel.EMAIL else "DISPATCHER_SMS_PROVIDER"
        raise ProviderError(f"{setting}: no provider '{name}' (known: {', '.join(known)})") from None
