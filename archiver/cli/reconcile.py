"""`titan-archiver reconcile`: check archived rows against their buckets; re-queue what is missing
or differs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
from celery import Celery
from sqlalchemy import Engine

from archiver import lifecycle
from archiver import query as queries
from archiver.broker import make_celery, publish_archive
from archiver.buckets import head, tenant_s3_client
from archiver.cli.context import current_settings, friendly, scope_count
from archiver.db import make_engine, session_scope
from archiver.queue import queue_for
from archiver.secrets_box import SecretBox
from archiver.settings import Settings
from archiver.tables import Status, Tenant, utcnow
from archiver.tenants import list_tenants, secrets_of

PAGE = 500
EXIT_DIFFERENCES = 3


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


def check_row(*, size: int | None, sha256: str | None, found: Any) -> str | None:
    """What is wrong with an object compared to its row, or None (pure)."""
    if found is None:
        return "object missing"
    if size is not None and found.size != size:
        return f"size {found.size} in bucket, {size} on row"
    if found.sha256 is not None and sha256 is not None and found.sha256 != sha256:
        return "sha256 metadata differs from the row"
    if found.sha256 is None:
        return "object has no sha256 metadata"
    return None


def check_buckets(
    engine: Engine,
    app: Celery,
    settings: Settings,
    *,
    tenant_name: str | None,
    requeue: bool,
    progress: Callable[[int], None] | None = None,
) -> ReconcileReport:
    box = settings.secret_box()
    report = ReconcileReport()
    with session_scope(engine) as session:
        tenants = [t for t in list_tenants(session) if tenant_name in (None, t.name)]
    for tenant in tenants:
        _reconcile_tenant(engine, app, settings, box, tenant, requeue, report, progress)
    return report


def _reconcile_tenant(
    engine: Engine,
    app: Celery,
    settings: Settings,
    box: SecretBox,
    tenant: Tenant,
    requeue: bool,
    report: ReconcileReport,
    progress: Callable[[int], None] | None,
) -> None:
    secrets = secrets_of(tenant, box=box)
    s3 = tenant_s3_client(tenant, secret_access_key=secrets.s3_secret_access_key, settings=settings)
    after = 0
    while True:
        with session_scope(engine) as session:
            rows = queries.archived_in_buckets(
                session, tenant_id=tenant.id, after_pk=after, limit=PAGE
            )
        if not rows:
            return
        for row in rows:
            after = row.pk or after
            assert row.bucket is not None and row.object_key is not None
            found = head(s3, bucket=row.bucket, key=row.object_key)
            problem = check_row(size=row.size, sha256=row.sha256, found=found)
            report.checked += 1
            if progress is not None:
                progress(1)
            if problem is None:
                report.ok += 1
                continue
            report.differences.append(
                Difference(tenant.name, row.media_id, row.object_key, problem)
            )
            if requeue:
                with session_scope(engine) as session:
                    reopened = lifecycle.reopen(
                        session, pk=row.pk or 0, reason=f"reconcile: {problem}", now=utcnow()
                    )
                if reopened:
                    queue = queue_for(
                        row.file_length, row.message_type, large_bytes=settings.large_media_bytes
                    )
                    publish_archive(app, pk=row.pk or 0, queue=queue)
                    report.requeued += 1


@click.command()
@click.option("--tenant", default=None, help="Only this tenant's rows.")
@click.option("--requeue/--no-requeue", default=True, help="Re-queue rows whose object differs.")
@friendly
def reconcile(tenant: str | None, requeue: bool) -> None:
    """Check every archived row against its bucket: present, size, SHA-256 metadata.

    One JSON line per difference, then a summary line. Exits 0 when every object matched,
    3 when differences were found (re-queued unless --no-requeue).
    """

    settings = current_settings()
    engine = make_engine(settings.database_url)
    try:
        _, total = scope_count(engine, tenant, Status.ARCHIVED.value)
        with click.progressbar(length=total, label="checking", file=sys.stderr) as bar:
            report = check_buckets(
                engine,
                make_celery(settings),
                settings,
                tenant_name=tenant,
                requeue=requeue,
                progress=bar.update,
            )
    finally:
        engine.dispose()
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
