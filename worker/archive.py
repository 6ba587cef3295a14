"""Archive one media row: claim it, move the file by the tenant's strategy, record the outcome."""

from __future__ import annotations

import logging
import time
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from opentelemetry.trace import Span

from archiver.backoff import horizon, next_attempt, retry_delay
from archiver.errors import NotFound, PermanentError, TenantError, TransientError, Unavailable
from archiver.governance import audit, fixity, worm
from archiver.infra import tracing
from archiver.infra.buckets import classify_s3
from archiver.infra.db import session_scope, transactional
from archiver.media import lifecycle, renditions
from archiver.object_keys import object_key
from archiver.scheduling import dispatch, fairness, pauses
from archiver.tables import Media, RenderState, Strategy, Tenant, utcnow
from archiver.tenants import notify
from archiver.tenants.tenants import TenantSecrets
from worker import buffers
from worker.resources import WorkerResources
from worker.storage import abort_stale_uploads, abort_upload, put_stream
from worker.titan_client import TitanClient

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result:
    """What happened to one row; ``retry_in`` is set when another attempt is due."""

    outcome: str  # archived | failed | retrying | busy | skipped | paused | deferred
    detail: str = ""
    retry_in: float | None = None
    size: int | None = None  # bytes archived
    seconds: float | None = None  # duration of the transfer that archived it
    render: bool = False  # archived and asked for its renditions (the render queue's task)


def archive_rows(
    res: WorkerResources, pks: list[int], *, traces: dict[int, str] | None = None
) -> list[tuple[int, Result]]:
    """Claim the rows in one statement, then move each in turn: [(pk, its result)].

    ``traces``: each row's W3C traceparent from the task message; with tracing on, each row
    gets an ``archive media`` span (a new trace where the message carried none)."""
    pks = list(dict.fromkeys(pks))  # a row named twice is still one transfer
    spans = _media_spans(pks, traces) if tracing.enabled() else {}
    try:
        return _archive_rows(res, pks, spans)
    except BaseException as exc:
        # The database went away mid-task (the task is retried): close what is still open.
        for opened in spans.values():
            tracing.end(opened, error=f"{type(exc).__name__}: {exc}")
        raise


def _archive_rows(
    res: WorkerResources, pks: list[int], spans: dict[int, Span | None]
) -> list[tuple[int, Result]]:
    settings = res.settings
    now = utcnow()
    claim_started = time.time_ns()
    with session_scope(res.engine) as session:
        claims = lifecycle.claim_many(
            session, pks=pks, now=now, lease_seconds=settings.lease_seconds
        )
    if spans:
        _claim_spans(spans, claims, claim_started, time.time_ns())
    claimed = [c.row for c in claims.values() if c.row is not None]
    deferred: dict[int, str] = {}
    if claimed:
        # Fair shares and Titan's rate limit: rows over their tenant's cap, or of a tenant
        # Titan asked to slow down, go back at once (no attempt spent).
        with session_scope(res.engine) as session:
            admission = fairness.admit(
                session, rows=claimed, cap=settings.tenant_max_concurrency, now=now
            )
        deferred = {row.saved_pk: why for row, _, why in admission.deferred}
    claimed_at = time.monotonic()
    results = []
    for pk in pks:
        claim = claims[pk]
        with tracing.use(spans.get(pk)):
            result = _one(res, pk, claim, deferred, claimed_at, now)
        results.append((pk, result))
        tracing.end(
            spans.pop(pk, None),
            error=result.detail if result.outcome == "failed" else None,
            attributes={"archiver.outcome": result.outcome, "archiver.bytes": result.size},
        )
    if settings.tenant_max_concurrency:
        # This task's slots are free again: publish the next rows of those tenants now
        # rather than at the dispatcher's next round.
        for tenant_id in sorted({row.tenant_id for row in claimed}):
            with suppress(Unavailable):
                dispatch.dispatch(
                    res.engine, res.celery, settings, now=utcnow(), tenant_id=tenant_id
                )
    return results


