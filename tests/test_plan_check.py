"""plan and check: projections against send_by, preflight findings and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import datetime, time

from dispatcher.core.campaign import SmsWindow
from dispatcher.core.clock import JST
from dispatcher.core.settings import load_settings
from dispatcher.operations.check import Level, run_checks, sms_route_finding
from dispatcher.operations.plan import finish_time

from .helpers import person_rows, write_campaign, write_csv

START = datetime(2023, 4, 5, 10, 0, tzinfo=JST)


def test_finish_at_a_steady_rate() -> None:
    assert finish_time(3600, 1.0, None, START) == datetime(2023, 4, 5, 11, 0, tzinfo=JST)


def test_sms_only_inside_the_window() -> None:
    # 11 hours of work at 1/s, window 09:00-20:00: 10 h today, the last hour tomorrow morning
    window = SmsWindow(time(9, 0), 20 * 60)
    assert finish_time(11 * 3600, 1.0, None, START, window) == datetime(2023, 4, 6, 10, 0, tzinfo=JST)


def test_daily_quota_spreads_work_over_days() -> None:
    # 150,000 at 10/s with 50,000 a day: three quota days, the last one 5,000 s long
    assert finish_time(150_000, 10.0, 50_000, START) == datetime(2023, 4, 7, 11, 23, 20, tzinfo=JST)


def test_no_cap_means_now() -> None:
    assert finish_time(10_000, None, None, START) == START


def test_aws_sms_route_cannot_show_the_announced_number(monkeypatch) -> None:
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    finding = sms_route_finding(load_settings())
    assert finding.level is Level.WARN
    assert "03-5244-9370" in finding.reason and "international" in finding.reason


def test_check_fails_when_rates_cannot_finish_before_send_by(tmp_path, monkeypatch) -> None:
    # Given 300 e-mails at one every 100 s and a send_by one hour away
    from datetime import timedelta

    from dispatcher.core import clock

    monkeypatch.setenv("DISPATCHER_EMAIL_RATE", "0.01")
    soon = (clock.now() + timedelta(hours=1)).replace(microsecond=0).isoformat()
    campaign = write_campaign(tmp_path, send_by=soon)
    recipients = write_csv(tmp_path / "list.csv", person_rows(300, sms_every=1000))
    # When the preflight runs, Then the deadline finding fails and says why
    findings = {f.name: f for f in run_checks(campaign, recipients, load_settings())}
    assert findings["send_by"].level is Level.PASS
    assert findings["deadline"].level is Level.FAIL
    assert "cannot finish" in findings["deadline"].reason
    assert findings["templates"].level is Level.PASS


def test_check_fails_when_send_by_has_passed(tmp_path) -> None:
    campaign = write_campaign(tmp_path, send_by="2023-05-28T20:00:00+09:00", deadline="2023-05-31T23:59:59+09:00")
    findings = {f.name: f for f in run_checks(campaign, None, load_settings())}
    assert findings["send_by"].level is Level.FAIL


def test_check_command_exit_codes(tmp_path, dispatcher_cmd) -> None:
    env = {k: v for k, v in os.environ.items()}
    good = write_campaign(tmp_path)
    recipients = write_csv(tmp_path / "list.csv", person_rows(20))
    result = subprocess.run(
        [*dispatcher_cmd, "check", str(good), str(recipients), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    findings = {f["check"]: f for f in json.loads(result.stdout)}
    assert findings["recipients"]["result"] == "pass"
    assert "parts" in findings["sms length"]["reason"]
    # A campaign whose templates use an unknown variable fails the check
    broken = tmp_path / "templates" / "compensation" / "sms.txt"
    broken.write_text("{{ no_such_variable }} {{ receipt_url }}", encoding="utf-8")
    result = subprocess.run(
        [*dispatcher_cmd, "check", str(good), str(recipients)], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1
    assert "no_such_variable" in result.stdout
