"""The one way the API and the dashboard hand out a file: a 307 to a short-lived presigned
URL (ARCHIVER_PRESIGN_TTL_SECONDS), never cached, inline only for plain media."""

from __future__ import annotations

from starlette.responses import RedirectResponse

from archiver.infra.buckets import key_in_bucket, presign_get
from archiver.tables import Media, Tenant
from receiver.resources import Resources


def original_key(row: Media, tenant: Tenant) -> str | None:
    """Where the row's file sits in the tenant's bucket: the key we wrote, or the one in
    the URL Titan persisted it at; None when that URL is outside the tenant's bucket."""
    if row.object_key is not None:
        return row.object_key
    return key_in_bucket(row.s3_url, bucket=tenant.s3_bucket) if row.s3_url else None


def to_object(
    res: Resources,
    tenant: Tenant,
    row: Media,
    *,
    key: str,
    mime_type: str | None,
    filename: str | None = None,
) -> RedirectResponse:
    """307 to the object ``key`` of ``row``'s bucket (``mime_type`` None: an attachment)."""
    url = presign_get(
        res.s3.get(tenant),
        bucket=row.bucket or tenant.s3_bucket,
        key=key,
        ttl=res.settings.presign_ttl_seconds,
        mime_type=mime_type,
        filename=filename,
    )
    return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
