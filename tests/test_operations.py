"""Operator commands and worker lifecycle against real processes: status, dead letters,
retry, the sweeper, reconcile, and a worker's graceful shutdown."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import redis
from sqlmodel import select

from archiver.infra.broker import make_celery, publish_archive
from archiver.infra.db import make_engine, session_scope
from archiver.queue import ARCHIVE_QUEUE
from archiver.tables import Media
from devstack import processes, services
from devstack.fixtures import TenantSetup, add_tenant, process_env, start_web
from devstack.rig import RedisDatabases, Rig
from tests.conftest import migrated_database
from titan_simulator.sender import SentMedia, Simulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


@dataclass
class Ops(Rig):
    """No beat here: each test starts the workers it needs (``worker``)."""

    acme: TenantSetup
    s3: S3Client
    queue: redis.Redis
    tmp: Path
    procs: list[processes.Process]

    @property
    def bucket(self) -> str:
        return self.acme.bucket

    def deliver(self, item: SentMedia) -> int:
        """The receiver's answer to the item's webhook (202, 200 for a duplicate, ...)."""
        return self.post(self.acme, item.envelope).status_code

    def wait_for(self, media_id: str, status: str, timeout: float = 60) -> Media:
        return self.wait_status([media_id], status, timeout=timeout)[media_id]

    def worker(self, name: str, **env: str) -> processes.Process:
        proc = processes.start_process(
            name, [*processes.worker_argv(concurrency=1), "-n", f"{name}@%h"], {**self.env, **env}
        )
        self.procs.append(proc)
        return proc


@pytest.fixture
def ops(
    tmp_path: Path, redis_dbs: RedisDatabases, s3_endpoint: str, pg_admin_url: str | None
) -> Iterator[Ops]:
    broker = redis_dbs.take()
    queue = redis.Redis.from_url(broker)
    queue.flushdb()
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        env = process_env(
            database_url,
            broker,
            ARCHIVER_LEASE_SECONDS="5",
            ARCHIVER_STUCK_AFTER_SECONDS="1",
            REMAP_SIGTERM="SIGQUIT",
        )
        web = start_web("ops", env)
        sim = Simulator(web.sim_url)
        client = httpx.Client(timeout=30)
        acme = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="acme")
        s3 = services.s3_client(s3_endpoint)
        rig = Rig(database_url, s3_endpoint, web.receiver_url, sim, env, client)
        ops = Ops(**vars(rig), acme=acme, s3=s3, queue=queue, tmp=tmp_path, procs=web.procs)
        try:
            yield ops
        finally:
            for proc in reversed(ops.procs):
                proc.stop()
            client.close()
            sim.close()
            queue.flushdb()
            queue.close()


def test_status_reports_rows_oldest_unarchived_age_and_queue_depths(ops: Ops) -> None:
    assert ops.deliver(ops.sim.make_media(account="acme", message_type="image", size=1000)) == 202
    # 11 MB is over ARCHIVER_LARGE_MEDIA_BYTES (10 MiB): the large queue.
    assert (
        ops.deliver(ops.sim.make_media(account="acme", message_type="video", size=11_000_000))
        == 202
    )
    time.sleep(1.1)
    doc = json.loads(ops.cli("status", "--json").stdout)
    assert doc["rows"]["queued"] == 2 and doc["queueDepth"] == 2
    assert doc["queues"] == {"archive": 1, "archive-large": 1}
    assert doc["workers"] == []  # none started yet
    assert doc["oldestUnarchivedAgeSeconds"] >= 1
    table = ops.cli("status").stdout
    assert "oldest unarchived" in table and "queue archive-large" in table
    assert "workers                     0" in table


def test_a_burst_of_videos_does_not_hold_up_photos(ops: Ops) -> None:
    videos = [
        ops.sim.make_media(account="acme", message_type="video", size=11_000_000) for _ in range(3)
    ]
    photos = [
        ops.sim.make_media(account="acme", message_type="image", size=40_000) for _ in range(5)
    ]
    for item in [*videos, *photos]:  # the videos arrive first
        assert ops.deliver(item) == 202
    ops.worker("ops-small", ARCHIVER_WORKER_QUEUES="archive")
    for photo in photos:
        ops.wait_for(photo.media_id, "archived")
    assert {ops.rows()[v.media_id].status for v in videos} == {"queued"}
    doc = json.loads(ops.cli("status", "--json").stdout)
    assert doc["queues"] == {"archive": 0, "archive-large": 3}
    assert [(w["queues"], w["concurrency"]) for w in doc["workers"]] == [(["archive"], 1)]
    ops.worker("ops-large", ARCHIVER_WORKER_QUEUES="archive-large")
    for video in videos:
        assert ops.wait_for(video.media_id, "archived").sha256 == video.sha256


def test_a_replayed_delivery_of_an_archived_event_changes_nothing(ops: Ops) -> None:
    item = ops.sim.make_media(account="acme", message_type="image", size=30_000)
    assert ops.deliver(item) == 202
    ops.worker("ops-replay")
    before = ops.wait_for(item.media_id, "archived")
    assert before.object_key is not None
    head = ops.s3.head_object(Bucket=ops.bucket, Key=before.object_key)
    downloads = ops.sim.stats().get("download", 0)
    # Titan's retries, or an attacker replaying a captured signed body: same bytes, same signature.
    assert [ops.deliver(item) for _ in range(3)] == [200, 200, 200]
    time.sleep(2)
    after = ops.rows()[item.media_id]
    fields = ("status", "attempts", "archived_at", "sha256", "object_key", "size", "updated_at")
    assert [getattr(after, f) for f in fields] == [getattr(before, f) for f in fields]
    assert len(ops.rows()) == 1
    assert ops.queue.llen("archive") == 0
    again = ops.s3.head_object(Bucket=ops.bucket, Key=before.object_key)
    assert (again["ETag"], again["LastModified"]) == (head["ETag"], head["LastModified"])
    assert ops.sim.stats().get("download", 0) == downloads  # Titan was not asked again


def test_a_burst_of_small_media_is_archived_in_batches_once_each(ops: Ops) -> None:
    from archiver.media.recording import Arrival
    from archiver.tables import Tenant
    from devstack.fixtures import record
    from receiver.envelope import media_item
    from receiver.publisher import Publisher

    items = [
        ops.sim.make_media(account="acme", message_type="image", size=20_000) for _ in range(40)
    ]
    engine = make_engine(ops.database_url)
    with session_scope(engine) as session:
        tenant = session.exec(select(Tenant)).one()
        parsed = [media_item(i.envelope) for i in items]
        arrivals = [Arrival(tenant.id or 0, "download", it) for it in parsed if it is not None]
    recorded = record(engine, arrivals)
    engine.dispose()
    settings = ops.settings()
    publisher = Publisher(make_celery(settings), settings.broker_url)
    publisher.publish([(r.pk, "archive") for r in recorded])  # as one group commit would
    publisher.close()
    messages = [json.loads(m) for m in ops.queue.lrange("archive", 0, -1)]
    assert [m["headers"]["task"] for m in messages] == ["worker.archive_batch"] * 8  # 8 x 5 rows
    downloads = ops.sim.stats().get("download", 0)
    ops.worker("ops-batch")
    for item in items:
        assert ops.wait_for(item.media_id, "archived").sha256 == item.sha256
    assert ops.sim.stats().get("download", 0) - downloads == 40  # each fetched once
    assert ops.queue.llen("archive") == 0


def test_failed_rows_are_listed_with_reasons_and_retried_to_archived(ops: Ops) -> None:
    gone = ops.sim.make_media(account="acme", message_type="document", size=5000, gone=True)
    ok = ops.sim.make_media(account="acme", message_type="image", size=5000)
    assert ops.deliver(gone) == 202 and ops.deliver(ok) == 202
    ops.worker("ops-w1")
    ops.wait_for(gone.media_id, "failed")
    ops.wait_for(ok.media_id, "archived")
    failed = json.loads(ops.cli("media", "failed", "--format", "json").stdout)
    assert [f["id"] for f in failed] == [gone.media_id] and "404" in failed[0]["lastError"]
    # The operator fixes the cause (here: Titan has the file again), then re-drives.
    ops.sim.make_media(account="acme", message_type="document", size=5000)  # unrelated
    import httpx

    httpx.post(
        f"{ops.sim.base_url}/_sim/media",
        json={
            "account": "acme",
            "mediaId": gone.media_id,
            "session": gone.session,
            "mimeType": gone.mime_type,
            "size": gone.size,
        },
    ).raise_for_status()
    result = ops.cli("media", "retry", "--id", gone.media_id)
    assert json.loads(result.stdout) == {"requeued": 1}
    row = ops.wait_for(gone.media_id, "archived")
    assert row.sha256 == gone.sha256 and row.attempts == 1


def test_retry_needs_a_selection(ops: Ops) -> None:
    result = ops.cli("media", "retry", codes=(2,))
    assert result.returncode == 2 and "--all" in result.stderr


def test_requeue_stuck_queues_rows_the_broker_lost(ops: Ops) -> None:
    items = [ops.sim.make_media(account="acme", message_type="image", size=2000) for _ in range(3)]
    assert [ops.deliver(i) for i in items] == [202] * 3
    ops.queue.flushdb()  # the broker forgets everything
    time.sleep(1.2)  # longer than ARCHIVER_STUCK_AFTER_SECONDS
    report = json.loads(ops.cli("media", "requeue", "--stuck").stdout)
    assert report["lostByBroker"] == 3 and report["queueDepth"] == 0
    assert ops.queue.llen(ARCHIVE_QUEUE) == 3
    # A second sweep sees the queue holding them and adds nothing.
    assert json.loads(ops.cli("media", "requeue", "--stuck").stdout)["requeued"] == 0
    ops.worker("ops-w2")
    for item in items:
        ops.wait_for(item.media_id, "archived")


def test_a_message_taken_by_a_worker_killed_before_starting_it_is_requeued(ops: Ops) -> None:
    # Redis hands out a dead consumer's unacknowledged messages only after the visibility
    # timeout (2 hours): the sweeper must not wait for that.
    item = ops.sim.make_media(account="acme", message_type="image", size=2000)
    assert ops.deliver(item) == 202
    pk = ops.rows()[item.media_id].pk
    assert pk is not None
    ops.queue.flushdb()  # the receiver's message, replaced by one a worker holds unstarted
    app = make_celery(ops.settings())
    try:
        publish_archive(app, pk=pk, countdown=4)
    finally:
        app.close()
    worker = ops.worker("ops-doomed")
    processes.wait_until(lambda: ops.queue.hlen("unacked") == 1, timeout=30, what="a reservation")
    worker.stop(signal.SIGKILL)
    assert ops.rows()[item.media_id].status == "queued"
    # Not before the message could still be a live worker's (a lease plus the stuck delay).
    assert json.loads(ops.cli("media", "requeue", "--stuck").stdout)["lostByBroker"] == 0
    time.sleep(6.5)  # ARCHIVER_LEASE_SECONDS + ARCHIVER_STUCK_AFTER_SECONDS
    report = json.loads(ops.cli("media", "requeue", "--stuck").stdout)
    assert report["lostByBroker"] == 1
    ops.worker("ops-heir")
    row = ops.wait_for(item.media_id, "archived")
    assert row.attempts == 1 and row.sha256 == item.sha256


def test_reconcile_finds_missing_and_altered_objects_and_requeues_them(ops: Ops) -> None:
    items = [
        ops.sim.make_media(account="acme", message_type="video", size=s)
        for s in (3000, 9 * 1024 * 1024, 4000, 9 * 1024 * 1024)
    ]
    assert [ops.deliver(i) for i in items] == [202] * 4
    worker = ops.worker("ops-w3")
    rows = [ops.wait_for(i.media_id, "archived") for i in items]
    assert rows[1].etag and rows[1].etag.endswith('-2"')  # multipart: checked by its ETag
    clean = json.loads(ops.cli("reconcile").stdout.splitlines()[-1])
    assert clean == {"checked": 4, "ok": 4, "differences": 0, "requeued": 0}
    worker.stop()
    keys = [row.object_key for row in rows]
    assert None not in keys
    ops.s3.delete_object(Bucket=ops.bucket, Key=str(keys[0]))
    ops.s3.put_object(
        Bucket=ops.bucket, Key=str(keys[1]), Body=b"tampered", Metadata={"sha256": "0" * 64}
    )
    ops.s3.put_object(Bucket=ops.bucket, Key=str(keys[2]), Body=os.urandom(4000))
    ops.s3.put_object(Bucket=ops.bucket, Key=str(keys[3]), Body=os.urandom(9 * 1024 * 1024))
    found = ops.cli("reconcile", "--tenant", "acme", "--concurrency", "3", codes=(0, 3))
    assert found.returncode == 3, found.stderr  # differences found
    lines = found.stdout.splitlines()
    problems = {json.loads(line)["id"]: json.loads(line)["problem"] for line in lines[:-1]}
    assert problems[items[0].media_id] == "object missing"
    assert problems[items[1].media_id].startswith("size ")
    # Same size, no hash metadata: only the ETag the row kept tells they were replaced.
    replaced = "etag differs from the row: the object was replaced"
    assert problems[items[2].media_id] == problems[items[3].media_id] == replaced
    assert json.loads(lines[-1])["requeued"] == 4
    ops.worker("ops-w4")
    for item in items:
        row = ops.wait_for(item.media_id, "archived")
        assert row.sha256 == item.sha256
    assert json.loads(ops.cli("reconcile").stdout.splitlines()[-1])["ok"] == 4


def test_sigterm_lets_a_running_transfer_finish_within_the_grace_period(ops: Ops) -> None:
    item = ops.sim.make_media(account="acme", message_type="video", size=12 * 1024 * 1024)
    ops.sim.set_faults(slow_ms=40)  # about 2 s for 48 chunks of 256 KiB
    worker = ops.worker("ops-grace", ARCHIVER_SHUTDOWN_GRACE_SECONDS="20")
    assert ops.deliver(item) == 202
    ops.wait_for(item.media_id, "archiving")
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)
    row = ops.rows()[item.media_id]
    assert row.status == "archived" and row.attempts == 1 and row.sha256 == item.sha256


def test_sigterm_hands_back_a_transfer_that_outlasts_the_grace_period(ops: Ops) -> None:
    item = ops.sim.make_media(account="acme", message_type="video", size=12 * 1024 * 1024)
    ops.sim.set_faults(slow_ms=200)  # about 10 s
    worker = ops.worker("ops-short", ARCHIVER_SHUTDOWN_GRACE_SECONDS="1")
    assert ops.deliver(item) == 202
    ops.wait_for(item.media_id, "archiving")
    started = time.monotonic()
    worker.proc.send_signal(signal.SIGTERM)
    worker.proc.wait(30)
    assert time.monotonic() - started < 8
    assert ops.rows()[item.media_id].status != "archived"
    ops.sim.set_faults()
    ops.worker(
        "ops-next"
    )  # the next worker (or its sweeper) takes the row over once the lease ends
    row = ops.wait_for(item.media_id, "archived", timeout=60)
    assert row.attempts == 2 and row.sha256 == item.sha256
    assert ops.s3.list_multipart_uploads(Bucket=ops.bucket).get("Uploads", []) == []
