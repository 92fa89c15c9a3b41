"""SNS messages signed by a key of our own, its certificate in DISPATCHER_SNS_CERTIFICATE_DIR (as on a
closed network), so tests can forge exactly what an attacker with their own AWS account could."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from dispatcher.feedback.sns import string_to_sign

ALLOWED_TOPIC = "arn:aws:sns:ap-northeast-1:123456789012:ses-events"
FOREIGN_TOPIC = "arn:aws:sns:ap-northeast-1:999999999999:ses-events"


@dataclass
class Signer:
    key: rsa.RSAPrivateKey
    cert_name: str

    def cert_url(self, host: str = "sns.ap-northeast-1.amazonaws.com", scheme: str = "https") -> str:
        return f"{scheme}://{host}/{self.cert_name}"

    def notification(
        self,
        record: str,
        *,
        topic: str = ALLOWED_TOPIC,
        at: datetime | None = None,
        version: str = "2",
        digest: str | None = None,
        cert_url: str | None = None,
        kind: str = "Notification",
    ) -> dict[str, Any]:
        """A Notification carrying ``record``, labelled ``version`` and signed with ``digest`` (by default
        the one the version names: 1 = SHA1, 2 = SHA256)."""
        message: dict[str, Any] = {
            "Type": kind,
            "MessageId": f"sns-{abs(hash((record, topic, at))) % 10**12}",
            "TopicArn": topic,
            "Message": record,
            "Timestamp": (at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
            "SignatureVersion": version,
            "SigningCertURL": cert_url or self.cert_url(),
            "UnsubscribeURL": "https://sns.ap-northeast-1.amazonaws.com/?Action=Unsubscribe",
        }
        algorithm = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256()}[
            digest or ("sha1" if version == "1" else "sha256")
        ]
        signature = self.key.sign(string_to_sign(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}


def make_signer(folder: Path) -> Signer:
    """A fresh RSA key and a self-signed certificate for it, written into ``folder``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    # A name never used before: verified certificates are cached by URL for the process.
    cert_name = f"SimpleNotificationService-{x509.random_serial_number():x}.pem"
    (folder / cert_name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Signer(key, cert_name)
