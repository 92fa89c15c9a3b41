"""Deployment settings: one frozen object from ``config/dispatcher.toml`` plus ``DISPATCHER_*`` variables.

The environment wins over the file. A wrong value is a :class:`ConfigError` naming the variable and the
file key. AWS credentials, region and endpoint are not ours: boto3's own chain reads them.
"""

from __future__ import annotations

import json
import os
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from dispatcher.core.errors import ConfigError

ENV_PREFIX = "DISPATCHER_"
#: Shared secrets and tokens shorter than this are refused.
MIN_SECRET_LENGTH = 32
_PLACEHOLDERS = (
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "secret",
    "password",
    "example",
    "xxxxxxxx",
    "your-token",
    "your_token",
    "token",
    "todo",
    "test",
)
DEFAULT_CONFIG_FILE = Path("config/dispatcher.toml")


def weak_secret(value: str) -> str | None:
    """Why a token or shared secret is unfit to guard anything, or None when it will do."""
    if len(value) < MIN_SECRET_LENGTH:
        return f"is {len(value)} characters long; at least {MIN_SECRET_LENGTH} are needed (e.g. openssl rand -hex 24)"
    folded = value.strip().lower()
    if any(folded.startswith(p) or folded.endswith(p) for p in _PLACEHOLDERS) or len(set(folded)) < 8:
        return "looks like a placeholder; generate one (e.g. openssl rand -hex 24)"
    return None


def config_file() -> Path | None:
    """``DISPATCHER_CONFIG``, else ``config/dispatcher.toml`` in the working directory (a convenience for a
    deployment's own tree). Either is refused unless only its owner (us, or root) can write it: the file
    chooses providers, endpoints and the ledger, so whoever can write it can redirect every message."""
    explicit = os.environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"DISPATCHER_CONFIG: no such file: {path}")
        return _trusted(path, "DISPATCHER_CONFIG")
    return _trusted(DEFAULT_CONFIG_FILE, "settings file") if DEFAULT_CONFIG_FILE.is_file() else None


def _trusted(path: Path, what: str) -> Path:
    """``path``, if neither it nor a symlink in its place can have been written by another local user."""
    me = os.geteuid() if hasattr(os, "geteuid") else None
    for info in (path.lstat(), path.stat()):
        if me is not None and info.st_uid not in (me, 0):
            raise ConfigError(f"{what} {path.absolute()}: owned by another user (uid {info.st_uid}); refusing it")
    info = path.stat()
    if info.st_mode & 0o002 or (info.st_mode & 0o020 and not _private_group(info.st_gid, info.st_uid)):
        raise ConfigError(f"{what} {path.absolute()}: writable by group or others; refusing it (chmod go-w)")
    return path


