"""Media rows and their state machine: record, claim under a lease, finish, query.

queued ──claim──> archiving ──> archived
   ^                 │    └───> failed   (permanent error, or attempts exhausted)
   └── retrying <────┘ (transient error; a later attempt claims it again)

Every transition is a conditional UPDATE that proceeds only if exactly one row changed,
so two workers can never both own a row, and a worker whose lease was taken over
cannot overwrite the newer owner's outcome (``attempts`` is the fencing token).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from archiver.envelope import MediaItem
from archiver.tables import PENDING, Media, Status, Tenant

MAX_ERROR_LEN = 1000


@dataclass(frozen=True)
class Recorded:
    """The outcome of recording one webhook delivery."""

    pk: int
    created: bool
    status: str


def record_item(session: Session, *, tenant: Tenant, item: MediaItem, now: datetime) -> Recorded:
    """Insert the row for ``item`` once per (tenant, mediaId); a duplicate returns the existing row.

    A payload that already carries ``mediaUrl`` (Titan's auto-persist) is recorded as
    archived straight away: the file is already in the tenant's bucket.
    """
    assert tenant.id is not None
    values: dict[str, Any] = {
        "tenant_id": tenant.id,
        "media_id": item.media_id,
        "message_id": item.message_id,
        "session": item.session,
        "message_type": item.message_type,
        "mime_type": item.mime_type,
        "file_length": item.file_length,
        "sender": item.sender,
        "caption": item.caption,
        "filename": item.filename,
        "event_id": item.event_id,
        "strategy": tenant.strategy,
        "status": Status.QUEUED.value,
        "attempts": 0,
        "received_at": now,
        "message_at": item.message_at,
        "updated_at": now,
    }
    if item.media_url:
        values |= {
            "strategy": "auto",
            "status": Status.ARCHIVED.value,
            "persisted": True,
            "s3_url": item.media_url,
            "archived_at": now,
        }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(Media)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "media_id"])
        .returning(col(Media.pk))
    )
    pk = session.execute(stmt).scalar_one_or_none()
    if pk is not None:
        return Recorded(pk=pk, created=True, status=values["status"])
    existing = session.exec(
        select(Media.pk, Media.status).where(
            Media.tenant_id == tenant.id, Media.media_id == item.media_id
        )
    ).one()
    return Recorded(pk=existing[0], created=False, status=existing[1])  # type: ignore[arg-type]


def claim(session: Session, *, pk: int, now: datetime, lease_seconds: int) -> Media | None:
    """Take ownership of a row for one attempt; None if it is not ours to work on now."""
    claimable = or_(
        col(Media.status).in_([s.value for s in PENDING]),
        and_(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now),
    )
    result = session.execute(
        update(Media)
        .where(col(Media.pk) == pk, claimable)
        .values(
            status=Status.ARCHIVING.value,
            attempts=col(Media.attempts) + 1,
            lease_until=now + timedelta(seconds=lease_seconds),
            updated_at=now,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(Media, pk, populate_existing=True)


def _finish(session: Session, *, pk: int, attempt: int, values: dict[str, Any]) -> bool:
    result = session.execute(
        update(Media)
        .where(
            col(Media.pk) == pk,
            col(Media.status) == Status.ARCHIVING.value,
            col(Media.attempts) == attempt,
        )
        .values(**values)
    )
    return result.rowcount == 1  # type: ignore[attr-defined, no-any-return]


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
    }
    return _finish(session, pk=pk, attempt=attempt, values=values)


def mark_retrying(session: Session, *, pk: int, attempt: int, now: datetime, error: str) -> bool:
    return _finish(
        session,
        pk=pk,
        attempt=attempt,
        values={
            "status": Status.RETRYING.value,
            "last_error": error[:MAX_ERROR_LEN],
            "lease_until": None,
            "updated_at": now,
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
        },
    )


def get_row(session: Session, *, pk: int) -> Media | None:
    return session.get(Media, pk)


def get_media(session: Session, *, tenant_id: int, media_id: str) -> Media | None:
    return session.exec(
        select(Media).where(Media.tenant_id == tenant_id, Media.media_id == media_id)
    ).first()


def list_media(
    session: Session,
    *,
    tenant_id: int | None,
    session_name: str | None = None,
    status: str | None = None,
    message_id: str | None = None,
    limit: int = 50,
    after_pk: int | None = None,
) -> list[Media]:
    """Rows newest first; ``after_pk`` continues a previous page (keyset paging)."""
    query = select(Media)
    if tenant_id is not None:
        query = query.where(Media.tenant_id == tenant_id)
    if session_name is not None:
        query = query.where(Media.session == session_name)
    if status is not None:
        query = query.where(Media.status == status)
    if message_id is not None:
        query = query.where(Media.message_id == message_id)
    if after_pk is not None:
        query = query.where(col(Media.pk) < after_pk)
    return list(session.exec(query.order_by(col(Media.pk).desc()).limit(limit)))


def stuck_rows(session: Session, *, now: datetime, older_than: timedelta, limit: int) -> list[int]:
    """Rows that should be moving but are not: pending too long, or holding an expired lease."""
    cutoff = now - older_than
    query = (
        select(Media.pk)
        .where(
            or_(
                and_(
                    col(Media.status).in_([s.value for s in PENDING]),
                    col(Media.updated_at) < cutoff,
                ),
                and_(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now),
            )
        )
        .order_by(col(Media.pk))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]
