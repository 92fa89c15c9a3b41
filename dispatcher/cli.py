"""The ``dispatcher`` command (SPEC §9). Commands are thin: they parse, call a service, print.

Exit codes: 0 success; 1 a check failed / operation refused; 2 usage or configuration error;
3 ``enqueue`` accepted some rows and rejected others.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import clock
from .errors import ConfigError, DispatcherError, InputError
from .privacy import install_log_redaction
from .private import PRIVATE_UMASK
from .settings import Settings, load_settings

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
    from .redis_server import redis_available as available

    return available(settings, persistent=persistent)


def install_runtime(settings: Settings) -> Any:
    from . import broker, runtime

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


def main() -> None:
    # Everything a command creates (ledger, rejects, reports, outbox, Redis data) may hold receipt URLs or
    # contacts: owner-only, whatever umask the shell or service manager gave us.
    os.umask(PRIVATE_UMASK)
    try:
        cli(standalone_mode=True)
    except (ConfigError, InputError) as exc:
        fail(str(exc))
    except DispatcherError as exc:
        fail(str(exc), EXIT_FAIL)


# enqueue ---------------------------------------------------------------------------------------
@cli.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("recipients_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rejects", "rejects_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write rejected rows (default: beside the input, *.rejects.csv).")
@click.option("--dry-run", is_flag=True, help="Validate and report; write nothing to the ledger, send nothing.")
def enqueue(campaign_file: Path, recipients_csv: Path, rejects_path: Path | None, dry_run: bool) -> None:
    """Validate RECIPIENTS_CSV and add its people to the campaign in CAMPAIGN_FILE."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from .enqueue import enqueue_campaign

    settings = settings_or_exit()
    if not recipients_csv.is_file():
        fail(f"recipient list not found: {recipients_csv}")
    try:
        with redis_available(settings) if not dry_run else _nothing(settings) as live:
            if not dry_run:
                install_runtime(live)
            size = recipients_csv.stat().st_size
            show = size > 1_000_000 and err.is_terminal
            with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                          TimeRemainingColumn(), console=err, disable=not show) as bar:
                task = bar.add_task("enqueue", total=size)
                result = enqueue_campaign(campaign_file, recipients_csv, rejects_path=rejects_path,
                                          dry_run=dry_run, settings=live,
                                          progress=lambda n: bar.update(task, completed=n))
    except (ConfigError, InputError) as exc:
        fail(str(exc))
        return
    summary = Table(title=f"campaign {result.campaign_id}" + (" (dry run)" if dry_run else ""), show_header=False)
    for label, value in [
        ("rows read", result.rows), ("accepted", result.accepted), ("  new", result.new),
        ("  already in the campaign", result.already_present), ("  email", result.by_channel["email"]),
        ("  sms", result.by_channel["sms"]), ("  sms parts", result.sms_parts),
        ("  flagged (legacy carrier address)", result.flagged), ("rejected", result.rejected),
    ]:
        summary.add_row(label, f"{value:,}")
    if result.encoding:
        summary.add_row("encoding", result.encoding)
    if result.rejects_path:
        summary.add_row("rejects file", str(result.rejects_path))
    out.print(summary)
    for rejected in result.rejects[:20]:
        err.print(f"  row {rejected.row}: {rejected.reason}", highlight=False, markup=False)
    if result.rejected > 20:
        err.print(f"  … and {result.rejected - 20:,} more in {result.rejects_path}", highlight=False)
    sys.exit(EXIT_REJECTS if result.rejected else EXIT_OK)


@contextmanager
def _nothing(settings: Settings) -> Iterator[Settings]:
    yield settings


# status ----------------------------------------------------------------------------------------
@cli.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (SPEC §9 shape).")
def status(campaign_id: str, as_json: bool) -> None:
    """Counts of deliveries by state and channel."""
    from .ledger import Ledger
    from .status import campaign_status

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id) is None:
        fail(f"no campaign '{campaign_id}' in the ledger", EXIT_FAIL)
    data = campaign_status(ledger, campaign_id)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    out.print(status_table(data))


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


