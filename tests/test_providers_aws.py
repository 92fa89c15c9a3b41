"""SES and SNS providers against a moto server over HTTP: results and error translation."""

from __future__ import annotations

import email
from email import policy

import boto3
import pytest

from dispatcher.core import clock
from dispatcher.core.errors import PermanentError, TransientError
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel
from dispatcher.providers import build
from dispatcher.providers.base import OutgoingEmail, OutgoingSms
from dispatcher.sending.mime import build_message, build_raw
from dispatcher.sending.render import Email


def outgoing_email(to: str = "taro..yamada.@docomo.ne.jp") -> OutgoingEmail:
    settings = load_settings()
    message = build_message(
        Email("件名です", "本文 https://receive.example.jp/r/abc\n", None),
        to=to,
        sender=settings.email_sender,
        sender_name="補償事務局",
        delivery_ref="7.1",
        sent_at=clock.now(),
    )
    return OutgoingEmail("7.1", "camp", to, message)


def test_ses_refuses_an_unverified_sender_permanently(moto, monkeypatch) -> None:
    # Given SES with no verified identity
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    provider = build(Channel.EMAIL, load_settings())
    # When we send, Then the rejection is permanent and carries SES's code
    with pytest.raises(PermanentError) as info:
        provider.send(outgoing_email())
    assert info.value.code == "MessageRejected"
    assert moto.sent_emails() == []


def test_ses_sends_the_raw_message_from_the_configured_sender(moto, monkeypatch) -> None:
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    boto3.client("sesv2").create_email_identity(EmailIdentity="giftpad.jp")
    provider = build(Channel.EMAIL, load_settings())
    result = provider.send(outgoing_email())
    assert result.provider == "ses" and result.message_id
    [sent] = moto.sent_emails()
    assert sent["id"] == result.message_id
    assert sent["source"] == "regionpay_compensation_ml@giftpad.jp"
    parsed = email.message_from_string(sent["raw_data"], policy=policy.default)
    assert parsed["Subject"] == "件名です"
    assert parsed["To"] == "taro..yamada.@docomo.ne.jp"
    assert "https://receive.example.jp/r/abc" in parsed.get_body(("plain",)).get_content()


def test_ses_sends_the_raw_bytes_as_built(moto, monkeypatch) -> None:
    # Given a message built as bytes (build_raw), with an HTML part
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    boto3.client("sesv2").create_email_identity(EmailIdentity="giftpad.jp")
    settings = load_settings()
    raw = build_raw(
        Email("件名です", "本文 https://receive.example.jp/r/abc\n", "<p>本文</p>"),
        to="taro..yamada.@docomo.ne.jp",
        sender=settings.email_sender,
        sender_name="補償事務局",
        delivery_ref="7.1",
        sent_at=clock.now(),
    )
    # When SES sends it
    result = build(Channel.EMAIL, settings).send(OutgoingEmail("7.1", "camp", "taro..yamada.@docomo.ne.jp", raw))
    # Then SES got those very bytes
    [sent] = moto.sent_emails()
    assert sent["id"] == result.message_id
    assert sent["raw_data"].encode("ascii") == raw


def test_aws_clients_never_retry_by_themselves(moto, monkeypatch) -> None:
    # A dropped answer retried by botocore would send the message twice.
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    for channel in Channel:
        client = build(channel, load_settings()).client
        assert client.meta.config.retries["total_max_attempts"] == 1


def test_sns_publishes_transactional_sms(moto, monkeypatch) -> None:
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    provider = build(Channel.SMS, load_settings())
    text = "【regionPAY補償】受取URL https://receive.example.jp/r/xyz"
    result = provider.send(OutgoingSms("9.1", "camp", "+819012345678", text, 1, clock.now()))
    [sms] = moto.sent_sms()
    assert sms == {"message": text, "message_id": result.message_id, "phone_number": "+819012345678"}


def test_sns_refuses_a_malformed_number_permanently(moto, monkeypatch) -> None:
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    provider = build(Channel.SMS, load_settings())
    with pytest.raises(PermanentError):
        provider.send(OutgoingSms("9.1", "camp", "not-a-number", "テスト", 1, clock.now()))


def test_unreachable_endpoint_is_transient_not_ambiguous(moto, monkeypatch) -> None:
    # Nothing listens there: the request never left, so trying again is safe.
    from tests.services import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    monkeypatch.setenv("DISPATCHER_PROVIDER_CONNECT_TIMEOUT", "1")
    provider = build(Channel.EMAIL, load_settings())
    with pytest.raises(TransientError) as info:
        provider.send(outgoing_email())
    assert "receive.example.jp" not in str(info.value)
