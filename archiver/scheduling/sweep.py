"""The sweeper: find work that is not moving (expired leases, rows the broker lost, renders
never made) and publish it again.

The database is the source of truth and the broker only a wake-up call, so anything the
broker lost (a Redis restarted empty, a publish that failed, a worker killed mid-transfer)
is found here and published again, without flooding a broker that is merely busy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from archiver.infra.broker import (
    SCAN_LIMIT,
    queue_depth,
    queue_depths,
    rows_in_broker,
)
from archiver.infra.db import session_scope
from archiver.media import render_requests
from archiver.queue import RENDER_QUEUE
from archiver.scheduling.dispatch import dispatch, publish_rows
from archiver.scheduling.pauses import paused_ids
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


def expired_leases(session: Session, *, now: datetime, limit: int) -> list[int]:
    """Rows whose worker stopped renewing its lease (it died, or lost its database)."""
    query = (
        select(Media.pk)
        .where(col(Media.status) == Status.ARCHIVING.value, col(Media.lease_until) < now)
        .order_by(col(Media.lease_until))
        .limit(limit)
    )
    return [pk for pk in session.exec(query) if pk is not None]


# A row marked published this recently may still be on its way into the broker (the
# receiver commits its rows marked, the dispatcher and operator re-queues mark before they
# publish); ARCHIVER_STUCK_AFTER_SECONDS shortens it.
LOST_GRACE = timedelta(seconds=15)


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
