"""The queue contract between receiver and worker: the Celery app's config, task names, publishing.

The receiver publishes by task *name*, so it never imports worker code.
"""

from __future__ import annotations

from celery import Celery
from kombu.exceptions import KombuError, OperationalError

from archiver.errors import Unavailable
from archiver.settings import Settings

ARCHIVE_TASK = "worker.archive_media"
SWEEP_TASK = "worker.sweep_stuck"
ARCHIVE_QUEUE = "archive"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for at-least-once, one-row-at-a-time transfers."""
    app = Celery("titan_archiver", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        # A task is acknowledged only after it ran; a worker that dies hands it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # On SIGTERM (remapped to SIGQUIT, see the Procfile) running transfers get this long
        # to finish; what is still running then is handed back to the broker.
        worker_soft_shutdown_timeout=settings.shutdown_grace_seconds,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(settings.task_time_limit - 30, 30),
        task_default_queue=ARCHIVE_QUEUE,
        task_routes={SWEEP_TASK: {"queue": ARCHIVE_QUEUE}},
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Must exceed the longest transfer, or Redis hands a running task to a second worker.
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
        },
        broker_pool_limit=20,
        timezone="UTC",
        # Our JSON, redacting handler stays on the root logger in worker processes too.
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def publish_archive(app: Celery, *, pk: int, countdown: float | None = None) -> None:
    """Queue the archiving of media row ``pk``; Unavailable if the broker cannot take it."""
    try:
        app.send_task(
            ARCHIVE_TASK,
            args=[pk],
            countdown=countdown,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
        )
    except (KombuError, OperationalError, OSError) as exc:
        raise Unavailable("broker unavailable") from exc
