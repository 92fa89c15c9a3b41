"""The call centre's corrections list (SPEC §9, second wave): ``enqueue CAMPAIGN CSV --update-contacts`` and
:func:`dispatcher.update_contacts`.

Rows are read and checked as in ``enqueue`` (:mod:`dispatcher.intake.recipients`; a blank or missing
``receipt_url`` keeps the one in the ledger). For each known person with a new contact:

- ``queued``/``retrying``: re-addressed (it goes once, to the new contact);
- ``failed``/``bounced``/``expired``: queued again on the new contact;
- any other state (``sent``, ``delivered``, ``unknown``, ``complained``, ``suppressed``, ``sending``,
  ``cancelled``): left alone and listed, for ``resend --user``.

An unknown ``user_id``, a contact on the suppression list or an SMS too long for the campaign is a
rejected row (rejects file, exit 3). A row whose contact is what the ledger has changes nothing, so the
same file twice changes nothing the second time. Every change is a transition (actor
``corrections:<file name>``) with the old and new contact masked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.core import clock
from dispatcher.core.campaign import Campaign, load_campaign
from dispatcher.core.csvout import SafeCsvWriter
from dispatcher.core.errors import ConfigError, InputError
from dispatcher.core.i18n import _
from dispatcher.core.states import Channel, Status
from dispatcher.intake.contacts import FieldError, check_user_id
from dispatcher.intake.recipients import RecipientFile, Rejected, rows_from_dicts, validate_row
from dispatcher.ledger.readdress import Address
from dispatcher.ledger.store import CampaignRecord, Delivery
from dispatcher.runtime import Runtime

from .person_resend import sms_parts_for

log = logging.getLogger(__name__)

#: Re-addressed where they stand: still owed their one send.
READDRESS = frozenset({Status.QUEUED, Status.RETRYING})
#: Queued again on the new contact.
REQUEUE = frozenset({Status.FAILED, Status.BOUNCED, Status.EXPIRED})


@dataclass
class CorrectionsResult:
    campaign_id: str
    rows: int = 0
    #: user_ids re-addressed (queued/retrying) and queued again (failed/bounced/expired)
    readdressed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    unchanged: int = 0
    #: (user_id, state) of people left alone: to be handled one by one with ``resend --user``
    left: list[tuple[str, str]] = field(default_factory=list)
    rejected: int = 0
    rejects: list[Rejected] = field(default_factory=list)
    rejects_path: Path | None = None


def check_corrections_header(header: list[str], where: str) -> None:
    if "user_id" not in header:
        raise InputError(_("{where}: header has no 'user_id' column").format(where=where))
    if "email" not in header and "phone" not in header:
        raise InputError(_("{where}: header needs an 'email' or a 'phone' column").format(where=where))
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError(
            _("{where}: column(s) {columns} appear more than once in the header").format(
                where=where, columns=", ".join(dupes)
            )
        )


class _Row(Exception):
    """A rejected row's reason."""


def _target(campaign: Campaign, values: dict[str, str], row: int, person: Delivery) -> Address:
    checked = dict(values)
    if not (checked.get("receipt_url") or "").strip():
        checked["receipt_url"] = person.receipt_url  # a corrections list need not repeat the URL
    try:
        accepted = validate_row(row, checked, campaign)
    except FieldError as exc:
        raise _Row(str(exc)) from None
    return Address(accepted.channel, accepted.contact)