def _one(
    res: WorkerResources,
    pk: int,
    claim: lifecycle.Claim,
    deferred: dict[int, str],
    claimed_at: float,
    now: datetime,
) -> Result:
    if pk in deferred:
        return Result("deferred", deferred[pk])
    if claim.row is not None and not _still_ours(res, claim.row, claimed_at):
        return Result("skipped", "lease lost to another worker")
    if claim.row is not None:
        return _archive(res, claim.row)
    if claim.busy_until is not None:
        # Another worker holds the lease (or held it and died): look again when it ends.
        wait = max(1.0, (claim.busy_until - now).total_seconds() + 1)
        return Result("busy", "leased by another worker", retry_in=wait)
    return Result("skipped", "already archived or failed")


def _media_spans(pks: list[int], traces: dict[int, str] | None) -> dict[int, Span | None]:
    return {
        pk: tracing.start(
            "archive media",
            kind=tracing.CONSUMER,
            parent=(traces or {}).get(pk),
            attributes={"archiver.media_pk": pk, "messaging.batch.message_count": len(pks)},
        )
        for pk in pks
    }


def _claim_spans(
    spans: dict[int, Span | None],
    claims: dict[int, lifecycle.Claim],
    started: int,
    ended: int,
) -> None:
    """One ``claim`` span per row (the rows of a task are claimed in one statement)."""
    for pk, media_span in spans.items():
        claim = claims.get(pk)
        row = claim.row if claim is not None else None
        if media_span is not None and row is not None:
            media_span.set_attribute("media.id", row.media_id)
            media_span.set_attribute("archiver.tenant_id", row.tenant_id)
            media_span.set_attribute("archiver.attempt", row.attempts)
        outcome = "claimed" if row is not None else "busy" if claim and claim.busy_until else "none"
        tracing.end(
            tracing.start("claim", parent=media_span, start_time=started),
            attributes={"archiver.claim": outcome},
            end_time=ended,
        )


def _still_ours(res: WorkerResources, row: Media, claimed_at: float) -> bool:
    """Later rows of a batch renew their lease if the earlier ones took a while."""
    lease = res.settings.lease_seconds
    if time.monotonic() - claimed_at < lease / 3:
        return True
    with session_scope(res.engine) as session:
        return lifecycle.renew_lease(
            session, pk=row.saved_pk, attempt=row.attempts, now=utcnow(), lease_seconds=lease
        )


def _archive(res: WorkerResources, row: Media) -> Result:
    """One claimed row: move the file by the tenant's strategy and record the outcome."""
    if row.crashes >= res.settings.max_attempts:
        # A row whose attempts keep dying with their worker (a poison file) ends here, not in
        # endless redelivery. Transient failures do not count: they retry until the horizon.
        reason = row.last_error or "worker lost during transfer"
        return _fail(
            res,
            row,
            f"gave up after {row.crashes} attempts whose worker died: {reason}",
            tenant=_tenant_or_none(res, row),
        )
    try:
        tenant, secrets = res.tenant(row.tenant_id)
        if tenant.paused_at is not None:
            # Cached as paused: read it again before handing the row back, so a resume takes
            # effect at once rather than when this process's tenant cache expires.
            res.forget_tenant(row.tenant_id)
            tenant, secrets = res.tenant(row.tenant_id)
    except NotFound:
        return _fail(res, row, "tenant no longer exists", tenant=None)
    if tenant.paused_at is not None:
        return _hand_back(res, row, f"tenant {tenant.name} is paused")
    started = time.monotonic()
    moved = _transfer(res, tenant, secrets, row)
    if isinstance(moved, Result):
        return moved
    return _record_archived(res, tenant, row, moved, started)


