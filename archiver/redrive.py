"""Re-drive work that is not moving: stuck rows (sweeper) and failed rows (operator retry)."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import Celery
from sqlalchemy import Engine

from archiver import media
from archiver.db import session_scope
from archiver.queue import publish_archive
from archiver.settings import Settings
from archiver.tables import utcnow

log = logging.getLogger(__name__)


def requeue_stuck(engine: Engine, app: Celery, settings: Settings, *, limit: int = 1000) -> int:
    """Publish again every row pending too long or holding an expired lease (e.g. Redis lost it)."""
    with session_scope(engine) as session:
        pks = media.stuck_rows(
            session,
            now=utcnow(),
            older_than=timedelta(seconds=settings.retry_max_seconds + settings.lease_seconds),
            limit=limit,
        )
    for pk in pks:
        publish_archive(app, pk=pk)
    if pks:
        log.info("re-queued %d stuck media rows", len(pks))
    return len(pks)
