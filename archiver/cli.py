"""``titan-archiver``: the operator's command line (schema, tenants, media, the dev stack)."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import click
from sqlmodel import Session

from archiver import humanize, schema
from archiver import media as media_rows
from archiver.db import make_engine, session_scope
from archiver.errors import AppError
from archiver.media_info import MEDIA_INFO_SCHEMA, media_info
from archiver.media_query import FILTERS, MediaQuery, parse_query
from archiver.settings import Settings, load_settings
from archiver.tables import Status, utcnow
from archiver.tenants import (
    TenantSpec,
    create_tenant,
    get_tenant,
    get_tenant_by_id,
    list_tenants,
    public_view,
    remove_tenant,
    rotate_hmac_key,
)

F = TypeVar("F", bound=Callable[..., Any])


def _settings() -> Settings:
    ctx = click.get_current_context()
    cached = ctx.find_root().meta.get("settings")
    if cached is None:
        cached = ctx.find_root().meta["settings"] = load_settings()
    return cached  # type: ignore[no-any-return]


@contextmanager
def _db() -> Iterator[Session]:
    engine = make_engine(_settings().database_url)
    try:
        with session_scope(engine) as session:
            yield session
    finally:
        engine.dispose()


def _friendly(func: F) -> F:
    """Turn our own errors into a one-line message and exit status 1, never a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AppError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def _echo_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


@click.group()
def main() -> None:
    """Archive Titan WhatsApp media into each tenant's own S3-compatible bucket."""


# -- db ---------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@_friendly
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema (Alembic)."""
    engine = make_engine(_settings().database_url)
    try:
        schema.upgrade(engine, revision)
        click.echo(f"database at revision {schema.current_revision(engine)}", err=True)
    finally:
        engine.dispose()


# -- tenants ----------------------------------------------------------------------------


@main.group()
def tenants() -> None:
    """Tenants: the Titan accounts whose media is archived."""


@tenants.command("add")
@click.argument("name")
@click.option("--hmac-key", required=True, help="The Titan webhook's signing key (hmacKey).")
@click.option("--titan-url", required=True, help="The Titan account's API base URL.")
@click.option("--titan-api-key", required=True, help="A Titan server API key (titan_...).")
@click.option(
    "--strategy", type=click.Choice(["download", "persist"]), default="download", show_default=True
)
@click.option("--s3-bucket", required=True)
@click.option("--s3-endpoint", default="", help="Blank for AWS S3; the URL for R2 or MinIO.")
@click.option("--s3-region", default="")
@click.option("--s3-access-key-id", default="")
@click.option("--s3-secret-access-key", default="")
@click.option("--s3-prefix", default="", help="Key prefix inside the bucket.")
@_friendly
def tenants_add(name: str, **options: str) -> None:
    """Add a tenant; print it with a fresh query API key (shown only this once)."""
    spec = TenantSpec(name=name, **options)
    box = _settings().secret_box()
    with _db() as session:
        tenant, api_key = create_tenant(session, box=box, spec=spec)
        view = public_view(tenant)
    click.echo(json.dumps({"name": name, "apiKey": api_key, **view}))


@tenants.command("list")
@_friendly
def tenants_list() -> None:
    """List tenants (secrets masked), one JSON object per line."""
    with _db() as session:
        for tenant in list_tenants(session):
            click.echo(json.dumps(public_view(tenant)))


@tenants.command("show")
@click.argument("name")
@_friendly
def tenants_show(name: str) -> None:
    """Show one tenant (secrets masked)."""
    with _db() as session:
        _echo_json(public_view(get_tenant(session, name=name)))


@tenants.command("rotate-hmac-key")
@click.argument("name")
@click.option("--hmac-key", required=True, help="The webhook's new signing key.")
@click.option(
    "--previous-valid-for",
    default=24.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Hours the current key keeps verifying (0: stop at once).",
)
@_friendly
def tenants_rotate_hmac_key(name: str, hmac_key: str, previous_valid_for: float) -> None:
    """Switch the tenant to a new webhook key; signatures by the old one verify until it expires.

    Receivers pick the change up within 5 seconds (their tenant cache).
    """
    from datetime import timedelta

    box = _settings().secret_box()
    with _db() as session:
        tenant = rotate_hmac_key(
            session,
            box=box,
            name=name,
            new_key=hmac_key,
            previous_valid_for=timedelta(hours=previous_valid_for),
        )
        view = public_view(tenant)
    click.echo(json.dumps(view))


@tenants.command("remove")
@click.argument("name")
@click.option("--purge", is_flag=True, help="Also delete the tenant's media rows.")
@_friendly
def tenants_remove(name: str, purge: bool) -> None:
    """Remove a tenant. Objects in its bucket are never touched."""
    with _db() as session:
        rows = remove_tenant(session, name=name, purge=purge)
    click.echo(f"removed tenant {name} ({rows} media rows deleted)", err=True)


# -- api-keys ---------------------------------------------------------------------------


@main.group("api-keys")
def api_keys_group() -> None:
    """Query API keys: several per tenant, shown once, stored hashed, revocable."""


@api_keys_group.command("create")
@click.argument("tenant")
@click.option("--label", default=None, help="What the key is for (e.g. 'dashboard', 'etl').")
@_friendly
def api_keys_create(tenant: str, label: str | None) -> None:
    """Issue a new key for TENANT and print it (the only time it is shown)."""
    from archiver.api_keys import issue, key_view

    if label is not None and not 0 < len(label) <= 64:
        raise click.BadParameter("1 to 64 characters", param_hint="--label")
    with _db() as session:
        owner = get_tenant(session, name=tenant)
        assert owner.id is not None
        row, key = issue(session, tenant_id=owner.id, label=label)
        view = key_view(row, owner.name)
    click.echo(json.dumps({**view, "apiKey": key}))


@api_keys_group.command("list")
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@_friendly
def api_keys_list(tenant: str | None) -> None:
    """Every key (prefix, label, created, last used, revoked), one JSON object per line."""
    from archiver.api_keys import key_view, list_keys

    with _db() as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        for key, name in list_keys(session, tenant_id=tenant_id):
            click.echo(json.dumps(key_view(key, name)))


@api_keys_group.command("revoke")
@click.argument("prefix")
@click.option("--tenant", default=None, help="Only match this tenant's keys.")
@_friendly
def api_keys_revoke(prefix: str, tenant: str | None) -> None:
    """Revoke the key shown as PREFIX (or given whole); it stops working at once."""
    from archiver.api_keys import key_view, revoke_key

    with _db() as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        key = revoke_key(session, prefix=prefix, tenant_id=tenant_id)
        owner = get_tenant_by_id(session, tenant_id=key.tenant_id)
        click.echo(json.dumps(key_view(key, owner.name)))


# -- keys (master key) ------------------------------------------------------------------


@main.group()
def keys() -> None:
    """The master key (ARCHIVER_SECRET_KEY) that encrypts every tenant's secrets."""


