"""``dispatcher demo``: the shipped seed campaign, end to end, on embedded defaults.

It generates a list of fictitious recipients (with some bad rows), enqueues it, runs workers in this
process against a private Redis, and writes messages to the outbox. The clock is started at
2023-04-05 10:00 JST, when the notice says the URLs go out, so the real campaign's send-by lies ahead.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from datetime import datetime
from pathlib import Path

from rich.console import Console

from dispatcher.core import clock
from dispatcher.core.clock import JST
from dispatcher.core.errors import ConfigError
from dispatcher.core.i18n import _
from dispatcher.core.private import private_dir, write_private_text
from dispatcher.core.settings import Settings
from dispatcher.core.states import PENDING
from dispatcher.sending.render import packaged_data

DEMO_START = datetime(2023, 4, 5, 10, 0, tzinfo=JST)
SHIPPED_CAMPAIGN = "regionpay-2023-app.toml"
#: Written first into every demo folder: only a folder holding it may be cleared by the next demo.
DEMO_MARKER = ".dispatcher-demo"
#: Everything a demo writes into its folder; a previous demo folder holding anything else is left alone.
_DEMO_ENTRIES = frozenset(
    {
        DEMO_MARKER,
        "recipients.csv",
        "recipients.rejects.csv",
        "dispatcher.db",
        "dispatcher.db-wal",
        "dispatcher.db-shm",
        "dispatcher.db-journal",
        "outbox",
        "redis",
    }
)

_SURNAMES = ["佐藤", "鈴木", "高橋", "田中", "伊藤", "渡辺", "山本", "中村", "小林", "加藤"]
_GIVEN = ["太郎", "花子", "健", "美咲", "翔", "陽菜", "大輔", "さくら"]
_DOMAINS = [
    "docomo.ne.jp",
    "ezweb.ne.jp",
    "au.com",
    "softbank.ne.jp",
    "i.softbank.jp",
    "gmail.com",
    "yahoo.co.jp",
    "example.jp",
]


def find_campaign_file() -> Path:
    """The shipped campaign as installed with the package (never a ``config/`` in the working directory:
    the demo must show what we ship, whatever folder it is started from)."""
    candidate = packaged_data("config") / "campaigns" / SHIPPED_CAMPAIGN
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(SHIPPED_CAMPAIGN)


def generate_recipients(path: Path, size: int, seed: int = 20230405) -> int:
    """Write a demo list; returns how many rows were made bad on purpose."""
    rng = random.Random(seed)
    rows = ["user_id,name,email,phone,receipt_url,amount,category"]
    bad = [
        "U-BAD-01,無効,not-an-address,,https://receive.example.jp/r/BAD01,1000,A",
        "U-BAD-02,固定電話,,03-5244-9370,https://receive.example.jp/r/BAD02,1000,A",
        "U-BAD-03,http,x@example.jp,,http://receive.example.jp/r/BAD03,1000,A",
        "U-BAD-04,他ホスト,y@example.jp,,https://receive.evil.example/r/BAD04,1000,A",
        "U-BAD-05,連絡先なし,,,https://receive.example.jp/r/BAD05,1000,A",
        ",ID無し,z@example.jp,,https://receive.example.jp/r/BAD06,1000,A",
        "U-BAD-07,金額,w@example.jp,,https://receive.example.jp/r/BAD07,12.5,A",
        "U-BAD-08,区分,v@example.jp,,https://receive.example.jp/r/BAD08,1000,C",
        "U-BAD-09,IP電話,,050-1234-5678,https://receive.example.jp/r/BAD09,1000,B",
        "U-00001,重複,dup@example.jp,,https://receive.example.jp/r/BAD10,1000,A",
    ]
    for i in range(1, size + 1):
        name = rng.choice(_SURNAMES) + " " + rng.choice(_GIVEN)
        url = f"https://receive.example.jp/r/{rng.getrandbits(64):016x}"
        amount = rng.randrange(100, 20000)
        category = rng.choice("AAAB")
        if rng.random() < 0.6:
            local = f"user{i:05d}"
            if i % 25 == 0:
                local = f"taro..{i}."  # a legacy docomo-style address
            email, phone = f"{local}@{rng.choice(_DOMAINS)}", ""
        else:
            digits = f"0{rng.choice('789')}0{rng.randrange(1, 10)}{rng.randrange(10**7):07d}"
            phone = f"{digits[:3]}-{digits[3:7]}-{digits[7:]}"
            if i % 7 == 0:
                phone = phone.translate(str.maketrans("0123456789-", "０１２３４５６７８９－"))
            email = ""
        rows.append(f"U-{i:05d},{name},{email},{phone},{url},{amount},{category}")
    rows.extend(bad)
    write_private_text(path, "\n".join(rows) + "\n")
    return len(bad)


def prepare_directory(directory: Path) -> None:
    """Make ``directory`` an empty demo folder, deleting only what an earlier demo wrote there.

    A missing or empty folder is used as it is; a folder with our marker and nothing but the demo's own
    files is cleared; anything else is refused (``ConfigError``, exit 2): ``--dir`` may name a folder of
    the user's by mistake, and the demo must never delete what it did not create.
    """
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        raise ConfigError(_("demo --dir {path}: not a folder; choose a new or empty folder").format(path=directory))
    if directory.is_dir():
        entries = set(os.listdir(directory))
        if entries and DEMO_MARKER not in entries:
            raise ConfigError(
                _(
                    "demo --dir {path}: the folder is not empty and no demo made it; "
                    "choose a new or empty folder (nothing was deleted)"
                ).format(path=directory)
            )
        foreign = sorted(entries - _DEMO_ENTRIES)
        if foreign:
            raise ConfigError(
                _(
                    "demo --dir {path}: holds {count} file(s) the demo did not write "
                    "(first: {first}); move them or choose another folder (nothing was deleted)"
                ).format(path=directory, count=len(foreign), first=repr(foreign[0]))
            )
        for name in entries:
            target = directory / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
    private_dir(directory)
    write_private_text(directory / DEMO_MARKER, "written by dispatcher demo; the next demo may clear this folder\n")


def run_demo(settings: Settings, *, size: int, directory: Path, console: Console) -> int:
    import dramatiq

    from dispatcher import broker, runtime
    from dispatcher.broker.embedded import redis_available
    from dispatcher.cli.common import status_table
    from dispatcher.intake.enqueue import enqueue_campaign
    from dispatcher.operations.status import campaign_status

    prepare_directory(directory)
    demo_settings = settings.model_copy(
        update={
            "data_dir": directory,
            "database_url": None,
            "redis_url": None,
            "outbox_dir": None,
            "email_provider": "outbox",
            "sms_provider": "outbox",
            "email_rate": None,
            "sms_rate": None,
            "clock_start": DEMO_START,
        }
    )
    clock.start_at(DEMO_START)
    recipients = directory / "recipients.csv"
    bad = generate_recipients(recipients, size)
    console.print(
        _("demo: {rows} rows ({bad} bad on purpose) in {path}").format(rows=size + bad, bad=bad, path=recipients)
    )
    console.print(_("demo: clock set to {start} (the notice's sending period)").format(start=DEMO_START.isoformat()))

    with redis_available(demo_settings, persistent=False) as live:
        broker.install(live.redis_url or "")
        from dispatcher.sending.actors import dispatch_ids

        rt = runtime.Runtime(live)
        runtime.use(rt)
        result = enqueue_campaign(
            find_campaign_file(), recipients, settings=live, ledger=rt.ledger, dispatch=dispatch_ids
        )
        console.print(
            _("demo: enqueued {new} deliveries, rejected {rejected}").format(new=result.new, rejected=result.rejected)
        )
        installed = broker.installed()
        assert installed is not None  # installed by install_runtime above
        worker = dramatiq.Worker(installed, worker_threads=8, worker_timeout=100)
        worker.start()
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                counts = rt.ledger.counts(result.campaign_id)
                if not any(n for (_, st), n in counts.items() if st in PENDING):
                    break
                time.sleep(0.2)
        finally:
            worker.stop(timeout=10_000)
        data = campaign_status(rt.ledger, result.campaign_id)
        rt.close()
    runtime.use(None)
    console.print(status_table(data))
    for label, value in (
        (_("outbox (e-mails as .eml, SMS as JSON lines):"), demo_settings.outbox_path),
        (_("rejected rows with row number and reason:"), result.rejects_path),
        (_("ledger (SQLite):"), demo_settings.ledger_url),
    ):
        console.print(f"{label} {value}")
    console.print(
        _("try: {command}").format(command=f"DISPATCHER_DATA_DIR={directory} dispatcher status {result.campaign_id}")
    )
    pending = sum(n for st, n in data["by_status"].items() if st in PENDING)
    return 0 if pending == 0 else 1
