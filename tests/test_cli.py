"""The titan-archiver command line, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.fixtures import MASTER_KEY

SECRETS = {
    "hmac": "hmac-secret-value-42",
    "titan": "titan_secret_api_key_42",
    "s3": "s3-secret-key-42",
}


def run(
    database_url: str,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {
        **os.environ,
        "ARCHIVER_DATABASE_URL": database_url,
        "ARCHIVER_SECRET_KEY": MASTER_KEY,
        **(env or {}),
    }
    result = subprocess.run(
        [sys.executable, "-m", "archiver.cli", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def add(database_url: str, name: str = "acme", *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        database_url,
        "tenants",
        "add",
        name,
        "--hmac-key",
        SECRETS["hmac"],
        "--titan-url",
        "https://api.titan.example",
        "--titan-api-key",
        SECRETS["titan"],
        "--s3-bucket",
        "acme-archive",
        "--s3-secret-access-key",
        SECRETS["s3"],
        "--s3-access-key-id",
        "AKIA1",
        "--no-check",  # nothing answers at these addresses: tests/test_tenant_setup.py checks
        *extra,
    )


def assert_no_secret(text: str) -> None:
    for secret in SECRETS.values():
        assert secret not in text


def test_db_upgrade_creates_the_schema_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    from archiver.infra import migrate

    head = migrate.head_revision()
    result = run(url, "db", "upgrade")
    assert f"revision {head}" in result.stderr
    assert f"revision {head}" in run(url, "db", "upgrade").stderr  # idempotent


def test_tenants_add_prints_one_json_object_with_a_fresh_api_key(database_url: str) -> None:
    result = add(database_url)
    doc = json.loads(result.stdout)
    assert doc["name"] == "acme" and doc["apiKey"].startswith("tak_") and len(doc["apiKey"]) > 40
    assert doc["strategy"] == "download" and doc["s3Bucket"] == "acme-archive"
    assert_no_secret(result.stdout + result.stderr)


def test_secrets_are_encrypted_at_rest(database_url: str) -> None:
    api_key = json.loads(add(database_url).stdout)["apiKey"]
    from sqlalchemy import text

    from archiver.infra.db import make_engine

    engine = make_engine(database_url)
    with engine.connect() as conn:
        dump = json.dumps([list(map(str, r)) for r in conn.execute(text("SELECT * FROM tenants"))])
        keys = json.dumps([list(map(str, r)) for r in conn.execute(text("SELECT * FROM api_keys"))])
    engine.dispose()
    assert_no_secret(dump)
    assert api_key not in keys and api_key[:12] in keys  # only a display prefix and a hash


def test_list_and_show_mask_secrets(database_url: str) -> None:
    add(database_url)
    add(database_url, "globex", "--strategy", "persist")
    listed = [json.loads(line) for line in run(database_url, "tenants", "list").stdout.splitlines()]
    assert [t["name"] for t in listed] == ["acme", "globex"]
    shown = run(database_url, "tenants", "show", "acme")
    assert json.loads(shown.stdout)["hmacKey"] == "********"
    assert_no_secret(shown.stdout + shown.stderr + json.dumps(listed))


def test_adding_a_tenant_twice_is_a_clear_error(database_url: str) -> None:
    add(database_url)
    again = run(
        database_url,
        "tenants",
        "add",
        "acme",
        "--hmac-key",
        "k" * 10,
        "--titan-url",
        "http://t",
        "--titan-api-key",
        "x",
        "--s3-bucket",
        "b",
        check=False,
    )
    assert again.returncode == 1 and "already exists" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--titan-url", "ftp://x", "titan-url"),
        ("--hmac-key", "short", "hmac-key"),
        ("--s3-endpoint", "not a url", "s3-endpoint"),
    ],
)
def test_bad_tenant_settings_are_refused_with_the_field_named(
    database_url: str, flag: str, value: str, message: str
) -> None:
    args = {
        "--hmac-key": "hmac-key-long",
        "--titan-url": "http://t",
        "--titan-api-key": "x",
        "--s3-bucket": "b",
        flag: value,
    }
    result = run(
        database_url, "tenants", "add", "acme", *[x for kv in args.items() for x in kv], check=False
    )
    assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr


def test_show_and_remove_of_an_unknown_tenant_fail_cleanly(database_url: str) -> None:
    for args in (["tenants", "show", "ghost"], ["tenants", "remove", "ghost"]):
        result = run(database_url, *args, check=False)
        assert result.returncode == 1 and "no tenant named 'ghost'" in result.stderr


def test_remove_deletes_the_tenant(database_url: str) -> None:
    add(database_url)
    refused = run(database_url, "tenants", "remove", "acme", check=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr  # no rows, still asked
    assert "acme" in run(database_url, "tenants", "list").stdout
    run(database_url, "tenants", "remove", "acme", "--yes")
    assert run(database_url, "tenants", "list").stdout.strip() == ""


def test_missing_master_key_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = run(
        f"sqlite:///{tmp_path / 'x.db'}",
        "tenants",
        "list",
        check=False,
        env={"ARCHIVER_SECRET_KEY": ""},
    )
    assert result.returncode == 1 and "ARCHIVER_SECRET_KEY" in result.stderr


def test_media_list_filters_and_export_stream_every_matching_row(
    database_url: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    from archiver.infra.db import make_engine, session_scope
    from archiver.media.recording import Arrival, MediaItem
    from archiver.tenants.tenants import get_tenant
    from devstack import fixtures

    add(database_url)
    engine = make_engine(database_url)
    with session_scope(engine) as session:
        tenant = get_tenant(session, name="acme")
    assert tenant.id is not None
    items = [
        MediaItem(
            media_id=f"m{i:04d}",
            session="support",
            message_id=None,
            message_type="video" if i % 3 == 0 else "image",
            mime_type="video/mp4" if i % 3 == 0 else "image/png",
            file_length=i,
            sender="+1",
            caption=None,
            filename=None,
            media_url=None,
            message_at=None,
            event_id=None,
        )
        for i in range(1203)
    ]
    recorded = fixtures.record(engine, [Arrival(tenant.id, tenant.strategy, it) for it in items])
    start = datetime(2025, 1, 1, tzinfo=UTC)
    fixtures.backdate(engine, {r.pk: start + timedelta(seconds=i) for i, r in enumerate(recorded)})
    engine.dispose()
    listed = json.loads(
        run(
            database_url, "media", "list", "--type", "video", "--limit", "5", "--format", "json"
        ).stdout
    )
    assert [d["id"] for d in listed] == ["m1200", "m1197", "m1194", "m1191", "m1188"]
    csv_out = run(
        database_url, "media", "list", "--mime-type", "image/", "--max-size", "4", "--format", "csv"
    ).stdout.splitlines()
    assert csv_out[0].startswith("id,messageId,mimeType") and len(csv_out) == 1 + 3
    parsed = list(csv.DictReader(csv_out))
    assert parsed[0]["renditions"] == "[]"  # lists as JSON, not Python's repr
    bad = run(database_url, "media", "list", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "Invalid value for --since" in bad.stderr
    out = tmp_path / "export.jsonl"
    result = run(
        database_url, "media", "export", "--type", "image", "--order", "asc", "-o", str(out)
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 802 and "exported 802 rows" in result.stderr
    assert [r["id"] for r in rows[:3]] == ["m0001", "m0002", "m0004"]
    assert len({r["id"] for r in rows}) == 802
    csv_file = tmp_path / "export.csv"
    run(database_url, "media", "export", "--format", "csv", "-o", str(csv_file))
    assert len(csv_file.read_text().splitlines()) == 1 + 1203


def test_version_is_the_installed_packages(database_url: str) -> None:
    from importlib.metadata import version

    result = run(database_url, "--version")
    assert result.stdout.strip().endswith(version("titan-archiver"))


def test_purging_a_tenant_with_media_needs_yes_without_a_terminal(database_url: str) -> None:
    from archiver.infra.db import make_engine, session_scope
    from archiver.tenants.tenants import get_tenant
    from devstack.fixtures import record_item
    from tests.test_media_rows import item

    add(database_url)
    engine = make_engine(database_url)
    try:
        with session_scope(engine) as session:
            tenant = get_tenant(session, name="acme")
        record_item(engine, tenant=tenant, item=item("m1"))
    finally:
        engine.dispose()
    refused = run(database_url, "tenants", "remove", "acme", "--purge", check=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert "acme" in run(database_url, "tenants", "list").stdout  # nothing was done
    run(database_url, "tenants", "remove", "acme", "--purge", "--yes")
    assert run(database_url, "tenants", "list").stdout.strip() == ""
    trail = run(database_url, "audit", "list", "--format", "jsonl").stdout.splitlines()
    assert json.loads(trail[0])["action"] == "tenant.remove"
    assert json.loads(trail[0])["detail"] == {"purge": True, "rows": 1}
