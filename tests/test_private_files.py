"""Files holding receipt URLs or contacts are 0600 in 0700 folders, whatever the umask; CSV output never
follows a symbolic link; ``demo --dir`` deletes only what a demo wrote (SPEC §12, issue 11 items 9, 10)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from dispatcher.cli.demo import DEMO_MARKER, prepare_directory
from dispatcher.core.csvout import SafeCsvWriter
from dispatcher.core.errors import ConfigError

from .helpers import person_rows, write_campaign, write_csv


def _umask_022() -> None:
    os.umask(0o022)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask of a script that calls the Python API."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _too_open(root: Path) -> list[str]:
    """Every file or folder under ``root`` (itself included) that someone other than its owner may read."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if stat.S_ISSOCK(path.lstat().st_mode):
            continue  # the socket's folder guards it (checked in test_redis_server)
        if mode & 0o077:
            found.append(f"{path.relative_to(root.parent)} {mode:o}")
    return found


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enqueue_and_worker_under_umask_022_leave_only_private_files(tmp_path, dispatcher_cmd) -> None:
    # Given a list with good and bad rows, the embedded defaults (private Redis, SQLite, outbox) and umask 022
    rows = person_rows(9)
    rows[4]["email"] = "broken"
    recipients = write_csv(tmp_path / "list.csv", rows)
    campaign = write_campaign(tmp_path, "modes")
    env = os.environ.copy()
    data = Path(env["DISPATCHER_DATA_DIR"])
    # When enqueue runs, then a worker sends everything to the outbox
    enqueued = subprocess.run(
        [*dispatcher_cmd, "enqueue", str(campaign), str(recipients)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_umask_022,
    )
    assert enqueued.returncode == 3, enqueued.stderr
    worker = subprocess.Popen(
        [*dispatcher_cmd, "worker", "-p", "1", "-t", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_umask_022,
    )
    try:
        for _ in range(240):
            status = subprocess.run(
                [*dispatcher_cmd, "status", "modes", "--json"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                preexec_fn=_umask_022,
            )
            if json.loads(status.stdout)["by_status"].get("sent") == 8:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the worker did not send the campaign")
        # Then, while the worker runs (SQLite's -wal/-shm and Redis' files exist), nothing is readable by others
        assert (data / "dispatcher.db-wal").exists() and list((data / "redis").iterdir())
        # (the command set its own umask, for whatever a library creates without asking for a mode)
        umask = [
            line for line in Path(f"/proc/{worker.pid}/status").read_text().splitlines() if line.startswith("Umask")
        ]
        assert umask == ["Umask:\t0077"]
        assert _too_open(data) == []
    finally:
        worker.terminate()
        worker.wait(30)
    assert list((data / "outbox" / "email").rglob("*.eml")) and (data / "outbox" / "sms.jsonl").exists()
    assert _too_open(data) == []
    # and the rejects file beside the input is 0600 too
    assert _mode(tmp_path / "list.rejects.csv") == 0o600
    # and a report written by the command is 0600
    out = tmp_path / "report.csv"
    report = subprocess.run(
        [*dispatcher_cmd, "report", "modes", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_umask_022,
    )
    assert report.returncode == 0, report.stderr
    assert _mode(out) == 0o600


def test_python_api_under_umask_022_uses_a_running_commands_redis_and_creates_private_files(
    tmp_path, umask_022
) -> None:
    # Given a private Redis started on the data directory as a running dispatcher command would, umask 022
    import dispatcher
    from dispatcher.broker.embedded import EmbeddedRedis
    from dispatcher.core.settings import load_settings
    from dispatcher.ledger import Ledger

    settings = load_settings()
    server = EmbeddedRedis(settings.data_dir / "redis")
    url = server.start()
    try:
        rows = person_rows(6)
        rows[2]["receipt_url"] = "http://receive.example.jp/r/plain"
        recipients = write_csv(tmp_path / "api.csv", rows)
        # When a script enqueues through the Python API
        result = dispatcher.enqueue_campaign(write_campaign(tmp_path, "api"), recipients)
        # Then the work went to that Redis (found through its 0600 description file, password included)
        assert result.accepted == 5 and result.rejected == 1
        assert redis.Redis.from_url(url).keys("dispatcher:*")
        # and the ledger, its WAL files while open, the rejects and Redis' folder are private
        ledger = Ledger(settings.ledger_url)
        try:
            ledger.counts("api")
            db = settings.data_dir / "dispatcher.db"
            assert (Path(f"{db}-wal")).exists() and Path(f"{db}-shm").exists()
            assert _too_open(settings.data_dir) == []
        finally:
            ledger.dispose()
        assert _mode(tmp_path / "api.rejects.csv") == 0o600
    finally:
        server.stop()


_CRASH_WITH_A_WAL = """
import os, sqlite3, sys
os.umask(0o022)
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE leftover (x)")
db.execute("INSERT INTO leftover VALUES (1)")
os._exit(0)  # no checkpoint: the -wal and -shm files stay, with content
"""


def test_a_ledger_and_wal_left_world_readable_are_made_private_when_opened(tmp_path, umask_022) -> None:
    # Given a ledger whose process died with its WAL unmerged, all made under umask 022 (an earlier version)
    from dispatcher.ledger import Ledger

    db = tmp_path / "old" / "dispatcher.db"
    db.parent.mkdir()
    subprocess.run([sys.executable, "-c", _CRASH_WITH_A_WAL, str(db)], check=True, timeout=60)
    wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")
    assert wal.stat().st_size > 0 and {_mode(db), _mode(wal), _mode(shm)} == {0o644}
    # When the program opens it again and reads from it
    ledger = Ledger(f"sqlite:///{db}")
    try:
        ledger.counts("none")
        # Then the ledger and both WAL files are 0600
        assert (_mode(db), _mode(wal), _mode(shm)) == (0o600, 0o600, 0o600)
    finally:
        ledger.dispose()


def test_a_new_ledger_and_its_wal_files_are_private_under_umask_022(tmp_path, umask_022) -> None:
    # Given umask 022 and no ledger yet
    from dispatcher.ledger import Ledger

    db = tmp_path / "new" / "dispatcher.db"
    # When the program creates and writes it
    ledger = Ledger(f"sqlite:///{db}")
    try:
        ledger.counts("none")
        # Then the ledger and the WAL files SQLite makes beside it are 0600, in a 0700 folder
        assert _mode(db) == 0o600 and _mode(Path(f"{db}-wal")) == 0o600 and _mode(Path(f"{db}-shm")) == 0o600
        assert _mode(db.parent) == 0o700
    finally:
        ledger.dispose()


def test_csv_output_is_0600_and_an_existing_world_readable_file_is_tightened(tmp_path, umask_022) -> None:
    # Given umask 022, a new path in a folder that does not exist yet, and an existing 0644 file
    fresh = tmp_path / "new" / "deeper" / "out.csv"
    existing = tmp_path / "old.csv"
    existing.write_text("old\n")
    existing.chmod(0o644)
    # When both are written as CSV
    for path in (fresh, existing):
        with SafeCsvWriter(path, ["user_id", "receipt_url"]) as writer:
            writer.write(["U1", "https://receive.example.jp/r/x"])
    # Then both files are 0600, the folders made for them 0700, and the content is what was written
    assert _mode(fresh) == 0o600 and _mode(existing) == 0o600
    assert _mode(fresh.parent) == 0o700 and _mode(fresh.parent.parent) == 0o700
    assert existing.read_text(encoding="utf-8-sig").splitlines()[1] == "U1,https://receive.example.jp/r/x"


def test_csv_output_refuses_a_symbolic_link_at_the_target_path(tmp_path) -> None:
    # Given a symbolic link planted where a report will be written, pointing at someone's file
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = tmp_path / "report.csv"
    target.symlink_to(victim)
    # When a CSV is written there
    with pytest.raises(ConfigError) as refused:
        SafeCsvWriter(target, ["user_id"])
    # Then it is refused with a message naming the path, and the linked file is untouched
    assert str(target) in str(refused.value) and "symbolic link" in str(refused.value)
    assert victim.read_text() == "precious\n"


def test_report_command_refuses_a_symbolic_link_with_exit_2(tmp_path, dispatcher_cmd) -> None:
    # Given a campaign in the ledger and a symbolic link at the report's path
    from dispatcher.intake.enqueue import enqueue_campaign

    enqueue_campaign(write_campaign(tmp_path, "link"), person_rows(2), dispatch=lambda ids: None)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = tmp_path / "report.csv"
    target.symlink_to(victim)
    # When the operator runs report --out on it
    result = subprocess.run(
        [*dispatcher_cmd, "report", "link", "--out", str(target)],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then the command exits 2 naming the path, and nothing was written through the link
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert "symbolic link" in message and "report.csv" in message and victim.read_text() == "precious\n"


def test_outbox_files_are_private_under_umask_022(tmp_path, umask_022) -> None:
    # Given the outbox providers writing into a folder that does not exist yet, umask 022
    from datetime import UTC, datetime

    from dispatcher.core.settings import load_settings
    from dispatcher.providers.base import OutgoingEmail, OutgoingSms
    from dispatcher.providers.outbox import EmailOutbox, SmsOutbox

    settings = load_settings(outbox_dir=tmp_path / "box")
    url = "https://receive.example.jp/r/x"
    email = OutgoingEmail("1.1", "c1", "a@example.jp", f"To: a@example.jp\r\n\r\n{url}\r\n".encode())
    sms = OutgoingSms("2.1", "c1", "+819012345678", url, 1, datetime(2099, 1, 1, tzinfo=UTC))
    # When one e-mail and one SMS are "sent"
    SmsOutbox(settings)._send(sms)
    EmailOutbox(settings)._send(email)
    # Then every file and folder of the outbox is its owner's only
    assert (tmp_path / "box" / "sms.jsonl").exists() and list((tmp_path / "box").rglob("*.eml"))
    assert _too_open(tmp_path / "box") == []
    # And when the outbox is removed during the run, the next sends make it again, as private
    shutil.rmtree(tmp_path / "box")
    EmailOutbox(settings)._send(OutgoingEmail("1.2", "c1", "a@example.jp", email.raw))
    SmsOutbox(settings)._send(OutgoingSms("2.2", "c1", "+819012345678", url, 1, sms.expires_at))
    assert [p.name for p in (tmp_path / "box").rglob("*.eml")] == ["1.2.eml"]
    assert (tmp_path / "box" / "sms.jsonl").read_text().count("\n") == 1
    assert _too_open(tmp_path / "box") == []


# demo --dir --------------------------------------------------------------------------------------------
def test_demo_refuses_a_non_empty_folder_it_did_not_make(tmp_path, dispatcher_cmd) -> None:
    # Given a folder of the user's with a file in it
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_bytes(b"\xff\xd8")
    # When the demo is pointed at it
    result = subprocess.run(
        [*dispatcher_cmd, "demo", "--size", "10", "--dir", str(folder)],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then it exits 2 saying why, and the file is still there
    assert result.returncode == 2, result.stdout + result.stderr
    message = " ".join(result.stderr.split())  # the console wraps long lines
    assert "not empty" in message and "nothing was deleted" in message
    assert (folder / "holiday.jpg").read_bytes() == b"\xff\xd8"


def test_demo_clears_its_own_previous_folder_but_not_a_file_added_to_it(tmp_path, umask_022) -> None:
    # Given a folder a previous demo made (marker and the demo's own files)
    folder = tmp_path / "demo"
    prepare_directory(folder)
    (folder / "recipients.csv").write_text("old\n")
    (folder / "outbox" / "email").mkdir(parents=True)
    # When the next demo prepares it
    prepare_directory(folder)
    # Then only the new marker is left, in a 0700 folder
    assert sorted(os.listdir(folder)) == [DEMO_MARKER] and _mode(folder) == 0o700
    # Given the user then added a file of their own
    (folder / "notes.txt").write_text("mine\n")
    # When the demo prepares it again
    with pytest.raises(ConfigError, match="did not write"):
        prepare_directory(folder)
    # Then that file and the folder's content are untouched
    assert sorted(os.listdir(folder)) == [DEMO_MARKER, "notes.txt"]


def test_demo_uses_an_empty_or_missing_folder_and_refuses_a_link(tmp_path) -> None:
    # Given an empty folder, a missing one and a link to a folder
    empty, missing, link = tmp_path / "empty", tmp_path / "missing" / "demo", tmp_path / "link"
    empty.mkdir()
    link.symlink_to(empty)
    # When the demo prepares them
    prepare_directory(empty)
    prepare_directory(missing)
    # Then the first two become demo folders, the link is refused
    assert (empty / DEMO_MARKER).is_file() and (missing / DEMO_MARKER).is_file()
    with pytest.raises(ConfigError, match="not a folder"):
        prepare_directory(link)
