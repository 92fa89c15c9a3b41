"""The ledger: every delivery, its state, and an append-only trail of how it got there.

All state changes go through :meth:`Ledger.move`, a compare-and-set on the current state that also
appends the audit row in the same transaction, so two workers (or a worker and a provider event) can
never both win, and a move the state table forbids is refused, not applied.
"""

from __future__ import annotations

from .batches import BatchLedger, Settle
from .campaigns import CampaignLedger
from .counters import COUNT_SHARDS
from .events import EventLedger
from .holds import HoldLedger
from .imports import ImportLedger
from .new_deliveries import NewDeliveryLedger, _json_dumps
from .people import PeopleLedger
from .readdress import ReaddressLedger
from .records import CampaignRecord, Delivery
from .redemptions import RedemptionLedger
from .suppression import SuppressionLedger

__all__ = ["COUNT_SHARDS", "CampaignRecord", "Delivery", "Ledger", "Settle", "_json_dumps"]


class Ledger(
    CampaignLedger,
    NewDeliveryLedger,
    ReaddressLedger,
    BatchLedger,
    ImportLedger,
    SuppressionLedger,
    EventLedger,
    HoldLedger,
    PeopleLedger,
    RedemptionLedger,
):
    """The ledger, composed of its parts (each a mixin over :class:`~.connection.BaseLedger`)."""
