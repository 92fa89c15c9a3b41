"""dispatcher: one message per person, every outcome in a ledger."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .enqueue import EnqueueResult

__all__ = ["enqueue_campaign"]


def enqueue_campaign(campaign: Any, recipients: Any, **options: Any) -> EnqueueResult:
    """Validate a recipient list and add its new people to a campaign (see :mod:`dispatcher.enqueue`)."""
    from .enqueue import enqueue_campaign as _enqueue

    return _enqueue(campaign, recipients, **options)
