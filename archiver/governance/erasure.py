"""Deleting media for good: a tenant's retention period, an explicit erasure (a data-subject
request), and revoked media of a tenant that erases them. Objects first (every version of
the key, in a versioned bucket), then the row.

Safety, in order of importance:
- One tenant at a time: every row query is confined to the tenant's id, and objects are
  deleted only at the bucket and key the tenant's own row records, with the tenant's own
  credentials. Nothing here lists a bucket beyond the exact key of such a row.
- A row a worker is transferring right now (``archiving``) is left alone and counted
  ``inFlight``: erasing under it would leave the worker's upload behind. Run again later.
- A row is deleted only if it did not change while its object was deleted (fenced on its
  status and ``updated_at``), so a retry that began in between is never lost track of.
- Retention never touches a row under legal hold; an explicit erasure skips them too unless
  told to include them, and says how many it kept.
- Bounded: rows are read ``batch`` at a time, at most ``max_batches`` pages per call (the
  beat's pass). A page's objects are deleted ``CONCURRENCY`` at a time (each a round trip or
  two to a bucket that may be far away), then its rows in one statement, each fenced as
  above (docs/performance.md has the rates).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import col

from archiver.errors import TenantError
from archiver.governance import audit, ledger, worm
from archiver.infra.buckets import key_in_bucket
from archiver.infra.db import session_scope, transactional
from archiver.media import renditions
from archiver.tables import Media, Status, Tenant, utcnow

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
BATCH = 200
CONCURRENCY = 8  # object deletions at once (a tenant's S3 client pools 10 connections)
_TERMINAL = (Status.ARCHIVED.value, Status.FAILED.value)


@dataclass(frozen=True)
class Selector:
    """Which of a tenant's rows: exactly one way of choosing is set."""

    media_ids: tuple[str, ...] = ()
    sender: str | None = None  # phone number or lid (either column)
    chat: str | None = None
    received_before: datetime | None = None  # retention: terminal rows only
    revoked: bool = False  # rows whose message was revoked or deleted
    include_held: bool = False  # legal hold exempts a row unless this is set (never for retention)

    def describe(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        if self.media_ids:
            found["ids"] = list(self.media_ids)
        if self.sender is not None:
            found["sender"] = self.sender
        if self.chat is not None:
            found["chat"] = self.chat
        if self.received_before is not None:
            found["receivedBefore"] = self.received_before.isoformat().replace("+00:00", "Z")
        if self.revoked:
            found["revoked"] = True
        if self.include_held:
            found["includeHeld"] = True
        return found

    def where(self, tenant_id: int) -> list[ColumnElement[bool]]:
        clauses: list[ColumnElement[bool]] = [col(Media.tenant_id) == tenant_id]
        if self.media_ids:
            clauses.append(col(Media.media_id).in_(self.media_ids))
        if self.sender is not None:
            clauses.append(
                or_(col(Media.sender) == self.sender, col(Media.sender_lid) == self.sender)
            )
        if self.chat is not None:
            clauses.append(col(Media.chat) == self.chat)
        if self.received_before is not None:
            clauses.append(col(Media.received_at) < self.received_before)
            clauses.append(col(Media.status).in_(_TERMINAL))
        if self.revoked:
            clauses.append(col(Media.revoked_at).is_not(None))
        if len(clauses) == 1:
            raise ValueError("an erasure must say which rows: ids, sender, chat, age or revoked")
        return clauses


@dataclass
class Erased:
    """What one erasure removed, and what it left and why."""

    rows: int = 0
    objects: int = 0  # object versions (and delete markers) deleted
    bytes: int = 0  # size of the rows deleted
    held: int = 0  # rows kept under legal hold
    in_flight: int = 0  # rows being transferred (or changed) meanwhile: kept, run again
    errors: list[str] = field(default_factory=list)  # objects the bucket refused to delete
    # Rows whose objects S3 Object Lock keeps ("<media id>: locked until ..."): kept whole.
    locked: list[str] = field(default_factory=list)
    media_ids: list[str] = field(default_factory=list)  # the first 1,000 erased

    def doc(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "objects": self.objects,
            "bytes": self.bytes,
            "held": self.held,
            "inFlight": self.in_flight,
            "errors": self.errors[:20],
            "locked": self.locked[:1000],
            "mediaIds": self.media_ids,
        }


S3For = Callable[[Tenant], "S3Client"]


def erase(
    engine: Engine,
    tenant: Tenant,
    selector: Selector,
    *,
    s3_for: S3For,
    batch: int = BATCH,
    max_batches: int | None = None,
    bypass_governance: bool = False,
) -> Erased:
    """Erase the tenant's rows ``selector`` names, and their objects; see the module doc.

    Objects S3 Object Lock retains (or holds) are not touched, nor their rows: each is
    reported in ``locked``. ``bypass_governance`` deletes governance-mode objects before
    their date (the caller audits it); compliance mode and legal holds never give way."""
    selector.where(tenant.saved_id)  # refuses a selector that names no rows, before anything
    deleting = partial(_delete_objects, bypass=bypass_governance)
    with ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="erase") as pool:
        return _erase_pages(
            engine, tenant, selector, s3_for, batch, max_batches, pool, Erased(), deleting
        )


