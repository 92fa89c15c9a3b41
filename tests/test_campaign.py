"""Campaign definition files (SPEC §5, §9): dispatcher.core.campaign."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from dispatcher.core.campaign import Campaign, SmsWindow, campaign_to_dict, load_campaign, parse_campaign
from dispatcher.core.clock import JST
from dispatcher.core.errors import ConfigError
from dispatcher.core.states import Channel

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "config" / "campaigns" / "regionpay-2023-app.toml"
TZ9 = timezone(timedelta(hours=9))


def definition(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "c1",
        "name": "テスト",
        "template": "compensation",
        "deadline": datetime(2023, 5, 31, 23, 59, 59, tzinfo=TZ9),
        "send_by": datetime(2023, 5, 28, 20, 0, tzinfo=TZ9),
        "receipt_hosts": ["Receive.Example.JP"],
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def jst(*args: int) -> datetime:
    return datetime(*args, tzinfo=JST)  # type: ignore[misc]


# the shipped file -----------------------------------------------------------------------------
def test_shipped_campaign_file_loads() -> None:
    campaign = load_campaign(SHIPPED)

    assert campaign.id == "regionpay-2023-app"
    assert campaign.name == "地域クーポン補償（アプリ利用者）"
    assert campaign.template == "compensation"
    assert campaign.prefer == "email"
    assert campaign.deadline == datetime(2023, 5, 31, 23, 59, 59, tzinfo=TZ9)
    assert campaign.send_by == datetime(2023, 5, 28, 20, 0, tzinfo=TZ9)
    assert campaign.receipt_hosts == frozenset({"receive.example.jp"})
    assert campaign.sms_max_chars == 134
    assert campaign.sms_window == SmsWindow(time(9, 0), 20 * 60)
    assert campaign.text["call_centre_phone"] == "0120-479-249"
    assert campaign.source == SHIPPED.resolve()


def test_minimal_definition_gets_the_defaults() -> None:
    campaign = parse_campaign(definition())

    assert campaign.prefer == "email"
    assert campaign.sms_max_chars == 70
    assert campaign.sms_window == SmsWindow(time(9, 0), 1200)
    assert campaign.text == {}
    assert campaign.receipt_hosts == frozenset({"receive.example.jp"})  # lower-cased for comparison


def test_campaign_survives_the_round_trip_through_the_ledger_form() -> None:
    # Given the shipped campaign as workers see it (no file, a dict kept in the ledger)
    campaign = load_campaign(SHIPPED)

    again = parse_campaign(campaign_to_dict(campaign))

    assert again == dataclasses.replace(campaign, source=None)


def test_round_trip_keeps_a_midnight_window() -> None:
    campaign = parse_campaign(definition(sms_window=["00:00", "24:00"]))

    assert campaign_to_dict(campaign)["sms_window"] == ["00:00", "24:00"]
    assert parse_campaign(campaign_to_dict(campaign)).sms_window.always


# errors ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["id", "name", "template", "deadline", "send_by", "receipt_hosts"])
def test_missing_required_key_is_named(key: str) -> None:
    data = definition()
    del data[key]

    with pytest.raises(ConfigError, match=f"missing key\\(s\\) {key}") as caught:
        parse_campaign(data, where="x.toml")

    assert str(caught.value).startswith("x.toml: ")


def test_all_missing_keys_are_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_campaign({"id": "c1"})

    assert "name, template, deadline, send_by, receipt_hosts" in str(caught.value)


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown key\\(s\\) send_before"):
        parse_campaign(definition(send_before="2023-05-28"))


@pytest.mark.parametrize("key", ["deadline", "send_by"])
def test_naive_datetime_is_refused(key: str) -> None:
    # A naive time is ambiguous between the operator's machine (UTC on a server) and JST
    with pytest.raises(ConfigError, match=f"'{key}' needs a UTC offset"):
        parse_campaign(definition(**{key: datetime(2023, 5, 27, 20, 0)}))


@pytest.mark.parametrize("value", [date(2023, 5, 31), "2023-05-31T23:59:59+09:00", 20230531])
def test_deadline_must_be_a_toml_datetime(value: object) -> None:
    with pytest.raises(ConfigError, match="'deadline' must be a TOML date-time"):
        parse_campaign(definition(deadline=value))


def test_send_by_after_deadline_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"'send_by' .* is after 'deadline'"):
        parse_campaign(definition(send_by=datetime(2023, 6, 1, 0, 0, tzinfo=TZ9)))


def test_send_by_equal_to_the_deadline_in_another_offset_is_allowed() -> None:
    deadline = datetime(2023, 5, 31, 23, 59, 59, tzinfo=TZ9)

    campaign = parse_campaign(definition(deadline=deadline, send_by=deadline.astimezone(UTC)))

    assert campaign.send_by == campaign.deadline


def test_send_by_compares_instants_not_wall_clocks() -> None:
    # 2023-05-31 20:00 UTC is 2023-06-01 05:00 JST: after the deadline although it "reads" earlier
    with pytest.raises(ConfigError, match="is after 'deadline'"):
        parse_campaign(definition(send_by=datetime(2023, 5, 31, 20, 0, tzinfo=UTC)))


@pytest.mark.parametrize(
    "window",
    [
        ["20:00", "09:00"],  # ends before it starts
        ["09:00", "09:00"],  # empty
        ["9am", "8pm"],
        ["09:00"],
        ["09:00", "20:00", "21:00"],
        "09:00-20:00",
        [9, 20],
        ["09:00", "24:30"],
        ["25:00", "26:00"],
    ],
)
def test_bad_sms_window_is_refused(window: object) -> None:
    with pytest.raises(ConfigError, match="'sms_window'"):
        parse_campaign(definition(sms_window=window))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"prefer": "fax"}, "'prefer' must be"),
        ({"receipt_hosts": []}, "'receipt_hosts' must be a non-empty list"),
        ({"receipt_hosts": "receive.example.jp"}, "'receipt_hosts' must be a non-empty list"),
        ({"receipt_hosts": [""]}, "'receipt_hosts' must be a non-empty list"),
        ({"sms_max_chars": 0}, "'sms_max_chars'"),
        ({"sms_max_chars": 1601}, "'sms_max_chars'"),
        ({"sms_max_chars": "70"}, "'sms_max_chars'"),
        ({"id": ""}, "'id'"),
        ({"id": "x" * 65}, "'id'"),
        ({"id": 7}, "'id'"),
        ({"text": "call us"}, "'text' must be a table"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_campaign(definition(**changes))


def test_missing_campaign_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="campaign file not found"):
        load_campaign(tmp_path / "nope.toml")


def test_campaign_file_that_is_not_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('id = "x\n', encoding="utf-8")

    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_campaign(path)

    assert str(path) in str(caught.value)


def test_campaign_file_with_a_naive_deadline_names_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "naive.toml"
    path.write_text(SHIPPED.read_text("utf-8").replace("2023-05-31T23:59:59+09:00", "2023-05-31T23:59:59"), "utf-8")

    with pytest.raises(ConfigError) as caught:
        load_campaign(path)

    assert str(path) in str(caught.value)
    assert "'deadline' needs a UTC offset" in str(caught.value)


def test_id_is_stripped() -> None:
    assert parse_campaign(definition(id="  c1  ")).id == "c1"


# channel --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prefer", "has_email", "has_phone", "expected"),
    [
        ("email", True, True, Channel.EMAIL),
        ("sms", True, True, Channel.SMS),
        ("email", False, True, Channel.SMS),
        ("sms", True, False, Channel.EMAIL),
        ("sms", False, True, Channel.SMS),
    ],
)
def test_channel_is_the_registered_contact_and_prefer_breaks_ties(
    prefer: str, has_email: bool, has_phone: bool, expected: Channel
) -> None:
    campaign = parse_campaign(definition(prefer=prefer))

    assert campaign.channel_for(has_email, has_phone) is expected


# SMS window (JST) -----------------------------------------------------------------------------
@pytest.fixture
def daytime() -> SmsWindow:
    return parse_campaign(definition(sms_window=["09:00", "20:00"])).sms_window


@pytest.mark.parametrize(
    ("instant", "inside"),
    [
        (jst(2023, 4, 5, 9, 0), True),
        (jst(2023, 4, 5, 8, 59, 59), False),
        (jst(2023, 4, 5, 19, 59, 59), True),
        (jst(2023, 4, 5, 20, 0), False),
        (jst(2023, 4, 5, 23, 30), False),
        (jst(2023, 4, 5, 0, 0), False),
        # The window is Japanese time whatever zone the instant is in
        (datetime(2023, 4, 5, 0, 0, tzinfo=UTC), True),  # 09:00 JST
        (datetime(2023, 4, 4, 23, 59, tzinfo=UTC), False),  # 08:59 JST
        (datetime(2023, 4, 5, 10, 59, tzinfo=UTC), True),  # 19:59 JST
        (datetime(2023, 4, 5, 11, 0, tzinfo=UTC), False),  # 20:00 JST
    ],
)
def test_window_contains_jst_times(daytime: SmsWindow, instant: datetime, inside: bool) -> None:
    assert daytime.contains(instant) is inside


def test_next_opening_inside_the_window_is_now(daytime: SmsWindow) -> None:
    now = datetime(2023, 4, 5, 3, 17, 12, tzinfo=UTC)  # 12:17:12 JST

    assert daytime.next_opening(now) == now


def test_next_opening_before_the_window_is_the_same_morning(daytime: SmsWindow) -> None:
    opening = daytime.next_opening(jst(2023, 4, 5, 6, 30, 15))

    assert opening == jst(2023, 4, 5, 9, 0)
    assert opening.utcoffset() == timedelta(hours=9)


def test_next_opening_after_the_window_is_the_next_morning(daytime: SmsWindow) -> None:
    # 2023-04-05 12:00 UTC is 21:00 JST: the next opening is 09:00 JST on the 6th = 00:00 UTC
    opening = daytime.next_opening(datetime(2023, 4, 5, 12, 0, tzinfo=UTC))

    assert opening == jst(2023, 4, 6, 9, 0)
    assert opening == datetime(2023, 4, 6, 0, 0, tzinfo=UTC)


def test_next_opening_just_after_midnight_utc_on_the_japanese_evening(daytime: SmsWindow) -> None:
    # 2023-04-30 23:30 JST is still 14:30 UTC on the 30th: next opening 09:00 JST on 1 May
    assert daytime.next_opening(datetime(2023, 4, 30, 14, 30, tzinfo=UTC)) == jst(2023, 5, 1, 9, 0)


def test_next_opening_is_always_inside_the_window(daytime: SmsWindow) -> None:
    start = datetime(2023, 4, 5, 0, 0, tzinfo=UTC)
    for minutes in range(0, 24 * 60, 7):
        instant = start + timedelta(minutes=minutes)
        opening = daytime.next_opening(instant)
        assert daytime.contains(opening)
        assert instant <= opening < instant + timedelta(days=1)


def test_any_time_window() -> None:
    window = parse_campaign(definition(sms_window=["00:00", "24:00"])).sms_window

    assert window.always
    assert window.contains(jst(2023, 4, 5, 0, 0))
    assert window.contains(jst(2023, 4, 5, 23, 59, 59))
    assert not parse_campaign(definition()).sms_window.always


def test_window_ending_at_midnight_covers_the_last_minute() -> None:
    window = parse_campaign(definition(sms_window=["18:00", "24:00"])).sms_window

    assert window.contains(jst(2023, 4, 5, 23, 59))
    assert not window.contains(jst(2023, 4, 5, 17, 59))
    assert window.next_opening(jst(2023, 4, 6, 0, 30)) == jst(2023, 4, 6, 18, 0)


def test_campaign_is_immutable() -> None:
    campaign = parse_campaign(definition())

    with pytest.raises(dataclasses.FrozenInstanceError):
        campaign.prefer = "sms"  # type: ignore[misc]
    assert isinstance(campaign, Campaign)


@pytest.mark.parametrize(
    "template", ["../../etc", "/etc", "a/b", "..", ".hidden", "", "x" * 65, 7, "a\\b", "comp ensation"]
)
def test_template_must_be_a_folder_name_not_a_path(template: object) -> None:
    # Given a campaign whose template names a path (it would take templates from outside templates/)
    # When it is parsed, then it is refused with the key named
    with pytest.raises(ConfigError, match="'template' must be a folder name"):
        parse_campaign(definition(template=template))


@pytest.mark.parametrize("template", ["compensation", "reminder-2023.05", "web_v2"])
def test_usual_template_folder_names_are_accepted(template: str) -> None:
    assert parse_campaign(definition(template=template)).template == template
