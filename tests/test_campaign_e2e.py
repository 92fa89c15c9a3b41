"""A whole campaign through the installed command: CP932 list in, one message per person out.

Real Redis, real worker processes, SES and SNS on a moto server over HTTP, SQLite and PostgreSQL ledgers.
"""

from __future__ import annotations

import csv
import email
import json
import os
import re
import subprocess
import time
from email import policy
from pathlib import Path

import boto3
import pytest

from .helpers import write_campaign

pytestmark = pytest.mark.slow

GOOD = [
    # user_id, name, email, phone, receipt_url
    ("A001", "佐藤 太郎", "taro..yamada.@docomo.ne.jp", "", "https://receive.example.jp/r/a001"),
    ("A002", "鈴木 花子", "hanako@ezweb.ne.jp", "090-1111-2222", "https://receive.example.jp/r/a002"),
    ("A003", "高橋 健", "", "０８０－３３３３－４４４４", "https://receive.example.jp/r/a003"),
    ("A004", "田中 美咲", "", "+81 70 5555 6666", "https://receive.example.jp/r/a004"),
    ("A005", "伊藤 翔", "ＳＨＯ@example.jp", "", "https://receive.example.jp/r/a005"),
    ("A006", "渡辺 陽菜", "miss.@ezweb.ne.jp", "", "https://receive.example.jp/r/a006"),
    ("A007", "山本 大輔", "", "09077778888", "https://receive.example.jp/r/a007"),
]
BAD = [
    ("B001", "無効メール", "not-an-address", "", "https://receive.example.jp/r/b001", "email"),
    ("B002", "固定電話", "", "03-5244-9370", "https://receive.example.jp/r/b002", "phone"),
    ("B003", "http", "b3@example.jp", "", "http://receive.example.jp/r/b003", "receipt_url"),
    ("B004", "他ホスト", "b4@example.jp", "", "https://phish.example.com/r/b004", "receipt_url"),
    ("B005", "連絡先なし", "", "", "https://receive.example.jp/r/b005", "email/phone"),
    ("", "ID無し", "b6@example.jp", "", "https://receive.example.jp/r/b006", "user_id"),
    ("B007", "IP電話", "", "050-1234-5678", "https://receive.example.jp/r/b007", "phone"),
    ("A001", "重複", "dup@example.jp", "", "https://receive.example.jp/r/b008", "user_id"),
    ("B009", "URLなし", "b9@example.jp", "", "", "receipt_url"),
    ("B010", "フリーダイヤル", "", "0120-479-249", "https://receive.example.jp/r/b010", "phone"),
    ("B011", "全角メール", "山田@example.jp", "", "https://receive.example.jp/r/b011", "email"),
    ("B012", "共通URL", "b12@example.jp", "", "https://receive.example.jp/", "receipt_url"),
]


def write_list(path: Path) -> None:
    lines = ["user_id,name,email,phone,receipt_url,amount,category"]
    for uid, name, mail, phone, url in GOOD:
        lines.append(f"{uid},{name},{mail},{phone},{url},1200,A")
    for uid, name, mail, phone, url, _ in BAD:
        lines.append(f"{uid},{name},{mail},{phone},{url},1200,A")
    # Excel on Japanese Windows writes CP932.
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("cp932"))


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ.copy(), **kw)


