"""dispatcher: one message per person, every outcome in a ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dispatcher.intake.enqueue import EnqueueResult

__all__ = ["enqueue_campaign"]


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
