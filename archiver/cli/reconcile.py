"""`titan-archiver reconcile`: check archived rows against their buckets; re-queue what is missing
or differs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import click
from celery import Celery
from sqlalchemy import Engine

from archiver.cli.context import current_settings, friendly, scope_count
from archiver.errors import AppError
from archiver.infra.broker import make_celery, publish_archive
from archiver.infra.buckets import head, tenant_s3_client
from archiver.infra.db import make_engine, session_scope
from archiver.media import lifecycle
from archiver.media import query as queries
from archiver.queue import queue_for
from archiver.secrets_box import SecretBox
from archiver.settings import Settings
from archiver.tables import Media, ReconcileProgress, Status, Tenant, utcnow
from archiver.tenants.tenants import list_tenants, secrets_of

PAGE = 500
EXIT_DIFFERENCES = 3
DEFAULT_CONCURRENCY = 16


@dataclass
class Difference:
    tenant: str
    media_id: str
    key: str
    problem: str


@dataclass
class ReconcileReport:
    checked: int = 0
    ok: int = 0
    requeued: int = 0
    differences: list[Difference] = field(default_factory=list)
    tenants_resumed: int = 0  # went on from an interrupted run's last page
    tenants_skipped: int = 0  # an interrupted run had finished them


def check_row(
    *, size: int | None, sha256: str | None, found: Any, etag: str | None = None
) -> str | None:
    """What is wrong with an object compared to its row, or None (pure).

    An object sent in one PUT carries its SHA-256 as metadata; a multipart object does not,
    and its ETag must still be the one the bucket gave it when it was archived."""
    if found is None:
        return "object missing"
    if size is not None and found.size != size:
        return f"size {found.size} in bucket, {size} on row"
    if found.sha256 is not None:
        if sha256 is not None and found.sha256 != sha256:
            return "sha256 metadata differs from the row"
        return None
    if etag is not None:
        if (found.etag or "").strip('"').lower() != etag.strip('"').lower():
            return "etag differs from the row: the object was replaced"
        return None
    return "object has no sha256 metadata"


def check_buckets(
    engine: Engine,
    app: Celery,
    settings: Settings,
    *,
    tenant_name: str | None,
    requeue: bool,
    concurrency: int = DEFAULT_CONCURRENCY,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReconcileReport:
    """Check each tenant's archived rows against its bucket, ``concurrency`` HEADs at a time.

    After every page the tenant's progress is saved; ``resume`` goes on from there (a fresh
    run forgets it), and skips the tenants an interrupted run had finished."""
    box = settings.secret_box()
    report = ReconcileReport()
    with session_scope(engine) as session:
        tenants = [t for t in list_tenants(session) if tenant_name in (None, t.name)]
        if not resume:
            for tenant in tenants:
                if (old := session.get(ReconcileProgress, tenant.id)) is not None:
                    session.delete(old)
    run = _Run(engine, app, settings, requeue=requeue, report=report, progress=progress)
    with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="reconcile") as pool:
        for tenant in tenants:
            run.tenant(tenant, box=box, pool=pool, connections=max(1, concurrency))
    return report


@dataclass
class _Run:
    engine: Engine
    app: Celery
    settings: Settings
    requeue: bool
    report: ReconcileReport
    progress: Callable[[int], None] | None

    def tenant(
        self, tenant: Tenant, *, box: SecretBox, pool: ThreadPoolExecutor, connections: int
    ) -> None:
        tenant_id = tenant.saved_id
        with session_scope(self.engine) as session:
            saved = session.get(ReconcileProgress, tenant_id)
            state = (
                ReconcileProgress(tenant_id=tenant_id, updated_at=utcnow())
                if saved is None
                else ReconcileProgress.model_validate(saved.model_dump())
            )
        if state.finished:
            self.report.tenants_skipped += 1
            return
        if state.after_pk:
            self.report.tenants_resumed += 1
            if self.progress is not None:
                self.progress(state.checked)
        secrets = secrets_of(tenant, box=box)
        s3 = tenant_s3_client(
            tenant,
            secret_access_key=secrets.s3_secret_access_key,
            settings=self.settings,
            connections=connections,
        )
        while True:
            with session_scope(self.engine) as session:
                rows = queries.archived_in_buckets(
                    session, tenant_id=tenant_id, after_pk=state.after_pk, limit=PAGE
                )
            if not rows:
                break
            found = pool.map(
                lambda r: head(s3, bucket=r.bucket or "", key=r.object_key or ""), rows
            )
            for row, state_in_bucket in zip(rows, found, strict=True):
                problem = check_row(
                    size=row.size, sha256=row.sha256, etag=row.etag, found=state_in_bucket
                )
                self.report.checked += 1
                if problem is None:
                    self.report.ok += 1
                    continue
                state.differences += 1
                self.report.differences.append(
                    Difference(tenant.name, row.media_id, row.object_key or "", problem)
                )
                if self.requeue:
                    self._requeue(row, problem)
            state.after_pk, state.checked = rows[-1].saved_pk, state.checked + len(rows)
            self._save(state)
            if self.progress is not None:
                self.progress(len(rows))
        state.finished = True
        self._save(state)

    def _requeue(self, row: Media, problem: str) -> None:
        with session_scope(self.engine) as session:
            reopened = lifecycle.reopen(
                session, pk=row.saved_pk, reason=f"reconcile: {problem}", now=utcnow()
            )
        if reopened:
            queue = queue_for(
                row.file_length, row.message_type, large_bytes=self.settings.large_media_bytes
            )
            publish_archive(self.app, pk=row.saved_pk, queue=queue)
            self.report.requeued += 1

    def _save(self, state: ReconcileProgress) -> None:
        state.updated_at = utcnow()
        with session_scope(self.engine) as session:
            session.merge(ReconcileProgress.model_validate(state.model_dump()))


@click.command()
@click.option("--tenant", default=None, help="Only this tenant's rows.")
@click.option("--requeue/--no-requeue", default=True, help="Re-queue rows whose object differs.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 128),
    default=DEFAULT_CONCURRENCY,
    show_default=True,
    help="HEAD requests in flight at once.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Go on from where an interrupted run stopped (its progress is saved after each page).",
)
@friendly
def reconcile(tenant: str | None, requeue: bool, concurrency: int, resume: bool) -> None:
    """Check every archived row against its bucket: present, size, SHA-256 metadata (or, for
    a multipart object, the ETag it was given).

    One JSON line per difference, then a summary line. Exits 0 when every object matched,
    3 when differences were found (re-queued unless --no-requeue). With --resume the lines
    cover this run only.
    """

    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        _, total = scope_count(engine, tenant, Status.ARCHIVED.value)
        with click.progressbar(length=total, label="checking", file=sys.stderr) as bar:
            try:
                report = check_buckets(
                    engine,
                    make_celery(settings),
                    settings,
                    tenant_name=tenant,
                    requeue=requeue,
                    concurrency=concurrency,
                    resume=resume,
                    progress=bar.update,
                )
            except AppError as exc:
                raise click.ClickException(
                    f"{exc}; what was checked is saved: run again with --resume to go on"
                ) from exc
    finally:
        engine.dispose()
    if report.tenants_resumed or report.tenants_skipped:
        click.echo(
            f"resumed {report.tenants_resumed} tenant(s) where the last run stopped; "
            f"{report.tenants_skipped} it had finished were skipped",
            err=True,
        )
    for diff in report.differences:
        click.echo(
            json.dumps(
                {
                    "tenant": diff.tenant,
                    "id": diff.media_id,
                    "key": diff.key,
                    "problem": diff.problem,
                }
            )
        )
    click.echo(
        json.dumps(
            {
                "checked": report.checked,
                "ok": report.ok,
                "differences": len(report.differences),
                "requeued": report.requeued,
            }
        ),
    )
    if report.differences:
        sys.exit(EXIT_DIFFERENCES)
