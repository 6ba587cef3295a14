"""Counts, bytes and ages of the archive: the API's stats, the dashboard's overview, the CLI's
status and the backlog gauges."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, literal
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from archiver.reporting import totals
from archiver.tables import Media, Status, Tenant, UTCDateTime


@dataclass(frozen=True)
class Backlog:
    counts: dict[str, int]
    oldest_unarchived: datetime | None  # received time of the oldest row not yet archived or failed
    oldest_failed: datetime | None


ACTIVE = (Status.QUEUED.value, Status.ARCHIVING.value, Status.RETRYING.value)


def backlog(session: Session, *, tenant_id: int | None = None) -> Backlog:
    """Rows per status (the maintained totals) and the oldest waiting and failed rows (one
    index seek per tenant and status: ix_media_tenant_status)."""
    counts: dict[str, int] = {}
    for total in totals.read(session, tenant_id=tenant_id):
        counts[total.status] = counts.get(total.status, 0) + total.rows
    oldest = _oldest(session, ACTIVE, tenant_id) if any(counts.get(s) for s in ACTIVE) else None
    failed = Status.FAILED.value
    oldest_failed = _oldest(session, (failed,), tenant_id) if counts.get(failed) else None
    return Backlog(counts=counts, oldest_unarchived=oldest, oldest_failed=oldest_failed)


def _oldest(session: Session, statuses: tuple[str, ...], tenant_id: int | None) -> datetime | None:
    """The earliest received time among rows in ``statuses``: per tenant and status, the
    first entry of the (tenant, status, received_at) index, never a scan of the table."""
    firsts = []
    for status in statuses:
        first = (
            core_select(func.min(Media.received_at))
            .where(col(Media.status) == status, col(Media.tenant_id) == Tenant.id)
            .scalar_subquery()
        )
        query = core_select(func.min(first)).select_from(Tenant)
        if tenant_id is not None:
            query = query.where(col(Tenant.id) == tenant_id)
        found = session.execute(query).scalar()
        if found is not None:
            firsts.append(found)
    # An aggregate comes back as the driver gives it (naive on SQLite): read it as the column.
    return UTCDateTime().process_result_value(min(firsts), None) if firsts else None


@dataclass(frozen=True)
class Stats:
    by_status: dict[str, tuple[int, int]]  # status -> (rows, bytes)
    by_type: dict[str, tuple[int, int]]  # message type -> (rows, bytes)


def stats(session: Session, *, tenant_id: int | None) -> Stats:
    """Row counts and bytes (archived size, else Titan's fileLength) by status and by type,
    from the maintained totals (archiver/totals.py)."""
    by_status: dict[str, tuple[int, int]] = {}
    by_type: dict[str, tuple[int, int]] = {}
    for total in totals.read(session, tenant_id=tenant_id):
        for grouped, key in ((by_status, total.status), (by_type, total.message_type)):
            rows, size = grouped.get(key, (0, 0))
            grouped[key] = (rows + total.rows, size + total.bytes)
    return Stats(by_status=by_status, by_type=by_type)


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
    """One line per conversation with archived or pending media: newest activity first
    (the maintained summary, archiver/totals.py: no scan of the media table)."""
    return [
        Chat(
            tenant_id=c.tenant_id,
            chat=c.chat,
            name=c.name,
            is_group=c.is_group,
            count=c.rows,
            size=c.bytes,
            last_at=c.last_at,
        )
        for c in totals.chats(session, tenant_id=tenant_id, limit=limit)
    ]
