"""The product path with real processes: uvicorn receiver, Celery worker on Redis, the Titan
simulator over HTTP and moto's S3 server over HTTP, for two tenants, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from devstack import processes, services
from devstack.fixtures import process_env
from devstack.processes import Process, wait_until
from devstack.rig import RedisDatabases, Rig
from devstack.services import s3_client
from tests.conftest import migrated_database, s3_of
from titan_simulator.sender import SentMedia, Simulator, media_envelope, post_signed

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MB = 1_000_000
DOWNLOAD_MEDIA = [
    ("image", 150_000),
    ("video", 64 * MB),
    ("audio", 300_000),
    ("document", 1_200_000),
    ("sticker", 30_000),
    ("image", 9 * MB),
]
PERSIST_MEDIA = [
    ("image", 80_000),
    ("video", 6 * MB),
    ("audio", 200_000),
    ("document", 400_000),
    ("sticker", 20_000),
]


@dataclass
class Tenant:
    name: str
    hmac_key: str
    api_key: str
    bucket: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


@dataclass
class Stack(Rig):
    """Tenants added with the CLI and rows read through the query API, as a user does."""

    s3: S3Client
    acme: Tenant  # strategy download
    globex: Tenant  # strategy persist
    procs: list[Process]

    def deliver(self, tenant: Tenant, envelope: dict[str, Any]) -> httpx.Response:
        url = f"{self.receiver_url}/webhooks/{tenant.name}"
        return post_signed(self.client, url, tenant.hmac_key, envelope)

    def listed(self, tenant: Tenant) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
            page = self.client.get(
                f"{self.receiver_url}/api/media", params=params, headers=tenant.auth
            ).json()
            found += page["data"]
            cursor = page["nextCursor"]
            if cursor is None:
                return found

    def wait_terminal(
        self, tenant: Tenant, count: int, timeout: float = 240
    ) -> list[dict[str, Any]]:
        def done() -> bool:
            rows = self.listed(tenant)
            return len(rows) >= count and all(r["status"] in ("archived", "failed") for r in rows)

        try:
            wait_until(done, timeout=timeout, interval=0.5, what=f"{tenant.name} rows to finish")
        except TimeoutError:
            for proc in self.procs:
                print(f"--- {proc.name} log ---\n{proc.log()[-5000:]}")
            raise
        return self.listed(tenant)

    def objects(self, bucket: str) -> dict[str, int]:
        listing = self.s3.list_objects_v2(Bucket=bucket)
        return {o["Key"]: o["Size"] for o in listing.get("Contents", [])}

    def sha256_of(self, bucket: str, key: str) -> str:
        digest = hashlib.sha256()
        for chunk in self.s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "archiver.cli", *args],
        env={**__import__("os").environ, **env},
        capture_output=True,
        text=True,
        check=True,
        cwd=processes.ROOT,
    )
    return json.loads(out.stdout) if out.stdout.strip() else {}


# Database and S3 server: moto (AWS's semantics) on both databases, and a real S3 server
# (Ceph's RADOS Gateway, devstack/ceph.py) on PostgreSQL.
VARIANTS = {"sqlite": ("sqlite", "moto"), "postgres": ("postgres", "moto")}
VARIANTS["postgres-rgw"] = ("postgres", "rgw")


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("postgres-rgw", marks=[pytest.mark.postgres, pytest.mark.rgw]),
    ],
)
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_dbs: RedisDatabases,
    pg_admin_url: str | None,
) -> Iterator[Stack]:
    database, s3_kind = VARIANTS[request.param]
    s3_endpoint = s3_of(request, s3_kind)
    tmp: Path = tmp_path_factory.mktemp(f"e2e-{request.param}")
    with migrated_database(database, tmp, pg_admin_url) as database_url:
        # Each variant gets its own Redis database so the stacks never share a queue.
        broker = redis_dbs.take()
        env = process_env(database_url, broker)
        s3 = s3_client(s3_endpoint)
        procs: list[Process] = []
        built: Stack | None = None
        try:
            sim = services.start_simulator("simulator")
            procs.append(sim.process)
            receiver = services.start_receiver("receiver", env)
            procs.append(receiver.process)
            worker = processes.worker_argv(2, beat=tmp / "beat-schedule")
            procs.append(processes.start_process("worker", worker, env))
            sim_url, receiver_url = sim.url, receiver.url
            built = _setup(
                request.param, database_url, env, s3, s3_endpoint, sim_url, receiver_url, procs
            )
            yield built
        finally:
            if built is not None:
                built.client.close()
                built.sim.close()
            for proc in reversed(procs):
                proc.stop()


def _setup(
    backend: str,
    database_url: str,
    env: dict[str, str],
    s3: S3Client,
    s3_endpoint: str,
    sim_url: str,
    receiver_url: str,
    procs: list[Process],
) -> Stack:
    wait_until(lambda: processes.http_up(sim_url + "/_sim/stats"), timeout=30, what="simulator")
    wait_until(lambda: processes.http_up(receiver_url + "/healthz"), timeout=30, what="receiver")
    sim = Simulator(sim_url)
    tenants = {}
    for name, strategy in (("acme", "download"), ("globex", "persist")):
        bucket = f"{name}-{backend}-{secrets.token_hex(4)}"
        s3.create_bucket(Bucket=bucket)
        hmac_key, titan_key = secrets.token_urlsafe(16), "titan_" + secrets.token_urlsafe(16)
        # For 'persist', the bucket is the one configured in Titan's console for the account.
        persist_target = {
            "bucket": bucket,
            "endpoint": s3_endpoint,
            "access_key_id": "testing",
            "secret_access_key": "testing",
        }
        sim.add_account(
            api_key=titan_key, account=name, s3=persist_target if strategy == "persist" else None
        )
        added = cli(
            env,
            "tenants",
            "add",
            name,
            "--hmac-key",
            hmac_key,
            "--titan-url",
            sim_url,
            "--titan-api-key",
            titan_key,
            "--strategy",
            strategy,
            "--s3-bucket",
            bucket,
            "--s3-endpoint",
            s3_endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-access-key-id",
            "testing",
            "--s3-secret-access-key",
            "testing",
            "--s3-prefix",
            f"wa/{name}",
        )
        tenants[name] = Tenant(name=name, hmac_key=hmac_key, api_key=added["apiKey"], bucket=bucket)
    rig = Rig(database_url, s3_endpoint, receiver_url, sim, env, httpx.Client(timeout=30))
    return Stack(**vars(rig), s3=s3, acme=tenants["acme"], globex=tenants["globex"], procs=procs)


def send_all(stack: Stack, tenant: Tenant, media: list[SentMedia]) -> list[int]:
    return [stack.deliver(tenant, item.envelope).status_code for item in media]


def test_archives_every_media_type_for_two_tenants_with_both_strategies(stack: Stack) -> None:
    acme_media = [
        stack.sim.make_media(account="acme", message_type=t, size=s, session="support")
        for t, s in DOWNLOAD_MEDIA
    ]
    globex_media = [
        stack.sim.make_media(account="globex", message_type=t, size=s, session="sales")
        for t, s in PERSIST_MEDIA
    ]
    auto = media_envelope(
        media_id="AUTO" + secrets.token_hex(4),
        message_id="3EB0AUTO",
        session="support",
        message_type="image",
        mime_type="image/jpeg",
        size=1234,
        media_url="https://tenant-bucket.s3.amazonaws.com/auto.jpg",
    )
    downloads_before = stack.sim.stats().get("download", 0)

    assert send_all(stack, stack.acme, acme_media) == [202] * len(acme_media)
    assert send_all(stack, stack.globex, globex_media) == [202] * len(globex_media)
    assert stack.deliver(stack.acme, auto).status_code == 202

    acme_rows = {r["id"]: r for r in stack.wait_terminal(stack.acme, len(acme_media) + 1)}
    globex_rows = {r["id"]: r for r in stack.wait_terminal(stack.globex, len(globex_media))}

    # Download strategy: every object's bytes in acme's bucket, under its deterministic key.
    acme_objects = stack.objects(stack.acme.bucket)
    for item in acme_media:
        row = acme_rows[item.media_id]
        assert row["status"] == "archived", row
        assert row["bucket"] == stack.acme.bucket and row["key"] in acme_objects
        assert row["key"].startswith("wa/acme/acme/support/") and row["key"].endswith(
            {
                "image": ".jpg",
                "video": ".mp4",
                "audio": ".ogg",
                "document": ".pdf",
                "sticker": ".webp",
            }[item.message_type]
        )
        assert row["sha256"] == item.sha256 == stack.sha256_of(stack.acme.bucket, row["key"])
        assert row["size"] == row["fileLength"] == item.size == acme_objects[row["key"]]
        assert (row["messageId"], row["session"], row["mimeType"], row["type"]) == (
            item.message_id,
            "support",
            item.mime_type,
            item.message_type,
        )
        assert row["persisted"] is True and row["s3Url"] == f"s3://{stack.acme.bucket}/{row['key']}"
        assert row["sender"] == "+5511999999999" and row["caption"] and row["attempts"] == 1
        assert row["tenant"] == "acme" and row["strategy"] == "download"
        assert row["receivedAt"] and row["archivedAt"] and row["lastError"] is None
    assert len(acme_objects) == len(acme_media)

    # Auto-persisted: recorded with Titan's URL, no download made for it.
    auto_row = acme_rows[auto["payload"]["mediaId"]]
    assert auto_row["status"] == "archived" and auto_row["strategy"] == "auto"
    assert auto_row["s3Url"] == "https://tenant-bucket.s3.amazonaws.com/auto.jpg"
    assert stack.sim.stats().get("download", 0) - downloads_before == len(acme_media)

    # Persist strategy: Titan wrote the file into globex's bucket; we recorded its s3Url.
    globex_objects = stack.objects(stack.globex.bucket)
    for item in globex_media:
        row = globex_rows[item.media_id]
        assert row["status"] == "archived" and row["persisted"] is True, row
        assert row["s3Url"].startswith(f"{stack.s3.meta.endpoint_url}/{stack.globex.bucket}/")
        key = row["s3Url"].split(f"/{stack.globex.bucket}/", 1)[1]
        assert stack.sha256_of(stack.globex.bucket, key) == item.sha256
        assert row["strategy"] == "persist" and row["session"] == "sales"
    assert len(globex_objects) == len(globex_media)

    # Nothing of one tenant ever lands in the other's bucket.
    assert not any(k.startswith("wa/acme") for k in globex_objects)
    assert all(k.startswith("wa/acme/") for k in acme_objects)

    # Titan redelivers everything: acknowledged, no new rows, no new objects, no new downloads.
    downloads = stack.sim.stats().get("download", 0)
    assert set(send_all(stack, stack.acme, acme_media)) == {200}
    assert set(send_all(stack, stack.globex, globex_media)) == {200}
    assert stack.deliver(stack.acme, auto).status_code == 200
    time.sleep(2)
    assert len(stack.listed(stack.acme)) == len(acme_media) + 1
    assert len(stack.listed(stack.globex)) == len(globex_media)
    assert stack.objects(stack.acme.bucket) == acme_objects
    assert stack.sim.stats().get("download", 0) == downloads

    # One tenant's key sees only its own rows, by list and by id.
    foreign = acme_media[0].media_id
    assert (
        httpx.get(
            f"{stack.receiver_url}/api/media/{foreign}", headers=stack.globex.auth
        ).status_code
        == 404
    )
    one = httpx.get(f"{stack.receiver_url}/api/media/{foreign}", headers=stack.acme.auth).json()[
        "data"
    ]
    assert one == acme_rows[foreign]


def test_transient_titan_faults_are_retried_to_success(stack: Stack) -> None:
    media = [
        stack.sim.make_media(account="acme", message_type="image", size=700_000) for _ in range(4)
    ]
    stack.sim.set_faults(rate_limit=2, retry_after=1, bad_gateway=2, truncate=1, wrong_length=1)
    try:
        assert send_all(stack, stack.acme, media) == [202] * 4
        rows = {r["id"]: r for r in stack.wait_terminal(stack.acme, 1, timeout=120)}
        wait_until(
            lambda: all(
                r["status"] == "archived"
                for r in stack.listed(stack.acme)
                if r["id"] in {m.media_id for m in media}
            ),
            timeout=120,
            what="retries",
        )
    finally:
        stack.sim.set_faults()
    rows = {r["id"]: r for r in stack.listed(stack.acme)}
    for item in media:
        assert rows[item.media_id]["sha256"] == item.sha256
        assert stack.sha256_of(stack.acme.bucket, rows[item.media_id]["key"]) == item.sha256
    assert sum(rows[m.media_id]["attempts"] for m in media) > len(media)
    assert stack.s3.list_multipart_uploads(Bucket=stack.acme.bucket).get("Uploads", []) == []


def test_media_titan_reports_gone_fails_once_with_the_reason(stack: Stack) -> None:
    gone = stack.sim.make_media(account="acme", message_type="video", size=1000, gone=True)
    assert stack.deliver(stack.acme, gone.envelope).status_code == 202
    wait_until(
        lambda: any(
            r["id"] == gone.media_id and r["status"] == "failed" for r in stack.listed(stack.acme)
        ),
        timeout=60,
        what="failed row",
    )
    row = next(r for r in stack.listed(stack.acme) if r["id"] == gone.media_id)
    assert row["attempts"] == 1 and "404" in row["lastError"]


def test_downloads_redirected_to_another_host_never_carry_the_api_key(stack: Stack) -> None:
    item = stack.sim.make_media(account="acme", message_type="document", size=2_000_000)
    stack.sim.set_faults(redirect=True)
    try:
        assert stack.deliver(stack.acme, item.envelope).status_code == 202
        wait_until(
            lambda: any(
                r["id"] == item.media_id and r["status"] == "archived"
                for r in stack.listed(stack.acme)
            ),
            timeout=60,
            what="redirected download",
        )
    finally:
        stack.sim.set_faults()
    stats = stack.sim.stats()
    assert stats.get("blob", 0) >= 1 and stats.get("api_key_leaked_to_blob_host", 0) == 0
