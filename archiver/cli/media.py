"""`titan-archiver media`: list, export, retry, re-queue, erase and hold media rows."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from archiver.cli.context import (
    confirm_destructive,
    current_settings,
    database,
    friendly,
    scope_count,
)
from archiver.cli.output import csv_row, echo_json, print_media
from archiver.errors import PayloadError, Unavailable
from archiver.governance import audit, bundle, fixity
from archiver.governance.erasure import Selector, count_matching, erase_recorded, set_hold
from archiver.infra.broker import make_celery, publish_archive
from archiver.infra.buckets import TenantS3Clients
from archiver.infra.db import make_engine, session_scope
from archiver.media import lifecycle, render_requests
from archiver.media import query as queries
from archiver.media.query import FILTERS, MediaQuery, parse_query
from archiver.media.recording import Arrival, MediaItem, record_items
from archiver.media.shapes import MEDIA_INFO_COLUMNS, Erasure, media_info
from archiver.names import MAX_ID_LEN, MEDIA_TYPES, SESSION_RE, has_control, valid_text
from archiver.queue import queue_for
from archiver.scheduling.dispatch import retry_failed
from archiver.scheduling.sweep import sweep
from archiver.tables import Status, utcnow
from archiver.tenants.tenants import get_tenant, list_tenants

F = TypeVar("F", bound=Callable[..., Any])


@click.group()
def media() -> None:
    """Archived media rows."""


def _filter_options(func: F) -> F:
    """One option per query filter, named like the API parameter in kebab-case."""
    for flt in reversed(FILTERS):
        if flt.name in {"cursor", "limit"}:
            continue
        func = click.option(_flag_of(flt.name), flt.name, default=None, help=flt.description)(func)
    return func


def _flag_of(name: str) -> str:
    """A query filter's option: ``mimeType`` -> ``--mime-type``."""
    return "--" + "".join("-" + c.lower() if c.isupper() else c for c in name)


def _query(filters: dict[str, str | None], **extra: str) -> MediaQuery:
    params = {k: v for k, v in filters.items() if v is not None} | extra
    try:
        return parse_query(params)
    except PayloadError as exc:
        # The query names the API's field ("since: ..."); the operator typed a flag.
        field, _, reason = str(exc).partition(": ")
        if field in params:
            raise click.BadParameter(reason, param_hint=_flag_of(field)) from exc
        raise click.UsageError(str(exc)) from exc


def iter_media(engine: Any, query: MediaQuery, *, page: int = 500) -> Iterator[dict[str, Any]]:
    """Every row matching ``query`` as MediaInfo, one page (and one short session) at a time."""
    with session_scope(engine) as session:
        names = {t.id: t.name for t in list_tenants(session)}
        tenant_id = get_tenant(session, name=query.tenant).id if query.tenant else None
    after = query.after
    while True:
        batch = MediaQuery(**{**query.__dict__, "limit": page, "after": after})
        with session_scope(engine) as session:
            rows = queries.search(session, tenant_id=tenant_id, query=batch, info_only=True)
        for row in rows:
            yield media_info(row, tenant=names.get(row.tenant_id, "?"))
        if len(rows) < page:
            return
        last = rows[-1]
        assert last.received_at is not None and last.pk is not None
        after = (last.received_at, last.pk)


@media.command("list")
@_filter_options
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json", "jsonl", "csv"]), default="table"
)
@friendly
def media_list(limit: int, fmt: str, **filters: str | None) -> None:
    """List media rows (newest first), with the query API's filters."""
    engine = make_engine(current_settings().database_url, must_exist=True)
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
@friendly
def media_export(output: str, fmt: str, **filters: str | None) -> None:
    """Stream every matching row to a file (jsonl or csv), with a progress bar."""
    folder = Path(output).parent
    if output != "-" and not folder.is_dir():
        raise click.BadParameter(f"folder {str(folder)!r} does not exist", param_hint="--output")
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        query = _query(filters)
        _, total = scope_count(engine, query.tenant, None)
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
            writer = csv.DictWriter(out, MEDIA_INFO_COLUMNS) if fmt == "csv" else None
            if writer is not None:
                writer.writeheader()
            count = 0
            for doc in iter_media(engine, query):
                if writer is not None:
                    writer.writerow(csv_row(doc))
                else:
                    out.write(json.dumps(doc) + "\n")
                count += 1
                bar.update(1)
    finally:
        engine.dispose()
    click.echo(f"exported {count} rows to {output}", err=True)


