"""What one process needs to work: settings, ledger, providers, renderers. Built once, shared by threads."""

from __future__ import annotations

import hashlib
import json
import threading
from functools import cached_property

import redis

from dispatcher import providers
from dispatcher.core import clock
from dispatcher.core.settings import Settings, load_settings
from dispatcher.core.states import Channel
from dispatcher.sending.policy import Breaker, Limits
from dispatcher.sending.render import Renderer

from .ledger import Ledger
from .ledger.store import CampaignRecord
from .providers.base import Provider


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        clock.start_at(settings.clock_start)
        self._lock = threading.Lock()
        self._providers: dict[Channel, Provider] = {}
        self._renderers: dict[tuple[str, str], Renderer] = {}
        self.redis = redis.Redis.from_url(settings.redis_url) if settings.redis_url else None
        self.limits = Limits(settings, self.redis)
        self.breaker = Breaker(settings, self.redis, self._pause)

    @cached_property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.ledger_url)

    def _pause(self, campaign_id: str, reason: str) -> bool:
        record = self.ledger.campaign(campaign_id, fresh=True)
        if record is None or record.state != "active":
            return False
        return self.ledger.set_campaign_state(campaign_id, "paused", reason)

    def provider(self, channel: Channel) -> Provider:
        with self._lock:
            if channel not in self._providers:
                self._providers[channel] = providers.build(channel, self.settings)
            return self._providers[channel]

    def renderer(self, record: CampaignRecord) -> Renderer:
        digest = hashlib.sha256(json.dumps(record.templates, sort_keys=True).encode()).hexdigest()
        key = (record.campaign.id, digest)
        with self._lock:
            renderer = self._renderers.get(key)
            if renderer is None or renderer.campaign != record.campaign:
                renderer = Renderer(record.campaign, record.templates, self.settings.email_sender)
                self._renderers[key] = renderer
            return renderer

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()
        if "ledger" in self.__dict__:
            self.ledger.dispose()


_current: Runtime | None = None
_current_lock = threading.Lock()


def current() -> Runtime:
    """The process-wide runtime, built from settings on first use."""
    global _current
    with _current_lock:
        if _current is None:
            _current = Runtime(load_settings())
        return _current


def use(runtime: Runtime | None) -> None:
    global _current
    with _current_lock:
        _current = runtime


def batch_size() -> int:
    """Deliveries per broker message: the current runtime's setting, else the environment's."""
    rt = _current
    return (rt.settings if rt is not None else load_settings()).send_batch