def _transfer(
    res: WorkerResources, tenant: Tenant, secrets: TenantSecrets, row: Media
) -> lifecycle.Transferred | Result:
    """Move the file by the tenant's strategy: where it went, or the Result of a failure
    (the tenant paused, the row failed, or its retry scheduled)."""
    titan: TitanClient | None = None
    try:
        titan = res.titan(tenant, secrets)
        if tenant.strategy == Strategy.PERSIST:
            with tracing.span("titan persist", kind=tracing.CLIENT):
                persisted = _persist(titan, row)
            return _verify_persisted(res, tenant, row, persisted)
        return _download(res, tenant, s3=res.s3.get(tenant), titan=titan, row=row)
    except TenantError as exc:
        # Titan or the bucket refuses the tenant's settings: every row would fail alike.
        _pause_tenant(res, tenant, exc)
        return _hand_back(res, row, str(exc))
    except PermanentError as exc:
        return _fail(res, row, str(exc), tenant=tenant)
    except TransientError as exc:
        if exc.rate_limited:
            # Titan limits the tenant's key, not this media: hold every transfer of the
            # tenant (all workers) for as long as Titan asked.
            wait = (
                exc.retry_after if exc.retry_after is not None else res.settings.retry_base_seconds
            )
            _hold(res, tenant, timedelta(seconds=wait), "titan answered 429")
        return _retry_later(res, tenant, row, exc)
    finally:
        if titan is not None and titan.exhausted:
            titan.exhausted = False
            _hold(res, tenant, fairness.EXHAUSTED_HOLD, "titan's rate limit window is used up")


def _pause_tenant(res: WorkerResources, tenant: Tenant, exc: TenantError) -> None:
    with session_scope(res.engine) as session:
        if pauses.pause(
            session, tenant_id=tenant.saved_id, reason=str(exc), now=utcnow(), auto=True
        ):
            audit.record(
                session,
                actor="worker",
                action="tenant.pause",
                tenant_id=tenant.id,
                tenant=tenant.name,
                detail={"reason": str(exc), "auto": True},
            )
            log.error(
                "tenant paused: %s; its media waits until it is fixed "
                "(titan-archiver tenants update / check / resume)",
                exc,
                extra={"tenant": tenant.name, "outcome": "paused"},
            )
    res.forget_tenant(tenant.saved_id)


def _record_archived(
    res: WorkerResources,
    tenant: Tenant,
    row: Media,
    outcome: lifecycle.Transferred,
    started: float,
) -> Result:
    """Mark the row archived (asking for its renditions in the same statement when it gets
    them), with its notification in the same transaction; log the transfer."""
    now = utcnow()
    render = (
        tenant.renditions
        and renditions.renderable(row.message_type, row.mime_type)
        and renditions.located(
            object_key=outcome.object_key,
            s3_url=outcome.s3_url,
            bucket=outcome.bucket,
            tenant_bucket=tenant.s3_bucket,
        )
        is not None
    )
    if render:
        outcome = replace(outcome, render_state=RenderState.PENDING.value)
    # A tenant with a notification endpoint gets its event in the same transaction.
    engine = transactional(res.engine) if tenant.notify_url else res.engine
    pk, attempt = row.saved_pk, row.attempts
    with tracing.span("record archived"), session_scope(engine) as session:
        mine = lifecycle.mark_archived(session, pk=pk, attempt=attempt, now=now, outcome=outcome)
        if mine:
            notify.enqueue(session, tenant=tenant, pk=pk, event=notify.ARCHIVED, now=now)
    if not mine:
        return Result("skipped", "lease lost to another worker; its outcome stands")
    seconds = time.monotonic() - started
    log.info(
        "media archived",
        extra={
            "tenant": tenant.name,
            "session": row.session,
            "mediaId": row.media_id,
            "outcome": "archived",
            "bytes": outcome.size,
            "attempt": attempt,
            "durationMs": round(seconds * 1000, 1),
        },
    )
    return Result("archived", size=outcome.size, seconds=seconds, render=render)


def _hold(res: WorkerResources, tenant: Tenant, wait: timedelta, why: str) -> None:
    until = utcnow() + wait
    with session_scope(res.engine) as session:
        if fairness.hold(session, tenant_id=tenant.saved_id, until=until):
            log.info(
                "tenant held for %.1fs: %s",
                wait.total_seconds(),
                why,
                extra={"tenant": tenant.name, "outcome": "throttled"},
            )


