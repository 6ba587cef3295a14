"""Secrets at rest and the settings that guard them."""

import pytest
from sqlalchemy import Engine

from archiver.errors import ConfigError
from archiver.secrets_box import SecretBox
from archiver.settings import load_settings


def test_encrypts_so_the_plaintext_is_not_stored() -> None:
    box = SecretBox("a-long-master-key-for-tests")
    token = box.encrypt("hmac-secret-value")
    assert "hmac-secret-value" not in token
    assert box.decrypt(token) == "hmac-secret-value"


def test_two_encryptions_differ() -> None:
    box = SecretBox("a-long-master-key-for-tests")
    assert box.encrypt("x") != box.encrypt("x")


def test_wrong_master_key_is_a_clear_error() -> None:
    token = SecretBox("a-long-master-key-for-tests").encrypt("x")
    with pytest.raises(ConfigError, match="ARCHIVER_SECRET_KEY"):
        SecretBox("another-long-master-key").decrypt(token)


def test_older_key_still_decrypts_and_rotate_moves_to_current() -> None:
    old = SecretBox("old-long-master-key-123").encrypt("x")
    box = SecretBox("new-long-master-key-456", older=["old-long-master-key-123"])
    rotated = box.rotate(old)
    assert SecretBox("new-long-master-key-456").decrypt(rotated) == "x"


@pytest.mark.parametrize("key", [None, "", "changeme", "short"])
def test_production_refuses_missing_or_placeholder_master_key(key: str | None) -> None:
    with pytest.raises(ConfigError, match="ARCHIVER_SECRET_KEY"):
        load_settings(secret_key=key, env="production")


def test_development_runs_without_a_master_key() -> None:
    assert load_settings(secret_key=None, env="development").env == "development"


def test_visibility_timeout_must_outlast_the_task_time_limit() -> None:
    with pytest.raises(ConfigError, match="VISIBILITY_TIMEOUT"):
        load_settings(secret_key="x" * 20, task_time_limit=7200, broker_visibility_timeout=3600)


def test_reads_settings_from_archiver_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHIVER_SECRET_KEY", "y" * 20)
    monkeypatch.setenv("ARCHIVER_PART_SIZE", str(16 * 1024 * 1024))
    monkeypatch.setenv("ARCHIVER_DATABASE_URL", "postgresql://db/x")
    settings = load_settings()
    assert settings.part_size == 16 * 1024 * 1024
    assert settings.database_url == "postgresql://db/x"


def test_refuses_a_part_size_below_the_s3_minimum() -> None:
    with pytest.raises(ConfigError, match="ARCHIVER_PART_SIZE"):
        load_settings(secret_key="x" * 20, part_size=1024)


def test_rekey_moves_every_stored_secret_to_the_current_key(engine: Engine) -> None:
    from datetime import timedelta

    from sqlmodel import select

    from archiver.infra.db import session_scope
    from archiver.tables import Tenant
    from archiver.tenants.tenants import (
        TenantSpec,
        create_tenant,
        rekey_secrets,
        rotate_hmac_key,
        secrets_of,
    )

    old, new = "old-long-master-key-123", "new-long-master-key-456"
    with session_scope(engine) as session:
        create_tenant(
            session,
            box=SecretBox(old),
            spec=TenantSpec(
                name="acme",
                hmac_key="hmac-one",
                titan_url="https://titan.example",
                titan_api_key="t1",
                strategy="download",
                s3_bucket="b",
                s3_secret_access_key="s1",
            ),
        )
        rotate_hmac_key(
            session,
            box=SecretBox(old),
            name="acme",
            new_key="hmac-two",
            previous_valid_for=timedelta(1),
        )
    both = SecretBox(new, older=[old])
    with session_scope(engine) as session:
        report = rekey_secrets(session, box=both)
    assert (report.tenants, report.secrets, report.reencrypted) == (1, 4, 4)
    with session_scope(engine) as session:
        tenant = session.exec(select(Tenant)).one()
        opened = secrets_of(tenant, box=SecretBox(new))  # the old key is no longer needed
        assert opened.hmac_keys == ("hmac-two", "hmac-one")
        assert (opened.titan_api_key, opened.s3_secret_access_key) == ("t1", "s1")
        with pytest.raises(ConfigError):
            secrets_of(tenant, box=SecretBox(old))
