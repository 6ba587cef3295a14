"""Fixity audits: archived objects are read back and compared with what was archived. An
object overwritten behind the archiver's back and one deleted are flagged damaged, exactly
those two and nothing else, by `media verify` and by the beat's budgeted audit; moto with
SQLite and a real S3 server (Ceph's RADOS Gateway) with PostgreSQL. Real processes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update
from sqlmodel import col

from archiver.governance import fixity
from archiver.infra.db import make_engine, session_scope
from archiver.tables import Media, Status, utcnow
from devstack import processes, services
from devstack.fixtures import TenantSetup, process_env, scrape, total, upgrade
from devstack.processes import free_port
from devstack.rig import RedisDatabases, Rig, running_rig
from tests.conftest import migrated_database, s3_of
from tests.test_media_rows import item, make_tenant, record
from titan_simulator.sender import SentMedia

ADMIN = "fixity-admin-key-" + "f" * 16


@pytest.fixture(
    params=[
        "moto-sqlite",
        pytest.param("rgw-postgres", marks=[pytest.mark.rgw, pytest.mark.postgres]),
    ]
)
def backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    s3_kind, database = str(request.param).split("-")
    return s3_kind, database


@pytest.fixture
def rig_for(
    request: pytest.FixtureRequest,
    backend: tuple[str, str],
    tmp_path: Path,
    redis_dbs: RedisDatabases,
    pg_admin_url: str | None,
) -> Iterator[Rig]:
    s3_kind, database = backend
    s3_endpoint = s3_of(request, s3_kind)
    audits = request.node.get_closest_marker("audits") is not None
    with migrated_database(database, tmp_path, pg_admin_url) as database_url:
        env = process_env(
            database_url,
            redis_dbs.take(),
            ARCHIVER_ADMIN_API_KEY=ADMIN,
            ARCHIVER_FIXITY_INTERVAL_SECONDS="1" if audits else "3600",
            ARCHIVER_FIXITY_BYTES_PER_DAY=str(64 * 1024 * 1024) if audits else "0",
            ARCHIVER_WORKER_METRICS_PORT=str(free_port()),
        )
        with running_rig(
            "fixity", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp_path
        ) as rig:
            yield rig


def _archive_six(rig: Rig) -> tuple[TenantSetup, list[SentMedia], dict[str, Media]]:
    tenant = rig.tenant("fix")
    items = [rig.media(tenant, "image", size=40_000 + i) for i in range(5)]
    items.append(rig.media(tenant, "video", size=6 * 1024 * 1024))  # multipart
    rig.send(tenant, *items)
    rows = rig.wait_status(items, "archived", tenant=tenant)
    assert all(row.verified_at is not None for row in rows.values())  # hashed on the way in
    return tenant, items, rows


def _tamper(rig: Rig, tenant: TenantSetup, rows: dict[str, Media], items: list[SentMedia]) -> None:
    """Overwrite one object (same size, other bytes) and delete another, with the bucket's
    own credentials, as someone with access to the bucket could."""
    s3 = services.s3_client(rig.s3_endpoint)
    changed, gone = rows[items[1].media_id], rows[items[5].media_id]
    assert changed.object_key and gone.object_key and changed.size
    s3.put_object(Bucket=tenant.bucket, Key=changed.object_key, Body=os.urandom(changed.size))
    s3.delete_object(Bucket=tenant.bucket, Key=gone.object_key)


def test_verify_flags_exactly_the_overwritten_and_the_deleted_object(rig_for: Rig) -> None:
    rig = rig_for
    tenant, items, rows = _archive_six(rig)
    clean = json.loads(rig.cli("media", "verify", "--tenant", tenant.name, "--all").stdout)
    assert clean["checked"] == 6 and clean["ok"] == 6 and clean["damaged"] == 0

    _tamper(rig, tenant, rows, items)
    found = rig.cli("media", "verify", "--since", "2020-01-01", codes=(3,))
    doc = json.loads(found.stdout)
    assert doc["checked"] == 6 and doc["ok"] == 4 and doc["damaged"] == 2
    assert sorted(doc["damagedIds"]) == sorted([items[1].media_id, items[5].media_id])
    after = rig.rows(tenant)
    damaged = {i for i, row in after.items() if row.status == Status.DAMAGED}
    assert damaged == {items[1].media_id, items[5].media_id}
    assert "SHA-256" in str(after[items[1].media_id].last_error)
    assert "not in the bucket" in str(after[items[5].media_id].last_error)
    assert all(after[i.media_id].status == Status.ARCHIVED for i in (items[0], *items[2:5]))
    # status says so, with its own exit code; the API shows verifiedAt and the new state.
    status = rig.cli("status", "--format", "json", codes=(5,))
    assert json.loads(status.stdout)["rows"]["damaged"] == 2
    verify_usage = rig.cli("media", "verify", codes=(2,))
    assert "--all" in verify_usage.stderr


@pytest.mark.audits
def test_the_beats_audit_flags_them_counts_them_and_the_dashboard_says_so(rig_for: Rig) -> None:
    rig = rig_for
    tenant, items, rows = _archive_six(rig)
    _tamper(rig, tenant, rows, items)
    expected = {items[1].media_id, items[5].media_id}

    def flagged() -> bool:
        now = rig.rows(tenant)
        return {i for i, row in now.items() if row.status == Status.DAMAGED} == expected

    processes.wait_until(flagged, timeout=60, interval=0.5, what="the two rows damaged")
    processes.wait_until(
        lambda: all(row.audited_at is not None for row in rig.rows(tenant).values()),
        timeout=60,
        what="every row audited",
    )
    after = rig.rows(tenant)
    assert {i for i, row in after.items() if row.status == Status.DAMAGED} == expected
    for kept in (items[0], *items[2:5]):
        row, before = after[kept.media_id], rows[kept.media_id]
        assert row.status == Status.ARCHIVED and row.verified_at and before.verified_at
        assert row.verified_at > before.verified_at
    port = rig.env["ARCHIVER_WORKER_METRICS_PORT"]
    samples = scrape(f"http://127.0.0.1:{port}/metrics")
    assert total(samples, "archiver_fixity_failures_total", tenant=tenant.name) == 2
    assert total(samples, "archiver_fixity_checked_total", tenant=tenant.name) >= 6
    with httpx.Client(base_url=rig.receiver_url, timeout=30) as ui:
        ui.post("/ui/login", data={"key": ADMIN})
        page = ui.get("/ui/").text
    assert 'data-testid="damaged"' in page and "Damaged: 2 archived media" in page


def test_an_audit_reads_the_least_recently_verified_first_within_the_budget(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        tenant = make_tenant(engine, "budget")
        now = utcnow()
        ages = {"m0": 3, "m1": None, "m2": 1, "m3": 2}  # days since verified; None: never
        for media_id in ages:
            record(engine, tenant, item(media_id))
        with session_scope(engine) as session:
            for media_id, days in ages.items():
                session.execute(
                    update(Media)
                    .where(col(Media.media_id) == media_id)
                    .values(
                        status=Status.ARCHIVED.value,
                        size=100,
                        verified_at=None if days is None else now - timedelta(days=days),
                    )
                )
        with session_scope(engine) as session:
            chosen = fixity.due(session, tenant_id=tenant.saved_id, budget=250, now=now)
        # Never verified first, then the oldest; as many as 250 bytes cover.
        assert [r.media_id for r in chosen] == ["m1", "m0"]
        with session_scope(engine) as session:
            session.execute(
                update(Media)
                .where(col(Media.media_id).in_([r.media_id for r in chosen]))
                .values(audited_at=now)
            )
        with session_scope(engine) as session:
            assert fixity.read_today(session, tenant_id=tenant.saved_id, now=now) == 200
            # 50 bytes left: no 100-byte file fits until the day has passed.
            assert fixity.due(session, tenant_id=tenant.saved_id, budget=250, now=now) == []
            tomorrow = now + timedelta(days=1, seconds=1)
            again = fixity.due(session, tenant_id=tenant.saved_id, budget=250, now=tomorrow)
            huge = fixity.due(session, tenant_id=tenant.saved_id, budget=10, now=tomorrow)
        assert [r.media_id for r in again] == ["m1", "m0"]
        assert [r.media_id for r in huge] == ["m1"]  # larger than the budget: alone
    finally:
        engine.dispose()


def test_the_bytes_read_back_are_judged_by_size_then_sha256() -> None:
    row = Media(
        tenant_id=1, media_id="m", session="s", message_type="image", strategy="download", size=3
    )
    row.sha256 = "ab" * 32
    assert fixity.problem_with(row, 3, "ab" * 32) is None
    assert "4 bytes in the bucket, 3 archived" in str(fixity.problem_with(row, 4, "ab" * 32))
    assert "SHA-256" in str(fixity.problem_with(row, 3, "cd" * 32))
    row.sha256 = None  # never hashed (persisted by Titan before we read those back)
    assert fixity.problem_with(row, 3, "cd" * 32) is None
