"""Verifying Amazon SNS HTTP(S) messages (SubscriptionConfirmation, Notification) by their signature.

The signing certificate must come from an ``https://sns.<region>.amazonaws.com/…pem`` URL. It is fetched
once and cached, or read from ``DISPATCHER_SNS_CERTIFICATE_DIR`` on closed networks (file named as the
URL's last path segment). Signatures are checked with ``cryptography`` (SignatureVersion 1: SHA1, 2: SHA256).
"""

from __future__ import annotations

import base64
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_CERT_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
MAX_AGE = timedelta(hours=24)

_SIGNED_FIELDS = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"],
    "UnsubscribeConfirmation": ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"],
}

_cache: dict[str, x509.Certificate] = {}
_lock = threading.Lock()


class SnsVerificationError(ValueError):
    pass


def string_to_sign(message: dict[str, Any]) -> bytes:
    kind = message.get("Type")
    if kind not in _SIGNED_FIELDS:
        raise SnsVerificationError(f"unknown SNS message type {kind!r}")
    parts = []
    for name in _SIGNED_FIELDS[kind]:
        if name == "Subject" and message.get("Subject") is None:
            continue
        if name not in message:
            raise SnsVerificationError(f"SNS message lacks {name}")
        parts.append(f"{name}\n{message[name]}\n")
    return "".join(parts).encode("utf-8")


def check_certificate_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not _CERT_HOST.match(parts.hostname or "") or not parts.path.endswith(".pem"):
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
            raise SnsVerificationError(f"certificate {path.name} not in DISPATCHER_SNS_CERTIFICATE_DIR")
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


def verify(message: dict[str, Any], *, certificate_dir: Path | None = None, now: datetime | None = None,
           topics: frozenset[str] | None = None) -> None:
    """Raise :class:`SnsVerificationError` unless the message is genuine, fresh and from an allowed topic."""
    version = str(message.get("SignatureVersion", ""))
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise SnsVerificationError("unsupported or missing SignatureVersion")
    try:
        signature = base64.b64decode(message.get("Signature", ""), validate=True)
    except ValueError:
        raise SnsVerificationError("Signature is not base64") from None
    if not signature:
        raise SnsVerificationError("unsigned message")
    cert = certificate(str(message.get("SigningCertURL", "")), certificate_dir)
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsVerificationError("certificate key is not RSA")
    try:
        key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise SnsVerificationError("signature does not match") from None
    try:
        sent = datetime.fromisoformat(str(message["Timestamp"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        raise SnsVerificationError("bad Timestamp") from None
    if abs((now or datetime.now(UTC)) - sent) > MAX_AGE:
        raise SnsVerificationError("message is too old (replay?)")
    if topics and message.get("TopicArn") not in topics:
        raise SnsVerificationError("topic not allowed")
