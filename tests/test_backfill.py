"""Backfill: a media id known from elsewhere (its webhook never arrived) is archived through
the same path as a webhook's, once: `titan-archiver media add`. Real processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import select

from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media
from devstack import processes
from devstack.fixtures import TenantSetup, add_tenant, process_env, running_archiver
from tests.conftest import migrated_database
from tests.test_cli import run
from titan_simulator.sender import Simulator, post_signed


@dataclass
class Stack:
    database_url: str
    env: dict[str, str]
    receiver_url: str
    sim: Simulator
    tenant: TenantSetup

    def add(self, *args: str) -> Any:
        return run(self.database_url, "media", "add", self.tenant.name, *args, env=self.env)

    def rows(self) -> list[Media]:
        engine = make_engine(self.database_url)
        try:
            with session_scope(engine) as session:
                return list(session.exec(select(Media)))
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_url: str,
    s3_endpoint: str,
    pg_admin_url: str | None,
) -> Iterator[Stack]:
    broker = redis_url.rsplit("/", 1)[0] + "/9"
    with migrated_database(request.param, tmp_path, pg_admin_url) as database_url:
        env = process_env(database_url, broker)
        with running_archiver("backfill", env, tmp_path) as (web, sim):
            tenant = add_tenant(database_url, sim=sim, s3_endpoint=s3_endpoint, name="backfill")
            yield Stack(database_url, env, web.receiver_url, sim, tenant)


def test_a_media_id_known_from_elsewhere_is_archived_once(stack: Stack) -> None:
    item = stack.sim.make_media(account="backfill", message_type="image", size=50_000)
    args = ["--session", "default", "--media-id", item.media_id, "--mime-type", "image/jpeg"]
    first = json.loads(stack.add(*args).stdout)
    assert first == {"id": item.media_id, "tenant": "backfill", "status": "queued"}
    processes.wait_until(
        lambda: [r.status for r in stack.rows()] == ["archived"], timeout=60, what="archived"
    )
    (row,) = stack.rows()
    assert (row.sha256, row.message_type, row.mime_type) == (item.sha256, "image", "image/jpeg")

    # Adding it again, or its webhook arriving late, changes nothing.
    assert json.loads(stack.add(*args).stdout)["status"] == "duplicate"
    url = f"{stack.receiver_url}/webhooks/{stack.tenant.name}"
    with httpx.Client(timeout=30) as client:
        late = post_signed(client, url, stack.tenant.hmac_key, item.envelope)
    assert late.status_code == 200 and late.json()["status"] == "duplicate"
    assert len(stack.rows()) == 1


def test_bad_backfill_input_is_refused_naming_the_option(stack: Stack) -> None:
    for args, flag in (
        (["--session", "no spaces", "--media-id", "m1"], "--session"),
        (["--session", "default", "--media-id", "a\x01b"], "--media-id"),
    ):
        result = run(
            stack.database_url,
            "media",
            "add",
            stack.tenant.name,
            *args,
            check=False,
            env=stack.env,
        )
        assert result.returncode == 2 and flag in result.stderr
    unknown = run(
        stack.database_url,
        "media",
        "add",
        "ghost",
        "--session",
        "default",
        "--media-id",
        "m1",
        check=False,
        env=stack.env,
    )
    assert unknown.returncode == 1 and "no tenant named 'ghost'" in unknown.stderr
    assert stack.rows() == []