def update_contacts(
    rt: Runtime,
    campaign: str | Path | Campaign,
    rows: str | Path | Iterable[dict[str, Any]],
    dispatch: Callable[[list[int]], None] | None,
    *,
    rejects_path: str | Path | None = None,
    actor: str | None = None,
) -> CorrectionsResult:
    """Apply a corrections list to a campaign already in the ledger (see the module's docstring)."""
    if not isinstance(campaign, Campaign):
        campaign = load_campaign(campaign)
    record = rt.ledger.campaign(campaign.id, fresh=True)
    if record is None:
        raise ConfigError(
            _("campaign '{campaign}' is not in the ledger: enqueue its list first").format(campaign=campaign.id)
        )
    if record.state == "cancelled":
        raise ConfigError(_("campaign '{campaign}' is cancelled").format(campaign=campaign.id))
    source: RecipientFile | None = None
    records: Iterator[tuple[int, dict[str, str] | None, str | None]]
    if isinstance(rows, str | Path):
        source = RecipientFile(Path(rows), check_corrections_header)
        records = source.records()
        rejects_file: Path | None = (
            Path(rejects_path) if rejects_path else Path(rows).with_name(Path(rows).stem + ".rejects.csv")
        )
        who = actor or f"corrections:{Path(rows).name}"
    else:
        records = rows_from_dicts(rows, check_corrections_header)
        rejects_file = Path(rejects_path) if rejects_path else None
        who = actor or "corrections:api"
    who = who[:100]
    result = CorrectionsResult(campaign.id)
    writer: SafeCsvWriter | None = None
    queued: list[int] = []
    seen: dict[str, int] = {}
    try:
        for row, values, problem in records:
            result.rows += 1
            if writer is None and rejects_file is not None:
                header = source.header if source is not None else list(values or {})
                writer = SafeCsvWriter(rejects_file, [*header, "row", "reason"])
            if problem is None and values is not None:
                try:
                    moved = _one(rt, record, campaign, row, values, seen, who, result)
                except _Row as exc:
                    problem = str(exc)
                else:
                    if moved is not None:
                        queued.append(moved)
            if problem is not None:
                result.rejected += 1
                result.rejects.append(Rejected(row, problem, values or {}))
                if writer is not None:
                    writer.write([*((values or {}).get(h, "") for h in writer.header[:-2]), row, problem])
    finally:
        if writer is None and rejects_file is not None and source is not None and source.header:
            writer = SafeCsvWriter(rejects_file, [*source.header, "row", "reason"])
        if writer is not None:
            writer.close()
        # What was re-addressed is in the ledger already; it goes to the broker even if a later row broke.
        if queued and dispatch is not None:
            for start in range(0, len(queued), 5000):
                chunk = queued[start : start + 5000]
                dispatch(chunk)
                rt.ledger.mark_dispatched(chunk, clock.now())
    result.rejects_path = rejects_file if writer is not None else None
    log.info(
        "corrections for %s by %s: %d rows, %d re-addressed, %d queued again, %d unchanged, %d left, %d rejected",
        campaign.id,
        who,
        result.rows,
        len(result.readdressed),
        len(result.requeued),
        result.unchanged,
        len(result.left),
        result.rejected,
    )
    return result


def _one(
    rt: Runtime,
    record: CampaignRecord,
    campaign: Campaign,
    row: int,
    values: dict[str, str],
    seen: dict[str, int],
    who: str,
    result: CorrectionsResult,
) -> int | None:
    """One row: the id of a delivery queued on its new contact, or None when nothing was queued."""
    try:
        user_id = check_user_id(values.get("user_id", ""))
    except FieldError as exc:
        raise _Row(str(exc)) from None
    if user_id in seen:
        raise _Row(f"user_id: duplicate of row {seen[user_id]}")
    seen[user_id] = row
    person = rt.ledger.person_by_user(campaign.id, user_id)
    if person is None:
        raise _Row(f"user_id: not in campaign '{campaign.id}'")
    target = _target(campaign, values, row, person)
    if target == Address(person.channel, person.contact):
        result.unchanged += 1
        return None
    if person.status not in READDRESS | REQUEUE:
        result.left.append((user_id, person.status.value))
        return None
    if rt.ledger.is_suppressed(target.contact) is not None:
        raise _Row(f"{target.channel.value}: the new contact is on the suppression list")
    try:
        parts = sms_parts_for(rt, record, person) if target.channel is Channel.SMS else None
    except InputError as exc:
        raise _Row(str(exc)) from None
    moved = rt.ledger.readdress(person, target, actor=who, why=f"corrected contact (row {row})", sms_parts=parts)
    if moved is None:
        # Changed under us (a worker claimed it): it is no longer waiting, so it is one for `resend --user`.
        now = rt.ledger.get(person.id)
        result.left.append((user_id, (now or person).status.value))
        return None
    (result.readdressed if person.status in READDRESS else result.requeued).append(user_id)
    return person.id
