"""Ledger tables (SQLAlchemy Core). The ledger is the source of truth; the broker only carries work."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the ledger")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


metadata = MetaData()

Id = BigInteger().with_variant(Integer, "sqlite")

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", UTCDateTime, nullable=False),
)

campaigns = Table(
    "campaigns",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    #: The campaign file as loaded, JSON, so any host can work without the file.
    Column("definition", JSON, nullable=False),
    #: Template sources snapshotted at enqueue time.
    Column("templates", JSON, nullable=False),
    #: active | paused | cancelled
    Column("state", String(16), nullable=False, default="active"),
    Column("state_reason", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    #: Second wave: a reminder run is a campaign of its own (its own deliveries, the same machinery), made
    #: from its parent's definition; ``purpose`` names what it is for (``reminder:<template>``).
    Column("parent_id", String(64)),
    Column("purpose", String(80)),
    Index("ix_campaigns_parent", "parent_id"),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign_id", String(64), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("row_no", Integer, nullable=False),
    Column("channel", String(8), nullable=False),
    #: The address or E.164 number this delivery goes to (personal data: never logged in full).
    Column("contact", String(320), nullable=False),
    Column("email", String(320)),
    Column("phone", String(20)),
    Column("flags", String(200), nullable=False, default=""),
    #: Bearer credential: only ever rendered into the message itself.
    Column("receipt_url", Text, nullable=False),
    Column("fields", JSON, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    #: ``attempts`` when an operator last re-queued it: the retry bound counts from here.
    Column("attempts_base", Integer, nullable=False, default=0),
    Column("not_before", UTCDateTime),
    #: When a broker message was last sent for it; the sweep re-sends only what looks lost.
    Column("dispatched_at", UTCDateTime),
    Column("provider", String(32)),
    Column("provider_message_id", String(200)),
    Column("provider_code", String(100)),
    Column("reason", Text),
    Column("sms_parts", Integer),
    Column("first_sent_at", UTCDateTime),
    Column("last_event_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    #: Second wave, automatic fallback: set in the same transaction as a hard bounce or permanent failure of a
    #: row that has the other contact (the fallback is owed; the sweep finds it if its message was lost) ...
    Column("fallback_due_at", UTCDateTime),
    #: ... and when it was queued on the other channel (never twice), with the first channel's evidence.
    Column("fallback_at", UTCDateTime),
    Column("first_channel", String(8)),
    Column("first_status", String(16)),
    Column("first_provider_message_id", String(200)),
    #: Second wave: the row's inquiry number (NFKC), copied out of ``fields`` at enqueue so the call centre's
    #: desk finds a person by it through an index. Rows written before the column existed have NULL here.
    Column("inquiry_no", Text),
    #: Set by a batch claim: ``<send-mark epoch>/<batch token>``, where the sweep reads what the worker did
    #: (dispatcher/sending/marks.py). NULL: claimed without marks (the sweep then says ``unknown``).
    Column("claim_mark", String(120)),
    UniqueConstraint("campaign_id", "user_id", name="uq_delivery_campaign_user"),
    Index("ix_deliveries_campaign_status", "campaign_id", "status", "channel"),
    Index("ix_deliveries_status_not_before", "status", "not_before"),
    # Partial, like the inquiry index below: most rows have neither (every row at enqueue and at its claim),
    # and an update that moves a row's state writes a new entry into every index that holds the row.
    Index(
        "ix_deliveries_provider_message_set",
        "provider_message_id",
        postgresql_where=text("provider_message_id IS NOT NULL"),
        sqlite_where=text("provider_message_id IS NOT NULL"),
    ),
    Index(
        "ix_deliveries_fallback_owed",
        "fallback_due_at",
        postgresql_where=text("fallback_due_at IS NOT NULL"),
        sqlite_where=text("fallback_due_at IS NOT NULL"),
    ),
    #: Partial: most rows have no inquiry number, and a row without one costs the index nothing at enqueue.
    Index(
        "ix_deliveries_campaign_inquiry",
        "campaign_id",
        "inquiry_no",
        postgresql_where=text("inquiry_no IS NOT NULL"),
        sqlite_where=text("inquiry_no IS NOT NULL"),
    ),
    Index("ix_deliveries_campaign_contact", "campaign_id", "contact"),
)

#: Append-only audit trail: every state change with time, attempt and provider code.
transitions = Table(
    "transitions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, nullable=False),
    Column("campaign_id", String(64), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("provider_code", String(100)),
    Column("detail", Text),
    #: Who moved it: worker, sweep, event:<type>, operator:<name>.
    Column("actor", String(100), nullable=False),
    Index("ix_transitions_delivery", "delivery_id", "id"),
    Index("ix_transitions_campaign_at", "campaign_id", "at"),
)

#: Delivery counts per campaign, channel and state, kept in the same transaction as every change, so
#: status pages need not count a million rows. Sharded so concurrent workers rarely wait on one row.
delivery_counts = Table(
    "delivery_counts",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("channel", String(8), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("shard", Integer, primary_key=True),
    Column("n", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
)

#: One row per list loaded into a campaign: what came in, what was refused and where the rejects are.
imports = Table(
    "imports",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("campaign_id", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("accepted", Integer, nullable=False),
    Column("new", Integer, nullable=False),
    Column("rejected", Integer, nullable=False),
    Column("rejects_path", Text),
    #: {"field": count} of rejection reasons.
    Column("reasons", JSON, nullable=False),
    Index("ix_imports_campaign", "campaign_id", "id"),
)

#: Every message id a provider gave us, so late events for an earlier attempt still find their delivery.
provider_messages = Table(
    "provider_messages",
    metadata,
    Column("message_id", String(200), primary_key=True),
    Column("delivery_id", Id, nullable=False),
    Column("channel", String(8), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("provider", String(32), nullable=False),
    Column("sent_at", UTCDateTime, nullable=False),
    #: Every attempt's message id of one delivery, for the person desk.
    Index("ix_provider_messages_delivery", "delivery_id"),
)

#: Provider events as received (deduplicated). ``applied`` is false while the event waits for its send to
#: be recorded (it arrived first) — it is applied when it can be. No personal data is kept here.
provider_events = Table(
    "provider_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("dedupe_key", String(64), nullable=False, unique=True),
    Column("source", String(32), nullable=False),
    Column("event_type", String(64), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("message_id", String(200), nullable=False),
    #: our "<delivery id>.<attempt>" when the provider echoes it (SES tags, SMS context, gateway reference)
    Column("reference", String(64)),
    Column("at", UTCDateTime, nullable=False),
    Column("code", String(100)),
    Column("detail", Text),
    Column("delivery_id", Id),
    Column("applied", Integer, nullable=False, default=0),
    #: what applying it did: moved:<state> | ignored:<why> | recorded
    Column("outcome", String(100)),
    Column("received_at", UTCDateTime, nullable=False),
    Index("ix_provider_events_message", "message_id"),
    Index("ix_provider_events_pending", "applied", "received_at"),
)

#: Contacts never to be sent to again, by any campaign (hard bounce, complaint, opt-out).
suppressions = Table(
    "suppressions",
    metadata,
    Column("contact", String(320), primary_key=True),
    Column("channel", String(8), nullable=False),
    Column("reason", Text, nullable=False),
    Column("source", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

#: The receipt site's word that a person has received their points: a fact about the person, not a delivery.
#: One row per person and campaign; a later file only fills in a time that was missing (idempotent).
redemptions = Table(
    "redemptions",
    metadata,
    Column("campaign_id", String(64), primary_key=True),
    Column("user_id", String(128), primary_key=True),
    #: When the receipt site says they redeemed (or when we learnt it, if the file gave no time).
    Column("redeemed_at", UTCDateTime, nullable=False),
    #: Where we learnt it: the file name or ``api``, and who loaded it.
    Column("source", Text, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Index("ix_redemptions_campaign_at", "campaign_id", "redeemed_at"),
)

#: 2: second wave (added by :meth:`BaseLedger.migrate` to a version-1 ledger without losing a row).
SCHEMA_VERSION = 2


#: Indexes an earlier version made that this one replaced (by a partial index of another name): dropped by
#: :meth:`~dispatcher.ledger.connection.BaseLedger.migrate` once their replacement exists.
RETIRED_INDEXES = {"deliveries": ("ix_deliveries_provider_message", "ix_deliveries_fallback_due")}
