"""Preflight checks of a tenant's settings: does Titan accept its key, and may it write to its
bucket the way the worker does (put, head, delete, multipart; for the persist strategy, where
Titan writes, only read)? Run by ``tenants check`` and
before ``tenants add`` and ``tenants update`` store anything."""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

import httpx
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import Engine
from sqlmodel import col, select

from archiver.governance import audit, worm
from archiver.infra.buckets import make_s3_client
from archiver.infra.db import session_scope
from archiver.object_keys import normalise_prefix
from archiver.scheduling import pauses
from archiver.settings import Settings
from archiver.tables import Strategy, Tenant
from archiver.tenants.tenants import TenantChanges, TenantSpec, secrets_of, updated_spec

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

PROBE_SESSION = "titan-archiver-check"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    """One check: what was tried, whether it worked, and what to do if not."""

    check: str
    ok: bool
    detail: str


def check_titan(spec: TenantSpec, *, timeout: float) -> Finding:
    """An authenticated media call for a media id that cannot exist: 404 means the key was
    accepted; 401/403 that it was not (expired, disabled, or missing the media scope)."""
    media_id = "preflight-" + uuid.uuid4().hex
    url = f"{spec.titan_url.rstrip('/')}/api/sessions/{PROBE_SESSION}/media/{quote(media_id)}"
    headers = {"Authorization": f"Bearer {spec.titan_api_key}", "Accept": "application/json"}
    try:
        answer = httpx.get(url, headers=headers, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Finding(
            "titan", False, f"Titan at {spec.titan_url} unreachable: {type(exc).__name__}"
        )
    if answer.status_code in (401, 403):
        return Finding(
            "titan",
            False,
            f"Titan refused the API key ({answer.status_code}): it is wrong, expired, disabled "
            "or lacks the media scope; give a working server API key (titan_...)",
        )
    if answer.status_code == 404 or answer.is_success:
        return Finding("titan", True, f"Titan accepted the API key ({answer.status_code})")
    return Finding("titan", False, f"Titan answered {answer.status_code}; try again later")


def check_bucket(spec: TenantSpec, settings: Settings) -> list[Finding]:
    """Put, read and delete a probe object, then open and abort a multipart upload."""
    s3 = _client(spec, settings)
    bucket = spec.s3_bucket
    key = f"{normalise_prefix(spec.s3_prefix)}.titan-archiver-check/{uuid.uuid4().hex}"
    findings = []
    steps: list[tuple[str, str, Callable[[S3Client, str, str], None]]] = [
        ("bucket write", "s3:PutObject", _put),
        ("bucket read", "s3:GetObject", _head),
        ("bucket delete", "s3:DeleteObject", _delete),
        ("multipart upload", "s3:PutObject and s3:AbortMultipartUpload", _multipart),
    ]
    if spec.strategy == Strategy.PERSIST:
        # Titan writes this tenant's files itself; the archiver only presigns reads of them.
        steps = [("bucket read", "s3:GetObject", _head_missing)]
    for name, right, step in steps:
        try:
            step(s3, bucket, key)
        except (ClientError, BotoCoreError) as exc:
            reason = f"{_reason(exc)} on bucket {bucket!r}; it needs {right}"
            findings.append(Finding(name, False, reason))
            if name == "bucket write":
                break  # nothing was written: the other steps would only fail the same way
        else:
            findings.append(Finding(name, True, f"{right} on bucket {bucket!r}"))
    return findings


def lock_problem(spec: TenantSpec, settings: Settings) -> str | None:
    """Why the tenant's bucket cannot hold objects under S3 Object Lock (None: it can)."""
    return worm.bucket_problem(_client(spec, settings), spec.s3_bucket)


def _client(spec: TenantSpec, settings: Settings) -> S3Client:
    """An S3 client with the settings the operator gave (not stored yet)."""
    return make_s3_client(
        endpoint=spec.s3_endpoint,
        region=spec.s3_region,
        access_key_id=spec.s3_access_key_id,
        secret_access_key=spec.s3_secret_access_key,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        ca_bundle=spec.s3_ca_bundle,
    )


def check_tenant(spec: TenantSpec, settings: Settings) -> list[Finding]:
    """Every check of ``spec``: Titan first, then the bucket."""
    timeout = min(settings.titan_connect_timeout, 10.0)
    return [check_titan(spec, timeout=timeout), *check_bucket(spec, settings)]


PROBE = b"titan-archiver preflight"


def _md5(data: bytes) -> str:
    """Content-MD5: a bucket with Object Lock refuses writes without a checksum."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def _put(s3: S3Client, bucket: str, key: str) -> None:
    s3.put_object(
        Bucket=bucket, Key=key, Body=PROBE, ContentType="text/plain", ContentMD5=_md5(PROBE)
    )


def _head(s3: S3Client, bucket: str, key: str) -> None:
    s3.head_object(Bucket=bucket, Key=key)


def _head_missing(s3: S3Client, bucket: str, key: str) -> None:
    """A read of an object that is not there: 404 when reads are allowed, 403 when not."""
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
            raise


def _delete(s3: S3Client, bucket: str, key: str) -> None:
    s3.delete_object(Bucket=bucket, Key=key)


def _multipart(s3: S3Client, bucket: str, key: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    try:
        s3.upload_part(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            PartNumber=1,
            Body=b"probe",
            ContentMD5=_md5(b"probe"),
        )
    finally:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return str(error.get("Code") or error.get("Message") or "refused")
    return f"unreachable ({type(exc).__name__})"


def probe_paused(engine: Engine, settings: Settings) -> list[str]:
    """Check every tenant a worker paused; resume those whose settings work again (an
    operator's pause stays until an operator resumes). Return the tenants resumed."""
    box = settings.secret_box()
    with session_scope(engine) as session:
        waiting = [
            (t.saved_id, t.name, updated_spec(t, secrets_of(t, box=box), TenantChanges()))
            for t in session.exec(select(Tenant).where(col(Tenant.paused_auto)))
            if t.paused_at is not None
        ]
    resumed = []
    for tenant_id, name, spec in waiting:
        failed = [f for f in check_tenant(spec, settings) if not f.ok]
        if failed:
            log.info("tenant %s still paused: %s", name, failed[0].detail, extra={"tenant": name})
            continue
        with session_scope(engine) as session:
            if pauses.resume(session, tenant_id=tenant_id):
                audit.record(
                    session,
                    actor="probe",
                    action="tenant.resume",
                    tenant_id=tenant_id,
                    tenant=name,
                    detail={"auto": True},
                )
                resumed.append(name)
                log.warning(
                    "tenant %s resumed: its settings work again", name, extra={"tenant": name}
                )
    return resumed
