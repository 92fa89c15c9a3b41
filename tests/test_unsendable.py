"""An error after the claim and before the provider call fails the delivery for good, with a reason that
carries no URL or contact; it never leaves it ``sending`` or ``unknown`` (issue 11, findings 5 and 6).

Driven through the worker's own function (:func:`dispatcher.sending.delivery.deliver`) on SQLite and PostgreSQL,
with the ledger holding what an older enqueue accepted (a template or a contact that today's checks refuse).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatcher.core.campaign import load_campaign
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.runtime import Runtime
from dispatcher.sending import delivery as delivery_module
from dispatcher.sending.delivery import deliver
from dispatcher.sending.render import load_template_sources

from .helpers import write_campaign

URL = "https://receive.example.jp/r/Zq7sECRETtok3n?k=a1"
EMAIL = "hanako.private@example.jp"


@pytest.fixture
def runtime(ledger_url: str, redis_url: str) -> Iterator[Runtime]:
    rt = Runtime(load_settings())
    yield rt
    rt.close()


def snapshot(rt: Runtime, tmp_path: Path, contact: str, **templates: str) -> int:
    """A campaign snapshot with these template files and one e-mail delivery to ``contact``, as written by
    an enqueue that did not check them (an older version); returns the delivery id."""
    campaign = load_campaign(write_campaign(tmp_path))
    rt.ledger.save_campaign(campaign, {**load_template_sources(campaign), **templates})
    row = {
        "user_id": "U1",
        "row_no": 2,
        "channel": "email",
        "contact": contact,
        "email": contact,
        "phone": None,
        "flags": "",
        "receipt_url": URL,
        "fields": {"name": "山田 花子"},
        "sms_parts": None,
    }
    (delivery_id,) = rt.ledger.add_deliveries(campaign.id, [row])
    return delivery_id


def assert_failed_safely(rt: Runtime, delivery_id: int, contact: str, expected: str) -> None:
    got = rt.ledger.get(delivery_id)
    history = rt.ledger.history(delivery_id)
    # Failed for good (no retry, no unknown), after a claim, with a reason saying what is wrong
    assert got.status is Status.FAILED
    assert [(h["from_status"], h["to_status"]) for h in history][-2:] == [("queued", "sending"), ("sending", "failed")]
    assert got.reason is not None and expected in got.reason
    # and nothing personal in the reason, the audit trail or the outbox
    kept = " ".join([got.reason, got.provider_code or "", *(str(h["detail"]) for h in history)])
    for secret in ("Zq7sECRET", "receive.example.jp/r", contact, contact.split("@")[0], "山田"):
        assert secret not in kept
    outbox = rt.settings.outbox_path
    assert not outbox.exists() or not [p for p in outbox.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("template", "source", "expected"),
    [
        ("email_body.txt", "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}", "sandbox"),
        ("email_body.txt", "{{ text.clear() }}{{ receipt_url }}", "sandbox"),
        ("email_subject.txt", "{{ text[receipt_url] }}", "email_subject.txt"),
        ("email_body.txt", "{{ '%d' % name }}", "TypeError"),
    ],
)
def test_a_template_refused_at_send_time_fails_the_delivery(
    runtime: Runtime, tmp_path: Path, template: str, source: str, expected: str
) -> None:
    # Given a delivery whose snapshot holds a template the sandbox refuses (or that fails on the row)
    marker = tmp_path / "pwned"
    delivery_id = snapshot(runtime, tmp_path, EMAIL, **{template: source.replace("MARKER", str(marker))})

    # When a worker handles it
    outcome = deliver(runtime, delivery_id)

    # Then it is failed for good with a reason, nothing ran and nothing was sent
    assert outcome.status is Status.FAILED
    assert_failed_safely(runtime, delivery_id, EMAIL, expected)
    assert not marker.exists()


@pytest.mark.parametrize(
    "contact",
    [
        "=?utf-8?b?dmljdGltQGV2aWwuZXhhbXBsZSw=?=@example.jp",  # two recipients once a parser decodes it
        "hanako@example.jp\r\nBcc: victim@evil.example",
        "hanako@example.jp, victim@evil.example",
    ],
)
def test_a_contact_that_cannot_be_one_recipient_fails_the_delivery(
    runtime: Runtime, tmp_path: Path, contact: str
) -> None:
    # Given a delivery whose stored contact is not one plain address (accepted by an older enqueue)
    delivery_id = snapshot(runtime, tmp_path, contact)

    # When a worker handles it
    outcome = deliver(runtime, delivery_id)

    # Then the header check refuses it: failed for good (not sending, not unknown), nothing sent
    assert outcome.status is Status.FAILED
    assert_failed_safely(runtime, delivery_id, contact, "recipient")
    assert runtime.ledger.get(delivery_id).provider_code == "message"


def test_an_unexpected_error_quoting_the_url_fails_the_delivery_without_it(
    runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a message builder that fails in a way nobody planned, with the URL and contact in its text
    delivery_id = snapshot(runtime, tmp_path, EMAIL)

    def broken(*args: object, **kwargs: object) -> bytes:
        raise ValueError(f"cannot fold {URL.removeprefix('https://')} for {EMAIL}")

    monkeypatch.setattr(delivery_module, "build_raw", broken)

    # When a worker handles it
    outcome = deliver(runtime, delivery_id)

    # Then it is failed with the error's kind only
    assert outcome.status is Status.FAILED
    assert_failed_safely(runtime, delivery_id, EMAIL, "ValueError")