# worker and sweep ------------------------------------------------------------------------------
@cli.command()
@click.option("--processes", "-p", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", "-t", default=8, show_default=True, type=click.IntRange(1, 256))
def worker(processes: int, threads: int) -> None:
    """Run Dramatiq workers that send deliveries (restarted if a process dies)."""
    from .worker import run_workers

    settings = settings_or_exit()
    with redis_available(settings) as live:
        sys.exit(run_workers(live, processes=processes, threads=threads))


@cli.command()
def sweep() -> None:
    """Re-enqueue every queued/retrying delivery whose time has come; mark dead sends unknown."""
    from .sweep import sweep as run_sweep

    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from .actors import dispatch_ids

        result = run_sweep(rt, dispatch_ids, everything=True)
    out.print(f"re-enqueued {result.redispatched:,}; marked unknown {result.unknown:,}")


# policy: plan and check -----------------------------------------------------------------------
@cli.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--strict", is_flag=True, help="Exit 1 when the campaign cannot finish before send_by.")
def plan(campaign_id: str, as_json: bool, strict: bool) -> None:
    """When will the rest of the campaign be sent, and is that before send_by?"""
    from .ledger import Ledger
    from .plan import make_plan

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    record = ledger.campaign(campaign_id)
    if record is None:
        fail(f"no campaign '{campaign_id}' in the ledger", EXIT_FAIL)
        return
    result = make_plan(record.campaign, ledger.pending_work(campaign_id), settings, clock.now())
    if as_json:
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        table = Table(title=f"plan for {campaign_id} (send_by {record.campaign.send_by.isoformat()})")
        for column in ("channel", "remaining", "units", "rate/s", "quota/day", "finish", "note"):
            table.add_column(column)
        for c in result.channels:
            table.add_row(c.channel, f"{c.remaining:,}", f"{c.units:,}", "—" if c.rate is None else f"{c.rate:g}",
                          "—" if c.daily_quota is None else f"{c.daily_quota:,}",
                          c.finish.astimezone(clock.JST).strftime("%Y-%m-%d %H:%M JST") if c.finish else "—", c.note)
        out.print(table)
        if result.will_finish:
            out.print("[green]can finish before send_by[/]")
        else:
            out.print(f"[bold red]WILL MISS send_by[/]: projected finish {result.finish}, "
                      f"send_by {record.campaign.send_by}")
    if strict and not result.will_finish:
        sys.exit(EXIT_FAIL)


@cli.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("recipients_csv", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(campaign_file: Path, recipients_csv: Path | None, as_json: bool) -> None:
    """Preflight: every finding pass/warn/fail with a reason; exit 1 on any fail."""
    from .check import Level, run_checks

    settings = settings_or_exit()
    if recipients_csv is not None and not recipients_csv.is_file():
        fail(f"recipient list not found: {recipients_csv}")
    findings = run_checks(campaign_file, recipients_csv, settings)
    if as_json:
        click.echo(json.dumps([{"check": f.name, "result": f.level.value, "reason": f.reason} for f in findings],
                              ensure_ascii=False))
    else:
        colour = {Level.PASS: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}
        table = Table(title=f"preflight {campaign_file}")
        table.add_column("check")
        table.add_column("result")
        table.add_column("reason", overflow="fold")
        for f in findings:
            table.add_row(f.name, f"[{colour[f.level]}]{f.level.value.upper()}[/]", f.reason)
        out.print(table)
    sys.exit(EXIT_FAIL if any(f.level is Level.FAIL for f in findings) else EXIT_OK)


# operators: pause, resume, cancel --------------------------------------------------------------
@cli.command()
@click.argument("campaign_id")
def pause(campaign_id: str) -> None:
    """Stop sending until `resume` (nothing is lost)."""
    from . import operations

    settings = settings_or_exit()
    with redis_available(settings) as live:
        result = operations.pause(install_runtime(live), campaign_id)
    out.print(f"campaign {result.campaign_id}: {result.state}")


@cli.command()
@click.argument("campaign_id")
def resume(campaign_id: str) -> None:
    """Resume a paused campaign (also after the circuit breaker paused it)."""
    from . import operations

    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from .actors import dispatch_ids

        result = operations.resume(rt, campaign_id, dispatch_ids)
    out.print(f"campaign {result.campaign_id}: {result.state}; {result.affected:,} deliveries re-enqueued")


@cli.command()
@click.argument("campaign_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cancel(campaign_id: str, yes: bool) -> None:
    """Cancel for good: every delivery not yet sent becomes `cancelled`."""
    from . import operations

    settings = settings_or_exit()
    if not yes and sys.stdin.isatty():
        click.confirm(f"Cancel campaign {campaign_id}? Unsent deliveries will never be sent", abort=True)
    with redis_available(settings) as live:
        result = operations.cancel(install_runtime(live), campaign_id)
    out.print(f"campaign {result.campaign_id}: {result.state}; {result.affected:,} deliveries cancelled")


# feedback, suppression, resend, report --------------------------------------------------------
@cli.command()
@click.option("--once", is_flag=True, help="Drain the queue, then exit.")
def events(once: bool) -> None:
    """Consume provider feedback (SES/SMS events via SQS) into the ledger."""
    import signal
    import threading

    from .feedback.consumer import consume

    settings = settings_or_exit()
    if not settings.feedback_queue_url:
        fail("DISPATCHER_FEEDBACK_QUEUE_URL is not set")
    with redis_available(settings) as live:
        rt = install_runtime(live)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stats = consume(rt, settings.feedback_queue_url or "", once=once, stop=stop)
        except KeyboardInterrupt:
            return
    out.print(f"messages {stats.messages:,}; events {stats.events:,} (duplicates {stats.duplicates:,}, "
              f"waiting for their send {stats.pending:,}, not understood {stats.unparsable:,}); "
              + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.outcomes.items())))


@cli.group()
def suppression() -> None:
    """The suppression list: contacts no campaign sends to again."""


@suppression.command("list")
def suppression_list() -> None:
    from .ledger import Ledger
    from .privacy import mask_contact

    settings = settings_or_exit()
    table = Table(title="suppression list")
    for column in ("contact", "channel", "reason", "source", "since"):
        table.add_column(column)
    for row in Ledger(settings.ledger_url).suppression_list():
        table.add_row(mask_contact(row["channel"], row["contact"]), row["channel"], row["reason"], row["source"],
                      row["created_at"].astimezone(clock.JST).strftime("%Y-%m-%d %H:%M"))
    out.print(table)


def _normalised_contact(contact: str) -> tuple[str, Any]:
    from .contacts import FieldError, check_email, check_phone
    from .states import Channel

    try:
        return (check_email(contact)[0], Channel.EMAIL) if "@" in contact else (check_phone(contact), Channel.SMS)
    except FieldError as exc:
        fail(str(exc))
        raise


@suppression.command("add")
@click.argument("contact")
@click.option("--reason", default="added by operator", show_default=True)
def suppression_add(contact: str, reason: str) -> None:
    from .ledger import Ledger
    from .operations import operator_name
    from .privacy import mask_contact

    settings = settings_or_exit()
    value, channel = _normalised_contact(contact)
    added = Ledger(settings.ledger_url).suppress(value, channel, reason, operator_name())
    out.print(f"{mask_contact(channel.value, value)}: {'added' if added else 'already on the list'}")


@suppression.command("remove")
@click.argument("contact")
def suppression_remove(contact: str) -> None:
    from .ledger import Ledger
    from .privacy import mask_contact

    settings = settings_or_exit()
    value, channel = _normalised_contact(contact)
    removed = Ledger(settings.ledger_url).unsuppress(value)
    out.print(f"{mask_contact(channel.value, value)}: {'removed' if removed else 'was not on the list'}")
    if not removed:
        sys.exit(EXIT_FAIL)


@cli.command()
@click.argument("campaign_id")
@click.option("--status", "statuses", default="failed,expired", show_default=True,
              help="Comma-separated states to resend (never delivered, complained or suppressed).")
@click.option("--channel", type=click.Choice(["email", "sms"]), help="Only deliveries on this channel.")
@click.option("--via", type=click.Choice(["email", "sms"]),
              help="Send on this channel instead (the row's other contact).")
@click.option("--dry-run", is_flag=True, help="Show what would be resent; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def resend(campaign_id: str, statuses: str, channel: str | None, via: str | None, dry_run: bool, yes: bool) -> None:
    """Queue failed deliveries again (optionally via the other channel)."""
    from . import operations
    from .states import Channel, Status

    try:
        wanted = [Status(s.strip()) for s in statuses.split(",") if s.strip()]
    except ValueError as exc:
        fail(f"--status: {exc}")
        return
    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from .actors import dispatch_ids

        kwargs = {"statuses": wanted, "channel": Channel(channel) if channel else None,
                  "via": Channel(via) if via else None}
        preview = operations.resend(rt, campaign_id, None, dry_run=True, **kwargs)
        _print_resend(preview, "would resend")
        if dry_run or not preview.requeued:
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("refusing to resend without --yes (no terminal to ask on)", EXIT_FAIL)
            click.confirm(f"Resend {len(preview.requeued):,} deliveries?", abort=True)
        done = operations.resend(rt, campaign_id, dispatch_ids, **kwargs)
        _print_resend(done, "re-queued")


def _print_resend(plan: Any, verb: str) -> None:
    channels = ", ".join(f"{c} {n:,}" for c, n in sorted(plan.by_channel.items())) or "none"
    out.print(f"{plan.campaign_id}: {plan.selected:,} selected; {verb} {len(plan.requeued):,} ({channels})")
    for reason, n in sorted(plan.skipped.items()):
        out.print(f"  skipped {n:,}: {reason}")


@cli.command()
@click.argument("campaign_id")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path))
def report(campaign_id: str, out_path: Path) -> None:
    """One row per delivery: who, which channel, what happened, with what evidence (contacts masked)."""
    from .ledger import Ledger
    from .report import write_report

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id) is None:
        fail(f"no campaign '{campaign_id}' in the ledger", EXIT_FAIL)
    summary = write_report(ledger, campaign_id, out_path)
    out.print(f"{summary.rows:,} deliveries written to {out_path}; notified {summary.notified:,}, "
              f"not (yet) notified {summary.rows - summary.notified:,}; rejected at import {summary.rejected:,}")


