"""The person desk (SPEC §9, second wave): `dispatcher person` over SQLite and PostgreSQL, as a caller is
found by their user id, inquiry number, phone number in any writing, or e-mail address."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import inspect, select, update

from dispatcher.core.campaign import load_campaign
from dispatcher.core.settings import load_settings
from dispatcher.core.states import Status
from dispatcher.intake.enqueue import enqueue_campaign
from dispatcher.ledger import Ledger
from dispatcher.ledger.schema import deliveries, redemptions

from .helpers import write_campaign

CAMPAIGN = "test-campaign"
REMINDER_RUN = "test-campaign-r-nudge"
URL = "https://receive.example.jp/r/"


def row(user_id: str, *, email: str = "", phone: str = "", inquiry: str = "") -> dict[str, str]:
    return {
        "user_id": user_id,
        "name": f"利用者{user_id}",
        "email": email,
        "phone": phone,
        "receipt_url": f"{URL}secret-{user_id.lower()}",
        "amount": "500",
        "category": "B",
        "inquiry_no": inquiry,
    }


ROWS = [
    row("U1", email="Hanako.S@Example.JP", inquiry="Q-1001"),
    row("U2", phone="090-1234-5678", inquiry="Q-1002"),
    row("U3", email="family@example.jp"),
    row("U4", email="family@example.jp"),
    row("U5", email="u5@example.jp", phone="080-2222-3333"),
]
#: Every writing of U2's number that must never be printed.
FULL_NUMBER = ("09012345678", "+819012345678", "090-1234-5678", "1234-5678", "12345678")


@dataclass
class Desk:
    ledger: Ledger
    url: str
    u2: int
    cmd: list[str]


def record_send(ledger: Ledger, delivery_id: int, to: Status, message_id: str, code: str | None = None) -> None:
    assert ledger.claim(delivery_id) is not None
    values: dict[str, object] = {"provider": "outbox", "provider_message_id": message_id}
    if to is Status.SENT:
        values["first_sent_at"] = datetime.now(UTC)
    assert ledger.move(delivery_id, to, actor="worker", provider_code=code, values=values) is not None


@pytest.fixture
def desk(ledger_url: str, tmp_path: Path, dispatcher_cmd: list[str]) -> Desk:
    """Given a campaign of five people; U2 (SMS) failed once, was resent by an operator and sent, has redeemed
    their points and was sent a reminder."""
    campaign_file = write_campaign(tmp_path, CAMPAIGN)
    ledger = Ledger(ledger_url)
    result = enqueue_campaign(campaign_file, ROWS, settings=load_settings(), ledger=ledger, dispatch=lambda ids: None)
    assert result.rejected == 0, result.rejects
    u2 = ledger.person_by_user(CAMPAIGN, "U2")
    assert u2 is not None
    record_send(ledger, u2.id, Status.FAILED, "sns-first-attempt", code="Throttled")
    assert ledger.move(u2.id, Status.QUEUED, actor="operator:desk-test", detail="caller said it never arrived")
    record_send(ledger, u2.id, Status.SENT, "sns-second-attempt")
    with ledger.write() as conn:
        conn.execute(
            redemptions.insert().values(
                campaign_id=CAMPAIGN,
                user_id="U2",
                redeemed_at=datetime(2023, 4, 20, 3, 0, tzinfo=UTC),
                source="receipt-site.csv",
                actor="operator:desk-test",
                recorded_at=datetime.now(UTC),
            )
        )
    # A reminder run: a child campaign of its own holding U2's reminder delivery.
    record = ledger.campaign(CAMPAIGN)
    assert record is not None
    child = replace(load_campaign(campaign_file), id=REMINDER_RUN)
    ledger.save_campaign(child, record.templates, parent_id=CAMPAIGN, purpose="reminder:nudge")
    [reminder] = ledger.add_deliveries(
        REMINDER_RUN,
        [
            {
                "user_id": "U2",
                "row_no": 2,
                "channel": "sms",
                "contact": "+819012345678",
                "email": None,
                "phone": "+819012345678",
                "flags": "",
                "receipt_url": f"{URL}secret-u2",
                "fields": {"name": "利用者U2"},
                "sms_parts": 1,
            }
        ],
        actor="remind",
    )
    record_send(ledger, reminder, Status.SENT, "sns-reminder")
    return Desk(ledger, ledger_url, u2.id, dispatcher_cmd)


def person(desk: Desk, *args: str, lang: str = "en") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DISPATCHER_DATABASE_URL": desk.url, "COLUMNS": "160", "DISPATCHER_LANG": lang}
    return subprocess.run(
        [*desk.cmd, "person", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def assert_private(text: str) -> None:
    assert URL not in text and "secret-u" not in text
    for writing in (*FULL_NUMBER, "Hanako.S@example.jp", "family@example.jp", "080-2222-3333", "+818022223333"):
        assert writing not in text, writing


def test_full_width_phone_finds_the_person_with_everything_the_desk_shows(desk: Desk) -> None:
    # When the call centre types the caller's number as they read it out, in full-width digits
    found = person(desk, CAMPAIGN, "--contact", "０９０－１２３４－５６７８", "--json")
    # Then the person is found (exit 0) with the contract's keys, masked contact, every attempt's id
    assert found.returncode == 0, found.stderr
    data = json.loads(found.stdout)
    assert {
        "campaign",
        "user_id",
        "channel",
        "contact",
        "status",
        "attempts",
        "redeemed_at",
        "history",
        "reminders",
    } <= set(data)
    assert (data["campaign"], data["user_id"], data["channel"], data["status"]) == (CAMPAIGN, "U2", "sms", "sent")
    assert data["contact"] == "090-****-5678" and data["attempts"] == 2 and data["inquiry_no"] == "Q-1002"
    assert [m["id"] for m in data["provider_message_ids"]] == ["sns-first-attempt", "sns-second-attempt"]
    assert data["redeemed_at"] == "2023-04-20T12:00:00+09:00"
    # and the whole history in JST, with who did what
    steps = [(h["from"], h["to"], h["actor"]) for h in data["history"]]
    assert steps == [
        (None, "queued", "enqueue"),
        ("queued", "sending", "worker"),
        ("sending", "failed", "worker"),
        ("failed", "queued", "operator:desk-test"),
        ("queued", "sending", "worker"),
        ("sending", "sent", "worker"),
    ]
    assert all(set(h) >= {"at", "from", "to", "actor", "code", "detail"} for h in data["history"])
    assert all(h["at"].endswith("+09:00") for h in data["history"])
    assert data["history"][2]["code"] == "Throttled"
    assert data["history"][3]["detail"] == "caller said it never arrived"
    # and the reminder run, with its own history
    [reminder] = data["reminders"]
    assert (reminder["template"], reminder["status"], reminder["attempts"]) == ("nudge", "sent", 1)
    assert reminder["sent_at"].endswith("+09:00") and reminder["history"][-1]["to"] == "sent"
    # and neither the full number nor the URL anywhere in the output
    assert_private(found.stdout + found.stderr)


@pytest.mark.parametrize("writing", ["09012345678", "+81 90 1234 5678", "+81-90-1234-5678", "090 1234 5678"])
def test_every_usual_writing_of_the_phone_finds_the_person(desk: Desk, writing: str) -> None:
    found = person(desk, CAMPAIGN, "--contact", writing, "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["user_id"] == "U2"


def test_human_output_is_a_block_and_the_timeline(desk: Desk) -> None:
    shown = person(desk, CAMPAIGN, "--user", "U2")
    assert shown.returncode == 0, shown.stderr
    assert "090-****-5678" in shown.stdout and "sns-second-attempt" in shown.stdout
    assert "operator:desk-test" in shown.stdout and "timeline" in shown.stdout and "nudge" in shown.stdout
    assert "2023-04-20T12:00:00+09:00" in shown.stdout
    assert_private(shown.stdout + shown.stderr)


def test_japanese_for_office_staff_while_the_json_stays_the_same(desk: Desk) -> None:
    shown = person(desk, CAMPAIGN, "--user", "U2", lang="ja")
    assert shown.returncode == 0, shown.stderr
    assert "経過" in shown.stdout and "送信済み" in shown.stdout and "利用者ID" in shown.stdout
    assert "timeline" not in shown.stdout
    assert (
        person(desk, CAMPAIGN, "--user", "U2", "--json", lang="ja").stdout
        == person(desk, CAMPAIGN, "--user", "U2", "--json").stdout
    )
    unknown = person(desk, CAMPAIGN, "--user", "NOBODY", lang="ja")
    assert unknown.returncode == 1 and "該当する人はいません" in unknown.stderr
    assert_private(shown.stdout)


def test_inquiry_number_and_email_find_the_person(desk: Desk) -> None:
    for args in (["--inquiry", "Q-1001"], ["--inquiry", "Ｑ－１００１"], ["--contact", "Hanako.S@EXAMPLE.jp"]):
        found = person(desk, CAMPAIGN, *args, "--json")
        assert found.returncode == 0, (args, found.stderr)
        data = json.loads(found.stdout)
        assert data["user_id"] == "U1" and data["contact"] == "Ha***@example.jp" and data["matches"] == 1
        assert_private(found.stdout)


def test_the_rows_other_contact_finds_the_person_too(desk: Desk) -> None:
    # U5 is sent e-mail (the campaign prefers it) but the caller gives their phone
    found = person(desk, CAMPAIGN, "--contact", "080-2222-3333", "--json")
    assert found.returncode == 0, found.stderr
    data = json.loads(found.stdout)
    assert data["user_id"] == "U5" and data["channel"] == "email" and data["contacts"]["sms"] == "080-****-3333"


def test_several_people_sharing_a_contact_are_all_shown(desk: Desk) -> None:
    found = person(desk, CAMPAIGN, "--contact", "family@example.jp", "--json")
    assert found.returncode == 0, found.stderr
    data = json.loads(found.stdout)
    assert data["user_id"] == "U3" and data["matches"] == 2 and [o["user_id"] for o in data["others"]] == ["U4"]
    human = person(desk, CAMPAIGN, "--contact", "family@example.jp")
    assert "2 people match" in human.stdout and "U3" in human.stdout and "U4" in human.stdout
    assert_private(found.stdout + human.stdout)


def test_unknown_person_exits_1_and_usage_errors_exit_2(desk: Desk) -> None:
    unknown = person(desk, CAMPAIGN, "--user", "NOBODY")
    assert unknown.returncode == 1 and "no such person" in unknown.stderr and "NOBODY" not in unknown.stderr
    assert person(desk, CAMPAIGN, "--contact", "070-9999-0000").returncode == 1
    assert person(desk, CAMPAIGN, "--inquiry", "Q-9999").returncode == 1
    assert person(desk, "no-such-campaign", "--user", "U1").returncode == 1
    # Exactly one selector
    assert person(desk, CAMPAIGN, "--user", "U1", "--inquiry", "Q-1001").returncode == 2
    assert person(desk, CAMPAIGN).returncode == 2
    # A contact that is neither an address nor a mobile number: the reason, not the value
    landline = person(desk, CAMPAIGN, "--contact", "03-5244-9370")
    assert landline.returncode == 2 and "landline" in landline.stderr and "5244" not in landline.stderr
    assert "Traceback" not in landline.stderr


def test_enqueue_writes_the_inquiry_number_and_indexes_serve_the_lookups(desk: Desk) -> None:
    # Every insert path fills the column (this list took the bulk path of its database)
    by_user = {d.user_id: d for d in desk.ledger.iter_campaign(CAMPAIGN)}
    with desk.ledger.read() as conn:
        columns = select(deliveries.c.user_id, deliveries.c.inquiry_no).where(deliveries.c.campaign_id == CAMPAIGN)
        stored = {user: inquiry for user, inquiry in conn.execute(columns)}
        indexes = {i["name"] for i in inspect(conn).get_indexes("deliveries")}
        message_indexes = {i["name"] for i in inspect(conn).get_indexes("provider_messages")}
    assert len(by_user) == 5 and stored["U1"] == "Q-1001" and stored["U2"] == "Q-1002" and stored["U3"] is None
    assert {"ix_deliveries_campaign_inquiry", "ix_deliveries_campaign_contact"} <= indexes
    assert "ix_provider_messages_delivery" in message_indexes


def test_generic_insert_path_writes_the_inquiry_number(desk: Desk) -> None:
    # Rows with a column enqueue never gives take the generic path
    extra = {
        "user_id": "G1",
        "row_no": 9,
        "channel": "email",
        "contact": "g1@example.jp",
        "email": "g1@example.jp",
        "phone": None,
        "flags": "",
        "receipt_url": f"{URL}secret-g1",
        "fields": {"inquiry_no": "Ｑ-7"},
        "sms_parts": None,
        "not_before": None,
    }
    desk.ledger.add_deliveries(CAMPAIGN, [extra])
    [found] = desk.ledger.people_by_inquiry(CAMPAIGN, "Q-7")
    assert found.user_id == "G1"


def test_rows_written_before_the_column_existed_are_found_by_their_fields(desk: Desk) -> None:
    # Given U1's row as an older program wrote it: the number only in its fields
    with desk.ledger.write() as conn:
        conn.execute(update(deliveries).where(deliveries.c.user_id == "U1").values(inquiry_no=None))
    # When the desk looks the number up
    found = person(desk, CAMPAIGN, "--inquiry", "Q-1001", "--json")
    # Then the person is still found
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["user_id"] == "U1"


def test_a_fallback_shows_the_first_channels_evidence(desk: Desk) -> None:
    # Given U5's e-mail bounced and the delivery fell back to their phone (as the fallback actor leaves it)
    with desk.ledger.write() as conn:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.campaign_id == CAMPAIGN, deliveries.c.user_id == "U5")
            .values(
                channel="sms",
                contact="+818022223333",
                first_channel="email",
                first_status="bounced",
                first_provider_message_id="ses-bounced-1",
                fallback_at=datetime(2023, 4, 5, 1, 0, tzinfo=UTC),
            )
        )
    found = person(desk, CAMPAIGN, "--contact", "080-2222-3333", "--json")
    assert found.returncode == 0, found.stderr
    data = json.loads(found.stdout)
    assert data["channel"] == "sms" and data["contact"] == "080-****-3333"
    assert data["fallback"] == {
        "first_channel": "email",
        "first_status": "bounced",
        "first_provider_message_id": "ses-bounced-1",
        "at": "2023-04-05T10:00:00+09:00",
    }
    assert json.loads(person(desk, CAMPAIGN, "--user", "U1", "--json").stdout)["fallback"] is None
