"""The ledger: every delivery, its state, and an append-only trail of how it got there.

All state changes go through :meth:`Ledger.move`, a compare-and-set on the current state that also
appends the audit row in the same transaction, so two workers (or a worker and a provider event) can
never both win, and a move the state table forbids is refused, not applied.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, create_engine, event, func, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql.elements import ClauseElement

from .. import clock
from ..campaign import Campaign, campaign_to_dict, parse_campaign
from ..errors import ConfigError, IllegalTransition
from ..states import CLAIMABLE, PENDING, Channel, Status, check, sources_of
from .schema import (
    SCHEMA_VERSION,
    campaigns,
    deliveries,
    delivery_counts,
    imports,
    metadata,
    provider_events,
    provider_messages,
    schema_version,
    suppressions,
    transitions,
)

log = logging.getLogger(__name__)

COUNT_SHARDS = 16

# New deliveries on PostgreSQL: the batch is copied (COPY) into a session-private staging table, then one
# statement inserts what is new (the conflict rule keeps the first row of each campaign + user) and writes
# the audit rows from what was really inserted.
_PG_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS dispatcher_new_deliveries (n int, user_id text, row_no int, channel text, "
    "contact text, email text, phone text, flags text, receipt_url text, fields text, sms_parts int) "
    "ON COMMIT DELETE ROWS"
)
_PG_COPY = ("COPY dispatcher_new_deliveries (n, user_id, row_no, channel, contact, email, phone, flags, receipt_url, "
            "fields, sms_parts) FROM STDIN")
_PG_ADD_DELIVERIES = """
WITH new AS (
  INSERT INTO deliveries (campaign_id, user_id, row_no, channel, contact, email, phone, flags, receipt_url, fields,
                          sms_parts, status, attempts, attempts_base, created_at, updated_at, dispatched_at)
  SELECT %(campaign)s, r.user_id, r.row_no, r.channel, r.contact, r.email, r.phone, r.flags, r.receipt_url,
         r.fields::json, r.sms_parts, %(queued)s, 0, 0, %(now)s, %(now)s, %(now)s
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
    "sms_parts, status, attempts, attempts_base, created_at, updated_at, dispatched_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?) ON CONFLICT (campaign_id, user_id) DO NOTHING"
)
# Statements of the send path, built once.
_GET = select(deliveries).where(deliveries.c.id == bindparam("id"))
_FOR_SEND = (
    select(deliveries, campaigns.c.state.label("campaign_state"), campaigns.c.updated_at.label("campaign_updated_at"),
           suppressions.c.reason.label("suppressed"))
    .select_from(deliveries.outerjoin(campaigns, campaigns.c.id == deliveries.c.campaign_id)
                 .outerjoin(suppressions, suppressions.c.contact == deliveries.c.contact))
)
_FOR_SEND_MANY = _FOR_SEND.where(deliveries.c.id.in_(bindparam("ids", expanding=True)))
_EVENTS_WAITING_MANY = (select(provider_events.c.message_id).distinct()
                        .where(provider_events.c.applied == 0,
                               provider_events.c.message_id.in_(bindparam("message_ids", expanding=True))))
_TRANSITION = transitions.insert()
#: A move leaves one (channel, status) counter for another, in one statement (PostgreSQL and SQLite).
_BUMP_MOVE = text(
    "INSERT INTO delivery_counts (campaign_id, channel, status, shard, n) "
    "VALUES (:campaign_id, :from_channel, :from_status, :from_shard, -1), "
    "(:campaign_id, :to_channel, :to_status, :to_shard, 1) "
    "ON CONFLICT (campaign_id, channel, status, shard) DO UPDATE SET n = delivery_counts.n + excluded.n"
)
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


@dataclass(frozen=True)
class Delivery:
    id: int
    campaign_id: str
    user_id: str
    row_no: int
    channel: Channel
    contact: str
    email: str | None
    phone: str | None
    flags: str
    receipt_url: str
    fields: dict[str, Any]
    status: Status
    attempts: int
    attempts_base: int
    not_before: datetime | None
    provider: str | None
    provider_message_id: str | None
    provider_code: str | None
    reason: str | None
    sms_parts: int | None
    first_sent_at: datetime | None
    last_event_at: datetime | None

    def __repr__(self) -> str:  # keeps contacts and the URL out of tracebacks and logs
        return f"Delivery(id={self.id}, campaign={self.campaign_id!r}, status={self.status})"

    @classmethod
    def from_row(cls, row: Any) -> Delivery:
        m = row._mapping
        return cls(
            id=m["id"], campaign_id=m["campaign_id"], user_id=m["user_id"], row_no=m["row_no"],
            channel=Channel(m["channel"]), contact=m["contact"], email=m["email"], phone=m["phone"],
            flags=m["flags"], receipt_url=m["receipt_url"], fields=m["fields"] or {},
            status=Status(m["status"]), attempts=m["attempts"], attempts_base=m["attempts_base"] or 0,
            not_before=m["not_before"],
            provider=m["provider"], provider_message_id=m["provider_message_id"],
            provider_code=m["provider_code"], reason=m["reason"], sms_parts=m["sms_parts"],
            first_sent_at=m["first_sent_at"], last_event_at=m["last_event_at"],
        )


