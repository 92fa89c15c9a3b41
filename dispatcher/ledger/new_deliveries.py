"""New deliveries in bulk: idempotent per campaign and user, each with its `queued` audit row and counter."""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.types import TypeEngine

from dispatcher.core import clock
from dispatcher.core.states import Status

from .counters import CounterLedger
from .schema import (
    deliveries,
    transitions,
)

log = logging.getLogger(__name__)

# New deliveries on PostgreSQL: the batch is copied (COPY) into a session-private staging table, then one
# statement inserts what is new (the conflict rule keeps the first row of each campaign + user) and writes
# the audit rows from what was really inserted.
_PG_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS dispatcher_new_deliveries (n int, user_id text, row_no int, channel text, "
    "contact text, email text, phone text, flags text, receipt_url text, fields text, sms_parts int, inquiry_no text) "
    "ON COMMIT DELETE ROWS"
)
_PG_COPY = (
    "COPY dispatcher_new_deliveries (n, user_id, row_no, channel, contact, email, phone, flags, receipt_url, "
    "fields, sms_parts, inquiry_no) FROM STDIN"
)
_PG_ADD_DELIVERIES = """
WITH new AS (
  INSERT INTO deliveries (campaign_id, user_id, row_no, channel, contact, email, phone, flags, receipt_url, fields,
                          sms_parts, inquiry_no, status, attempts, attempts_base, created_at, updated_at,
                          dispatched_at)
  SELECT %(campaign)s, r.user_id, r.row_no, r.channel, r.contact, r.email, r.phone, r.flags, r.receipt_url,
         r.fields::json, r.sms_parts, r.inquiry_no, %(queued)s, 0, 0, %(now)s, %(now)s, %(now)s
  FROM dispatcher_new_deliveries r
  ORDER BY r.n
  ON CONFLICT (campaign_id, user_id) DO NOTHING
  RETURNING id, channel
), trail AS (
  INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, attempt, actor)
  SELECT id, %(campaign)s, %(now)s, NULL, %(queued)s, 0, %(actor)s FROM new
)
SELECT id, channel FROM new
"""
_SQLITE_ADD_DELIVERY = (
    "INSERT INTO deliveries (campaign_id, user_id, row_no, channel, contact, email, phone, flags, receipt_url, fields, "
    "sms_parts, inquiry_no, status, attempts, attempts_base, created_at, updated_at, dispatched_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?) ON CONFLICT (campaign_id, user_id) DO NOTHING"
)
# Statements of the send path, built once.
_SQLITE_ADD_TRAIL = (
    "INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, attempt, actor) "
    "SELECT id, ?1, ?2, NULL, ?3, 0, ?4 FROM deliveries WHERE id > ?5 ORDER BY id"
)


def _json_dumps(value: Any) -> str:
    """``json.dumps(value)``; a flat object of text and whole numbers (a delivery's fields) without the
    encoder's per-call set-up, which costs more than the encoding itself."""
    if type(value) is dict:
        items = []
        for key, item in value.items():
            if type(key) is not str:
                return json.dumps(value)
            if type(item) is str:
                items.append(f"{_json_str(key)}: {_json_str(item)}")
            elif type(item) is int:
                items.append(f"{_json_str(key)}: {int.__repr__(item)}")
            else:
                return json.dumps(value)
        return "{" + ", ".join(items) + "}"
    return json.dumps(value)


def inquiry_of(fields: Any) -> str | None:
    """The inquiry number a row's fields carry, as the desk looks it up (NFKC: full-width digits become
    ASCII), or None. Kept in its own column so the lookup is an index seek, not a scan of JSON."""
    if type(fields) is not dict:
        return None
    value = fields.get("inquiry_no")
    if not value or not isinstance(value, str):
        return None
    return value if value.isascii() else unicodedata.normalize("NFKC", value)


def _binder(type_: TypeEngine[Any], conn: Connection) -> Callable[[Any], Any]:
    """How SQLAlchemy binds a value of this column type on this connection's dialect."""
    process = type_.dialect_impl(conn.dialect).bind_processor(conn.dialect)
    return process if process is not None else (lambda value: value)


