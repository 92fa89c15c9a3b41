"""``dispatcher remind``: one reminder per notified, unredeemed, unsuppressed person (SPEC §9, §10).

A reminder run is a campaign of its own, a child of the campaign it reminds about: id
``<campaign>~<template>``, ``parent_id`` the campaign, ``purpose`` ``reminder:<template>``, the parent's
definition copied with the reminder template (so send-by, the SMS window, ``send_from`` and every other
key are the parent's) and that template's sources snapshotted. Its deliveries are ordinary deliveries on
the channel and contact that reached the person, so the atomic claim, ``unknown`` on a lost answer, the
sweep, rate limits, quotas, the SMS window, send-by and the breaker hold as for a first message. The
unique campaign + user makes a second run add nobody; the worker checks the redemption again right before
each send (:mod:`dispatcher.sending.reminders`).

The SMS length is checked here for every row, rendered with the person's real URL: a row over the
campaign's limit is listed and not queued (the others are).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dispatcher.core import clock, sms
from dispatcher.core.campaign import parse_campaign
from dispatcher.core.errors import ConfigError, DispatcherError
from dispatcher.core.states import Channel
from dispatcher.runtime import Runtime
from dispatcher.sending.render import Renderer, load_template_sources

log = logging.getLogger(__name__)

PAGE = 5000
#: Rows over the SMS limit kept in the result (all are counted).
TOO_LONG_LISTED = 1000


def reminder_id(campaign_id: str, template: str) -> str:
    """The reminder run's campaign id; refused when it would not fit the ledger's 64 characters."""
    value = f"{campaign_id}~{template}"
    if len(value) > 64:
        raise ConfigError(f"reminder run id '{value}' is longer than 64 characters: use a shorter template name")
    return value


def purpose(template: str) -> str:
    return f"reminder:{template}"


@dataclass
class ReminderRun:
    campaign_id: str
    reminder_id: str
    template: str
    dry_run: bool
    #: People who get the reminder (on a dry run: would get it) this time.
    queued: int = 0
    by_channel: dict[str, int] = field(default_factory=lambda: {"email": 0, "sms": 0})
    sms_parts: int = 0
    sms_cost: float | None = None
    #: SMS rows over the campaign's limit: (user_id, length), not queued.
    too_long: list[tuple[str, int]] = field(default_factory=list)
    too_long_count: int = 0
    #: The reminder run's state (it follows the parent's: a paused campaign's reminders wait too).
    state: str = "active"
    created: bool = False


def _child_definition(parent: dict[str, Any], child_id: str, template: str) -> dict[str, Any]:
    definition = dict(parent)
    definition.update(id=child_id, template=template, name=f"{parent['name']}（リマインダー {template}）")
    return definition


def remind(
    rt: Runtime,
    campaign_id: str,
    template: str,
    dispatch: Callable[[list[int]], None] | None,
    *,
    dry_run: bool = False,
    who: str | None = None,
    templates_dir: Any = None,
) -> ReminderRun:
    """Queue (or, with ``dry_run``, count) the reminders of ``template`` for ``campaign_id``."""
    from datetime import datetime

    from dispatcher.operations.control import operator_name

    ledger = rt.ledger
    record = ledger.campaign(campaign_id, fresh=True)
    if record is None:
        raise DispatcherError(f"no campaign '{campaign_id}' in the ledger")
    if record.parent_id is not None:
        raise DispatcherError(f"'{campaign_id}' is itself a reminder run; remind its campaign '{record.parent_id}'")
    if record.state == "cancelled":
        raise DispatcherError(f"campaign '{campaign_id}' is cancelled")
    if clock.now() >= record.campaign.send_by:
        raise DispatcherError(f"campaign '{campaign_id}' is past its send_by ({record.campaign.send_by.isoformat()})")
    child_id = reminder_id(campaign_id, template)
    stored = ledger.campaign_definition(campaign_id)
    assert stored is not None
    definition = _child_definition(stored, child_id, template)
    parsed = dict(definition)
    for key in ("deadline", "send_by", "send_from"):
        if isinstance(parsed.get(key), str):
            parsed[key] = datetime.fromisoformat(parsed[key])
    child = parse_campaign(parsed, where=f"reminder run {child_id}")
    existing = ledger.campaign(child_id, fresh=True)
    if existing is not None:
        if existing.parent_id != campaign_id:
            raise DispatcherError(f"campaign '{child_id}' exists and is not a reminder run of '{campaign_id}'")
        sources = existing.templates
    else:
        sources = load_template_sources(child, templates_dir)
    renderer = Renderer(child, sources, rt.settings.email_sender)
    actor = who or operator_name()
    run = ReminderRun(campaign_id, child_id, template, dry_run)
    run.state = existing.state if existing is not None and existing.state == "cancelled" else record.state
    if run.state == "cancelled":
        raise DispatcherError(f"reminder run '{child_id}' is cancelled")
    if not dry_run and existing is None:
        run.created = ledger.save_reminder_campaign(
            child_id,
            campaign_id,
            purpose(template),
            definition["name"],
            definition,
            sources,
            run.state,
            f"reminder run made by {actor}",
        )
    elif not dry_run and existing is not None and existing.state != record.state:
        ledger.set_campaign_state(child_id, record.state, f"follows {campaign_id} ({actor})")
    ledger.refresh_statistics()
    checked_email = False
    bounds = ledger.id_range(campaign_id)
    for low in range(bounds[0], bounds[1] + 1, PAGE) if bounds else ():
        page = ledger.reminder_candidates(campaign_id, child_id, low, low + PAGE - 1)
        rows = []
        for row in page:
            parts = None
            if row["channel"] == Channel.SMS.value:
                length, parts = sms.measure(renderer.sms(row["fields"] or {}, row["receipt_url"]))
                if length > child.sms_max_chars:
                    run.too_long_count += 1
                    if len(run.too_long) < TOO_LONG_LISTED:
                        run.too_long.append((row["user_id"], length))
                    continue
                run.sms_parts += parts
            elif not checked_email:
                renderer.email(row["fields"] or {}, row["receipt_url"])  # a template error stops the run here
                checked_email = True
            run.by_channel[row["channel"]] = run.by_channel.get(row["channel"], 0) + 1
            rows.append(
                {
                    "user_id": row["user_id"],
                    "row_no": row["row_no"],
                    "channel": row["channel"],
                    "contact": row["contact"],
                    "email": row["email"],
                    "phone": row["phone"],
                    "flags": row["flags"],
                    "receipt_url": row["receipt_url"],
                    "fields": row["fields"] or {},
                    "sms_parts": parts,
                }
            )
        if dry_run:
            run.queued += len(rows)
            continue
        new_ids = ledger.add_deliveries(child_id, rows, actor=actor)
        run.queued += len(new_ids)
        if new_ids and dispatch is not None and run.state == "active":
            dispatch(new_ids)
    if rt.settings.sms_price_per_part is not None:
        run.sms_cost = run.sms_parts * rt.settings.sms_price_per_part
    log.info(
        "reminders %s of %s by %s: %d %s (email %d, sms %d in %d parts), %d SMS over the limit not queued",
        template,
        campaign_id,
        actor,
        run.queued,
        "would be queued (dry run)" if dry_run else "queued",
        run.by_channel.get("email", 0),
        run.by_channel.get("sms", 0),
        run.sms_parts,
        run.too_long_count,
    )
    return run
