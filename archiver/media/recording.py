"""Turning accepted deliveries into media rows: one insert per database dialect, and the
answer each delivery gets (created, or the existing row's state).

A batch holds one row per (tenant, mediaId). PostgreSQL takes it as one
``INSERT ... SELECT FROM json_populate_recordset(...)`` (``PG_INSERT``: the receiver's
PostgresWriter runs it on its asyncio connections, ``record_items`` through a session);
SQLite as one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``. Rows arrive ``queued`` and
already marked published (``queued_at`` = ``received_at``), as the dispatcher marks before
it publishes: the publish follows the commit, and only a publish that failed takes the mark
back (``PG_UNMARK`` / ``lifecycle.mark_unqueued``), so Titan's retry of the refused delivery
publishes the row. No second write per row on success: the mark after each publish was a
third of the database's work per webhook (docs/performance.md). A redelivery of a row that
still carries only its first receiver's mark publishes it again (``PG_EXISTING``): that
receiver may have died between its commit and its publish, and a retry Titan sends is the
one that must fix it. A media item that Titan already persisted (``mediaUrl``) arrives
``archived``. Used by the receiver (webhooks) and the CLI (``media add``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from sqlalchemy import select, tuple_
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, col

from archiver.media import lifecycle
from archiver.tables import Media, Status, naive_utc


class MediaItem(NamedTuple):
    """A ``message.received`` event that carries media, reduced to what we store.

    A named tuple, immutable as a frozen dataclass is, made in a quarter of the time (one
    per webhook: 1.5 against 5.7 us for its 18 fields; docs/performance.md)."""

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
    needs_publish: bool  # this delivery must publish it (and its mark is this delivery's)


class Arrival(NamedTuple):
    """One webhook's media item for a tenant, as the receiver hands it over (a named
    tuple, as ``MediaItem``)."""

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
        "queued_at": now,  # marked before its publish; taken back if the publish fails
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
            "queued_at": None,
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
        self, created: dict[Key, int], existing: dict[Key, tuple[int, str, bool]]
    ) -> list[Recorded]:
        """One answer per arrival, in order; the first arrival of a new row created it.
        ``existing``: each other row's pk, status and whether this batch took it for a
        publish again (``PG_EXISTING``, ``take_again``)."""
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
                pk, status, taken = existing[key]
                answers.append(Recorded(pk, False, status, taken))
        return answers


def record_items(session: Session, *, arrivals: list[Arrival], now: datetime) -> list[Recorded]:
    """Insert one row per (tenant, mediaId) in one statement; answer in ``arrivals``' order.

    A media item already recorded (or twice in this batch) comes back with created=False
    and the existing row's state, and needs a publish when ``lifecycle.take_again`` took
    it (marked with ``now``, as ``PG_EXISTING`` does on the receiver's connections).
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
    existing: dict[Key, tuple[int, str, bool]] = {}
    missing = batch.missing(created)
    if missing:
        found = session.execute(
            select(
                col(Media.pk), col(Media.tenant_id), col(Media.media_id), col(Media.status)
            ).where(tuple_(col(Media.tenant_id), col(Media.media_id)).in_(missing))
        ).all()
        taken = set(lifecycle.take_again(session, pks=[pk for pk, *_ in found], at=now))
        for pk, tenant_id, media_id, status in found:
            existing[(tenant_id, media_id)] = (pk, status, pk in taken)
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


# The rows of a batch that were there already, each taken for a publish again when
# ``lifecycle.take_again`` would take it (the same test, in one round trip with the lookup):
# (pk, tenant_id, media_id, status, taken). The update finds its rows by primary key
# whatever the planner's statistics say: the status test is an expression
# (``status || ''``), which no index on status can serve (with the plain column, a backlog
# that grew since the last ANALYZE once made the planner walk ix_media_status_lease through
# every queued row; held by tests/test_media_rows.py).
PG_EXISTING = (
    "WITH found AS (SELECT pk, tenant_id, media_id, status FROM media "
    "WHERE (tenant_id, media_id) IN (SELECT * FROM unnest(%s::bigint[], %s::text[]))), "
    "taken AS (UPDATE media SET queued_at = %s WHERE pk = ANY(ARRAY(SELECT pk FROM found)) "
    "AND status || '' = 'queued' "
    "AND (queued_at IS NULL OR (queued_at = received_at AND updated_at = received_at)) "
    "RETURNING pk) "
    "SELECT f.pk, f.tenant_id, f.media_id, f.status, t.pk IS NOT NULL "
    "FROM found f LEFT JOIN taken t ON t.pk = f.pk"
)


# ``lifecycle.mark_unqueued`` in one round trip: a publish failed; its rows' marks (``at``,
# the batch's time) are taken back, unless someone marked them again since.
PG_UNMARK = "UPDATE media SET queued_at = NULL WHERE pk = ANY(%s::bigint[]) AND queued_at = %s"


def pg_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The parameter of PG_INSERT: the rows as one JSON array (orjson: a quarter of
    json.dumps's time on the receiver's hot path). Their times are UTC (``_values``) and
    written by orjson itself with ``+00:00``, which the table's columns drop: converting
    each to naive UTC in Python first was a third of the batch's cost."""
    return [orjson.dumps(rows).decode()]
