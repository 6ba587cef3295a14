"""Backfill: a media id known from elsewhere (its webhook never arrived) is archived through
the same path as a webhook's, once: `titan-archiver media add`. Real processes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import processes
from devstack.fixtures import TenantSetup, process_env
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database


@dataclass
class Stack(Rig):
    backfill: TenantSetup

    def add(self, *args: str) -> Any:
        return self.cli("media", "add", self.backfill.name, *args)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_dbs: RedisDatabases,
    s3_endpoint: str,
    pg_admin_url: str | None,
) -> Iterator[Stack]:
    with migrated_database(request.param, tmp_path, pg_admin_url) as database_url:
        env = process_env(database_url, redis_dbs.take())
        with running_rig(
            "backfill", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp_path
        ) as rig:
            yield Stack(**vars(rig), backfill=rig.tenant("backfill"))


def test_a_media_id_known_from_elsewhere_is_archived_once(stack: Stack) -> None:
    item = stack.sim.make_media(account="backfill", message_type="image", size=50_000)
    args = ["--session", "default", "--media-id", item.media_id, "--mime-type", "image/jpeg"]
    first = json.loads(stack.add(*args).stdout)
    assert first == {"id": item.media_id, "tenant": "backfill", "status": "queued"}
    processes.wait_until(
        lambda: [r.status for r in stack.rows().values()] == ["archived"],
        timeout=60,
        what="archived",
    )
    (row,) = stack.rows().values()
    assert (row.sha256, row.message_type, row.mime_type) == (item.sha256, "image", "image/jpeg")

    # Adding it again, or its webhook arriving late, changes nothing.
    assert json.loads(stack.add(*args).stdout)["status"] == "duplicate"
    late = stack.post(stack.backfill, item.envelope)
    assert late.status_code == 200 and late.json()["status"] == "duplicate"
    assert len(stack.rows()) == 1


def test_bad_backfill_input_is_refused_naming_the_option(stack: Stack) -> None:
    for args, flag in (
        (["--session", "no spaces", "--media-id", "m1"], "--session"),
        (["--session", "default", "--media-id", "a\x01b"], "--media-id"),
    ):
        result = stack.cli("media", "add", stack.backfill.name, *args, codes=(2,))
        assert flag in result.stderr
    unknown = stack.cli(
        "media", "add", "ghost", "--session", "default", "--media-id", "m1", codes=(1,)
    )
    assert unknown.returncode == 1 and "no tenant named 'ghost'" in unknown.stderr
    assert stack.rows() == {}
