from .schema import metadata
from .store import Delivery, Ledger

__all__ = ["Delivery", "Ledger", "metadata"]
