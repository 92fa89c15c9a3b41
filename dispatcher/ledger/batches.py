"""Moves of a whole batch at once: the claim of many deliveries, and the record of their outcomes.

The same compare-and-set as :meth:`~.moves.MoveLedger.move` (each delivery moves only from the state and
attempt count the caller read), with every delivery's own audit rows, counters and provider message id,
in one statement on PostgreSQL and one transaction on SQLite. The state table still decides every step.
"""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, text

from dispatcher.core.states import Status, check

from .connection import BaseLedger
from .counters import COUNT_SHARDS
from .records import Delivery
from .schema import UTCDateTime, deliveries

log = logging.getLogger(__name__)

#: The columns a recorded outcome sets (each given its final value; unchanged ones keep the claimed copy's).
SETTLE_COLUMNS = (
    "provider",
    "provider_message_id",
    "provider_code",
    "reason",
    "not_before",
    "sms_parts",
    "first_sent_at",
    "last_event_at",
    "attempts",
    "fallback_due_at",
)


@dataclass
class Settle:
    """One delivery's outcome, to be recorded with its batch."""

    delivery: Delivery  #: as claimed (``sending``)
    to: Status
    values: dict[str, Any] = field(default_factory=dict)
    #: Audit rows in order: (to, detail, provider code); the first starts from ``sending``.
    steps: list[tuple[Status, str | None, str | None]] = field(default_factory=list)
    #: A message id the provider gave for this attempt (a ``provider_messages`` row).
    message_id: str | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def final(self) -> dict[str, Any]:
        return {c: self.values.get(c, getattr(self.delivery, c)) for c in SETTLE_COLUMNS}


_COUNT = (
    "INSERT INTO delivery_counts (campaign_id, channel, status, shard, n) VALUES (:c, :ch, :s, :shard, :n) "
    "ON CONFLICT (campaign_id, channel, status, shard) DO UPDATE SET n = delivery_counts.n + excluded.n"
)
_TRAIL = (
    "INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, attempt, provider_code, "
    "detail, actor) VALUES (:id, :c, :at, :f, :t, :attempt, :code, :detail, :actor)"
)
_MESSAGE = (
    "INSERT INTO provider_messages (message_id, delivery_id, attempt, channel, provider, sent_at) "
    "VALUES (:m, :id, :attempt, :ch, :p, :at) ON CONFLICT (message_id) DO NOTHING"
)
#: The counters move in key order: two statements upserting the same counters in different orders
#: deadlock (seen at a pool's start, when two batches create the same new counter rows).
_COUNTED = (
    "counted AS (INSERT INTO delivery_counts (campaign_id, channel, status, shard, n) "
    "SELECT campaign_id, channel, status, CAST(:shard AS integer), sum(n) FROM ("
    "SELECT campaign_id, channel, CAST(f AS text) AS status, -1 AS n FROM moved UNION ALL "
    "SELECT campaign_id, channel, CAST(t AS text), 1 FROM moved) c GROUP BY campaign_id, channel, status "
    "ORDER BY campaign_id, channel, status "
    "ON CONFLICT (campaign_id, channel, status, shard) DO UPDATE SET n = delivery_counts.n + excluded.n)"
)
# The batch's rows go as one JSON parameter (json_to_recordset): json.dumps is C; psycopg's dumper of a Python
# list per column ran in Python and took a tenth of a worker's time (docs/benchmarks.md).
_PG_CLAIM = text(
    "WITH v AS (SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS v(id bigint, f text, a integer, c text)), "
    "moved AS (UPDATE deliveries d SET status = 'sending', attempts = d.attempts + 1, updated_at = :now, "
    "claim_mark = :mark FROM v WHERE d.id = v.id AND d.status = v.f AND d.attempts = v.a AND d.contact = v.c "
    "AND (d.not_before IS NULL OR d.not_before <= :now) "
    "RETURNING d.id, d.campaign_id, d.channel, d.attempts, v.f, CAST('sending' AS text) AS t), "
    f"{_COUNTED}, "
    "trail AS (INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, attempt, actor) "
    "SELECT id, campaign_id, :now, f, 'sending', attempts, :actor FROM moved ORDER BY id) "
    "SELECT id FROM moved"
).bindparams(bindparam("now", type_=UTCDateTime()))
_PG_RECORD = text(
    "WITH v AS (SELECT * FROM json_to_recordset(CAST(:rows AS json)) "
    "AS v(id bigint, expect integer, t text, provider text, provider_message_id text, provider_code text, "
    "reason text, not_before timestamp, sms_parts integer, first_sent_at timestamp, last_event_at timestamp, "
    "attempts integer, new_message text, at timestamp, fallback_due_at timestamp)), "
    "moved AS (UPDATE deliveries d SET status = v.t, provider = v.provider, "
    "provider_message_id = v.provider_message_id, provider_code = v.provider_code, reason = v.reason, "
    "not_before = v.not_before, sms_parts = v.sms_parts, first_sent_at = v.first_sent_at, "
    "last_event_at = v.last_event_at, attempts = v.attempts, fallback_due_at = v.fallback_due_at, updated_at = v.at "
    "FROM v WHERE d.id = v.id AND d.status = 'sending' AND d.attempts = v.expect "
    "AND (CAST(:mark AS text) IS NULL OR d.claim_mark = CAST(:mark AS text)) "
    "RETURNING d.id, d.campaign_id, d.channel, d.attempts, CAST('sending' AS text) AS f, v.t, v.provider, "
    "v.new_message, v.at), "
    "message AS (INSERT INTO provider_messages (message_id, delivery_id, attempt, channel, provider, sent_at) "
    "SELECT new_message, id, attempts, channel, provider, at FROM moved WHERE new_message IS NOT NULL "
    "ON CONFLICT (message_id) DO NOTHING), "
    f"{_COUNTED}, "
    "trail AS (INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, attempt, "
    "provider_code, detail, actor) SELECT m.id, m.campaign_id, s.at, s.f, s.t, m.attempts, s.code, s.detail, "
    ":actor FROM json_to_recordset(CAST(:steps AS json)) "
    "AS s(n integer, id bigint, f text, t text, code text, detail text, at timestamp) "
    "JOIN moved m ON m.id = s.id ORDER BY s.n) "
    "SELECT id FROM moved"
)
_STALE = select(deliveries).where(
    deliveries.c.status == Status.SENDING.value, deliveries.c.updated_at < bindparam("before", type_=UTCDateTime())
)


