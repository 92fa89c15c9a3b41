"""Engines and connections: SQLite (WAL, writers that take the lock first, a private file) or PostgreSQL.

The base every part of the ledger stands on; it creates the schema it owns."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, inspect, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.schema import CreateIndex

from dispatcher.core import clock
from dispatcher.core.errors import ConfigError

from .records import CampaignRecord
from .schema import (
    RETIRED_INDEXES,
    SCHEMA_VERSION,
    metadata,
    provider_messages,
    schema_version,
)

log = logging.getLogger(__name__)

#: The advisory lock key one migration at a time holds on PostgreSQL ("dispatch" in ASCII).
_MIGRATE_LOCK = int.from_bytes(b"dispatch", "big")


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

    from dispatcher.core.private import FILE_MODE, create_private_file, private_dir, tighten

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


class BaseLedger:
    """The engines, the connections, and what the parts share (caches, prepared statements)."""

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
            index_elements=[provider_messages.c.message_id]
        )
        self.migrate()

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self._reader.connect() as conn:
            yield conn

    def migrate(self) -> None:
        """Create missing tables, add missing columns and indexes, record the schema version.

        The program owns its schema and changes it only by addition: a new table, a nullable column or an
        index declared in :mod:`.schema` is created here on the first start of a newer program, so a ledger
        written by an earlier version keeps every row (an index an earlier version made that a new one
        replaces is dropped). Several processes may start at once, so one migrates at a time: on PostgreSQL
        under a transaction-scoped advisory lock (two starts creating and dropping the same indexes at once
        deadlock), on SQLite inside the write lock.
        """
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK})")
            metadata.create_all(conn)
            self._add_missing(conn)
            current = conn.execute(select(func.max(schema_version.c.version))).scalar()
            if current is not None and current > SCHEMA_VERSION:
                raise ConfigError(f"ledger schema version {current} is newer than this program ({SCHEMA_VERSION})")
            if current is None or current < SCHEMA_VERSION:
                record = self._insert(schema_version).values(version=SCHEMA_VERSION, applied_at=clock.now())
                conn.execute(record.on_conflict_do_nothing(index_elements=[schema_version.c.version]))

    def _add_missing(self, conn: Connection) -> None:
        found = inspect(conn)
        for table in metadata.sorted_tables:
            have = {column["name"] for column in found.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                if not column.nullable and column.server_default is None:
                    raise ConfigError(f"ledger schema: new column {table.name}.{column.name} must be nullable")
                kind = column.type.compile(dialect=conn.dialect)
                guard = "IF NOT EXISTS " if self.dialect == "postgresql" else ""
                conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN {guard}"{column.name}" {kind}')
                log.info("ledger schema: added column %s.%s", table.name, column.name)
            indexes = {index["name"] for index in found.get_indexes(table.name)}
            for index in table.indexes:
                if index.name not in indexes:
                    conn.execute(CreateIndex(index, if_not_exists=True))
                    log.info("ledger schema: added index %s", index.name)
            for name in RETIRED_INDEXES.get(table.name, ()):
                if name in indexes:
                    conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{name}"')
                    log.info("ledger schema: dropped index %s (replaced)", name)

    def dispose(self) -> None:
        self._reader.dispose()
        if self._writer is not self._reader:
            self._writer.dispose()

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

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
