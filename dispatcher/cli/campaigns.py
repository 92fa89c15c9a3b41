"""Commands about one campaign's lists and numbers: enqueue, status, plan, check, report."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.table import Table

from dispatcher.cli.common import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_REJECTS,
    cli,
    err,
    fail,
    install_runtime,
    out,
    redis_available,
    settings_or_exit,
    status_table,
)
from dispatcher.core import clock
from dispatcher.core.errors import ConfigError, InputError
from dispatcher.core.i18n import _, speaking
from dispatcher.core.labels import shown_channel, shown_status
from dispatcher.core.settings import Settings


# enqueue ---------------------------------------------------------------------------------------
@cli.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("recipients_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write rejected rows (default: beside the input, *.rejects.csv).",
)
@click.option("--dry-run", is_flag=True, help="Validate and report; write nothing to the ledger, send nothing.")
@click.option(
    "--update-contacts",
    is_flag=True,
    help="The CSV is a corrections list: known people get their new e-mail/phone (see README).",
)
def enqueue(
    campaign_file: Path, recipients_csv: Path, rejects_path: Path | None, dry_run: bool, update_contacts: bool
) -> None:
    """Validate RECIPIENTS_CSV and add its people to the campaign in CAMPAIGN_FILE."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from dispatcher.intake.enqueue import enqueue_campaign

    settings = settings_or_exit()
    if not recipients_csv.is_file():
        fail(_("recipient list not found: {path}").format(path=recipients_csv))
    if update_contacts:
        from dispatcher.cli.contacts import corrections

        if dry_run:
            fail(_("--update-contacts has no --dry-run (use `dispatcher person` to look people up)"))
        corrections(settings, campaign_file, recipients_csv, rejects_path)
        return
    try:
        with redis_available(settings) if not dry_run else _nothing(settings) as live:
            if not dry_run:
                install_runtime(live)
            size = recipients_csv.stat().st_size
            show = size > 1_000_000 and err.is_terminal
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=err,
                disable=not show,
            ) as bar:
                task = bar.add_task("enqueue", total=size)
                result = enqueue_campaign(
                    campaign_file,
                    recipients_csv,
                    rejects_path=rejects_path,
                    dry_run=dry_run,
                    settings=live,
                    progress=lambda n: bar.update(task, completed=n),
                )
    except (ConfigError, InputError) as exc:
        fail(str(exc))
        return
    title = (_("campaign {campaign} (dry run)") if dry_run else _("campaign {campaign}")).format(
        campaign=result.campaign_id
    )
    summary = Table(title=title, show_header=False)
    for label, value in [
        (_("rows read"), result.rows),
        (_("accepted"), result.accepted),
        ("  " + _("new"), result.new),
        ("  " + _("already in the campaign"), result.already_present),
        ("  " + shown_channel("email"), result.by_channel["email"]),
        ("  " + shown_channel("sms"), result.by_channel["sms"]),
        ("  " + _("sms parts"), result.sms_parts),
        ("  " + _("flagged (legacy carrier address)"), result.flagged),
        (_("rejected"), result.rejected),
    ]:
        summary.add_row(label, f"{value:,}")
    if result.encoding:
        summary.add_row(_("encoding"), result.encoding)
    if result.rejects_path:
        summary.add_row(_("rejects file"), str(result.rejects_path))
    out.print(summary)
    for rejected in result.rejects[:20]:
        line = _("  row {row}: {reason}").format(row=rejected.row, reason=rejected.reason)
        err.print(line, highlight=False, markup=False)
    if result.rejected > 20:
        more = _("  … and {count} more in {path}").format(count=f"{result.rejected - 20:,}", path=result.rejects_path)
        err.print(more, highlight=False)
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
    from dispatcher.ledger import Ledger
    from dispatcher.operations.status import campaign_status

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id) is None:
        fail(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id), EXIT_FAIL)
    data = campaign_status(ledger, campaign_id)
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False))
        return
    out.print(status_table(data))
    if "redeemed" in data:
        total = data["total"] or 1
        out.print(
            _("redeemed on the receipt site: {n} ({share})").format(
                n=f"{data['redeemed']:,}", share=f"{data['redeemed'] / total:.1%}"
            )
        )
    for template, states in data.get("reminders", {}).items():
        shown = ", ".join(f"{shown_status(st)} {n:,}" for st, n in sorted(states.items()) if n)
        out.print(_("reminders ({template}): {states}").format(template=template, states=shown or "—"))


