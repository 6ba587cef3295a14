"""Erasure in bulk (retention's path): objects deleted several at a time, rows a page per
statement, and still nothing deleted that changed meanwhile or whose object the bucket kept.

Real moto over HTTP and a real database (SQLite and PostgreSQL); the bucket client is wrapped
to count deletions in flight, to refuse one key, and to start a retry of one row while its
object is being deleted."""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError
from sqlalchemy import Engine, update
from sqlmodel import col, select

from archiver.governance import erasure
from archiver.infra.db import session_scope
from archiver.tables import Media, Status, utcnow
from devstack.fixtures import seed_archived
from devstack.services import s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class Bucket:
    """The tenant's S3 client, watched: deletions in flight, a refused key, a row that a
    worker retries while its object is deleted."""

    def __init__(self, inner: Any, *, engine: Engine, refuse: str, retried: tuple[str, int]):
        self.inner, self.engine = inner, engine
        self.refuse, self.retried = refuse, retried
        self.in_flight = self.most = 0
        self._lock = threading.Lock()

    def delete_object(self, **kw: Any) -> Any:
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(0.01)
            if kw["Key"] == self.refuse:
                raise ClientError({"Error": {"Code": "AccessDenied"}}, "DeleteObject")
            if kw["Key"] == self.retried[0]:
                with session_scope(self.engine) as session:
                    session.execute(
                        update(Media)
                        .where(col(Media.pk) == self.retried[1])
                        .values(status=Status.QUEUED.value, updated_at=utcnow())
                    )
            return self.inner.delete_object(**kw)
        finally:
            with self._lock:
                self.in_flight -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_bulk_erasure_deletes_in_parallel_and_keeps_what_it_must(
    engine: Engine, s3_endpoint: str
) -> None:
    seeded = seed_archived(engine, s3_endpoint=s3_endpoint, count=250)  # three pages of 100
    s3 = s3_client(s3_endpoint)
    bucket = Bucket(
        s3, engine=engine, refuse="media/7.bin", retried=("media/201.bin", seeded.pks[201])
    )
    done = erasure.erase(
        engine,
        seeded.tenant,
        erasure.Selector(received_before=utcnow()),
        s3_for=lambda _: cast("S3Client", bucket),
        batch=100,
    )
    assert bucket.most == erasure.CONCURRENCY  # parallel, and never beyond the bound
    assert (done.rows, done.objects, done.in_flight) == (248, 249, 1)
    assert done.errors == [f"{seeded.bucket}/media/7.bin: AccessDenied"]
    with session_scope(engine) as session:
        left = {m.media_id: m.status for m in session.exec(select(Media))}
    # The refused object's row stays (run again later); the retried row stays, queued.
    assert left == {"m7": Status.ARCHIVED.value, "m201": Status.QUEUED.value}
    objects = s3.list_objects_v2(Bucket=seeded.bucket).get("Contents", [])
    assert [o["Key"] for o in objects] == ["media/7.bin"]


def same(client: Any, _: object) -> Any:
    return client


class Silent:
    """A client whose bucket will not say whether it is versioned (no permission)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_bucket_versioning(self, **kw: Any) -> Any:
        raise ClientError({"Error": {"Code": "AccessDenied"}}, "GetBucketVersioning")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_older_versions_go_too_even_when_the_bucket_will_not_say_it_keeps_them(
    engine: Engine, s3_endpoint: str
) -> None:
    seeded = seed_archived(engine, s3_endpoint=s3_endpoint, count=3)
    s3 = s3_client(s3_endpoint)
    s3.put_bucket_versioning(Bucket=seeded.bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=seeded.bucket, Key="media/1.bin", Body=b"a newer copy")
    # Told it is versioned; then not told, so it must assume so.
    for client, ids in ((s3, ("m1",)), (Silent(s3), ("m0", "m2"))):
        done = erasure.erase(
            engine, seeded.tenant, erasure.Selector(media_ids=ids), s3_for=partial(same, client)
        )
        assert done.errors == [] and done.rows == len(ids)
    assert s3.list_object_versions(Bucket=seeded.bucket).get("Versions", []) == []