@keys.command("rotate")
@click.option("--dry-run", is_flag=True, help="Count what would be re-encrypted; change nothing.")
@_friendly
def keys_rotate(dry_run: bool) -> None:
    """Re-encrypt every stored secret under ARCHIVER_SECRET_KEY.

    Run it with the new key in ARCHIVER_SECRET_KEY and the old one in
    ARCHIVER_PREVIOUS_SECRET_KEYS, after every process has been restarted with both (they then
    read secrets under either key). Afterwards `keys check` reports 0 and the old key can go.
    """
    from archiver.tenants import rekey_secrets

    settings = _settings()
    with _db() as session:
        report = rekey_secrets(session, box=settings.secret_box(), dry_run=dry_run)
    click.echo(
        json.dumps(
            {
                "tenants": report.tenants,
                "secrets": report.secrets,
                "reencrypted": report.reencrypted,
                "dryRun": dry_run,
            }
        )
    )


@keys.command("check")
@_friendly
def keys_check() -> None:
    """Count stored secrets that still need an older key; exit 1 if any do."""
    from archiver.tenants import rekey_secrets

    settings = _settings()
    with _db() as session:
        report = rekey_secrets(session, box=settings.secret_box(), dry_run=True)
    click.echo(json.dumps({"secrets": report.secrets, "needOlderKey": report.reencrypted}))
    if report.reencrypted:
        sys.exit(1)


# -- media ------------------------------------------------------------------------------


@main.group()
def media() -> None:
    """Archived media rows."""


def _filter_options(func: F) -> F:
    """One option per query filter, named like the API parameter in kebab-case."""
    for flt in reversed(FILTERS):
        if flt.name in {"cursor", "limit"}:
            continue
        option = "--" + "".join("-" + c.lower() if c.isupper() else c for c in flt.name)
        func = click.option(option, flt.name, default=None, help=flt.description)(func)
    return func


def _query(filters: dict[str, str | None], **extra: str) -> MediaQuery:
    params = {k: v for k, v in filters.items() if v is not None} | extra
    return parse_query(params)


def iter_media(engine: Any, query: MediaQuery, *, page: int = 500) -> Iterator[dict[str, Any]]:
    """Every row matching ``query`` as MediaInfo, one page (and one short session) at a time."""
    with session_scope(engine) as session:
        names = {t.id: t.name for t in list_tenants(session)}
        tenant_id = get_tenant(session, name=query.tenant).id if query.tenant else None
    after = query.after
    while True:
        batch = MediaQuery(**{**query.__dict__, "limit": page, "after": after})
        with session_scope(engine) as session:
            rows = media_rows.search(session, tenant_id=tenant_id, query=batch)
        for row in rows:
            yield media_info(row, tenant=names.get(row.tenant_id, "?"))
        if len(rows) < page:
            return
        last = rows[-1]
        assert last.received_at is not None and last.pk is not None
        after = (last.received_at, last.pk)


