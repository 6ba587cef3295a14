"""The worker's entry point: ``celery -A worker.celery_app worker``."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery import signals

from archiver.infra import tracing
from archiver.infra.broker import make_celery
from archiver.infra.logs import configure_logging, request_id
from archiver.queue import (
    DISPATCH_TASK,
    FIXITY_TASK,
    PROBE_TASK,
    RETENTION_TASK,
    SEAL_TASK,
    SWEEP_TASK,
)
from archiver.settings import settings_for_process
from worker import buffers, metrics
from worker.notifier import Notifier
from worker.tasks import register

# "beat" or "worker" (the render pool is a worker too), for the one line a bad setting prints.
settings = settings_for_process("beat" if "beat" in sys.argv[1:] else "worker")
configure_logging(settings.log_level, settings.log_format)
app = make_celery(settings)
app.conf.beat_schedule = {
    "sweep-stuck-media": {
        "task": SWEEP_TASK,
        "schedule": settings.sweep_interval_seconds,
        # A sweep still waiting behind a backlog when the next is sent is worth nothing.
        "options": {"expires": settings.sweep_interval_seconds},
    },
    "probe-paused-tenants": {
        "task": PROBE_TASK,
        "schedule": settings.pause_probe_seconds,
        "options": {"expires": settings.pause_probe_seconds},
    },
    "dispatch-due-retries": {
        "task": DISPATCH_TASK,
        "schedule": settings.dispatch_interval_seconds,
        # Behind a long backlog, a late dispatch still publishes what is due by then.
        "options": {"expires": max(300.0, settings.dispatch_interval_seconds)},
    },
    "seal-ledger": {
        "task": SEAL_TASK,
        "schedule": settings.seal_interval_seconds,
        "options": {"expires": settings.seal_interval_seconds},
    },
    "audit-fixity": {
        "task": FIXITY_TASK,
        "schedule": settings.fixity_interval_seconds,
        "options": {"expires": settings.fixity_interval_seconds},
    },
    "delete-expired-media": {
        "task": RETENTION_TASK,
        "schedule": settings.retention_interval_seconds,
        "options": {"expires": settings.retention_interval_seconds},
    },
}
register(app, settings)


@signals.worker_init.connect
def _serve_metrics(**_: Any) -> None:
    # In the worker's main process, before the pool forks (beat never sends this signal).
    metrics.start(settings, app)
    # The pool's shared upload-buffer budget: created here so every pool child inherits it.
    buffers.install(settings.worker_buffer_bytes)
    # Tracing, if OTEL_* asks for it: set up before the fork; each pool child's exporter
    # thread is restarted by the SDK, and flushed when the child exits.
    tracing.setup("titan-archiver-worker")


@signals.worker_process_shutdown.connect
def _flush_traces(**_: Any) -> None:
    tracing.flush()


_notifier: Notifier | None = None


@signals.task_prerun.connect
def _tag_logs(task_id: str | None = None, **_: Any) -> None:
    # Every log line of a task carries its id (request_id), like a receiver's request's.
    request_id.set(task_id)


@signals.task_postrun.connect
def _untag_logs(**_: Any) -> None:
    request_id.set(None)


@signals.worker_ready.connect
def _start_notifier(**_: Any) -> None:
    # In the worker's main process once the pool is up: delivers tenants' notifications
    # from the outbox, beside (never inside) the archive tasks.
    global _notifier
    _notifier = Notifier(settings)
    _notifier.start()


@signals.worker_shutdown.connect
def _stop_notifier(**_: Any) -> None:
    if _notifier is not None:
        _notifier.stop()


logging.getLogger(__name__).debug("worker app ready")
