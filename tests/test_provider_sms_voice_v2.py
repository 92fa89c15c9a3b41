"""The ``sms-voice-v2`` provider (AWS End User Messaging SMS).

No local emulator implements ``pinpoint-sms-voice-v2`` (moto answers 500), so these tests use botocore's
``Stubber``: every request is validated against the real service model, and nothing goes on the network
(the endpoint points at a closed loopback port in case a call ever slipped past the stub).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from botocore.stub import Stubber

from dispatcher.core import clock
from dispatcher.core.errors import PermanentError, ProviderError, Throttled, TransientError
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Channel
from dispatcher.providers import build
from dispatcher.providers.base import OutgoingSms
from dispatcher.providers.sms_voice_v2 import TTL_MAX, SmsVoiceV2

from .conftest import AWS_ENV
from .services import free_port

TEXT = "【regionPAY補償】ポイント受取URL https://receive.example.jp/r/tok123 期限5/31 問合せ0120-479-249"
NUMBER = "+819012345678"


@pytest.fixture
def aws_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def provider(aws_offline: None, monkeypatch: pytest.MonkeyPatch) -> SmsVoiceV2:
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sms-voice-v2")
    monkeypatch.setenv("DISPATCHER_SMS_ORIGINATION_NUMBER", "+15555550100")
    monkeypatch.setenv("DISPATCHER_SMS_SENDER_ID", "REGIONPAY")
    monkeypatch.setenv("DISPATCHER_SMS_CONFIGURATION_SET", "regionpay-sms")
    monkeypatch.setenv("DISPATCHER_SMS_MAX_PRICE", "0.15")
    built = build(Channel.SMS, load_settings())
    assert isinstance(built, SmsVoiceV2)
    return built


@pytest.fixture
def stub(provider: SmsVoiceV2) -> Iterator[Stubber]:
    with Stubber(provider.client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def sms(expires_in: timedelta, reference: str = "42.1") -> OutgoingSms:
    return OutgoingSms(reference, "regionpay-2023-app", NUMBER, TEXT, 2, clock.now() + expires_in)


def expected(ttl: int, **changes: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "DestinationPhoneNumber": NUMBER,
        "OriginationIdentity": "+15555550100",
        "MessageBody": TEXT,
        "MessageType": "TRANSACTIONAL",
        "ConfigurationSetName": "regionpay-sms",
        "MaxPrice": "0.15",
        "TimeToLive": ttl,
        "Context": {"delivery": "42.1"},
    }
    params.update(changes)
    return params


def test_sends_a_transactional_message_that_lives_until_the_deadline(provider: SmsVoiceV2, stub: Stubber) -> None:
    # Given a deadline two hours (and a half second of slack for the test itself) away
    stub.add_response("send_text_message", {"MessageId": "mid-0001"}, expected(7200))
    # When sent, Then the request matches the service model and these exact parameters
    result = provider.send(sms(timedelta(hours=2, seconds=0.5)))
    assert (result.provider, result.message_id) == ("sms-voice-v2", "mid-0001")


def test_context_carries_only_the_delivery_reference(provider: SmsVoiceV2, stub: Stubber) -> None:
    request = provider.request(sms(timedelta(hours=1)))
    assert request["Context"] == {"delivery": "42.1"}
    flat = repr(request["Context"])
    assert "receive.example.jp" not in flat and "9012345678" not in flat and "regionpay" not in flat


def test_time_to_live_is_capped_at_the_api_maximum(provider: SmsVoiceV2, stub: Stubber) -> None:
    stub.add_response("send_text_message", {"MessageId": "mid-0002"}, expected(TTL_MAX))
    provider.send(sms(timedelta(days=40)))


def test_a_past_deadline_is_permanent_and_sends_nothing(provider: SmsVoiceV2, stub: Stubber) -> None:
    for left in (timedelta(seconds=-1), timedelta(seconds=3)):  # under the API's 5 s minimum too
        with pytest.raises(PermanentError) as info:
            provider.send(sms(left))
        assert info.value.code == "DeadlinePassed"


def test_sender_id_is_used_when_there_is_no_origination_number(aws_offline: None, monkeypatch) -> None:
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sms-voice-v2")
    monkeypatch.setenv("DISPATCHER_SMS_SENDER_ID", "REGIONPAY")
    provider = build(Channel.SMS, load_settings())
    assert isinstance(provider, SmsVoiceV2)
    params = {
        "DestinationPhoneNumber": NUMBER,
        "OriginationIdentity": "REGIONPAY",
        "MessageBody": TEXT,
        "MessageType": "TRANSACTIONAL",
        "TimeToLive": 600,
        "Context": {"delivery": "42.1"},
    }
    with Stubber(provider.client) as stubber:
        stubber.add_response("send_text_message", {"MessageId": "mid-0003"}, params)
        provider.send(sms(timedelta(minutes=10, seconds=0.5)))
        stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("ThrottlingException", 400, Throttled),
        ("ValidationException", 400, PermanentError),
        ("ConflictException", 400, PermanentError),  # e.g. the number opted out
        ("ServiceQuotaExceededException", 402, TransientError),  # spend limit: an operator lifts it
        ("InternalServerException", 500, TransientError),
    ],
)
def test_service_errors_map_to_our_vocabulary(
    provider: SmsVoiceV2, stub: Stubber, code: str, status: int, error: type[ProviderError]
) -> None:
    stub.add_client_error(
        "send_text_message",
        service_error_code=code,
        http_status_code=status,
        service_message=f"refused {NUMBER}",
        expected_params=expected(3600),
    )
    with pytest.raises(error) as info:
        provider.send(sms(timedelta(hours=1, seconds=0.5)))
    assert type(info.value) is error
    assert info.value.code == code
    assert "9012345678" not in str(info.value)


def test_the_client_never_retries_by_itself(provider: SmsVoiceV2) -> None:
    assert provider.client.meta.config.retries["total_max_attempts"] == 1
    assert provider.client.meta.service_model.service_name == "pinpoint-sms-voice-v2"
