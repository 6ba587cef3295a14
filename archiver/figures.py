"""Counts, bytes and ages of the archive: the API's stats, the dashboard's overview, the CLI's
status and the backlog gauges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from archiver.tables import Media, Status, UTCDateTime


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
    # An aggregate comes back as the driver gives it (naive on SQLite): read it as the column.
    utc = UTCDateTime()
    return Backlog(
        counts=counts,
        oldest_unarchived=utc.process_result_value(oldest, None),
        oldest_failed=utc.process_result_value(oldest_failed, None),
    )


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


@dataclass(frozen=True)
class Chat:
    tenant_id: int
    chat: str
    name: str | None  # a contact's pushName (one-to-one chats); groups have none in events
    is_group: bool | None
    count: int
    size: int
    last_at: datetime | None


def chats(session: Session, *, tenant_id: int | None, limit: int = 500) -> list[Chat]:
    """One line per conversation with archived or pending media: newest activity first."""
    incoming_name = case(
        (
            and_(col(Media.is_group).is_not(True), col(Media.from_me).is_not(True)),
            Media.sender_name,
        ),
        else_=None,
    )
    query = (
        core_select(
            col(Media.tenant_id),
            col(Media.chat),
            func.max(incoming_name),
            func.max(case((col(Media.is_group).is_(True), 1), else_=0)),
            func.count(),
            func.coalesce(func.sum(func.coalesce(Media.size, Media.file_length)), 0),
            func.max(Media.received_at),
        )
        .where(col(Media.chat).is_not(None))
        .group_by(col(Media.tenant_id), col(Media.chat))
        .order_by(func.max(Media.received_at).desc())
        .limit(limit)
    )
    if tenant_id is not None:
        query = query.where(col(Media.tenant_id) == tenant_id)
    utc = UTCDateTime()
    return [
        Chat(
            tenant_id=int(tid),
            chat=str(chat),
            name=name,
            is_group=bool(group),
            count=int(n),
            size=int(size),
            last_at=utc.process_result_value(last, None),
        )
        for tid, chat, name, group, n, size, last in session.execute(query)
    ]