def _json_value(value: Any) -> Any:
    """A value for a JSON row: times as naive UTC in ISO form (PostgreSQL reads them as ``timestamp``)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat() if isinstance(value, datetime) else value


class BatchLedger(BaseLedger):
    def claim_many(
        self, current: Sequence[Delivery], *, mark: str | None, now: datetime, actor: str = "worker"
    ) -> list[Delivery]:
        """Take these ``queued|retrying`` deliveries into ``sending`` at once, each only if it is still as
        read (state and attempt count) and due; the ones someone else moved are left out. ``mark`` says
        where the batch's send marks are (kept in ``claim_mark``)."""
        wanted = {d.id: d for d in current}
        if not wanted:
            return []
        for d in wanted.values():
            check(d.status, Status.SENDING)
        if self.dialect == "postgresql":
            rows = [{"id": d.id, "f": d.status.value, "a": d.attempts, "c": d.contact} for d in wanted.values()]
            params = {
                "rows": json.dumps(rows, ensure_ascii=False),
                "now": now,
                "mark": mark,
                "actor": actor,
                "shard": random.randrange(COUNT_SHARDS),
            }
            with self._one_statement() as conn:
                moved = set(conn.execute(_PG_CLAIM, params).scalars())
        else:
            moved = set()
            with self.write() as conn:
                for d in wanted.values():
                    result = conn.execute(
                        deliveries.update()
                        .where(
                            deliveries.c.id == d.id,
                            deliveries.c.status == d.status.value,
                            deliveries.c.attempts == d.attempts,
                            deliveries.c.contact == d.contact,  # a re-addressed delivery is read again first
                            (deliveries.c.not_before.is_(None)) | (deliveries.c.not_before <= now),
                        )
                        .values(status=Status.SENDING.value, attempts=d.attempts + 1, updated_at=now, claim_mark=mark)
                    )
                    if result.rowcount != 1:
                        continue
                    moved.add(d.id)
                    self._sqlite_counts(conn, d, d.status, Status.SENDING)
                    conn.execute(
                        text(_TRAIL).bindparams(bindparam("at", type_=UTCDateTime())),
                        {"id": d.id, "c": d.campaign_id, "at": now, "f": d.status.value, "t": "sending"}
                        | {"attempt": d.attempts + 1, "code": None, "detail": None, "actor": actor},
                    )
        return [replace(d, status=Status.SENDING, attempts=d.attempts + 1) for i, d in wanted.items() if i in moved]

    def record_many(self, outcomes: Sequence[Settle], *, actor: str = "worker", mark: str | None = None) -> set[int]:
        """Record the outcomes of claimed deliveries; returns the ids moved (the others had changed).

        ``mark``: the batch's own claim mark. A slow batch whose delivery the sweep gave back, and another
        worker claimed again (same state, same attempt count), must not record over that live claim."""
        if not outcomes:
            return set()
        for o in outcomes:
            state = Status.SENDING
            for to, _detail, _code in o.steps:
                check(state, to)
                state = to
            assert state is o.to and o.delivery.status is Status.SENDING
        if self.dialect == "postgresql":
            rows: list[dict[str, Any]] = []
            steps: list[dict[str, Any]] = []
            for o in outcomes:
                row = {c: _json_value(v) for c, v in o.final().items()}
                row |= {"id": o.delivery.id, "expect": o.delivery.attempts, "t": o.to.value}
                row |= {"new_message": o.message_id, "at": _json_value(o.at)}
                rows.append(row)
                state = Status.SENDING
                for to, detail, code in o.steps:
                    step = {"n": len(steps), "id": o.delivery.id, "f": state.value, "t": to.value, "code": code}
                    steps.append(step | {"detail": detail, "at": row["at"]})
                    state = to
            params: dict[str, Any] = {
                "rows": json.dumps(rows, ensure_ascii=False),
                "steps": json.dumps(steps, ensure_ascii=False),
                "actor": actor,
                "mark": mark,
                "shard": random.randrange(COUNT_SHARDS),
            }
            with self._one_statement() as conn:
                return set(conn.execute(_PG_RECORD, params).scalars())
        moved: set[int] = set()
        with self.write() as conn:
            for o in outcomes:
                if self._sqlite_record(conn, o, actor, mark):
                    moved.add(o.delivery.id)
        return moved

    def _sqlite_record(self, conn: Connection, o: Settle, actor: str, mark: str | None) -> bool:
        d, final = o.delivery, o.final()
        ours = [deliveries.c.claim_mark == mark] if mark is not None else []
        result = conn.execute(
            deliveries.update()
            .where(
                deliveries.c.id == d.id,
                deliveries.c.status == Status.SENDING.value,
                deliveries.c.attempts == d.attempts,
                *ours,
            )
            .values(status=o.to.value, updated_at=o.at, **final)
        )
        if result.rowcount != 1:
            return False
        attempt = final["attempts"]
        if o.message_id:
            conn.execute(
                text(_MESSAGE).bindparams(bindparam("at", type_=UTCDateTime())),
                {"m": o.message_id, "id": d.id, "attempt": attempt, "ch": d.channel.value}
                | {"p": final["provider"] or "?", "at": o.at},
            )
        self._sqlite_counts(conn, d, Status.SENDING, o.to)
        state = Status.SENDING
        for to, detail, code in o.steps:
            conn.execute(
                text(_TRAIL).bindparams(bindparam("at", type_=UTCDateTime())),
                {"id": d.id, "c": d.campaign_id, "at": o.at, "f": state.value, "t": to.value}
                | {"attempt": attempt, "code": code, "detail": detail, "actor": actor},
            )
            state = to
        return True

    @staticmethod
    def _sqlite_counts(conn: Connection, d: Delivery, source: Status, to: Status) -> None:
        tally: Counter[str] = Counter({source.value: -1})
        tally[to.value] += 1
        for status, n in tally.items():
            if n:
                conn.execute(
                    text(_COUNT),
                    {"c": d.campaign_id, "ch": d.channel.value, "s": status}
                    | {"shard": random.randrange(COUNT_SHARDS), "n": n},
                )

    def stale_claims(self, before: datetime) -> list[tuple[Delivery, str | None]]:
        """Deliveries left in ``sending`` since before ``before``, each with its claim's ``claim_mark``."""
        with self.read() as conn:
            rows = conn.execute(_STALE, {"before": before}).all()
        return [(Delivery.from_row(row), row._mapping["claim_mark"]) for row in rows]
