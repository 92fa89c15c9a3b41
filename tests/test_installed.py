"""What a user installs really runs: the package without its test extras, driven as an operator drives it.

Once per test session the project is installed (``pip install -c requirements.lock <repo>``, not editable,
no extras) into a fresh virtualenv; every command and every HTTP route is then run once through that
virtualenv's ``dispatcher`` script, from a folder outside the repository, with nothing of the test
environment on its path. A module that imports something only the test extra brings fails here.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import json
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from .helpers import CAMPAIGN_TOML, person_rows, write_csv
from .services import MotoService, free_port, missing

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ROOT / "tests" / "data" / "events"
CAMPAIGN = "smoke"
TOPIC = "arn:aws:sns:ap-northeast-1:123456789012:dispatcher-feedback"
#: What must never show up in any command's stderr.
CRASH_MARKERS = ("Traceback (most recent call last)", "ModuleNotFoundError", "ImportError")


# The installed package -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    venv: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    @property
    def dispatcher(self) -> str:
        return str(self.bin / "dispatcher")


def _pip_install(venv: Path) -> subprocess.CompletedProcess[str]:
    # Not editable and no extras: exactly what `pip install .` gives a user (pip's wheel cache keeps it fast).
    return subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(ROOT / "requirements.lock"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=venv,
    )


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    venv = tmp_path_factory.mktemp("installed") / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        missing("a fresh virtualenv", made.stderr.strip()[-500:])
    result = _pip_install(venv)
    if result.returncode != 0:
        missing("the installed package", f"pip install failed: {result.stderr.strip()[-1500:]}")
    return Installed(venv)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working folder outside the repository: nothing there can shadow the installed package."""
    folder = tmp_path / "operator"
    folder.mkdir()
    assert ROOT not in folder.resolve().parents
    return folder


def base_env(installed: Installed, work: Path, **extra: str) -> dict[str, str]:
    """Only what an operator's shell has: the virtualenv's bin (so no system redis-server: the embedded
    Redis is the one the package brings), a home, a locale; no PYTHONPATH, nothing from the test run."""
    home = work / "home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": str(installed.bin),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "COLUMNS": "200",
        "DISPATCHER_DATA_DIR": str(work / "var"),
    }
    env.update(extra)
    return env