def _erase_pages(
    engine: Engine,
    tenant: Tenant,
    selector: Selector,
    s3_for: S3For,
    batch: int,
    max_batches: int | None,
    pool: ThreadPoolExecutor,
    done: Erased,
    deleting: Callable[..., tuple[int, str | None, str | None]],
) -> Erased:
    tenant_id = tenant.saved_id
    where = selector.where(tenant_id)
    after: tuple[datetime, int] | None = None
    batches = 0
    versioned: dict[str, bool] = {}  # per bucket: may it hold older versions of a key?
    while max_batches is None or batches < max_batches:
        batches += 1
        with session_scope(engine) as session:
            query = select(Media).where(*where)
            if after is not None:
                query = query.where(tuple_(col(Media.received_at), col(Media.pk)) > tuple_(*after))
            query = query.order_by(col(Media.received_at), col(Media.pk)).limit(batch)
            rows = list(session.execute(query).scalars())
        if not rows:
            break
        last = rows[-1]
        assert last.received_at is not None and last.pk is not None
        after = (last.received_at, last.pk)
        retention = selector.received_before is not None or selector.revoked
        chosen = []
        for row in rows:
            if row.legal_hold and (retention or not selector.include_held):
                done.held += 1
            elif row.status == Status.ARCHIVING.value:
                done.in_flight += 1
            else:
                chosen.append(row)
        cleared = []
        if chosen:
            s3 = s3_for(tenant)
            for place in {_location(tenant, row) for row in chosen}:
                if place is not None and place[0] not in versioned:
                    versioned[place[0]] = _versioned(s3, place[0])
            outcomes = pool.map(partial(deleting, s3, tenant, versioned), chosen)
            for row, (objects, error, locked) in zip(chosen, outcomes, strict=True):
                done.objects += objects
                if locked is not None:
                    done.locked.append(f"{row.media_id}: {locked}")
                elif error is None:
                    cleared.append(row)
                else:
                    done.errors.append(error)
        gone = _delete_rows(engine, tenant_id, cleared)
        for row in cleared:
            if row.pk not in gone:
                done.in_flight += 1  # changed while its object went: kept, run again
                continue
            done.rows += 1
            done.bytes += row.size or 0
            if len(done.media_ids) < 1000:
                done.media_ids.append(row.media_id)
        if len(rows) < batch:
            break
    return done


