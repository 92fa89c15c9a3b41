"""Large imports: the ledger and broker writes in a process of their own, with the same outcome."""

from __future__ import annotations

import time

import dramatiq
import pytest
import redis

from dispatcher import broker
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake import enqueue
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.intake.writer_process import ProcessWriter, WriterProcessError
from dispatcher.ledger import Ledger

from .helpers import person_rows, write_campaign, write_csv


@pytest.fixture
def writers(monkeypatch) -> list[str]:
    """Every file is 'large'; records which writer each enqueue used."""
    used: list[str] = []

    class Recorded(ProcessWriter):
        def __init__(self, *args, **kwargs) -> None:
            used.append("process")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(enqueue, "PROCESS_WRITER_MIN_BYTES", 0)
    monkeypatch.setattr(enqueue, "ProcessWriter", Recorded)
    return used


def _queued_ids(redis_url: str) -> list[int]:
    client = redis.Redis.from_url(redis_url)
    messages = [dramatiq.Message.decode(b) for b in client.hvals(f"dispatcher:{broker.QUEUE}.msgs")]
    return sorted(i for m in messages for i in (m.args[0] if isinstance(m.args[0], list) else [m.args[0]]))


def test_a_large_list_written_by_its_own_process_gives_the_same_result(
    tmp_path, redis_url, ledger_url, writers, monkeypatch
) -> None:
    monkeypatch.setattr(enqueue, "BATCH", 40)  # several batches through the pipe
    rows = person_rows(250)
    rows[10]["email"] = "not-an-address"
    rows[20]["user_id"] = rows[19]["user_id"]
    csv_path = write_csv(tmp_path / "list.csv", rows)
    campaign = write_campaign(tmp_path, "big")

    result = enqueue_campaign(campaign, csv_path, settings=load_settings())

    assert writers == ["process"]
    assert (result.rows, result.accepted, result.rejected, result.new) == (250, 248, 2, 248)
    assert sorted(r.row for r in result.rejects) == [12, 22]
    ledger = Ledger(ledger_url)
    try:
        ids = ledger.in_status("big", [Status.QUEUED])
        assert len(ids) == 248
        assert _queued_ids(redis_url) == sorted(ids)  # every new delivery handed to the broker, once
        # The same file again: nothing new, nothing more for the broker (counted in the child process)
        again = enqueue_campaign(campaign, csv_path, settings=load_settings())
        assert (again.accepted, again.already_present, again.new) == (248, 248, 0)
        assert _queued_ids(redis_url) == sorted(ids)
        assert [i["new"] for i in ledger.imports("big")] == [248, 0]
    finally:
        ledger.dispose()


def test_a_failing_writer_process_is_reported_and_what_it_wrote_stays_due(
    tmp_path, redis_url, writers, monkeypatch
) -> None:
    from tests.services import free_port

    monkeypatch.setenv("DISPATCHER_DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    # The broker is unreachable for the writer process (the parent never talks to it in this mode)
    settings = load_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    csv_path = write_csv(tmp_path / "list.csv", person_rows(30))
    started = time.monotonic()
    with pytest.raises(WriterProcessError, match="ConnectionError") as raised:
        enqueue_campaign(write_campaign(tmp_path, "nobroker"), csv_path, settings=settings)
    assert time.monotonic() - started < 60
    assert "receive.example.jp/r/" not in str(raised.value)
    # The deliveries written before the failure are in the ledger, due: the sweep hands them on later
    ledger = Ledger(settings.ledger_url)
    try:
        assert len(ledger.in_status("nobroker", [Status.QUEUED])) == 30
    finally:
        ledger.dispose()
