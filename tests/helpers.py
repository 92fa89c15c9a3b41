"""Shared test data builders."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CAMPAIGN_TOML = """
id = "{id}"
name = "テスト補償キャンペーン"
template = "compensation"
prefer = "{prefer}"
deadline = {deadline}
send_by = {send_by}
receipt_hosts = ["receive.example.jp"]
sms_max_chars = 134
sms_window = {window}

[text]
organizer = "しまね旅キャンペーン事務局"
call_centre_name = "regionPAY 補償コールセンター"
call_centre_phone = "0120-479-249"
call_centre_hours = "平日 10:00～18:00"
"""


def write_campaign(
    tmp_path: Path,
    campaign_id: str = "test-campaign",
    *,
    prefer: str = "email",
    deadline: str = "2099-05-31T23:59:59+09:00",
    send_by: str = "2099-05-28T20:00:00+09:00",
    window: str = '["00:00", "24:00"]',
) -> Path:
    """A campaign file laid out as in the repository (config/campaigns + templates beside it)."""
    templates = tmp_path / "templates"
    if not templates.exists():
        shutil.copytree(ROOT / "templates", templates)
    path = tmp_path / "config" / "campaigns" / f"{campaign_id}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        CAMPAIGN_TOML.format(id=campaign_id, prefer=prefer, deadline=deadline, send_by=send_by, window=window),
        encoding="utf-8",
    )
    return path


def person_rows(n: int, *, start: int = 1, sms_every: int = 3) -> list[dict[str, str]]:
    rows = []
    for i in range(start, start + n):
        row = {
            "user_id": f"U{i:06d}",
            "name": f"利用者{i}",
            "email": "",
            "phone": "",
            "receipt_url": f"https://receive.example.jp/r/tok{i:06d}x",
            "amount": str(100 * i),
            "category": "A",
        }
        if i % sms_every == 0:
            row["phone"] = f"090{10_000_000 + i:08d}"
        else:
            row["email"] = f"user{i}@example.jp"
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8") -> Path:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    path.write_bytes(buffer.getvalue().encode(encoding))
    return path