@media.command("requeue")
@click.option("--stuck", is_flag=True, help="Re-queue rows that are not moving (required).")
@friendly
def media_requeue(stuck: bool) -> None:
    """Publish again rows the broker lost, rows never queued, and rows with expired leases."""
    if not stuck:
        raise click.UsageError("say what to re-queue: --stuck (rows that are not moving)")

    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
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


@media.command("render")
@click.option("--missing", is_flag=True, help="Rows archived without their renditions (required).")
@click.option("--tenant", default=None, help="Only this tenant's rows.")
@click.option(
    "--failed", "with_failed", is_flag=True, help="Rows whose render failed too (asked afresh)."
)
@click.option(
    "--wait",
    "wait_seconds",
    default=0.0,
    type=click.FloatRange(0),
    help="Then follow the render workers for up to this many seconds (a second bar).",
)
@friendly
def media_render(missing: bool, tenant: str | None, with_failed: bool, wait_seconds: float) -> None:
    """Ask the render workers (Procfile: render) for the thumbnails, posters, durations and
    m4a audio of rows archived before renditions existed or while they were off."""
    if not missing:
        raise click.UsageError("say what to render: --missing (rows without renditions)")
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    app = make_celery(settings)
    try:
        with session_scope(engine) as session:
            tenant_id = get_tenant(session, name=tenant).id if tenant else None
            total = render_requests.missing_count(session, tenant_id=tenant_id, failed=with_failed)
        asked, after = 0, 0
        with click.progressbar(length=total, label="asking for renditions", file=sys.stderr) as bar:
            while True:
                with session_scope(engine) as session:
                    pks = render_requests.ask_missing(
                        session,
                        tenant_id=tenant_id,
                        after_pk=after,
                        limit=500,
                        now=utcnow(),
                        failed=with_failed,
                    )
                if not pks:
                    break
                render_requests.publish_render(app, pks=pks)
                asked += len(pks)
                after = pks[-1]
                bar.update(len(pks))
        left = _follow_renders(engine, tenant_id, asked, wait_seconds) if wait_seconds else None
        with session_scope(engine) as session:
            audit.record_cli(
                session, "media.render", tenant_id=tenant_id, tenant=tenant, detail={"asked": asked}
            )
    finally:
        app.close()
        engine.dispose()
    answer: dict[str, int] = {"asked": asked}
    if left is not None:
        answer["pending"] = left
    click.echo(json.dumps(answer))


def _follow_renders(engine: Any, tenant_id: int | None, asked: int, seconds: float) -> int:
    """A bar of renders done until none is pending or ``seconds`` pass; how many are left."""
    deadline = time.monotonic() + seconds
    done = 0
    with click.progressbar(length=asked, label="rendering", file=sys.stderr) as bar:
        while True:
            with session_scope(engine) as session:
                left = render_requests.pending_count(session, tenant_id=tenant_id)
            now_done = max(0, asked - left)
            bar.update(now_done - done)
            done = now_done
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)


