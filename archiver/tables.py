"""The database tables: tenants, their query API keys, and one media row per archived file."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else naive_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def naive_utc(value: datetime) -> datetime:
    """An aware time as the tables hold it: UTC, without a zone (timestamp without time
    zone on PostgreSQL, text on SQLite). A naive time is refused: its zone is a guess."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    return value.astimezone(UTC).replace(tzinfo=None)


def _time(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


class Strategy(StrEnum):
    DOWNLOAD = "download"  # we stream the file from Titan into the tenant's bucket
    PERSIST = "persist"  # Titan writes the file into the tenant's bucket itself


class Status(StrEnum):
    QUEUED = "queued"  # accepted, waiting for a worker
    ARCHIVING = "archiving"  # claimed by a worker holding a lease
    RETRYING = "retrying"  # a transient failure; another attempt is scheduled
    ARCHIVED = "archived"  # the file is in the tenant's bucket (terminal)
    FAILED = "failed"  # permanent failure or attempts exhausted (terminal, re-drivable)
    # A fixity audit found the archived object missing or changed (last_error says which):
    # kept as evidence, counted and alerted on, never re-archived over.
    DAMAGED = "damaged"


PENDING = (Status.QUEUED, Status.RETRYING)


class RenderState(StrEnum):
    PENDING = "pending"  # asked for (at archiving, or by `media render`), not made yet
    DONE = "done"  # renditions made (or nothing to make for this file)
    FAILED = "failed"  # the file could not be read as its type; the archive stands


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True, index=True)
    titan_url: str = Field(max_length=2048)
    strategy: str = Field(max_length=16)
    s3_bucket: str = Field(max_length=255)
    s3_endpoint: str | None = Field(default=None, max_length=2048)
    s3_region: str | None = Field(default=None, max_length=64)
    s3_access_key_id: str | None = Field(default=None, max_length=255)
    s3_prefix: str = Field(default="", max_length=512)
    # PEM certificates the tenant's S3 endpoint is verified against (a private CA), else the
    # system's trust store.
    s3_ca_bundle: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    hmac_key_enc: str = Field(sa_column=Column(Text, nullable=False))
    # During a webhook key rotation the old key keeps verifying until it expires.
    hmac_key_previous_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    hmac_key_previous_expires_at: datetime | None = _time()
    titan_api_key_enc: str = Field(sa_column=Column(Text, nullable=False))
    s3_secret_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The webhook `tenants connect` registered with Titan (its id there, and the URL it posts
    # to), which `tenants check` verifies; NULL when it was set up by hand.
    titan_webhook_id: str | None = Field(default=None, max_length=255)
    webhook_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime | None = _time(nullable=False)
    # Paused: its rows wait (no attempt spent) until it is resumed. By an operator, or by a
    # worker when Titan or the bucket refused the tenant's settings (paused_auto: probed and
    # resumed on its own once they work again).
    paused_at: datetime | None = _time()
    paused_reason: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    paused_auto: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    # Titan's rate limit for this tenant's key was reached: no transfer of it starts before.
    throttled_until: datetime | None = _time()
    # What is captured (archiver/media/capture.py): outgoing media (message.sent), status/broadcast
    # and group media; a type allow-list (comma-separated, NULL: every type); a size cap.
    capture_outgoing: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    capture_status: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=true())
    )
    capture_groups: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=true())
    )
    capture_types: str | None = Field(default=None, max_length=255)
    capture_max_bytes: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    # A message revoked or deleted by its sender: its object and row are erased (else kept,
    # the fact recorded on the row).
    delete_revoked: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    # Rows and objects older than this many days are deleted by the beat (NULL: kept).
    retention_days: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    # S3 Object Lock (WORM): every object written for the tenant is retained in this mode
    # (governance or compliance; None: off) for this many days (archiver/governance/worm.py).
    object_lock_mode: str | None = Field(default=None, max_length=16)
    object_lock_days: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    # Thumbnails, posters and playable audio are made after archiving (worker/render.py).
    renditions: bool = Field(
        default=True, sa_column=Column(Boolean, nullable=False, server_default=true())
    )
    # Where media.archived / media.failed events are POSTed (Standard Webhooks signed).
    notify_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    notify_secret_enc: str | None = Field(default=None, sa_column=Column(Text, nullable=True))

    @property
    def saved_id(self) -> int:
        """The id of a tenant read from the database (one never stored has none: a bug)."""
        if self.id is None:
            raise RuntimeError("a tenant that was never stored has no id")
        return self.id


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenants.id", index=True, ondelete="CASCADE")
    prefix: str = Field(max_length=32, index=True)
    label: str | None = Field(default=None, max_length=64)  # what the key is for
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime | None = _time(nullable=False)
    last_used_at: datetime | None = _time()
    revoked_at: datetime | None = _time()


