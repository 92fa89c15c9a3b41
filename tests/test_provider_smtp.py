"""The ``smtp`` provider against a real SMTP server (aiosmtpd) on a loopback port."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import ipaddress
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from dispatcher.core import clock
from dispatcher.core.errors import (
    AmbiguousOutcome,
    ConfigError,
    PermanentError,
    ProviderError,
    Throttled,
    TransientError,
)
from dispatcher.core.settings import Settings, load_settings
from dispatcher.core.states import Channel
from dispatcher.providers import build
from dispatcher.providers.base import OutgoingEmail
from dispatcher.providers.smtp import SmtpEmail, SmtpTarget, _message_id
from dispatcher.sending.mime import DELIVERY_HEADER, build_message, build_raw
from dispatcher.sending.render import Email

from .services import free_port

SUBJECT = "【regionPAY】補償ポイント受取サイトのご案内"
LEGACY = "taro..yamada.@docomo.ne.jp"


class Mailbox:
    """An aiosmtpd handler that keeps what it receives and can be told to misbehave."""

    def __init__(self) -> None:
        self.messages: list[tuple[tuple[str, int], str, list[str], bytes]] = []
        self.quits = 0
        self.rcpt_reply: str | None = None
        self.data_reply: str | None = None
        self.drop_after_data = False
        self.close_after_reply = False
        self.data_delay = 0.0

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply.replace("{to}", address)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((session.peer, envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.drop_after_data:
            server.transport.abort()
        if self.close_after_reply:
            # An idle-timeout close, as MTAs do to pooled connections.
            asyncio.get_running_loop().call_later(0.05, server.transport.close)
        return self.data_reply or "250 2.0.0 Ok: queued as 4QX7c12345"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 Bye"

    def sessions(self) -> list[int]:
        """Messages per SMTP session, in order of first message."""
        return list(Counter(peer for peer, *_ in self.messages).values())


class SmtpServer:
    def __init__(self, **kwargs: Any) -> None:
        self.mailbox = Mailbox()
        self.port = free_port()
        self.controller = Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, server_hostname="mx.test", **kwargs
        )

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer() as running:
        yield running


def smtp_settings(url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"provider_connect_timeout": 2, "provider_read_timeout": 2, **overrides}
    return load_settings(email_provider="smtp", smtp_url=url, **values)


def outgoing(to: str, ref: str = "7.1") -> OutgoingEmail:
    settings = load_settings()
    text = f"受取URL: https://receive.example.jp/r/{ref}\n期限: 2023年5月31日\n"
    message = build_message(
        Email(SUBJECT, text, None),
        to=to,
        sender=settings.email_sender,
        sender_name="地域クーポン regionPAY 補償事務局",
        delivery_ref=ref,
        sent_at=clock.now(),
    )
    return OutgoingEmail(ref, "camp", to, message)


def test_sends_one_mime_message_per_person_with_a_japanese_subject(server: SmtpServer) -> None:
    # Given the smtp route to a real SMTP server
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    people = [LEGACY, "hanako@ezweb.ne.jp", "sho@example.jp"]
    sent = [outgoing(to, f"{i}.1") for i, to in enumerate(people, start=1)]
    # When each person is sent their message
    results = [provider.send(o) for o in sent]
    provider.close()
    # Then the server got exactly one message per person, the bytes SES would get, from the sender
    assert [rcpts for _, _, rcpts, _ in server.mailbox.messages] == [[p] for p in people]
    for (_, mail_from, _, content), out, result in zip(server.mailbox.messages, sent, results, strict=True):
        assert mail_from == "regionpay_compensation_ml@giftpad.jp"
        assert content == out.message.as_bytes()
        parsed = email.message_from_bytes(content, policy=policy.default)
        assert parsed["Subject"] == SUBJECT
        assert parsed["From"].addresses[0].display_name == "地域クーポン regionPAY 補償事務局"
        body = parsed.get_body(("plain",))
        assert body is not None and f"https://receive.example.jp/r/{out.reference}" in body.get_content()
        assert parsed[DELIVERY_HEADER] == out.reference
        # And the provider message id is the Message-ID that bounces will quote
        assert result.provider == "smtp" and f"<{result.message_id}>" == parsed["Message-ID"]


def test_sends_the_raw_bytes_as_built(server: SmtpServer) -> None:
    # Given messages built as bytes (build_raw), text-only and with an HTML part
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    settings = load_settings()
    sent = []
    for i, html in enumerate([None, "<p>受取URL</p>"], start=1):
        raw = build_raw(
            Email(SUBJECT, f"受取URL: https://receive.example.jp/r/{i}\n", html),
            to=LEGACY,
            sender=settings.email_sender,
            sender_name="補償事務局",
            delivery_ref=f"{i}.1",
            sent_at=clock.now(),
        )
        sent.append(OutgoingEmail(f"{i}.1", "camp", LEGACY, raw))
    # When they are sent
    results = [provider.send(o) for o in sent]
    provider.close()
    # Then the server got exactly those bytes, and the result carries their Message-ID
    assert [content for *_, content in server.mailbox.messages] == [o.content for o in sent]
    for out, result in zip(sent, results, strict=True):
        parsed = email.message_from_bytes(out.raw, policy=policy.default)
        assert f"<{result.message_id}>" == parsed["Message-ID"]
        assert parsed[DELIVERY_HEADER] == out.reference


@pytest.mark.parametrize("ref", ["7.1", "123456789.12", "1" * 20 + ".12", "1" * 40 + ".1", "x" * 120])
def test_the_message_id_read_from_the_bytes_is_the_parsed_one(ref: str) -> None:
    # Whatever its length (a long Message-ID goes to a line of its own), the cheap scan of the raw header
    # block finds what parsing the whole message finds
    settings = load_settings()
    fields: dict[str, Any] = {
        "to": LEGACY,
        "sender": settings.email_sender,
        "sender_name": "補償事務局",
        "delivery_ref": ref,
        "sent_at": clock.now(),
    }
    for html in (None, "<p>x</p>"):
        raw = build_raw(Email(SUBJECT, "Message-ID: <not-this@body>\n", html), **fields)
        message = build_message(Email(SUBJECT, "Message-ID: <not-this@body>\n", html), **fields)
        from_raw = OutgoingEmail(ref, "camp", LEGACY, raw)
        expected = str(from_raw.message["Message-ID"]).strip().strip("<>")
        assert _message_id(from_raw, b"250 queued as Q1") == expected
        assert expected.endswith(f".{ref}@giftpad.jp")
        assert _message_id(OutgoingEmail(ref, "camp", LEGACY, message), b"") == str(message["Message-ID"]).strip("<>")


def test_without_a_message_id_the_queue_id_is_the_result() -> None:
    raw = b"From: a@example.jp\r\nSubject: x\r\n\r\nMessage-ID: <in-the-body@example.jp>\r\n"
    assert _message_id(OutgoingEmail("7.1", "camp", "b@example.jp", raw), b"250 2.0.0 Ok: queued as 4QX7c") == "4QX7c"


@pytest.mark.parametrize(
    "raw",
    [
        b"From: a@example.jp\r\nmessage-id:\r\n <folded@example.jp>\r\nSubject: x\r\n\r\nbody\r\n",
        b"From: a@b\r\nMessage-ID: <a.b@\r\n example.jp>\r\n\r\nx",
        b"Message-ID:   <x@y> (comment)  \r\nMessage-ID: <second@y>\r\n\r\n",
        b"Subject: a\nMessage-ID: <lf-only@y>\n\nbody",
    ],
)
def test_the_message_id_scan_agrees_with_the_parser_on_odd_headers(raw: bytes) -> None:
    parsed = email.message_from_bytes(raw, policy=policy.SMTP)["Message-ID"]
    assert _message_id(OutgoingEmail("7.1", "camp", "b@example.jp", raw), b"") == str(parsed).strip().strip("<>")


def test_reuses_one_connection_and_recycles_it_after_n_messages(server: SmtpServer) -> None:
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}", smtp_messages_per_connection=3))
    for i in range(7):
        provider.send(outgoing(f"user{i}@example.jp", f"{i}.1"))
    # Three messages per session, and each full session was ended with QUIT
    assert server.mailbox.sessions() == [3, 3, 1]
    assert server.mailbox.quits == 2
    provider.close()
    assert server.mailbox.quits == 3


def test_each_worker_thread_has_its_own_connection(server: SmtpServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: provider.send(outgoing(f"u{i}@example.jp", f"{i}.1")), range(40)))
    provider.close()
    assert len(server.mailbox.messages) == 40
    assert 1 <= len(server.mailbox.sessions()) <= 4


def test_a_connection_the_server_closed_while_idle_is_replaced_without_losing_the_message(
    server: SmtpServer,
) -> None:
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    server.mailbox.close_after_reply = True
    provider.send(outgoing("a@example.jp", "1.1"))
    time.sleep(0.3)  # the server closes the connection 50 ms after its answer
    provider.send(outgoing("b@example.jp", "2.1"))
    provider.close()
    assert [rcpts for _, _, rcpts, _ in server.mailbox.messages] == [["a@example.jp"], ["b@example.jp"]]
    assert server.mailbox.sessions() == [1, 1]


@pytest.mark.parametrize(
    ("where", "reply", "error", "code"),
    [
        ("rcpt", "421 4.7.0 Too many messages, try again later", Throttled, "421"),
        ("rcpt", "451 4.7.1 Rate limited", Throttled, "451"),
        ("rcpt", "452 4.5.3 Too many recipients", Throttled, "452"),
        ("rcpt", "450 4.2.0 <{to}>: Recipient address rejected: greylisted", TransientError, "450"),
        ("rcpt", "550 5.1.1 <{to}>: Recipient address rejected: User unknown", PermanentError, "550"),
        ("data", "554 5.7.1 Message refused", PermanentError, "554"),
    ],
)
def test_reply_codes_map_to_retry_or_fail(
    server: SmtpServer,
    where: str,
    reply: str,
    error: type[ProviderError],
    code: str,
) -> None:
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    setattr(server.mailbox, f"{where}_reply", reply)
    with pytest.raises(error) as info:
        provider.send(outgoing(LEGACY))
    assert type(info.value) is error
    assert info.value.code == code
    # The server quoted the address; the error kept for the audit trail does not
    assert "taro..yamada." not in str(info.value)
    assert "receive.example.jp" not in str(info.value)
    provider.close()


def test_a_refused_recipient_leaves_the_connection_usable_for_the_next(server: SmtpServer) -> None:
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    server.mailbox.rcpt_reply = "550 5.1.1 User unknown"
    with pytest.raises(PermanentError):
        provider.send(outgoing("gone@example.jp", "1.1"))
    server.mailbox.rcpt_reply = None
    provider.send(outgoing("here@example.jp", "2.1"))
    provider.close()
    assert [rcpts for _, _, rcpts, _ in server.mailbox.messages] == [["here@example.jp"]]
    assert server.mailbox.quits == 1  # one session throughout


def test_connection_dropped_after_data_is_ambiguous(server: SmtpServer) -> None:
    # The server has the whole message, then the connection drops before its answer
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}"))
    server.mailbox.drop_after_data = True
    with pytest.raises(AmbiguousOutcome):
        provider.send(outgoing(LEGACY))
    # It really may have been sent: that is why it must not be retried by itself
    assert len(server.mailbox.messages) == 1
    server.mailbox.drop_after_data = False
    provider.send(outgoing("next@example.jp", "8.1"))  # and the next message gets a fresh connection
    assert len(server.mailbox.sessions()) == 2
    provider.close()


def test_no_answer_after_data_within_the_read_timeout_is_ambiguous(server: SmtpServer) -> None:
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{server.port}", provider_read_timeout=0.3))
    server.mailbox.data_delay = 1.0
    with pytest.raises(AmbiguousOutcome):
        provider.send(outgoing("slow@example.jp"))
    provider.close()


def test_refused_connection_is_transient_and_names_no_one() -> None:
    provider = build(Channel.EMAIL, smtp_settings(f"smtp://127.0.0.1:{free_port()}"))
    with pytest.raises(TransientError) as info:
        provider.send(outgoing(LEGACY))
    assert type(info.value) is TransientError
    assert "taro" not in str(info.value) and "receive.example.jp" not in str(info.value)


# TLS and login ---------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"mailer", b"p@ss:w/rd")
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    cert, key = self_signed(tmp_path)
    # A private CA is trusted the way an operator would do it: SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_starttls_and_login(tls: ssl.SSLContext) -> None:
    with SmtpServer(tls_context=tls, require_starttls=True, auth_required=True, authenticator=check_login) as srv:
        provider = build(Channel.EMAIL, smtp_settings(f"smtp+starttls://mailer:p%40ss%3Aw%2Frd@127.0.0.1:{srv.port}"))
        provider.send(outgoing("a@example.jp"))
        provider.close()
        assert len(srv.mailbox.messages) == 1


def test_wrong_password_is_transient_and_does_not_show_the_password(tls: ssl.SSLContext) -> None:
    with SmtpServer(tls_context=tls, require_starttls=True, auth_required=True, authenticator=check_login) as srv:
        provider = build(Channel.EMAIL, smtp_settings(f"smtp+starttls://mailer:wrong-secret@127.0.0.1:{srv.port}"))
        with pytest.raises(TransientError) as info:
            provider.send(outgoing("a@example.jp"))
        assert info.value.code == "535"
        assert "wrong-secret" not in str(info.value)
        assert srv.mailbox.messages == []


def test_implicit_tls(tls: ssl.SSLContext) -> None:
    with SmtpServer(ssl_context=tls) as srv:
        provider = build(Channel.EMAIL, smtp_settings(f"smtps://127.0.0.1:{srv.port}"))
        provider.send(outgoing("a@example.jp"))
        provider.close()
        assert len(srv.mailbox.messages) == 1


def test_an_untrusted_certificate_is_refused_before_anything_is_sent(
    tls: ssl.SSLContext,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    (tmp_path / "other").mkdir()
    other, _ = self_signed(tmp_path / "other")
    monkeypatch.setenv("SSL_CERT_FILE", str(other))
    with SmtpServer(tls_context=tls, require_starttls=True) as srv:
        provider = build(Channel.EMAIL, smtp_settings(f"smtp+starttls://127.0.0.1:{srv.port}"))
        with pytest.raises(TransientError) as info:
            provider.send(outgoing("a@example.jp"))
        assert info.value.code == "TLS"
        assert srv.mailbox.messages == []


# DISPATCHER_SMTP_URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.jp", SmtpTarget("plain", "mail.example.jp", 25)),
        ("smtp://127.0.0.1:2525", SmtpTarget("plain", "127.0.0.1", 2525)),
        ("smtp+starttls://u%40x:p%3Aw@mail.example.jp", SmtpTarget("starttls", "mail.example.jp", 587, "u@x", "p:w")),
        ("SMTPS://user:pw@[::1]:4650", SmtpTarget("tls", "::1", 4650, "user", "pw")),
    ],
)
def test_smtp_url_parsing(url: str, expected: SmtpTarget) -> None:
    assert SmtpTarget.from_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "mail.example.jp:25",
        "http://mail.example.jp",
        "smtp://",
        "smtp://host:99999",
        "smtp://user:topsecret@mail.example.jp",
        "smtps://user@mail.example.jp",
        "smtp://host/path",
        "smtp+starttls://user:topsecret@host:port",
    ],
)
def test_a_malformed_smtp_url_is_a_config_error_naming_the_setting(url: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        SmtpEmail(load_settings(smtp_url=url))
    assert "DISPATCHER_SMTP_URL" in str(info.value)
    assert "topsecret" not in str(info.value)


def test_the_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "smtp")
    monkeypatch.setenv("DISPATCHER_SMTP_URL", "smtp+starttls://mailer:s3cr3t-pw@mx.example.jp:2587")
    provider = build(Channel.EMAIL, load_settings())
    assert isinstance(provider, SmtpEmail)
    assert provider.target == SmtpTarget("starttls", "mx.example.jp", 2587, "mailer", "s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(provider.target)
