"""Providers, one module each; importing this package registers them all."""

from __future__ import annotations

from dispatcher.core.errors import ConfigError, ProviderError
from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel

from . import http_sms, outbox, ses, sms_voice_v2, smtp, sns  # noqa: F401  (registration)
from .base import OutgoingEmail, OutgoingSms, Provider, SendResult, provider_class


def build(channel: Channel, settings: Settings) -> Provider:
    name = settings.email_provider if channel is Channel.EMAIL else settings.sms_provider
    try:
        return provider_class(channel, name)(settings)
    except ProviderError as exc:
        raise ConfigError(str(exc)) from None


__all__ = ["OutgoingEmail", "OutgoingSms", "Provider", "SendResult", "build"]
