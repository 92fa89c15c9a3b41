"""The one place where a delivery changes state: a compare-and-set on the state table's sources, with
its audit row, counters and provider message id in the same transaction (one statement on PostgreSQL)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, text, update
from sqlalchemy.sql.elements import ClauseElement

from dispatcher.core import clock
from dispatcher.core.errors import IllegalTransition
from dispatcher.core.states import CLAIMABLE, Status, check, sources_of

from .counters import COUNT_SHARDS
from .deliveries import DeliveryLedger
from .records import _DELIVERY_FIELDS, _SLIM_KEYS, Delivery
from .schema import (
    deliveries,
    transitions,
)

log = logging.getLogger(__name__)

_TRANSITION = transitions.insert()
#: A move leaves one (channel, status) counter for another, in one statement (PostgreSQL and SQLite).
_BUMP_MOVE = text(
    "INSERT INTO delivery_counts (campaign_id, channel, status, shard, n) "
    "VALUES (:campaign_id, :from_channel, :from_status, :from_shard, -1), "
    "(:campaign_id, :to_channel, :to_status, :to_shard, 1) "
    "ON CONFLICT (campaign_id, channel, status, shard) DO UPDATE SET n = delivery_counts.n + excluded.n"
)


class MoveLedger(DeliveryLedger):
    @staticmethod
    def _build_move(new_values: dict[str, Any], *, claim: bool, exact: bool) -> Any:
        """The compare-and-set UPDATE ... RETURNING of a move."""
        conditions = [deliveries.c.id == bindparam("_id"), deliveries.c.status == bindparam("_from")]
        if exact:
            conditions += [
                deliveries.c.attempts == bindparam("_attempts"),
                deliveries.c.channel == bindparam("_channel"),
                deliveries.c.contact == bindparam("_contact"),
            ]
        if claim:
            new_values = {**new_values, "attempts": deliveries.c.attempts + 1}
            conditions.append(
                or_(
                    deliveries.c.not_before.is_(None),
                    deliveries.c.not_before <= bindparam("_now", type_=deliveries.c.not_before.type),
                )
            )
        return update(deliveries).where(and_(*conditions)).values(new_values).returning(deliveries)

    def _move_statement(self, keys: tuple[str, ...], *, claim: bool, exact: bool) -> Any:
        """The statement for one shape of move, built once (building and hashing a statement costs more than
        running it); the values are bound as ``v_<column>``."""
        shape = (keys, claim, exact)
        stmt = self._move_statements.get(shape)
        if stmt is None:
            stmt = self._build_move(
                {k: bindparam(f"v_{k}", type_=deliveries.c[k].type) for k in keys}, claim=claim, exact=exact
            )
            with self._cache_lock:
                self._move_statements[shape] = stmt
        return stmt

    def _pg_move_statement(
        self, keys: tuple[str, ...], *, claim: bool, exact: bool, message: bool, slim: bool = False
    ) -> Any:
        """PostgreSQL: the compare-and-set, the provider message id, the counters and the audit row of a move
        as one statement (built once per shape). ``slim``: it returns only the attempt count."""
        shape = ("pg", keys, claim, exact, message, slim)
        stmt = self._move_statements.get(shape)
        if stmt is not None:
            return stmt
        sets = [f"{k} = :v_{k}" for k in keys] + (["attempts = deliveries.attempts + 1"] if claim else [])
        where = ["deliveries.id = :_id", "deliveries.status = :_from"]
        if exact:
            where += [
                "deliveries.attempts = :_attempts",
                "deliveries.channel = :_channel",
                "deliveries.contact = :_contact",
            ]
        if claim:
            where.append("(deliveries.not_before IS NULL OR deliveries.not_before <= :_now)")
        sql = [
            f"WITH moved AS (UPDATE deliveries SET {', '.join(sets)} WHERE {' AND '.join(where)} "
            "RETURNING deliveries.*)"
        ]
        if message:
            sql.append(
                ", message AS (INSERT INTO provider_messages (message_id, delivery_id, attempt, channel, "
                "provider, sent_at) SELECT :message_id, id, :attempt, :to_channel, :provider, :at FROM moved "
                "ON CONFLICT (message_id) DO NOTHING)"
            )
        sql.append(
            ", counted AS (INSERT INTO delivery_counts (campaign_id, channel, status, shard, n) "
            "SELECT * FROM (SELECT campaign_id, CAST(:from_channel AS text) AS channel, "
            "CAST(:_from AS text) AS status, CAST(:from_shard AS integer) AS shard, -1 AS n FROM moved UNION ALL "
            "SELECT campaign_id, CAST(:to_channel AS text), CAST(:to_status AS text), "
            "CAST(:to_shard AS integer), 1 FROM moved) c "
            "ORDER BY campaign_id, channel, status, shard "  # key order, as batches.py: no deadlock between moves
            "ON CONFLICT (campaign_id, channel, status, shard) "
            "DO UPDATE SET n = delivery_counts.n + excluded.n)"
        )
        sql.append(
            ", trail AS (INSERT INTO transitions (delivery_id, campaign_id, at, from_status, to_status, "
            "attempt, provider_code, detail, actor) SELECT id, campaign_id, :at, :_from, :to_status, "
            ":attempt, :provider_code, :detail, :actor FROM moved)"
        )
        sql.append(" SELECT attempts FROM moved" if slim else " SELECT * FROM moved")
        typed = [bindparam(f"v_{k}", type_=deliveries.c[k].type) for k in keys]
        typed.append(bindparam("at", type_=transitions.c.at.type))
        if claim:
            typed.append(bindparam("_now", type_=deliveries.c.not_before.type))
        stmt = text("".join(sql)).bindparams(*typed).columns(*([deliveries.c.attempts] if slim else deliveries.c))
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
        operator: bool = False,
        _claim: bool = False,
    ) -> Delivery | None:
        """Move a delivery to ``to`` if the state table allows it from its current state.

        ``expect`` narrows the states it may come from. Returns the delivery after the move, or None when
        it was not in a state this move may start from (someone else moved it first: not an error).
        ``current`` is the delivery as the caller last read (or moved) it, which spares reading it again:
        the compare-and-set then also requires its attempt count, channel and contact (a re-addressed
        delivery is never sent to the contact the caller read), and when the row is no longer
        like that the move reads it and decides as if it had not been given.
        ``operator``: the move is an operator's explicit act and may use :data:`OPERATOR_TRANSITIONS`.
        """
        allowed = sources_of(to, operator=operator)
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
            check(current.status, to, operator=operator)
            attempt = current.attempts + (1 if _claim else 0)
            channel = str((values or {}).get("channel", current.channel.value))
            message_id = (values or {}).get("provider_message_id")
            params.update(
                _id=delivery_id,
                _from=current.status.value,
                _attempts=current.attempts,
                _channel=current.channel.value,
                _contact=current.contact,
                _now=now,
            )
            from_shard = random.randrange(COUNT_SHARDS)
            record = {
                "campaign_id": current.campaign_id,
                "at": now,
                "attempt": attempt,
                "to_status": to.value,
                "from_channel": current.channel.value,
                "to_channel": channel,
                "provider_code": provider_code,
                "detail": detail,
                "actor": actor,
                "from_shard": from_shard,
                # Never the same shard: a move that keeps its channel and state (an operator's re-address of
                # a queued delivery) would otherwise touch one counter row twice in one statement.
                "to_shard": (from_shard + random.randrange(1, COUNT_SHARDS)) % COUNT_SHARDS,
                "message_id": message_id,
                "provider": str((values or {}).get("provider") or current.provider or "?"),
            }
            if self.dialect == "postgresql" and keys is not None:
                # One statement does it all (a data-modifying WITH is atomic on its own): two round trips.
                # With the caller's copy matched exactly, the row after the move is that copy with the new
                # values: only the attempt count comes back (reading every column back costs more than the rest).
                slim = not as_read and _SLIM_KEYS.issuperset(keys)
                stmt = self._pg_move_statement(
                    keys, claim=_claim, exact=not as_read, message=bool(message_id), slim=slim
                )
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
            stmt = (
                self._move_statement(keys, claim=_claim, exact=not as_read)
                if keys is not None
                else self._build_move(new_values, claim=_claim, exact=not as_read)
            )
            with self.write() as conn:
                row = conn.execute(stmt, params).first()
                if row is None:
                    if _claim and as_read:
                        return None
                    continue  # changed under us (or the caller's copy was old): read it and decide again
                moved = Delivery.from_row(row)
                if message_id:
                    conn.execute(
                        self._provider_message_insert,
                        {
                            "message_id": message_id,
                            "delivery_id": delivery_id,
                            "attempt": attempt,
                            "channel": channel,
                            "provider": record["provider"],
                            "sent_at": now,
                        },
                    )
                conn.execute(
                    _BUMP_MOVE,
                    {
                        "campaign_id": current.campaign_id,
                        "from_channel": current.channel.value,
                        "from_status": current.status.value,
                        "from_shard": record["from_shard"],
                        "to_channel": channel,
                        "to_status": to.value,
                        "to_shard": record["to_shard"],
                    },
                )
                conn.execute(
                    _TRANSITION,
                    {
                        "delivery_id": delivery_id,
                        "campaign_id": current.campaign_id,
                        "at": now,
                        "from_status": current.status.value,
                        "to_status": to.value,
                        "attempt": attempt,
                        "provider_code": provider_code,
                        "detail": detail,
                        "actor": actor,
                    },
                )
            return moved
        return None

    def claim(
        self, delivery_id: int, *, actor: str = "worker", now: datetime | None = None, current: Delivery | None = None
    ) -> Delivery | None:
        """Atomically take a due ``queued|retrying`` delivery into ``sending``; None if someone else did.

        ``current``: the delivery as the caller read it (see :meth:`move`)."""
        return self.move(
            delivery_id, Status.SENDING, actor=actor, expect=CLAIMABLE, now=now, current=current, _claim=True
        )

    def history(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute(
                select(transitions).where(transitions.c.delivery_id == delivery_id).order_by(transitions.c.id)
            )
            return [dict(r._mapping) for r in rows]
