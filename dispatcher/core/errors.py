"""One root exception; every error the program raises on purpose derives from it."""

from __future__ import annotations


class DispatcherError(Exception):
    """Root of every error raised on purpose by dispatcher."""


class ConfigError(DispatcherError):
    """A setting, campaign file or template is wrong. The message names the culprit."""


class InputError(DispatcherError):
    """The recipient list as a whole cannot be read (e.g. required columns missing)."""


class IllegalTransition(DispatcherError):
    """A delivery state change that the state table does not allow (or a stale one)."""


class ProviderError(DispatcherError):
    """A provider call failed. Subclasses say what may be done about it.

    ``code`` is the provider's own error code, kept for the audit trail; the message never carries a
    receipt URL or a full contact.
    """

    def __init__(self, message: str, *, code: str = "", retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class Throttled(ProviderError):
    """The provider asked us to slow down: retry later; not an error worth alarming anyone."""


class TransientError(ProviderError):
    """The provider certainly did not accept the message and may accept it later: retry with backoff."""


class PermanentError(ProviderError):
    """The provider refused this message for good (bad address, opted out...): never retry."""


class AmbiguousOutcome(ProviderError):
    """The request left but its answer was lost: the message may have been sent. Never resend by itself."""
