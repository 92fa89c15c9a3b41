"""Correcting and resending one person's message: ``resend CAMPAIGN --user ID`` and ``enqueue … --update-contacts``
(SPEC §9, second wave). The commands themselves are declared where their first-wave forms are (``resend`` in
operators, ``enqueue`` in campaigns); what they do with these options is here."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from dispatcher.cli.common import EXIT_OK, EXIT_REJECTS, err, fail, install_runtime, out, redis_available
from dispatcher.core.errors import ConfigError, InputError
from dispatcher.core.i18n import _
from dispatcher.core.labels import shown_status
from dispatcher.core.settings import Settings


def resend_one(
    settings: Settings,
    campaign_id: str,
    user_id: str,
    *,
    email: str | None,
    phone: str | None,
    reason: str | None,
    dry_run: bool,
    yes: bool,
) -> None:
    """``resend CAMPAIGN --user ID [--email E | --phone P] --reason TEXT [--yes]``."""
    from dispatcher.operations.control import operator_name
    from dispatcher.operations.person_resend import plan_person_resend, resend_person

    if not (reason or "").strip() and not dry_run:
        fail(_("--reason is required with --user (it goes to the audit trail)"))
    with redis_available(settings) as live:
        rt = install_runtime(live)
        try:
            plan = plan_person_resend(rt, campaign_id, user_id, email=email, phone=phone)
        except InputError as exc:
            fail(str(exc))
            return
        change = (
            _("{old} -> {new}").format(old=plan.old.masked(), new=plan.new.masked())
            if plan.changes_contact
            else _("again to {contact}").format(contact=plan.new.masked())
        )
        out.print(
            _("{campaign} user {user}: {state}; resend {change}").format(
                campaign=campaign_id, user=user_id, state=shown_status(plan.status.value), change=change
            ),
            highlight=False,
            markup=False,
        )
        if dry_run:
            return
        if not yes:
            click.confirm(_("Send this person their message again?"), abort=True)
        from dispatcher.sending.actors import dispatch_ids

        done = resend_person(
            rt,
            campaign_id,
            user_id,
            dispatch_ids,
            reason=reason or "",
            email=email,
            phone=phone,
            who=operator_name(),
        )
    out.print(
        _("queued: one message to {contact} (was {state})").format(
            contact=done.new.masked(), state=shown_status(done.status.value)
        ),
        highlight=False,
        markup=False,
    )


def corrections(settings: Settings, campaign_file: Path, csv_path: Path, rejects_path: Path | None) -> None:
    """``enqueue CAMPAIGN_FILE CSV --update-contacts``: exit 0, or 3 when some rows were rejected."""
    from dispatcher.operations.corrections import update_contacts

    try:
        with redis_available(settings) as live:
            rt = install_runtime(live)
            from dispatcher.sending.actors import dispatch_ids

            result = update_contacts(rt, campaign_file, csv_path, dispatch_ids, rejects_path=rejects_path)
    except (ConfigError, InputError) as exc:
        fail(str(exc))
        return
    summary = Table(title=_("corrections for {campaign}").format(campaign=result.campaign_id), show_header=False)
    for label, value in [
        (_("rows read"), result.rows),
        (_("re-addressed (not yet sent)"), len(result.readdressed)),
        (_("queued again on the new contact"), len(result.requeued)),
        (_("unchanged"), result.unchanged),
        (_("left alone (see below)"), len(result.left)),
        (_("rejected"), result.rejected),
    ]:
        summary.add_row(label, f"{value:,}")
    if result.rejects_path:
        summary.add_row(_("rejects file"), str(result.rejects_path))
    out.print(summary)
    if result.left:
        left = Table(
            title=_("left alone: handle each with `dispatcher resend {campaign} --user ID`").format(
                campaign=result.campaign_id
            )
        )
        left.add_column("user_id")
        left.add_column(_("state"))
        for user_id, state in result.left:
            left.add_row(user_id, shown_status(state))
        out.print(left)
    for rejected in result.rejects[:20]:
        err.print(
            _("  row {row}: {reason}").format(row=rejected.row, reason=rejected.reason), highlight=False, markup=False
        )
    if result.rejected > 20:
        err.print(_("  … and {n} more in {path}").format(n=f"{result.rejected - 20:,}", path=result.rejects_path))
    sys.exit(EXIT_REJECTS if result.rejected else EXIT_OK)
