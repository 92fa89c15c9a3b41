"""``dispatcher events``: drain provider events from SQS into the ledger.

A queue message is deleted only after every event in it was applied or recorded. A message that cannot
be parsed is recorded as unknown and deleted (it will never parse); a database failure leaves the
message on the queue so SQS delivers it again.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ..providers import aws
from ..runtime import Runtime
from .apply import PendingLimits, apply_pending, receive
from .events import EventParseError, Kind, parse_record, unwrap

log = logging.getLogger(__name__)


@dataclass
class ConsumeStats:
    messages: int = 0
    events: int = 0
    duplicates: int = 0
    pending: int = 0
    unparsable: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def handle_body(rt: Runtime, body: str, stats: ConsumeStats) -> None:
    """Apply one queue message's events. Raises only for failures worth a redelivery."""
    try:
        envelope, record = unwrap(body)
        _check_topic(rt, envelope)
        events = parse_record(record)
    except EventParseError as exc:
        stats.unparsable += 1
        log.warning("feedback message not understood (%s); recorded and dropped", exc)
        digest = hashlib.sha256(body.encode("utf-8", "replace")).hexdigest()
        event_id = rt.ledger.record_event(
            digest,
            {
                "source": "unknown",
                "event_type": "unparsable",
                "kind": Kind.UNKNOWN.value,
                "message_id": f"unparsable:{digest[:16]}",
                "at": _now(),
                "detail": str(exc)[:200],
            },
        )
        if event_id is not None:
            rt.ledger.finish_event(event_id, delivery_id=None, applied=True, outcome="not understood")
        return
    limits = PendingLimits.of(rt.settings)
    for event in events:
        result = receive(rt.ledger, event, rt.breaker, limits)
        stats.events += 1
        stats.duplicates += result.outcome == "duplicate"
        stats.pending += result.outcome == "pending"
        key = result.outcome.split(":")[0]
        stats.outcomes[key] = stats.outcomes.get(key, 0) + 1


def _check_topic(rt: Runtime, envelope: dict[str, Any] | None) -> None:
    """With a topic allow-list set, an SNS envelope from another topic is not ours (the queue's policy
    should already keep it out; this holds when that policy is too wide)."""
    topics = rt.settings.sns_topic_arns
    if envelope is not None and topics and envelope.get("TopicArn") not in topics:
        raise EventParseError("SNS envelope from a topic not allowed")


def _now() -> Any:
    from dispatcher.core import clock

    return clock.now()


def consume(rt: Runtime, queue_url: str, *, once: bool, stop: threading.Event | None = None) -> ConsumeStats:
    client = aws.client("sqs", rt.settings)
    stats = ConsumeStats()
    stop = stop or threading.Event()
    while not stop.is_set():
        try:
            response = client.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1 if once else 20, VisibilityTimeout=60
            )
        except (BotoCoreError, ClientError) as exc:
            if once:
                raise
            log.warning("could not read the feedback queue (%s); retrying", type(exc).__name__)
            stop.wait(5)
            continue
        messages = response.get("Messages", [])
        if not messages:
            # Events that came before their send may be applicable now.
            apply_pending(rt.ledger, breaker=rt.breaker, pending=PendingLimits.of(rt.settings))
            if once:
                break
            continue
        for message in messages:
            try:
                handle_body(rt, message["Body"], stats)
            except Exception:
                log.exception("feedback message left on the queue for a retry")
                continue
            client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            stats.messages += 1
    return stats
