"""The worker's entry point: ``celery -A worker.celery_app worker``."""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from archiver.broker import make_celery
from archiver.logs import configure_logging
from archiver.queue import SWEEP_TASK
from archiver.settings import load_settings
from worker import metrics
from worker.tasks import register

settings = load_settings()
configure_logging(settings.log_level, settings.log_format)
app = make_celery(settings)
app.conf.beat_schedule = {
    "sweep-stuck-media": {"task": SWEEP_TASK, "schedule": settings.sweep_interval_seconds},
}
register(app, settings)


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    # In the worker's main process, before the pool forks (beat never sends this signal).
    metrics.start(settings, app)


logging.getLogger(__name__).debug("worker app ready")