#: Columns a move may set that a Delivery carries as they are (a slim move rebuilds the Delivery from them).
_SLIM_KEYS = frozenset({"status", "updated_at", "attempts", "not_before", "provider", "provider_message_id",
                        "provider_code", "reason", "sms_parts", "first_sent_at", "last_event_at"})
_DELIVERY_FIELDS = frozenset(f.name for f in fields(Delivery)) - {"status", "attempts"}


@dataclass(frozen=True)
class CampaignRecord:
    campaign: Campaign
    templates: dict[str, str]
    state: str
    state_reason: str | None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _private_sqlite_file(database: str) -> None:
    """Create the ledger 0600 in a 0700 folder before SQLite opens it: SQLite gives its ``-wal``, ``-shm``
    and ``-journal`` files the database file's mode, and the Python API may run under umask 022."""
    import os

    from ..private import FILE_MODE, create_private_file, private_dir, tighten

    private_dir(os.path.dirname(os.path.abspath(database)))
    create_private_file(database)
    for suffix in ("-wal", "-shm", "-journal"):
        tighten(database + suffix, FILE_MODE)  # left by an earlier version with the umask's mode


def _engine(url: str, *, immediate: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            _private_sqlite_file(parsed.database)
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        # A write transaction takes the write lock first, so it never fails half-way on a lock upgrade.
        begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
        event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))
        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise ConfigError(f"DISPATCHER_DATABASE_URL: unsupported database '{parsed.get_backend_name()}'")


