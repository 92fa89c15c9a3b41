"""What SES and SNS share: client construction and the translation of botocore errors.

Clients never retry on their own (``total_max_attempts=1``): a dropped answer would make botocore send
the same message again, which is exactly the double send we exist to prevent. Retries are ours.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
)

from dispatcher.core.errors import (
    AmbiguousOutcome,
    ConfigError,
    PermanentError,
    ProviderError,
    Throttled,
    TransientError,
)
from dispatcher.core.privacy import safe_code
from dispatcher.core.settings import Settings

THROTTLING = {
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "Throttled",
    "LimitExceededException",
    "RequestLimitExceeded",
    "KMSThrottlingException",
    "SlowDown",
}
TRANSIENT = {
    "InternalFailure",
    "InternalError",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
}


def client(service: str, settings: Settings) -> Any:
    config = Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=settings.provider_connect_timeout,
        read_timeout=settings.provider_read_timeout,
        max_pool_connections=32,
    )
    try:
        return boto3.session.Session().client(service, config=config)
    except NoRegionError:
        raise ConfigError("AWS region is not set (AWS_DEFAULT_REGION or ~/.aws/config)") from None


def translate(provider: str, exc: Exception, permanent_codes: set[str]) -> ProviderError:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        # The Code only (never the Message, which may quote the request); refused when not a short token.
        code = safe_code(error.get("Code")) or "Unknown"
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{provider}: {code} (HTTP {status})"
        if code in THROTTLING or status == 429:
            return Throttled(text, code=code)
        if code in TRANSIENT or status >= 500:
            return TransientError(text, code=code)
        if code in permanent_codes or 400 <= status < 500:
            return PermanentError(text, code=code)
        return TransientError(text, code=code)
    if isinstance(exc, NoCredentialsError):
        return TransientError(f"{provider}: no AWS credentials", code="NoCredentials")
    # The request never left: safe to try again.
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return TransientError(f"{provider}: could not connect", code=type(exc).__name__)
    # Read timeouts, closed connections, truncated answers: the provider may have accepted it.
    if isinstance(exc, BotoCoreError):
        return AmbiguousOutcome(f"{provider}: answer lost ({type(exc).__name__})", code=type(exc).__name__)
    return AmbiguousOutcome(f"{provider}: {type(exc).__name__}", code=type(exc).__name__)
