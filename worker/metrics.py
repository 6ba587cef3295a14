"""Prometheus metrics of a worker, served on ARCHIVER_WORKER_METRICS_PORT by its main process.

Celery's prefork pool runs tasks in child processes, so the counters use prometheus_client's
multiprocess mode: each child writes its values to files in a directory private to this
worker, and the main process sums them at scrape time (counters of children that were
replaced stay counted). The backlog gauges (rows by status, oldest unarchived age, queue
depths) come from the database and broker at scrape time.

prometheus_client picks its storage when it is first imported, so this module imports it
only in ``start``, after pointing PROMETHEUS_MULTIPROC_DIR at the private directory, and
before the pool forks.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import Celery

from archiver.settings import Settings

log = logging.getLogger(__name__)
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
TRANSFER_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)


@dataclass
class _Meters:
    tasks: Any
    archived_bytes: Any
    transfer_seconds: Any
    retries: Any
    deleted_rows: Any
    deleted_objects: Any
    notifications: Any
    renders: Any
    rendition_bytes: Any
    fixity_checked: Any
    fixity_bytes: Any
    fixity_failures: Any


_meters: _Meters | None = None


def record(
    outcome: str, *, queue: str, size: int | None = None, seconds: float | None = None
) -> None:
    """Count one task's outcome (no-op when this worker serves no metrics)."""
    if _meters is None:
        return
    _meters.tasks.labels(outcome=outcome, queue=queue).inc()
    if outcome == "retrying":
        _meters.retries.labels(queue=queue).inc()
    if outcome == "archived":
        if size:
            _meters.archived_bytes.labels(queue=queue).inc(size)
        if seconds is not None:
            _meters.transfer_seconds.labels(queue=queue).observe(seconds)


def record_deletions(tenant: str, reason: str, done: Any) -> None:
    """Count what a retention pass deleted (``done``: an archiver.governance.erasure.Erased)."""
    if _meters is None:
        return
    if done.rows:
        _meters.deleted_rows.labels(tenant=tenant, reason=reason).inc(done.rows)
    if done.objects:
        _meters.deleted_objects.labels(tenant=tenant, reason=reason).inc(done.objects)


def record_fixity(tenant: str, found: Any) -> None:
    """Count what a fixity pass read (``found``: an archiver.governance.fixity.Audit)."""
    if _meters is None:
        return
    _meters.fixity_checked.labels(tenant=tenant).inc(found.checked)
    _meters.fixity_bytes.labels(tenant=tenant).inc(found.bytes)
    if found.damaged:
        _meters.fixity_failures.labels(tenant=tenant).inc(len(found.damaged))


def record_notification(outcome: str) -> None:
    """Count one notification attempt: delivered, retrying or failed."""
    if _meters is not None:
        _meters.notifications.labels(outcome=outcome).inc()


def record_render(outcome: str, made: list[tuple[str, int]]) -> None:
    """Count one render task: each rendition it made (kind, bytes), or, making none, its
    outcome with an empty kind (done: nothing to make, failed, retrying)."""
    if _meters is None:
        return
    if not made:
        _meters.renders.labels(outcome=outcome, kind="").inc()
    for kind, size in made:
        _meters.renders.labels(outcome=outcome, kind=kind).inc()
        _meters.rendition_bytes.labels(kind=kind).inc(size)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def start(settings: Settings, celery: Celery) -> bool:
    """Serve /metrics from this (main) worker process; False when off or the port is taken."""
    global _meters
    if settings.worker_metrics_port == 0:
        return False
    if "prometheus_client" in sys.modules and _MULTIPROC_ENV not in os.environ:
        log.warning("worker metrics: prometheus_client imported too early; main process only")
    directory = tempfile.mkdtemp(prefix="archiver-worker-metrics-")
    os.environ[_MULTIPROC_ENV] = directory
    owner = os.getpid()

    def remove_directory() -> None:
        if os.getpid() == owner:  # not in a forked pool child
            shutil.rmtree(directory, ignore_errors=True)

    atexit.register(remove_directory)

    from prometheus_client import (
        CollectorRegistry,
        Counter,
        Histogram,
        ProcessCollector,
        generate_latest,
    )
    from prometheus_client.multiprocess import MultiProcessCollector

    from archiver.infra.db import make_engine
    from archiver.reporting.backlog_metrics import (
        CONTENT_TYPE,
        BacklogCollector,
        BuildInfo,
        authorized,
    )

    _meters = _Meters(
        tasks=Counter(
            "archiver_tasks_total", "Archive tasks by outcome", ["outcome", "queue"], registry=None
        ),
        archived_bytes=Counter(
            "archiver_archived_bytes_total", "Bytes archived", ["queue"], registry=None
        ),
        transfer_seconds=Histogram(
            "archiver_transfer_seconds",
            "Duration of successful transfers",
            ["queue"],
            buckets=TRANSFER_BUCKETS,
            registry=None,
        ),
        retries=Counter(
            "archiver_retries_total",
            "Transfers scheduled for another attempt",
            ["queue"],
            registry=None,
        ),
        deleted_rows=Counter(
            "archiver_retention_deleted_rows_total",
            "Media rows deleted by the retention pass (reason: retention, revoked)",
            ["tenant", "reason"],
            registry=None,
        ),
        deleted_objects=Counter(
            "archiver_retention_deleted_objects_total",
            "Object versions deleted by the retention pass",
            ["tenant", "reason"],
            registry=None,
        ),
        notifications=Counter(
            "archiver_notification_attempts_total",
            "Notification deliveries by outcome (delivered, retrying, failed)",
            ["outcome"],
            registry=None,
        ),
        renders=Counter(
            "archiver_renditions_total",
            "Renditions made (outcome done, kind: thumbnail, audio), and render tasks without "
            "one (kind empty; outcome done: nothing to make, failed: the file is unreadable, "
            "retrying: the bucket failed)",
            ["outcome", "kind"],
            registry=None,
        ),
        rendition_bytes=Counter(
            "archiver_rendition_bytes_total", "Bytes of renditions written", ["kind"], registry=None
        ),
        fixity_checked=Counter(
            "archiver_fixity_checked_total",
            "Archived objects a fixity audit read back",
            ["tenant"],
            registry=None,
        ),
        fixity_bytes=Counter(
            "archiver_fixity_bytes_total",
            "Bytes fixity audits read back",
            ["tenant"],
            registry=None,
        ),
        fixity_failures=Counter(
            "archiver_fixity_failures_total",
            "Archived objects an audit found missing or changed (the row is now damaged)",
            ["tenant"],
            registry=None,
        ),
    )
    engine = make_engine(settings.database_url)
    backlog = BacklogCollector(engine, celery)
    build_info = BuildInfo("worker")
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        if not authorized(environ.get("HTTP_AUTHORIZATION"), token):
            log.warning("worker metrics: scrape refused, missing or wrong token")
            start_response(
                "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")]
            )
            return [b"metrics need the bearer token\n"]
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        registry.register(backlog)
        registry.register(build_info)
        ProcessCollector(registry=registry)  # this main process: memory, CPU, open files
        start_response("200 OK", [("Content-Type", CONTENT_TYPE)])
        return [generate_latest(registry)]

    try:
        server = make_server(
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            app,
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
    except OSError as exc:
        log.warning(
            "worker metrics: port %d unavailable (%s); set ARCHIVER_WORKER_METRICS_PORT "
            "to a free port per worker, or 0",
            settings.worker_metrics_port,
            exc,
        )
        return False
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    log.info("worker metrics on %s:%d", settings.worker_metrics_host, settings.worker_metrics_port)
    return True