# dashboard -------------------------------------------------------------------------------------
@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
def dashboard(host: str, port: int) -> None:
    """Web dashboard for operators: pages, JSON API, /metrics (needs DISPATCHER_DASHBOARD_TOKEN)."""
    settings = settings_or_exit()
    if not settings.dashboard_token:
        fail("DISPATCHER_DASHBOARD_TOKEN is not set: the dashboard will not start without a token "
             "(every page, API call and /metrics is authenticated with it)")
    from .dashboard import check_start, serve

    try:
        check_start(settings, host)  # before the embedded Redis starts: a weak token stops here
    except ConfigError as exc:
        fail(str(exc))

    with redis_available(settings) as live:
        rt = install_runtime(live)
        from .actors import dispatch_ids

        err.print(f"dashboard: http://{host}:{port}/ (sign in with DISPATCHER_DASHBOARD_TOKEN)", highlight=False)
        serve(rt, dispatch_ids, host=host, port=port)


# demo ------------------------------------------------------------------------------------------
@cli.command()
@click.option("--size", default=300, show_default=True, type=click.IntRange(10, 100_000),
              help="Number of generated recipients.")
@click.option("--dir", "directory", default=Path("var/demo"), show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo writes everything: a new or empty folder, or one an earlier demo made "
                   "(cleared first); any other folder is refused, nothing deleted.")
def demo(size: int, directory: Path) -> None:
    """A full sample campaign on embedded defaults (no Redis, no AWS): prints where to look; exits."""
    from .demo import run_demo

    settings = settings_or_exit(log_level="WARNING")
    sys.exit(run_demo(settings, size=size, directory=directory, console=out))


if __name__ == "__main__":
    main()
