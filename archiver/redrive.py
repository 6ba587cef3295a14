"""Re-drive work that is not moving: the sweeper (stuck rows) and operator retries (failed rows).

The database is the source of truth and the broker only a wake-up call, so anything the
broker lost (a Redis restarted empty, a publish that failed, a worker killed mid-transfer)
is found here and published again, without flooding a broker that is merely busy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import Engine, func, or_
from sqlmodel import Session, col, select

from archiver import lifecycle
from archiver.broker import publish_archive, queue_depth
from archiver.db import session_scope
from archiver.errors import Unavailable
from archiver.pauses import paused_ids
from archiver.queue import queue_for
from archiver.settings import Settings
from archiver.tables import PENDING, Media, Status, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepReport:
    expired_leases: int
    unqueued: int
    lost: int
    queue_depth: int

    @property
    def total(self) -> int:
        return self.expired_leases + self.unqueued + self.lost


# -- what the sweeper looks for -------------------------------------------------------


def expired_leases(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Rows whose worker stopped renewing its lease (it died, or lost its database)."""
    query = (
        select(Media.pk)
        .where(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now)
        .order_by(col(Media.lease_until))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


def unpublished(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Pending rows that are certainly not in the broker and are due: their publish failed,
    their retry time has come, or their tenant was resumed."""
    query = (
        select(Media.pk)
        .where(
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.queued_at).is_(None),
            or_(col(Media.retry_at).is_(None), col(Media.retry_at) <= now),
            # A paused tenant's rows wait for it to be resumed.
            col(Media.tenant_id).not_in(paused_ids()),
        )
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


# -- re-driving ------------------------------------------------------------------------


def publish_rows(engine: Engine, app: Celery, settings: Settings, pks: list[int]) -> None:
    """Publish rows by pk, each to the queue its size calls for."""
    if not pks:
        return
    with session_scope(engine) as session:
        routes = routing(session, pks=pks)
    for pk in pks:
        file_length, message_type = routes.get(pk, (None, "document"))
        queue = queue_for(file_length, message_type, large_bytes=settings.large_media_bytes)
        publish_archive(app, pk=pk, queue=queue)


def dispatch(
    engine: Engine, app: Celery, settings: Settings, *, now: datetime, limit: int = 5000
) -> int:
    """Publish the rows that are due and not in the broker (scheduled retries, failed
    publishes) and mark them queued; return how many. Beat runs it every few seconds."""
    with session_scope(engine) as session:
        pks = lifecycle.take_for_publish(
            session, pks=unpublished(session, now=now, limit=limit), at=now
        )
    try:
        publish_rows(engine, app, settings, pks)
    except Unavailable:
        with session_scope(engine) as session:
            for pk in pks:
                lifecycle.mark_unqueued(session, pk=pk)
        raise
    return len(pks)


def sweep(
    engine: Engine,
    app: Celery,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int = 5000,
) -> SweepReport:
    """Publish again what the broker no longer holds; return what was re-queued."""
    now = now or utcnow()
    unqueued = dispatch(engine, app, settings, now=now, limit=limit)
    with session_scope(engine) as session:
        expired = expired_leases(session, now=now, limit=limit)
        due = due_pending_count(session, now=now)
    depth = queue_depth(app)
    # Pending rows outnumbering the queued messages were lost by the broker (e.g. a Redis
    # restarted empty). The oldest are the likeliest lost; only long-waiting ones qualify,
    # so a merely busy queue is never flooded with copies.
    missing = max(0, due - depth)
    lost: list[int] = []
    if missing:
        with session_scope(engine) as session:
            cutoff = now - timedelta(seconds=settings.stuck_after_seconds)
            lost = oldest_due(session, queued_before=cutoff, limit=min(missing, limit))
    with session_scope(engine) as session:
        lifecycle.mark_queued(session, pks=lost, at=now)  # before the publish, as in dispatch
    publish_rows(engine, app, settings, [*expired, *lost])
    report = SweepReport(len(expired), unqueued, len(lost), depth)
    if report.total:
        log.info(
            "sweeper re-queued %d rows (expired leases %d, unqueued %d, lost by broker %d; "
            "queue depth %d)",
            report.total,
            report.expired_leases,
            report.unqueued,
            report.lost,
            depth,
        )
    return report


def retry_failed(
    engine: Engine,
    app: Celery,
    settings: Settings,
    *,
    tenant_id: int | None,
    media_ids: list[str] | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Re-drive failed rows from scratch; return how many were queued."""
    with session_scope(engine) as session:
        pks = lifecycle.requeue_failed(
            session, tenant_id=tenant_id, media_ids=media_ids, now=utcnow()
        )
    for start in range(0, len(pks), 500):
        chunk = pks[start : start + 500]
        publish_rows(engine, app, settings, chunk)
        if progress is not None:
            progress(len(chunk))
    return len(pks)
