"""Campaign definition files (TOML under ``config/campaigns/``), SPEC §5 and §9."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any, Literal

from dispatcher.core.clock import JST
from dispatcher.core.errors import ConfigError
from dispatcher.core.states import Channel

REQUIRED = ("id", "name", "template", "deadline", "send_by", "receipt_hosts")
_TEMPLATE_NAME = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class SmsWindow:
    """Daily JST window in which SMS may leave; ``end`` of 24:00 means midnight."""

    start: time
    end_minutes: int  # minutes after midnight, up to 1440

    @property
    def always(self) -> bool:
        return self.start == time(0, 0) and self.end_minutes == 1440

    def contains(self, instant: datetime) -> bool:
        local = instant.astimezone(JST)
        minute = local.hour * 60 + local.minute
        start = self.start.hour * 60 + self.start.minute
        return start <= minute < self.end_minutes

    def next_opening(self, instant: datetime) -> datetime:
        """The first instant at or after ``instant`` inside the window."""
        if self.contains(instant):
            return instant
        local = instant.astimezone(JST)
        opening = local.replace(hour=self.start.hour, minute=self.start.minute, second=0, microsecond=0)
        if opening <= local:
            opening += timedelta(days=1)
        return opening


@dataclass(frozen=True)
class Campaign:
    id: str
    name: str
    template: str
    deadline: datetime
    send_by: datetime
    receipt_hosts: frozenset[str]
    prefer: Literal["email", "sms"] = "email"
    sms_max_chars: int = 70
    sms_window: SmsWindow = field(default_factory=lambda: SmsWindow(time(9, 0), 20 * 60))
    #: Free-form values handed to templates (call centre, organiser, category texts...).
    text: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None
    #: Second wave: a hard-bounced or permanently failed delivery whose row has the other contact is queued
    #: once on the other channel (actor ``fallback``), before send-by.
    fallback: bool = False
    #: Nothing of the campaign leaves before this instant (second wave); None: as soon as it is enqueued.
    send_from: datetime | None = None

    def channel_for(self, has_email: bool, has_phone: bool) -> Channel:
        if has_email and has_phone:
            return Channel(self.prefer)
        return Channel.EMAIL if has_email else Channel.SMS


def _aware(name: str, value: Any, where: str) -> datetime:
    if not isinstance(value, datetime):
        raise ConfigError(f"{where}: '{name}' must be a TOML date-time like 2023-05-31T23:59:59+09:00")
    if value.tzinfo is None:
        raise ConfigError(f"{where}: '{name}' needs a UTC offset (+09:00 for JST)")
    return value


def _window(value: Any, where: str) -> SmsWindow:
    try:
        start_s, end_s = value
        start = time.fromisoformat(start_s)
        if end_s == "24:00":
            end_minutes = 1440
        else:
            end = time.fromisoformat(end_s)
            end_minutes = end.hour * 60 + end.minute
    except (TypeError, ValueError):
        raise ConfigError(f'{where}: \'sms_window\' must be two "HH:MM" strings, e.g. ["09:00", "20:00"]') from None
    if end_minutes <= start.hour * 60 + start.minute:
        raise ConfigError(f"{where}: 'sms_window' must end after it starts")
    return SmsWindow(start, end_minutes)


def parse_campaign(data: dict[str, Any], where: str = "campaign", source: Path | None = None) -> Campaign:
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(missing)}")
    known = set(REQUIRED) | {"prefer", "sms_max_chars", "sms_window", "text", "fallback", "send_from"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if not isinstance(data["id"], str) or not data["id"].strip() or len(data["id"]) > 64:
        raise ConfigError(f"{where}: 'id' must be a non-empty string of at most 64 characters")
    template = data["template"]
    if not isinstance(template, str) or not _TEMPLATE_NAME.fullmatch(template):
        # A folder name, not a path: "../x" or "/etc" would take templates from outside templates/.
        raise ConfigError(f"{where}: 'template' must be a folder name of letters, digits, '.', '_' or '-'")
    prefer = data.get("prefer", "email")
    if prefer not in ("email", "sms"):
        raise ConfigError(f'{where}: \'prefer\' must be "email" or "sms", not {prefer!r}')
    hosts = data["receipt_hosts"]
    if not isinstance(hosts, list) or not hosts or not all(isinstance(h, str) and h for h in hosts):
        raise ConfigError(f"{where}: 'receipt_hosts' must be a non-empty list of host names")
    sms_max = data.get("sms_max_chars", 70)
    if not isinstance(sms_max, int) or not 1 <= sms_max <= 1600:
        raise ConfigError(f"{where}: 'sms_max_chars' must be an integer from 1 to 1600")
    deadline = _aware("deadline", data["deadline"], where)
    send_by = _aware("send_by", data["send_by"], where)
    if send_by > deadline:
        raise ConfigError(f"{where}: 'send_by' ({send_by}) is after 'deadline' ({deadline})")
    send_from = _send_from(data, send_by, deadline, where)
    text = data.get("text", {})
    if not isinstance(text, dict):
        raise ConfigError(f"{where}: 'text' must be a table")
    window = _window(data["sms_window"], where) if "sms_window" in data else SmsWindow(time(9), 1200)
    fallback = data.get("fallback", False)
    if not isinstance(fallback, bool):
        raise ConfigError(f"{where}: 'fallback' must be true or false")
    return Campaign(
        id=data["id"].strip(),
        name=str(data["name"]),
        template=template,
        deadline=deadline,
        send_by=send_by,
        receipt_hosts=frozenset(h.lower() for h in hosts),
        prefer=prefer,
        sms_max_chars=sms_max,
        sms_window=window,
        text=text,
        source=source,
        fallback=fallback,
        send_from=send_from,
    )


def _send_from(data: dict[str, Any], send_by: datetime, deadline: datetime, where: str) -> datetime | None:
    """The optional scheduled start: a date-time with an offset, before send_by (and so before deadline)."""
    if "send_from" not in data:
        return None
    send_from = _aware("send_from", data["send_from"], where)
    if send_from >= deadline:
        raise ConfigError(f"{where}: 'send_from' ({send_from}) must be before 'deadline' ({deadline})")
    if send_from >= send_by:
        raise ConfigError(f"{where}: 'send_from' ({send_from}) must be before 'send_by' ({send_by})")
    return send_from


def load_campaign(path: str | Path) -> Campaign:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"campaign file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_campaign(data, where=str(path), source=path.resolve())


def campaign_to_dict(c: Campaign) -> dict[str, Any]:
    """What the ledger keeps, so workers need not see the file."""
    return {
        "id": c.id,
        "name": c.name,
        "template": c.template,
        "deadline": c.deadline,
        "send_by": c.send_by,
        "receipt_hosts": sorted(c.receipt_hosts),
        "prefer": c.prefer,
        "sms_max_chars": c.sms_max_chars,
        "sms_window": [
            c.sms_window.start.strftime("%H:%M"),
            "24:00"
            if c.sms_window.end_minutes == 1440
            else f"{c.sms_window.end_minutes // 60:02d}:{c.sms_window.end_minutes % 60:02d}",
        ],
        "text": c.text,
        "fallback": c.fallback,
        **({"send_from": c.send_from} if c.send_from is not None else {}),
    }
