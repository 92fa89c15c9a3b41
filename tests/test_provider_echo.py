"""A real SMTP server (aiosmtpd) whose refusals quote the receipt URL and the address back (issue 11, finding 4):
none of it may reach the ledger, the report, the status JSON or the logs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.runtime import Runtime
from dispatcher.sending.delivery import deliver

from .helpers import person_rows, write_campaign
from .test_provider_smtp import SmtpServer


def echo(code: str, url: str) -> str:
    """A refusal quoting the recipient and the receipt URL in full, without scheme and percent-encoded."""
    bare = url.partition("://")[2]
    return f"{code} <{{to}}> refused: {url} {bare} {quote(url, safe='')} {quote(bare, safe='')}"


def secrets_of(row: dict[str, str]) -> list[str]:
    url, address = row["receipt_url"], row["email"]
    token = url.rsplit("/", 1)[1]
    return [url, url.partition("://")[2], quote(url, safe=""), token, address, address.partition("@")[0]]


def test_an_smtp_server_echoing_url_and_address_leaves_no_trace(
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    dispatcher_cmd: list[str],
) -> None:
    # Given an SMTP server that quotes each person's receipt URL and address in its refusals, and a campaign
    # of two e-mail recipients sent through it (one attempt each, so a temporary refusal gives up at once)
    rows = person_rows(2, sms_every=10**9)
    with SmtpServer() as server:
        monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
        monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "smtp")
        monkeypatch.setenv("DISPATCHER_SMTP_URL", f"smtp://127.0.0.1:{server.port}")
        monkeypatch.setenv("DISPATCHER_MAX_ATTEMPTS", "1")
        rt = Runtime(load_settings())
        ids: list[int] = []
        enqueue_campaign(
            write_campaign(tmp_path, "echo"), rows, settings=rt.settings, ledger=rt.ledger, dispatch=ids.extend
        )

        # When the first is refused for good (550 5.1.1) and the second temporarily (451 4.7.1)
        caplog.set_level(logging.DEBUG)
        outcomes = []
        try:
            for delivery_id, row, code in zip(ids, rows, ("550 5.1.1", "451 4.7.1"), strict=True):
                server.mailbox.rcpt_reply = echo(code, row["receipt_url"])
                outcomes.append(deliver(rt, delivery_id).status)
            ledger = rt.ledger
            kept = [
                text
                for delivery_id in ids
                for text in (
                    ledger.get(delivery_id).reason or "",
                    ledger.get(delivery_id).provider_code or "",
                    *(str(t.get("detail") or "") for t in ledger.history(delivery_id)),
                )
            ]
        finally:
            rt.close()

    # Then both failed, the ledger keeping the code and enhanced status, and the give-up wording
    assert outcomes == [Status.FAILED, Status.FAILED]
    assert any("550 5.1.1" in text for text in kept), kept
    assert any("gave up after 1 attempts" in text and "451 4.7.1" in text for text in kept), kept
    # And none of the server's free text (only its codes)
    assert not any("refused:" in text or "example.jp" in text for text in kept), kept
    # And the report, the status JSON and the logs are produced
    report_path = tmp_path / "report.csv"
    env = os.environ.copy()
    report = subprocess.run(
        [*dispatcher_cmd, "report", "echo", "--out", str(report_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    status = subprocess.run(
        [*dispatcher_cmd, "status", "echo", "--json"], capture_output=True, text=True, timeout=120, env=env
    )
    assert json.loads(status.stdout)["by_status"] == {"failed": 2}
    # And none of them holds a receipt URL, its token or an address in any writing the server used
    places = {
        "ledger": "\n".join(kept),
        "report": report_path.read_text(encoding="utf-8-sig") + report.stdout + report.stderr,
        "status": status.stdout + status.stderr,
        # (what the test's own SMTP server logs, "mail.log", is the server's business, not ours)
        "logs": "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail.log")),
    }
    for row in rows:
        for secret in secrets_of(row):
            for place, text in places.items():
                assert secret.lower() not in text.lower(), (place, secret)


def test_an_aws_error_keeps_its_code_only_and_never_a_code_holding_a_number() -> None:
    from botocore.exceptions import ClientError

    from dispatcher.providers import aws

    # Given AWS errors whose Message quotes the recipient, one whose Code is a phone number
    def error(code: str) -> ClientError:
        response = {
            "Error": {"Code": code, "Message": "bad hanako@ezweb.ne.jp +819012345678"},
            "ResponseMetadata": {"HTTPStatusCode": 400},
        }
        return ClientError(response, "SendEmail")  # type: ignore[arg-type]

    # When they are translated
    plain, numeric = (
        aws.translate("ses", error("MessageRejected"), set()),
        aws.translate("ses", error("819012345678"), set()),
    )

    # Then only a short Code is kept, never the Message, never a Code made of a number
    assert (plain.code, numeric.code) == ("MessageRejected", "Unknown")
    for translated in (plain, numeric):
        assert "hanako" not in str(translated) and "9012345678" not in str(translated)
