"""Fixity: read archived objects back and show they are still the bytes we archived.

The beat audits each tenant within a daily byte budget (``ARCHIVER_FIXITY_BYTES_PER_DAY``),
the least recently verified rows first; ``titan-archiver media verify`` audits what it is
told to, at once. A row whose object is gone, or whose bytes hash differently, becomes
``damaged`` (kept as evidence, counted, alerted on); a bucket that merely fails to answer
leaves the row as it was, for the next pass. A row archived without a SHA-256 (media Titan
persisted before we verified those) gets its first one recorded.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from archiver.infra.db import session_scope
from archiver.media import renditions
from archiver.tables import Media, Status, Tenant

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
READ_BLOCK = 1024 * 1024
MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}

S3For = Callable[[Tenant], "S3Client"]


class ObjectMissing(Exception):
    """The bucket says the object is not there."""


def read_sha256(s3: S3Client, *, bucket: str, key: str) -> tuple[int, str]:
    """(size, SHA-256) of the object, streamed a block at a time (flat memory whatever its
    size). ObjectMissing when the bucket says it is not there; any other bucket error is
    raised as it came (ClientError, BotoCoreError): the bucket failed, not the file."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in MISSING:
            raise ObjectMissing(f"s3://{bucket}/{key} is not in the bucket") from exc
        raise
    digest, size = hashlib.sha256(), 0
    try:
        for chunk in body.iter_chunks(READ_BLOCK):
            digest.update(chunk)
            size += len(chunk)
    finally:
        body.close()
    return size, digest.hexdigest()


@dataclass
class Audit:
    """What one audit found."""

    checked: int = 0
    ok: int = 0
    bytes: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (media id, why)
    errors: int = 0  # the bucket did not answer: left for the next pass

    def merge(self, other: Audit) -> None:
        self.checked += other.checked
        self.ok += other.ok
        self.bytes += other.bytes
        self.damaged += other.damaged
        self.errors += other.errors

    def doc(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "ok": self.ok,
            "bytes": self.bytes,
            "damaged": len(self.damaged),
            "damagedIds": [media_id for media_id, _ in self.damaged[:1000]],
            "errors": self.errors,
        }


def problem_with(row: Media, size: int, sha256: str) -> str | None:
    """Why the bytes read back are not the row's (None: they are). Pure."""
    if row.size is not None and size != row.size:
        return f"fixity: {size} bytes in the bucket, {row.size} archived"
    if row.sha256 is not None and sha256 != row.sha256:
        return f"fixity: SHA-256 {sha256[:16]}... in the bucket, {row.sha256[:16]}... archived"
    return None


def audit_rows(
    engine: Engine,
    tenant: Tenant,
    rows: list[Media],
    *,
    s3: S3Client,
    now: datetime,
    progress: Callable[[int], None] | None = None,
) -> Audit:
    """Read back each row's object and record what was found."""
    found = Audit()
    for row in rows:
        place = renditions.located(
            object_key=row.object_key,
            s3_url=row.s3_url,
            bucket=row.bucket,
            tenant_bucket=tenant.s3_bucket,
        )
        if place is None:  # stored outside the tenant's bucket: nothing of ours to read
            continue
        bucket, key = place
        try:
            size, sha256 = read_sha256(s3, bucket=bucket, key=key)
        except ObjectMissing as exc:
            _record(engine, row, now=now, damaged=f"fixity: {exc}")
            found.damaged.append((row.media_id, str(exc)))
        except (ClientError, BotoCoreError) as exc:
            found.errors += 1
            log.warning(
                "fixity: the bucket failed reading %s: %s",
                key,
                exc,
                extra={"tenant": tenant.name, "mediaId": row.media_id},
            )
        else:
            found.bytes += size
            why = problem_with(row, size, sha256)
            if why is None:
                _record(engine, row, now=now, sha256=sha256 if row.sha256 is None else None)
                found.ok += 1
            else:
                _record(engine, row, now=now, damaged=why)
                found.damaged.append((row.media_id, why))
        found.checked += 1
        if progress is not None:
            progress(1)
    for media_id, why in found.damaged:
        log.error(
            "media damaged: %s",
            why,
            extra={"tenant": tenant.name, "mediaId": media_id, "outcome": "damaged"},
        )
    return found


