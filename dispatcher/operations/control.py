"""Operator actions on a campaign (SPEC §9): pause, resume, cancel. Plain functions; CLI and dashboard call them.

Each is a named, logged operation: the campaign row records the state and why; per-delivery changes go to
the transition log with the operator's name.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from dispatcher.core import clock
from dispatcher.core.errors import DispatcherError
from dispatcher.core.i18n import N_, _
from dispatcher.core.states import CLAIMABLE, Channel, Status
from dispatcher.runtime import Runtime

log = logging.getLogger(__name__)


def operator_name() -> str:
    try:
        return f"operator:{getpass.getuser()}"
    except Exception:
        return "operator"


@dataclass(frozen=True)
class OperationResult:
    campaign_id: str
    state: str
    affected: int = 0


def _require(rt: Runtime, campaign_id: str) -> str:
    record = rt.ledger.campaign(campaign_id, fresh=True)
    if record is None:
        raise DispatcherError(_("no campaign '{campaign}' in the ledger").format(campaign=campaign_id))
    return record.state


def pause(
    rt: Runtime, campaign_id: str, *, who: str | None = None, reason: str = "paused by operator"
) -> OperationResult:
    state = _require(rt, campaign_id)
    if state == "cancelled":
        raise DispatcherError(_("campaign '{campaign}' is cancelled").format(campaign=campaign_id))
    rt.ledger.set_campaign_state(campaign_id, "paused", f"{reason} ({who or operator_name()})")
    for child in _reminder_runs(rt, campaign_id, but="cancelled"):
        rt.ledger.set_campaign_state(child, "paused", f"{reason}: campaign {campaign_id} ({who or operator_name()})")
    log.info("campaign %s paused by %s", campaign_id, who or operator_name())
    return OperationResult(campaign_id, "paused")


def _reminder_runs(rt: Runtime, campaign_id: str, *, but: str) -> list[str]:
    """The campaign's reminder runs (its children) not in state ``but``: pause, resume and cancel of a
    campaign hold, release and cancel its reminders too."""
    found = []
    for child, _purpose in rt.ledger.child_campaigns(campaign_id):
        record = rt.ledger.campaign(child, fresh=True)
        if record is not None and record.state != but:
            found.append(child)
    return found


def resume(
    rt: Runtime, campaign_id: str, dispatch: Callable[[list[int]], None], *, who: str | None = None
) -> OperationResult:
    """Resume sending: reset the circuit breaker and hand everything due to the broker again."""
    from dispatcher.sending.sweep import sweep

    state = _require(rt, campaign_id)
    if state == "cancelled":
        raise DispatcherError(
            _("campaign '{campaign}' is cancelled and cannot be resumed").format(campaign=campaign_id)
        )
    rt.ledger.set_campaign_state(campaign_id, "active", f"resumed by {who or operator_name()}")
    rt.breaker.reset(campaign_id)
    for child in _reminder_runs(rt, campaign_id, but="cancelled"):
        rt.ledger.set_campaign_state(child, "active", f"resumed with {campaign_id} by {who or operator_name()}")
        rt.breaker.reset(child)
    result = sweep(rt, dispatch, everything=True)
    log.info("campaign %s resumed by %s", campaign_id, who or operator_name())
    return OperationResult(campaign_id, "active", result.redispatched)


def cancel(rt: Runtime, campaign_id: str, *, who: str | None = None) -> OperationResult:
    """Stop the campaign for good: everything not yet sent becomes ``cancelled``."""
    _require(rt, campaign_id)
    actor = who or operator_name()
    affected = 0
    for target in [campaign_id, *_reminder_runs(rt, campaign_id, but="")]:
        rt.ledger.set_campaign_state(target, "cancelled", f"cancelled by {actor}")
        while ids := rt.ledger.in_status(target, CLAIMABLE, limit=5000):
            moved = [rt.ledger.move(i, Status.CANCELLED, actor=actor, detail="campaign cancelled") for i in ids]
            affected += sum(m is not None for m in moved)
            if not any(moved):
                break
    log.info("campaign %s cancelled by %s: %d deliveries cancelled", campaign_id, actor, affected)
    return OperationResult(campaign_id, "cancelled", affected)


#: What `resend` looks at unless told otherwise: the failures an operator can fix by sending again.
DEFAULT_RESEND = frozenset({Status.FAILED, Status.EXPIRED})
#: Never resent: the person was reached, complained, or must not be contacted.
NEVER_RESEND = frozenset({Status.DELIVERED, Status.COMPLAINED, Status.SUPPRESSED})


@dataclass
class ResendPlan:
    campaign_id: str
    dry_run: bool
    selected: int = 0
    requeued: list[int] = field(default_factory=list)
    #: reason (in English, marked for the catalogue; shown with ``_()``) -> count of deliveries left alone
    skipped: dict[str, int] = field(default_factory=dict)
    by_channel: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def resend(
    rt: Runtime,
    campaign_id: str,
    dispatch: Callable[[list[int]], None] | None,
    *,
    statuses: Iterable[Status] = DEFAULT_RESEND,
    channel: Channel | None = None,
    via: Channel | None = None,
    dry_run: bool = False,
    who: str | None = None,
) -> ResendPlan:
    """Queue chosen deliveries again, optionally on the other channel (``via``), never twice at once.

    Nobody ``delivered``, ``complained`` or on the suppression list is ever selected. With ``via`` a
    delivery moves to the person's other registered contact; rows without one are skipped and counted.
    """
    from dispatcher.core import sms

    state = _require(rt, campaign_id)
    if state == "cancelled":
        raise DispatcherError(_("campaign '{campaign}' is cancelled").format(campaign=campaign_id))
    wanted = frozenset(statuses) - NEVER_RESEND
    actor = who or operator_name()
    plan = ResendPlan(campaign_id, dry_run)
    record = rt.ledger.campaign(campaign_id, fresh=True)
    assert record is not None
    renderer = rt.renderer(record)
    for delivery in rt.ledger.iter_campaign(campaign_id):
        if delivery.status not in wanted or (channel is not None and delivery.channel is not channel):
            continue
        plan.selected += 1
        target = via or delivery.channel
        contact = delivery.contact
        values: dict[str, object] = {"not_before": None, "attempts_base": delivery.attempts, "reason": None}
        if target is not delivery.channel:
            contact = (delivery.phone if target is Channel.SMS else delivery.email) or ""
            if not contact:
                plan.skip(
                    N_("no sms contact on the row") if target is Channel.SMS else N_("no email contact on the row")
                )
                continue
            values.update(channel=target.value, contact=contact, provider=None, provider_message_id=None)
            if target is Channel.SMS:
                text = renderer.sms(delivery.fields, delivery.receipt_url)
                if sms.length(text) > record.campaign.sms_max_chars:
                    plan.skip(N_("SMS longer than the campaign allows"))
                    continue
                values["sms_parts"] = sms.parts(text)
        if rt.ledger.is_suppressed(contact):
            plan.skip(N_("contact on the suppression list"))
            continue
        plan.by_channel[target.value] = plan.by_channel.get(target.value, 0) + 1
        if dry_run:
            plan.requeued.append(delivery.id)
            continue
        moved = rt.ledger.move(
            delivery.id,
            Status.QUEUED,
            actor=actor,
            expect=[delivery.status],
            detail=f"resend via {target.value}" if via else "resend",
            values=values,
        )
        if moved is None:
            plan.skip(N_("changed while resending"))
            continue
        plan.requeued.append(delivery.id)
    if not dry_run and plan.requeued and dispatch is not None:
        for start in range(0, len(plan.requeued), 5000):
            chunk = plan.requeued[start : start + 5000]
            dispatch(chunk)
            rt.ledger.mark_dispatched(chunk, clock.now())
    log.info(
        "resend on %s by %s: %d selected, %d re-queued%s",
        campaign_id,
        actor,
        plan.selected,
        len(plan.requeued),
        " (dry run)" if dry_run else "",
    )
    return plan
