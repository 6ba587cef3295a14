"""Turning accepted deliveries into media rows: one insert per database dialect, and the
answer each delivery gets (created, or the existing row's state).

A batch holds one row per (tenant, mediaId). PostgreSQL takes it as one
``INSERT ... SELECT FROM json_populate_recordset(...)`` (``PG_INSERT``: the receiver's
PostgresWriter runs it on its asyncio connections, ``record_items`` through a session);
SQLite as one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``. Rows arrive ``queued`` and
not yet known to be published (``queued_at`` NULL): the publish follows the commit, and the
row is marked published only once it succeeded (``PG_MARK_PUBLISHED`` /
``lifecycle.mark_published``). A media item that Titan already persisted (``mediaUrl``)
arrives ``archived``. Used by the receiver (webhooks) and the CLI (``media add``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import select, tuple_
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, col

from archiver.tables import Media, Status, naive_utc


@dataclass(frozen=True, slots=True)
class MediaItem:
    """A ``message.received`` event that carries media, reduced to what we store."""

    media_id: str
    session: str
    message_id: str | None
    message_type: str
    mime_type: str | None
    file_length: int | None
    sender: str | None
    caption: str | None
    filename: str | None
    media_url: str | None
    message_at: datetime | None
    event_id: str | None
    sender_lid: str | None = None
    voice_note: bool = False  # sent as a voice note (ptt/voice), stored as audio
    chat: str | None = None  # the group's id, or the contact of a one-to-one chat
    is_group: bool | None = None
    from_me: bool | None = None
    sender_name: str | None = None  # pushName


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one webhook delivery."""

    pk: int
    created: bool
    status: str
    needs_publish: bool  # pending and not known to be in the broker


@dataclass(frozen=True)
class Arrival:
    """One webhook's media item for a tenant, as the receiver hands it over."""

    tenant_id: int
    strategy: str
    item: MediaItem
    trace: str | None = None  # W3C traceparent of the webhook's span (archiver/tracing.py)


def _in_utc(value: datetime) -> datetime:
    """An aware time in UTC itself (a naive one is refused, as by ``naive_utc``): what
    ``pg_rows`` writes with ``+00:00``, the offset PostgreSQL drops for the table's
    ``timestamp without time zone`` columns."""
    return value if value.tzinfo is UTC else naive_utc(value).replace(tzinfo=UTC)


def _values(arrival: Arrival, now: datetime) -> dict[str, Any]:
    item = arrival.item
    values: dict[str, Any] = {
        "tenant_id": arrival.tenant_id,
        "media_id": item.media_id,
        "message_id": item.message_id,
        "session": item.session,
        "message_type": item.message_type,
        "mime_type": item.mime_type,
        "file_length": item.file_length,
        "sender": item.sender,
        "sender_lid": item.sender_lid,
        "caption": item.caption,
        "filename": item.filename,
        "event_id": item.event_id,
        "strategy": arrival.strategy,
        "persisted": False,
        "s3_url": None,
        "status": Status.QUEUED.value,
        "attempts": 0,
        "received_at": now,
        "message_at": None if item.message_at is None else _in_utc(item.message_at),
        "archived_at": None,
        "updated_at": now,
        "queued_at": None,  # set once the publish succeeded
        "voice_note": item.voice_note,
        "chat": item.chat,
        "is_group": item.is_group,
        "from_me": item.from_me,
        "sender_name": item.sender_name,
    }
    if item.media_url:
        # Titan's auto-persist already put the file in the tenant's bucket: archived on arrival.
        values |= {
            "strategy": "auto",
            "status": Status.ARCHIVED.value,
            "persisted": True,
            "s3_url": item.media_url,
            "archived_at": now,
        }
    return values


Key = tuple[int, str]  # (tenant_id, media_id)


@dataclass(frozen=True)
class Batch:
    """A group commit's rows: one per (tenant, mediaId), in a stable (lock-safe) order."""

    arrivals: list[Arrival]
    firsts: dict[Key, dict[str, Any]]

    @classmethod
    def of(cls, arrivals: list[Arrival], now: datetime) -> Batch:
        firsts: dict[Key, dict[str, Any]] = {}
        now = _in_utc(now)
        for arrival in arrivals:
            firsts.setdefault((arrival.tenant_id, arrival.item.media_id), _values(arrival, now))
        return cls(arrivals, firsts)

    @property
    def rows(self) -> list[dict[str, Any]]:
        # Sorted, so two concurrent batches take the unique index's locks in the same order.
        return [self.firsts[key] for key in sorted(self.firsts)]

    def missing(self, created: dict[Key, int]) -> list[Key]:
        return [key for key in self.firsts if key not in created]

    def answers(
        self, created: dict[Key, int], existing: dict[Key, tuple[int, str, datetime | None]]
    ) -> list[Recorded]:
        """One answer per arrival, in order; the first arrival of a new row created it."""
        answers: list[Recorded] = []
        claimed: set[Key] = set()
        for arrival in self.arrivals:
            key = (arrival.tenant_id, arrival.item.media_id)
            if key in created:
                status = self.firsts[key]["status"]
                first = key not in claimed
                claimed.add(key)
                needs = first and status == Status.QUEUED.value
                answers.append(Recorded(created[key], first, status, needs))
            else:
                pk, status, queued_at = existing[key]
                # A redelivery publishes a queued row not known to be in the broker: its
                # publish failed, or its receiver died between the commit and the publish.
                # (A retrying row waits for its time; the dispatcher publishes it then.)
                unpublished = status == Status.QUEUED.value and queued_at is None
                answers.append(Recorded(pk, False, status, unpublished))
        return answers


