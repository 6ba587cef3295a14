"""Talking to a tenant's S3-compatible bucket: one isolated client per tenant (cached per
process), error classes, object checks and presigned reads.

Shared because the worker writes objects, the receiver presigns reads and the CLI reconciles.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from archiver.errors import AppError, PayloadError, TenantError, TransientError
from archiver.secrets_box import SecretBox
from archiver.settings import Settings
from archiver.tables import Tenant

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SHA256_METADATA = "sha256"
# Answers about the tenant's credentials or bucket, not about one file.
_TENANT_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "NoSuchBucket",
    "AllAccessDisabled",
    "InvalidBucketName",
}


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    size: int
    sha256: str
    etag: str | None = None  # as the bucket gave it (quotes kept); None if it gave none


def make_s3_client(
    *,
    endpoint: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    connect_timeout: float,
    read_timeout: float,
    ca_bundle: str | None = None,
    max_pool_connections: int = 10,
) -> S3Client:
    """A boto3 S3 client for one tenant's credentials, isolated in its own boto3 session;
    ``ca_bundle`` (PEM text): verify the endpoint against these certificates only;
    ``max_pool_connections``: as many as threads will use the client at once."""
    config = Config(
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"max_attempts": 3, "mode": "standard"},
        # boto3 >= 1.36 adds CRC checksums by default; R2 and some MinIO builds reject them.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if endpoint else "auto"},
        signature_version="s3v4",
    )
    session = boto3.session.Session(
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        region_name=region or "us-east-1",
    )
    verify: str | bool = ca_bundle_file(ca_bundle) if ca_bundle else True
    return session.client("s3", endpoint_url=endpoint or None, config=config, verify=verify)


_bundles: dict[str, str] = {}
_bundles_lock = threading.Lock()


def ca_bundle_file(pem: str) -> str:
    """A file holding ``pem`` (botocore verifies against a path), one per distinct bundle,
    in this process's temporary directory, readable by this user only."""
    import os
    import tempfile

    digest = hashlib.sha256(pem.encode()).hexdigest()
    with _bundles_lock:
        path = _bundles.get(digest)
        if path is None or not os.path.exists(path):
            handle, path = tempfile.mkstemp(prefix=f"archiver-ca-{digest[:12]}-", suffix=".pem")
            with os.fdopen(handle, "w") as out:
                out.write(pem)
            _bundles[digest] = path
        return path


def validate_ca_bundle(pem: str) -> int:
    """How many certificates ``pem`` holds; PayloadError if it holds none or is not PEM."""
    from cryptography import x509

    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise PayloadError("s3-ca-bundle: not PEM certificates") from exc
    return len(certificates)


def tenant_s3_client(
    tenant: Tenant, *, secret_access_key: str | None, settings: Settings, connections: int = 10
) -> S3Client:
    """The S3 client for one tenant's bucket, with the deployment's timeouts."""
    return make_s3_client(
        max_pool_connections=connections,
        endpoint=tenant.s3_endpoint,
        region=tenant.s3_region,
        access_key_id=tenant.s3_access_key_id,
        secret_access_key=secret_access_key,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        ca_bundle=tenant.s3_ca_bundle,
    )


class TenantS3Clients:
    """One process's S3 clients, one per tenant, rebuilt when the tenant's bucket settings or
    credentials change; the secret is decrypted only when a client is (re)built."""

    def __init__(self, *, settings: Settings, box: SecretBox) -> None:
        self._settings = settings
        self._box = box
        self._clients: dict[int, tuple[str, S3Client]] = {}
        self._lock = threading.Lock()

    def get(self, tenant: Tenant) -> S3Client:
        fingerprint = hashlib.sha256(
            repr(
                (
                    tenant.s3_endpoint,
                    tenant.s3_region,
                    tenant.s3_access_key_id,
                    tenant.s3_secret_enc,
                    tenant.s3_ca_bundle,
                )
            ).encode()
        ).hexdigest()
        key = tenant.saved_id
        with self._lock:
            cached = self._clients.get(key)
            if cached is not None and cached[0] == fingerprint:
                return cached[1]
        secret = self._box.decrypt(tenant.s3_secret_enc) if tenant.s3_secret_enc else None
        client = tenant_s3_client(tenant, secret_access_key=secret, settings=self._settings)
        with self._lock:
            self._clients[key] = (fingerprint, client)
        return client


def classify_s3(exc: Exception) -> AppError:
    """Bucket answers that no retry can fix are permanent; the rest may pass."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _TENANT_CODES:
            return TenantError(f"bucket refused: {code}")
        return TransientError(f"bucket error: {code or 'unknown'}")
    return TransientError(f"bucket unreachable: {type(exc).__name__}")


@dataclass(frozen=True)
class ObjectState:
    size: int
    sha256: str | None
    etag: str | None = None


def head(s3: S3Client, *, bucket: str, key: str) -> ObjectState | None:
    """The object's size and recorded SHA-256, or None if it is not there."""
    try:
        answer = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise classify_s3(exc) from exc
    except BotoCoreError as exc:
        raise classify_s3(exc) from exc
    return ObjectState(
        size=int(answer["ContentLength"]),
        sha256=answer.get("Metadata", {}).get(SHA256_METADATA),
        etag=answer.get("ETag") or None,
    )


def key_in_bucket(url: str, *, bucket: str) -> str | None:
    """The object key a stored URL names inside ``bucket``, or None if it names another place.

    Understands s3://bucket/key, path-style endpoint/bucket/key and AWS virtual-hosted
    https://bucket.s3[.region].amazonaws.com/key (pure).
    """
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    path = unquote(parts.path.lstrip("/"))
    host = (parts.hostname or "").lower()
    if parts.scheme == "s3":
        return path or None if host == bucket.lower() else None
    if parts.scheme not in {"http", "https"}:
        return None
    if host.startswith(bucket.lower() + ".s3") and host.endswith(".amazonaws.com"):
        return path or None
    first, _, rest = path.partition("/")
    return rest or None if first == bucket else None


# Media a browser may show inline: none of these can run script when opened directly.
INLINE_TYPES = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "video/mp4",
        "video/3gpp",
        "video/webm",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "audio/aac",
        "audio/amr",
        "audio/wav",
    }
)


def content_disposition(mime_type: str | None, filename: str) -> str:
    """Inline for plain media; an attachment for anything else (HTML, SVG, PDF, unknown), so
    a hostile file opened through its link is downloaded, never rendered."""
    kind = "inline" if (mime_type or "").lower() in INLINE_TYPES else "attachment"
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in filename)[:100] or "media"
    return f'{kind}; filename="{safe}"'


def presign_get(
    s3: S3Client,
    *,
    bucket: str,
    key: str,
    ttl: int,
    mime_type: str | None = None,
    filename: str | None = None,
) -> str:
    """A short-lived GET URL for one object; computed locally, never stored."""
    name = filename or key.rsplit("/", 1)[-1]
    params = {
        "Bucket": bucket,
        "Key": key,
        "ResponseContentDisposition": content_disposition(mime_type, name),
    }
    return str(s3.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl))
