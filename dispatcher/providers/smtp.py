"""``smtp``: the organisation's own mail server, with the same MIME message the SES route sends.

``DISPATCHER_SMTP_URL`` names the server: ``smtp://host:25`` (plain), ``smtp+starttls://user:pass@host:587``
or ``smtps://user:pass@host:465`` (TLS from the first byte). User and password are percent-decoded. TLS
certificates are checked against the system's trust store (``SSL_CERT_FILE`` adds a private CA).

Each worker thread keeps its own connection and sends one message per transaction (one recipient, so a
refusal is that person's alone). After ``smtp_messages_per_connection`` messages the session is closed
and a new one opened: carriers such as docomo ask for at most 100 recipients per session.

What a failure means depends on how far the transaction got. Nothing is sent before ``DATA``, so a
refusal or a dropped connection up to there is safe to retry (a stale pooled connection is replaced
at once). Once the message is on the wire, a lost answer may hide an accepted message: that is an
:class:`AmbiguousOutcome`, never retried by itself.
"""

from __future__ import annotations

import re
import smtplib
import ssl
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Literal
from urllib.parse import unquote, urlsplit

from dispatcher.core.errors import (
    AmbiguousOutcome,
    ConfigError,
    PermanentError,
    ProviderError,
    Throttled,
    TransientError,
)
from dispatcher.core.settings import Settings
from dispatcher.core.states import Channel

from .base import Outgoing, OutgoingEmail, Provider, SendResult, register

Security = Literal["plain", "starttls", "tls"]
SCHEMES: dict[str, tuple[Security, int]] = {
    "smtp": ("plain", 25),
    "smtp+starttls": ("starttls", 587),
    "smtps": ("tls", 465),
}
#: 4xx replies that mean "too much, too fast" rather than "something broke": 421 closes the session.
THROTTLE_CODES = {421, 451, 452}
_ENHANCED = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_QUEUE_ID = re.compile(rb"queued as ([A-Za-z0-9._-]+)", re.IGNORECASE)
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_MESSAGE_ID = re.compile(rb"^message-id:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_LINE_BREAK = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class SmtpTarget:
    security: Security
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str | None) -> SmtpTarget:
        """Parse ``DISPATCHER_SMTP_URL``; the error names the setting and never repeats the password."""
        if not url:
            raise ConfigError("DISPATCHER_SMTP_URL is not set (e.g. smtp+starttls://user:pass@mail.example.jp:587)")
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise ConfigError("DISPATCHER_SMTP_URL: not a valid URL (bad port or brackets)") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ConfigError(f"DISPATCHER_SMTP_URL: scheme must be one of {', '.join(SCHEMES)}, not '{scheme}'")
        if not parts.hostname:
            raise ConfigError("DISPATCHER_SMTP_URL: no host name")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError("DISPATCHER_SMTP_URL: only scheme://[user:password@]host[:port] is understood")
        security, default_port = SCHEMES[scheme]
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else None
        if (username is None) != (password is None):
            raise ConfigError("DISPATCHER_SMTP_URL: give both user and password, or neither")
        if username and security == "plain":
            raise ConfigError("DISPATCHER_SMTP_URL: a password needs smtp+starttls:// or smtps://, not smtp://")
        return cls(security, parts.hostname, port or default_port, username, password)


class _ReplyError(Exception):
    """The server answered a step of the transaction with something other than success."""

    def __init__(self, step: str, code: int, text: bytes) -> None:
        super().__init__(step, code)
        self.step = step
        self.code = code
        self.text = text


class _Lost(Exception):
    """The connection broke after the message went on the wire: the server may have it."""


class _Stale(Exception):
    """A reused connection turned out dead before anything was sent."""


@dataclass
class _Session:
    smtp: smtplib.SMTP
    sent: int = 0