class SessionPause(SQLModel, table=True):
    """A WhatsApp session of a tenant that Titan reported logged out or banned: its media
    calls would fail, so its rows wait (no attempt spent) until it is connected again."""

    __tablename__ = "session_pauses"

    tenant_id: int = Field(foreign_key="tenants.id", primary_key=True, ondelete="CASCADE")
    session: str = Field(max_length=64, primary_key=True)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    since: datetime | None = _time(nullable=False)


class ReconcileProgress(SQLModel, table=True):
    """How far the last ``reconcile`` got through a tenant's archived rows (pk order)."""

    __tablename__ = "reconcile_progress"

    tenant_id: int = Field(
        foreign_key="tenants.id",
        primary_key=True,
        ondelete="CASCADE",
        sa_column_kwargs={"autoincrement": False},
    )
    after_pk: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    checked: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    differences: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    finished: bool = Field(default=False)
    updated_at: datetime | None = _time(nullable=False)


class Media(SQLModel, table=True):
    """One archived (or to-be-archived) media file of one tenant: MediaInfo plus our bookkeeping."""

    __tablename__ = "media"
    __table_args__ = (
        UniqueConstraint("tenant_id", "media_id", name="uq_media_tenant_media_id"),
        # Listing order is (received_at, pk): each filter's index ends in it (keyset paging).
        Index("ix_media_tenant_received", "tenant_id", "received_at", "pk"),
        Index("ix_media_tenant_status", "tenant_id", "status", "received_at", "pk"),
        Index("ix_media_tenant_session", "tenant_id", "session", "received_at", "pk"),
        Index("ix_media_tenant_type", "tenant_id", "message_type", "received_at", "pk"),
        Index("ix_media_received", "received_at", "pk"),
        Index("ix_media_tenant_message", "tenant_id", "message_id"),
        Index("ix_media_tenant_sender", "tenant_id", "sender"),
        Index("ix_media_tenant_sender_lid", "tenant_id", "sender_lid"),
        Index("ix_media_tenant_chat", "tenant_id", "chat", "received_at", "pk"),
        Index("ix_media_tenant_group", "tenant_id", "is_group", "received_at", "pk"),
        Index("ix_media_tenant_from_me", "tenant_id", "from_me", "received_at", "pk"),
        # text_pattern_ops lets PostgreSQL serve a MIME prefix (LIKE 'image/%') by index.
        Index(
            "ix_media_tenant_mime",
            "tenant_id",
            "mime_type",
            postgresql_ops={"mime_type": "text_pattern_ops"},
        ),
        Index("ix_media_status_lease", "status", "lease_until"),
        # Renders asked for and not made yet, oldest first (the sweeper re-asks).
        Index(
            "ix_media_render_pending",
            "updated_at",
            postgresql_where=text("render_state = 'pending'"),
            sqlite_where=text("render_state = 'pending'"),
        ),
        # Fixity audits: the least recently verified archived rows of a tenant first, and the
        # bytes it read back in the last day (its budget). Partial: inserts never touch them.
        Index(
            "ix_media_fixity_due",
            "tenant_id",
            "verified_at",
            postgresql_where=text("status = 'archived'"),
            sqlite_where=text("status = 'archived'"),
        ),
        Index(
            "ix_media_audited",
            "tenant_id",
            "audited_at",
            postgresql_where=text("audited_at IS NOT NULL"),
            sqlite_where=text("audited_at IS NOT NULL"),
        ),
        # Archived rows the ledger has not sealed yet (the beat's sealer reads these).
        Index(
            "ix_media_unsealed",
            "tenant_id",
            "archived_at",
            postgresql_where=text("sealed_seq IS NULL AND archived_at IS NOT NULL"),
            sqlite_where=text("sealed_seq IS NULL AND archived_at IS NOT NULL"),
        ),
        # No index covers queued_at: re-marking a row (dispatcher, sweeper, a redelivery)
        # can stay a heap-only update (migration 0011).
        # The dashboard's archive rate. Partial: rows arrive with archived_at NULL, so the
        # receiver's inserts never touch it.
        Index(
            "ix_media_archived_at",
            "archived_at",
            postgresql_where=text("archived_at IS NOT NULL"),
            sqlite_where=text("archived_at IS NOT NULL"),
        ),
    )

    pk: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenants.id", ondelete="CASCADE")
    media_id: str = Field(max_length=255)
    message_id: str | None = Field(default=None, max_length=255)
    session: str = Field(max_length=64)
    message_type: str = Field(max_length=32)
    mime_type: str | None = Field(default=None, max_length=255)
    file_length: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    sender: str | None = Field(default=None, max_length=255)  # phone number, else lid or id
    sender_lid: str | None = Field(default=None, max_length=255)
    caption: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    filename: str | None = Field(default=None, max_length=255)
    event_id: str | None = Field(default=None, max_length=255)
    strategy: str = Field(max_length=16)
    persisted: bool = Field(default=False)
    s3_url: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    bucket: str | None = Field(default=None, max_length=255)
    object_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    sha256: str | None = Field(default=None, max_length=64)
    etag: str | None = Field(default=None, max_length=128)  # the bucket's, for reconcile
    size: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    status: str = Field(default=Status.QUEUED, max_length=16)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    received_at: datetime | None = _time(nullable=False)
    message_at: datetime | None = _time()
    archived_at: datetime | None = _time()
    updated_at: datetime | None = _time(nullable=False)
    lease_until: datetime | None = _time()
    queued_at: datetime | None = _time()  # last publish; NULL: not in the broker
    retry_at: datetime | None = _time()  # a retrying row is published again from this time
    # Attempts whose worker died holding the lease (a poison file kills its workers).
    crashes: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    upload_id: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Sent as a voice note (Titan's ptt/voice); message_type says audio.
    voice_note: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    # The conversation: the group's id for a group, the contact (as Titan names it: phone
    # number, or lid) for a one-to-one chat; NULL where Titan did not say.
    chat: str | None = Field(default=None, max_length=255)
    is_group: bool | None = Field(default=None, sa_column=Column(Boolean, nullable=True))
    from_me: bool | None = Field(default=None, sa_column=Column(Boolean, nullable=True))
    sender_name: str | None = Field(default=None, max_length=255)  # WhatsApp pushName
    # Exempt from retention (never from an explicit erasure).
    legal_hold: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    revoked_at: datetime | None = _time()  # the sender revoked or deleted the message
    revoked_by: str | None = Field(default=None, max_length=32)  # the event that said so
    # What the renditions found (archiver/media/renditions.py), the renditions themselves (JSON),
    # and where making them stands (RenderState; NULL: never asked, e.g. archived before).
    width: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    height: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    duration_seconds: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    pages: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    renditions: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    render_state: str | None = Field(default=None, max_length=16)
    # When the stored bytes were last shown to be the archived ones (hashed on the way in,
    # or re-read by a fixity audit), and when an audit last read them (its daily budget).
    verified_at: datetime | None = _time()
    audited_at: datetime | None = _time()
    sealed_seq: int | None = Field(default=None)  # its archive record in the ledger
    render_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # Renders started for this ask: one whose worker died or timed out does not finish, and
    # after MAX_RENDER_ATTEMPTS the ask is given up (a file that crashes its decoder).
    render_attempts: int = Field(
        default=0, sa_column=Column(Integer, nullable=False, server_default="0")
    )

    @property
    def saved_pk(self) -> int:
        """The pk of a row read from the database (one never stored has none: a bug)."""
        if self.pk is None:
            raise RuntimeError("a media row that was never stored has no pk")
        return self.pk


class NotificationState(StrEnum):
    PENDING = "pending"  # waiting for its (next) delivery attempt
    DELIVERED = "delivered"  # the endpoint answered 2xx
    FAILED = "failed"  # still refused a day after it was created: given up


class Notification(SQLModel, table=True):
    """The outbox: one event for a tenant's endpoint, committed with the state change it
    reports and delivered from there (archiver/tenants/notify.py)."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_due", "state", "next_at"),
        Index("ix_notifications_tenant", "tenant_id", "state"),
        Index("ix_notifications_media", "tenant_id", "media_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int = Field(foreign_key="tenants.id", ondelete="CASCADE")
    event: str = Field(max_length=32)  # media.archived, media.failed
    media_id: str = Field(max_length=255)
    body: str = Field(sa_column=Column(Text, nullable=False))  # the JSON POSTed, as signed
    state: str = Field(default=NotificationState.PENDING, max_length=16)
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    created_at: datetime | None = _time(nullable=False)
    next_at: datetime | None = _time()  # due from (a lease while an attempt runs)
    delivered_at: datetime | None = _time()
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class AuditEvent(SQLModel, table=True):
    """One administrative action: who did what to which tenant, when
    (archiver/governance/audit.py)."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at", "id"),
        Index("ix_audit_events_tenant", "tenant", "at", "id"),
        Index(
            "ix_audit_events_unsealed",
            "id",
            postgresql_where=text("sealed_seq IS NULL"),
            sqlite_where=text("sealed_seq IS NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    at: datetime | None = _time(nullable=False)
    actor: str = Field(max_length=128)  # cli:<os user>, admin, key:<id>, retention, worker
    action: str = Field(max_length=64)  # tenant.add, key.revoke, media.erase, ...
    tenant_id: int | None = Field(default=None)  # kept after the tenant is removed
    tenant: str | None = Field(default=None, max_length=64)
    detail: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    sealed_seq: int | None = Field(default=None)  # its entry in the ledger (None: not yet)


class ExportJob(SQLModel, table=True):
    """An eDiscovery export the admin API asked for (archiver/governance/bundle.py)."""

    __tablename__ = "export_jobs"

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int
    tenant: str = Field(max_length=64)
    query: str = Field(sa_column=Column(Text, nullable=False))  # JSON: chat, sender, since, until
    status: str = Field(max_length=16)  # queued, running, done, failed
    path: str = Field(sa_column=Column(Text, nullable=False))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))  # JSON
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: datetime | None = _time(nullable=False)
    finished_at: datetime | None = _time()