def record_items(session: Session, *, arrivals: list[Arrival], now: datetime) -> list[Recorded]:
    """Insert one row per (tenant, mediaId) in one statement; answer in ``arrivals``' order.

    A media item already recorded (or twice in this batch) comes back with created=False
    and the existing row's state.
    """
    if not arrivals:
        return []
    batch = Batch.of(arrivals, now)
    if session.get_bind().dialect.name == "postgresql":
        result = session.connection().exec_driver_sql(PG_INSERT, tuple(pg_rows(batch.rows)))
        inserted = [tuple(r) for r in result]
    else:
        stmt = (
            sqlite.insert(Media)
            .on_conflict_do_nothing(index_elements=["tenant_id", "media_id"])
            .returning(col(Media.pk), col(Media.tenant_id), col(Media.media_id))
        )
        inserted = [tuple(r) for r in session.execute(stmt, batch.rows)]
    created = {(t, m): pk for pk, t, m in inserted}
    existing: dict[Key, tuple[int, str, datetime | None]] = {}
    missing = batch.missing(created)
    if missing:
        found = session.execute(
            select(
                col(Media.pk),
                col(Media.tenant_id),
                col(Media.media_id),
                col(Media.status),
                col(Media.queued_at),
            ).where(tuple_(col(Media.tenant_id), col(Media.media_id)).in_(missing))
        )
        for pk, tenant_id, media_id, status, queued_at in found:
            existing[(tenant_id, media_id)] = (pk, status, queued_at)
    return batch.answers(created, existing)


_COLUMNS = list(
    _values(
        Arrival(0, "", MediaItem("", "", None, "", None, None, None, None, None, None, None, None)),
        datetime(2000, 1, 1, tzinfo=UTC),
    )
)


def _pg_insert_sql() -> str:
    columns = ", ".join(_COLUMNS)
    # Built once from the table's own column names, never from input. The rows travel as one
    # JSON document: one orjson.dumps is far cheaper than adapting one array per column.
    return (
        f"INSERT INTO media ({columns}) SELECT {columns} "  # noqa: S608
        "FROM json_populate_recordset(NULL::media, %s::json) "
        "ON CONFLICT (tenant_id, media_id) DO NOTHING RETURNING pk, tenant_id, media_id"
    )


PG_INSERT = _pg_insert_sql()


PG_EXISTING = (
    "SELECT pk, tenant_id, media_id, status, queued_at FROM media "
    "WHERE (tenant_id, media_id) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))"
)


# lifecycle.mark_published in one round trip. The mark need not be durable at once (a mark
# lost in a crash costs one extra broker message, never a row), so this statement's commit
# does not wait for the WAL flush: set_config(..., true) lasts to the end of the statement's
# own transaction, and works through PgBouncer's transaction pooling too. The rows are found
# by primary key whatever the planner's statistics say: the status test is an expression
# (``status || ''``), which no index on status can serve. With the plain column, a backlog
# that grew since the last ANALYZE (statistics that say "queued" is rare) made the planner
# walk ix_media_status_lease through every queued row on each mark, up to 20 times a second
# (measured: 24 ms instead of 0.3 to find 170 rows behind a backlog of 30,000; the plan is
# held by tests/test_media_rows.py).
PG_MARK_PUBLISHED = (
    "UPDATE media SET queued_at = %s "
    "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit "
    "WHERE pk = ANY(%s::bigint[]) AND status || '' = 'queued' AND queued_at IS NULL "
    "AND updated_at = received_at"
)


def pg_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The parameter of PG_INSERT: the rows as one JSON array (orjson: a quarter of
    json.dumps's time on the receiver's hot path). Their times are UTC (``_values``) and
    written by orjson itself with ``+00:00``, which the table's columns drop: converting
    each to naive UTC in Python first was a third of the batch's cost."""
    return [orjson.dumps(rows).decode()]
