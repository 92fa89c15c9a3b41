"""The ledger: every delivery, its state, and an append-only trail of how it got there.

All state changes go through :meth:`Ledger.move`, a compare-and-set on the current state that also
appends the audit row in the same transaction, so two workers (or a worker and a provider event) can
never both win, and a move the state table forbids is refused, not applied.
"""

from __future__ import annotations

from .additions import Additions, _json_dumps
from .campaigns import Campaigns
from .counters import COUNT_SHARDS
from .events import Events
from .imports import Imports
from .moves import Moves
from .records import CampaignRecord, Delivery
from .suppression import Suppression

__all__ = ["COUNT_SHARDS", "CampaignRecord", "Delivery", "Ledger", "_json_dumps"]


class Ledger(Campaigns, Additions, Moves, Imports, Suppression, Events):
    """The ledger, composed of its parts (each a mixin over :class:`~.connection.LedgerBase`)."""
