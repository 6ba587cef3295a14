"""Stream one file into a tenant's S3-compatible bucket, hashing as it goes.

Memory is bounded by the part size: a file larger than one part goes up as a multipart
upload of equal-sized parts (R2 requires that), aborted if anything goes wrong.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from archiver.errors import TransientError
from archiver.infra.buckets import SHA256_METADATA, StoredObject, classify_s3

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from worker.buffers import BufferBudget

log = logging.getLogger(__name__)


class SizeMismatch(TransientError):
    """The streamed byte count differs from what Titan announced (a truncated or wrong body)."""


def part_checksum(data: bytes | bytearray, algorithm: str) -> dict[str, str]:
    """The request fields that make the bucket verify ``data`` on arrival: an S3 SHA-256
    checksum (``sha256``), or Content-MD5 (``md5``) for servers that check only that (Ceph's
    RADOS Gateway stores a wrong x-amz-checksum-sha256 without a word)."""
    if algorithm == "md5":
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        return {"ContentMD5": base64.b64encode(md5).decode()}
    return {"ChecksumSHA256": base64.b64encode(hashlib.sha256(data).digest()).decode()}


def put_stream(
    s3: S3Client,
    *,
    bucket: str,
    key: str,
    chunks: Iterable[bytes],
    content_type: str,
    part_size: int,
    parts_in_flight: int = 1,
    budget: BufferBudget | None = None,
    expected_sizes: Sequence[int] = (),
    on_part: Callable[[int], None] | None = None,
    on_upload_started: Callable[[str], None] | None = None,
    checksum: str = "sha256",
    object_lock: Mapping[str, Any] | None = None,
) -> StoredObject:
    """Upload ``chunks`` to ``bucket/key``; raise before completing if the size is not expected.

    Up to ``parts_in_flight`` parts upload at once while the next one fills, so a bucket far
    away costs one round trip per that many parts, and memory stays under
    ``(parts_in_flight + 1) * part_size`` whatever the file's size. With a ``budget`` (the
    worker's, shared by all its transfers) each part's buffer is taken from it before it
    fills and given back once the part is up: a part waits for budget rather than adding
    to the worker's memory. A part reserves what is left of the announced size when that is
    less than a part (a photo reserves its size, not a part's).

    The SHA-256 is returned for the row; an object sent in one PUT also carries it as
    ``x-amz-meta-sha256``. A multipart object does not (that took a server-side copy of the
    whole object once the hash was known): its ETag is returned instead, and ``reconcile``
    checks that.

    Every request that carries bytes carries a checksum the bucket verifies (``checksum``:
    sha256 or md5, see ``part_checksum``): a locked bucket on AWS refuses uploads without
    one, and a part damaged on the way is refused instead of stored. Our own SHA-256 of the
    whole file stays the record.
    """
    digest = hashlib.sha256()
    buffer = bytearray()  # the part being filled; handed to the upload when full
    size = 0
    handed = 0  # bytes handed to parts
    reserved = 0  # budget taken for the part being filled
    announced = max(expected_sizes, default=0)
    upload: _Multipart | None = None
    try:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                if budget is not None and not reserved:
                    left = announced - handed
                    reserved = budget.acquire(left if 0 < left < part_size else part_size)
                take = part_size - len(buffer)
                buffer += view[:take]
                view = view[take:]
                if len(buffer) < part_size:
                    break
                if upload is None:
                    upload = _Multipart(
                        s3,
                        bucket=bucket,
                        key=key,
                        content_type=content_type,
                        width=parts_in_flight,
                        checksum=checksum,
                        object_lock=object_lock,
                        budget=budget,
                    )
                    if on_upload_started is not None:
                        on_upload_started(upload.upload_id)
                handed += len(buffer)
                # The part gives its budget back once it is up (or failed): not ours anymore.
                part, reserved = reserved, 0
                upload.add(buffer, part)
                buffer = bytearray()
                if on_part is not None:
                    on_part(size)
        for expected in expected_sizes:
            if size != expected:
                raise SizeMismatch(f"received {size} bytes, expected {expected}")
        sha256 = digest.hexdigest()
        etag: str | None
        if upload is None:
            verified = (
                {"ChecksumSHA256": base64.b64encode(digest.digest()).decode()}
                if checksum == "sha256"
                else part_checksum(buffer, checksum)
            )
            etag = s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=cast("bytes", buffer),  # botocore sends any bytes-like, uncopied
                ContentType=content_type,
                Metadata={SHA256_METADATA: sha256},
                **verified,  # type: ignore[arg-type]
                **(object_lock or {}),
            ).get("ETag")
        else:
            if buffer:
                part, reserved = reserved, 0
                upload.add(buffer, part)
            del buffer
            etag = upload.complete()
            upload = None
            if not etag:  # Ceph's RADOS Gateway answers the completion without it
                etag = s3.head_object(Bucket=bucket, Key=key).get("ETag", "")
    except (ClientError, BotoCoreError) as exc:
        raise classify_s3(exc) from exc
    finally:
        if upload is not None:
            upload.abort()
        if budget is not None:
            budget.release(reserved)
    return StoredObject(bucket=bucket, key=key, size=size, sha256=sha256, etag=etag or None)


class _Multipart:
    """One multipart upload whose parts go up ``width`` at a time, in threads of their own.

    ``add`` returns once fewer than ``width`` parts are in flight; the first failed part's
    error is raised by the next ``add`` or by ``complete``."""

    def __init__(
        self,
        s3: S3Client,
        *,
        bucket: str,
        key: str,
        content_type: str,
        width: int,
        checksum: str = "sha256",
        object_lock: Mapping[str, Any] | None = None,
        budget: BufferBudget | None = None,
    ) -> None:
        self.s3, self.bucket, self.key = s3, bucket, key
        self.budget = budget
        self.checksum = checksum
        fields: dict[str, Any] = dict(object_lock or {})
        if checksum == "sha256":
            fields["ChecksumAlgorithm"] = "SHA256"
        self.upload_id: str = s3.create_multipart_upload(
            Bucket=bucket, Key=key, ContentType=content_type, **fields
        )["UploadId"]
        self.width = max(1, width)
        self._pool = ThreadPoolExecutor(self.width) if self.width > 1 else None
        self._in_flight: set[Future[CompletedPartTypeDef]] = set()
        self._parts: list[CompletedPartTypeDef] = []
        self._next = 1

    def add(self, data: bytearray, reserved: int = 0) -> None:
        """Upload ``data`` as the next part; ``reserved`` bytes of the budget are given back
        once it is up (or failed, or cancelled)."""
        number, self._next = self._next, self._next + 1
        if self._pool is None:
            try:
                self._parts.append(self._put(number, data))
            finally:
                self._give_back(reserved)
            return
        future = self._pool.submit(self._put, number, data)
        del data  # the future holds the only reference; it is freed when the part is up
        future.add_done_callback(lambda _: self._give_back(reserved))
        self._in_flight.add(future)
        while len(self._in_flight) >= self.width:
            self._collect(FIRST_COMPLETED)

    def _give_back(self, reserved: int) -> None:
        if self.budget is not None:
            self.budget.release(reserved)

    def complete(self) -> str | None:
        """Complete the upload; the ETag the bucket answered, if it did."""
        self._collect(ALL_COMPLETED)
        answer = self.s3.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": sorted(self._parts, key=lambda p: p["PartNumber"])},
        )
        self._close()
        etag = answer.get("ETag")
        return str(etag) if etag else None

    def abort(self) -> None:
        # Parts still going up could outlive an abort sent now: let them end first.
        self._close()
        self._in_flight.clear()
        _abort(self.s3, bucket=self.bucket, key=self.key, upload_id=self.upload_id)

    def _put(self, number: int, data: bytearray) -> CompletedPartTypeDef:
        verified = part_checksum(data, self.checksum)
        answer = self.s3.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=cast("bytes", data),  # botocore sends any bytes-like, uncopied
            **verified,  # type: ignore[arg-type]
        )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": answer["ETag"]}
        if "ChecksumSHA256" in verified:  # completing a SHA-256 upload names each part's
            part["ChecksumSHA256"] = verified["ChecksumSHA256"]
        return part

    def _collect(self, when: str) -> None:
        done, _ = wait(self._in_flight, return_when=when)
        for future in done:
            self._in_flight.discard(future)
            self._parts.append(future.result())  # a failed part raises here

    def _close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def abort_upload(s3: S3Client, *, bucket: str, key: str, upload_id: str) -> None:
    """Abort a multipart upload an earlier attempt left open (it may already be gone)."""
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
            raise classify_s3(exc) from exc
    except BotoCoreError as exc:
        raise classify_s3(exc) from exc


def abort_stale_uploads(s3: S3Client, *, bucket: str, key: str) -> int:
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


def _abort(s3: S3Client, *, bucket: str, key: str, upload_id: str) -> None:
    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        # Left for the bucket's lifecycle rule; the next attempt starts a fresh upload.
        log.warning("could not abort multipart upload of %s: %s", key, type(exc).__name__)
