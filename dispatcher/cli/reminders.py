"""Commands of the campaign's goal: who has redeemed (``redeemed``) and reminders to those who have not
(``remind``)."""

from __future__ import annotations

import sys
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
)
from dispatcher.core.errors import ConfigError, DispatcherError, InputError
from dispatcher.core.i18n import _


@cli.command()
@click.argument("campaign_id")
@click.argument("redemptions_csv", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--rejects",
    "rejects_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write rejected rows (default: beside the input, *.rejects.csv).",
)
def redeemed(campaign_id: str, redemptions_csv: Path, rejects_path: Path | None) -> None:
    """Record the receipt site's redemptions (user_id, optional redeemed_at) for CAMPAIGN_ID."""
    from dispatcher.intake.redemptions import record_redemptions
    from dispatcher.ledger import Ledger

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id, fresh=True) is None:
        fail(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id), EXIT_FAIL)
    try:
        result = record_redemptions(campaign_id, redemptions_csv, ledger=ledger, rejects_path=rejects_path)
    except (ConfigError, InputError) as exc:
        fail(str(exc))
        return
    table = Table(title=_("redemptions for {campaign}").format(campaign=campaign_id), show_header=False)
    for label, value in [
        (_("rows read"), result.rows),
        (_("newly recorded"), result.recorded),
        (_("time filled in"), result.filled),
        (_("already recorded"), result.already),
        (_("rejected"), result.rejected),
        (_("redeemed in all"), ledger.redeemed_count(campaign_id)),
    ]:
        table.add_row(label, f"{value:,}")
    if result.rejects_path:
        table.add_row(_("rejects file"), str(result.rejects_path))
    out.print(table)
    for rejected in result.rejects[:20]:
        err.print(
            _("  row {row}: {reason}").format(row=rejected.row, reason=rejected.reason), highlight=False, markup=False
        )
    if result.rejected > 20:
        err.print(
            _("  … and {n} more in {path}").format(n=f"{result.rejected - 20:,}", path=result.rejects_path),
            highlight=False,
        )
    sys.exit(EXIT_REJECTS if result.rejected else EXIT_OK)


@cli.command()
@click.argument("campaign_id")
@click.option("--template", "template", required=True, help="The reminder's template folder (templates/NAME).")
@click.option(
    "--templates-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Look for the template here first (default: the installed templates).",
)
@click.option("--dry-run", is_flag=True, help="Count the reminders per channel and the SMS parts; queue nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def remind(campaign_id: str, template: str, templates_dir: Path | None, dry_run: bool, yes: bool) -> None:
    """One reminder to every notified person who has not redeemed (and is not suppressed or complained)."""
    from dispatcher.operations.remind import ReminderRun
    from dispatcher.operations.remind import remind as make_reminders

    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from dispatcher.sending.actors import dispatch_ids

        try:
            preview = make_reminders(rt, campaign_id, template, None, dry_run=True, templates_dir=templates_dir)
        except ConfigError as exc:
            fail(str(exc))
            return
        except DispatcherError as exc:
            fail(str(exc), EXIT_FAIL)
            return
        _print(preview, _("would queue"))
        if dry_run or not preview.queued:
            sys.exit(EXIT_REJECTS if preview.too_long_count else EXIT_OK)
        if not yes:
            if not sys.stdin.isatty():
                fail(_("refusing to queue reminders without --yes (no terminal to ask on)"), EXIT_FAIL)
            click.confirm(
                _("Queue {n} reminders ({template})?").format(n=f"{preview.queued:,}", template=template), abort=True
            )
        done: ReminderRun = make_reminders(rt, campaign_id, template, dispatch_ids, templates_dir=templates_dir)
        _print(done, _("queued"))
        if done.state != "active":
            out.print(_("the campaign is {state}: the reminders wait until it is resumed").format(state=done.state))
    sys.exit(EXIT_REJECTS if done.too_long_count else EXIT_OK)


def _print(run: object, verb: str) -> None:
    from dispatcher.operations.remind import ReminderRun

    assert isinstance(run, ReminderRun)
    channels = ", ".join(f"{c} {n:,}" for c, n in sorted(run.by_channel.items()))
    out.print(
        _("{run}: {verb} {n} reminders ({channels}); SMS parts {parts}").format(
            run=run.reminder_id, verb=verb, n=f"{run.queued:,}", channels=channels, parts=f"{run.sms_parts:,}"
        )
    )
    if run.sms_cost is not None:
        out.print(_("  estimated SMS cost {cost}").format(cost=f"{run.sms_cost:,.2f}"))
    if run.too_long_count:
        err.print(
            _("  {n} SMS over the campaign's limit, not queued (fix the template):").format(
                n=f"{run.too_long_count:,}"
            ),
            highlight=False,
        )
        for user_id, length in run.too_long[:20]:
            err.print(
                _("    {user}: {length} characters").format(user=user_id, length=length), highlight=False, markup=False
            )
