"""Streaming into a real S3 endpoint (moto over HTTP): bounded parts, hashes, clean aborts."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from archiver.buckets import make_s3_client
from archiver.errors import TenantError
from devstack.services import S3_CREDENTIALS, s3_client
from worker.storage import SizeMismatch, put_stream

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
    """Wraps the client to record the size of every part it is asked to upload."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.part_sizes: list[int] = []

    def upload_part(self, **kw: Any) -> Any:
        self.part_sizes.append(len(kw["Body"]))
        return self.inner.upload_part(**kw)

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
    assert head["Metadata"]["sha256"] == stored.sha256
    assert s3.get_object(Bucket=bucket, Key="a/b.jpg")["Body"].read() == data


def test_large_file_goes_up_in_equal_parts(s3: Any, bucket: str) -> None:
    data = os.urandom(12 * MiB + 12345)
    spy = Spy(s3)
    stored = put_stream(
        spy,
        bucket=bucket,
        key="big.mp4",
        chunks=pieces(data, 64 * 1024),
        content_type="video/mp4",
        part_size=5 * MiB,
        expected_sizes=[len(data)],
    )
    assert spy.part_sizes == [5 * MiB, 5 * MiB, 2 * MiB + 12345]
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    body = s3.get_object(Bucket=bucket, Key="big.mp4")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == stored.sha256


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
