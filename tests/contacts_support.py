"""A real SMTP server (aiosmtpd on loopback) that refuses some addresses, and runtimes that send through it
(SMS to the outbox): for one-person resend, corrections and fallback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.runtime import Runtime

from .helpers import write_campaign
from .services import free_port


class RefusingMailbox:
    """Keeps every message it accepts (by recipient); answers 550 5.1.1 to the addresses in ``refuse``."""

    def __init__(self) -> None:
        self.refuse: set[str] = set()
        self.received: list[str] = []
        self.refused: list[str] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.casefold() in self.refuse:
            self.refused.append(address)
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.extend(envelope.rcpt_tos)
        return "250 2.0.0 Ok: queued as 4QX7c12345"

    def to(self, address: str) -> int:
        return sum(a.casefold() == address.casefold() for a in self.received)


class SmtpServer:
    def __init__(self) -> None:
        self.mailbox = RefusingMailbox()
        self.port = free_port()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port, server_hostname="mx.test")

    def __enter__(self) -> SmtpServer:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as running:
        yield running


def smtp_runtime(monkeypatch: pytest.MonkeyPatch, smtp_url: str) -> Runtime:
    """E-mail through the SMTP server, SMS to the outbox; the ledger from DISPATCHER_DATABASE_URL."""
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "smtp")
    monkeypatch.setenv("DISPATCHER_SMTP_URL", smtp_url)
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "outbox")
    return Runtime(load_settings())


def sms_sent(rt: Runtime) -> list[dict[str, Any]]:
    path = Path(rt.settings.outbox_path) / "sms.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fallback_campaign(
    tmp_path: Path, campaign_id: str, *, fallback: bool = True, sms_max: int | None = None, prefer: str = "email"
) -> Path:
    path = write_campaign(tmp_path, campaign_id, prefer=prefer)
    text = path.read_text(encoding="utf-8")
    if sms_max is not None:
        text = text.replace("sms_max_chars = 134", f"sms_max_chars = {sms_max}")
    if fallback:
        text = text.replace('sms_window = ["00:00", "24:00"]', 'sms_window = ["00:00", "24:00"]\nfallback = true')
    path.write_text(text, encoding="utf-8")
    return path


def row(user: str, *, email: str = "", phone: str = "") -> dict[str, str]:
    return {
        "user_id": user,
        "name": f"利用者{user}",
        "email": email,
        "phone": phone,
        "receipt_url": f"https://receive.example.jp/r/tok-{user}-x",
        "amount": "1000",
        "category": "A",
    }


def enqueue(rt: Runtime, campaign: Path, rows: list[dict[str, str]]) -> dict[str, int]:
    """Enqueue without a broker; returns user_id -> delivery id."""
    result = enqueue_campaign(campaign, rows, settings=rt.settings, ledger=rt.ledger, dispatch=lambda ids: None)
    assert result.rejected == 0, result.rejects
    ids = {}
    for delivery_id in rt.ledger.in_status(result.campaign_id, list(Status)):
        d = rt.ledger.get(delivery_id)
        assert d is not None
        ids[d.user_id] = delivery_id
    return ids


@pytest.fixture
def srt(ledger_url, redis_url, smtp: SmtpServer, monkeypatch):
    """A runtime sending e-mail to the test's SMTP server (with the ledger and Redis of the test)."""
    runtime = smtp_runtime(monkeypatch, smtp.url)
    yield runtime
    runtime.close()
