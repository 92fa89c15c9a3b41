"""Deployment settings (SPEC §5, §9): dispatcher.core.settings — config file, DISPATCHER_* environment, defaults."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pydantic
import pytest

from dispatcher.core.errors import ConfigError
from dispatcher.core.settings import config_file, load_settings


def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    path = tmp_path / "dispatcher.toml"
    path.write_text(text, encoding="utf-8")
    monkeypatch.setenv("DISPATCHER_CONFIG", str(path))
    return path


def test_defaults_are_the_announced_senders_and_local_providers(tmp_path: Path) -> None:
    settings = load_settings()

    assert settings.email_sender == "regionpay_compensation_ml@giftpad.jp"
    assert settings.sms_sender == "03-5244-9370"
    assert settings.email_sender_name == "地域クーポン regionPAY 補償事務局"
    assert (settings.email_provider, settings.sms_provider) == ("outbox", "outbox")
    assert (settings.email_rate, settings.sms_rate, settings.redis_url, settings.database_url) == (
        None,
        None,
        None,
        None,
    )
    assert settings.domain_rates["docomo.ne.jp"] > 0
    # conftest points DISPATCHER_DATA_DIR at this test's directory
    assert settings.data_dir == tmp_path / "var"
    assert settings.ledger_url == f"sqlite:///{(tmp_path / 'var' / 'dispatcher.db').resolve()}"
    assert settings.outbox_path == tmp_path / "var" / "outbox"


def test_config_file_sets_values(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config(
        tmp_path,
        monkeypatch,
        """
email_provider = "ses"
email_rate = 14.0
sms_daily_quota = 5000
email_sender = "notice@example.jp"
outbox_dir = "/srv/outbox"

[domain_rates]
"docomo.ne.jp" = 3.5
""",
    )

    settings = load_settings()

    assert settings.email_provider == "ses"
    assert settings.email_rate == 14.0
    assert settings.sms_daily_quota == 5000
    assert settings.email_sender == "notice@example.jp"
    assert settings.outbox_path == Path("/srv/outbox")
    assert settings.domain_rates == {"docomo.ne.jp": 3.5}
    assert settings.sms_sender == "03-5244-9370"  # untouched keys keep their defaults


def test_environment_wins_over_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a file and environment variables that disagree
    config(tmp_path, monkeypatch, 'email_rate = 14.0\nsms_provider = "sns"\nsms_sender = "03-0000-0000"\n')
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "2.5")
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "http")

    # When the settings are loaded
    settings = load_settings()

    # Then the environment wins where it speaks and the file elsewhere
    assert settings.email_rate == 2.5
    assert settings.sms_provider == "http"
    assert settings.sms_sender == "03-0000-0000"


def test_empty_environment_variable_does_not_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config(tmp_path, monkeypatch, "email_rate = 14.0\n")
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "")

    assert load_settings().email_rate == 14.0


def test_database_url_replaces_the_default_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", "postgresql+psycopg://u@db/dispatcher")

    assert load_settings().ledger_url == "postgresql+psycopg://u@db/dispatcher"


def test_default_config_file_is_config_dispatcher_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no DISPATCHER_CONFIG and a config/dispatcher.toml where the command runs
    monkeypatch.delenv("DISPATCHER_CONFIG")
    monkeypatch.chdir(tmp_path)
    assert config_file() is None
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dispatcher.toml").write_text('sms_provider = "sns"\n', encoding="utf-8")

    # Then it is read
    assert config_file() == Path("config/dispatcher.toml")
    assert load_settings().sms_provider == "sns"


def test_missing_config_file_named_by_dispatcher_config_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISPATCHER_CONFIG", str(tmp_path / "nope.toml"))

    with pytest.raises(ConfigError, match="DISPATCHER_CONFIG") as caught:
        load_settings()

    assert "nope.toml" in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("DISPATCHER_EMAIL_RATE", "fast"),
        ("DISPATCHER_EMAIL_RATE", "0"),
        ("DISPATCHER_SMS_RATE", "-1"),
        ("DISPATCHER_EMAIL_DAILY_QUOTA", "1.5"),
        ("DISPATCHER_EMAIL_PROVIDER", "sendgrid"),
        ("DISPATCHER_SMS_PROVIDER", "twilio"),
        ("DISPATCHER_MAX_ATTEMPTS", "0"),
        ("DISPATCHER_BREAKER_THRESHOLD", "1.5"),
        ("DISPATCHER_EMAIL_SENDER", "事務局@giftpad.jp"),
        ("DISPATCHER_EMAIL_SENDER", "no-at-sign"),
        ("DISPATCHER_CLOCK_START", "2023-04-05T10:00:00"),  # no UTC offset
        ("DISPATCHER_CLOCK_START", "soon"),
    ],
)
def test_bad_environment_value_is_a_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError) as caught:
        load_settings()

    message = str(caught.value)
    assert variable in message
    key = variable.removeprefix("DISPATCHER_").lower()
    assert f"config key '{key}'" in message


def test_environment_value_that_is_not_json_for_a_table_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_DOMAIN_RATES", "docomo.ne.jp=5")

    with pytest.raises(ConfigError, match="domain_rates"):
        load_settings()


def test_table_setting_from_the_environment_is_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_DOMAIN_RATES", '{"docomo.ne.jp": 2, "ezweb.ne.jp": 4}')

    assert load_settings().domain_rates == {"docomo.ne.jp": 2.0, "ezweb.ne.jp": 4.0}


def test_bad_value_in_the_config_file_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config(tmp_path, monkeypatch, 'email_rate = "fast"\n')

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "DISPATCHER_EMAIL_RATE (config key 'email_rate')" in str(caught.value)


def test_every_bad_value_is_named_in_one_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "0")
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "twilio")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "DISPATCHER_EMAIL_RATE" in str(caught.value)
    assert "DISPATCHER_SMS_PROVIDER" in str(caught.value)


def test_unknown_key_in_the_config_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a typo in the file (it would otherwise be silently ignored and the default used)
    config(tmp_path, monkeypatch, "email_rate = 5.0\nemail_rates = 14.0\n")

    with pytest.raises(ConfigError) as caught:
        load_settings()

    assert "email_rates" in str(caught.value)
    assert "DISPATCHER_EMAIL_RATE " not in str(caught.value)


def test_config_file_that_is_not_toml_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config(tmp_path, monkeypatch, "email_rate = [\n")

    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_settings()

    assert str(path) in str(caught.value)


def test_unrelated_dispatcher_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    # DISPATCHER_CONFIG itself (set by conftest) and test-only variables must not count as unknown settings
    monkeypatch.setenv("DISPATCHER_TEST_REDIS_URL", "redis://127.0.0.1:1/0")

    assert load_settings().redis_url is None


def test_overrides_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "3")

    assert load_settings(email_rate=7).email_rate == 7.0


def test_clock_start_with_offset_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPATCHER_CLOCK_START", "2023-04-05T10:00:00+09:00")

    start = load_settings().clock_start

    assert isinstance(start, datetime)
    assert start.utcoffset() == timedelta(hours=9)


def test_settings_are_frozen() -> None:
    settings = load_settings()

    with pytest.raises(pydantic.ValidationError):
        settings.email_rate = 100.0  # type: ignore[misc]
    assert settings.email_rate is None
