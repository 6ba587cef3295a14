"""Celery tasks: thin wrappers that take row ids, call the archive logic, and schedule retries."""

from __future__ import annotations

import logging

from celery import Celery, Task

from archiver.errors import Unavailable
from archiver.queue import ARCHIVE_QUEUE, ARCHIVE_TASK, QUEUES, SWEEP_TASK, publish_archive
from archiver.redrive import sweep
from archiver.settings import Settings
from worker import metrics
from worker.archive import archive_row
from worker.resources import resources

log = logging.getLogger(__name__)


def register(app: Celery, settings: Settings) -> None:
    """Attach the tasks to ``app``; the settings are those the worker process started with."""

    @app.task(name=ARCHIVE_TASK, bind=True, ignore_result=True)
    def archive_media(self: Task, pk: int) -> str:
        # Another attempt goes back to the queue this one came from (small or large).
        queue = (self.request.delivery_info or {}).get("routing_key")
        queue = queue if queue in QUEUES else ARCHIVE_QUEUE
        try:
            result = archive_row(resources(settings, app), pk)
        except Unavailable as exc:
            # The database is down: try again later; the row's lease keeps others off it.
            metrics.record("unavailable", queue=queue)
            raise self.retry(countdown=settings.retry_base_seconds, max_retries=None) from exc
        metrics.record(result.outcome, queue=queue, size=result.size, seconds=result.seconds)
        if result.retry_in is not None:
            # If this publish fails the row stays pending and the sweeper queues it again.
            publish_archive(app, pk=pk, queue=queue, countdown=result.retry_in)
        return result.outcome

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep_stuck() -> int:
        return sweep(resources(settings, app).engine, app, settings).total
