"""Renditions end to end: real receiver, archive and render worker processes, the Titan
simulator's real sample files, a real S3 endpoint (moto, and Ceph's RADOS Gateway with
PostgreSQL); each rendition is read back from the bucket and decoded."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
import httpx
import pytest
import redis
from PIL import Image
from sqlalchemy import update
from sqlmodel import col, select

from archiver.infra.broker import make_celery
from archiver.infra.db import make_engine, session_scope
from archiver.media.render_requests import publish_render
from archiver.queue import RENDER_QUEUE
from archiver.tables import Media
from devstack import processes, services
from devstack.fixtures import TenantSetup, add_tenant, process_env, start_web
from devstack.rig import RedisDatabases, Rig
from tests.conftest import migrated_database, s3_of
from titan_simulator.sender import SentMedia, Simulator

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SAMPLES = ("image", "video", "audio", "document", "sticker")


@dataclass
class Renders(Rig):
    acme: TenantSetup
    s3: S3Client
    api_key: str
    procs: list[processes.Process]
    queue: redis.Redis

    def api(self, path: str, **params: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        return httpx.get(f"{self.receiver_url}{path}", headers=headers, params=params, timeout=10)

    def info(self, media_id: str) -> dict[str, Any]:
        """The media's MediaInfo, as the API gives it to acme's key."""
        answer = self.api(f"/api/media/{media_id}")
        assert answer.status_code == 200, answer.text
        data: dict[str, Any] = answer.json()["data"]
        return data

    def row(self, media_id: str) -> Media:
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                found = session.exec(select(Media).where(Media.media_id == media_id)).one()
                session.expunge(found)
                return found
        finally:
            engine.dispose()

    def wait_rendered(self, media_id: str, state: str = "done", timeout: float = 90) -> Media:
        processes.wait_until(
            lambda: self.row(media_id).render_state == state,
            timeout=timeout,
            what=f"{media_id} render {state}",
        )
        return self.row(media_id)

    def object(self, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=self.acme.bucket, Key=key)["Body"].read())

    def update_row(self, pk: int | None, **values: Any) -> None:
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                session.execute(update(Media).where(col(Media.pk) == pk).values(**values))
        finally:
            engine.dispose()

    def render_worker(self, name: str) -> processes.Process:
        argv = [*processes.worker_argv(concurrency=1), "-n", f"{name}@%h"]
        proc = processes.start_process(
            name, argv, {**self.env, "ARCHIVER_WORKER_QUEUES": RENDER_QUEUE}
        )
        self.procs.append(proc)
        return proc


@pytest.fixture(
    scope="module",
    params=["moto-sqlite", pytest.param("rgw-postgres", marks=[pytest.mark.rgw])],
)
def rig(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_dbs: RedisDatabases,
    pg_admin_url: str | None,
) -> Iterator[Renders]:
    from archiver.tenants.api_keys import issue_key
    from archiver.tenants.tenants import get_tenant

    backend, kind = request.param.split("-")
    s3_endpoint = s3_of(request, backend)
    tmp = tmp_path_factory.mktemp("renditions")
    broker = redis_dbs.take()
    queue = redis.Redis.from_url(broker)
    queue.flushdb()
    with migrated_database(kind, tmp, pg_admin_url) as database_url:
        env = process_env(
            database_url, broker, ARCHIVER_STUCK_AFTER_SECONDS="2", ARCHIVER_LEASE_SECONDS="5"
        )
        web = start_web("rend", env)
        procs = [
            *web.procs,
            processes.start_process("rend-worker", processes.worker_argv(concurrency=2), env),
        ]
        sim = Simulator(web.sim_url)
        tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="acme")
        engine = make_engine(database_url)
        with session_scope(engine) as session:
            api_key = issue_key(session, tenant_id=get_tenant(session, name="acme").id or 0)
        engine.dispose()
        client = httpx.Client(timeout=30)
        world = Renders(
            database_url,
            s3_endpoint,
            web.receiver_url,
            sim,
            env,
            client,
            acme=tenant,
            s3=services.s3_client(s3_endpoint),
            api_key=api_key,
            procs=procs,
            queue=queue,
        )
        world.render_worker("rend-render")
        try:
            yield world
        finally:
            for proc in reversed(world.procs):
                proc.stop()
            client.close()
            sim.close()
            queue.flushdb()
            queue.close()


def _sample(rig: Renders, kind: str) -> SentMedia:
    return rig.sim.make_media(account="acme", message_type=kind, size=0, sample=True)


def test_each_sample_is_archived_then_rendered_and_every_rendition_decodes(rig: Renders) -> None:
    items = {kind: _sample(rig, kind) for kind in SAMPLES}
    for item in items.values():
        rig.send(rig.acme, item)
    rows = {kind: rig.wait_rendered(item.media_id) for kind, item in items.items()}
    for kind, row in rows.items():
        assert row.status == "archived" and row.sha256 == items[kind].sha256, kind

    def thumbnail(kind: str) -> Image.Image:
        doc = rig.info(items[kind].media_id)
        (entry,) = [r for r in doc["renditions"] if r["kind"] == "thumbnail"]
        assert entry["mimeType"] == "image/webp"
        key = f"{rows[kind].object_key}.thumb.webp"
        data = rig.object(key)
        assert len(data) == entry["size"]
        head = rig.s3.head_object(Bucket=rig.acme.bucket, Key=key)
        assert head["Metadata"]["sha256"] == hashlib.sha256(data).hexdigest()
        assert head["ContentType"] == "image/webp"
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "WEBP"
        return image

    assert thumbnail("image").size == (320, 240)
    assert thumbnail("sticker").size == (256, 256)
    assert thumbnail("video").size == (320, 240)
    assert max(thumbnail("document").size) == 320

    image = rig.info(items["image"].media_id)
    assert (image["width"], image["height"], image["durationSeconds"]) == (480, 360, None)
    video = rig.info(items["video"].media_id)
    assert (video["width"], video["height"], video["durationSeconds"]) == (320, 240, 3.0)
    assert rig.info(items["document"].media_id)["pages"] == 1

    audio = rig.info(items["audio"].media_id)
    assert abs(audio["durationSeconds"] - 4.0) < 0.1
    assert [(r["kind"], r["mimeType"]) for r in audio["renditions"]] == [("audio", "audio/mp4")]
    with av.open(io.BytesIO(rig.object(f"{rows['audio'].object_key}.m4a")), mode="r") as m4a:
        assert m4a.streams.audio[0].codec_context.name == "aac"
        assert m4a.duration is not None and abs(m4a.duration / 1e6 - 4.0) < 0.2


def test_thumbnail_and_rendition_routes_redirect_to_presigned_urls(rig: Renders) -> None:
    video, audio = _sample(rig, "video"), _sample(rig, "audio")
    for item in (video, audio):
        rig.send(rig.acme, item)
        rig.wait_rendered(item.media_id)
    answer = rig.api(f"/api/media/{video.media_id}/thumbnail")
    assert answer.status_code == 307 and answer.headers["cache-control"] == "no-store"
    fetched = httpx.get(answer.headers["location"], timeout=10)
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(fetched.content)).size == (320, 240)

    answer = rig.api(f"/api/media/{audio.media_id}/content", rendition="audio")
    assert answer.status_code == 307
    fetched = httpx.get(answer.headers["location"], timeout=10)
    assert fetched.headers["content-type"] == "audio/mp4" and fetched.content[4:8] == b"ftyp"
    # The original is still what /content gives without a rendition.
    original = httpx.get(rig.api(f"/api/media/{audio.media_id}/content").headers["location"])
    assert hashlib.sha256(original.content).hexdigest() == audio.sha256

    missing = rig.api(f"/api/media/{audio.media_id}/thumbnail")
    assert missing.status_code == 404 and "no thumbnail rendition" in missing.json()["error"]
    bad = rig.api(f"/api/media/{audio.media_id}/content", rendition="poster")
    assert bad.status_code == 400 and bad.json()["error"].startswith("rendition:")
    assert rig.api("/api/media/NOPE/thumbnail").status_code == 404


def test_a_file_that_does_not_decode_stays_archived_and_its_render_fails(rig: Renders) -> None:
    noise = rig.sim.make_media(account="acme", message_type="video", size=300_000)
    rig.send(rig.acme, noise)
    row = rig.wait_rendered(noise.media_id, "failed")
    assert row.status == "archived" and row.sha256 == noise.sha256 and row.last_error is None
    assert row.render_error and row.renditions is None
    doc = rig.info(noise.media_id)
    assert doc["renditions"] == [] and doc["width"] is None and doc["status"] == "archived"


def test_renditions_off_then_backfilled_by_media_render_missing(rig: Renders) -> None:
    # A tenant of its own, off before any worker has read it (workers cache a tenant ~10 s).
    globex = add_tenant(rig.database_url, sim=rig.sim, s3_endpoint=rig.s3_endpoint, name="globex")
    rig.cli("tenants", "update", "globex", "--no-renditions", "--no-check")
    assert json.loads(rig.cli("tenants", "show", "globex").stdout)["renditions"] is False
    items = [
        rig.sim.make_media(account="globex", message_type=kind, size=0, sample=True)
        for kind in ("image", "audio")
    ]
    for item in items:
        rig.send(globex, item)
    processes.wait_until(
        lambda: all(rig.row(i.media_id).status == "archived" for i in items),
        timeout=60,
        what="archived",
    )
    assert [rig.row(i.media_id).render_state for i in items] == [None, None]
    # Off: nothing to ask for.
    assert json.loads(rig.cli("media", "render", "--missing", "--tenant", "globex").stdout) == {
        "asked": 0
    }
    rig.cli("tenants", "update", "globex", "--renditions", "--no-check")
    done = rig.cli("media", "render", "--missing", "--tenant", "globex", "--wait", "60")
    assert json.loads(done.stdout) == {"asked": 2, "pending": 0}
    assert "asking for renditions" in done.stderr and "rendering" in done.stderr
    image, audio = (rig.row(i.media_id) for i in items)
    assert (image.render_state, image.width, image.height) == ("done", 480, 360)
    assert audio.render_state == "done" and audio.duration_seconds
    assert json.loads(rig.cli("media", "render", "--missing").stdout) == {"asked": 0}


def test_an_ask_the_broker_lost_is_asked_again_by_the_sweeper(rig: Renders) -> None:
    from archiver.scheduling.sweep import reask_renders
    from archiver.tables import utcnow

    rig.procs[-1].stop()  # the render worker, so the ask waits in the queue
    rig.procs.pop()
    item = _sample(rig, "image")
    rig.send(rig.acme, item)
    processes.wait_until(
        lambda: rig.row(item.media_id).render_state == "pending", timeout=60, what="pending"
    )
    processes.wait_until(lambda: rig.queue.llen(RENDER_QUEUE) >= 1, timeout=30, what="asked")
    status = subprocess.run(
        [sys.executable, "-m", "archiver.cli", "status", "--json"],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    renders = json.loads(status.stdout)["renders"]
    assert renders["pending"] >= 1 and renders["queueDepth"] >= 1, renders
    rig.queue.delete(RENDER_QUEUE)  # the broker forgets it
    settings = rig.settings()
    engine = make_engine(rig.database_url)
    app = make_celery(settings)
    try:
        # Not before ARCHIVER_STUCK_AFTER_SECONDS (2 s here) since it was asked.
        asked_at = rig.row(item.media_id).updated_at
        assert asked_at is not None
        assert reask_renders(engine, app, settings, now=asked_at) == 0
        processes.wait_until(
            lambda: reask_renders(engine, app, settings, now=utcnow()) >= 1,
            timeout=30,
            what="asked again",
        )
        assert rig.queue.llen(RENDER_QUEUE) >= 1
        # A queue that still holds asks is left alone: they may be among them.
        assert reask_renders(engine, app, settings, now=utcnow()) == 0
    finally:
        app.close()
        engine.dispose()
    rig.render_worker("rend-render2")
    rig.wait_rendered(item.media_id)


def test_erasure_deletes_the_renditions_with_the_original(rig: Renders) -> None:
    item = _sample(rig, "audio")
    rig.send(rig.acme, item)
    row = rig.wait_rendered(item.media_id)
    assert row.object_key is not None
    keys = [row.object_key, f"{row.object_key}.m4a"]
    for key in keys:
        rig.s3.head_object(Bucket=rig.acme.bucket, Key=key)
    erased = rig.cli("media", "erase", "--tenant", "acme", "--id", item.media_id, "--yes")
    assert json.loads(erased.stdout)["rows"] == 1
    assert json.loads(erased.stdout)["objects"] == 2  # the original and its m4a
    listing = rig.s3.list_objects_v2(Bucket=rig.acme.bucket, Prefix=row.object_key)
    assert listing.get("KeyCount", 0) == 0, listing.get("Contents")


def test_media_titan_persisted_into_the_tenants_bucket_gets_renditions_too(rig: Renders) -> None:
    initech = add_tenant(
        rig.database_url,
        sim=rig.sim,
        s3_endpoint=rig.s3_endpoint,
        name="initech",
        strategy="persist",
    )
    # Titan's console points the account's storage at the tenant's bucket.
    target = {
        "bucket": initech.bucket,
        "endpoint": rig.s3_endpoint,
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    rig.sim.add_account(api_key=initech.titan_api_key, account="initech", s3=target)
    item = rig.sim.make_media(account="initech", message_type="video", size=0, sample=True)
    rig.send(initech, item)
    row = rig.wait_rendered(item.media_id)
    assert row.persisted and row.object_key is None and row.s3_url
    assert (row.width, row.height, row.duration_seconds) == (320, 240, 3.0)
    key = row.s3_url.split(f"/{initech.bucket}/", 1)[1] + ".thumb.webp"
    thumb = rig.s3.get_object(Bucket=initech.bucket, Key=key)["Body"].read()
    assert Image.open(io.BytesIO(thumb)).size == (320, 240)


def test_an_object_gone_from_the_bucket_fails_its_render_once(rig: Renders) -> None:
    item = _sample(rig, "image")
    rig.send(rig.acme, item)
    row = rig.wait_rendered(item.media_id)
    assert row.object_key is not None
    rig.s3.delete_object(Bucket=rig.acme.bucket, Key=row.object_key)
    rig.update_row(row.pk, render_state=None)  # as a row archived before renditions existed
    rig.cli("media", "render", "--missing", "--tenant", "acme")
    failed = rig.wait_rendered(item.media_id, "failed")
    assert failed.render_error == "the archived object is missing from the bucket"
    assert failed.status == "archived"  # reconcile's business, not the renderer's


def test_an_ask_whose_renders_never_finish_is_given_up(rig: Renders) -> None:
    item = _sample(rig, "image")
    rig.send(rig.acme, item)
    row = rig.wait_rendered(item.media_id)
    # Three renders of this ask started and never finished (a decoder that crashes its
    # worker, or hangs past the time limit): the fourth gives up instead of trying.
    rig.update_row(row.pk, render_state="pending", render_attempts=3, renditions=None)
    app = make_celery(rig.settings())
    try:
        publish_render(app, pks=[row.pk or 0])
    finally:
        app.close()
    failed = rig.wait_rendered(item.media_id, "failed")
    assert failed.render_error is not None and "gave up after 3 renders" in failed.render_error
    assert failed.render_attempts == 4 and failed.status == "archived"
    # `media render --missing` leaves a failed render alone; with --failed it asks afresh.
    assert json.loads(rig.cli("media", "render", "--missing", "--tenant", "acme").stdout) == {
        "asked": 0
    }
    rig.cli("media", "render", "--missing", "--failed", "--tenant", "acme")
    assert rig.wait_rendered(item.media_id).render_attempts == 1
