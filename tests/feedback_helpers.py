"""Building provider events from the fixture files, and a campaign sent through SES on moto."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3

from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.ledger.store import Delivery
from dispatcher.runtime import Runtime
from dispatcher.sending.delivery import deliver

from .helpers import write_campaign

EVENTS = Path(__file__).parent / "data" / "events"


def event_json(name: str, delivery: Delivery, *, at: datetime | None = None, message_id: str | None = None) -> str:
    at = at or datetime.now(UTC)
    text = (EVENTS / f"{name}.json").read_text(encoding="utf-8")
    for key, value in {
        "{recipient}": delivery.contact,
        "{message_id}": message_id or delivery.provider_message_id or "",
        "{reference}": f"{delivery.id}{'_' if name.startswith('ses') else '.'}{delivery.attempts}",
        "{campaign}": delivery.campaign_id,
        "{at}": at.isoformat().replace("+00:00", "Z"),
        "{sent_at}": (at - timedelta(seconds=5)).isoformat().replace("+00:00", "Z"),
        "{at_ms}": str(int(at.timestamp() * 1000)),
    }.items():
        text = text.replace(key, value)
    json.loads(text)
    return text


def sns_envelope(record: str, topic: str = "arn:aws:sns:ap-northeast-1:123456789012:ses-events") -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "00000000-0000-0000-0000-000000000001",
            "TopicArn": topic,
            "Message": record,
            "Timestamp": datetime.now(UTC).isoformat(),
            "SignatureVersion": "1",
            "Signature": "",
            "SigningCertURL": "",
            "UnsubscribeURL": "",
        }
    )


def ses_runtime(monkeypatch) -> Runtime:
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    boto3.client("sesv2").create_email_identity(EmailIdentity="giftpad.jp")
    return Runtime(load_settings())


def send_campaign(rt: Runtime, tmp_path: Path, rows: list[dict], campaign_id: str = "fb") -> list[Delivery]:
    """Enqueue ``rows`` and deliver each once in-process; returns the deliveries as the ledger has them."""
    campaign = write_campaign(tmp_path, campaign_id)
    result = enqueue_campaign(campaign, rows, settings=rt.settings, ledger=rt.ledger, dispatch=lambda ids: None)
    assert result.rejected == 0, result.rejects
    ids = rt.ledger.in_status(campaign_id, list(Status))
    for delivery_id in ids:
        deliver(rt, delivery_id)
    return [d for d in (rt.ledger.get(i) for i in ids) if d is not None]
