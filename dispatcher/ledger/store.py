"""The ledger: every delivery, its state, and an append-only trail of how it got there.

All state changes go through :meth:`Ledger.move`, a compare-and-set on the current state that also
appends the audit row in the same transaction, so two workers (or a worker and a provider event) can
never both win, and a move the state table forbids is refused, not applied.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, create_engine, event, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

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


def _engine(url: str, *, immediate: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
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
    def add_deliveries(self, campaign_id: str, rows: Sequence[dict[str, Any]], actor: str = "enqueue") -> list[int]:
        """Insert new deliveries; rows whose user is already in the campaign are skipped.

        Returns the ids of the rows actually inserted (idempotent per campaign + user_id).
        """
        if not rows:
            return []
        now = clock.now()
        values = [
            {**row, "campaign_id": campaign_id, "status": Status.QUEUED.value, "attempts": 0, "attempts_base": 0,
             "created_at": now, "updated_at": now, "dispatched_at": now}
            for row in rows
        ]
        stmt = (
            self._insert(deliveries)
            .on_conflict_do_nothing(index_elements=[deliveries.c.campaign_id, deliveries.c.user_id])
            .returning(deliveries.c.id)
        )
        with self.write() as conn:
            inserted = list(conn.execute(stmt.returning(deliveries.c.channel), values))
            new_ids = [r[0] for r in inserted]
            for channel in {r[1] for r in inserted}:
                self._bump(conn, campaign_id, channel, Status.QUEUED.value, sum(1 for r in inserted if r[1] == channel))
            if new_ids:
                conn.execute(
                    transitions.insert(),
                    [{"delivery_id": i, "campaign_id": campaign_id, "at": now, "from_status": None,
                      "to_status": Status.QUEUED.value, "attempt": 0, "actor": actor} for i in new_ids],
                )
        return new_ids

    def get(self, delivery_id: int) -> Delivery | None:
        with self.read() as conn:
            row = conn.execute(select(deliveries).where(deliveries.c.id == delivery_id)).first()
        return None if row is None else Delivery.from_row(row)

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
        _claim: bool = False,
    ) -> Delivery | None:
        """Move a delivery to ``to`` if the state table allows it from its current state.

        ``expect`` narrows the states it may come from. Returns the delivery after the move, or None when
        it was not in a state this move may start from (someone else moved it first: not an error).
        """
        allowed = sources_of(to)
        if expect is not None:
            allowed = allowed & frozenset(expect)
        now = now or clock.now()
        for _ in range(5):
            current = self.get(delivery_id)
            if current is None:
                raise IllegalTransition(f"delivery {delivery_id} does not exist")
            if current.status not in allowed:
                return None
            check(current.status, to)
            new_values: dict[str, Any] = {"status": to.value, "updated_at": now, **(values or {})}
            conditions = [deliveries.c.id == delivery_id, deliveries.c.status == current.status.value]
            if _claim:
                new_values["attempts"] = deliveries.c.attempts + 1
                conditions.append(or_(deliveries.c.not_before.is_(None), deliveries.c.not_before <= now))
            if provider_code is not None:
                new_values["provider_code"] = provider_code
            attempt = current.attempts + (1 if _claim else 0)
            with self.write() as conn:
                result = conn.execute(update(deliveries).where(and_(*conditions)).values(**new_values))
                if result.rowcount != 1:
                    if _claim:
                        return None
                    continue  # changed under us: re-read and decide again
                message_id = (values or {}).get("provider_message_id")
                if message_id:
                    conn.execute(self._insert(provider_messages).values(
                        message_id=message_id, delivery_id=delivery_id, attempt=attempt,
                        channel=str((values or {}).get("channel", current.channel.value)),
                        provider=str((values or {}).get("provider") or current.provider or "?"), sent_at=now,
                    ).on_conflict_do_nothing(index_elements=[provider_messages.c.message_id]))
                channel = str((values or {}).get("channel", current.channel.value))
                self._bump(conn, current.campaign_id, current.channel.value, current.status.value, -1)
                self._bump(conn, current.campaign_id, channel, to.value, 1)
                conn.execute(transitions.insert().values(
                    delivery_id=delivery_id, campaign_id=current.campaign_id, at=now,
                    from_status=current.status.value, to_status=to.value, attempt=attempt,
                    provider_code=provider_code, detail=detail, actor=actor,
                ))
            return self.get(delivery_id)
        return None

    def claim(self, delivery_id: int, *, actor: str = "worker", now: datetime | None = None) -> Delivery | None:
        """Atomically take a due ``queued|retrying`` delivery into ``sending``; None if someone else did."""
        return self.move(delivery_id, Status.SENDING, actor=actor, expect=CLAIMABLE, now=now, _claim=True)

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
    def delivery_for_message(self, message_id: str) -> int | None:
        with self.read() as conn:
            found = conn.execute(select(provider_messages.c.delivery_id)
                                 .where(provider_messages.c.message_id == message_id)).scalar()
            if found is None:
                found = conn.execute(select(deliveries.c.id)
                                     .where(deliveries.c.provider_message_id == message_id)).scalar()
        return found

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

    def pending_events(self, message_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        stmt = select(provider_events).where(provider_events.c.applied == 0)
        if message_id is not None:
            stmt = stmt.where(provider_events.c.message_id == message_id)
        with self.read() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt.order_by(provider_events.c.at).limit(limit))]

    def unsuppress(self, contact: str) -> bool:
        with self.write() as conn:
            return conn.execute(suppressions.delete().where(suppressions.c.contact == contact)).rowcount == 1

    def suppression_list(self, limit: int = 10_000) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(select(suppressions).order_by(suppressions.c.created_at).limit(limit))
            return [dict(r._mapping) for r in rows]