class LedgerEntry(SQLModel, table=True):
    """One link of a tenant's tamper-evident chain (archiver/governance/ledger.py)."""

    __tablename__ = "ledger"
    __table_args__ = (UniqueConstraint("tenant_id", "seq", name="uq_ledger_tenant_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    tenant_id: int  # 0: the deployment's own events; kept after the tenant is removed
    seq: int
    kind: str = Field(max_length=16)  # archived, audit, erased
    ref: int | None = Field(default=None)  # the media pk or audit event id it records
    body: str = Field(sa_column=Column(Text, nullable=False))  # canonical JSON
    prev_hash: str = Field(max_length=64)
    hash: str = Field(max_length=64)


class SigningKey(SQLModel, table=True):
    """The Ed25519 key that signs ledger checkpoints (private part under the master key)."""

    __tablename__ = "signing_keys"

    id: int | None = Field(default=None, primary_key=True)
    private_enc: str = Field(sa_column=Column(Text, nullable=False))
    public_key: str = Field(max_length=64)  # raw 32 bytes, base64
    created_at: datetime | None = _time(nullable=False)


class LedgerHead(SQLModel, table=True):
    """The last link of each chain, locked while a chain grows."""

    __tablename__ = "ledger_heads"

    tenant_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int
    hash: str = Field(max_length=64)


class MediaTotal(SQLModel, table=True):
    """Rows and bytes of the media table per (tenant, status, type), maintained by triggers
    on ``media`` (migration 0016), so counts never scan the table (archiver/reporting/totals.py)."""

    __tablename__ = "media_totals"

    tenant_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    status: str = Field(max_length=16, primary_key=True)
    message_type: str = Field(max_length=32, primary_key=True)
    rows: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class MediaTotalDelta(SQLModel, table=True):
    """A change to ``media_totals`` not folded in yet (PostgreSQL: each statement on ``media``
    appends its net change here, so concurrent writers never wait on a counter row; the beat
    folds them in). Readers add both tables."""

    __tablename__ = "media_total_deltas"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    tenant_id: int
    status: str = Field(max_length=16)
    message_type: str = Field(max_length=32)
    rows: int = Field(sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))


class MediaChat(SQLModel, table=True):
    """One conversation's media: rows, bytes, last activity, the contact's name, whether it is
    a group; maintained by triggers on ``media`` (migration 0019) for the Chats page."""

    __tablename__ = "media_chats"
    __table_args__ = (
        Index("ix_media_chats_tenant_last", "tenant_id", "last_at", "chat"),
        Index("ix_media_chats_last", "last_at", "chat", "tenant_id"),
    )

    tenant_id: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    chat: str = Field(max_length=255, primary_key=True)
    rows: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    last_at: datetime | None = _time()
    name: str | None = Field(default=None, max_length=255)  # on the contact's newest message
    named_at: datetime | None = _time()  # that message's time
    is_group: bool = Field(default=False)


class MediaChatDelta(SQLModel, table=True):
    """A change to ``media_chats`` not folded in yet (PostgreSQL, as ``MediaTotalDelta``);
    ``deleted``: rows left the conversation, so its last activity is looked up again."""

    __tablename__ = "media_chat_deltas"

    id: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    )
    tenant_id: int
    chat: str = Field(max_length=255)
    rows: int = Field(sa_column=Column(BigInteger, nullable=False))
    bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    last_at: datetime | None = _time()
    name: str | None = Field(default=None, max_length=255)
    named_at: datetime | None = _time()
    is_group: bool = Field(default=False)
    deleted: bool = Field(default=False)