CSV_COLUMNS = list(MEDIA_INFO_SCHEMA["properties"])  # type: ignore[call-overload]


@media.command("list")
@_filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv"]), default="table"
)
@_friendly
def media_list(limit: int, fmt: str, **filters: str | None) -> None:
    """List media rows (newest first), with the query API's filters."""
    engine = make_engine(_settings().database_url)
    try:
        query = _query(filters)
        docs = list(itertools.islice(iter_media(engine, query), limit))
    finally:
        engine.dispose()
    print_media(docs, fmt)


@media.command("export")
@_filter_options
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@_friendly
def media_export(output: str, fmt: str, **filters: str | None) -> None:
    """Stream every matching row to a file (jsonl or csv), with a progress bar."""
    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        query = _query(filters)
        _, total = _scope_count(engine, query.tenant, None)
        # newline="" so the csv module controls line endings (click.open_file cannot pass it).
        target = (
            contextlib.nullcontext(sys.stdout)
            if output == "-"
            else open(output, "w", encoding="utf-8", newline="")  # noqa: SIM115
        )
        with (
            target as out,
            click.progressbar(length=total, label="exporting", file=sys.stderr) as bar,
        ):
            writer = csv.DictWriter(out, CSV_COLUMNS) if fmt == "csv" else None
            if writer is not None:
                writer.writeheader()
            count = 0
            for doc in iter_media(engine, query):
                if writer is not None:
                    writer.writerow(doc)
                else:
                    out.write(json.dumps(doc) + "\n")
                count += 1
                bar.update(1)
    finally:
        engine.dispose()
    click.echo(f"exported {count} rows to {output}", err=True)


