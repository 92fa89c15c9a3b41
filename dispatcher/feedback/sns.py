"""Verifying Amazon SNS HTTP(S) messages (SubscriptionConfirmation, Notification) by their signature.

The checks run cheapest and least trusting first, so a forged message costs us no certificate fetch:
the message type, the topic against the allow-list (a signature alone proves only that *some* AWS
account sent it), the replay window, the SignatureVersion, the certificate URL (``https``,
``sns.<region>.amazonaws.com[.cn]``, ``.pem``), and only then the certificate (fetched once and cached,
or read from ``DISPATCHER_SNS_CERTIFICATE_DIR`` on closed networks, named as the URL's last path segment)
and the signature (SignatureVersion 1: SHA1, 2: SHA256, as AWS documents).

Refusal messages never quote a value from the message: they end up in log lines, and the sender is
whoever reached the route.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_CERT_HOST = re.compile(r"^sns\.[a-z0-9-]{1,40}\.amazonaws\.com(\.cn)?$")
_CERT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}\.pem$")
#: SNS retries an HTTPS delivery for minutes (the default policy: under a minute); an hour is generous,
#: and anything older is a replay. Duplicates inside the window are no-ops (events are deduplicated).
MAX_AGE = timedelta(hours=1)
#: Clocks differ a little; a message from further in the future was made up.
MAX_AHEAD = timedelta(minutes=5)

_SIGNED_FIELDS = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"],
    "UnsubscribeConfirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"],
}
_ALGORITHMS: dict[str, type[hashes.SHA1] | type[hashes.SHA256]] = {"1": hashes.SHA1, "2": hashes.SHA256}

_cache: dict[str, x509.Certificate] = {}
_lock = threading.Lock()


class SnsVerificationError(ValueError):
    pass


def string_to_sign(message: dict[str, Any]) -> bytes:
    kind = message.get("Type")
    if not isinstance(kind, str) or kind not in _SIGNED_FIELDS:
        raise SnsVerificationError("unknown SNS message type")
    parts = []
    for name in _SIGNED_FIELDS[kind]:
        if name == "Subject" and message.get("Subject") is None:
            continue
        if name not in message:
            raise SnsVerificationError(f"SNS message lacks {name}")
        parts.append(f"{name}\n{message[name]}\n")
    return "".join(parts).encode("utf-8")


def check_certificate_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise SnsVerificationError("SigningCertURL is not a URL") from None
    name = parts.path.rpartition("/")[2]
    if parts.scheme != "https" or not _CERT_HOST.match(host) or not _CERT_NAME.match(name) or parts.port:
        raise SnsVerificationError("SigningCertURL is not an https sns.<region>.amazonaws.com certificate")


def certificate(url: str, directory: Path | None) -> x509.Certificate:
    check_certificate_url(url)
    with _lock:
        cached = _cache.get(url)
    if cached is not None:
        return cached
    if directory is not None:
        path = directory / Path(urlsplit(url).path).name
        if not path.is_file():
            raise SnsVerificationError("certificate not in DISPATCHER_SNS_CERTIFICATE_DIR")
        pem = path.read_bytes()
    else:
        import httpx

        response = httpx.get(url, timeout=10, follow_redirects=False)
        response.raise_for_status()
        pem = response.content
    cert = x509.load_pem_x509_certificate(pem)
    with _lock:
        _cache[url] = cert
    return cert


def check_fresh(message: dict[str, Any], now: datetime | None = None) -> None:
    """Refuse a message whose Timestamp is outside the replay window."""
    stamp = message.get("Timestamp")
    if not isinstance(stamp, str) or len(stamp) > 40:
        raise SnsVerificationError("bad Timestamp")
    try:
        sent = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        raise SnsVerificationError("bad Timestamp") from None
    if sent.tzinfo is None:
        raise SnsVerificationError("bad Timestamp")
    age = (now or datetime.now(UTC)) - sent
    if age > MAX_AGE:
        raise SnsVerificationError("message is too old (replay?)")
    if age < -MAX_AHEAD:
        raise SnsVerificationError("message is from the future")


def verify(
    message: dict[str, Any],
    *,
    topics: Collection[str],
    certificate_dir: Path | None = None,
    now: datetime | None = None,
) -> None:
    """Raise :class:`SnsVerificationError` unless the message is genuine, fresh and from an allowed topic.

    ``topics`` must not be empty: with no allow-list nothing is accepted.
    """
    if not isinstance(message.get("Type"), str) or message["Type"] not in _SIGNED_FIELDS:
        raise SnsVerificationError("unknown SNS message type")
    topic = message.get("TopicArn")
    if not topics or not isinstance(topic, str) or topic not in topics:
        raise SnsVerificationError("topic not allowed")
    check_fresh(message, now)
    algorithm = _ALGORITHMS.get(str(message.get("SignatureVersion", "")))
    if algorithm is None:
        raise SnsVerificationError("unsupported or missing SignatureVersion")
    raw = message.get("Signature")
    try:
        signature = base64.b64decode(raw if isinstance(raw, str) else "", validate=True)
    except ValueError:
        raise SnsVerificationError("Signature is not base64") from None
    if not signature:
        raise SnsVerificationError("unsigned message")
    signed = string_to_sign(message)
    url = message.get("SigningCertURL")
    cert = certificate(url if isinstance(url, str) else "", certificate_dir)
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsVerificationError("certificate key is not RSA")
    try:
        key.verify(signature, signed, padding.PKCS1v15(), algorithm())
    except InvalidSignature:
        raise SnsVerificationError("signature does not match") from None
