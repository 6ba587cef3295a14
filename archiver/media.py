"""Media rows and their state machine: record, claim under a lease, finish, query.

queued ──claim──> archiving ──> archived
   ^                 │    └───> failed   (permanent error, or attempts exhausted)
   └── retrying <────┘ (transient error; a later attempt claims it again)

Every transition is a conditional UPDATE that proceeds only if exactly one row changed,
so two workers can never both own a row, and a worker whose lease was taken over
cannot overwrite the newer owner's outcome (``attempts`` is the fencing token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, tuple_, update
from sqlalchemy.dialects import sqlite
from sqlmodel import Session, col, select

from archiver.envelope import MediaItem
from archiver.media_query import MediaQuery
from archiver.tables import PENDING, Media, Status, Tenant, UTCDateTime

MAX_ERROR_LEN = 1000


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one webhook delivery."""

    pk: int
    created: bool
    status: str
    needs_publish: bool  # pending and not known to be in the broker


@dataclass(frozen=True)
class Claim:
    """The outcome of trying to take a row: the row, or why not (and until when)."""

    row: Media | None
    busy_until: datetime | None = None  # another worker holds the lease until then


@dataclass(frozen=True)
class Arrival:
    """One webhook's media item for a tenant, as the receiver hands it over."""

    tenant_id: int
    strategy: str
    item: MediaItem


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
        "message_at": item.message_at,
        "archived_at": None,
        "updated_at": now,
        "queued_at": now,
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
        pending = {s.value for s in PENDING}
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
                # A redelivery re-queues only a row whose earlier publish failed (queued_at
                # NULL), so concurrent duplicates do not multiply broker messages.
                answers.append(Recorded(pk, False, status, status in pending and queued_at is None))
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
        inserted = _insert_unnest(session, batch.rows)
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
            select(Media.pk, Media.tenant_id, Media.media_id, Media.status, Media.queued_at).where(
                tuple_(col(Media.tenant_id), col(Media.media_id)).in_(missing)
            )
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
    # JSON document: json.dumps (C) is far cheaper than adapting one array per column.
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
PG_UNQUEUE = "UPDATE media SET queued_at = NULL WHERE pk = ANY(%s::bigint[])"


def _naive_utc(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None).isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")


