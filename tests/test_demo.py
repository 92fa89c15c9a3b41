"""The README's first command: the demo runs on embedded defaults and exits by itself."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_on_embedded_defaults(tmp_path, dispatcher_cmd) -> None:
    # Given no Redis URL, no AWS and no database settings at all
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISPATCHER_", "AWS_"))}
    demo_dir = tmp_path / "demo"
    # When the demo runs
    result = subprocess.run(
        [*dispatcher_cmd, "demo", "--size", "60", "--dir", str(demo_dir)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    # Then it exits 0 by itself, every good person has a message in the outbox, bad rows are reported
    assert result.returncode == 0, result.stdout + result.stderr
    emails = list((demo_dir / "outbox" / "email").rglob("*.eml"))
    sms_lines = (demo_dir / "outbox" / "sms.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(emails) + len(sms_lines) == 60
    assert all(json.loads(line)["from"] == "03-5244-9370" for line in sms_lines)
    rejects = (demo_dir / "recipients.rejects.csv").read_text(encoding="utf-8-sig").splitlines()
    assert len(rejects) == 1 + 10
    assert "sent" in result.stdout and str(demo_dir / "outbox") in result.stdout
    # and its private Redis is gone
    assert not (demo_dir / "redis" / "redis.json").exists()  # the description holding its password
