"""`reconcile` at scale: what a row's object must look like (pure), HEADs in parallel but never
more than asked, and a run that stops midway goes on from its last page.

Real moto over HTTP and a real database (SQLite and PostgreSQL); the check runs in-process so
the test can count HEADs in flight and stop the run where it wants."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine

from archiver.cli import reconcile as reconciling
from archiver.infra.broker import make_celery
from archiver.infra.buckets import ObjectState
from archiver.infra.db import session_scope
from archiver.tables import ReconcileProgress
from devstack.fixtures import seed_archived, settings_for
from devstack.services import s3_client

check_row = reconciling.check_row


def test_an_object_matches_its_row_by_size_then_hash_or_etag() -> None:
    sha = "a" * 64
    assert check_row(size=5, sha256=sha, found=None) == "object missing"
    assert check_row(size=5, sha256=sha, found=ObjectState(6, sha)) == "size 6 in bucket, 5 on row"
    assert check_row(size=5, sha256=sha, found=ObjectState(5, sha)) is None
    assert check_row(size=5, sha256=sha, found=ObjectState(5, "b" * 64)) == (
        "sha256 metadata differs from the row"
    )
    # A multipart object carries no hash: the ETag the bucket gave it must not have changed
    # (quotes or not, as buckets differ in what they answer).
    assert check_row(size=5, sha256=sha, etag='"e-2"', found=ObjectState(5, None, "e-2")) is None
    assert check_row(size=5, sha256=sha, etag='"e-2"', found=ObjectState(5, None, '"f-2"')) == (
        "etag differs from the row: the object was replaced"
    )
    # A row archived before ETags were kept, whose object lost its metadata.
    assert check_row(size=5, sha256=sha, found=ObjectState(5, None, '"e"')) == (
        "object has no sha256 metadata"
    )


@dataclass
class Archive:
    engine: Engine
    database_url: str
    tenant_id: int
    bucket: str
    pks: list[int]


@pytest.fixture
def archive(
    engine: Engine, database_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Archive:
    """300 archived rows (three pages of 100) whose objects are in the tenant's bucket."""
    monkeypatch.setattr(reconciling, "PAGE", 100)
    seeded = seed_archived(engine, s3_endpoint=s3_endpoint, count=300)
    return Archive(engine, database_url, seeded.tenant.id or 0, seeded.bucket, seeded.pks)


def run(archive: Archive, *, concurrency: int = 8, resume: bool = False, **kw: Any) -> Any:
    settings = settings_for(archive.database_url)
    return reconciling.check_buckets(
        archive.engine,
        make_celery(settings),
        settings,
        tenant_name=None,
        requeue=False,
        concurrency=concurrency,
        resume=resume,
        **kw,
    )


def test_heads_run_in_parallel_up_to_the_bound(
    archive: Archive, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight = most = 0
    lock = threading.Lock()
    from archiver.infra.buckets import head as real_head

    def counted(*args: Any, **kw: Any) -> Any:
        nonlocal in_flight, most
        with lock:
            in_flight += 1
            most = max(most, in_flight)
        try:
            time.sleep(0.01)
            return real_head(*args, **kw)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(reconciling, "head", counted)  # the name reconcile calls
    report = run(archive, concurrency=6)
    assert (report.checked, report.ok, report.differences) == (300, 300, [])
    assert most == 6


def test_an_interrupted_run_resumes_after_its_last_finished_page(
    archive: Archive, s3_endpoint: str
) -> None:
    pages: list[int] = []

    def stop_after_two_pages(n: int) -> None:
        pages.append(n)
        if len(pages) == 2:
            raise KeyboardInterrupt  # the operator's Ctrl-C, or the job being killed

    with pytest.raises(KeyboardInterrupt):
        run(archive, progress=stop_after_two_pages)
    with session_scope(archive.engine) as session:
        saved = session.get(ReconcileProgress, archive.tenant_id)
        assert saved is not None
        assert (saved.after_pk, saved.checked, saved.finished) == (archive.pks[199], 200, False)
    # One object goes missing among the rows not yet checked; the resumed run finds it.
    s3_client(s3_endpoint).delete_object(Bucket=archive.bucket, Key="media/250.bin")
    resumed = run(archive, resume=True)
    assert (resumed.checked, resumed.tenants_resumed) == (100, 1)
    assert [(d.media_id, d.problem) for d in resumed.differences] == [("m250", "object missing")]
    # Resuming a finished run checks nothing more; a fresh run checks everything again.
    again = run(archive, resume=True)
    assert (again.checked, again.tenants_skipped) == (0, 1)
    fresh = run(archive)
    assert (fresh.checked, len(fresh.differences), fresh.tenants_resumed) == (300, 1, 0)
