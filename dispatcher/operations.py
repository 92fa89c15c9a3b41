"""Operator actions on a campaign (SPEC §9): pause, resume, cancel. Plain functions; CLI and dashboard call them.

Each is a named, logged operation: the campaign row records the state and why; per-delivery changes go to
the transition log with the operator's name.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass

from .errors import DispatcherError
from .runtime import Runtime
from .states import CLAIMABLE, Status

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
        raise DispatcherError(f"no campaign '{campaign_id}' in the ledger")
    return record.state


def pause(
    rt: Runtime, campaign_id: str, *, who: str | None = None, reason: str = "paused by operator"
) -> OperationResult:
    state = _require(rt, campaign_id)
    if state == "cancelled":
        raise DispatcherError(f"campaign '{campaign_id}' is cancelled")
    rt.ledger.set_campaign_state(campaign_id, "paused", f"{reason} ({who or operator_name()})")
    log.info("campaign %s paused by %s", campaign_id, who or operator_name())
    return OperationResult(campaign_id, "paused")


def resume(
    rt: Runtime, campaign_id: str, dispatch: Callable[[list[int]], None], *, who: str | None = None
) -> OperationResult:
    """Resume sending: reset the circuit breaker and hand everything due to the broker again."""
    from .sweep import sweep

    state = _require(rt, campaign_id)
    if state == "cancelled":
        raise DispatcherError(f"campaign '{campaign_id}' is cancelled and cannot be resumed")
    rt.ledger.set_campaign_state(campaign_id, "active", f"resumed by {who or operator_name()}")
    rt.breaker.reset(campaign_id)
    result = sweep(rt, dispatch, everything=True)
    log.info("campaign %s resumed by %s", campaign_id, who or operator_name())
    return OperationResult(campaign_id, "active", result.redispatched)


def cancel(rt: Runtime, campaign_id: str, *, who: str | None = None) -> OperationResult:
    """Stop the campaign for good: everything not yet sent becomes ``cancelled``."""
    _require(rt, campaign_id)
    actor = who or operator_name()
    rt.ledger.set_campaign_state(campaign_id, "cancelled", f"cancelled by {actor}")
    affected = 0
    while ids := rt.ledger.in_status(campaign_id, CLAIMABLE, limit=5000):
        moved = [rt.ledger.move(i, Status.CANCELLED, actor=actor, detail="campaign cancelled") for i in ids]
        affected += sum(m is not None for m in moved)
        if not any(moved):
            break
    log.info("campaign %s cancelled by %s: %d deliveries cancelled", campaign_id, actor, affected)
    return OperationResult(campaign_id, "cancelled", affected)
