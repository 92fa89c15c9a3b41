"""A seeded campaign and a dashboard over it, for the dashboard's HTTP and browser tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.runtime import Runtime

from .helpers import person_rows, write_campaign
from .services import free_port

TOKEN = "dashboard-token-for-the-tests-7f3a9c0e5b1d"
CAMPAIGN = "test-campaign"
BAD_ROWS = [
    {
        "user_id": "BAD1",
        "name": "x",
        "email": "not-an-address",
        "phone": "",
        "receipt_url": "https://receive.example.jp/r/badrow1",
        "amount": "1",
        "category": "A",
    },
    {
        "user_id": "BAD2",
        "name": "y",
        "email": "",
        "phone": "03-5244-9370",
        "receipt_url": "https://receive.example.jp/r/badrow2",
        "amount": "1",
        "category": "A",
    },
]


@dataclass
class Seeded:
    rt: Runtime
    campaign_id: str
    rows: list[dict[str, str]]
    dispatched: list[int] = field(default_factory=list)

    def dispatch(self, ids: list[int]) -> None:
        self.dispatched.extend(ids)


def seed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    n: int = 60,
    *,
    dispatch: Callable[[list[int]], None] | None = None,
    database_url: str | None = None,
    **campaign: str,
) -> Seeded:
    """Given a SQLite ledger in ``tmp_path`` (or ``database_url``) and the ``redis_url`` fixture's Redis: a
    campaign of ``n`` people (one in three by SMS) plus two rejected rows, enqueued; handed to ``dispatch`` if
    given, else to nobody."""
    from dispatcher.cli.common import install_runtime
    from dispatcher.intake.enqueue import enqueue_campaign

    monkeypatch.setenv("DISPATCHER_DATABASE_URL", database_url or f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("DISPATCHER_DASHBOARD_TOKEN", TOKEN)
    settings = load_settings()
    rt = install_runtime(settings)
    rows = person_rows(n)
    enqueue_campaign(
        write_campaign(tmp_path, CAMPAIGN, **campaign),
        [*rows, *BAD_ROWS],
        settings=settings,
        ledger=rt.ledger,
        dispatch=dispatch or (lambda ids: None),
    )
    return Seeded(rt, CAMPAIGN, rows)


def send(rt: Runtime, delivery_id: int, to: Status = Status.SENT, reason: str | None = None) -> None:
    """Move a queued delivery the way a worker would: claim it, then record the provider's answer."""
    assert rt.ledger.claim(delivery_id) is not None
    values: dict[str, object] = {"provider": "outbox"}
    if reason is not None:
        values["reason"] = reason
    code = None if to is Status.SENT else "550"
    assert rt.ledger.move(delivery_id, to, actor="worker", provider_code=code, values=values, detail=reason) is not None


@contextmanager
def serving(app: Any, *, access_log: bool = False) -> Iterator[str]:
    """A real uvicorn server for ``app`` in a thread on a free 127.0.0.1 port; yields its base URL.
    ``access_log``: uvicorn logs each request line (to the ``uvicorn.access`` logger), as deployed."""
    port = free_port()
    # proxy_headers off as in `dispatcher dashboard`: the app believes X-Forwarded-* from trusted proxies only.
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=access_log,
        lifespan="off",
        ws="none",
        proxy_headers=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="dashboard-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