class Ledger:
    def __init__(self, url: str) -> None:
        try:
            self.dialect = make_url(url).get_backend_name()
        except Exception:
            raise ConfigError("DISPATCHER_DATABASE_URL: not a valid SQLAlchemy URL") from None
        self._reader = _engine(url, immediate=False)
        self._writer = _engine(url, immediate=True) if self.dialect == "sqlite" else self._reader
        self._campaign_cache: dict[str, CampaignRecord] = {}
        self._cache_lock = threading.Lock()
        self._move_statements: dict[tuple[Any, ...], Any] = {}
        self._pinned = threading.local()
        self._provider_message_insert = self._insert(provider_messages).on_conflict_do_nothing(
            index_elements=[provider_messages.c.message_id])
        self.migrate()

    # Plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    def migrate(self) -> None:
        """Create missing tables and record the schema version (the program owns its schema)."""
        metadata.create_all(self._writer)
        with self.write() as conn:
            current = conn.execute(select(func.max(schema_version.c.version))).scalar()
            if current is None:
                conn.execute(schema_version.insert().values(version=SCHEMA_VERSION, applied_at=clock.now()))
            elif current > SCHEMA_VERSION:
                raise ConfigError(f"ledger schema version {current} is newer than this program ({SCHEMA_VERSION})")

    def dispose(self) -> None:
        self._reader.dispose()
        if self._writer is not self._reader:
            self._writer.dispose()

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _bump(self, conn: Connection, campaign_id: str, channel: str, status: str, by: int) -> None:
        stmt = self._insert(delivery_counts).values(
            campaign_id=campaign_id, channel=channel, status=status, shard=random.randrange(COUNT_SHARDS), n=by
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[delivery_counts.c.campaign_id, delivery_counts.c.channel, delivery_counts.c.status,
                            delivery_counts.c.shard],
            set_={"n": delivery_counts.c.n + by},
        )
        conn.execute(stmt)

    def recount(self, campaign_id: str) -> None:
        """Rebuild a campaign's counters from the deliveries themselves (repair; never needed normally)."""
        with self.write() as conn:
            conn.execute(delivery_counts.delete().where(delivery_counts.c.campaign_id == campaign_id))
            rows = conn.execute(
                select(deliveries.c.channel, deliveries.c.status, func.count())
                .where(deliveries.c.campaign_id == campaign_id)
                .group_by(deliveries.c.channel, deliveries.c.status)
            ).all()
            if rows:
                conn.execute(delivery_counts.insert(), [
                    {"campaign_id": campaign_id, "channel": ch, "status": st, "shard": 0, "n": n} for ch, st, n in rows
                ])

    # Campaigns ---------------------------------------------------------------------------------
    def save_campaign(self, campaign: Campaign, templates: dict[str, str]) -> None:
        now = clock.now()
        definition = campaign_to_dict(campaign)
        definition["deadline"] = campaign.deadline.isoformat()
        definition["send_by"] = campaign.send_by.isoformat()
        stmt = self._insert(campaigns).values(
            id=campaign.id, name=campaign.name, definition=definition, templates=templates,
            state="active", created_at=now, updated_at=now,
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[campaigns.c.id],
            set_={"name": campaign.name, "definition": definition, "templates": templates, "updated_at": now},
        )
        with self.write() as conn:
            conn.execute(stmt)
        with self._cache_lock:
            self._campaign_cache.pop(campaign.id, None)

    def campaign(self, campaign_id: str, *, fresh: bool = False) -> CampaignRecord | None:
        if not fresh:
            with self._cache_lock:
                cached = self._campaign_cache.get(campaign_id)
            if cached is not None:
                return cached
        with self.read() as conn:
            row = conn.execute(select(campaigns).where(campaigns.c.id == campaign_id)).first()
        if row is None:
            return None
        definition = dict(row.definition)
        definition["deadline"] = datetime.fromisoformat(definition["deadline"])
        definition["send_by"] = datetime.fromisoformat(definition["send_by"])
        record = CampaignRecord(parse_campaign(definition, where=f"ledger campaign {campaign_id}"),
                                dict(row.templates), row.state, row.state_reason)
        with self._cache_lock:
            self._campaign_cache[campaign_id] = record
        return record

    def campaign_ids(self) -> list[str]:
        with self.read() as conn:
            return list(conn.execute(select(campaigns.c.id).order_by(campaigns.c.created_at)).scalars())

    def set_campaign_state(self, campaign_id: str, state: str, reason: str | None) -> bool:
        with self.write() as conn:
            result = conn.execute(
                update(campaigns).where(campaigns.c.id == campaign_id)
                .values(state=state, state_reason=reason, updated_at=clock.now())
            )
        with self._cache_lock:
            self._campaign_cache.pop(campaign_id, None)
        return result.rowcount == 1

    # Deliveries --------------------------------------------------------------------------------
    #: The columns a new delivery row may carry (what ``enqueue`` gives); anything else takes the generic path.
    _NEW_COLUMNS = ("user_id", "row_no", "channel", "contact", "email", "phone", "flags", "receipt_url", "fields",
                    "sms_parts")

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

    def _add_rows_postgresql(self, conn: Connection, campaign_id: str, rows: Sequence[dict[str, Any]],
                             now: datetime, actor: str) -> list[tuple[int, str]]:
        dumps = conn.dialect._json_serializer or _json_dumps  # type: ignore[attr-defined]
        conn.exec_driver_sql(_PG_STAGE)
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(_PG_COPY) as copy:
                for n, r in enumerate(rows):
                    copy.write_row((n, r["user_id"], r["row_no"], r["channel"], r["contact"], r["email"], r["phone"],
                                    r["flags"], r["receipt_url"], dumps(r["fields"]), r["sms_parts"]))
        finally:
            cursor.close()
        result = conn.exec_driver_sql(_PG_ADD_DELIVERIES, {
            "campaign": campaign_id, "now": now.astimezone(UTC).replace(tzinfo=None), "actor": actor,
            "queued": Status.QUEUED.value,
        })
        return [(int(i), str(ch)) for i, ch in result]

    def _add_rows_sqlite(self, conn: Connection, campaign_id: str, rows: Sequence[dict[str, Any]],
                         now: datetime, actor: str) -> list[tuple[int, str]]:
        # The write transaction holds SQLite's only write lock, so the rows inserted now are exactly those
        # with an id above the largest one before (rowids grow from the largest existing one).
        # Values exactly as SQLAlchemy would bind them on this dialect (SQLite stores timestamps as text).
        stamp = deliveries.c.created_at.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)(now)
        json_bind = deliveries.c.fields.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)
        plain_json = conn.dialect._json_serializer is None  # type: ignore[attr-defined]

        def to_json(value: Any) -> Any:
            return _json_dumps(value) if plain_json and type(value) is dict else json_bind(value)

        before = conn.execute(select(func.coalesce(func.max(deliveries.c.id), 0))).scalar_one()
        cursor = conn.connection.cursor()
        try:
            cursor.executemany(_SQLITE_ADD_DELIVERY, [
                (campaign_id, r["user_id"], r["row_no"], r["channel"], r["contact"], r["email"], r["phone"],
                 r["flags"], r["receipt_url"], to_json(r["fields"]), r["sms_parts"], Status.QUEUED.value,
                 stamp, stamp, stamp)
                for r in rows
            ])
            cursor.execute(_SQLITE_ADD_TRAIL, (campaign_id, stamp, Status.QUEUED.value, actor, before))
            cursor.execute("SELECT id, channel FROM deliveries WHERE id > ? ORDER BY id", (before,))
            return [(int(i), str(ch)) for i, ch in cursor.fetchall()]
        finally:
            cursor.close()

    def _add_rows_generic(self, conn: Connection, campaign_id: str, rows: Sequence[dict[str, Any]],
                          now: datetime, actor: str) -> list[tuple[int, str]]:
        values = [
            {**row, "campaign_id": campaign_id, "status": Status.QUEUED.value, "attempts": 0, "attempts_base": 0,
             "created_at": now, "updated_at": now, "dispatched_at": now}
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
                [{"delivery_id": i, "campaign_id": campaign_id, "at": now, "from_status": None,
                  "to_status": Status.QUEUED.value, "attempt": 0, "actor": actor} for i, _ in inserted],
            )
        return inserted

    def get(self, delivery_id: int) -> Delivery | None:
        with self._one_statement() as conn:
            row = conn.execute(_GET, {"id": delivery_id}).first()
        return None if row is None else Delivery.from_row(row)

    @contextmanager
    def _one_statement(self) -> Iterator[Connection]:
        """A connection for one statement. On PostgreSQL it runs outside an explicit transaction (a statement
        is atomic and sees one snapshot by itself), which spares the BEGIN and COMMIT/ROLLBACK round trips."""
        pinned = getattr(self._pinned, "conn", None)
        if pinned is not None:
            yield pinned
            return
        with self._reader.connect() as conn:
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """On PostgreSQL, this thread's single-statement work (reads, moves) shares one connection until the
        block ends: one checkout and liveness ping instead of one per statement. Elsewhere: nothing."""
        if self.dialect != "postgresql" or getattr(self._pinned, "conn", None) is not None:
            yield
            return
        with self._writer.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            self._pinned.conn = conn
            try:
                yield
            finally:
                self._pinned.conn = None

    def for_send_many(self, ids: Sequence[int]) -> dict[int, tuple[Delivery, str | None, datetime | None, str | None]]:
        """What a worker reads before it may claim, for several deliveries in one query, by id (ids not in the
        ledger are left out): each delivery, its campaign's ``state`` and ``updated_at`` (both None when the
        campaign is missing) and the suppression reason for its contact."""
        if not ids:
            return {}
        with self._one_statement() as conn:
            rows = conn.execute(_FOR_SEND_MANY, {"ids": list(ids)}).all()
        found = {}
        for row in rows:
            m = row._mapping
            found[m["id"]] = (Delivery.from_row(row), m["campaign_state"], m["campaign_updated_at"], m["suppressed"])
        return found

    def events_waiting_for(self, message_ids: Iterable[str]) -> set[str]:
        """Which of these message ids have an event waiting for their send to be recorded (one query)."""
        wanted = list(dict.fromkeys(message_ids))
        if not wanted:
            return set()
        with self._one_statement() as conn:
            return {r[0] for r in conn.execute(_EVENTS_WAITING_MANY, {"message_ids": wanted})}

    @staticmethod
    def _build_move(new_values: dict[str, Any], *, claim: bool, exact: bool) -> Any:
        """The compare-and-set UPDATE ... RETURNING of a move."""
        conditions = [deliveries.c.id == bindparam("_id"), deliveries.c.status == bindparam("_from")]
        if exact:
            conditions += [deliveries.c.attempts == bindparam("_attempts"),
                           deliveries.c.channel == bindparam("_channel")]
        if claim:
            new_values = {**new_values, "attempts": deliveries.c.attempts + 1}
            conditions.append(or_(deliveries.c.not_before.is_(None),
                                  deliveries.c.not_before <= bindparam("_now", type_=deliveries.c.not_before.type)))
        return update(deliveries).where(and_(*conditions)).values(new_values).returning(deliveries)

    def _move_statement(self, keys: tuple[str, ...], *, claim: bool, exact: bool) -> Any:
        """The statement for one shape of move, built once (building and hashing a statement costs more than
        running it); the values are bound as ``v_<column>``."""
        shape = (keys, claim, exact)
        stmt = self._move_statements.get(shape)
        if stmt is None:
            stmt = self._build_move({k: bindparam(f"v_{k}", type_=deliveries.c[k].type) for k in keys},
                                    claim=claim, exact=exact)
            with self._cache_lock:
                self._move_statements[shape] = stmt
        return stmt

    def _pg_move_statement(self, keys: tuple[str, ...], *, claim: bool, exact: bool, message: bool,
                           slim: bool = False) -> Any:
        """PostgreSQL: the compare-and-set, the provider message id, the counters and the audit row of a move
        as one statement (built once per shape). ``slim``: it returns only the attempt count."""
        shape = ("pg", keys, claim, exact, message, slim)
        stmt = self._move_statements.get(shape)
        if stmt is not None:
            return stmt
        sets = [f"{k} = :v_{k}" for k in keys] + (["attempts = deliveries.attempts + 1"] if claim else [])
        where = ["deliveries.id = :_id", "deliveries.status = :_from"]
        if exact:
            where += ["deliveries.attempts = :_attempts", "deliveries.channel = :_channel"]
        if claim:
            where.append("(deliveries.not_before IS NULL OR deliveries.not_before <= :_now)")
        sql = [f"WITH moved AS (UPDATE deliveries SET {', '.join(sets)} WHERE {' AND '.join(where)} "
               "RETURNING deliveries.*)"]
        if message:
            sql.append(", message AS (INSERT INTO provider_messages (message_id, delivery_id, attempt, channel, "
                       "provider, sent_at) SELECT :message_id, id, :attempt, :to_channel, :provider, :at FROM moved "
                       "ON CONFLICT (message_id) DO NOTHING)")
        sql.append(", counted AS (INSERT INTO delivery_counts (campaign_id, channel, status, shard, n) "
                   "SELECT campaign_id, CAST(:from_channel AS text), CAST(:_from AS text), "
                   "CAST(:from_shard AS integer), -1 FROM moved UNION ALL "
                   "SELECT campaign_id, CAST(:to_channel AS text), CAST(:to_status AS text), "
                   "CAST(:to_shard AS integer), 1 FROM moved "
                   "ON CONFLICT (campaign_id, channel, status, shard) "
                   "DO UPDATE SET n = delivery_counts.n + excluded.n)")
        sql.append(", trail AS (INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, "
                   "attempt, provider_code, detail, actor) SELECT id, campaign_id, :at, :_from, :to_status, "
                   ":attempt, :provider_code, :detail, :actor FROM moved)")
        sql.append(" SELECT attempts FROM moved" if slim else " SELECT * FROM moved")
        typed = [bindparam(f"v_{k}", type_=deliveries.c[k].type) for k in keys]
        typed.append(bindparam("at", type_=transitions.c.at.type))
        if claim:
            typed.append(bindparam("_now", type_=deliveries.c.not_before.type))
        stmt = text("".join(sql)).bindparams(*typed).columns(
            *([deliveries.c.attempts] if slim else deliveries.c))
        with self._cache_lock:
            self._move_statements[shape] = stmt
        return stmt

    def move(
        self,
        delivery_id: int,
        to: Status,
        *,
        actor: str,
        expect: Iterable[Status] | None = None,
        detail: str | None = None,
        provider_code: str | None = None,
        now: datetime | None = None,
        values: dict[str, Any] | None = None,
        current: Delivery | None = None,
        _claim: bool = False,
    ) -> Delivery | None:
        """Move a delivery to ``to`` if the state table allows it from its current state.

        ``expect`` narrows the states it may come from. Returns the delivery after the move, or None when
        it was not in a state this move may start from (someone else moved it first: not an error).
        ``current`` is the delivery as the caller last read (or moved) it, which spares reading it again:
        the compare-and-set then also requires its attempt count and channel, and when the row is no longer
        like that the move reads it and decides as if it had not been given.
        """
        allowed = sources_of(to)
        if expect is not None:
            allowed = allowed & frozenset(expect)
        now = now or clock.now()
        new_values: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
        if provider_code is not None:
            new_values["provider_code"] = provider_code
        if _claim:
            new_values.pop("attempts", None)  # the claim counts the attempt itself
        # Plain values of known columns go through a prepared shape; anything else is built for this call.
        plain = all(k in deliveries.c and not isinstance(v, ClauseElement) for k, v in new_values.items())
        keys = tuple(sorted(new_values)) if plain else None
        params = {f"v_{k}": v for k, v in new_values.items()} if plain else {}
        hint = current if current is not None and current.id == delivery_id and current.status in allowed else None
        for _ in range(5 + (hint is not None)):
            if hint is not None:
                current, hint, as_read = hint, None, False
            else:
                current, as_read = self.get(delivery_id), True
                if current is None:
                    raise IllegalTransition(f"delivery {delivery_id} does not exist")
                if current.status not in allowed:
                    return None
            check(current.status, to)
            attempt = current.attempts + (1 if _claim else 0)
            channel = str((values or {}).get("channel", current.channel.value))
            message_id = (values or {}).get("provider_message_id")
            params.update(_id=delivery_id, _from=current.status.value, _attempts=current.attempts,
                          _channel=current.channel.value, _now=now)
            record = {
                "campaign_id": current.campaign_id, "at": now, "attempt": attempt, "to_status": to.value,
                "from_channel": current.channel.value, "to_channel": channel, "provider_code": provider_code,
                "detail": detail, "actor": actor, "from_shard": random.randrange(COUNT_SHARDS),
                "to_shard": random.randrange(COUNT_SHARDS), "message_id": message_id,
                "provider": str((values or {}).get("provider") or current.provider or "?"),
            }
            if self.dialect == "postgresql" and keys is not None:
                # One statement does it all (a data-modifying WITH is atomic on its own): two round trips.
                # With the caller's copy matched exactly, the row after the move is that copy with the new
                # values: only the attempt count comes back (reading every column back costs more than the rest).
                slim = not as_read and _SLIM_KEYS.issuperset(keys)
                stmt = self._pg_move_statement(keys, claim=_claim, exact=not as_read, message=bool(message_id),
                                               slim=slim)
                with self._one_statement() as conn:
                    row = conn.execute(stmt, {**params, **record}).first()
                if row is None:
                    if _claim and as_read:
                        return None
                    continue  # changed under us (or the caller's copy was old): read it and decide again
                if slim:
                    changed = {k: v for k, v in new_values.items() if k in _DELIVERY_FIELDS}
                    return replace(current, **changed, status=to, attempts=row[0])
                return Delivery.from_row(row)
            stmt = (self._move_statement(keys, claim=_claim, exact=not as_read) if keys is not None
                    else self._build_move(new_values, claim=_claim, exact=not as_read))
            with self.write() as conn:
                row = conn.execute(stmt, params).first()
                if row is None:
                    if _claim and as_read:
                        return None
                    continue  # changed under us (or the caller's copy was old): read it and decide again
                moved = Delivery.from_row(row)
                if message_id:
                    conn.execute(self._provider_message_insert, {
                        "message_id": message_id, "delivery_id": delivery_id, "attempt": attempt,
                        "channel": channel, "provider": record["provider"], "sent_at": now,
                    })
                conn.execute(_BUMP_MOVE, {
                    "campaign_id": current.campaign_id, "from_channel": current.channel.value,
                    "from_status": current.status.value, "from_shard": record["from_shard"],
                    "to_channel": channel, "to_status": to.value, "to_shard": record["to_shard"],
                })
                conn.execute(_TRANSITION, {
                    "delivery_id": delivery_id, "campaign_id": current.campaign_id, "at": now,
                    "from_status": current.status.value, "to_status": to.value, "attempt": attempt,
                    "provider_code": provider_code, "detail": detail, "actor": actor,
                })
            return moved
        return None

    def claim(self, delivery_id: int, *, actor: str = "worker", now: datetime | None = None,
              current: Delivery | None = None) -> Delivery | None:
        """Atomically take a due ``queued|retrying`` delivery into ``sending``; None if someone else did.

        ``current``: the delivery as the caller read it (see :meth:`move`)."""
        return self.move(delivery_id, Status.SENDING, actor=actor, expect=CLAIMABLE, now=now, current=current,
                         _claim=True)

    def history(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(
                select(transitions).where(transitions.c.delivery_id == delivery_id).order_by(transitions.c.id)
            )
            return [dict(r._mapping) for r in rows]

    def counts(self, campaign_id: str) -> dict[tuple[str, str], int]:
        """``{(channel, status): n}`` for one campaign, from the maintained counters."""
        stmt = (
            select(delivery_counts.c.channel, delivery_counts.c.status, func.sum(delivery_counts.c.n))
            .where(delivery_counts.c.campaign_id == campaign_id)
            .group_by(delivery_counts.c.channel, delivery_counts.c.status)
        )
        with self.read() as conn:
            return {(ch, st): int(n) for ch, st, n in conn.execute(stmt) if n}

    def count_rows(self, campaign_id: str) -> dict[tuple[str, str], int]:
        """The same counts, by counting the deliveries (slow on big campaigns; for checks and repair)."""
        stmt = (
            select(deliveries.c.channel, deliveries.c.status, func.count())
            .where(deliveries.c.campaign_id == campaign_id)
            .group_by(deliveries.c.channel, deliveries.c.status)
        )
        with self.read() as conn:
            return {(ch, st): n for ch, st, n in conn.execute(stmt)}

    def record_import(self, campaign_id: str, source: str, *, rows: int, accepted: int, new: int, rejected: int,
                      rejects_path: str | None, reasons: dict[str, int]) -> None:
        with self.write() as conn:
            conn.execute(imports.insert().values(
                campaign_id=campaign_id, source=source, at=clock.now(), rows=rows, accepted=accepted, new=new,
                rejected=rejected, rejects_path=rejects_path, reasons=reasons,
            ))

    def imports(self, campaign_id: str) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(imports).where(imports.c.campaign_id == campaign_id).order_by(imports.c.id))
            return [dict(r._mapping) for r in rows]

    def pending_work(self, campaign_id: str) -> dict[str, tuple[int, int]]:
        """``{channel: (deliveries, sms parts)}`` still owed a send."""
        stmt = (
            select(deliveries.c.channel, func.count(), func.coalesce(func.sum(deliveries.c.sms_parts), 0))
            .where(deliveries.c.campaign_id == campaign_id,
                   deliveries.c.status.in_([s.value for s in PENDING]))
            .group_by(deliveries.c.channel)
        )
        with self.read() as conn:
            return {ch: (int(n), int(parts)) for ch, n, parts in conn.execute(stmt)}

    def overdue(self, now: datetime, limit: int = 5000) -> list[int]:
        """Claimable deliveries of campaigns whose send_by has passed (to be expired)."""
        with self.read() as conn:
            rows = conn.execute(select(campaigns.c.id, campaigns.c.definition)).all()
        late = [cid for cid, definition in rows if datetime.fromisoformat(definition["send_by"]) <= now]
        if not late:
            return []
        stmt = (
            select(deliveries.c.id)
            .where(deliveries.c.campaign_id.in_(late), deliveries.c.status.in_([s.value for s in CLAIMABLE]))
            .order_by(deliveries.c.id).limit(limit)
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def due(self, now: datetime, *, limit: int = 10_000, after_id: int = 0,
            dispatched_before: datetime | None = None) -> list[int]:
        """Ids of claimable deliveries whose time has come, in active campaigns, in id order.

        ``dispatched_before`` keeps out those handed to the broker since then (probably still queued).
        """
        stmt = (
            select(deliveries.c.id)
            .join(campaigns, campaigns.c.id == deliveries.c.campaign_id)
            .where(
                deliveries.c.status.in_([s.value for s in CLAIMABLE]),
                or_(deliveries.c.not_before.is_(None), deliveries.c.not_before <= now),
                campaigns.c.state == "active",
                deliveries.c.id > after_id,
                *([] if dispatched_before is None else [or_(deliveries.c.dispatched_at.is_(None),
                                                            deliveries.c.dispatched_at < dispatched_before)]),
            )
            .order_by(deliveries.c.id)
            .limit(limit)
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def in_status(self, campaign_id: str, statuses: Iterable[Status], *, limit: int | None = None) -> list[int]:
        stmt = (
            select(deliveries.c.id)
            .where(deliveries.c.campaign_id == campaign_id,
                   deliveries.c.status.in_([s.value for s in statuses]))
            .order_by(deliveries.c.id)
        )
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def stale_sending(self, before: datetime) -> list[int]:
        stmt = select(deliveries.c.id).where(
            deliveries.c.status == Status.SENDING.value, deliveries.c.updated_at < before
        )
        with self.read() as conn:
            return list(conn.execute(stmt).scalars())

    def iter_campaign(self, campaign_id: str, batch: int = 5000) -> Iterator[Delivery]:
        last = 0
        while True:
            with self.read() as conn:
                rows = conn.execute(
                    select(deliveries).where(deliveries.c.campaign_id == campaign_id, deliveries.c.id > last)
                    .order_by(deliveries.c.id).limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield Delivery.from_row(row)
            last = rows[-1].id

    # Suppression -------------------------------------------------------------------------------
    def is_suppressed(self, contact: str) -> str | None:
        with self.read() as conn:
            return conn.execute(select(suppressions.c.reason).where(suppressions.c.contact == contact)).scalar()

    def suppress(self, contact: str, channel: Channel, reason: str, source: str) -> bool:
        stmt = self._insert(suppressions).values(
            contact=contact, channel=channel.value, reason=reason, source=source, created_at=clock.now()
        ).on_conflict_do_nothing(index_elements=[suppressions.c.contact]).returning(suppressions.c.contact)
        with self.write() as conn:
            return conn.execute(stmt).first() is not None

    # Small updates that are not state changes -------------------------------------------------
    def defer(self, delivery_id: int, not_before: datetime) -> bool:
        """Hold a claimable delivery until ``not_before`` (e.g. the SMS window opens)."""
        with self.write() as conn:
            result = conn.execute(
                update(deliveries)
                .where(deliveries.c.id == delivery_id,
                       deliveries.c.status.in_([s.value for s in CLAIMABLE]))
                .values(not_before=not_before, updated_at=clock.now())
            )
        return result.rowcount == 1

    def mark_dispatched(self, ids: Sequence[int], at: datetime) -> None:
        if not ids:
            return
        with self.write() as conn:
            for start in range(0, len(ids), 1000):
                conn.execute(update(deliveries).where(deliveries.c.id.in_(ids[start:start + 1000]))
                             .values(dispatched_at=at))

    def note_message_id(self, delivery_id: int, provider: str, message_id: str) -> None:
        with self.write() as conn:
            conn.execute(
                update(deliveries).where(deliveries.c.id == delivery_id, deliveries.c.provider_message_id.is_(None))
                .values(provider=provider, provider_message_id=message_id)
            )

    # Provider events ---------------------------------------------------------------------------
    def delivery_for_message(self, message_id: str, *, provider: str, channel: str) -> tuple[int, int] | None:
        """The delivery (and the attempt) a message id was given for, by this provider on this channel.

        Never by message id alone: a message id names a send only together with the provider that gave it
        (an event from one provider must not find another provider's send of the same id).
        """
        with self.read() as conn:
            found = conn.execute(
                select(provider_messages.c.delivery_id, provider_messages.c.attempt)
                .where(provider_messages.c.message_id == message_id, provider_messages.c.provider == provider,
                       provider_messages.c.channel == channel)).first()
            if found is None:
                found = conn.execute(
                    select(deliveries.c.id, deliveries.c.attempts)
                    .where(deliveries.c.provider_message_id == message_id, deliveries.c.provider == provider,
                           deliveries.c.channel == channel)).first()
        return None if found is None else (int(found[0]), int(found[1]))

    def settle_message_id(self, delivery_id: int, *, provider: str, channel: str, attempt: int,
                          message_id: str) -> bool:
        """Give a send whose answer was lost the message id a provider event proves, if the delivery is still
        that send: ``unknown``, at that attempt, sent through that provider on that channel (compare-and-set).
        """
        with self.write() as conn:
            changed = conn.execute(
                update(deliveries).where(
                    deliveries.c.id == delivery_id, deliveries.c.status == Status.UNKNOWN.value,
                    deliveries.c.attempts == attempt, deliveries.c.provider == provider,
                    deliveries.c.channel == channel,
                ).values(provider_message_id=message_id)
            ).rowcount == 1
            if changed:
                conn.execute(self._provider_message_insert, {
                    "message_id": message_id, "delivery_id": delivery_id, "attempt": attempt, "channel": channel,
                    "provider": provider, "sent_at": clock.now(),
                })
        return changed

    def record_event(self, dedupe_key: str, values: dict[str, Any]) -> int | None:
        """Store an event once; returns its id, or None when it was already received (a duplicate)."""
        stmt = (
            self._insert(provider_events)
            .values(dedupe_key=dedupe_key, received_at=clock.now(), **values)
            .on_conflict_do_nothing(index_elements=[provider_events.c.dedupe_key])
            .returning(provider_events.c.id)
        )
        with self.write() as conn:
            return conn.execute(stmt).scalar()

    def finish_event(self, event_id: int, *, delivery_id: int | None, applied: bool, outcome: str) -> None:
        with self.write() as conn:
            conn.execute(update(provider_events).where(provider_events.c.id == event_id)
                         .values(delivery_id=delivery_id, applied=int(applied), outcome=outcome))

    def pending_events(self, message_id: str | None = None, limit: int = 1000, *,
                       received_after: datetime | None = None) -> list[dict[str, Any]]:
        """Events waiting for their send, oldest first; ``received_after``: only those not yet expired."""
        stmt = select(provider_events).where(provider_events.c.applied == 0)
        if message_id is not None:
            stmt = stmt.where(provider_events.c.message_id == message_id)
        if received_after is not None:
            stmt = stmt.where(provider_events.c.received_at > received_after)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt.order_by(provider_events.c.at).limit(limit))]

    def prune_pending_events(self, *, received_before: datetime, keep: int) -> int:
        """Give up on waiting events received before ``received_before``, and on the oldest beyond ``keep``.

        They stay recorded (so a redelivery is still a duplicate) but are never applied. Returns how many.
        """
        waiting = and_(provider_events.c.applied == 0, provider_events.c.received_at <= received_before)
        given_up = {"applied": 1, "outcome": "expired: its send was never recorded"}
        with self.write() as conn:
            pruned = conn.execute(update(provider_events).where(waiting).values(given_up)).rowcount
            count = conn.execute(select(func.count()).select_from(provider_events)
                                 .where(provider_events.c.applied == 0)).scalar() or 0
            if count > keep:
                oldest = (select(provider_events.c.id).where(provider_events.c.applied == 0)
                          .order_by(provider_events.c.received_at, provider_events.c.id).limit(count - keep))
                given_up["outcome"] = "dropped: too many events waiting"
                pruned += conn.execute(update(provider_events).where(provider_events.c.id.in_(oldest))
                                       .values(given_up)).rowcount
        return int(pruned)

    def unsuppress(self, contact: str) -> bool:
        with self.write() as conn:
            return conn.execute(suppressions.delete().where(suppressions.c.contact == contact)).rowcount == 1

    def suppression_list(self, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(suppressions).order_by(suppressions.c.created_at).limit(limit))
            return [dict(r._mapping) for r in rows]
