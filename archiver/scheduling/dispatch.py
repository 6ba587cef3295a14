"""Publish the rows that are due: scheduled retries, failed publishes, rows waiting for
a slot of their tenant, and operator retries of failed rows."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import Engine, and_, or_
from sqlmodel import Session, col, select

from archiver.errors import Unavailable
from archiver.infra.broker import (
    publish_archive,
)
from archiver.infra.db import session_scope
from archiver.media import lifecycle
from archiver.queue import queue_for
from archiver.scheduling import fairness
from archiver.scheduling.pauses import in_paused_session, paused_ids
from archiver.settings import Settings
from archiver.tables import PENDING, Media, utcnow

log = logging.getLogger(__name__)


# A new row whose receiver's publish failed (its mark taken back) is Titan's retry's to
# publish; the dispatcher leaves a row that arrived this recently to it.
PUBLISH_GRACE = timedelta(seconds=30)


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
            lifecycle.mark_unqueued(session, pks=pks, at=now)
        raise
    return len(pks)


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
