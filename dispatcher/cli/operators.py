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


# operators: pause, resume, cancel --------------------------------------------------------------
@cli.command()
@click.argument("campaign_id")
def pause(campaign_id: str) -> None:
    """Stop sending until `resume` (nothing is lost)."""
    from dispatcher.operations import control as operations

    settings = settings_or_exit()
    with redis_available(settings) as live:
        result = operations.pause(install_runtime(live), campaign_id)
    out.print(f"campaign {result.campaign_id}: {result.state}")


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
    out.print(f"campaign {result.campaign_id}: {result.state}; {result.affected:,} deliveries re-enqueued")


@cli.command()
@click.argument("campaign_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def cancel(campaign_id: str, yes: bool) -> None:
    """Cancel for good: every delivery not yet sent becomes `cancelled`."""
    from dispatcher.operations import control as operations

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

    from dispatcher.feedback.consumer import consume

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
    out.print(
        f"messages {stats.messages:,}; events {stats.events:,} (duplicates {stats.duplicates:,}, "
        f"waiting for their send {stats.pending:,}, not understood {stats.unparsable:,}); "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(stats.outcomes.items()))
    )


@cli.group()
def suppression() -> None:
    """The suppression list: contacts no campaign sends to again."""


@suppression.command("list")
def suppression_list() -> None:
    from dispatcher.core.privacy import mask_contact
    from dispatcher.ledger import Ledger

    settings = settings_or_exit()
    table = Table(title="suppression list")
    for column in ("contact", "channel", "reason", "source", "since"):
        table.add_column(column)
    for row in Ledger(settings.ledger_url).suppression_list():
        table.add_row(
            mask_contact(row["channel"], row["contact"]),
            row["channel"],
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
@click.option("--reason", default="added by operator", show_default=True)
def suppression_add(contact: str, reason: str) -> None:
    from dispatcher.core.privacy import mask_contact
    from dispatcher.ledger import Ledger
    from dispatcher.operations.control import operator_name

    settings = settings_or_exit()
    value, channel = _normalised_contact(contact)
    added = Ledger(settings.ledger_url).suppress(value, channel, reason, operator_name())
    out.print(f"{mask_contact(channel.value, value)}: {'added' if added else 'already on the list'}")


@suppression.command("remove")
@click.argument("contact")
def suppression_remove(contact: str) -> None:
    from dispatcher.core.privacy import mask_contact
    from dispatcher.ledger import Ledger

    settings = settings_or_exit()
    value, channel = _normalised_contact(contact)
    removed = Ledger(settings.ledger_url).unsuppress(value)
    out.print(f"{mask_contact(channel.value, value)}: {'removed' if removed else 'was not on the list'}")
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
            fail("--user resends one person: --status, --channel and --via do not apply (use --email/--phone)")
        resend_one(
            settings_or_exit(), campaign_id, user_id, email=email, phone=phone, reason=reason, dry_run=dry_run, yes=yes
        )
        return
    if email or phone or reason:
        fail("--email, --phone and --reason go with --user")
    try:
        wanted = [Status(s.strip()) for s in statuses.split(",") if s.strip()]
    except ValueError as exc:
        fail(f"--status: {exc}")
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
        _print_resend(preview, "would resend")
        if dry_run or not preview.requeued:
            return
        if not yes:
            if not sys.stdin.isatty():
                fail("refusing to resend without --yes (no terminal to ask on)", EXIT_FAIL)
            click.confirm(f"Resend {len(preview.requeued):,} deliveries?", abort=True)
        done = operations.resend(rt, campaign_id, dispatch_ids, statuses=wanted, channel=on_channel, via=via_channel)
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
    from dispatcher.ledger import Ledger
    from dispatcher.operations.report import write_report

    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id) is None:
        fail(f"no campaign '{campaign_id}' in the ledger", EXIT_FAIL)
    summary = write_report(ledger, campaign_id, out_path)
    out.print(
        f"{summary.rows:,} deliveries written to {out_path}; notified {summary.notified:,}, "
        f"not (yet) notified {summary.rows - summary.notified:,}; rejected at import {summary.rejected:,}"
    )
