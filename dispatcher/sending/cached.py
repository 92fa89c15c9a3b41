"""What the send path keeps per runtime between batches: each campaign's record by the version it was read
at, and the renderer built for a record (its templates hashed and compiled once)."""

from __future__ import annotations

import threading
import weakref
from datetime import datetime

from dispatcher.ledger.store import CampaignRecord
from dispatcher.runtime import Runtime
from dispatcher.sending.render import Renderer


class _SendCache:
    """Per runtime: each campaign's record by the version it was read at, and the renderer for a record."""

    def __init__(self) -> None:
        self.campaigns: dict[str, tuple[tuple[datetime, str], CampaignRecord]] = {}
        self.renderers: dict[str, tuple[CampaignRecord, Renderer]] = {}


_caches: weakref.WeakKeyDictionary[Runtime, _SendCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache(rt: Runtime) -> _SendCache:
    with _caches_lock:
        cache = _caches.get(rt)
        if cache is None:
            cache = _caches[rt] = _SendCache()
        return cache


def campaign(rt: Runtime, campaign_id: str, state: str | None, version: datetime | None) -> CampaignRecord | None:
    """The campaign as it is now. Its state was just read with the delivery; the definition and templates
    (a JSON document to parse) are read again only when the row changed: every change to a campaign
    (saving its definition, pause, resume, cancel) sets its ``updated_at``."""
    if state is None or version is None:
        return rt.ledger.campaign(campaign_id, fresh=True)
    cache = _cache(rt)
    known = cache.campaigns.get(campaign_id)
    if known is not None and known[0] == (version, state):
        return known[1]
    record = rt.ledger.campaign(campaign_id, fresh=True)
    if record is not None and record.state == state:
        cache.campaigns[campaign_id] = ((version, state), record)
    return record


def renderer(rt: Runtime, record: CampaignRecord) -> Renderer:
    """``rt.renderer(record)``, without hashing the templates again for a record already seen."""
    cache = _cache(rt)
    known = cache.renderers.get(record.campaign.id)
    if known is not None and known[0] is record:
        return known[1]
    renderer = rt.renderer(record)
    cache.renderers[record.campaign.id] = (record, renderer)
    return renderer
