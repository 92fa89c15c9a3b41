"""``GET /metrics``: Prometheus text built on each scrape from the ledger counters, the transition log
(last few minutes only, through ``ix_transitions_campaign_at``) and the broker's queue.

Worker processes do not serve metrics themselves; the ledger already knows what every worker did, so one
scrape of the dashboard covers every host.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from datetime import timedelta

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dispatcher import broker
from dispatcher.core import clock
from dispatcher.core.states import Status

from ..runtime import Runtime
from . import queries
from .auth import metrics_api
from .views import runtime_of

log = logging.getLogger(__name__)

#: How far back "recent" rates and error counts look.
WINDOW = timedelta(minutes=5)
_THROTTLE = re.compile(r"thrott|too ?many|toomany|rate|429|slow ?down|exceeded", re.I)


def error_class(to_status: str, code: str | None) -> str | None:
    """Provider error class of a move out of ``sending``; None when it is not a provider error."""
    if to_status == Status.RETRYING.value:
        if code is None:
            return None  # waited for a rate-limit slot; the provider was not called
        return "throttled" if _THROTTLE.search(code) else "transient"
    if to_status == Status.FAILED.value:
        return "permanent"
    if to_status == Status.UNKNOWN.value:
        return "ambiguous"
    return None


class LedgerCollector(Collector):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    def collect(self) -> Iterable[Metric]:
        ledger = self.rt.ledger
        seconds = WINDOW.total_seconds()
        deliveries = GaugeMetricFamily(
            "dispatcher_deliveries",
            "Deliveries by campaign, channel and state (ledger counters)",
            labels=["campaign", "channel", "state"],
        )
        state = GaugeMetricFamily(
            "dispatcher_campaign_state", "1 for the campaign's current state", labels=["campaign", "state"]
        )
        rate = GaugeMetricFamily(
            "dispatcher_send_rate",
            f"Sends accepted by providers per second, average over the last {seconds:.0f} s",
            labels=["campaign"],
        )
        errors = GaugeMetricFamily(
            "dispatcher_provider_errors_recent",
            f"Provider errors in the last {seconds:.0f} s by class",
            labels=["campaign", "class"],
        )
        waits = GaugeMetricFamily(
            "dispatcher_rate_limit_waits_recent",
            f"Sends put back to wait for a rate or quota slot in the last {seconds:.0f} s",
            labels=["campaign"],
        )
        since = clock.now() - WINDOW
        for campaign_id in ledger.campaign_ids(include_reminders=True):
            record = ledger.campaign(campaign_id, fresh=True)
            for (channel, status), n in sorted(ledger.counts(campaign_id).items()):
                deliveries.add_metric([campaign_id, channel, status], n)
            if record is not None:
                for name in ("active", "paused", "cancelled"):
                    state.add_metric([campaign_id, name], 1.0 if record.state == name else 0.0)
            sent, waited, by_class = 0, 0, dict.fromkeys(("throttled", "transient", "permanent", "ambiguous"), 0)
            for (to_status, code), n in queries.recent_outcomes(ledger, campaign_id, since).items():
                if to_status == Status.SENT.value:
                    sent += n
                elif to_status == Status.RETRYING.value and code is None:
                    waited += n
                klass = error_class(to_status, code)
                if klass is not None:
                    by_class[klass] += n
            rate.add_metric([campaign_id], sent / seconds)
            waits.add_metric([campaign_id], waited)
            for klass, n in by_class.items():
                errors.add_metric([campaign_id, klass], n)
        yield from (deliveries, state, rate, errors, waits)
        yield from self._broker()

    def _broker(self) -> Iterable[Metric]:
        installed = broker.installed()
        up = GaugeMetricFamily("dispatcher_broker_up", "1 when the broker's Redis answered this scrape")
        if installed is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            depth = broker.queue_depth(installed)
        except redis.RedisError as exc:
            log.warning("metrics: broker queue depth unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        queue = GaugeMetricFamily(
            "dispatcher_queue_depth",
            "Messages held by the broker for the deliveries queue (waiting, delayed or in flight)",
            labels=["queue"],
        )
        queue.add_metric([broker.QUEUE], depth)
        yield queue


def render_metrics(rt: Runtime) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(rt))
    return generate_latest(registry)


@metrics_api
async def endpoint(request: Request) -> Response:
    body = await run_in_threadpool(render_metrics, runtime_of(request))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
