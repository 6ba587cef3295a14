"""The render task's logic: read an archived file from the tenant's bucket by ranged GETs,
make its renditions (worker/render.py), put them beside the original, record them on the row.

Nothing here can fail or delay the archive: the row is archived before it is asked to
render, a file that cannot be read ends ``render_state`` failed (the archive stands), and a
bucket that fails leaves the row pending for the sweeper to ask again.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import update
from sqlmodel import col, select

from archiver.errors import NotFound
from archiver.governance import worm
from archiver.infra.db import session_scope
from archiver.media import renditions
from archiver.media.renditions import Rendition
from archiver.tables import Media, RenderState, Status, utcnow
from worker.ranged_reader import RangedReader
from worker.render import Made, Unreadable, render
from worker.resources import WorkerResources

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger(__name__)
MAX_ERROR_LEN = 500
MAX_RENDER_ATTEMPTS = 3  # renders of one ask that never finished (worker killed, timed out)
READ_BUFFER = 256 * 1024  # decoders read small pieces; the reader fetches 1 MiB blocks


@dataclass
class Rendered:
    outcome: str  # done, failed, retrying, skipped
    detail: str = ""
    made: list[tuple[str, int]] = field(default_factory=list)  # (kind, bytes)


def render_row(res: WorkerResources, pk: int) -> Rendered:
    started = time.monotonic()
    with session_scope(res.engine) as session:
        row = session.exec(select(Media).where(col(Media.pk) == pk)).one_or_none()
        if row is not None:
            session.expunge(row)
    if row is None or row.status != Status.ARCHIVED.value:
        return Rendered("skipped", "not archived")
    if row.render_state != RenderState.PENDING.value:
        return Rendered("skipped", f"render {row.render_state or 'not asked'}")
    try:
        tenant, _ = res.tenant(row.tenant_id)
    except NotFound:
        return Rendered("skipped", "tenant no longer exists")
    if not tenant.renditions:
        _record(res, row, made=Made(), keys=[], state=RenderState.DONE, error="renditions off")
        return Rendered("skipped", "renditions are off for the tenant")
    attempt = _start(res, row)
    if attempt is None:
        return Rendered("skipped", "rendered meanwhile")
    if attempt > MAX_RENDER_ATTEMPTS:
        why = f"gave up after {attempt - 1} renders that never finished (worker died or timed out)"
        return _failed(res, row, tenant.name, why)
    place = renditions.located(
        object_key=row.object_key,
        s3_url=row.s3_url,
        bucket=row.bucket,
        tenant_bucket=tenant.s3_bucket,
    )
    if place is None:
        why = "the file is stored outside the tenant's bucket"
        _record(res, row, made=Made(), keys=[], state=RenderState.FAILED, error=why)
        return Rendered("failed", why)
    bucket, key = place
    try:
        s3 = res.s3.get(tenant)
        reader = RangedReader(s3, bucket=bucket, key=key, size=_size(s3, row, bucket, key))
    except (ClientError, BotoCoreError) as exc:
        return _bucket_failed(res, row, tenant.name, exc)
    with tempfile.TemporaryDirectory(prefix="render-") as workdir:
        try:
            made = render(
                io.BufferedReader(reader, READ_BUFFER),
                message_type=row.message_type,
                mime_type=row.mime_type,
                workdir=Path(workdir),
            )
        except Unreadable as exc:
            if reader.error is not None:  # the bucket failed, not the file
                return _bucket_failed(res, row, tenant.name, reader.error)
            return _failed(res, row, tenant.name, str(exc))
        except (ClientError, BotoCoreError) as exc:
            return _bucket_failed(res, row, tenant.name, exc)
        try:
            kept = [
                _put(
                    s3,
                    row,
                    bucket,
                    key,
                    kind,
                    path,
                    checksum=res.settings.s3_checksum,
                    lock=worm.lock_fields(tenant, utcnow()),
                )
                for kind, path in sorted(made.files.items())
            ]
        except (ClientError, BotoCoreError, OSError) as exc:
            return _bucket_failed(res, row, tenant.name, exc)
    if not _record(res, row, made=made, keys=kept, state=RenderState.DONE, error=None):
        # Erased (or re-archived) meanwhile: what was just written belongs to no row. One
        # refused delete must not leave the others behind.
        for rendition in kept:
            try:
                s3.delete_object(Bucket=bucket, Key=rendition.key)
            except (ClientError, BotoCoreError) as exc:
                log.warning(
                    "rendition of a changed row left in the bucket: %s",
                    exc,
                    extra={"mediaId": row.media_id, "tenant": tenant.name, "key": rendition.key},
                )
        return Rendered("skipped", "the row changed while rendering")
    seconds = time.monotonic() - started
    log.info(
        "renditions made",
        extra={
            "mediaId": row.media_id,
            "tenant": tenant.name,
            "outcome": "rendered",
            "renditions": [r.kind for r in kept],
            "bytes": reader.fetched,
            "durationMs": round(seconds * 1000, 1),
        },
    )
    return Rendered("done", made=[(r.kind, r.size) for r in kept])


def _start(res: WorkerResources, row: Media) -> int | None:
    """Count a render of this ask starting; its number, or None if the ask was answered."""
    with session_scope(res.engine) as session:
        started = session.execute(
            update(Media)
            .where(
                col(Media.pk) == row.pk,
                col(Media.render_state) == RenderState.PENDING.value,
            )
            .values(render_attempts=col(Media.render_attempts) + 1)
            .returning(col(Media.render_attempts))
        ).scalar_one_or_none()
    return None if started is None else int(started)


def _size(s3: S3Client, row: Media, bucket: str, key: str) -> int:
    if row.size is not None and row.object_key:
        return row.size
    # Titan persisted it: its own word for the size may be missing; the bucket knows.
    return int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])


def _failed(res: WorkerResources, row: Media, tenant: str, why: str) -> Rendered:
    """Renditions given up for good (the archive stands)."""
    _record(res, row, made=Made(), keys=[], state=RenderState.FAILED, error=why)
    log.warning(
        "rendition failed: %s",
        why,
        extra={"mediaId": row.media_id, "tenant": tenant, "outcome": "failed"},
    )
    return Rendered("failed", why)


_GONE = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchBucket"})


def _bucket_failed(res: WorkerResources, row: Media, tenant: str, exc: Exception) -> Rendered:
    """The bucket failed: a missing object fails the render for good; anything else leaves
    the row pending, and the sweeper asks again once the render queue has drained."""
    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _GONE:
        return _failed(res, row, tenant, "the archived object is missing from the bucket")
    log.warning(
        "rendition postponed: the bucket failed: %s",
        exc,
        extra={"mediaId": row.media_id, "tenant": tenant, "outcome": "retrying"},
    )
    return Rendered("retrying", str(exc)[:MAX_ERROR_LEN])


def _put(
    s3: S3Client,
    row: Media,
    bucket: str,
    original: str,
    kind: str,
    path: Path,
    *,
    checksum: str,
    lock: dict[str, Any],
) -> Rendition:
    """Put one rendition file beside its original, with a checksum the bucket verifies."""
    digest, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1024 * 1024), b""):
            digest.update(chunk)
            md5.update(chunk)
    sha256 = digest.hexdigest()
    verified = (
        {"ContentMD5": base64.b64encode(md5.digest()).decode()}
        if checksum == "md5"
        else {"ChecksumSHA256": base64.b64encode(digest.digest()).decode()}
    )
    key = renditions.key_for(original, kind)
    mime_type = renditions.MIME_TYPES[kind]
    with path.open("rb") as body:
        s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=body,
            ContentType=mime_type,
            Metadata={"sha256": sha256, "rendition-of": row.media_id[:512]},
            **verified,  # type: ignore[arg-type]
            **lock,  # retained like the original (S3 Object Lock)
        )
    return Rendition(kind, mime_type, key, path.stat().st_size, sha256)


def _record(
    res: WorkerResources,
    row: Media,
    *,
    made: Made,
    keys: list[Rendition],
    state: RenderState,
    error: str | None,
) -> bool:
    """Write what rendering found, if the row still holds the same object; False if not."""
    now: datetime = utcnow()
    with session_scope(res.engine) as session:
        result = session.execute(
            update(Media)
            .where(
                col(Media.pk) == row.pk,
                col(Media.status) == Status.ARCHIVED.value,
                # The same file: not re-archived under another key meanwhile.
                col(Media.object_key) == row.object_key
                if row.object_key
                else col(Media.s3_url) == row.s3_url,
            )
            .values(
                width=made.width,
                height=made.height,
                duration_seconds=made.duration_seconds,
                pages=made.pages,
                renditions=renditions.dumps(keys) if keys else None,
                render_state=state.value,
                render_error=error[:MAX_ERROR_LEN] if error else None,
                updated_at=now,
            )
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