def _retry_later(res: WorkerResources, tenant: Tenant, row: Media, exc: TransientError) -> Result:
    """Schedule the next attempt on the row, or fail it once its retry horizon has passed."""
    settings = res.settings
    assert row.received_at is not None
    now = utcnow()
    deadline = horizon(row.received_at, row.message_at, seconds=settings.retry_horizon_seconds)
    delay = retry_delay(
        row.attempts,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
        retry_after=exc.retry_after,
    )
    due = next_attempt(now=now, delay=delay, deadline=deadline)
    if due is None:
        days = settings.retry_horizon_seconds / 86400
        return _fail(
            res,
            row,
            f"expired before it could be archived: still failing {days:g} days after the "
            f"message (ARCHIVER_RETRY_HORIZON_SECONDS); last error: {exc}",
            tenant=tenant,
        )
    with tracing.span("record retrying"), session_scope(res.engine) as session:
        lifecycle.mark_retrying(
            session, pk=row.saved_pk, attempt=row.attempts, now=now, error=str(exc), due=due
        )
    wait = (due - now).total_seconds()
    log.info(
        "transfer failed, retry in %.1fs: %s",
        wait,
        exc,
        extra={
            "tenant": tenant.name,
            "mediaId": row.media_id,
            "outcome": "retrying",
            "attempt": row.attempts,
        },
    )
    return Result("retrying", str(exc), retry_in=wait)


def _hand_back(res: WorkerResources, row: Media, reason: str) -> Result:
    """The row's tenant is paused: give the row and its attempt back; it waits for a resume."""
    with session_scope(res.engine) as session:
        lifecycle.release(session, pk=row.saved_pk, attempt=row.attempts, now=utcnow())
    return Result("paused", reason)


def _tenant_or_none(res: WorkerResources, row: Media) -> Tenant | None:
    """The row's tenant as stored (for its notification endpoint): no secret is opened."""
    with session_scope(res.engine) as session:
        return session.get(Tenant, row.tenant_id)


def _fail(res: WorkerResources, row: Media, reason: str, *, tenant: Tenant | None) -> Result:
    now = utcnow()
    notifying = tenant is not None and bool(tenant.notify_url)
    engine = transactional(res.engine) if notifying else res.engine
    with tracing.span("record failed"), session_scope(engine) as session:
        mine = lifecycle.mark_failed(
            session, pk=row.saved_pk, attempt=row.attempts, now=now, error=reason
        )
        if mine and tenant is not None:
            notify.enqueue(session, tenant=tenant, pk=row.saved_pk, event=notify.FAILED, now=now)
    log.warning(
        "media failed: %s",
        reason,
        extra={"mediaId": row.media_id, "outcome": "failed", "attempt": row.attempts},
    )
    return Result("failed", reason)