@register
class SmtpEmail(Provider):
    name = "smtp"
    channel = Channel.EMAIL

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.target = SmtpTarget.from_url(settings.smtp_url)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._sessions: dict[int, _Session] = {}

    # The send sequence -----------------------------------------------------------------------
    def _send(self, outgoing: Outgoing) -> SendResult:
        if not isinstance(outgoing, OutgoingEmail):
            raise PermanentError("smtp: not an e-mail", code="WrongChannel")
        data = outgoing.raw
        session, reused = self._session()
        try:
            reply = self._attempt(session, outgoing.to, data, reused=reused)
        except _Stale:
            # The server had closed our idle connection; nothing was sent, so a new one is safe.
            session, _ = self._session()
            reply = self._attempt(session, outgoing.to, data, reused=False)
        session.sent += 1
        if session.sent >= self.settings.smtp_messages_per_connection:
            self._drop(session, polite=True)
        return SendResult(self.name, _message_id(outgoing, reply))

    def _attempt(self, session: _Session, to: str, data: bytes, *, reused: bool) -> bytes:
        try:
            return self._transaction(session, to, data)
        except _ReplyError as exc:
            if reused and exc.step == "MAIL FROM" and exc.code == 421:
                self._drop(session)
                raise _Stale from None
            self._after_refusal(session, exc.code)
            raise
        except (smtplib.SMTPServerDisconnected, OSError):
            self._drop(session)
            if reused:
                raise _Stale from None
            raise
        except BaseException:
            self._drop(session)
            raise

    def _transaction(self, session: _Session, to: str, data: bytes) -> bytes:
        smtp = session.smtp
        code, text = smtp.mail(self.settings.email_sender)
        if code != 250:
            raise _ReplyError("MAIL FROM", code, _scrub(text, to))
        code, text = smtp.rcpt(to)
        if code not in (250, 251):
            raise _ReplyError("RCPT TO", code, _scrub(text, to))
        try:
            code, text = smtp.data(data)
        except smtplib.SMTPDataError as exc:  # DATA itself refused: the message never left
            raise _ReplyError("DATA", exc.smtp_code, _scrub(_as_bytes(exc.smtp_error), to)) from None
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            raise _Lost(type(exc).__name__) from None
        if code != 250:
            raise _ReplyError("end of DATA", code, _scrub(text, to))
        return text

    # Connections -----------------------------------------------------------------------------
    def _session(self) -> tuple[_Session, bool]:
        session: _Session | None = getattr(self._local, "session", None)
        if session is not None:
            return session, True
        session = _Session(self._connect())
        self._local.session = session
        with self._lock:
            self._sessions[id(session)] = session
        return session, False

    def _connect(self) -> smtplib.SMTP:
        t = self.target
        timeout = self.settings.provider_connect_timeout
        # Given a host, the constructors connect and check the 220 greeting (SMTPConnectError if not).
        smtp: smtplib.SMTP
        if t.security == "tls":
            smtp = smtplib.SMTP_SSL(t.host, t.port, timeout=timeout, context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(t.host, t.port, timeout=timeout)
        try:
            if smtp.sock is not None:
                smtp.sock.settimeout(self.settings.provider_read_timeout)
            smtp.ehlo()
            if t.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if t.username is not None and t.password is not None:
                smtp.login(t.username, t.password)
        except BaseException:
            _close_quietly(smtp, polite=False)
            raise
        return smtp

    def _after_refusal(self, session: _Session, code: int) -> None:
        if code == 421:  # the server closes the session after a 421
            self._drop(session)
            return
        try:
            session.smtp.rset()
        except (smtplib.SMTPException, OSError):
            self._drop(session)

    def _drop(self, session: _Session, *, polite: bool = False) -> None:
        if getattr(self._local, "session", None) is session:
            self._local.session = None
        with self._lock:
            self._sessions.pop(id(session), None)
        _close_quietly(session.smtp, polite=polite)

    def close(self) -> None:
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            _close_quietly(session.smtp, polite=True)
        self._local = threading.local()

    # Errors ----------------------------------------------------------------------------------
    def translate(self, exc: Exception) -> ProviderError:
        return translate(exc)


def translate(exc: BaseException) -> ProviderError:
    """Map what smtplib and the server said onto our vocabulary. No address or server text unredacted."""
    if isinstance(exc, _Lost):
        return AmbiguousOutcome(f"smtp: connection lost after the message was sent ({exc})", code="DataLost")
    if isinstance(exc, _ReplyError):
        return _from_reply(exc.step, exc.code, exc.text)
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        # Our password, not the recipient: retried, so fixing the setting lets the campaign go on.
        return TransientError(f"smtp: login refused ({exc.smtp_code})", code=str(exc.smtp_code))
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return TransientError("smtp: the server does not offer STARTTLS or AUTH as configured", code="NotSupported")
    if isinstance(exc, smtplib.SMTPResponseException):
        return _setup_refused(exc.smtp_code, _as_bytes(exc.smtp_error))
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return TransientError(f"smtp: TLS failed ({type(exc).__name__})", code="TLS")
    if isinstance(exc, TimeoutError):
        return TransientError("smtp: timed out before sending", code="Timeout")
    if isinstance(exc, smtplib.SMTPException | OSError):
        return TransientError(f"smtp: could not talk to the server ({type(exc).__name__})", code=type(exc).__name__)
    return TransientError(f"smtp: {type(exc).__name__}", code=type(exc).__name__)


def _enhanced(text: bytes) -> str:
    """The enhanced status code (RFC 3463) at the start of a reply, or ""; the rest of the reply is the
    server's free text, which may quote the recipient or the message (a receipt URL), and is never kept."""
    found = _ENHANCED.match(text)
    return f" {found.group(0).decode('ascii')}" if found else ""


def _from_reply(step: str, code: int, text: bytes) -> ProviderError:
    enhanced = _ENHANCED.match(text)
    message = f"smtp: {step} answered {code}{_enhanced(text)}"
    if 500 <= code < 600:
        return PermanentError(message, code=str(code))
    if code in THROTTLE_CODES or (enhanced is not None and enhanced.group(2) == b"7" and code >= 400):
        return Throttled(message, code=str(code))
    return TransientError(message, code=str(code))


def _setup_refused(code: int, text: bytes) -> ProviderError:
    # Greeting, EHLO, STARTTLS, AUTH: about our server or settings, never about the recipient. Retried, so
    # an operator who fixes the server lets the campaign go on instead of failing everyone for good.
    cls = Throttled if code == 421 else TransientError
    return cls(f"smtp: the server refused the session ({code}{_enhanced(text)})", code=str(code))


def _scrub(text: bytes, to: str) -> bytes:
    """Servers often quote the recipient in a refusal; the audit trail must not keep it."""
    local = to.rpartition("@")[0].encode("utf-8", "replace")
    return text.replace(local, b"***") if local else text


def _message_id(outgoing: OutgoingEmail, reply: bytes) -> str:
    """The Message-ID (bounces quote it), or the server's queue id if the message somehow has none."""
    content = outgoing.content
    header = content.get("Message-ID") if isinstance(content, EmailMessage) else _raw_message_id(content)
    if header:
        return str(header).strip().strip("<>")
    found = _QUEUE_ID.search(reply)
    return found.group(1).decode() if found else ""


def _raw_message_id(raw: bytes) -> str | None:
    """The first Message-ID header of the header block, unfolded: no parse of the whole message."""
    blank = _BLANK_LINE.search(raw)
    found = _MESSAGE_ID.search(raw, 0, blank.start() if blank else len(raw))
    if found is None:
        return None
    return _LINE_BREAK.sub(b"", found.group(1)).decode("ascii", "replace")


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "replace")


def _close_quietly(smtp: smtplib.SMTP, *, polite: bool) -> None:
    try:
        if polite and smtp.sock is not None:
            smtp.quit()
        else:
            smtp.close()
    except (smtplib.SMTPException, OSError):
        smtp.close()