def _private_group(gid: int, uid: int) -> bool:
    """A user's own group (umask 002 systems): named as the user, no other members."""
    import grp
    import pwd

    try:
        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except KeyError:
        return False
    return group.gr_name == user.pw_name and not [m for m in group.gr_mem if m != user.pw_name]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid", env_ignore_empty=True)

    #: Where the ledger, outbox and embedded Redis live unless told otherwise.
    data_dir: Path = Path("var")
    database_url: str | None = None
    #: Broker and rate limits. Unset: the program starts a private Redis of its own.
    redis_url: str | None = None

    email_provider: Literal["ses", "smtp", "outbox"] = "outbox"
    sms_provider: Literal["sns", "sms-voice-v2", "http", "outbox"] = "outbox"
    outbox_dir: Path | None = None

    #: Messages (SMS: message parts) per second, across every worker on every host. None = no cap.
    email_rate: float | None = Field(default=None, gt=0)
    sms_rate: float | None = Field(default=None, gt=0)
    #: Sends per rolling 24 hours (SES quota). None = no quota.
    email_daily_quota: int | None = Field(default=None, gt=0)
    sms_daily_quota: int | None = Field(default=None, gt=0)
    #: Per recipient-domain caps (messages/second) for carriers that throttle bursts.
    domain_rates: dict[str, float] = Field(
        default_factory=lambda: {
            "docomo.ne.jp": 20.0,
            "ezweb.ne.jp": 20.0,
            "au.com": 20.0,
            "softbank.ne.jp": 20.0,
            "i.softbank.jp": 20.0,
            "ymobile.ne.jp": 10.0,
            "disney.ne.jp": 5.0,
        }
    )

    #: Extra length of the sliding window (seconds) covering the gap between slot and provider.
    rate_window_margin: float = Field(default=0.01, ge=0, le=1)
    #: Longer waits for a slot (daily quota) hand the delivery back to the ledger instead of blocking.
    rate_max_wait_seconds: float = Field(default=20.0, gt=0)
    #: SMS held for the send window start between these many seconds after it opens (no burst on the hour).
    sms_window_spread: tuple[float, float] = (60.0, 600.0)
    #: Price of one SMS part, for `check` and `plan` cost estimates (currency of your contract).
    sms_price_per_part: float | None = Field(default=None, ge=0)

    email_sender: str = "regionpay_compensation_ml@giftpad.jp"
    email_sender_name: str = "地域クーポン regionPAY 補償事務局"
    #: The number announced to recipients; a domestic gateway shows it, AWS routes to Japan cannot.
    sms_sender: str = "03-5244-9370"
    #: AWS routes only: alphanumeric sender ID (3-11 chars) and/or origination number.
    sms_sender_id: str | None = None
    sms_origination_number: str | None = None
    sms_max_price: str | None = None

    ses_configuration_set: str | None = None
    sms_configuration_set: str | None = None

    smtp_url: str | None = None
    #: Messages sent over one SMTP session before reconnecting (docomo asks for at most 100).
    smtp_messages_per_connection: int = Field(default=100, ge=1, le=1000)
    sms_gateway_url: str | None = None
    sms_gateway_token: str | None = None
    #: Shared secret for the HMAC-SHA256 signature on the gateway's delivery receipts (>= 32 characters).
    sms_gateway_secret: str | None = None
    feedback_queue_url: str | None = None
    #: SNS HTTPS subscriptions: the accepted topics (a JSON list or comma-separated ARNs; empty: the route
    #: answers 503, since a signature alone proves only that *some* AWS account sent it) and, on closed
    #: networks, a folder of signing certificates named as in their SigningCertURL.
    sns_topic_arns: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sns_certificate_dir: Path | None = None
    #: Provider events that arrive before their send is recorded wait at most this long, this many at once.
    pending_events_max: int = Field(default=100_000, ge=1)
    pending_events_max_age_seconds: float = Field(default=7 * 24 * 3600.0, gt=0)
    #: Dashboard sign-in (>= 32 characters, no placeholder) and a read-only token for /metrics scrapers.
    dashboard_token: str | None = None
    metrics_token: str | None = None
    #: Session cookies are Secure unless this is set (plain HTTP on loopback only).
    dashboard_insecure_cookies: bool = False
    #: Reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs; JSON or commas).
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)

    #: Retries of transient failures, with exponential backoff and jitter, never past send_by.
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=1800.0, gt=0)
    #: How often each `dispatcher worker` sweeps the ledger (one host at a time does it).
    sweep_interval_seconds: float = Field(default=30.0, ge=1)
    #: Deliveries per broker message: a worker thread reads, claims and records them in one statement each
    #: and sends them one after the other (send marks in Redis cover a crash between). 1 = one each.
    send_batch: int = Field(default=20, ge=1, le=500)
    #: How long a batch's send marks stay in Redis when its worker died before recording it (the sweep
    #: reads them after ``stale_sending_seconds``; once they are gone it can only say ``unknown``).
    send_mark_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=600)
    #: A delivery left in "sending" this long by a dead worker becomes "unknown".
    stale_sending_seconds: float = Field(default=120.0, gt=0)
    #: Circuit breaker: pause a campaign past this failure share, once this many attempts were made.
    breaker_threshold: float = Field(default=0.05, gt=0, le=1)
    breaker_min_attempts: int = Field(default=100, ge=1)
    #: Provider call timeouts (seconds); below stale_sending_seconds on purpose.
    provider_connect_timeout: float = Field(default=10.0, gt=0)
    provider_read_timeout: float = Field(default=30.0, gt=0)

    log_level: str = "INFO"
    #: Rehearsals and tests only: the clock starts at this instant.
    clock_start: datetime | None = None

    @field_validator("email_sender")
    @classmethod
    def _ascii_address(cls, value: str) -> str:
        if not value.isascii() or "@" not in value:
            raise ValueError("must be a 7-bit ASCII e-mail address")
        return value

    @field_validator("sns_topic_arns", "trusted_proxies", mode="before")
    @classmethod
    def _list_or_commas(cls, value: Any) -> Any:
        """Environment values may be a JSON list or comma-separated; the TOML file gives a real list."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    parsed = json.loads(text)
                except ValueError:
                    raise ValueError("not a valid JSON list") from None
                return parsed
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("sms_gateway_secret", "metrics_token")
    @classmethod
    def _strong(cls, value: str | None) -> str | None:
        if value is not None:
            problem = weak_secret(value)
            if problem:
                raise ValueError(problem)
        return value

    @field_validator("clock_start")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2023-04-05T10:00:00+09:00")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    # Derived paths -----------------------------------------------------------------------------
    @property
    def ledger_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'dispatcher.db').resolve()}"

    @property
    def outbox_path(self) -> Path:
        return self.outbox_dir if self.outbox_dir is not None else self.data_dir / "outbox"


def load_settings(**overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one message that names every culprit."""
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file()}: not valid TOML: {exc}") from None
    except SettingsError as exc:  # e.g. DISPATCHER_DOMAIN_RATES that is not JSON
        raise ConfigError(f"bad setting: {exc}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            problems.append(f"{ENV_PREFIX}{key.upper()} (config key '{key}'): {err['msg']}")
        raise ConfigError("bad setting: " + "; ".join(problems)) from None
