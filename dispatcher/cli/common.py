"""What every command shares: the group, exit codes, consoles, settings and runtime set-up."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dispatcher.cli.translated import TranslatedGroup
from dispatcher.core import clock
from dispatcher.core.errors import ConfigError
from dispatcher.core.i18n import N_, _
from dispatcher.core.labels import shown_channel, shown_status
from dispatcher.core.privacy import install_log_redaction
from dispatcher.core.settings import Settings, load_settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_REJECTS = 0, 1, 2, 3

err = Console(stderr=True)
out = Console()
log = logging.getLogger("dispatcher")


def fail(message: str, code: int = EXIT_USAGE) -> None:
    label = _("error:")
    err.print(f"[bold red]{label}[/] {message}", highlight=False)
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


@click.group(cls=TranslatedGroup, context_settings={"help_option_names": ["-h", "--help"]})
# click's own text, marked here so it is translated when shown (click would fix it in the language of the import)
@click.version_option(package_name="dispatcher", help=N_("Show the version and exit."))
def cli() -> None:
    """Send each eligible person one message with their receipt URL, and account for every one."""


def status_table(data: dict[str, Any]) -> Table:
    """The human form of ``status --json``: states and channels named as the dashboard names them in Japanese."""
    title = _("campaign {campaign} — {total} deliveries").format(campaign=data["campaign"], total=f"{data['total']:,}")
    table = Table(title=title)
    table.add_column(_("state"))
    channels = list(data["by_channel"])
    for channel in channels:
        table.add_column(shown_channel(channel), justify="right")
    table.add_column(_("total"), justify="right")
    for state, n in sorted(data["by_status"].items()):
        table.add_row(shown_status(state), *(f"{data['by_channel'][c].get(state, 0):,}" for c in channels), f"{n:,}")
    return table
