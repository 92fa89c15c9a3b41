"""Long-running and housekeeping commands: worker, sweep, events, dashboard, demo."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dispatcher.cli.common import (
    cli,
    err,
    fail,
    install_runtime,
    out,
    redis_available,
    settings_or_exit,
)
from dispatcher.core.errors import ConfigError
from dispatcher.core.i18n import _


# worker and sweep ------------------------------------------------------------------------------
@cli.command()
@click.option("--processes", "-p", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker processes.")
@click.option(
    "--threads", "-t", default=8, show_default=True, type=click.IntRange(1, 256), help="Threads in each process."
)
def worker(processes: int, threads: int) -> None:
    """Run Dramatiq workers that send deliveries (restarted if a process dies)."""
    from dispatcher.sending.worker import run_workers

    settings = settings_or_exit()
    with redis_available(settings) as live:
        sys.exit(run_workers(live, processes=processes, threads=threads))


@cli.command()
def sweep() -> None:
    """Re-enqueue every queued/retrying delivery whose time has come; mark dead sends unknown."""
    from dispatcher.sending.sweep import sweep as run_sweep

    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from dispatcher.sending.actors import dispatch_ids

        result = run_sweep(rt, dispatch_ids, everything=True)
    done = _("re-enqueued {redispatched}; marked unknown {unknown}")
    out.print(done.format(redispatched=f"{result.redispatched:,}", unknown=f"{result.unknown:,}"))


# dashboard -------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
def dashboard(host: str, port: int) -> None:
    """Web dashboard for operators: pages, JSON API, /metrics (needs DISPATCHER_DASHBOARD_TOKEN)."""
    settings = settings_or_exit()
    if not settings.dashboard_token:
        fail(
            _(
                "DISPATCHER_DASHBOARD_TOKEN is not set: the dashboard will not start without a token "
                "(every page, API call and /metrics is authenticated with it)"
            )
        )
    from dispatcher.dashboard import check_start, serve

    try:
        check_start(settings, host)  # before the embedded Redis starts: a weak token stops here
    except ConfigError as exc:
        fail(str(exc))

    with redis_available(settings) as live:
        rt = install_runtime(live)
        from dispatcher.sending.actors import dispatch_ids

        where = _("dashboard: {url} (sign in with DISPATCHER_DASHBOARD_TOKEN)").format(url=f"http://{host}:{port}/")
        err.print(where, highlight=False)
        serve(rt, dispatch_ids, host=host, port=port)


# demo ------------------------------------------------------------------------------------------
@cli.command()
@click.option(
    "--size", default=300, show_default=True, type=click.IntRange(10, 100_000), help="Number of generated recipients."
)
@click.option(
    "--dir",
    "directory",
    default=Path("var/demo"),
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the demo writes everything: a new or empty folder, or one an earlier demo made "
    "(cleared first); any other folder is refused, nothing deleted.",
)
def demo(size: int, directory: Path) -> None:
    """A full sample campaign on embedded defaults (no Redis, no AWS): prints where to look; exits."""
    from dispatcher.cli.demo import run_demo

    settings = settings_or_exit(log_level="WARNING")
    sys.exit(run_demo(settings, size=size, directory=directory, console=out))