def run(
    installed: Installed, args: list[str], env: dict[str, str], cwd: Path, *, code: int = 0, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [installed.dispatcher, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == code, (
        f"dispatcher {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    assert_no_crash(args, result.stderr)
    return result


def assert_no_crash(args: list[str], stderr: str) -> None:
    for marker in CRASH_MARKERS:
        assert marker not in stderr, f"dispatcher {' '.join(args)}: {marker} in stderr:\n{stderr[-3000:]}"


def test_every_module_of_the_installed_package_imports_without_the_test_extras(
    installed: Installed, outside: Path
) -> None:
    # Given the package installed without extras, run from a folder outside the repository
    probe = (
        "import importlib, json, pkgutil, dispatcher\n"
        "names = [m.name for m in pkgutil.walk_packages(dispatcher.__path__, 'dispatcher.')]\n"
        "bad = {}\n"
        "for name in names:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        bad[name] = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps({'file': dispatcher.__file__, 'modules': len(names), 'bad': bad}))\n"
    )
    # actors.py wants a broker URL at import; it is never contacted here
    env = base_env(installed, outside, DISPATCHER_REDIS_URL="redis://127.0.0.1:9/0")
    # When every module of the package is imported
    result = subprocess.run(
        [str(installed.bin / "python"), "-c", probe], capture_output=True, text=True, env=env, cwd=outside, timeout=120
    )
    # Then each one imports, from the virtualenv (not from the checkout), and pip finds nothing missing
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["bad"] == {}
    assert found["modules"] > 40
    assert Path(found["file"]).is_relative_to(installed.venv)
    check = subprocess.run(
        [str(installed.bin / "python"), "-m", "pip", "check"],
        capture_output=True,
        text=True,
        env=env,
        cwd=outside,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # and the test-only packages really are absent, so the imports above proved something
    for test_only in ("pytest", "moto", "hypothesis", "aiosmtpd", "playwright"):
        absent = subprocess.run(
            [str(installed.bin / "python"), "-c", f"import {test_only}"],
            capture_output=True,
            env=env,
            cwd=outside,
            timeout=60,
        )
        assert absent.returncode != 0, f"{test_only} is installed without the test extra"


def test_help_and_demo_run_from_the_installed_package(installed: Installed, outside: Path) -> None:
    # Given the installed command and no settings at all
    env = base_env(installed, outside)
    # When an operator asks for help and runs the demo
    helped = run(installed, ["--help"], env, outside)
    demo = run(installed, ["demo", "--size", "30", "--dir", str(outside / "demo")], env, outside)
    # Then help lists every command of SPEC §9, and the demo sends its sample campaign and says where to look
    for verb in (
        "cancel",
        "check",
        "dashboard",
        "demo",
        "enqueue",
        "events",
        "pause",
        "plan",
        "report",
        "resend",
        "resume",
        "status",
        "suppression",
        "sweep",
        "worker",
    ):
        assert verb in helped.stdout
    assert "sent" in demo.stdout and str(outside / "demo" / "outbox") in demo.stdout
    assert list((outside / "demo" / "outbox").rglob("*"))


def test_the_installed_package_speaks_japanese_to_office_staff(installed: Installed, outside: Path) -> None:
    # Given the installed command on a Japanese office PC (the OS need not have the ja_JP locale), and on an
    # English one
    ja = base_env(installed, outside, LANG="ja_JP.UTF-8")
    en = base_env(installed, outside)
    # When help is asked for and a command is used wrongly
    helped = run(installed, ["--help"], ja, outside)
    sub = run(installed, ["status", "--help"], ja, outside)
    english = run(installed, ["--help"], en, outside)
    forced = run(installed, ["--help"], {**ja, "DISPATCHER_LANG": "en"}, outside)
    refused = [run(installed, ["status"], env, outside, code=2) for env in (ja, en)]
    # Then the catalogue shipped in the package makes help and errors Japanese, click's own texts included
    assert "使い方:" in helped.stdout and "このヘルプを表示して終了します。" in helped.stdout
    assert "配信の件数を状態別・チャネル別に表示します。" in helped.stdout and "Usage:" not in helped.stdout
    assert "機械処理用の出力" in sub.stdout
    assert "エラー: 引数が足りません" in refused[0].stderr and "Error: Missing argument" in refused[1].stderr
    # and English stays the default, and DISPATCHER_LANG=en wins over the locale
    for page in (english, forced):
        assert "Usage:" in page.stdout and "使い方" not in page.stdout


# A campaign through every command ---------------------------------------------------------------


def write_deployment(work: Path) -> Path:
    """A deployment's own tree with one campaign file and no templates folder: the installed package's
    templates must be found."""
    path = work / "config" / "campaigns" / f"{CAMPAIGN}.toml"
    path.parent.mkdir(parents=True)
    path.write_text(
        CAMPAIGN_TOML.format(
            id=CAMPAIGN,
            prefer="email",
            deadline="2099-05-31T23:59:59+09:00",
            send_by="2099-05-28T20:00:00+09:00",
            window='["00:00", "24:00"]',
        ),
        encoding="utf-8",
    )
    return path


def status_of(installed: Installed, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run(installed, ["status", CAMPAIGN, "--json"], env, cwd).stdout)
    return data


def run_worker_until_sent(installed: Installed, env: dict[str, str], cwd: Path, timeout: float = 150) -> dict[str, Any]:
    """Start `dispatcher worker`, wait until nothing is left to send, stop it with SIGTERM as systemd does."""
    log = cwd / "worker.stderr"
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [installed.dispatcher, "worker", "--processes", "1", "--threads", "2"],
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + timeout
            while True:
                status = status_of(installed, env, cwd)
                waiting = sum(n for s, n in status["by_status"].items() if s in ("queued", "sending", "retrying"))
                if waiting == 0 or time.monotonic() > deadline or worker.poll() is not None:
                    break
                time.sleep(0.5)
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            code = worker.wait(timeout=90)
    assert_no_crash(["worker"], log.read_text())
    assert code == 0, log.read_text()[-3000:]
    return status


def ses_event(name: str, message_id: str, recipient: str) -> str:
    """An SES event from the fixture files about ``message_id`` (no reference tag: matched by message id)."""
    now = datetime.now(UTC)
    text = (EVENTS / f"{name}.json").read_text(encoding="utf-8")
    for key, value in {
        "{recipient}": recipient,
        "{message_id}": message_id,
        "{reference}": "",
        "{campaign}": CAMPAIGN,
        "{at}": now.isoformat().replace("+00:00", "Z"),
        "{sent_at}": (now - timedelta(seconds=5)).isoformat().replace("+00:00", "Z"),
    }.items():
        text = text.replace(key, value)
    json.loads(text)
    return text


def read_report(path: Path) -> list[dict[str, str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), "the report is not UTF-8 with a BOM"
    return list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))


def test_a_campaign_through_every_command_of_the_installed_package(
    installed: Installed, outside: Path, moto: MotoService
) -> None:
    # Given a deployment tree outside the repository, SES and SNS on the tests' moto server, the embedded Redis
    env = base_env(
        installed,
        outside,
        DISPATCHER_EMAIL_PROVIDER="ses",
        DISPATCHER_SMS_PROVIDER="sns",
        AWS_ENDPOINT_URL=moto.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="ap-northeast-1",
    )
    boto3.client(
        "sesv2",
        endpoint_url=moto.url,
        region_name="ap-northeast-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_email_identity(EmailIdentity="giftpad.jp")
    campaign = write_deployment(outside)
    rows = person_rows(9)  # six by e-mail, three by SMS
    (outside / "lists").mkdir()
    good = write_csv(outside / "lists" / "good.csv", rows)
    more = [
        *person_rows(2, start=10, sms_every=100),
        {
            "user_id": "BAD1",
            "name": "x",
            "email": "not-an-address",
            "phone": "",
            "receipt_url": "https://receive.example.jp/r/bad1",
            "amount": "1",
            "category": "A",
        },
        {
            "user_id": "BAD2",
            "name": "y",
            "email": "b2@example.jp",
            "phone": "",
            "receipt_url": "https://phish.example.com/r/bad2",
            "amount": "1",
            "category": "A",
        },
    ]
    mixed = write_csv(outside / "lists" / "mixed.csv", more)

    # When the list is checked and enqueued, then a second list with bad rows
    checked = run(installed, ["check", str(campaign), str(good)], env, outside)
    run(installed, ["enqueue", str(campaign), str(good)], env, outside)
    rejects = outside / "lists" / "mixed.rejects.csv"
    run(installed, ["enqueue", str(campaign), str(mixed), "--rejects", str(rejects)], env, outside, code=3)
    # Then check passed, the good rows are queued and the rejects file names each bad row and why
    assert "fail" not in checked.stdout.lower().replace("failed", "")
    with rejects.open(encoding="utf-8-sig", newline="") as f:
        rejected = list(csv.DictReader(f))
    assert [(r["user_id"], r["row"]) for r in rejected] == [("BAD1", "4"), ("BAD2", "5")]
    assert all(r["reason"] for r in rejected)
    queued = status_of(installed, env, outside)
    assert queued["campaign"] == CAMPAIGN and queued["total"] == 11
    assert queued["by_status"] == {"queued": 11}
    assert sum(queued["by_channel"]["sms"].values()) == 3
    table = run(installed, ["status", CAMPAIGN], env, outside).stdout
    assert "queued" in table and "11" in table
    assert "can finish before send_by" in run(installed, ["plan", CAMPAIGN], env, outside).stdout

    # When a worker runs until nothing is left to send
    sent = run_worker_until_sent(installed, env, outside)
    # Then every person got exactly one message through the real providers (moto)
    assert sent["by_status"] == {"sent": 11}, sent
    assert len(moto.sent_emails()) == 8 and len(moto.sent_sms()) == 3
    assert "re-enqueued 0" in run(installed, ["sweep"], env, outside).stdout

    # When the report is written
    report = outside / "reports" / "smoke.csv"
    report.parent.mkdir()
    run(installed, ["report", CAMPAIGN, "--out", str(report)], env, outside)
    # Then it has one row per delivery with the provider's id, and no receipt URL or full contact
    by_user = {r["user_id"]: r for r in read_report(report)}
    assert len(by_user) == 11 and all(r["status"] == "sent" and r["provider_message_id"] for r in by_user.values())
    text = report.read_text(encoding="utf-8-sig")
    assert "receive.example.jp" not in text and "user1@example.jp" not in text

    # When the call centre looks a caller up by their phone, typed in full-width digits, and an unknown user
    found = run(installed, ["person", CAMPAIGN, "--contact", "０９０１００００００３", "--json"], env, outside)
    run(installed, ["person", CAMPAIGN, "--user", "NOBODY"], env, outside, code=1)
    # Then the person is found, sent, with the provider's id, and neither the number nor the URL is printed
    desk = json.loads(found.stdout)
    assert (desk["user_id"], desk["status"], desk["contact"]) == ("U000003", "sent", "090-****-0003")
    assert desk["provider_message_ids"] and desk["history"][-1]["to"] == "sent"
    assert "10000003" not in found.stdout and "receive.example.jp" not in found.stdout

    # When SES says one e-mail was delivered and another soft-bounced, through SQS (SNS -> SQS raw delivery)
    sqs = boto3.client(
        "sqs",
        endpoint_url=moto.url,
        region_name="ap-northeast-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    queue_url = sqs.create_queue(QueueName="dispatcher-feedback")["QueueUrl"]
    for user, name in (("U000001", "ses_delivery"), ("U000002", "ses_bounce_transient")):
        record = ses_event(name, by_user[user]["provider_message_id"], f"user{int(user[1:])}@example.jp")
        envelope = {
            "Type": "Notification",
            "MessageId": secrets.token_hex(8),
            "TopicArn": TOPIC,
            "Message": record,
            "Timestamp": datetime.now(UTC).isoformat(),
        }
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(envelope))
    events_env = {**env, "DISPATCHER_FEEDBACK_QUEUE_URL": queue_url}
    drained = run(installed, ["events", "--once"], events_env, outside)
    # Then both are applied and the queue is empty
    assert "messages 2" in drained.stdout, drained.stdout
    after = status_of(installed, env, outside)["by_status"]
    assert after == {"sent": 9, "delivered": 1, "bounced": 1}, after
    assert "messages 0" in run(installed, ["events", "--once"], events_env, outside).stdout

    # When the soft bounce is resent, first as a dry run
    preview = run(installed, ["resend", CAMPAIGN, "--status", "bounced", "--dry-run"], env, outside)
    assert "would resend 1" in preview.stdout
    assert status_of(installed, env, outside)["by_status"]["bounced"] == 1
    done = run(installed, ["resend", CAMPAIGN, "--status", "bounced", "--yes"], env, outside)
    # Then it is queued again (and nothing else moved)
    assert "re-queued 1" in done.stdout
    assert status_of(installed, env, outside)["by_status"] == {"sent": 9, "delivered": 1, "queued": 1}

    # When the campaign is paused, resumed and then cancelled before a worker picks the resend up
    paused = run(installed, ["pause", CAMPAIGN], env, outside)
    resumed = run(installed, ["resume", CAMPAIGN], env, outside)
    cancelled = run(installed, ["cancel", CAMPAIGN, "--yes"], env, outside)
    # Then each says what it did, and the unsent delivery is cancelled
    assert "paused" in paused.stdout and CAMPAIGN in resumed.stdout
    assert "1 deliveries cancelled" in cancelled.stdout
    assert status_of(installed, env, outside)["by_status"] == {"sent": 9, "delivered": 1, "cancelled": 1}

    # When an operator manages the suppression list
    added = run(installed, ["suppression", "add", "stop@example.jp", "--reason", "asked by phone"], env, outside)
    listed = run(installed, ["suppression", "list"], env, outside)
    removed = run(installed, ["suppression", "remove", "stop@example.jp"], env, outside)
    again = run(installed, ["suppression", "remove", "stop@example.jp"], env, outside, code=1)
    # Then the contact is added, listed masked, removed, and a second removal is refused
    assert "added" in added.stdout and "removed" in removed.stdout and "was not on the list" in again.stdout
    assert "asked by phone" in listed.stdout and "stop@example.jp" not in listed.stdout


# The dashboard, every route once ----------------------------------------------------------------


@dataclass(frozen=True)
class SnsSigner:
    key: Any
    cert_name: str

    def sign(self, message: dict[str, str]) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        message = {
            **message,
            "SignatureVersion": "2",
            "SigningCertURL": f"https://sns.ap-northeast-1.amazonaws.com/{self.cert_name}",
        }
        # The string to sign, as SNS documents it for a Notification (no Subject here)
        text = "".join(f"{k}\n{message[k]}\n" for k in ("Message", "MessageId", "Timestamp", "TopicArn", "Type"))
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), hashes.SHA256())
        return json.dumps({**message, "Signature": base64.b64encode(signature).decode()}).encode()


def sns_signer(folder: Path) -> SnsSigner:
    """A key of our own and its self-signed certificate, laid out as DISPATCHER_SNS_CERTIFICATE_DIR wants
    (the signing itself is done here, independently of the package's own string-to-sign)."""
    from .sns_signing import make_signer

    made = make_signer(folder)
    return SnsSigner(made.key, made.cert_name)


@pytest.fixture
def dashboard(installed: Installed, outside: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`dispatcher dashboard` on a free loopback port over a campaign enqueued with the installed command."""
    env = base_env(installed, outside)
    campaign = write_deployment(outside)
    run(installed, ["enqueue", str(campaign), str(write_csv(outside / "list.csv", person_rows(6)))], env, outside)
    secret_env = {
        "DISPATCHER_DASHBOARD_TOKEN": secrets.token_hex(24),
        "DISPATCHER_SMS_GATEWAY_SECRET": secrets.token_hex(24),
        "DISPATCHER_SNS_TOPIC_ARNS": TOPIC,
        "DISPATCHER_SNS_CERTIFICATE_DIR": str(outside / "certs"),
        # The login POST below is plain HTTP on loopback: the documented opt-out from Secure cookies
        "DISPATCHER_DASHBOARD_INSECURE_COOKIES": "true",
    }
    port = free_port()
    log = outside / "dashboard.stderr"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [installed.dispatcher, "dashboard", "--host", "127.0.0.1", "--port", str(port)],
            env={**env, **secret_env},
            cwd=outside,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the dashboard did not start"
                try:
                    if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            yield base, secret_env
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert_no_crash(["dashboard"], log.read_text())
    # Stopping the dashboard stops the private Redis it started (uvicorn used to re-raise SIGTERM first).
    assert not processes_mentioning(str(outside)), "the dashboard left its embedded Redis running"


def processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "redis-server" in cmdline:
            found.append(cmdline)
    return found


def test_the_installed_dashboard_answers_every_route(
    installed: Installed, dashboard: tuple[str, dict[str, str]], outside: Path
) -> None:
    base, secret_env = dashboard
    bearer = {"Authorization": f"Bearer {secret_env['DISPATCHER_DASHBOARD_TOKEN']}"}
    signer = sns_signer(outside / "certs")
    bodies: list[str] = []
    with httpx.Client(base_url=base, timeout=30, follow_redirects=False) as client:
        # Given a running dashboard: the health check needs no credentials
        assert client.get("/healthz").status_code == 200

        # When an operator signs in with the form
        form = client.get("/login")
        signed_in = client.post("/login", data={"token": secret_env["DISPATCHER_DASHBOARD_TOKEN"], "next": "/"})
        # Then the form is served and the right token gives a session cookie and a redirect
        assert form.status_code == 200 and 'name="token"' in form.text
        assert signed_in.status_code == 303, signed_in.text
        assert "httponly" in signed_in.headers.get("set-cookie", "").lower()

        # When the pages are opened with that session and the API with the Bearer token
        pages = [client.get("/"), client.get(f"/campaigns/{CAMPAIGN}")]
        api = [client.get("/api/campaigns", headers=bearer), client.get(f"/api/campaigns/{CAMPAIGN}", headers=bearer)]
        metrics = client.get("/metrics", headers=bearer)
        # and a person is searched with the campaign page's form, then shown (page and API)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', pages[1].text)
        assert csrf, "the campaign page carries the CSRF token"
        searched = client.post(
            f"/campaigns/{CAMPAIGN}/people",
            data={"csrf_token": csrf.group(1), "by": "contact", "q": "user1@example.jp"},
        )
        assert searched.status_code == 303 and searched.headers["location"] == f"/campaigns/{CAMPAIGN}/people/U000001"
        pages.append(client.get(searched.headers["location"]))
        api.append(client.get(f"/api/campaigns/{CAMPAIGN}/people/U000001", headers=bearer))
        # Then each answers 200 with the campaign in it
        for response in [*pages, *api, metrics]:
            assert response.status_code == 200, (response.url, response.status_code, response.text[:500])
            bodies.append(response.text)
        assert CAMPAIGN in pages[0].text and CAMPAIGN in pages[1].text
        assert [c["campaign"] for c in api[0].json()["campaigns"]] == [CAMPAIGN]
        detail = api[1].json()
        assert detail["campaign"] == CAMPAIGN and detail["total"] == 6
        assert "# TYPE" in metrics.text
        assert "us***@example.jp" in pages[2].text and api[2].json()["user_id"] == "U000001"

        # When SNS posts a Notification signed with our test certificate from the allowed topic, about a message
        # id we never sent, and the same message claiming another topic
        record = ses_event("ses_delivery", "0000000000000000-unknown-message-id", "nobody@example.jp")
        message = {
            "Type": "Notification",
            "MessageId": secrets.token_hex(8),
            "TopicArn": TOPIC,
            "Message": record,
            "Timestamp": datetime.now(UTC).isoformat(),
        }
        genuine = client.post(
            "/feedback/sns", content=signer.sign(message), headers={"Content-Type": "text/plain; charset=UTF-8"}
        )
        foreign = client.post("/feedback/sns", content=signer.sign({**message, "TopicArn": TOPIC + "-other"}))
        # Then the genuine one is verified (cryptography works in the installed package) and accepted, the other
        # refused
        assert genuine.status_code == 200, genuine.text
        assert foreign.status_code == 403, foreign.text

        # When the SMS gateway posts a receipt with a correct HMAC, and one with a wrong one
        receipt = json.dumps({"id": "gw-unknown-1", "status": "delivered"}).encode()
        digest = hmac.new(secret_env["DISPATCHER_SMS_GATEWAY_SECRET"].encode(), receipt, hashlib.sha256).hexdigest()
        signed = client.post(
            "/feedback/sms-gateway", content=receipt, headers={"X-Gateway-Signature": f"sha256={digest}"}
        )
        forged = client.post(
            "/feedback/sms-gateway", content=receipt, headers={"X-Gateway-Signature": f"sha256={'0' * 64}"}
        )
        # Then the signed one is accepted and the forged one refused
        assert signed.status_code == 200, signed.text
        assert forged.status_code == 403, forged.text
    # and the container health check, run by the package's own Python (no test extras), finds the route healthy
    health = subprocess.run(
        [str(installed.bin / "python"), str(ROOT / "deploy" / "healthcheck.py"), "http", f"{base}/healthz"],
        capture_output=True,
        text=True,
        cwd=outside,
        timeout=60,
        env=base_env(installed, outside),
    )
    assert health.returncode == 0, health.stderr
    # and no page or API answer carried a receipt URL or a full address
    for body in bodies:
        assert "receive.example.jp/r/" not in body and "user1@example.jp" not in body
