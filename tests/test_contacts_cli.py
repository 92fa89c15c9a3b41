"""The call-centre situations end to end, as an operator runs them: the `dispatcher` command, a real worker
process, a real SMTP server that refuses some addresses, SMS to the outbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .contacts_support import SmtpServer, fallback_campaign, row, smtp
from .helpers import write_csv

__all__ = ["smtp"]


def _wait(what: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if what():
            return
        time.sleep(0.3)
    raise AssertionError("timed out waiting")


def test_fallback_resend_and_corrections_from_the_command_line(
    tmp_path: Path, redis_url: str, smtp: SmtpServer, dispatcher_cmd: list[str]
) -> None:
    smtp.mailbox.refuse.update({"gone@example.jp", "gone2@example.jp"})
    outbox = tmp_path / "outbox"
    env = {
        **os.environ,
        "DISPATCHER_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "DISPATCHER_EMAIL_PROVIDER": "smtp",
        "DISPATCHER_SMTP_URL": smtp.url,
        "DISPATCHER_SMS_PROVIDER": "outbox",
        "DISPATCHER_OUTBOX_DIR": str(outbox),
        "USER": "sato",
    }

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*dispatcher_cmd, *args], env=env, input=stdin, capture_output=True, text=True, timeout=120
        )

    def sms() -> list[dict]:
        path = outbox / "sms.jsonl"
        return [json.loads(x) for x in path.read_text("utf-8").splitlines()] if path.exists() else []

    def status() -> dict:
        return json.loads(run("status", "cc", "--json").stdout)

    # Given a fallback campaign: a refused address with a phone, a good one, a refused one without a phone
    campaign = fallback_campaign(tmp_path, "cc")
    people = [
        row("R", email="gone@example.jp", phone="090-1111-2222"),
        row("S", email="s@example.jp"),
        row("T", email="gone2@example.jp"),
    ]
    assert run("enqueue", str(campaign), str(write_csv(tmp_path / "list.csv", people))).returncode == 0
    worker = subprocess.Popen(
        [*dispatcher_cmd, "worker", "-p", "1", "-t", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # Then the refused e-mail with a phone falls back to exactly one SMS; the other refused one fails
        _wait(lambda: status()["by_channel"].get("sms", {}).get("sent") == 1)
        _wait(lambda: status()["by_channel"]["email"].get("failed") == 1 and smtp.mailbox.to("s@example.jp") == 1)
        assert [m["to"] for m in sms()] == ["+819011112222"]

        # An invalid new address is a usage error; an unknown person is not found; a "no" changes nothing
        bad = run("resend", "cc", "--user", "S", "--email", "invalid", "--reason", "x", "--yes")
        assert bad.returncode == 2 and "email" in bad.stderr + bad.stdout
        assert run("resend", "cc", "--user", "NOBODY", "--reason", "x", "--yes").returncode == 1
        no = run("resend", "cc", "--user", "S", "--email", "s2@example.jp", "--reason", "x", stdin="n\n")
        assert no.returncode == 1
        assert status()["by_status"] == {"sent": 2, "failed": 1}

        # When the operator resends S to a new address ("it never arrived")
        done = run("resend", "cc", "--user", "S", "--email", "s2@example.jp", "--reason", "never arrived", "--yes")
        assert done.returncode == 0, done.stderr
        assert "s2@example.jp" not in done.stdout and "s2***@example.jp" in done.stdout
        _wait(lambda: smtp.mailbox.to("s2@example.jp") == 1)

        # And a corrections file re-sends the refused T to their new address, leaving the sent S alone (listed)
        fixes = write_csv(
            tmp_path / "fixes.csv",
            [{"user_id": "T", "email": "t2@example.jp"}, {"user_id": "S", "email": "s3@example.jp"}],
        )
        applied = run("enqueue", str(campaign), str(fixes), "--update-contacts")
        assert applied.returncode == 0, applied.stderr
        assert "S" in applied.stdout and "sent" in applied.stdout and "resend" in applied.stdout
        _wait(lambda: smtp.mailbox.to("t2@example.jp") == 1)
        rejected = run(
            "enqueue",
            str(campaign),
            str(write_csv(tmp_path / "x.csv", [{"user_id": "Q", "email": "q@example.jp"}])),
            "--update-contacts",
        )
        assert rejected.returncode == 3
        time.sleep(2)  # anything more would have gone by now
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(60)
    # Exactly one message to each new address; nothing more to the old ones
    assert smtp.mailbox.to("s@example.jp") == 1 and smtp.mailbox.to("s2@example.jp") == 1
    assert smtp.mailbox.to("s3@example.jp") == 0 and smtp.mailbox.to("t2@example.jp") == 1
    assert sorted(smtp.mailbox.refused) == ["gone2@example.jp", "gone@example.jp"]
    assert len(sms()) == 1
    final = status()
    assert final["by_channel"] == {"email": {"sent": 2}, "sms": {"sent": 1}}
    # And the history names the operator and the reason
    from dispatcher.ledger import Ledger

    ledger = Ledger(env["DISPATCHER_DATABASE_URL"])
    person = ledger.person_by_user("cc", "S")
    acts = [h for h in ledger.history(person.id) if h["actor"].startswith("operator:")]
    assert [(h["actor"], h["from_status"], h["to_status"]) for h in acts] == [("operator:sato", "sent", "queued")]
    assert "never arrived" in acts[0]["detail"] and "s2@" not in acts[0]["detail"]
    fallback = ledger.person_by_user("cc", "R")
    assert [h["actor"] for h in ledger.history(fallback.id)].count("fallback") == 1
    ledger.dispose()