def _record(
    engine: Engine,
    row: Media,
    *,
    now: datetime,
    damaged: str | None = None,
    sha256: str | None = None,
) -> None:
    """The audit's outcome on the row, only if it is still the archived row that was read."""
    values: dict[str, object] = {"audited_at": now}
    if damaged is not None:
        values |= {"status": Status.DAMAGED.value, "last_error": damaged, "updated_at": now}
    else:
        values["verified_at"] = now
        if sha256 is not None:
            values["sha256"] = sha256
    with session_scope(engine) as session:
        session.execute(
            update(Media)
            .where(col(Media.pk) == row.saved_pk, col(Media.status) == Status.ARCHIVED.value)
            .values(**values)
        )


# -- what the beat audits ---------------------------------------------------------------


def read_today(session: Session, *, tenant_id: int, now: datetime) -> int:
    """Bytes audits read back from the tenant's bucket in the last 24 hours."""
    total = session.exec(
        select(func.coalesce(func.sum(Media.size), 0)).where(
            col(Media.tenant_id) == tenant_id,
            col(Media.audited_at).is_not(None),
            col(Media.audited_at) >= now - timedelta(days=1),
        )
    ).one()
    return int(total or 0)


def due(
    session: Session, *, tenant_id: int, budget: int, now: datetime, limit: int = 1000
) -> list[Media]:
    """The tenant's archived rows to read next: the least recently verified first (never
    verified before all), as many as the rest of today's budget covers. A file larger than
    the whole budget is still read, alone, on a day nothing else was."""
    read = read_today(session, tenant_id=tenant_id, now=now)
    left = budget - read
    if left <= 0:
        return []
    query = (
        select(Media)
        .where(col(Media.tenant_id) == tenant_id, col(Media.status) == Status.ARCHIVED.value)
        .order_by(col(Media.verified_at).is_not(None), col(Media.verified_at), col(Media.pk))
        .limit(limit)
    )
    chosen: list[Media] = []
    for row in session.exec(query):
        size = row.size or 0
        if size > left:
            if not chosen and not read:
                chosen.append(row)
            break
        chosen.append(row)
        left -= size
    for row in chosen:
        session.expunge(row)
    return chosen


def selected(
    session: Session, *, tenant_id: int | None, since: datetime | None, after_pk: int, limit: int
) -> Iterator[Media]:
    """Archived rows for ``media verify``: a tenant's or all, archived since ``since``."""
    query = select(Media).where(
        col(Media.status) == Status.ARCHIVED.value, col(Media.pk) > after_pk
    )
    if tenant_id is not None:
        query = query.where(col(Media.tenant_id) == tenant_id)
    if since is not None:
        query = query.where(col(Media.archived_at) >= since)
    for row in session.exec(query.order_by(col(Media.pk)).limit(limit)):
        session.expunge(row)
        yield row


def count_selected(session: Session, *, tenant_id: int | None, since: datetime | None) -> int:
    query = (
        select(func.count()).select_from(Media).where(col(Media.status) == Status.ARCHIVED.value)
    )
    if tenant_id is not None:
        query = query.where(col(Media.tenant_id) == tenant_id)
    if since is not None:
        query = query.where(col(Media.archived_at) >= since)
    return int(session.exec(query).one())


@dataclass(frozen=True)
class TenantAudit:
    tenant: str
    found: Audit


def fixity_pass(engine: Engine, *, s3_for: S3For, now: datetime, budget: int) -> list[TenantAudit]:
    """One pass of the beat: each tenant that is not paused, within its daily budget."""
    with session_scope(engine) as session:
        tenants = list(session.exec(select(Tenant).where(col(Tenant.paused_at).is_(None))))
    passes = []
    for tenant in tenants:
        with session_scope(engine) as session:
            rows = due(session, tenant_id=tenant.saved_id, budget=budget, now=now)
        if rows:
            found = audit_rows(engine, tenant, rows, s3=s3_for(tenant), now=now)
            passes.append(TenantAudit(tenant.name, found))
    return passes