def _download(
    res: WorkerResources, tenant: Tenant, *, s3: S3Client, titan: TitanClient, row: Media
) -> lifecycle.Transferred:
    settings = res.settings
    pk, attempt = row.saved_pk, row.attempts
    assert row.received_at is not None
    key = object_key(
        settings.object_key_template,
        prefix=tenant.s3_prefix,
        tenant=tenant.name,
        session=row.session,
        media_id=row.media_id,
        mime_type=row.mime_type,
        when=row.message_at or row.received_at,
        chat=row.chat,
    )
    if row.upload_id:
        # An earlier attempt died mid-upload: remove its parts before starting afresh.
        abort_upload(s3, bucket=tenant.s3_bucket, key=key, upload_id=row.upload_id)
        with session_scope(res.engine) as session:
            lifecycle.set_upload_id(session, pk=pk, attempt=attempt, upload_id=None)
    if attempt > 1:
        # One may also have died before it could record its upload's id.
        abort_stale_uploads(s3, bucket=tenant.s3_bucket, key=key)
    lease_check = time.monotonic()

    def keep_lease(_: int) -> None:
        nonlocal lease_check
        if time.monotonic() - lease_check < settings.lease_seconds / 3:
            return
        lease_check = time.monotonic()
        with session_scope(res.engine) as session:
            ours = lifecycle.renew_lease(
                session, pk=pk, attempt=attempt, now=utcnow(), lease_seconds=settings.lease_seconds
            )
        if not ours:
            raise TransientError("lease lost to another worker")

    def remember_upload(upload_id: str) -> None:
        with session_scope(res.engine) as session:
            lifecycle.set_upload_id(session, pk=pk, attempt=attempt, upload_id=upload_id)

    # The download streams into the upload: two sibling spans over the same transfer.
    download = tracing.start("titan download", kind=tracing.CLIENT)
    try:
        with titan.download(row.session, row.media_id) as body:
            expected = [n for n in (body.content_length, row.file_length) if n is not None]
            with tracing.span(
                "s3 upload",
                kind=tracing.CLIENT,
                attributes={"aws.s3.bucket": tenant.s3_bucket, "aws.s3.key": key},
            ) as upload:
                stored = put_stream(
                    s3,
                    bucket=tenant.s3_bucket,
                    key=key,
                    chunks=body.chunks,
                    content_type=row.mime_type or body.content_type or "application/octet-stream",
                    part_size=settings.part_size,
                    parts_in_flight=settings.upload_parts_in_flight,
                    budget=buffers.budget(settings.worker_buffer_bytes),
                    expected_sizes=expected,
                    on_part=keep_lease,
                    on_upload_started=remember_upload,
                    checksum=settings.s3_checksum,
                    object_lock=worm.lock_fields(tenant, utcnow()),
                )
                if upload is not None:
                    upload.set_attribute("archiver.bytes", stored.size)
    except Exception as exc:
        tracing.end(download, error=f"{type(exc).__name__}: {exc}")
        raise
    tracing.end(download, attributes={"http.response.body.size": stored.size})
    return lifecycle.Transferred(
        bucket=stored.bucket,
        object_key=stored.key,
        sha256=stored.sha256,
        etag=stored.etag[:128] if stored.etag else None,
        size=stored.size,
        s3_url=f"s3://{stored.bucket}/{stored.key}",
        # Hashed on the way in, every part checked by the bucket on arrival.
        verified_at=utcnow(),
    )


def _verify_persisted(
    res: WorkerResources, tenant: Tenant, row: Media, persisted: lifecycle.Transferred
) -> lifecycle.Transferred:
    """Titan says the file is in the tenant's bucket: read it back (streamed, once) for its
    size and SHA-256. Not there (yet) is a transient failure, retried until the row's
    horizon and then failed with that reason; a file stored outside the tenant's bucket is
    recorded unverified (nothing of ours can read it)."""
    place = renditions.located(
        object_key=None, s3_url=persisted.s3_url, bucket=None, tenant_bucket=tenant.s3_bucket
    )
    if place is None:
        log.warning(
            "persisted outside the tenant's bucket: not verified",
            extra={"tenant": tenant.name, "mediaId": row.media_id},
        )
        return persisted
    bucket, key = place
    try:
        with tracing.span("s3 verify", kind=tracing.CLIENT):
            size, sha256 = fixity.read_sha256(res.s3.get(tenant), bucket=bucket, key=key)
    except fixity.ObjectMissing as exc:
        raise TransientError(f"titan reported it persisted, but {exc}") from exc
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3(exc) from exc
    if persisted.size is not None and size != persisted.size:
        raise TransientError(
            f"titan reported {persisted.size} bytes persisted, the bucket holds {size}"
        )
    return replace(persisted, size=size, sha256=sha256, verified_at=utcnow())


def _persist(titan: TitanClient, row: Media) -> lifecycle.Transferred:
    info = titan.persist(row.session, row.media_id)
    if not info.get("s3Url"):
        # The documented persist answer may lack s3Url; the media record has it.
        info = titan.get_media(row.session, row.media_id)
    s3_url = info.get("s3Url")
    if not info.get("persisted") or not isinstance(s3_url, str) or not s3_url:
        raise TransientError("titan did not report the file as persisted")
    length = info.get("fileLength")
    size = length if isinstance(length, int) and not isinstance(length, bool) else None
    return lifecycle.Transferred(s3_url=s3_url[:2048], size=size)
