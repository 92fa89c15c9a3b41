"""dispatcher: one message per person, every outcome in a ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.intake.enqueue import EnqueueResult
    from dispatcher.intake.redemptions import RedemptionResult
    from dispatcher.operations.corrections import CorrectionsResult

__all__ = ["enqueue_campaign", "record_redemptions", "update_contacts"]


def enqueue_campaign(campaign: Any, recipients: Any, **options: Any) -> EnqueueResult:
    """Validate a recipient list and add its new people to a campaign (see :mod:`dispatcher.intake.enqueue`).

    Without ``DISPATCHER_REDIS_URL`` the program's private Redis server keeps the work (append-only file)
    until ``dispatcher worker`` starts it again.
    """
    from dispatcher.broker.embedded import redis_available
    from dispatcher.core.settings import load_settings
    from dispatcher.intake.enqueue import enqueue_campaign as _enqueue

    from . import broker

    if options.get("dry_run") or options.get("dispatch") or broker.installed() is not None:
        return _enqueue(campaign, recipients, **options)
    settings = options.pop("settings", None) or load_settings()
    with redis_available(settings) as live:
        broker.install(live.redis_url or "")
        try:
            return _enqueue(campaign, recipients, settings=live, **options)
        finally:
            broker.uninstall()


def update_contacts(campaign: Any, rows: Any, **options: Any) -> CorrectionsResult:
    """Apply the call centre's corrections to a campaign (see :mod:`dispatcher.operations.corrections`).

    ``campaign`` is a campaign file path (or the loaded campaign), ``rows`` a CSV path or an iterable of row
    dicts with ``user_id`` and ``email`` and/or ``phone``. Options: ``rejects_path``, ``actor`` (default
    ``corrections:<file name>``), ``dispatch`` (default: the Dramatiq actor), ``settings``.
    """
    from dispatcher.broker.embedded import redis_available
    from dispatcher.core.settings import load_settings
    from dispatcher.operations.corrections import update_contacts as _update
    from dispatcher.runtime import Runtime

    from . import broker

    settings = options.pop("settings", None) or load_settings()
    dispatch = options.pop("dispatch", None)

    def run(live: Any) -> CorrectionsResult:
        rt = Runtime(live)
        try:
            chosen = dispatch
            if chosen is None:
                from dispatcher.sending.actors import dispatch_ids

                chosen = dispatch_ids
            return _update(rt, campaign, rows, chosen, **options)
        finally:
            rt.close()

    if dispatch is not None or broker.installed() is not None:
        return run(settings)
    with redis_available(settings) as live:
        broker.install(live.redis_url or "")
        try:
            return run(live)
        finally:
            broker.uninstall()


def record_redemptions(campaign_id: str, rows: Any, **options: Any) -> RedemptionResult:
    """Record the receipt site's redemptions for a campaign (see :mod:`dispatcher.intake.redemptions`).

    ``rows``: a CSV path or an iterable of dicts with ``user_id`` and optional ``redeemed_at`` (ISO 8601;
    JST when it has no offset). Returns the counts recorded / filled in / already known / rejected and
    the rejects (unknown user ids, bad times). Idempotent: the same rows again change nothing.
    """
    from dispatcher.intake.redemptions import record_redemptions as _record

    return _record(campaign_id, rows, **options)
