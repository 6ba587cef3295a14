"""Tamper-evident records: archived media and audit events are sealed into a hash chain per
tenant; `titan-archiver audit verify` recomputes it from the database and names the first
broken link when one row is edited or deleted behind the archiver's back, and stays intact
through a legitimate erasure. SQLite and PostgreSQL; the beat's sealing with real processes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, delete, text, update
from sqlmodel import col, select

from archiver.governance import audit, erasure, ledger
from archiver.infra.db import make_engine, session_scope
from archiver.tables import AuditEvent, LedgerEntry, LedgerHead, Media, Status, Tenant, utcnow
from devstack import processes, services
from devstack.fixtures import process_env
from devstack.rig import RedisDatabases, running_rig
from tests.test_cli import run
from tests.test_media_rows import item, make_tenant, record


def _archive(engine: Engine, tenant: Tenant, count: int) -> list[str]:
    ids = [f"m{n}" for n in range(count)]
    for media_id in ids:
        record(engine, tenant, item(media_id))
    with session_scope(engine) as session:
        for n, media_id in enumerate(ids):
            session.execute(
                update(Media)
                .where(col(Media.media_id) == media_id)
                .values(
                    status=Status.ARCHIVED.value,
                    archived_at=utcnow(),
                    sha256=f"{n:064x}",
                    size=1000 + n,
                    object_key=f"acme/{media_id}",
                    bucket="acme-bucket",
                )
            )
        audit.record(session, actor="cli:test", action="tenant.update", tenant_id=tenant.id)
    return ids


def _verify(engine: Engine, tenant: Tenant) -> ledger.Verification:
    with session_scope(engine) as session:
        return ledger.verify(session, tenant_id=tenant.saved_id, tenant=tenant.name)


@pytest.fixture
def sealed(engine: Engine) -> tuple[Tenant, list[str]]:
    tenant = make_tenant(engine, "acme")
    ids = _archive(engine, tenant, 5)
    assert ledger.seal(engine)[tenant.saved_id] == (6, _head(engine, tenant))
    found = _verify(engine, tenant)
    assert found.broken is None and found.entries == 6 and found.unsealed == 0
    return tenant, ids


def _head(engine: Engine, tenant: Tenant) -> str:
    with session_scope(engine) as session:
        head = session.get(LedgerHead, tenant.saved_id)
        assert head is not None
        return head.hash


def _seq(engine: Engine, media_id: str) -> int:
    with session_scope(engine) as session:
        row = session.exec(select(Media).where(Media.media_id == media_id)).one()
        assert row.sealed_seq is not None
        return row.sealed_seq


def test_an_edited_media_row_is_named(engine: Engine, sealed: tuple[Tenant, list[str]]) -> None:
    tenant, ids = sealed
    with session_scope(engine) as session:
        session.execute(update(Media).where(col(Media.media_id) == ids[2]).values(sha256="f" * 64))
    found = _verify(engine, tenant)
    assert found.broken == f"record #{_seq(engine, ids[2])}: media {ids[2]} was changed"


def test_a_deleted_media_row_is_named(engine: Engine, sealed: tuple[Tenant, list[str]]) -> None:
    tenant, ids = sealed
    seq = _seq(engine, ids[3])
    with session_scope(engine) as session:
        session.execute(delete(Media).where(col(Media.media_id) == ids[3]))
    found = _verify(engine, tenant)
    assert found.broken == f"record #{seq}: media {ids[3]} was deleted with no erasure recorded"


def test_an_erasure_keeps_the_chain_intact(
    engine: Engine, sealed: tuple[Tenant, list[str]]
) -> None:
    tenant, ids = sealed
    done = erasure.erase(
        engine,
        tenant,
        erasure.Selector(media_ids=(ids[1],)),
        s3_for=lambda _: _NoBucket(),  # type: ignore[arg-type,return-value]
    )
    assert done.rows == 1
    found = _verify(engine, tenant)
    assert found.broken is None and found.entries == 7  # the erasure is a link of its own


def test_an_edited_or_removed_link_is_named(
    engine: Engine, sealed: tuple[Tenant, list[str]]
) -> None:
    tenant, _ = sealed
    with session_scope(engine) as session:
        session.execute(
            update(LedgerEntry)
            .where(col(LedgerEntry.tenant_id) == tenant.saved_id, col(LedgerEntry.seq) == 4)
            .values(body=text("replace(body, 'acme/', 'evil/')"))
        )
    assert _verify(engine, tenant).broken == "record #4: its content was changed"
    with session_scope(engine) as session:
        session.execute(
            delete(LedgerEntry).where(
                col(LedgerEntry.tenant_id) == tenant.saved_id, col(LedgerEntry.seq) == 2
            )
        )
    assert _verify(engine, tenant).broken == "record #2: missing (the chain jumps to #3)"


def test_an_edited_audit_event_is_named(engine: Engine, sealed: tuple[Tenant, list[str]]) -> None:
    tenant, _ = sealed
    with session_scope(engine) as session:
        event = session.exec(select(AuditEvent).where(AuditEvent.tenant_id == tenant.id)).one()
        event.actor = "cli:somebody-else"
        session.add(event)
        seq = event.sealed_seq
    assert _verify(engine, tenant).broken == f"record #{seq}: audit event {event.id} was changed"


def test_audit_verify_exits_1_naming_the_first_broken_link(
    database_url: str, engine: Engine
) -> None:
    tenant = make_tenant(engine, "acme")
    ids = _archive(engine, tenant, 3)
    ledger.seal(engine)
    intact = run(database_url, "audit", "verify")
    chains = [json.loads(line) for line in intact.stdout.splitlines()]
    assert [c["tenant"] for c in chains] == ["(deployment)", "acme"]
    assert all(c["intact"] for c in chains)
    with session_scope(engine) as session:
        session.execute(update(Media).where(col(Media.media_id) == ids[0]).values(size=1))
    broken = run(database_url, "audit", "verify", "--tenant", "acme", check=False)
    assert broken.returncode == 1
    assert f"acme: record #{_seq(engine, ids[0])}: media {ids[0]} was changed" in broken.stderr
    assert json.loads(broken.stdout)["intact"] is False


def test_the_beat_seals_what_the_workers_archive(
    tmp_path: Path, redis_dbs: RedisDatabases, s3_endpoint: str
) -> None:
    database_url = f"sqlite:///{tmp_path / 'a.db'}"
    run(database_url, "db", "upgrade")
    env = process_env(database_url, redis_dbs.take(), ARCHIVER_SEAL_INTERVAL_SECONDS="1")
    with running_rig(
        "seal", database_url=database_url, s3_endpoint=s3_endpoint, env=env, tmp=tmp_path
    ) as rig:
        tenant = rig.tenant("sealed")
        items = [rig.media(tenant, "image", size=5000 + n) for n in range(3)]
        rig.send(tenant, *items)
        rig.wait_status(items, "archived", tenant=tenant)
        processes.wait_until(
            lambda: all(r.sealed_seq is not None for r in rig.rows(tenant).values()),
            timeout=30,
            what="the archive records sealed",
        )
        verified = rig.cli("audit", "verify", "--tenant", tenant.name, "--checkpoints")
        assert json.loads(verified.stdout)["intact"] is True

        # The chain's head is also in the tenant's own bucket, signed: an auditor checks
        # the signature with the public key alone.
        s3 = services.s3_client(s3_endpoint)
        listed = s3.list_objects_v2(Bucket=tenant.bucket, Prefix=".titan-archiver/checkpoints/")
        newest = max(o["Key"] for o in listed["Contents"])
        checkpoint = json.loads(s3.get_object(Bucket=tenant.bucket, Key=newest)["Body"].read())
        pem = rig.cli("audit", "public-key").stdout.encode()
        public = serialization.load_pem_public_key(pem)
        assert isinstance(public, Ed25519PublicKey)
        signed = {k: v for k, v in checkpoint.items() if k != "signature"}
        public.verify(base64.b64decode(checkpoint["signature"]), ledger.canonical(signed).encode())

        # Someone with the database rewrites a row and recomputes the whole chain to match:
        # the database alone looks intact, the bucket's signed checkpoint does not.
        engine = make_engine(database_url)
        try:
            _rewrite_chain(engine, tenant.name, items[0].media_id)
        finally:
            engine.dispose()
        offline = rig.cli("audit", "verify", "--tenant", tenant.name)
        assert json.loads(offline.stdout)["intact"] is True
        caught = rig.cli("audit", "verify", "--tenant", tenant.name, "--checkpoints", codes=(1,))
        assert "differs from the bucket's signed checkpoint" in caught.stderr


def _rewrite_chain(engine: Engine, tenant_name: str, media_id: str) -> None:
    """Change a media row's SHA-256, then its archive record, then every hash after it."""
    with session_scope(engine) as session:
        owner = session.exec(select(Tenant).where(Tenant.name == tenant_name)).one()
        row = session.exec(select(Media).where(Media.media_id == media_id)).one()
        row.sha256 = "0" * 64
        session.add(row)
        session.flush()
        prev = ledger.GENESIS
        entries = session.exec(
            select(LedgerEntry).where(LedgerEntry.tenant_id == owner.id).order_by(LedgerEntry.seq)  # type: ignore[arg-type]
        ).all()
        for entry in entries:
            if entry.ref == row.pk and entry.kind == "archived":
                entry.body = ledger.canonical(ledger.archived_body(row))
            entry.prev_hash, entry.hash = prev, ledger.link(prev, entry.body)
            prev = entry.hash
            session.add(entry)
        head = session.get(LedgerHead, owner.id)
        assert head is not None
        head.hash = prev
        session.add(head)


class _NoBucket:
    """The seeded rows name keys in no real bucket: deletes answer as S3 does."""

    def get_bucket_versioning(self, **_: object) -> dict[str, str]:
        return {}

    def delete_object(self, **_: object) -> dict[str, str]:
        return {}