def pg_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The parameter of PG_INSERT: the rows as one JSON array, times as naive UTC."""
    return [json.dumps(rows, default=_naive_utc, ensure_ascii=False)]


def _insert_unnest(session: Session, rows: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """One prepared statement over column arrays: no per-row SQL, no per-batch compile.

    Measured on a 32-row batch: 3.6 ms against 27.7 ms for a compiled multi-row VALUES.
    """
    driver = session.connection().connection.driver_connection
    with driver.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(PG_INSERT, pg_rows(rows), prepare=True)
        return [tuple(r) for r in cursor.fetchall()]


def record_item(session: Session, *, tenant: Tenant, item: MediaItem, now: datetime) -> Recorded:
    """Record one delivery (see record_items)."""
    assert tenant.id is not None
    arrival = Arrival(tenant_id=tenant.id, strategy=tenant.strategy, item=item)
    return record_items(session, arrivals=[arrival], now=now)[0]


def mark_unqueued(session: Session, *, pk: int) -> None:
    """The publish of ``pk`` failed: flag it so the next delivery or the sweeper queues it."""
    session.execute(update(Media).where(col(Media.pk) == pk).values(queued_at=None))


def mark_queued(session: Session, *, pks: list[int], at: datetime) -> None:
    if pks:
        session.execute(update(Media).where(col(Media.pk).in_(pks)).values(queued_at=at))


def _claimable(now: datetime) -> Any:
    return or_(
        col(Media.status).in_([s.value for s in PENDING]),
        and_(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now),
    )


def claim(session: Session, *, pk: int, now: datetime, lease_seconds: int) -> Claim:
    """Take ownership of a row for one attempt, or say why it is not ours to work on now."""
    return claim_many(session, pks=[pk], now=now, lease_seconds=lease_seconds)[pk]


def claim_many(
    session: Session, *, pks: list[int], now: datetime, lease_seconds: int
) -> dict[int, Claim]:
    """``claim`` for several rows in one statement (a batch of small transfers)."""
    # One round-trip: the UPDATE hands back the claimed rows (no SELECT after it).
    claimed = (
        session.execute(
            update(Media)
            .where(col(Media.pk).in_(pks), _claimable(now))
            .values(
                status=Status.ARCHIVING.value,
                attempts=col(Media.attempts) + 1,
                lease_until=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(Media)
            .execution_options(populate_existing=True)
        )
        .scalars()
        .all()
    )
    claims = {row.pk or 0: Claim(row=row) for row in claimed}
    others = [pk for pk in pks if pk not in claims]
    if others:
        query = select(Media.pk, Media.status, Media.lease_until).where(col(Media.pk).in_(others))
        held = {pk: until for pk, status, until in session.exec(query) if status == "archiving"}
        for pk in others:
            claims[pk] = Claim(row=None, busy_until=held.get(pk))
    return claims


def set_upload_id(session: Session, *, pk: int, attempt: int, upload_id: str | None) -> bool:
    """Remember the multipart upload this attempt opened, so a successor can abort it."""
    return _finish(session, pk=pk, attempt=attempt, values={"upload_id": upload_id})


_TABLE = Media.__table__  # type: ignore[attr-defined]


def _finish(session: Session, *, pk: int, attempt: int, values: dict[str, Any]) -> bool:
    # A Core UPDATE on the table: no ORM bulk-update bookkeeping on the worker's hot path.
    result = session.connection().execute(
        _TABLE.update()
        .where(
            _TABLE.c.pk == pk,
            _TABLE.c.status == Status.ARCHIVING.value,
            _TABLE.c.attempts == attempt,
        )
        .values(**values)
    )
    return result.rowcount == 1


def renew_lease(
    session: Session, *, pk: int, attempt: int, now: datetime, lease_seconds: int
) -> bool:
    """Extend the lease of a long transfer; False if the row is no longer ours."""
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={"lease_until": now + timedelta(seconds=lease_seconds), "updated_at": now},
    )


def mark_archived(
    session: Session, *, pk: int, attempt: int, now: datetime, outcome: dict[str, Any]
) -> bool:
    """Record a finished transfer. ``outcome`` holds bucket/object_key/sha256/size/s3_url/..."""
    values = {
        **outcome,
        "status": Status.ARCHIVED.value,
        "archived_at": now,
        "updated_at": now,
        "lease_until": None,
        "last_error": None,
        "upload_id": None,
        "queued_at": None,
    }
    return _finish(session, pk=pk, attempt=attempt, values=values)


def mark_retrying(
    session: Session, *, pk: int, attempt: int, now: datetime, error: str, due: datetime
) -> bool:
    """A transient failure: the row waits for the attempt scheduled at ``due``."""
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.RETRYING.value,
            "last_error": error[:MAX_ERROR_LEN],
            "lease_until": None,
            "updated_at": now,
            "queued_at": due,
        },
    )


def mark_failed(session: Session, *, pk: int, attempt: int, now: datetime, error: str) -> bool:
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.FAILED.value,
            "last_error": error[:MAX_ERROR_LEN],
            "lease_until": None,
            "updated_at": now,
            "queued_at": None,
        },
    )


def get_row(session: Session, *, pk: int) -> Media | None:
    return session.get(Media, pk)


def get_media(session: Session, *, tenant_id: int, media_id: str) -> Media | None:
    return session.exec(
        select(Media).where(Media.tenant_id == tenant_id, Media.media_id == media_id)
    ).first()


def search(session: Session, *, tenant_id: int | None, query: MediaQuery) -> list[Media]:
    """One page of rows matching ``query``, newest first unless asc.

    The order is (received_at, pk), immutable and unique, so keyset paging never skips or
    repeats a row; every filter's index ends in those columns, so a page is one index range.
    """
    stmt = select(Media)
    if tenant_id is not None:
        stmt = stmt.where(Media.tenant_id == tenant_id)
    for column, value in (
        (Media.session, query.session),
        (Media.status, query.status),
        (Media.message_type, query.type),
        (Media.message_id, query.message_id),
        (Media.persisted, query.persisted),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    if query.mime_type is not None:
        if query.mime_type.endswith("/"):
            stmt = stmt.where(col(Media.mime_type).like(query.mime_type + "%"))
        else:
            stmt = stmt.where(Media.mime_type == query.mime_type)
    if query.sender is not None:
        stmt = stmt.where(or_(Media.sender == query.sender, Media.sender_lid == query.sender))
    if query.since is not None:
        stmt = stmt.where(col(Media.received_at) >= query.since)
    if query.until is not None:
        stmt = stmt.where(col(Media.received_at) < query.until)
    if query.min_size is not None:
        stmt = stmt.where(col(Media.file_length) >= query.min_size)
    if query.max_size is not None:
        stmt = stmt.where(col(Media.file_length) <= query.max_size)
    ascending = query.order == "asc"
    position = tuple_(col(Media.received_at), col(Media.pk))
    if query.after is not None:
        # Bind through the column's type so the time compares as stored (naive UTC).
        mark = tuple_(literal(query.after[0], UTCDateTime()), literal(query.after[1]))
        stmt = stmt.where(position > mark if ascending else position < mark)
    if ascending:
        stmt = stmt.order_by(col(Media.received_at).asc(), col(Media.pk).asc())
    else:
        stmt = stmt.order_by(col(Media.received_at).desc(), col(Media.pk).desc())
    return list(session.exec(stmt.limit(query.limit)))


def list_media(
    session: Session,
    *,
    tenant_id: int | None,
    session_name: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[Media]:
    """Newest rows first, for the CLI and the dev demo."""
    query = MediaQuery(session=session_name, status=status, limit=limit)
    return search(session, tenant_id=tenant_id, query=query)


def expired_leases(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Rows whose worker stopped renewing its lease (it died, or lost its database)."""
    query = (
        select(Media.pk)
        .where(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now)
        .order_by(col(Media.lease_until))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


def unqueued(session: Session, *, limit: int) -> list[int]:
    """Pending rows that are certainly not in the broker (their publish failed)."""
    query = (
        select(Media.pk)
        .where(col(Media.status).in_([s.value for s in PENDING]), col(Media.queued_at).is_(None))
        .order_by(col(Media.pk))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


def routing(session: Session, *, pks: list[int]) -> dict[int, tuple[int | None, str]]:
    """(announced size, message type) of each row, which decide its queue."""
    found: dict[int, tuple[int | None, str]] = {}
    for start in range(0, len(pks), 500):
        query = select(Media.pk, Media.file_length, Media.message_type).where(
            col(Media.pk).in_(pks[start : start + 500])
        )
        for pk, file_length, message_type in session.execute(query):
            found[pk] = (file_length, message_type)
    return found


def due_pending_count(session: Session, *, now: datetime) -> int:
    """Pending rows whose message should be waiting in the broker right now."""
    query = select(func.count()).where(
        col(Media.status).in_([s.value for s in PENDING]), col(Media.queued_at) <= now
    )
    return int(session.exec(query).one())


def oldest_due(session: Session, *, queued_before: datetime, limit: int) -> list[int]:
    """The longest-waiting pending rows, queued before ``queued_before``, oldest first."""
    query = (
        select(Media.pk)
        .where(
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.queued_at) < queued_before,
        )
        .order_by(col(Media.queued_at))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


def requeue_failed(
    session: Session, *, tenant_id: int | None, media_ids: list[str] | None, now: datetime
) -> list[int]:
    """Turn failed rows back into fresh queued rows (attempts reset); return their pks."""
    query = select(Media.pk).where(Media.status == Status.FAILED.value)
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    if media_ids is not None:
        query = query.where(col(Media.media_id).in_(media_ids))
    pks = [pk for pk in session.exec(query.order_by(col(Media.pk))) if pk is not None]
    for start in range(0, len(pks), 500):
        session.execute(
            update(Media)
            .where(
                col(Media.pk).in_(pks[start : start + 500]),
                col(Media.status) == Status.FAILED.value,
            )
            .values(status=Status.QUEUED.value, attempts=0, queued_at=now, updated_at=now)
        )
    return pks


@dataclass(frozen=True)
class Backlog:
    counts: dict[str, int]
    oldest_unarchived: datetime | None  # received time of the oldest row not yet archived or failed
    oldest_failed: datetime | None


def backlog(session: Session, *, tenant_id: int | None = None) -> Backlog:
    where = [] if tenant_id is None else [Media.tenant_id == tenant_id]
    counts = {
        status: int(n)
        for status, n in session.exec(
            select(Media.status, func.count()).where(*where).group_by(Media.status)
        )
    }
    active = [Status.QUEUED.value, Status.ARCHIVING.value, Status.RETRYING.value]
    oldest = session.exec(
        select(func.min(Media.received_at)).where(col(Media.status).in_(active), *where)
    ).one()
    oldest_failed = session.exec(
        select(func.min(Media.received_at)).where(Media.status == Status.FAILED.value, *where)
    ).one()
    utc = Media.__table__.c.received_at.type  # type: ignore[attr-defined]
    return Backlog(
        counts=counts,
        oldest_unarchived=utc.process_result_value(oldest, None) if oldest else None,
        oldest_failed=utc.process_result_value(oldest_failed, None) if oldest_failed else None,
    )


def archived_in_buckets(
    session: Session, *, tenant_id: int | None, after_pk: int, limit: int
) -> list[Media]:
    """Archived rows that we wrote to a bucket ourselves, in pk order (for reconcile)."""
    query = select(Media).where(
        Media.status == Status.ARCHIVED.value,
        col(Media.object_key).is_not(None),
        col(Media.pk) > after_pk,
    )
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    return list(session.exec(query.order_by(col(Media.pk)).limit(limit)))


def reopen(session: Session, *, pk: int, reason: str, now: datetime) -> bool:
    """Send an archived row back to the queue (its object went missing or differs)."""
    result = session.execute(
        update(Media)
        .where(col(Media.pk) == pk, col(Media.status) == Status.ARCHIVED.value)
        .values(
            status=Status.QUEUED.value,
            attempts=0,
            last_error=reason[:MAX_ERROR_LEN],
            queued_at=now,
            updated_at=now,
        )
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, tuple[int, int]]  # status -> (rows, bytes)
    by_type: dict[str, tuple[int, int]]  # message type -> (rows, bytes)


def stats(session: Session, *, tenant_id: int | None) -> Stats:
    """Row counts and bytes (archived size, else Titan's fileLength) by status and by type."""
    where = [] if tenant_id is None else [Media.tenant_id == tenant_id]
    size = func.coalesce(func.sum(func.coalesce(Media.size, Media.file_length)), 0)

    def grouped(column: Any) -> dict[str, tuple[int, int]]:
        rows = session.exec(select(column, func.count(), size).where(*where).group_by(column))
        return {str(key): (int(n), int(total)) for key, n, total in rows}

    return Stats(by_status=grouped(Media.status), by_type=grouped(Media.message_type))


def archive_rate(
    session: Session, *, tenant_id: int | None, now: datetime, minutes: int = 60, step: int = 5
) -> list[tuple[datetime, int]]:
    """Rows archived per ``step``-minute slot over the last ``minutes``: [(slot start, n)]."""
    utc = UTCDateTime()
    starts = [now - timedelta(minutes=minutes - i * step) for i in range(minutes // step)]
    slots = [
        func.sum(
            case(
                (
                    and_(
                        col(Media.archived_at) >= literal(start, utc),
                        col(Media.archived_at) < literal(start + timedelta(minutes=step), utc),
                    ),
                    1,
                ),
                else_=0,
            )
        )
        for start in starts
    ]
    query = select(*slots).where(col(Media.archived_at) >= literal(starts[0], utc))
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    counts = session.execute(query).one()
    return [(start, int(n or 0)) for start, n in zip(starts, counts, strict=True)]


def stuck(
    session: Session, *, tenant_id: int | None, now: datetime, older_than: timedelta, limit: int
) -> list[Media]:
    """Rows not moving: pending for longer than ``older_than``, or held by an expired lease."""
    moving = or_(
        and_(
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.received_at) < now - older_than,
        ),
        and_(Media.status == Status.ARCHIVING.value, col(Media.lease_until) < now),
    )
    query = select(Media).where(moving)
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    return list(session.exec(query.order_by(col(Media.received_at)).limit(limit)))