@media.command("failed")
@click.option("--tenant", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--format", "fmt", type=click.Choice(["table", "json", "jsonl"]), default="table")
@friendly
def media_failed(tenant: str | None, limit: int, fmt: str) -> None:
    """Dead letters: failed rows with their reasons, newest first."""
    with database() as session:
        names = {t.id: t.name for t in list_tenants(session)}
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        rows = queries.list_media(
            session, tenant_id=tenant_id, status=Status.FAILED.value, limit=limit
        )
        docs = [media_info(row, tenant=names.get(row.tenant_id, "?")) for row in rows]
    print_media(docs, fmt)


@media.command("retry")
@click.option("--all", "retry_all", is_flag=True, help="Every failed row of every tenant.")
@click.option("--tenant", default=None, help="Every failed row of this tenant.")
@click.option("--id", "media_ids", multiple=True, help="A failed row's media id (repeatable).")
@friendly
def media_retry(retry_all: bool, tenant: str | None, media_ids: tuple[str, ...]) -> None:
    """Re-drive failed rows from scratch (attempts reset)."""

    if not (retry_all or tenant or media_ids):
        raise click.UsageError("say what to retry: --all, --tenant NAME or --id MEDIA_ID")
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        tenant_id, total = scope_count(engine, tenant, Status.FAILED.value)
        _refuse_unknown_ids(engine, tenant_id, media_ids, tenant)
        with click.progressbar(length=total, label="re-queueing", file=sys.stderr) as bar:
            count = retry_failed(
                engine,
                make_celery(settings),
                settings,
                tenant_id=tenant_id,
                media_ids=list(media_ids) or None,
                progress=bar.update,
            )
        with session_scope(engine) as session:
            audit.record_cli(
                session,
                "media.retry",
                tenant_id=tenant_id,
                tenant=tenant,
                detail={"all": retry_all, "ids": list(media_ids), "requeued": count},
            )
    finally:
        engine.dispose()
    click.echo(json.dumps({"requeued": count}))


_TYPE_OF_MIME = {"image": "image", "video": "video", "audio": "audio"}


@media.command("add")
@click.argument("tenant")
@click.option("--session", "session_name", required=True, help="The Titan session it came to.")
@click.option("--media-id", required=True, help="Titan's mediaId, known from elsewhere.")
@click.option("--message-id", default=None, help="The WhatsApp message id, if known.")
@click.option("--mime-type", default=None, help="Its MIME type, if known (else Titan's).")
@click.option(
    "--type",
    "message_type",
    type=click.Choice(sorted(MEDIA_TYPES)),
    default=None,
    help="Its message type (default: from --mime-type, else document).",
)
@friendly
def media_add(
    tenant: str,
    session_name: str,
    media_id: str,
    message_id: str | None,
    mime_type: str | None,
    message_type: str | None,
) -> None:
    """Archive a media id known from elsewhere (a webhook that never arrived), the way a
    webhook's is: one row per tenant and media id (a second add is a duplicate), queued for
    the workers. Prints {"id", "tenant", "status"}."""
    if not SESSION_RE.match(session_name):
        raise click.BadParameter("not a valid Titan session name", param_hint="--session")
    for flag, value in (("--media-id", media_id), ("--message-id", message_id)):
        if value is not None and (not value or len(value) > MAX_ID_LEN or has_control(value)):
            raise click.BadParameter(f"1 to {MAX_ID_LEN} printable characters", param_hint=flag)
    mime = mime_type.strip().lower() if mime_type else None
    kind = message_type or _TYPE_OF_MIME.get((mime or "").split("/", 1)[0], "document")
    item = MediaItem(
        media_id=media_id,
        session=session_name,
        message_id=message_id,
        message_type=kind,
        mime_type=mime,
        file_length=None,
        sender=None,
        caption=None,
        filename=None,
        media_url=None,
        message_at=None,
        event_id=None,
    )
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        now = utcnow()
        with session_scope(engine) as session:
            owner = get_tenant(session, name=tenant)
            arrival = Arrival(tenant_id=owner.saved_id, strategy=owner.strategy, item=item)
            (recorded,) = record_items(session, arrivals=[arrival], now=now)
        if recorded.needs_publish:
            queue = queue_for(None, kind, large_bytes=settings.large_media_bytes)
            try:
                publish_archive(make_celery(settings), pk=recorded.pk, queue=queue)
            except Unavailable:
                # Committed, not published: its mark taken back, the dispatcher publishes
                # it once the broker answers.
                with session_scope(engine) as session:
                    lifecycle.mark_unqueued(session, pks=[recorded.pk], at=now)
                click.echo("broker unavailable: queued for the dispatcher", err=True)
    finally:
        engine.dispose()
    status = recorded.status if recorded.created else "duplicate"
    click.echo(json.dumps({"id": media_id, "tenant": tenant, "status": status}))


@media.command("erase")
@click.option("--tenant", required=True, help="The tenant whose media is erased (only it).")
@click.option("--id", "media_ids", multiple=True, help="A media id (repeatable).")
@click.option("--sender", default=None, help="Every media of this sender (number or lid).")
@click.option("--chat", default=None, help="Every media of this conversation.")
@click.option("--include-held", is_flag=True, help="Erase rows under legal hold too.")
@click.option("--dry-run", is_flag=True, help="Count the rows it would erase; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask (needed when no terminal is attached).")
@click.option(
    "--bypass-governance",
    is_flag=True,
    help="Delete objects S3 Object Lock retains in governance mode before their date (needs "
    "s3:BypassGovernanceRetention; audited). Compliance mode and legal holds never give way.",
)
@friendly
def media_erase(
    tenant: str,
    media_ids: tuple[str, ...],
    sender: str | None,
    chat: str | None,
    include_held: bool,
    dry_run: bool,
    yes: bool,
    bypass_governance: bool,
) -> None:
    """Delete media for good: the objects (every version, in a versioned bucket) and the
    rows. Exactly one of --id, --sender, --chat; asked first at a terminal, else only with
    --yes. Prints what it removed: rows, objects,
    bytes, the media ids; and what it kept: rows under legal hold, rows being transferred
    right now (run it again), objects the bucket refused to delete. Exit 1 if anything
    named was kept for a reason other than a legal hold."""
    chosen = [bool(media_ids), sender is not None, chat is not None]
    if sum(chosen) != 1:
        raise click.UsageError("say what to erase: exactly one of --id, --sender or --chat")
    for flag, value in (("--sender", sender), ("--chat", chat)):
        if value is not None and not valid_text(value):
            raise click.BadParameter("1 to 255 printable characters", param_hint=flag)
    selector = Selector(media_ids=media_ids, sender=sender, chat=chat, include_held=include_held)
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        with session_scope(engine) as session:
            owner = get_tenant(session, name=tenant)
        _refuse_unknown_ids(engine, owner.id, media_ids, tenant)
        found = count_matching(engine, owner, selector)
        if dry_run:
            click.echo(json.dumps({"tenant": tenant, "dryRun": True, "rows": found}))
            return
        if found:
            confirm_destructive(
                f"delete {found} media rows of {tenant} and their objects for good", yes=yes
            )
        clients = TenantS3Clients(settings=settings, box=settings.secret_box())
        done = erase_recorded(
            engine,
            owner,
            selector,
            s3_for=clients.get,
            actor=audit.cli_actor(),
            bypass_governance=bypass_governance,
        )
    finally:
        engine.dispose()
    click.echo(json.dumps(Erasure.of(tenant, done.doc()).doc()))
    if done.in_flight or done.errors:
        sys.exit(1)


def _refuse_unknown_ids(
    engine: Any, tenant_id: int | None, media_ids: tuple[str, ...], tenant: str | None
) -> None:
    """Stop (exit 1, nothing done) when an --id names no media: a typo must not read as
    "done, 0 rows"."""
    if not media_ids:
        return
    with session_scope(engine) as session:
        unknown = queries.missing_ids(session, tenant_id=tenant_id, media_ids=media_ids)
    if unknown:
        owner = f" of tenant {tenant}" if tenant else ""
        raise click.ClickException(
            f"--id names no media{owner}: {', '.join(unknown[:10])}; nothing was done"
        )


@media.command("show")
@click.argument("media_id")
@click.option("--tenant", default=None, help="The tenant (needed when two tenants share the id).")
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="json")
@friendly
def media_show(media_id: str, tenant: str | None, fmt: str) -> None:
    """One media row as MediaInfo (the API's GET /api/media/{id}): exit 1 if no row has it."""
    with database() as session:
        names = {t.id: t.name for t in list_tenants(session)}
        tenant_id = get_tenant(session, name=tenant).id if tenant else None
        rows = queries.rows_with_id(session, tenant_id=tenant_id, media_id=media_id)
        docs = [media_info(row, tenant=names.get(row.tenant_id, "?")) for row in rows]
    if not docs:
        owner = f" of tenant {tenant}" if tenant else ""
        raise click.ClickException(f"no media {media_id!r}{owner}")
    if len(docs) > 1:
        raise click.UsageError(
            f"{len(docs)} tenants have media {media_id!r} "
            f"({', '.join(str(d['tenant']) for d in docs)}): say which with --tenant"
        )
    if fmt == "json":
        echo_json(docs[0])
    else:
        width = max(len(k) for k in docs[0])
        for key, value in docs[0].items():
            shown = json.dumps(value) if isinstance(value, list | dict) else value
            click.echo(f"{key:<{width}}  {'' if shown is None else shown}")


