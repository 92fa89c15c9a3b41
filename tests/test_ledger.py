"""Ledger behaviour on SQLite and PostgreSQL: idempotent inserts, the state table, the atomic claim."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from dispatcher.core import clock
from dispatcher.core.campaign import load_campaign
from dispatcher.core.errors import IllegalTransition
from dispatcher.core.states import TRANSITIONS, Status
from dispatcher.ledger import Ledger
from dispatcher.sending.render import load_template_sources

from .helpers import write_campaign


def make_row(i: int) -> dict:
    return {
        "user_id": f"U{i}",
        "row_no": i + 1,
        "channel": "email",
        "contact": f"u{i}@example.jp",
        "email": f"u{i}@example.jp",
        "phone": None,
        "flags": "",
        "receipt_url": f"https://receive.example.jp/r/{i}",
        "fields": {"name": "名前"},
        "sms_parts": None,
    }


@pytest.fixture
def ledger(ledger_url: str, tmp_path) -> Ledger:
    ledger = Ledger(ledger_url)
    campaign = load_campaign(write_campaign(tmp_path))
    ledger.save_campaign(campaign, load_template_sources(campaign))
    yield ledger
    ledger.dispose()


def test_adding_the_same_people_twice_adds_nothing(ledger: Ledger) -> None:
    first = ledger.add_deliveries("test-campaign", [make_row(i) for i in range(10)])
    second = ledger.add_deliveries("test-campaign", [make_row(i) for i in range(5, 15)])
    assert len(first) == 10
    assert len(second) == 5  # U5..U9 were already there
    counts = ledger.counts("test-campaign")
    assert counts == {("email", "queued"): 15}


def test_every_transition_is_logged_with_attempt(ledger: Ledger) -> None:
    [d] = ledger.add_deliveries("test-campaign", [make_row(1)])
    assert ledger.claim(d) is not None
    ledger.move(d, Status.SENT, actor="worker", provider_code="ok", values={"provider_message_id": "m-1"})
    history = ledger.history(d)
    assert [(h["from_status"], h["to_status"], h["attempt"]) for h in history] == [
        (None, "queued", 0),
        ("queued", "sending", 1),
        ("sending", "sent", 1),
    ]
    assert ledger.get(d).provider_message_id == "m-1"


def test_a_regression_is_refused_not_applied(ledger: Ledger) -> None:
    [d] = ledger.add_deliveries("test-campaign", [make_row(1)])
    ledger.claim(d)
    ledger.move(d, Status.SENT, actor="worker")
    ledger.move(d, Status.DELIVERED, actor="event:Delivery")
    # A late "sent" or "sending" cannot move a delivered message backwards.
    assert ledger.move(d, Status.SENT, actor="worker") is None
    assert ledger.claim(d) is None
    assert ledger.get(d).status is Status.DELIVERED
    # A complaint after delivery is real and allowed.
    assert ledger.move(d, Status.COMPLAINED, actor="event:Complaint").status is Status.COMPLAINED


def test_state_table_refuses_undeclared_moves() -> None:
    from dispatcher.core.states import check

    with pytest.raises(IllegalTransition):
        check(Status.DELIVERED, Status.SENT)
    with pytest.raises(IllegalTransition):
        check(Status.QUEUED, Status.SENT)  # never sent without a claim
    assert Status.SENDING in TRANSITIONS[Status.QUEUED]


def test_claim_respects_not_before(ledger: Ledger) -> None:
    [d] = ledger.add_deliveries("test-campaign", [make_row(1)])
    later = clock.now() + timedelta(hours=1)
    assert ledger.defer(d, later)
    assert ledger.claim(d) is None
    assert ledger.claim(d, now=later + timedelta(seconds=1)) is not None


def test_racing_claims_have_exactly_one_winner(ledger: Ledger) -> None:
    ids = ledger.add_deliveries("test-campaign", [make_row(i) for i in range(40)])
    wins: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def racer() -> None:
        barrier.wait()
        for d in ids:
            if ledger.claim(d) is not None:
                with lock:
                    wins.append(d)

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == sorted(ids)  # each claimed once, none twice
    assert all(ledger.get(d).attempts == 1 for d in ids)


def test_due_skips_paused_campaigns_and_future_deliveries(ledger: Ledger) -> None:
    ids = ledger.add_deliveries("test-campaign", [make_row(i) for i in range(3)])
    ledger.defer(ids[0], clock.now() + timedelta(hours=2))
    assert ledger.due(clock.now()) == ids[1:]
    ledger.set_campaign_state("test-campaign", "paused", "operator")
    assert ledger.due(clock.now()) == []


def test_stale_sending_is_found(ledger: Ledger) -> None:
    [d] = ledger.add_deliveries("test-campaign", [make_row(1)])
    ledger.claim(d)
    assert ledger.stale_sending(clock.now() + timedelta(minutes=3)) == [d]
    assert ledger.stale_sending(clock.now() - timedelta(minutes=3)) == []


def test_suppression_is_global(ledger: Ledger) -> None:
    from dispatcher.core.states import Channel

    assert ledger.suppress("u1@example.jp", Channel.EMAIL, "hard bounce", "test")
    assert not ledger.suppress("u1@example.jp", Channel.EMAIL, "again", "test")
    assert ledger.is_suppressed("u1@example.jp") == "hard bounce"
    assert ledger.is_suppressed("u2@example.jp") is None


def test_repr_never_shows_contact_or_url(ledger: Ledger) -> None:
    [d] = ledger.add_deliveries("test-campaign", [make_row(7)])
    text = repr(ledger.get(d))
    assert "u7@" not in text and "receive.example.jp" not in text


def test_maintained_counters_match_the_rows(ledger: Ledger) -> None:
    ids = ledger.add_deliveries("test-campaign", [make_row(i) for i in range(30)])
    ledger.add_deliveries("test-campaign", [make_row(i) for i in range(30)])  # nothing new: no double count
    for d in ids[:20]:
        ledger.claim(d)
    for d in ids[:10]:
        ledger.move(d, Status.SENT, actor="worker")
    for d in ids[:4]:
        ledger.move(d, Status.DELIVERED, actor="event")
    ledger.move(ids[25], Status.CANCELLED, actor="operator")
    assert ledger.move(ids[0], Status.SENT, actor="worker") is None  # a refused move changes no count
    expected = {
        ("email", "delivered"): 4,
        ("email", "sent"): 6,
        ("email", "sending"): 10,
        ("email", "queued"): 9,
        ("email", "cancelled"): 1,
    }
    assert ledger.counts("test-campaign") == expected
    assert ledger.count_rows("test-campaign") == expected
    ledger.recount("test-campaign")
    assert ledger.counts("test-campaign") == expected


def test_a_first_wave_ledger_is_brought_up_to_date_without_losing_a_row(ledger: Ledger, ledger_url: str) -> None:
    from sqlalchemy import func, select

    from dispatcher.ledger.schema import SCHEMA_VERSION, deliveries, schema_version

    ledger.add_deliveries("test-campaign", [make_row(i) for i in range(3)])
    with ledger.write() as conn:  # what a version-1 program left: no sms_parts column, no status index
        conn.exec_driver_sql("DROP INDEX ix_deliveries_status_not_before")
        conn.exec_driver_sql("ALTER TABLE deliveries DROP COLUMN sms_parts")
        conn.execute(schema_version.delete())
        conn.execute(schema_version.insert().values(version=1, applied_at=clock.now()))
    ledger.dispose()

    again = Ledger(ledger_url)
    try:
        with again.read() as conn:
            assert conn.execute(select(func.count()).select_from(deliveries)).scalar() == 3
            assert conn.execute(select(func.max(schema_version.c.version))).scalar() == SCHEMA_VERSION == 2
            assert conn.execute(select(deliveries.c.sms_parts)).scalars().all() == [None] * 3
        from sqlalchemy import inspect

        with again.read() as conn:
            assert "ix_deliveries_status_not_before" in {i["name"] for i in inspect(conn).get_indexes("deliveries")}
        Ledger(ledger_url).dispose()  # a second start finds nothing to add
    finally:
        again.dispose()


def test_full_indexes_of_an_earlier_version_are_replaced_by_partial_ones(ledger: Ledger, ledger_url: str) -> None:
    from sqlalchemy import inspect

    # Given a ledger as the previous version left it: full indexes on two columns that are mostly NULL
    ledger.add_deliveries("test-campaign", [make_row(i) for i in range(3)])
    with ledger.write() as conn:
        conn.exec_driver_sql("DROP INDEX ix_deliveries_provider_message_set")
        conn.exec_driver_sql("DROP INDEX ix_deliveries_fallback_owed")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_provider_message ON deliveries (provider_message_id)")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_fallback_due ON deliveries (fallback_due_at)")
    ledger.dispose()
    # When the program starts on it
    again = Ledger(ledger_url)
    try:
        # Then the old indexes are gone, the partial ones are there, and every row is kept
        with again.read() as conn:
            found = {i["name"]: i for i in inspect(conn).get_indexes("deliveries")}
        assert "ix_deliveries_provider_message" not in found and "ix_deliveries_fallback_due" not in found
        assert {"ix_deliveries_provider_message_set", "ix_deliveries_fallback_owed"} <= set(found)
        if again.dialect == "postgresql":
            with again.read() as conn:
                where = conn.exec_driver_sql(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'deliveries'"
                ).all()
            defs = dict(where)
            assert "WHERE (provider_message_id IS NOT NULL)" in defs["ix_deliveries_provider_message_set"]
            assert "WHERE (fallback_due_at IS NOT NULL)" in defs["ix_deliveries_fallback_owed"]
        assert len(again.in_status("test-campaign", [Status.QUEUED])) == 3
        Ledger(ledger_url).dispose()  # a second start finds nothing to change
    finally:
        again.dispose()


def test_several_processes_starting_on_an_old_ledger_at_once_migrate_it_once(ledger: Ledger, ledger_url: str) -> None:
    # Given a ledger with the full indexes of the previous version
    with ledger.write() as conn:
        conn.exec_driver_sql("DROP INDEX ix_deliveries_provider_message_set")
        conn.exec_driver_sql("DROP INDEX ix_deliveries_fallback_owed")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_provider_message ON deliveries (provider_message_id)")
        conn.exec_driver_sql("CREATE INDEX ix_deliveries_fallback_due ON deliveries (fallback_due_at)")
    ledger.dispose()
    # When six start at the same moment (a worker pool, the sweeper, a command)
    errors: list[BaseException] = []
    go = threading.Barrier(6)

    def start() -> None:
        try:
            go.wait()
            Ledger(ledger_url).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then every one started (none deadlocked with another's index changes)
    assert errors == []


def test_a_ledger_from_a_newer_program_is_refused(ledger: Ledger, ledger_url: str) -> None:
    from dispatcher.core.errors import ConfigError
    from dispatcher.ledger.schema import schema_version

    with ledger.write() as conn:
        conn.execute(schema_version.insert().values(version=99, applied_at=clock.now()))
    with pytest.raises(ConfigError, match="newer than this program"):
        Ledger(ledger_url)