class NewDeliveryLedger(CounterLedger):
    #: The columns a new delivery row may carry (what ``enqueue`` gives); anything else takes the generic path.
    _NEW_COLUMNS = (
        "user_id",
        "row_no",
        "channel",
        "contact",
        "email",
        "phone",
        "flags",
        "receipt_url",
        "fields",
        "sms_parts",
    )

    def add_deliveries(self, campaign_id: str, rows: Sequence[dict[str, Any]], actor: str = "enqueue") -> list[int]:
        """Insert new deliveries; rows whose user is already in the campaign are skipped.

        Returns the ids of the rows actually inserted, in row order (idempotent per campaign + user_id).
        Each new delivery gets its ``queued`` audit row and its counter in the same transaction. Rows of
        exactly the columns ``enqueue`` gives go over in bulk (PostgreSQL: ``COPY`` and one statement for
        deliveries and audit rows; SQLite: the driver's ``executemany``), other rows one bound row at a time.
        """
        if not rows:
            return []
        now = clock.now()
        known = set(self._NEW_COLUMNS)
        with self.write() as conn:
            if any(row.keys() != known for row in rows):
                inserted = self._add_rows_generic(conn, campaign_id, rows, now, actor)
            elif self.dialect == "postgresql":
                inserted = self._add_rows_postgresql(conn, campaign_id, rows, now, actor)
            else:
                inserted = self._add_rows_sqlite(conn, campaign_id, rows, now, actor)
            by_channel: dict[str, int] = {}
            for _, channel in inserted:
                by_channel[channel] = by_channel.get(channel, 0) + 1
            for channel, n in by_channel.items():
                self._bump(conn, campaign_id, channel, Status.QUEUED.value, n)
        return sorted(i for i, _ in inserted)

    def _add_rows_postgresql(
        self, conn: Connection, campaign_id: str, rows: Sequence[dict[str, Any]], now: datetime, actor: str
    ) -> list[tuple[int, str]]:
        dumps = getattr(conn.dialect, "_json_serializer", None) or _json_dumps
        conn.exec_driver_sql(_PG_STAGE)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(_PG_COPY) as copy:
                for n, r in enumerate(rows):
                    copy.write_row(
                        (
                            n,
                            r["user_id"],
                            r["row_no"],
                            r["channel"],
                            r["contact"],
                            r["email"],
                            r["phone"],
                            r["flags"],
                            r["receipt_url"],
                            dumps(r["fields"]),
                            r["sms_parts"],
                            inquiry_of(r["fields"]),
                        )
                    )
        finally:
            cursor.close()
        result = conn.exec_driver_sql(
            _PG_ADD_DELIVERIES,
            {
                "campaign": campaign_id,
                "now": now.astimezone(UTC).replace(tzinfo=None),
                "actor": actor,
                "queued": Status.QUEUED.value,
            },
        )
        return [(int(i), str(ch)) for i, ch in result]

    def _add_rows_sqlite(
        self, conn: Connection, campaign_id: str, rows: Sequence[dict[str, Any]], now: datetime, actor: str
    ) -> list[tuple[int, str]]:
        # The write transaction holds SQLite's only write lock, so the rows inserted now are exactly those
        # with an id above the largest one before (rowids grow from the largest existing one).
        # Values exactly as SQLAlchemy would bind them on this dialect (SQLite stores timestamps as text).
        stamp = _binder(deliveries.c.created_at.type, conn)(now)
        json_bind = _binder(deliveries.c.fields.type, conn)
        plain_json = getattr(conn.dialect, "_json_serializer", None) is None

        def to_json(value: Any) -> Any:
            return _json_dumps(value) if plain_json and type(value) is dict else json_bind(value)

        before = conn.execute(select(func.coalesce(func.max(deliveries.c.id), 0))).scalar_one()
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(
                _SQLITE_ADD_DELIVERY,
                [
                    (
                        campaign_id,
                        r["user_id"],
                        r["row_no"],
                        r["channel"],
                        r["contact"],
                        r["email"],
                        r["phone"],
                        r["flags"],
                        r["receipt_url"],
                        to_json(r["fields"]),
                        r["sms_parts"],
                        inquiry_of(r["fields"]),
                        Status.QUEUED.value,
                        stamp,
                        stamp,
                        stamp,
                    )
                    for r in rows
                ],
            )
            cursor.execute(_SQLITE_ADD_TRAIL, (campaign_id, stamp, Status.QUEUED.value, actor, before))
            cursor.execute("SELECT id, channel FROM deliveries WHERE id > ? ORDER BY id", (before,))
            return [(int(i), str(ch)) for i, ch in cursor.fetchall()]
        finally:
            cursor.close()

    def _add_rows_generic(
        self, conn: Connection, campaign_id: str, rows: Sequence[dict[str, Any]], now: datetime, actor: str
    ) -> list[tuple[int, str]]:
        values = [
            {
                "inquiry_no": inquiry_of(row.get("fields")),
                **row,
                "campaign_id": campaign_id,
                "status": Status.QUEUED.value,
                "attempts": 0,
                "attempts_base": 0,
                "created_at": now,
                "updated_at": now,
                "dispatched_at": now,
            }
            for row in rows
        ]
        stmt = (
            self._insert(deliveries)
            .on_conflict_do_nothing(index_elements=[deliveries.c.campaign_id, deliveries.c.user_id])
            .returning(deliveries.c.id, deliveries.c.channel)
        )
        inserted = [(r[0], r[1]) for r in conn.execute(stmt, values)]
        if inserted:
            conn.execute(
                transitions.insert(),
                [
                    {
                        "delivery_id": i,
                        "campaign_id": campaign_id,
                        "at": now,
                        "from_status": None,
                        "to_status": Status.QUEUED.value,
                        "attempt": 0,
                        "actor": actor,
                    }
                    for i, _ in inserted
                ],
            )
        return inserted