@media.command("verify")
@click.option("--tenant", default=None, help="Only this tenant's media.")
@click.option("--all", "verify_all", is_flag=True, help="Every archived media.")
@click.option("--since", default=None, help="Media archived since a date (2026-12-01) or time.")
@friendly
def media_verify(tenant: str | None, verify_all: bool, since: str | None) -> None:
    """Read archived objects back and check their size and SHA-256 (a fixity audit, at
    once and without the daily budget the beat keeps), with a progress bar. An object
    missing or changed marks its row damaged. Prints {checked, ok, damaged, errors, ...};
    exits 3 when it found damage, 1 when the bucket failed to answer for some."""
    if verify_all == (since is not None):
        raise click.UsageError("say what to verify: --all, or --since DATE")
    since_at = _query({}, since=since).since if since is not None else None
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    clients = TenantS3Clients(settings=settings, box=settings.secret_box())
    found = fixity.Audit()
    try:
        with session_scope(engine) as session:
            owners = {t.saved_id: t for t in list_tenants(session)}
            tenant_id = get_tenant(session, name=tenant).id if tenant else None
            total = fixity.count_selected(session, tenant_id=tenant_id, since=since_at)
        after = 0
        with click.progressbar(length=total, label="verifying", file=sys.stderr) as bar:
            while True:
                with session_scope(engine) as session:
                    rows = list(
                        fixity.selected(
                            session, tenant_id=tenant_id, since=since_at, after_pk=after, limit=200
                        )
                    )
                if not rows:
                    break
                after = rows[-1].saved_pk
                for owner_id in sorted({row.tenant_id for row in rows}):
                    owner = owners[owner_id]
                    mine = [row for row in rows if row.tenant_id == owner_id]
                    part = fixity.audit_rows(
                        engine,
                        owner,
                        mine,
                        s3=clients.get(owner),
                        now=utcnow(),
                        progress=bar.update,
                    )
                    found.merge(part)
        with session_scope(engine) as session:
            audit.record_cli(
                session, "media.verify", tenant_id=tenant_id, tenant=tenant, detail=found.doc()
            )
    finally:
        engine.dispose()
    click.echo(json.dumps(found.doc()))
    if found.damaged:
        sys.exit(3)
    if found.errors:
        sys.exit(1)


