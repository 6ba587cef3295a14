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
from sqlalchemy import Engine, and_, func, or_, update
from sqlmodel import Session, col, select

from archiver import fairness, lifecycle, render_requests
from archiver.broker import (
    SCAN_LIMIT,
    publish_archive,
    queue_depth,
    queue_depths,
    rows_in_broker,
)
from archiver.db import session_scope
from archiver.errors import Unavailable
from archiver.pauses import in_paused_session, paused_ids
from archiver.queue import RENDER_QUEUE, queue_for
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


# A new row's receiver publishes it right after its commit and then marks it; the
# dispatcher leaves a row that arrived this recently to it.
PUBLISH_GRACE = timedelta(seconds=30)
# A row marked published this recently may still be on its way into the broker (the
# dispatcher and operator re-queues mark before they publish); ARCHIVER_STUCK_AFTER_SECONDS
# shortens it.
LOST_GRACE = timedelta(seconds=15)


def unpublished(
    session: Session, *, now: datetime, limit: int, tenant_id: int | None = None
) -> list[int]:
    """Pending rows not known to be in the broker that are due: their publish failed or
    their receiver died before it (after ``PUBLISH_GRACE``), their retry time has come, or
    their tenant was resumed or got a free slot (archiver/fairness.py)."""
    query = (
        select(Media.pk)
        .where(
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.queued_at).is_(None),
            or_(
                col(Media.retry_at) <= now,
                and_(
                    col(Media.retry_at).is_(None),
                    col(Media.received_at) <= now - PUBLISH_GRACE,
                ),
            ),
            # A paused tenant's rows wait for it to be resumed; a rate-limited one's for
            # Titan's window to pass.
            col(Media.tenant_id).not_in(paused_ids()),
            col(Media.tenant_id).not_in(fairness.throttled_ids(now)),
            ~in_paused_session(),  # a logged-out or banned session's, for it to reconnect
        )
        .order_by(col(Media.pk))
        .limit(limit)
    )
    if tenant_id is not None:
        query = query.where(col(Media.tenant_id) == tenant_id)
    return [pk for pk in session.exec(query) if pk is not None]


def within_caps(session: Session, *, pks: list[int], cap: int, now: datetime) -> list[int]:
    """The rows among ``pks`` (oldest first) that fit their tenant's free slots."""
    free = fairness.free_slots(session, cap=cap, now=now)
    kept: list[int] = []
    for start in range(0, len(pks), 500):
        query = select(Media.pk, Media.tenant_id).where(col(Media.pk).in_(pks[start : start + 500]))
        for pk, tenant_id in sorted(session.execute(query)):
            left = free.setdefault(tenant_id, cap)
            if left > 0:
                free[tenant_id] = left - 1
                kept.append(pk)
    return kept


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


def published_before(session: Session, *, before: datetime, limit: int) -> list[int]:
    """Pending rows marked published before ``before``: each should be in the broker."""
    query = (
        select(Media.pk)
        .where(
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.queued_at) < before,
            col(Media.tenant_id).not_in(paused_ids()),
        )
        .order_by(col(Media.queued_at))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


def retake(session: Session, *, pks: list[int], before: datetime, at: datetime) -> list[int]:
    """Mark lost rows published again, unless they moved on meanwhile; return those taken."""
    if not pks:
        return []
    taken = session.execute(
        update(Media)
        .where(
            col(Media.pk).in_(pks),
            col(Media.status).in_([s.value for s in PENDING]),
            col(Media.queued_at) < before,
        )
        .values(queued_at=at)
        .returning(col(Media.pk))
    )
    return sorted(pk for (pk,) in taken)


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
    engine: Engine,
    app: Celery,
    settings: Settings,
    *,
    now: datetime,
    limit: int = 5000,
    tenant_id: int | None = None,
) -> int:
    """Publish the rows that are due and not in the broker (scheduled retries, failed
    publishes, rows waiting for a slot of their tenant) and mark them queued; return how
    many. Beat runs it every few seconds; a worker runs it for one tenant when it frees
    one of that tenant's slots."""
    with session_scope(engine) as session:
        due = unpublished(session, now=now, limit=limit, tenant_id=tenant_id)
        if settings.tenant_max_concurrency and due:
            due = within_caps(session, pks=due, cap=settings.tenant_max_concurrency, now=now)
        pks = lifecycle.take_for_publish(session, pks=due, at=now)
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
    depth = queue_depth(app)  # as found, before this sweep adds to it
    lost = find_lost(engine, app, settings, now=now, limit=limit)
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


def find_lost(
    engine: Engine, app: Celery, settings: Settings, *, now: datetime, limit: int
) -> list[int]:
    """Rows marked published that the broker no longer holds (a Redis restarted empty or
    flushed, a dispatcher killed between its mark and its publish), marked again for
    publishing.

    On Redis the sweeper reads which rows the broker's messages carry, waiting or delivered
    and unacknowledged, and compares row by row: exact, so it needs no long wait and never
    floods a queue that is merely busy. Elsewhere (RabbitMQ keeps its messages across a
    restart) it compares counts, messages against rows, and re-queues only rows waiting
    longer than ``ARCHIVER_STUCK_AFTER_SECONDS``.
    """
    before = now - min(LOST_GRACE, timedelta(seconds=settings.stuck_after_seconds))
    # The rows first, then the broker: a row published after this read is not a candidate,
    # and one consumed meanwhile has moved on (``retake`` re-checks).
    with session_scope(engine) as session:
        candidates = published_before(session, before=before, limit=SCAN_LIMIT)
    if not candidates:
        return []
    # A message taken by a worker that died before starting it is not held: a live worker
    # claims what it took within a lease (a countdown waits at most one).
    held = rows_in_broker(
        settings.broker_url, abandoned_after=settings.lease_seconds + settings.stuck_after_seconds
    )
    if held is not None:
        lost = [pk for pk in candidates if pk not in held][:limit]
    else:
        with session_scope(engine) as session:
            missing = max(0, due_pending_count(session, now=now) - queue_depth(app))
            cutoff = now - timedelta(seconds=settings.stuck_after_seconds)
            lost = oldest_due(session, queued_before=cutoff, limit=min(missing, limit))
    with session_scope(engine) as session:
        return retake(session, pks=lost, before=before, at=now)


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


def reask_renders(
    engine: Engine, app: Celery, settings: Settings, *, now: datetime, limit: int = 1000
) -> int:
    """Ask again for renders asked more than ``ARCHIVER_STUCK_AFTER_SECONDS`` ago and never
    made, once the render queue has drained (while it holds messages they may be among
    them); return how many. A render asked twice is made twice, harmlessly."""
    if queue_depths(app, (RENDER_QUEUE,))[RENDER_QUEUE]:
        return 0
    before = now - timedelta(seconds=settings.stuck_after_seconds)
    with session_scope(engine) as session:
        pks = render_requests.stale(session, before=before, limit=limit)
        render_requests.touch(session, pks=pks, now=now)
    render_requests.publish_render(app, pks=pks)
    if pks:
        log.info("sweeper asked again for %d renditions never made", len(pks))
    return len(pks)
