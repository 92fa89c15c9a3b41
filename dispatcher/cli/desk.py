"""The call centre's desk: ``dispatcher person`` looks one person up (SPEC §9, second wave)."""

from __future__ import annotations

import json

import click
from rich.table import Table
from rich.text import Text

from dispatcher.cli.common import EXIT_FAIL, cli, fail, out, settings_or_exit
from dispatcher.core.clock import JST
from dispatcher.core.i18n import _
from dispatcher.core.labels import shown_channel, shown_status
from dispatcher.operations.person import By, PersonView, Step, jst, people_json


def timeline(title: str, steps: list[Step]) -> Table:
    table = Table(title=title, title_justify="left")
    for name in (_("time (JST)"), _("from"), _("to"), "#"):
        table.add_column(name, no_wrap=True)
    # Folded, never cut: every character of who did it and why stays readable on a narrow terminal.
    for name in (_("actor"), _("code"), _("detail")):
        table.add_column(name, overflow="fold")
    for s in steps:
        # Text, not markup: an actor or detail holding "[...]" is shown as written.
        table.add_row(
            *(
                Text(value)
                for value in (
                    s.at.astimezone(JST).strftime("%Y-%m-%d %H:%M:%S"),
                    shown_status(s.from_status) if s.from_status else "—",
                    shown_status(s.to_status),
                    str(s.attempt),
                    s.actor,
                    s.code or "",
                    s.detail or "",
                )
            )
        )
    return table


def facts(view: PersonView) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    ids = ", ".join(f"{m.message_id} ({m.provider}, #{m.attempt})" for m in view.provider_message_ids)
    rows = [
        (_("campaign"), view.campaign_id),
        (_("user id"), view.user_id),
        (_("inquiry no"), view.inquiry_no or "—"),
        (_("channel"), shown_channel(view.channel)),
        (_("contact"), view.contact),
        (_("contacts on file"), ", ".join(f"{shown_channel(ch)}: {c}" for ch, c in view.contacts.items()) or "—"),
        (_("state"), shown_status(view.status)),
        (_("attempts"), str(view.attempts)),
        (_("provider ids"), ids or "—"),
        (_("first sent"), jst(view.first_sent_at) or "—"),
        (_("last event"), jst(view.last_event_at) or "—"),
        (_("reason"), view.reason or "—"),
        (_("flags"), ", ".join(view.flags) or "—"),
        (_("redeemed"), jst(view.redeemed_at) or _("not yet")),
        (_("reminders"), str(len(view.reminders)) if view.reminders else _("none")),
    ]
    if view.fallback is not None:
        first = f"{shown_channel(view.fallback.first_channel or '')}: {shown_status(view.fallback.first_status or '')}"
        rows.append((_("fell back"), _("{at} (first {first})").format(at=jst(view.fallback.at), first=first)))
    for name, value in rows:
        table.add_row(Text(name), Text(value))
    return table


def show(view: PersonView) -> None:
    out.print(facts(view))
    out.print(timeline(_("timeline"), view.history))
    for r in view.reminders:
        title = _("reminder {template}: {status}, {attempts} attempt(s), sent {sent}").format(
            template=r.template, status=shown_status(r.status), attempts=r.attempts, sent=jst(r.first_sent_at) or "—"
        )
        out.print(timeline(title, r.history))


@cli.command()
@click.argument("campaign_id")
@click.option("--user", "user_id", metavar="ID", help="The user_id on their row.")
@click.option("--inquiry", "inquiry_no", metavar="NO", help="The inquiry number on their row.")
@click.option("--contact", metavar="EMAIL_OR_PHONE", help="Their e-mail address or phone number, in any writing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def person(campaign_id: str, user_id: str | None, inquiry_no: str | None, contact: str | None, as_json: bool) -> None:
    """Look one person up: masked contact, state, provider ids, redemption, reminders and the whole history.

    Exit 0 found, 1 not found, 2 usage error. When several people share the inquiry number or contact, all
    are shown (JSON: the first, with "matches" and "others").
    """
    from dispatcher.ledger import Ledger
    from dispatcher.operations.person import find_people

    selectors = ((By.USER, user_id), (By.INQUIRY, inquiry_no), (By.CONTACT, contact))
    given = [(by, v) for by, v in selectors if v is not None]
    if len(given) != 1:
        raise click.UsageError(_("give exactly one of --user, --inquiry, --contact"))
    [(by, value)] = given
    settings = settings_or_exit()
    ledger = Ledger(settings.ledger_url)
    if ledger.campaign(campaign_id) is None:
        fail(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id), EXIT_FAIL)
    views = find_people(ledger, campaign_id, by, value)
    if not views:
        # The value itself is not repeated: it may be a contact.
        message = _("no such person in campaign '{campaign}' (by {by})")
        fail(message.format(campaign=campaign_id, by=by.value), EXIT_FAIL)
    if as_json:
        click.echo(json.dumps(people_json(views), ensure_ascii=False))
        return
    if len(views) > 1:
        out.print(Text(_("{n} people match; each is shown below").format(n=len(views))))
    for view in views:
        show(view)
