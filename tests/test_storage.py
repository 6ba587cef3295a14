"""Streaming into a real S3 endpoint (moto over HTTP): bounded parts, hashes, clean aborts."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import pytest
from botocore.exceptions import ClientError

from archiver.errors import TenantError, TransientError
from archiver.infra.buckets import make_s3_client
from devstack.services import S3_CREDENTIALS, s3_client
from worker.buffers import BufferBudget
from worker.storage import SizeMismatch, put_stream

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MiB = 1024 * 1024


@pytest.fixture
def bucket(s3_endpoint: str) -> str:
    name = "b-" + uuid.uuid4().hex[:12]
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint: str) -> Any:
    return make_s3_client(
        endpoint=s3_endpoint,
        region="us-east-1",
        access_key_id=S3_CREDENTIALS["aws_access_key_id"],
        secret_access_key=S3_CREDENTIALS["aws_secret_access_key"],
        connect_timeout=5,
        read_timeout=30,
    )


def pieces(data: bytes, size: int = 100_000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Spy:
    """Wraps the client to record every part it is asked to upload, and how many overlap.

    ``slow``: each part waits this long first (a bucket far away); ``fail_part``: that part
    number is refused."""

    def __init__(self, inner: Any, *, slow: float = 0.0, fail_part: int | None = None) -> None:
        self.inner = inner
        self.part_sizes: dict[int, int] = {}
        self.slow, self.fail_part = slow, fail_part
        self.in_flight = self.most_in_flight = 0
        self.after_abort: list[int] = []  # parts that were still going when the abort went
        self.aborted = False
        self._lock = threading.Lock()

    def upload_part(self, **kw: Any) -> Any:
        with self._lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if kw["PartNumber"] == self.fail_part:  # refused at once, while the others go on
                raise ClientError(
                    {"Error": {"Code": "InternalError", "Message": "part refused"}}, "UploadPart"
                )
            time.sleep(self.slow)
            self.part_sizes[kw["PartNumber"]] = len(kw["Body"])
            return self.inner.upload_part(**kw)
        finally:
            with self._lock:
                self.in_flight -= 1
                if self.aborted:
                    self.after_abort.append(kw["PartNumber"])

    def abort_multipart_upload(self, **kw: Any) -> Any:
        with self._lock:
            self.aborted = True
        return self.inner.abort_multipart_upload(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_small_file_is_one_put_with_its_sha256(s3: Any, bucket: str) -> None:
    data = os.urandom(300_000)
    stored = put_stream(
        s3,
        bucket=bucket,
        key="a/b.jpg",
        chunks=pieces(data),
        content_type="image/jpeg",
        part_size=5 * MiB,
        expected_sizes=[len(data)],
    )
    assert stored.sha256 == hashlib.sha256(data).hexdigest() and stored.size == len(data)
    head = s3.head_object(Bucket=bucket, Key="a/b.jpg")
    assert head["ContentType"] == "image/jpeg"
    assert head["Metadata"]["sha256"] == stored.sha256 and head["ETag"] == stored.etag
    assert s3.get_object(Bucket=bucket, Key="a/b.jpg")["Body"].read() == data


@pytest.mark.parametrize("in_flight", [1, 3])
def test_large_file_goes_up_in_equal_parts(s3: Any, bucket: str, in_flight: int) -> None:
    data = os.urandom(27 * MiB + 12345)
    spy = Spy(s3, slow=0.2)
    stored = put_stream(
        cast("S3Client", spy),
        bucket=bucket,
        key="big.mp4",
        chunks=pieces(data, 64 * 1024),
        content_type="video/mp4",
        part_size=5 * MiB,
        parts_in_flight=in_flight,
        expected_sizes=[len(data)],
    )
    assert spy.part_sizes == {n: 5 * MiB for n in range(1, 6)} | {6: 2 * MiB + 12345}
    # Parts overlap up to the bound, never beyond it (each waits 0.2 s, so they do overlap).
    assert spy.most_in_flight == in_flight
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    body = s3.get_object(Bucket=bucket, Key="big.mp4")["Body"].read()
    assert body == data
    # No second write of the whole object to stamp its hash: the row keeps the ETag instead.
    head = s3.head_object(Bucket=bucket, Key="big.mp4")
    assert "sha256" not in head["Metadata"] and head["ContentType"] == "video/mp4"
    assert stored.etag is not None and stored.etag == head["ETag"] and stored.etag.endswith('-6"')


def send_refused(spy: Spy, bucket: str, budget: BufferBudget | None = None) -> None:
    """30 MiB in 5 MiB parts, 3 in flight, through a spy that refuses one: it must raise."""
    with pytest.raises(TransientError, match="InternalError"):
        put_stream(
            cast("S3Client", spy),
            bucket=bucket,
            key="refused.mp4",
            chunks=pieces(os.urandom(30 * MiB), 256 * 1024),
            content_type="video/mp4",
            part_size=5 * MiB,
            parts_in_flight=3,
            budget=budget,
        )


def test_a_refused_part_aborts_after_the_parts_in_flight_end(s3: Any, bucket: str) -> None:
    spy = Spy(s3, slow=0.3, fail_part=2)
    send_refused(spy, bucket)
    deadline = time.monotonic() + 5
    while spy.in_flight and time.monotonic() < deadline:  # parts the abort left behind end
        time.sleep(0.05)
    assert spy.aborted and spy.after_abort == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_short_body_aborts_and_leaves_no_object_and_no_parts(s3: Any, bucket: str) -> None:
    data = os.urandom(11 * MiB)
    with pytest.raises(SizeMismatch):
        put_stream(
            s3,
            bucket=bucket,
            key="cut.mp4",
            chunks=pieces(data),
            content_type="video/mp4",
            part_size=5 * MiB,
            expected_sizes=[len(data) + 1],
        )
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_stream_error_midway_aborts_the_upload(s3: Any, bucket: str) -> None:
    def broken() -> Iterator[bytes]:
        yield os.urandom(6 * MiB)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        put_stream(
            s3, bucket=bucket, key="x", chunks=broken(), content_type="video/mp4", part_size=5 * MiB
        )
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_retry_overwrites_the_same_key(s3: Any, bucket: str) -> None:
    for _ in range(2):
        put_stream(
            s3,
            bucket=bucket,
            key="same",
            chunks=pieces(b"abc"),
            content_type="text/plain",
            part_size=5 * MiB,
        )
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_a_missing_bucket_is_the_tenants_problem_not_the_files(s3: Any) -> None:
    with pytest.raises(TenantError, match="NoSuchBucket"):
        put_stream(
            s3,
            bucket="no-such-bucket-" + uuid.uuid4().hex[:8],
            key="k",
            chunks=pieces(b"abc"),
            content_type="text/plain",
            part_size=5 * MiB,
        )


class Recorder:
    """Wraps the client to keep every request that carries bytes: its body and checksum."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[tuple[int, bytes, dict[str, str]]] = []  # (part number, body, fields)
        self.completed: list[dict[str, Any]] = []

    def _keep(self, kw: dict[str, Any]) -> None:
        fields = {k: v for k, v in kw.items() if k in ("ChecksumSHA256", "ContentMD5")}
        self.sent.append((kw.get("PartNumber", 0), bytes(kw["Body"]), fields))

    def put_object(self, **kw: Any) -> Any:
        self._keep(kw)
        return self.inner.put_object(**kw)

    def upload_part(self, **kw: Any) -> Any:
        self._keep(kw)
        return self.inner.upload_part(**kw)

    def complete_multipart_upload(self, **kw: Any) -> Any:
        self.completed.append(kw)
        return self.inner.complete_multipart_upload(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("size", [300_000, 11 * MiB + 7])
def test_every_request_carrying_bytes_carries_their_sha256_checksum(
    s3: Any, bucket: str, size: int
) -> None:
    """A locked bucket on AWS refuses uploads without a checksum, and a part damaged on the
    way must be refused, not stored: every put and every part says its SHA-256."""
    data = os.urandom(size)
    spy = Recorder(s3)
    stored = put_stream(
        cast("S3Client", spy),
        bucket=bucket,
        key="checked/file.bin",
        chunks=pieces(data),
        content_type="application/octet-stream",
        part_size=5 * MiB,
        parts_in_flight=2,
        expected_sizes=[size],
    )
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert spy.sent and b"".join(body for _, body, _ in sorted(spy.sent)) == data
    for _, body, fields in spy.sent:
        assert fields == {"ChecksumSHA256": _b64(hashlib.sha256(body).digest())}
    if size > 5 * MiB:  # the completion names each part's checksum, as S3 requires
        parts = spy.completed[0]["MultipartUpload"]["Parts"]
        assert all(p["ChecksumSHA256"] for p in parts) and len(parts) == 3
        # The bucket kept the parts' checksums: its object checksum is S3's checksum of them
        # (AWS appends "-3", the part count; moto does not).
        bodies = [body for _, body, _ in sorted(spy.sent)]
        composite = _b64(
            hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in bodies)).digest()
        )
        head = s3.head_object(Bucket=bucket, Key="checked/file.bin", ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"].split("-")[0] == composite


def test_md5_mode_sends_content_md5_instead(s3: Any, bucket: str) -> None:
    data = os.urandom(6 * MiB)
    spy = Recorder(s3)
    put_stream(
        cast("S3Client", spy),
        bucket=bucket,
        key="checked/md5.bin",
        chunks=pieces(data),
        content_type="application/octet-stream",
        part_size=5 * MiB,
        checksum="md5",
    )
    for _, body, fields in spy.sent:
        assert fields == {"ContentMD5": _b64(hashlib.md5(body, usedforsecurity=False).digest())}


class Watched(BufferBudget):
    """A budget that remembers every request and the most it ever lent out."""

    def __init__(self, total: int) -> None:
        super().__init__(total)
        self.asked: list[int] = []
        self.most = 0
        self.waited = 0.0

    def acquire(self, size: int) -> int:
        self.asked.append(size)
        started = time.monotonic()
        taken = super().acquire(size)
        self.waited += time.monotonic() - started
        self.most = max(self.most, self.held())
        return taken


def test_concurrent_transfers_share_one_budget_and_wait_for_it(s3: Any, bucket: str) -> None:
    budget = Watched(12 * MiB)  # two parts of 5 MiB and change: not 2 x (3 + 1) parts
    files = {f"v{n}.mp4": os.urandom(16 * MiB + n) for n in range(3)}
    spy = Spy(s3, slow=0.15)
    stored: dict[str, str] = {}

    def send(key: str) -> None:
        stored[key] = put_stream(
            cast("S3Client", spy),
            bucket=bucket,
            key=key,
            chunks=pieces(files[key], 256 * 1024),
            content_type="video/mp4",
            part_size=5 * MiB,
            parts_in_flight=3,
            budget=budget,
            expected_sizes=[len(files[key])],
        ).sha256

    threads = [threading.Thread(target=send, args=(key,)) for key in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert stored == {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}
    for key, data in files.items():
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    # Never more lent out than the budget, though three transfers wanted four parts each;
    # each last part asked only for what was left of its announced size.
    # (Unbounded, nine parts would have been up at once: three transfers, three each.)
    assert budget.most <= 12 * MiB and spy.most_in_flight <= 3 and budget.waited > 0.05
    assert sorted(budget.asked).count(5 * MiB) == 9 and budget.held() == 0
    assert sorted(n for n in budget.asked if n < 5 * MiB) == [MiB, MiB + 1, MiB + 2]


def test_a_photo_reserves_its_size_and_a_failed_transfer_gives_all_back(
    s3: Any, bucket: str
) -> None:
    budget = Watched(16 * MiB)
    photo = os.urandom(300_000)
    put_stream(
        s3,
        bucket=bucket,
        key="p.jpg",
        chunks=pieces(photo),
        content_type="image/jpeg",
        part_size=8 * MiB,
        budget=budget,
        expected_sizes=[len(photo)],
    )
    assert budget.asked == [len(photo)] and budget.held() == 0
    # Another transfer of this process holds a share: a part given back twice would eat it.
    other = budget.acquire(MiB)
    spy = Spy(s3, slow=0.2, fail_part=2)
    send_refused(spy, bucket, budget)
    deadline = time.monotonic() + 5
    while budget.held() > other and time.monotonic() < deadline:  # parts going end first
        time.sleep(0.05)
    time.sleep(0.3)
    assert budget.held() == other
    budget.release(other)
    assert budget.held() == 0
