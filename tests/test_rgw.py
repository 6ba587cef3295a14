"""What differs on a real S3 server (Ceph's RADOS Gateway, devstack/ceph.py) from AWS and moto,
pinned where our code meets it: the multipart path of worker/storage.py and the checks a
reconcile reads back (size, SHA-256 metadata, ETag from a HEAD)."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest
from botocore.exceptions import ClientError

from devstack.services import s3_client
from worker.storage import abort_stale_uploads, abort_upload, put_stream

pytestmark = pytest.mark.rgw
PART = 5 * 1024 * 1024


def test_complete_multipart_answers_an_empty_etag_and_a_head_has_it(rgw_endpoint: str) -> None:
    s3 = s3_client(rgw_endpoint)
    s3.create_bucket(Bucket="rgw-quirks")
    upload = s3.create_multipart_upload(Bucket="rgw-quirks", Key="k")["UploadId"]
    part = s3.upload_part(
        Bucket="rgw-quirks", Key="k", UploadId=upload, PartNumber=1, Body=b"x" * PART
    )
    done = s3.complete_multipart_upload(
        Bucket="rgw-quirks",
        Key="k",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert done.get("ETag", "") == ""  # AWS and moto answer the multipart ETag here
    assert s3.head_object(Bucket="rgw-quirks", Key="k")["ETag"].endswith('-1"')


def test_a_multipart_stream_lands_whole_with_its_etag(rgw_endpoint: str) -> None:
    s3 = s3_client(rgw_endpoint)
    s3.create_bucket(Bucket="rgw-stream")
    data = os.urandom(2 * PART + 12345)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    stored = put_stream(
        s3,
        bucket="rgw-stream",
        key="media/video.mp4",
        chunks=chunks,
        content_type="video/mp4",
        part_size=PART,
        parts_in_flight=3,
        expected_sizes=[len(data)],
    )
    assert stored.size == len(data) and stored.sha256 == hashlib.sha256(data).hexdigest()
    head = s3.head_object(Bucket="rgw-stream", Key="media/video.mp4")
    assert head["ContentLength"] == len(data) and head["ContentType"] == "video/mp4"
    # RGW's completion answers no ETag: the one the row keeps is read with a HEAD.
    assert "sha256" not in head["Metadata"] and head["ETag"] == stored.etag
    body = s3.get_object(Bucket="rgw-stream", Key="media/video.mp4")["Body"].read()
    assert body == data
    assert s3.list_multipart_uploads(Bucket="rgw-stream").get("Uploads", []) == []


def test_leftover_uploads_are_found_and_aborted(rgw_endpoint: str) -> None:
    s3 = s3_client(rgw_endpoint)
    s3.create_bucket(Bucket="rgw-leftovers")
    for _ in range(2):
        s3.create_multipart_upload(Bucket="rgw-leftovers", Key="dead/attempt")
    assert abort_stale_uploads(s3, bucket="rgw-leftovers", key="dead/attempt") == 2
    assert s3.list_multipart_uploads(Bucket="rgw-leftovers").get("Uploads", []) == []
    gone = s3.create_multipart_upload(Bucket="rgw-leftovers", Key="dead/attempt")["UploadId"]
    abort_upload(s3, bucket="rgw-leftovers", key="dead/attempt", upload_id=gone)
    abort_upload(s3, bucket="rgw-leftovers", key="dead/attempt", upload_id=gone)  # twice: fine
    with pytest.raises(ClientError) as refused:
        s3.list_parts(Bucket="rgw-leftovers", Key="dead/attempt", UploadId=gone)
    # AWS says NoSuchUpload; the gateway says NoSuchKey. Nothing here reads parts back.
    assert refused.value.response["Error"]["Code"] in {"NoSuchKey", "NoSuchUpload"}


def test_the_gateway_verifies_content_md5_so_md5_mode_is_checked_there(rgw_endpoint: str) -> None:
    """RGW stores a wrong x-amz-checksum-sha256 without a word, but refuses a wrong
    Content-MD5: ARCHIVER_S3_CHECKSUM=md5 is how a part damaged on its way is refused there."""
    s3 = s3_client(rgw_endpoint)
    s3.create_bucket(Bucket="rgw-checksums")
    body = os.urandom(4096)
    wrong_sha = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    s3.put_object(Bucket="rgw-checksums", Key="sha", Body=body, ChecksumSHA256=wrong_sha)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other", usedforsecurity=False).digest()).decode()
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="rgw-checksums", Key="md5", Body=body, ContentMD5=wrong_md5)
    assert refused.value.response["Error"]["Code"] in {"BadDigest", "InvalidDigest"}
    data = os.urandom(PART + 1000)
    stored = put_stream(
        s3,
        bucket="rgw-checksums",
        key="media/checked.bin",
        chunks=[data[i : i + 65536] for i in range(0, len(data), 65536)],
        content_type="application/octet-stream",
        part_size=PART,
        checksum="md5",
        expected_sizes=[len(data)],
    )
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert s3.get_object(Bucket="rgw-checksums", Key="media/checked.bin")["Body"].read() == data
