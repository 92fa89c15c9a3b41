"""Fixtures and small builders for the sending-policy guard tests (issue 11, "Tests that must exist").

Sends go to SES and SNS on the moto server through :class:`tests.faultproxy.FaultProxy` (which counts every
send call that reaches the provider and can answer with transient or permanent errors); the ledger is the
``ledger_url`` one (SQLite and PostgreSQL); limits and quotas live in the real Redis. The clock is moved by
hand with :func:`dispatcher.core.clock.start_at`, so retries and deadlines need no sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import boto3
import pytest

from dispatcher.core import clock
from dispatcher.core.clock import JST
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.runtime import Runtime
from dispatcher.sending.delivery import Outcome, deliver

from .faultproxy import FaultProxy
from .helpers import write_campaign
from .services import MotoService

#: person_rows(sms_every=EMAIL_ONLY): nobody gets an SMS.
EMAIL_ONLY = 10**9

MakeRuntime = Callable[..., Runtime]


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=JST)


def contact(row: dict[str, str]) -> str:
    """The contact as the ledger and the provider see it (E.164 for the phones person_rows makes)."""
    return row["email"] or "+81" + row["phone"][1:]


@pytest.fixture
def proxy(moto: MotoService) -> Iterator[FaultProxy]:
    with FaultProxy(moto.url, seed=20231101) as p:
        yield p


@pytest.fixture
def make_runtime(
    moto: MotoService, proxy: FaultProxy, redis_url: str, ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MakeRuntime]:
    """Builds the in-process runtime a worker thread uses, with extra ``DISPATCHER_*`` settings."""
    boto3.client("sesv2", endpoint_url=moto.url).create_email_identity(EmailIdentity="giftpad.jp")
    for key, value in {
        "AWS_ENDPOINT_URL": proxy.url,
        "DISPATCHER_EMAIL_PROVIDER": "ses",
        "DISPATCHER_SMS_PROVIDER": "sns",
    }.items():
        monkeypatch.setenv(key, value)
    made: list[Runtime] = []

    def make(**settings: str) -> Runtime:
        for key, value in settings.items():
            monkeypatch.setenv(f"DISPATCHER_{key}", value)
        made.append(Runtime(load_settings()))
        return made[-1]

    yield make
    for rt in made:
        rt.close()


def enqueue_in_process(
    rt: Runtime, tmp_path: Path, campaign_id: str, rows: list[dict[str, str]], **campaign: str
) -> dict[str, int]:
    """Enqueue without a broker; returns the delivery id per contact."""
    path = write_campaign(tmp_path, campaign_id, **campaign)
    ids: list[int] = []
    result = enqueue_campaign(path, rows, settings=rt.settings, ledger=rt.ledger, dispatch=ids.extend)
    assert (result.accepted, result.rejected) == (len(rows), 0)
    found = {}
    for delivery_id in ids:
        delivery = rt.ledger.get(delivery_id)
        assert delivery is not None
        found[delivery.contact] = delivery_id
    return found


def deliver_until_settled(rt: Runtime, delivery_id: int, *, limit: int = 60) -> list[Outcome]:
    """Hand the delivery to the worker each time it is due, as broker and sweep would, moving the clock to
    the moment it asked to be looked at again; stops at the first outcome that asks for nothing more."""
    outcomes: list[Outcome] = []
    for _ in range(limit):
        outcome = deliver(rt, delivery_id)
        outcomes.append(outcome)
        if outcome.again_at is None:
            return outcomes
        clock.start_at(max(outcome.again_at, clock.now()) + timedelta(milliseconds=1))
    raise AssertionError(f"delivery {delivery_id} still pending after {limit} hand-overs: {outcomes[-3:]}")


def statuses(outcomes: list[Outcome]) -> list[Status | None]:
    return [o.status for o in outcomes]
