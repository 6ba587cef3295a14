"""Stream one file into a tenant's S3-compatible bucket, hashing as it goes.

Memory is bounded by the part size: a file larger than one part goes up as a multipart
upload of equal-sized parts (R2 requires that), aborted if anything goes wrong.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from archiver.buckets import SHA256_METADATA, StoredObject, classify_s3
from archiver.errors import TransientError

log = logging.getLogger(__name__)


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
    on_upload_started: Callable[[str], None] | None = None,
) -> StoredObject:
    """Upload ``chunks`` to ``bucket/key``; raise before completing if the size is not expected.

    Every object ends with its SHA-256 in ``x-amz-meta-sha256`` (multipart objects get it by
    an in-place server-side copy once the hash is known), so a reconcile can check it.
    """
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
                    if on_upload_started is not None:
                        on_upload_started(upload_id)
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
            s3.copy_object(
                Bucket=bucket,
                Key=key,
                CopySource={"Bucket": bucket, "Key": key},
                Metadata={SHA256_METADATA: sha256},
                MetadataDirective="REPLACE",
                ContentType=content_type,
            )
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3(exc) from exc
    finally:
        if upload_id is not None:
            _abort(s3, bucket=bucket, key=key, upload_id=upload_id)
    return StoredObject(bucket=bucket, key=key, size=size, sha256=sha256)


def abort_upload(s3: Any, *, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload an earlier attempt left open (it may already be gone)."""
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise classify_s3(exc) from exc
    except BotoCoreError as exc:
        raise classify_s3(exc) from exc


def abort_stale_uploads(s3: Any, *, bucket: str, key: str) -> int:
    """Abort every unfinished multipart upload of ``key``; return how many.

    Called only on a retry attempt, while this worker holds the row's lease: any upload of
    this deterministic key is then a dead attempt's leftover (for example one killed between
    creating the upload and recording its id). Needs s3:ListBucketMultipartUploads; without
    it the bucket's lifecycle rule must clean up (docs/reliability.md).
    """
    try:
        listing = s3.list_multipart_uploads(Bucket=bucket, Prefix=key)
    except ClientError as exc:
        log.warning(
            "cannot list multipart uploads of %s: %s",
            key,
            exc.response.get("Error", {}).get("Code"),
        )
        return 0
    except BotoCoreError as exc:
        raise classify_s3(exc) from exc
    stale = [u for u in listing.get("Uploads", []) if u.get("Key") == key]
    for upload in stale:
        abort_upload(s3, bucket=bucket, key=key, upload_id=upload["UploadId"])
    return len(stale)


def _abort(s3: Any, *, bucket: str, key: str, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        # Left for the bucket's lifecycle rule; the next attempt starts a fresh upload.
        log.warning("could not abort multipart upload of %s: %s", key, type(exc).__name__)
