"""Operators' commands: pause, resume, cancel, resend, suppression."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from dispatcher.cli.common import (
    EXIT_FAIL,
    cli,
    fail,
    install_runtime,
    out,
    redis_available,
    settings_or_exit,
)
from dispatcher.core import clock
from dispatcher.core.i18n import N_, _
from dispatcher.core.labels import shown_campaign_state, shown_channel


# operators: pause, resume, cancel --------------------------------------------------------------
@cli.command()
@click.argument("campaign_id")
def pause(campaign_id: str) -> None:
    """Stop sending until `resume` (nothing is lost)."""
    from dispatcher.operations import control as operations

    settings = settings_or_exit()
    with redis_available(settings) as live:
        result = operations.pause(install_runtime(live), campaign_id)
    out.print(
        _("campaign {campaign}: {state}").format(campaign=result.campaign_id, state=shown_campaign_state(result.state))
    )


@cli.command()
@click.argument("campaign_id")
def resume(campaign_id: str) -> None:
    """Resume a paused campaign (also after the circuit breaker paused it)."""
    from dispatcher.operations import control as operations

    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from dispatcher.sending.actors import dispatch_ids

        result = operations.resume(rt, campaign_id, dispatch_ids)
    done = _("campaign {campaign}: {state}; {count} deliveries re-enqueued")
    out.print(
        done.format(campaign=result.campaign_id, state=shown_campaign_state(result.state), count=f"{result.affected:,}")
    )


@cli.command()
@click.argument("campaign_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cancel(campaign_id: str, yes: bool) -> None:
    """Cancel for good: every delivery not yet sent becomes `cancelled`."""
    from dispatcher.operations import control as operations

    settings = settings_or_exit()
    if not yes and sys.stdin.isatty():
        click.confirm(
            _("Cancel campaign {campaign}? Unsent deliveries will never be sent").format(campaign=campaign_id),
            abort=True,
        )
    with redis_available(settings) as live:
        result = operations.cancel(install_runtime(live), campaign_id)
    done = _("campaign {campaign}: {state}; {count} deliveries cancelled")
    out.print(
        done.format(campaign=result.campaign_id, state=shown_campaign_state(result.state), count=f"{result.affected:,}")
    )


# feedback, suppression, resend, report --------------------------------------------------------
@cli.command()
@click.option("--once", is_flag=True, help="Drain the queue, then exit.")
def events(once: bool) -> None:
    """Consume provider feedback (SES/SMS events via SQS) into the ledger."""
    import signal
    import threading

    from dispatcher.feedback.consumer import consume

    settings = settings_or_exit()
    if not settings.feedback_queue_url:
        fail(_("DISPATCHER_FEEDBACK_QUEUE_URL is not set"))
    with redis_available(settings) as live:
        rt = install_runtime(live)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stats = consume(rt, settings.feedback_queue_url or "", once=once, stop=stop)
        except KeyboardInterrupt:
            return
    counts = _(
        "messages {messages}; events {events} (duplicates {duplicates}, waiting for their send {pending}, "
        "not understood {unparsable}); "
    ).format(
        messages=f"{stats.messages:,}",
        events=f"{stats.events:,}",
        duplicates=f"{stats.duplicates:,}",
        pending=f"{stats.pending:,}",
        unparsable=f"{stats.unparsable:,}",
    )
    out.print(counts + ", ".join(f"{_(k)} {v:,}" for k, v in sorted(stats.outcomes.items())))


#: The kinds of event outcome `events` counts (dispatcher.feedback.apply), marked for the catalogue.
EVENT_OUTCOMES = (N_("recorded"), N_("ignored"), N_("moved"), N_("duplicate"), N_("pending"))


@cli.group()
def suppression() -> None:
    """The suppression list: contacts no campaign sends to again."""


@suppression.command("list")
def suppression_list() -> None:
    """Every suppressed contact (masked), with the reason, who added it and since when."""
    from dispatcher.core.privacy import mask_contact
    from dispatcher.ledger import Ledger

    settings = settings_or_exit()
    table = Table(title=_("suppression list"))
    for column in (_("contact"), _("channel"), _("reason"), _("source"), _("since")):
        table.add_column(column)
    for row in Ledger(settings.ledger_url).suppression_list():
        table.add_row(
            mask_contact(row["channel"], row["contact"]),
            shown_channel(row["channel"]),
            row["reason"],
            row["source"],
            row["created_at"].astimezone(clock.JST).strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


def _normalised_contact(contact: str) -> tuple[str, Any]:
    from dispatcher.core.states import Channel
    from dispatcher.intake.contacts import FieldError, check_email, check_phone

    try:
        return (check_email(contact)[0], Channel.EMAIL) if "@" in contact else (check_phone(contact), Channel.SMS)
    except FieldError as exc:
        fail(str(exc))
        raise


@suppression.command("add")
@click.argument("contact")
@click.option("--reason", default="added by operator", show_default=True, help="Why, kept with the entry.")
def suppression_add(contact: str, reason: str) -> None:
    """Never send to CONTACT (an e-mail address or a phone number) again, in any campaign."""
    from dispatcher.core.privacy import mask_contact
    from dispatcher.ledger import Ledger
    from dispatcher.operations.control import operator_name

    settings = settings_or_exit()
    value, channel = _normalised_contact(contact)
    added = Ledger(settings.ledger_url).suppress(value, channel, reason, operator_name())
    done = _("added") if added else _("already on the list")
    out.print(f"{mask_contact(channel.value, value)}: {done}")


@suppression.command("remove")
@click.argument("contact")
def suppression_remove(contact: str) -> None:
    """Take CONTACT off the suppression list (exit 1 when it was not on it)."""
    from dispatcher.core.privacy import mask_contact
    from dispatcher.ledger import Ledger

    settings = settings_or_exit()
    value, channel = _normalised_contact(contact)
    removed = Ledger(settings.ledger_url).unsuppress(value)
    done = _("removed") if removed else _("was not on the list")
    out.print(f"{mask_contact(channel.value, value)}: {done}")
    if not removed:
        sys.exit(EXIT_FAIL)


@cli.command()
@click.argument("campaign_id")
@click.option(
    "--status",
    "statuses",
    default="failed,expired",
    show_default=True,
    help="Comma-separated states to resend (never delivered, complained or suppressed).",
)
@click.option("--channel", type=click.Choice(["email", "sms"]), help="Only deliveries on this channel.")
@click.option(
    "--via", type=click.Choice(["email", "sms"]), help="Send on this channel instead (the row's other contact)."
)
@click.option("--dry-run", is_flag=True, help="Show what would be resent; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--user", "user_id", help="Only this person (by user_id), from any state but complained.")
@click.option("--email", help="With --user: send to this corrected e-mail address.")
@click.option("--phone", help="With --user: send by SMS to this corrected mobile number.")
@click.option("--reason", help="With --user: why (required; kept in the audit trail).")
def resend(
    campaign_id: str,
    statuses: str,
    channel: str | None,
    via: str | None,
    dry_run: bool,
    yes: bool,
    user_id: str | None,
    email: str | None,
    phone: str | None,
    reason: str | None,
) -> None:
    """Queue failed deliveries again (optionally via the other channel), or one person with --user."""
    from dispatcher.core.states import Channel, Status
    from dispatcher.operations import control as operations

    if user_id is not None:
        from dispatcher.cli.contacts import resend_one

        if channel or via or statuses != "failed,expired":
            fail(_("--user resends one person: --status, --channel and --via do not apply (use --email/--phone)"))
        resend_one(
            settings_or_exit(), campaign_id, user_id, email=email, phone=phone, reason=reason, dry_run=dry_run, yes=yes
        )
        return
    if email or phone or reason:
        fail(_("--email, --phone and --reason go with --user"))
    try:
        wanted = [Status(s.strip()) for s in statuses.split(",") if s.strip()]
    except ValueError as exc:
        fail(_("--status: {error}").format(error=exc))
        return
    settings = settings_or_exit()
    with redis_available(settings) as live:
        rt = install_runtime(live)
        from dispatcher.sending.actors import dispatch_ids

        on_channel = Channel(channel) if channel else None
        via_channel = Channel(via) if via else None
        preview = operations.resend(
            rt, campaign_id, None, statuses=wanted, channel=on_channel, via=via_channel, dry_run=True
        )
        _print_resend(preview, N_("would resend"))
        if dry_run or not preview.requeued:
            return
        if not yes:
            if not sys.stdin.isatty():
                fail(_("refusing to resend without --yes (no terminal to ask on)"), EXIT_FAIL)
            click.confirm(_("Resend {count} deliveries?").format(count=f"{len(preview.requeued):,}"), abort=True)
        done = operations.resend(rt, campaign_id, dispatch_ids, statuses=wanted, channel=on_channel, via=via_channel)
        _print_resend(done, N_("re-queued"))


def _print_resend(plan: Any, verb: str) -> None:
    channels = ", ".join(f"{shown_channel(c)} {n:,}" for c, n in sorted(plan.by_channel.items())) or _("none")
    line = _("{campaign}: {selected} selected; {verb} {count} ({channels})").format(
        campaign=plan.campaign_id,
        selected=f"{plan.selected:,}",
        verb=_(verb),
        count=f"{len(plan.requeued):,}",
        channels=channels,
    )
    out.print(line)
    for reason, n in sorted(plan.skipped.items()):
        out.print(_("  skipped {count}: {reason}").format(count=f"{n:,}", reason=_(reason)))


@cli.command()
@click.argument("campaign_id")
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The CSV file to write (UTF-8 with a BOM, for Excel).",
)
def report(campaign_id: str, out_path: Path) -> None:
    """One row per delivery: who, which channel, what happened, with what evidence (contacts masked)."""
    from dispatcher.ledger import Ledger
    from dispatcher.operations.report import write_report

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id) is None:
        fail(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id), EXIT_FAIL)
    summary = write_report(ledger, campaign_id, out_path)
    written = _(
        "{rows} deliveries written to {path}; notified {notified}, not (yet) notified {not_notified}; "
        "rejected at import {rejected}"
    )
    out.print(
        written.format(
            rows=f"{summary.rows:,}",
            path=out_path,
            notified=f"{summary.notified:,}",
            not_notified=f"{summary.rows - summary.notified:,}",
            rejected=f"{summary.rejected:,}",
        )
    )
