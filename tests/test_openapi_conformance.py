"""Schemathesis against the running receiver: no 5xx, every answer matches /openapi.json."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update
from sqlmodel import col

from archiver.infra.db import make_engine, session_scope
from archiver.media.recording import MediaItem
from archiver.secrets_box import SecretBox
from archiver.tables import Media
from archiver.tenants.tenants import TenantSpec, create_tenant
from devstack import fixtures, processes, services
from devstack.fixtures import MASTER_KEY, process_env
from tests.conftest import migrated_database


def test_schemathesis_finds_no_failures(
    tmp_path: Path, redis_url: str, s3_endpoint: str, pg_admin_url: str | None
) -> None:
    with migrated_database("sqlite", tmp_path, pg_admin_url) as database_url:
        engine = make_engine(database_url)
        s3 = services.s3_client(s3_endpoint)
        bucket = "st-" + secrets.token_hex(4)
        s3.create_bucket(Bucket=bucket)
        with session_scope(engine) as session:
            tenant, api_key = create_tenant(
                session,
                box=SecretBox(MASTER_KEY),
                spec=TenantSpec(
                    name="acme",
                    hmac_key="hmac-key-acme",
                    titan_url="http://titan.invalid",
                    titan_api_key="titan_x",
                    strategy="download",
                    s3_bucket=bucket,
                    s3_endpoint=s3_endpoint,
                    s3_region="us-east-1",
                    s3_access_key_id="testing",
                    s3_secret_access_key="testing",
                ),
            )
            for i, kind in enumerate(["image", "video", "document"]):
                item = MediaItem(
                    media_id=f"M{i}",
                    session="support",
                    message_id=f"3EB0{i}",
                    message_type=kind,
                    mime_type="image/jpeg",
                    file_length=10,
                    sender="+1",
                    caption="c",
                    filename=None,
                    media_url=None,
                    message_at=None,
                    event_id=None,
                )
                session.commit()
                pk = fixtures.record_item(engine, tenant=tenant, item=item).pk
                if i == 0:
                    s3.put_object(Bucket=bucket, Key="k0", Body=b"0123456789")
                    session.execute(
                        update(Media)
                        .where(col(Media.pk) == pk)
                        .values(status="archived", bucket=bucket, object_key="k0", persisted=True)
                    )
        engine.dispose()
        port = processes.free_port()
        env = process_env(database_url, redis_url, ARCHIVER_ADMIN_API_KEY="admin-" + "k" * 30)
        receiver = processes.start_process(
            "schemathesis-receiver", processes.uvicorn_argv("receiver.app:create_app", port), env
        )
        try:
            processes.wait_until(
                lambda: processes.http_up(f"http://127.0.0.1:{port}/healthz"), timeout=30
            )
            result = subprocess.run(
                [
                    str(Path(sys.executable).with_name("schemathesis")),
                    "run",
                    f"http://127.0.0.1:{port}/openapi.json",
                    "--header",
                    f"Authorization: Bearer {api_key}",
                    "--checks",
                    "all",
                    "--max-examples",
                    "60",
                    "--seed",
                    "1",
                    "--no-color",
                ],
                capture_output=True,
                text=True,
                timeout=600,
                env={**os.environ, "NO_COLOR": "1"},
            )
        finally:
            receiver.stop()
        assert result.returncode == 0, result.stdout[-6000:]
        assert " passed" in result.stdout and "failures" not in result.stdout.split("SUMMARY")[-1]
        assert "Traceback" not in receiver.log()
