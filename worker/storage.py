"""Stream one file into a tenant's S3-compatible bucket, hashing as it goes.

Memory is bounded by the part size: a file larger than one part goes up as a multipart
upload of equal-sized parts (R2 requires that), aborted if anything goes wrong.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from archiver.errors import AppError, PermanentError, TransientError

log = logging.getLogger(__name__)

SHA256_METADATA = "sha256"
_PERMANENT_CODES = {
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


def make_s3_client(
    *,
    endpoint: str | None,
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    connect_timeout: float,
    read_timeout: float,
) -> Any:
    """A boto3 S3 client for one tenant's credentials, isolated in its own boto3 session."""
    config = Config(
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
    return session.client("s3", endpoint_url=endpoint or None, config=config)


def classify_s3(exc: Exception) -> AppError:
    """Bucket answers that no retry can fix are permanent; the rest may pass."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _PERMANENT_CODES:
            return PermanentError(f"bucket refused: {code}")
        return TransientError(f"bucket error: {code or 'unknown'}")
    return TransientError(f"bucket unreachable: {type(exc).__name__}")


class SizeMismatch(TransientError):
    """The streamed byte count differs from what Titan announced (a truncated or wrong body)."""


def put_stream(
    s3: Any,
    *,
    bucket: str,
    key: str,
    chunks: Iterable[bytes],
    content_type: str,
    part_size: int,
    expected_sizes: Sequence[int] = (),
    on_part: Callable[[int], None] | None = None,
) -> StoredObject:
    """Upload ``chunks`` to ``bucket/key``; raise before completing if the size is not expected."""
    digest = hashlib.sha256()
    buffer = bytearray()
    upload_id: str | None = None
    parts: list[dict[str, Any]] = []
    size = 0

    def upload_part(data: bytes) -> None:
        number = len(parts) + 1
        answer = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        if on_part is not None:
            on_part(size)

    try:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            buffer += chunk
            while len(buffer) >= part_size:
                if upload_id is None:
                    upload_id = s3.create_multipart_upload(
                        Bucket=bucket, Key=key, ContentType=content_type
                    )["UploadId"]
                upload_part(bytes(buffer[:part_size]))
                del buffer[:part_size]
        for expected in expected_sizes:
            if size != expected:
                raise SizeMismatch(f"received {size} bytes, expected {expected}")
        sha256 = digest.hexdigest()
        if upload_id is None:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=bytes(buffer),
                ContentType=content_type,
                Metadata={SHA256_METADATA: sha256},
            )
        else:
            if buffer:
                upload_part(bytes(buffer))
            buffer.clear()
            s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            upload_id = None
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3(exc) from exc
    finally:
        if upload_id is not None:
            _abort(s3, bucket=bucket, key=key, upload_id=upload_id)
    return StoredObject(bucket=bucket, key=key, size=size, sha256=sha256)


def _abort(s3: Any, *, bucket: str, key: str, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        # Left for the bucket's lifecycle rule; the next attempt starts a fresh upload.
        log.warning("could not abort multipart upload of %s: %s", key, type(exc).__name__)