# policy: plan and check -----------------------------------------------------------------------
@cli.command()
@click.argument("campaign_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--strict", is_flag=True, help="Exit 1 when the campaign cannot finish before send_by.")
def plan(campaign_id: str, as_json: bool, strict: bool) -> None:
    """When will the rest of the campaign be sent, and is that before send_by?"""
    from dispatcher.ledger import Ledger
    from dispatcher.operations.plan import make_plan, merge_pending

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    record = ledger.campaign(campaign_id)
    if record is None:
        fail(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id), EXIT_FAIL)
        return
    # Queued reminders go through the same limits: the plan counts them with the campaign's own work.
    pending = merge_pending(
        ledger.pending_work(campaign_id), *(ledger.pending_work(c) for c, _ in ledger.child_campaigns(campaign_id))
    )
    if as_json:
        with speaking("en"):  # the same JSON in every language (the notes included)
            result = make_plan(record.campaign, pending, settings, clock.now())
        click.echo(json.dumps(result.as_dict(), ensure_ascii=False))
    else:
        result = make_plan(record.campaign, pending, settings, clock.now())
        send_from = record.campaign.send_from
        send_by = record.campaign.send_by.isoformat()
        title = _("plan for {campaign} (send_by {send_by})").format(campaign=campaign_id, send_by=send_by)
        if send_from:
            title += _(" (send_from {at})").format(at=send_from.isoformat())
        table = Table(title=title)
        for column in (_("channel"), _("remaining"), _("units"), _("rate/s"), _("quota/day"), _("finish"), _("note")):
            table.add_column(column)
        for c in result.channels:
            table.add_row(
                shown_channel(c.channel),
                f"{c.remaining:,}",
                f"{c.units:,}",
                "—" if c.rate is None else f"{c.rate:g}",
                "—" if c.daily_quota is None else f"{c.daily_quota:,}",
                c.finish.astimezone(clock.JST).strftime("%Y-%m-%d %H:%M JST") if c.finish else "—",
                c.note,
            )
        out.print(table)
        if result.starts > result.now:
            at = result.starts.astimezone(clock.JST).strftime("%Y-%m-%d %H:%M JST")
            out.print(_("held until send_from {at}: nothing leaves before it; the finish counts from it").format(at=at))
        if result.will_finish:
            verdict = _("can finish before send_by")
            out.print(f"[green]{verdict}[/]")
        else:
            projected = _("projected finish {finish}, send_by {send_by}").format(
                finish=result.finish, send_by=record.campaign.send_by
            )
            verdict = _("WILL MISS send_by")
            out.print(f"[bold red]{verdict}[/]: {projected}")
    if strict and not result.will_finish:
        sys.exit(EXIT_FAIL)


@cli.command()
@click.argument("campaign_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("recipients_csv", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check(campaign_file: Path, recipients_csv: Path | None, as_json: bool) -> None:
    """Preflight: every finding pass/warn/fail with a reason; exit 1 on any fail."""
    from dispatcher.operations.check import LEVEL_TEXT, Level, run_checks

    settings = settings_or_exit()
    if recipients_csv is not None and not recipients_csv.is_file():
        fail(_("recipient list not found: {path}").format(path=recipients_csv))
    if as_json:
        with speaking("en"):  # the same JSON in every language (the reasons included)
            findings = run_checks(campaign_file, recipients_csv, settings)
        click.echo(
            json.dumps(
                [{"check": f.name, "result": f.level.value, "reason": f.reason} for f in findings], ensure_ascii=False
            )
        )
    else:
        findings = run_checks(campaign_file, recipients_csv, settings)
        colour = {Level.PASS: "green", Level.WARN: "yellow", Level.FAIL: "bold red"}
        table = Table(title=_("preflight {path}").format(path=campaign_file))
        table.add_column(_("check"))
        table.add_column(_("result"))
        table.add_column(_("reason"), overflow="fold")
        for f in findings:
            table.add_row(_(f.name), f"[{colour[f.level]}]{_(LEVEL_TEXT[f.level])}[/]", f.reason)
        out.print(table)
    sys.exit(EXIT_FAIL if any(f.level is Level.FAIL for f in findings) else EXIT_OK)