def _delete_rows(engine: Engine, tenant_id: int, rows: list[Media]) -> set[int]:
    """Delete ``rows`` in one statement, each only if unchanged since it was read, and seal
    their erasure in the ledger in the same transaction; the pks that went."""
    if not rows:
        return set()
    unchanged = [
        and_(
            col(Media.pk) == row.pk,
            col(Media.status) == row.status,
            col(Media.updated_at) == row.updated_at,
        )
        for row in rows
    ]
    with session_scope(transactional(engine)) as session:
        answer = session.connection().execute(
            delete(Media)
            .where(col(Media.tenant_id) == tenant_id, or_(*unchanged))
            .returning(col(Media.pk))
        )
        gone = {int(pk) for (pk,) in answer if pk is not None}
        ledger.record_erasures(
            session, tenant_id, [row for row in rows if row.pk in gone], at=utcnow()
        )
        return gone


def erase_recorded(
    engine: Engine,
    tenant: Tenant,
    selector: Selector,
    *,
    s3_for: S3For,
    actor: str,
    bypass_governance: bool = False,
) -> Erased:
    """An explicit erasure (CLI, admin API), with its audit record: who asked, which rows
    were named, whether governance retention was bypassed, and what was removed."""
    done = erase(engine, tenant, selector, s3_for=s3_for, bypass_governance=bypass_governance)
    detail = selector.describe() | {k: v for k, v in done.doc().items() if k != "mediaIds"}
    if bypass_governance:
        detail["bypassGovernance"] = True
    with session_scope(engine) as session:
        audit.record(
            session,
            actor=actor,
            action="media.erase",
            tenant_id=tenant.id,
            tenant=tenant.name,
            detail=detail,
        )
    log.info(
        "erased %d rows and %d objects (%d held, %d locked, %d in flight, %d errors)",
        done.rows,
        done.objects,
        done.held,
        len(done.locked),
        done.in_flight,
        len(done.errors),
        extra={"tenant": tenant.name, "outcome": "erased"},
    )
    return done


def set_hold(
    engine: Engine,
    tenant: Tenant,
    media_ids: list[str],
    *,
    held: bool,
    actor: str,
    s3_for: S3For | None = None,
) -> int:
    """Put rows under legal hold (or release them); how many rows matched. A tenant with S3
    Object Lock also gets the bucket's legal hold on each object (original and renditions)
    first, so the row never claims a hold the bucket does not have."""
    if tenant.object_lock_mode is not None and s3_for is not None:
        with session_scope(engine) as session:
            rows = list(
                session.execute(
                    select(Media).where(
                        col(Media.tenant_id) == tenant.saved_id, col(Media.media_id).in_(media_ids)
                    )
                ).scalars()
            )
        s3 = s3_for(tenant)
        for row in rows:
            place = _location(tenant, row)
            if place is not None and row.status in (Status.ARCHIVED, Status.DAMAGED):
                bucket, key = place
                keys = [key, *renditions.keys(row.renditions)]
                try:
                    worm.set_legal_hold(s3, bucket=bucket, keys=keys, on=held)
                except (ClientError, BotoCoreError) as exc:
                    raise TenantError(
                        f"the bucket refused the legal hold on {bucket}/{key}: "
                        f"{_code(exc)}; the rows were not changed"
                    ) from exc
    with session_scope(engine) as session:
        changed = (
            session.connection()
            .execute(
                update(Media)
                .where(col(Media.tenant_id) == tenant.saved_id, col(Media.media_id).in_(media_ids))
                .values(legal_hold=held)
            )
            .rowcount
        )
        audit.record(
            session,
            actor=actor,
            action="media.hold" if held else "media.release",
            tenant_id=tenant.id,
            tenant=tenant.name,
            detail={"ids": media_ids, "rows": changed},
        )
    return int(changed)


def _code(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "refused")
    return type(exc).__name__


def _location(tenant: Tenant, row: Media) -> tuple[str, str] | None:
    """(bucket, key) of the row's object, as the row records it; None if it has none."""
    bucket = row.bucket or tenant.s3_bucket
    if row.object_key:
        return bucket, row.object_key
    if row.s3_url:
        key = key_in_bucket(row.s3_url, bucket=bucket)
        if key:
            return bucket, key
    return None


