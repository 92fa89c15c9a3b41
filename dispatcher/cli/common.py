"""What every command shares: the group, exit codes, consoles, settings and runtime set-up."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dispatcher.core import clock
from dispatcher.core.errors import ConfigError
from dispatcher.core.privacy import install_log_redaction
from dispatcher.core.settings import Settings, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_REJECTS = 0, 1, 2, 3

err = Console(stderr=True)
out = Console()
log = logging.getLogger("dispatcher")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable
    install_log_redaction(settings.log_level)
    clock.start_at(settings.clock_start)
    if clock.is_shifted():
        log.warning("clock starts at %s (DISPATCHER_CLOCK_START): rehearsal mode", settings.clock_start)
    return settings


def redis_available(settings: Settings, *, persistent: bool = True) -> Any:
    """The configured Redis or a private one (imported late: most commands never need Redis)."""
    from dispatcher.broker.embedded import redis_available as available

    return available(settings, persistent=persistent)


def install_runtime(settings: Settings) -> Any:
    from dispatcher import broker, runtime

    assert settings.redis_url
    if broker.installed() is None:
        broker.install(settings.redis_url)
    rt = runtime.Runtime(settings)
    runtime.use(rt)
    return rt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dispatcher")
def cli() -> None:
    """Send each eligible person one message with their receipt URL, and account for every one."""


def status_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"campaign {data['campaign']} — {data['total']:,} deliveries")
    table.add_column("state")
    channels = list(data["by_channel"])
    for channel in channels:
        table.add_column(channel, justify="right")
    table.add_column("total", justify="right")
    for state, n in sorted(data["by_status"].items()):
        table.add_row(state, *(f"{data['by_channel'][c].get(state, 0):,}" for c in channels), f"{n:,}")
    return table