@media.command("export-bundle")
@click.option("--tenant", required=True, help="The tenant whose media is exported (only it).")
@click.option("--chat", default=None, help="Only this conversation.")
@click.option("--sender", default=None, help="Only this sender (number or lid).")
@click.option("--since", default=None, help="Received since a date (2026-12-01) or time.")
@click.option("--until", default=None, help="Received before a date or time.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=True, file_okay=True),
    help="A new folder for the bag, or FILE.zip.",
)
@friendly
def media_export_bundle(
    tenant: str,
    chat: str | None,
    sender: str | None,
    since: str | None,
    until: str | None,
    out: str,
) -> None:
    """Export archived media as a BagIt bag for eDiscovery: the files (streamed from the
    bucket, each checked against its archived SHA-256), metadata.jsonl, the ledger records
    and audit events of those media, and an index.html that browses it offline (per chat,
    per day, thumbnails). Prints {bag, files, bytes, thumbnails, skipped}."""
    filters = {"chat": chat, "sender": sender, "since": since, "until": until}
    query = _query(filters)
    target = Path(out)
    if target.exists():
        raise click.BadParameter(f"{out} already exists", param_hint="--out")
    if not target.parent.is_dir():
        raise click.BadParameter(
            f"folder {str(target.parent)!r} does not exist", param_hint="--out"
        )
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        with session_scope(engine) as session:
            owner = get_tenant(session, name=tenant)
            total = bundle.archived_count(session, owner)
        clients = TenantS3Clients(settings=settings, box=settings.secret_box())
        who = audit.cli_actor()
        with click.progressbar(length=total, label="exporting", file=sys.stderr) as bar:
            done = bundle.export(
                engine,
                owner,
                query,
                s3=clients.get(owner),
                out=target,
                who=who,
                now=utcnow(),
                progress=bar.update,
            )
        doc = done.doc(target)
        with session_scope(engine) as session:
            audit.record_cli(
                session,
                "media.export-bundle",
                tenant_id=owner.id,
                tenant=tenant,
                detail={k: v for k, v in filters.items() if v} | doc,
            )
    finally:
        engine.dispose()
    click.echo(json.dumps(doc))


@media.command("hold")
@click.option("--tenant", required=True)
@click.option("--id", "media_ids", multiple=True, required=True, help="A media id (repeatable).")
@click.option("--release", is_flag=True, help="Lift the hold instead.")
@friendly
def media_hold(tenant: str, media_ids: tuple[str, ...], release: bool) -> None:
    """Put media under legal hold: retention never deletes it (an erasure only with
    --include-held). A tenant with S3 Object Lock also gets the bucket's legal hold on each
    object, which nothing deletes through until it is released. --release lifts both."""
    settings = current_settings()
    engine = make_engine(settings.database_url, must_exist=True)
    try:
        with session_scope(engine) as session:
            owner = get_tenant(session, name=tenant)
        clients = TenantS3Clients(settings=settings, box=settings.secret_box())
        rows = set_hold(
            engine,
            owner,
            list(media_ids),
            held=not release,
            actor=audit.cli_actor(),
            s3_for=clients.get,
        )
    finally:
        engine.dispose()
    click.echo(json.dumps({"tenant": tenant, "held": not release, "rows": rows}))
    if rows < len(set(media_ids)):
        click.echo(f"{len(set(media_ids)) - rows} of the ids name no media of {tenant}", err=True)
        sys.exit(1)
