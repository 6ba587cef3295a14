"""Celery tasks: thin wrappers that take row ids, call the archive logic, and schedule retries."""

from __future__ import annotations

import logging
from contextlib import suppress
from typing import Any

from celery import Celery, Task

from archiver.errors import Unavailable
from archiver.governance import bundle, checkpoints, ledger
from archiver.governance.fixity import fixity_pass
from archiver.governance.retention import retention_pass
from archiver.infra import tracing
from archiver.infra.broker import publish_archive
from archiver.media.render_requests import publish_render
from archiver.queue import (
    ARCHIVE_BATCH_TASK,
    ARCHIVE_QUEUE,
    ARCHIVE_TASK,
    DISPATCH_TASK,
    EXPORT_TASK,
    FIXITY_TASK,
    PROBE_TASK,
    QUEUES,
    RENDER_TASK,
    RETENTION_TASK,
    SEAL_TASK,
    SWEEP_TASK,
)
from archiver.reporting import totals
from archiver.scheduling.dispatch import dispatch
from archiver.scheduling.sweep import reask_renders, sweep
from archiver.settings import Settings
from archiver.tables import utcnow
from archiver.tenants.preflight import probe_paused
from worker import metrics
from worker.archive import Result, archive_rows
from worker.renderer import render_row
from worker.resources import resources

log = logging.getLogger(__name__)


def _traces(task: Task[Any, Any], pks: list[int]) -> dict[int, str] | None:
    """Each row's W3C traceparent from the message headers (receiver/publisher.py)."""
    if not tracing.enabled():
        return None
    single = task.request.get("traceparent")
    several = task.request.get("traceparents")
    traces: dict[int, str] = {}
    if isinstance(several, dict):
        traces = {
            int(pk): parent
            for pk, parent in several.items()
            if isinstance(pk, str) and pk.isdigit() and isinstance(parent, str)
        }
    elif isinstance(single, str) and len(pks) == 1:
        traces = {pks[0]: single}
    return traces


def register(app: Celery, settings: Settings) -> None:
    """Attach the tasks to ``app``; the settings are those the worker process started with."""

    def run(task: Task[Any, Any], pks: list[int]) -> list[tuple[int, Result]]:
        # Another attempt goes back to the queue this one came from (small or large).
        queue = (task.request.delivery_info or {}).get("routing_key")
        queue = queue if queue in QUEUES else ARCHIVE_QUEUE
        try:
            results = archive_rows(resources(settings, app), pks, traces=_traces(task, pks))
        except Unavailable as exc:
            # The database is down: try again later; the rows' leases keep others off them.
            metrics.record("unavailable", queue=queue)
            raise task.retry(countdown=settings.retry_base_seconds, max_retries=None) from exc
        for pk, result in results:
            metrics.record(result.outcome, queue=queue, size=result.size, seconds=result.seconds)
            if result.outcome == "busy" and result.retry_in is not None:
                # Another worker holds the lease: look again when it ends (at most a lease
                # away). A retrying row waits on the row instead: the dispatcher publishes it
                # at its retry_at, so no long countdown sits in the broker.
                publish_archive(app, pk=pk, queue=queue, countdown=result.retry_in)
        if asks := [pk for pk, result in results if result.render]:
            # One message for the task's rows, best effort: a lost ask is asked again by the
            # sweeper, and never fails the archive.
            with suppress(Unavailable):
                publish_render(app, pks=asks)
        return results

    @app.task(name=ARCHIVE_TASK, bind=True, ignore_result=True)
    def archive_media(self: Task[Any, Any], pk: int) -> str:
        return run(self, [pk])[0][1].outcome

    @app.task(name=ARCHIVE_BATCH_TASK, bind=True, ignore_result=True)
    def archive_batch(self: Task[Any, Any], pks: list[int]) -> list[str]:
        # Small files published together under load: one claim and one task for all of them.
        if not isinstance(pks, list) or not all(isinstance(pk, int) for pk in pks):
            log.error("archive_batch: malformed arguments %r; dropped", pks)
            return []
        return [result.outcome for _, result in run(self, pks)]

    @app.task(name=RENDER_TASK, bind=True, ignore_result=True)
    def render_media(self: Task[Any, Any], pks: Any) -> list[str]:
        if not isinstance(pks, list) or not all(isinstance(pk, int) for pk in pks):
            log.error("render_media: malformed arguments %r; dropped", pks)
            return []
        outcomes = []
        for done, pk in enumerate(pks):
            try:
                rendered = render_row(resources(settings, app), pk)
            except Unavailable as exc:
                # The database went away: this row and the rest of the batch, later.
                metrics.record_render("retrying", [])
                raise self.retry(
                    args=(pks[done:],), countdown=settings.retry_base_seconds, max_retries=None
                ) from exc
            metrics.record_render(rendered.outcome, rendered.made)
            outcomes.append(rendered.outcome)
        return outcomes

    @app.task(name=DISPATCH_TASK, ignore_result=True)
    def dispatch_due() -> int:
        engine = resources(settings, app).engine
        # Keep the maintained totals' pending changes few, so counting stays a few rows.
        totals.fold(engine)
        return dispatch(engine, app, settings, now=utcnow())

    @app.task(name=PROBE_TASK, ignore_result=True)
    def probe_paused_tenants() -> list[str]:
        return probe_paused(resources(settings, app).engine, settings)

    @app.task(name=RETENTION_TASK, ignore_result=True)
    def delete_expired() -> int:
        res = resources(settings, app)
        passes = retention_pass(
            res.engine, s3_for=res.s3.get, now=utcnow(), max_rows=settings.retention_max_rows
        )
        for done in passes:
            metrics.record_deletions(done.tenant, "retention", done.expired)
            metrics.record_deletions(done.tenant, "revoked", done.revoked)
        return sum(p.expired.rows + p.revoked.rows for p in passes)

    @app.task(name=EXPORT_TASK, ignore_result=True, acks_late=True)
    def export_bundle(job_id: Any) -> str:
        if not isinstance(job_id, int):
            log.error("export_bundle: malformed argument %r; dropped", job_id)
            return "dropped"
        res = resources(settings, app)
        return bundle.run_job(res.engine, job_id, s3_for=res.s3.get)

    @app.task(name=SEAL_TASK, ignore_result=True)
    def seal_ledger() -> int:
        res = resources(settings, app)
        grown = ledger.seal(res.engine)
        if grown:
            checkpoints.publish(res.engine, settings.secret_box(), res.s3.get, grown)
        return len(grown)

    @app.task(name=FIXITY_TASK, ignore_result=True)
    def audit_fixity() -> int:
        if not settings.fixity_bytes_per_day:
            return 0
        res = resources(settings, app)
        passes = fixity_pass(
            res.engine, s3_for=res.s3.get, now=utcnow(), budget=settings.fixity_bytes_per_day
        )
        for done in passes:
            metrics.record_fixity(done.tenant, done.found)
        return sum(p.found.checked for p in passes)

    @app.task(name=SWEEP_TASK, ignore_result=True)
    def sweep_stuck() -> int:
        engine = resources(settings, app).engine
        report = sweep(engine, app, settings)
        with suppress(Unavailable):  # renders wait for the next sweep
            reask_renders(engine, app, settings, now=utcnow())
        return report.total