def print_media(docs: list[dict[str, Any]], fmt: str) -> None:
    if fmt == "json":
        _echo_json(docs)
    elif fmt == "jsonl":
        for doc in docs:
            click.echo(json.dumps(doc))
    elif fmt == "csv":
        writer = csv.DictWriter(click.get_text_stream("stdout"), CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(docs)
    else:
        columns = ("tenant", "session", "id", "type", "size", "status", "key", "lastError")
        table = [
            [str(doc.get(c) if doc.get(c) is not None else "") for c in columns] for doc in docs
        ]
        widths = [max([len(c)] + [len(r[i][:60]) for r in table]) for i, c in enumerate(columns)]
        click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row in table:
            click.echo("  ".join(v[:60].ljust(w) for v, w in zip(row, widths, strict=True)))


@media.command("requeue")
@click.option("--stuck", is_flag=True, required=True, help="Re-queue rows that are not moving.")
@_friendly
def media_requeue(stuck: bool) -> None:
    """Publish again rows the broker lost, rows never queued, and rows with expired leases."""
    from archiver.queue import make_celery
    from archiver.redrive import sweep

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        report = sweep(engine, make_celery(settings), settings)
    finally:
        engine.dispose()
    click.echo(
        json.dumps(
            {
                "requeued": report.total,
                "expiredLeases": report.expired_leases,
                "unqueued": report.unqueued,
                "lostByBroker": report.lost,
                "queueDepth": report.queue_depth,
            }
        )
    )


@media.command("failed")
@click.option("--tenant", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl"]), default="table")
@_friendly
def media_failed(tenant: str | None, limit: int, fmt: str) -> None:
    """Dead letters: failed rows with their reasons, newest first."""
    with _db() as session:
        names = {t.id: t.name for t in list_tenants(session)}
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        rows = media_rows.list_media(
            session, tenant_id=tenant_id, status=Status.FAILED.value, limit=limit
        )
        docs = [media_info(row, tenant=names.get(row.tenant_id, "?")) for row in rows]
    print_media(docs, fmt)


def _scope_count(engine: Any, tenant: str | None, status: str | None) -> tuple[int | None, int]:
    """The tenant's id (None: every tenant) and how many of its rows have ``status`` (or any)."""
    with session_scope(engine) as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        counts = media_rows.backlog(session, tenant_id=tenant_id).counts
    return tenant_id, counts.get(status, 0) if status else sum(counts.values())


@media.command("retry")
@click.option("--all", "retry_all", is_flag=True, help="Every failed row of every tenant.")
@click.option("--tenant", default=None, help="Every failed row of this tenant.")
@click.option("--id", "media_ids", multiple=True, help="A failed row's media id (repeatable).")
@_friendly
def media_retry(retry_all: bool, tenant: str | None, media_ids: tuple[str, ...]) -> None:
    """Re-drive failed rows from scratch (attempts reset)."""
    from archiver.queue import make_celery
    from archiver.redrive import retry_failed

    if not (retry_all or tenant or media_ids):
        raise click.UsageError("say what to retry: --all, --tenant NAME or --id MEDIA_ID")
    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        tenant_id, total = _scope_count(engine, tenant, Status.FAILED.value)
        with click.progressbar(length=total, label="re-queueing", file=sys.stderr) as bar:
            count = retry_failed(
                engine,
                make_celery(settings),
                settings,
                tenant_id=tenant_id,
                media_ids=list(media_ids) or None,
                progress=bar.update,
            )
    finally:
        engine.dispose()
    click.echo(json.dumps({"requeued": count}))


@main.command()
@click.option("--tenant", default=None, help="Only this tenant's rows.")
@click.option("--requeue/--no-requeue", default=True, help="Re-queue rows whose object differs.")
@_friendly
def reconcile(tenant: str | None, requeue: bool) -> None:
    """Check every archived row against its bucket: present, size, SHA-256 metadata."""
    from archiver.queue import make_celery
    from archiver.reconcile import reconcile as run_reconcile

    settings = _settings()
    engine = make_engine(settings.database_url)
    try:
        _, total = _scope_count(engine, tenant, Status.ARCHIVED.value)
        with click.progressbar(length=total, label="checking", file=sys.stderr) as bar:
            report = run_reconcile(
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


@main.command()
@click.option("--tenant", default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
@_friendly
def status(tenant: str | None, as_json: bool) -> None:
    """Rows by status, the oldest unarchived item's age, queue depths, and the live workers."""
    from archiver.queue import make_celery, workers
    from archiver.redrive import queue_depths

    settings = _settings()
    with _db() as session:
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        backlog = media_rows.backlog(session, tenant_id=tenant_id)
    now = utcnow()
    age = (now - backlog.oldest_unarchived).total_seconds() if backlog.oldest_unarchived else 0.0
    failed_age = (now - backlog.oldest_failed).total_seconds() if backlog.oldest_failed else 0.0
    celery = make_celery(settings)
    try:
        depths: dict[str, int] | None = queue_depths(celery)
        live: list[dict[str, object]] | None = workers(celery)
    except AppError:
        depths, live = None, None
    doc = {
        "rows": {s.value: backlog.counts.get(s.value, 0) for s in Status},
        "oldestUnarchivedAgeSeconds": round(age, 1),
        "oldestFailedAgeSeconds": round(failed_age, 1),
        "queueDepth": None if depths is None else sum(depths.values()),
        "queues": depths,
        "workers": live,
    }
    if as_json:
        click.echo(json.dumps(doc))
        return
    for name, count in doc["rows"].items():  # type: ignore[attr-defined]
        click.echo(f"{name:<28}{count}")
    click.echo(f"{'oldest unarchived':<28}{_age(age)}")
    click.echo(f"{'oldest failed':<28}{_age(failed_age)}")
    if depths is None or live is None:
        click.echo(f"{'queue depth':<28}unreachable")
        click.echo(f"{'workers':<28}unknown (broker unreachable)")
    else:
        for queue, depth in depths.items():
            click.echo(f"{'queue ' + queue:<28}{depth}")
        click.echo(f"{'workers':<28}{len(live)}")
        for worker in live:
            queues = ",".join(str(q) for q in worker["queues"])  # type: ignore[attr-defined]
            click.echo(
                f"  {worker['name']}  queues={queues}  "
                f"busy={worker['active']}/{worker['concurrency']}"
            )
    if age > 7 * 86400:
        click.echo("warning: media older than 7 days is not archived; WhatsApp expires it at ~14")


def _age(seconds: float) -> str:
    return humanize.age(seconds, compact=True)


# -- dev --------------------------------------------------------------------------------


@main.command()
@click.option("--port", default=8000, show_default=True, type=int, help="Receiver port.")
@click.option("--data-dir", default=".archiver-dev", show_default=True, type=click.Path())
@click.option("--demo/--no-demo", default=True, help="Send a few signed demo webhooks.")
@click.option("--exit-after-demo", is_flag=True, help="Stop once the demo media is archived.")
@_friendly
def dev(port: int, data_dir: str, demo: bool, exit_after_demo: bool) -> None:
    """Run everything locally on embedded defaults: SQLite, embedded Redis, local S3, simulator."""
    from archiver.devstack import run_dev

    sys.exit(run_dev(port=port, data_dir=data_dir, demo=demo, exit_after_demo=exit_after_demo))


if __name__ == "__main__":
    main()