def _versioned(s3: S3Client, bucket: str) -> bool:
    """Whether ``bucket`` has ever had versioning on (then a key may have older versions to
    delete one by one); True when the bucket will not say, so nothing is left behind."""
    try:
        return bool(s3.get_bucket_versioning(Bucket=bucket).get("Status"))
    except (ClientError, BotoCoreError):
        return True


def _delete_objects(
    s3: S3Client,
    tenant: Tenant,
    versioned: dict[str, bool],
    row: Media,
    *,
    bypass: bool = False,
) -> tuple[int, str | None, str | None]:
    """Delete every version of the row's object and of its renditions (and an unfinished
    upload): (versions deleted, None, None); (0, the error, None) if the bucket refused, or
    (0, None, why) if S3 Object Lock keeps one of them: then nothing of the pair is deleted
    and the row stays, so the erasure can be rerun. Runs in the erasure's threads: it
    touches no shared state."""
    place = _location(tenant, row)
    if place is None:
        return 0, None, None  # never archived (queued, retrying, failed first): no object
    bucket, key = place
    keys = [key, *renditions.keys(row.renditions)]
    try:
        if tenant.object_lock_mode is not None:
            # Checked for the whole pair first: never a rendition gone and its original kept.
            now = utcnow()
            for each in keys:
                why = worm.why_locked(
                    s3, bucket=bucket, key=each, now=now, bypass_governance=bypass
                )
                if why is not None:
                    return 0, None, why
        if row.upload_id:
            with suppress(ClientError):  # already completed or aborted
                s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=row.upload_id)
        deleted = 0
        # The original and its renditions (thumbnail, m4a), which sit beside it.
        for each in keys:
            if not versioned.get(bucket, True):
                # Never versioned: the key has one object, and one delete removes it for good.
                _delete(s3, bucket, each, None, bypass=bypass)
                deleted += 1
            else:
                deleted += _delete_versions(s3, bucket, each, bypass=bypass)
        return deleted, None, None
    except (ClientError, BotoCoreError) as exc:
        reason = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else ""
        message = f"{bucket}/{key}: {reason or type(exc).__name__}"
        log.warning("erasure: object not deleted: %s", message, extra={"tenant": tenant.name})
        return 0, message, None


def _delete_versions(s3: S3Client, bucket: str, key: str, *, bypass: bool = False) -> int:
    """Delete each version and delete marker of exactly ``key``; a bucket that never had
    versioning answers its one "null" version. Where listing versions is not supported
    (some S3-compatible stores), a plain delete."""
    deleted = 0
    try:
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=key)
        versions: list[str] = []
        for page in pages:
            for entry in [*page.get("Versions", []), *page.get("DeleteMarkers", [])]:
                if entry.get("Key") == key:
                    versions.append(str(entry.get("VersionId") or "null"))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code not in {"NotImplemented", "MethodNotAllowed", "501", "405"}:
            raise
        s3.delete_object(Bucket=bucket, Key=key)
        return 1
    for version in versions:
        _delete(s3, bucket, key, version, bypass=bypass)
        deleted += 1
    return deleted


def _delete(s3: S3Client, bucket: str, key: str, version: str | None, *, bypass: bool) -> None:
    """One delete; the governance bypass header only when asked (stores without Object Lock
    need never see it)."""
    if version is None:
        if bypass:
            s3.delete_object(Bucket=bucket, Key=key, BypassGovernanceRetention=True)
        else:
            s3.delete_object(Bucket=bucket, Key=key)
    elif bypass:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version, BypassGovernanceRetention=True)
    else:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)


def count_matching(engine: Engine, tenant: Tenant, selector: Selector) -> int:
    """How many rows ``selector`` names (held and in-flight included): for a dry run."""
    with session_scope(engine) as session:
        query = select(func.count()).select_from(Media).where(*selector.where(tenant.saved_id))
        return int(session.execute(query).scalar_one())
