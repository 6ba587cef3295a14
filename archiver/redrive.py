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
from kombu.exceptions import ChannelError
from sqlalchemy import Engine

from archiver import media
from archiver.db import session_scope
from archiver.errors import Unavailable
from archiver.queue import QUEUES, publish_archive, queue_for
from archiver.settings import Settings
from archiver.tables import utcnow

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


def queue_depths(app: Celery) -> dict[str, int]:
    """Messages waiting in each archive queue (Redis or RabbitMQ); 0 for one not yet declared."""
    depths: dict[str, int] = {}
    try:
        with app.connection_for_read() as conn:
            for queue in QUEUES:
                # A passive declare of a missing queue closes the AMQP channel: one per queue.
                try:
                    with conn.channel() as channel:
                        found = channel.queue_declare(queue=queue, passive=True)
                        depths[queue] = int(found.message_count)
                except ChannelError:
                    depths[queue] = 0
    except OSError as exc:
        raise Unavailable("broker unavailable") from exc
    return depths


def queue_depth(app: Celery) -> int:
    """Messages waiting in all archive queues together."""
    return sum(queue_depths(app).values())


def publish_rows(engine: Engine, app: Celery, settings: Settings, pks: list[int]) -> None:
    """Publish rows by pk, each to the queue its size calls for."""
    if not pks:
        return
    with session_scope(engine) as session:
        routes = media.routing(session, pks=pks)
    for pk in pks:
        file_length, message_type = routes.get(pk, (None, "document"))
        queue = queue_for(file_length, message_type, large_bytes=settings.large_media_bytes)
        publish_archive(app, pk=pk, queue=queue)


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
    with session_scope(engine) as session:
        expired = media.expired_leases(session, now=now, limit=limit)
        unqueued = media.unqueued(session, limit=limit)
        due = media.due_pending_count(session, now=now)
    depth = queue_depth(app)
    # Pending rows outnumbering the queued messages were lost by the broker (e.g. a Redis
    # restarted empty). The oldest are the likeliest lost; only long-waiting ones qualify,
    # so a merely busy queue is never flooded with copies.
    missing = max(0, due - depth)
    lost: list[int] = []
    if missing:
        with session_scope(engine) as session:
            cutoff = now - timedelta(seconds=settings.stuck_after_seconds)
            lost = media.oldest_due(session, queued_before=cutoff, limit=min(missing, limit))
    publish_rows(engine, app, settings, [*expired, *unqueued, *lost])
    with session_scope(engine) as session:
        media.mark_queued(session, pks=[*unqueued, *lost], at=now)
    report = SweepReport(len(expired), len(unqueued), len(lost), depth)
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
        pks = media.requeue_failed(session, tenant_id=tenant_id, media_ids=media_ids, now=utcnow())
    for start in range(0, len(pks), 500):
        chunk = pks[start : start + 500]
        publish_rows(engine, app, settings, chunk)
        if progress is not None:
            progress(len(chunk))
    return len(pks)
