"""What the dashboard says about a campaign, assembled from bounded reads; pages and API share it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any

from dispatcher.core import clock
from dispatcher.core.privacy import redact
from dispatcher.core.states import PENDING, Status
from dispatcher.operations.plan import Plan, make_plan, merge_pending
from dispatcher.operations.status import campaign_status

from ..runtime import Runtime
from . import queries
from .chart import progress_chart
from .labels import campaign_state_label
from .series import SendsPerMinute

#: Deliveries that went through ``sent`` (the cumulative line of the chart counts these).
SENT_EVER = (Status.SENT, Status.DELIVERED, Status.BOUNCED, Status.COMPLAINED)
#: Lists shown one by one: two months of daily lists (web applicants' lists arrive day by day).
RECENT_IMPORTS = 62
#: Chart ranges an operator can pick, in minutes.
CHART_RANGES = (15, 60, 360, 1440)


@dataclass(frozen=True)
class CampaignView:
    id: str
    name: str
    state: str
    state_reason: str | None
    send_by: datetime
    deadline: datetime
    #: ``campaign_status()``: the SPEC §9 ``status --json`` shape.
    status: dict[str, Any]
    plan: Plan
    #: The scheduled start (campaign key ``send_from``); None when the campaign has none.
    send_from: datetime | None = None

    @property
    def held(self) -> bool:
        """Sending has not started yet: the campaign's send_from is still ahead."""
        return self.send_from is not None and self.plan.now < self.send_from

    @property
    def total(self) -> int:
        return int(self.status["total"])

    @property
    def pending(self) -> int:
        return sum(n for st, n in self.status["by_status"].items() if st in PENDING)

    @property
    def done(self) -> int:
        return self.total - self.pending

    @property
    def sent_ever(self) -> int:
        return sum(self.status["by_status"].get(s.value, 0) for s in SENT_EVER)

    @property
    def running(self) -> bool:
        return self.state == "active" and self.pending > 0

    @property
    def will_miss(self) -> bool:
        return self.state != "cancelled" and not self.plan.will_finish


def campaign_view(rt: Runtime, campaign_id: str) -> CampaignView | None:
    """Two small reads (campaign row, counters) and, for SMS, a bounded sample for the plan."""
    ledger = rt.ledger
    record = ledger.campaign(campaign_id, fresh=True)
    if record is None:
        return None
    status = campaign_status(ledger, campaign_id)
    counts = {(ch, st): n for ch, by in status["by_channel"].items() for st, n in by.items()}
    pending = [queries.pending_work(ledger, campaign_id, counts)]
    for child, _ in ledger.child_campaigns(campaign_id):  # queued reminders share the campaign's limits
        pending.append(queries.pending_work(ledger, child, ledger.counts(child)))
    plan = make_plan(record.campaign, merge_pending(*pending), rt.settings, clock.now())
    return CampaignView(
        id=campaign_id,
        name=record.campaign.name,
        state=record.state,
        state_reason=redact(record.state_reason) if record.state_reason else None,
        send_by=record.campaign.send_by,
        deadline=record.campaign.deadline,
        status=status,
        plan=plan,
        send_from=record.campaign.send_from,
    )


def all_views(rt: Runtime) -> list[CampaignView]:
    views = (campaign_view(rt, campaign_id) for campaign_id in rt.ledger.campaign_ids())
    return [v for v in views if v is not None]


def summary_json(view: CampaignView) -> dict[str, Any]:
    """The campaign in the ``status --json`` shape plus what an operator watches."""
    return {
        **view.status,
        "name": view.name,
        "state": view.state,
        "state_label": campaign_state_label(view.state),
        "state_reason": view.state_reason,
        "send_by": view.send_by.isoformat(),
        "deadline": view.deadline.isoformat(),
        "send_from": view.send_from.isoformat() if view.send_from else None,
        "held_until_send_from": view.held,
        "progress": {
            "done": view.done,
            "pending": view.pending,
            "sent": view.sent_ever,
            "ratio": round(view.done / view.total, 4) if view.total else None,
        },
        "running": view.running,
        "will_miss_send_by": view.will_miss,
        "plan": view.plan.as_dict(),
    }


def imports_summary(rt: Runtime, campaign_id: str) -> dict[str, Any]:
    """The lists loaded into the campaign: totals, rejection reasons by field, the last few lists."""
    lists = rt.ledger.imports(campaign_id)
    reasons: dict[str, int] = {}
    for item in lists:
        for field, n in (item["reasons"] or {}).items():
            reasons[field] = reasons.get(field, 0) + int(n)
    return {
        "lists": len(lists),
        "rows": sum(i["rows"] for i in lists),
        "accepted": sum(i["accepted"] for i in lists),
        "new": sum(i["new"] for i in lists),
        "rejected": sum(i["rejected"] for i in lists),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "recent": [
            {
                "source": PurePath(i["source"]).name,
                "at": i["at"].isoformat(),
                "rows": i["rows"],
                "accepted": i["accepted"],
                "new": i["new"],
                "rejected": i["rejected"],
                "rejects_file": PurePath(i["rejects_path"]).name if i["rejects_path"] else None,
            }
            for i in lists[-RECENT_IMPORTS:]
        ],
    }


def detail_json(rt: Runtime, view: CampaignView) -> dict[str, Any]:
    """``GET /api/campaigns/{id}``: a strict superset of ``dispatcher status --json``."""
    reasons = queries.failure_reasons(rt.ledger, view.id, view.status["by_status"])
    return {
        **summary_json(view),
        "imports": imports_summary(rt, view.id),
        "failure_reasons": [
            {"status": r.status, "reason": r.reason, "count": r.count, "estimated": r.estimated} for r in reasons
        ],
    }


def chart(rt: Runtime, view: CampaignView, minutes: int, series: SendsPerMinute) -> str:
    now = clock.now()
    since = now - timedelta(minutes=minutes)
    per_minute = series.between(rt.ledger, view.id, since, now)
    return progress_chart(
        per_minute=per_minute,
        since=since,
        now=now,
        sent_now=view.sent_ever,
        total=view.total,
        send_by=view.send_by,
        finish=view.plan.finish,
    )