def wait_until_settled(cmd: list[str], campaign: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = json.loads(run([*cmd, "status", campaign, "--json"]).stdout)
        pending = sum(n for s, n in status["by_status"].items() if s in ("queued", "sending", "retrying"))
        if pending == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


@pytest.mark.parametrize("ledger_url", ["sqlite", "postgresql"], indirect=True)
def test_campaign_end_to_end(tmp_path, redis_url, moto, ledger_url, dispatcher_cmd, monkeypatch) -> None:
    # Given a CP932 list with good people and many kinds of bad row, SES and SNS on moto
    monkeypatch.setenv("DISPATCHER_EMAIL_PROVIDER", "ses")
    monkeypatch.setenv("DISPATCHER_SMS_PROVIDER", "sns")
    boto3.client("sesv2").create_email_identity(EmailIdentity="giftpad.jp")
    campaign = write_campaign(tmp_path, "e2e")
    recipients = tmp_path / "list.csv"
    write_list(recipients)
    rejects = tmp_path / "rejects.csv"

    # When the operator enqueues it
    result = run([*dispatcher_cmd, "enqueue", str(campaign), str(recipients), "--rejects", str(rejects)])
    # Then some rows were rejected (exit 3) and the good ones are queued
    assert result.returncode == 3, result.stderr
    with rejects.open(encoding="utf-8-sig", newline="") as fh:
        rejected = list(csv.DictReader(fh))
    assert rejects.read_bytes().startswith(b"\xef\xbb\xbf")
    assert len(rejected) == len(BAD)
    for (uid, _, _, _, _, field), row in zip(BAD, rejected, strict=True):
        assert row["user_id"] == uid
        assert row["reason"].startswith(field + ":"), row["reason"]
    assert [int(r["row"]) for r in rejected] == list(range(len(GOOD) + 2, len(GOOD) + len(BAD) + 2))

    # And running it again adds nothing (idempotent)
    again = run([*dispatcher_cmd, "enqueue", str(campaign), str(recipients), "--rejects", str(rejects)])
    assert again.returncode == 3
    assert re.search(r"already in the campaign\s+│?\s*7", again.stdout), again.stdout

    # And every delivery is put on the broker a second time (as a redelivery would)
    swept = run([*dispatcher_cmd, "sweep"])
    assert "re-enqueued 7" in swept.stdout, swept.stdout + swept.stderr

    # When two worker processes with several threads work the queue
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        worker = subprocess.Popen(
            [*dispatcher_cmd, "worker", "--processes", "2", "--threads", "4"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=os.environ.copy(),
        )
        try:
            status = wait_until_settled(dispatcher_cmd, "e2e")
        finally:
            worker.terminate()
            worker.wait(30)

    # Then each good person got exactly one message, on their channel, with their own URL
    assert status == {
        "campaign": "e2e",
        "total": 7,
        "by_status": {"sent": 7},
        "by_channel": {"email": {"sent": 4}, "sms": {"sent": 3}},
        "redeemed": 0,
        "reminders": {},
    }
    emails = moto.sent_emails()
    by_to: dict[str, list] = {}
    for sent in emails:
        parsed = email.message_from_string(sent["raw_data"], policy=policy.default)
        by_to.setdefault(str(parsed["To"]), []).append(parsed)
    assert sorted(by_to) == sorted(
        ["taro..yamada.@docomo.ne.jp", "hanako@ezweb.ne.jp", "SHO@example.jp", "miss.@ezweb.ne.jp"]
    )
    urls = {m: u for _, _, m, _, u in GOOD}
    urls["SHO@example.jp"] = urls.pop("ＳＨＯ@example.jp")
    for to, messages in by_to.items():
        assert len(messages) == 1, f"{to} got {len(messages)} messages"
        [message] = messages
        assert message["From"].addresses[0].addr_spec == "regionpay_compensation_ml@giftpad.jp"
        body = message.get_body(("plain",)).get_content()
        assert urls[to] in body and "受取サイト" in str(message["Subject"])
        others = [u for m, u in urls.items() if m != to and u]
        assert not any(u + "\n" in body for u in others)
    sms = moto.sent_sms()
    assert sorted(s["phone_number"] for s in sms) == ["+817055556666", "+818033334444", "+819077778888"]
    sms_urls = {"+818033334444": "a003", "+817055556666": "a004", "+819077778888": "a007"}
    for s in sms:
        assert s["message"].count("https://receive.example.jp/r/") == 1
        assert f"/r/{sms_urls[s['phone_number']]}" in s["message"]

    # And no log line carries a receipt URL or a full contact
    logs = log_path.read_text() + result.stdout + result.stderr + swept.stdout + swept.stderr
    assert "dispatcher.sending.delivery" in logs  # the worker did log
    for _, _, mail, _, url in GOOD:
        assert url not in logs
        if mail:
            assert mail.split("@")[0] + "@" not in logs
    for number in ("09011112222", "+819011112222", "+818033334444", "+817055556666", "+819077778888"):
        assert number not in logs
