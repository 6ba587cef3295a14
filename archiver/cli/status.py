"""`titan-archiver status`: rows by status, the oldest unarchived age, queues and workers."""

from __future__ import annotations

import json
import sys

import click

from archiver import humanize
from archiver.ages import WARN_AGE
from archiver.cli.context import current_settings, database, friendly
from archiver.errors import AppError
from archiver.infra.broker import LiveWorker, make_celery, queue_depths, workers
from archiver.media import render_requests
from archiver.queue import RENDER_QUEUE
from archiver.reporting import figures
from archiver.scheduling import pauses
from archiver.tables import Status, utcnow
from archiver.tenants import notify
from archiver.tenants.tenants import get_tenant, list_tenants

# Exit codes, for scripts and monitoring: 0 all well; 3 a tenant or a session is paused
# (its media waits); 4 media older than WARN_AGE is still not archived (WhatsApp expires
# it at about 14 days); the higher code wins.
EXIT_PAUSED = 3
EXIT_OLD_BACKLOG = 4
EXIT_DAMAGED = 5  # a fixity audit found archived media missing or changed
WARN_AGE_SECONDS = WARN_AGE.total_seconds()


@click.command()
@click.option("--tenant", default=None)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@friendly
def status(tenant: str | None, fmt: str, as_json: bool) -> None:
    """Rows by status, the oldest unarchived item's age, queue depths, and the live workers.

    Exits 0 when all is well, 3 when a tenant or session is paused, 4 when media older than
    3 days is still not archived (WhatsApp expires it at about 14 days), 5 when a fixity
    audit found archived media missing or changed (the highest code wins).
    """

    settings = current_settings()
    with database() as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        backlog = figures.backlog(session, tenant_id=tenant_id)
        held = pauses.paused(session, tenant_id=tenant_id)
        held_sessions = pauses.paused_sessions(session, tenant_id=tenant_id)
        outbox = notify.counts(session, tenant_id=tenant_id)
        renders = render_requests.pending_count(session, tenant_id=tenant_id)
        names = {str(t.id): t.name for t in list_tenants(session)}
    now = utcnow()
    pending = sum(c.get("pending", 0) for c in outbox.values())
    given_up = sum(c.get("failed", 0) for c in outbox.values())
    age = (now - backlog.oldest_unarchived).total_seconds() if backlog.oldest_unarchived else 0.0
    failed_age = (now - backlog.oldest_failed).total_seconds() if backlog.oldest_failed else 0.0
    celery = make_celery(settings)
    broker = "ok"
    try:
        depths: dict[str, int] | None = queue_depths(celery)
        render_depth: int | None = queue_depths(celery, (RENDER_QUEUE,))[RENDER_QUEUE]
        live: list[LiveWorker] | None = workers(celery)
    except AppError as exc:
        depths, render_depth, live = None, None, None
        broker = str(exc).removeprefix("broker ")
    rows = {s.value: backlog.counts.get(s.value, 0) for s in Status}
    doc = {
        "rows": rows,
        "oldestUnarchivedAgeSeconds": round(age, 1),
        "oldestFailedAgeSeconds": round(failed_age, 1),
        # "ok", or why not ("unreachable: Error 111 connecting to ...").
        "broker": broker,
        "queueDepth": None if depths is None else sum(depths.values()),
        "queues": depths,
        "workers": live,
        "pausedTenants": [
            {"tenant": p.tenant, "reason": p.reason, "since": p.since.isoformat(), "auto": p.auto}
            for p in held
        ],
        "pausedSessions": [
            {
                "tenant": p.tenant,
                "session": p.session,
                "reason": p.reason,
                "since": p.since.isoformat(),
            }
            for p in held_sessions
        ],
        "notifications": {
            "pending": pending,
            "failed": given_up,
            "byTenant": {names.get(k, k): v for k, v in outbox.items()},
        },
        # Renditions asked for and not made yet, and their queue (its own workers).
        "renders": {"pending": renders, "queueDepth": render_depth},
    }
    damaged = rows.get(Status.DAMAGED.value, 0)
    code = (
        EXIT_DAMAGED
        if damaged
        else EXIT_OLD_BACKLOG
        if age >= WARN_AGE_SECONDS
        else EXIT_PAUSED
        if held or held_sessions
        else 0
    )
    if as_json or fmt == "json":
        click.echo(json.dumps(doc))
        sys.exit(code)
    for paused in held:
        since = humanize.age((now - paused.since).total_seconds())
        click.echo(f"PAUSED tenant {paused.tenant} for {since}: {paused.reason}")
    for held_session in held_sessions:
        since = humanize.age((now - held_session.since).total_seconds())
        click.echo(
            f"PAUSED session {held_session.session} of {held_session.tenant} for {since}: "
            f"{held_session.reason}"
        )
    for name, count in rows.items():
        click.echo(f"{name:<28}{count}")
    click.echo(f"{'oldest unarchived':<28}{_age(age)}")
    click.echo(f"{'oldest failed':<28}{_age(failed_age)}")
    click.echo(f"{'notifications pending':<28}{pending}")
    click.echo(f"{'notifications given up':<28}{given_up}")
    click.echo(f"{'renders pending':<28}{renders}")
    if depths is None or live is None:
        click.echo(f"{'broker':<28}{broker}")
        click.echo(f"{'queue depth':<28}unknown")
        click.echo(f"{'workers':<28}unknown (broker unreachable)")
    else:
        for queue, depth in depths.items():
            click.echo(f"{'queue ' + queue:<28}{depth}")
        click.echo(f"{'queue ' + RENDER_QUEUE:<28}{render_depth}")
        click.echo(f"{'workers':<28}{len(live)}")
        for worker in live:
            queues = ",".join(worker["queues"])
            click.echo(
                f"  {worker['name']}  queues={queues}  "
                f"busy={worker['active']}/{worker['concurrency']}"
            )
    if damaged:
        click.echo(
            f"DAMAGED: {damaged} archived media missing or changed in the bucket "
            "(titan-archiver media list --status damaged)"
        )
    if age >= WARN_AGE_SECONDS:
        click.echo(
            f"warning: media {_age(age)} old is not archived; WhatsApp expires it at ~14 days"
        )
    sys.exit(code)


def _age(seconds: float) -> str:
    return humanize.age(seconds, compact=True)
